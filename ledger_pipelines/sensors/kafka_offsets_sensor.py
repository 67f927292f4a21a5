"""``kafka_offsets_sensor``: requests an event-log run when the topics have new committed offsets.

It only reads offsets (never messages: a sensor evaluation must finish well inside 60 s). The run
gets the end offsets as fixed targets and a ``run_key`` derived from them, so the same targets
launch at most one run.
"""


import hashlib

from dagster import (
    DefaultSensorStatus,
    RunRequest,
    RunsFilter,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)
from dagster._core.storage.dagster_run import IN_PROGRESS_RUN_STATUSES, DagsterRunStatus

from ..jobs import EVENT_LOG_JOB, event_log_job
from ..kafka.topics import end_offsets
from ..resources import KafkaResource, WarehouseResource
from ..ingest import DEFAULT_CONSUMER

_WAITING = [*IN_PROGRESS_RUN_STATUSES, DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED]


def offsets_run_key(targets: dict[tuple[str, int], int]) -> str:
    text = ";".join(f"{t}/{p}={o}" for (t, p), o in sorted(targets.items()))
    return "offsets-" + hashlib.sha256(text.encode()).hexdigest()[:24]


def event_log_run_config(targets: dict[tuple[str, int], int]) -> dict:
    return {
        "ops": {
            "ledger_event_log": {
                "config": {"targets": [{"topic": t, "partition": p, "offset": o} for (t, p), o in sorted(targets.items())]}
            }
        }
    }


@sensor(
    name="kafka_offsets_sensor",
    job=event_log_job,
    minimum_interval_seconds=30,
    default_status=DefaultSensorStatus.RUNNING,
    description="Launches ledger_event_log when the entry topics' committed end offsets pass the stored ones.",
)
def kafka_offsets_sensor(context: SensorEvaluationContext, kafka: KafkaResource, warehouse: WarehouseResource):
    ends = end_offsets(kafka.settings())
    if not ends:
        return SkipReason("no ledger entry topics exist yet")
    with warehouse.session() as wh:
        stored = wh.stored_offsets(DEFAULT_CONSUMER)
    lag = {tp: end - stored.get(tp, 0) for tp, end in ends.items()}
    behind = {tp: n for tp, n in lag.items() if n > 0}
    total = sum(behind.values())
    if not behind:
        return SkipReason(f"no new offsets: {len(ends)} partitions, lag 0")
    active = context.instance.get_runs(filters=RunsFilter(job_name=EVENT_LOG_JOB, statuses=_WAITING), limit=1)
    if active:
        return SkipReason(f"lag {total:,} on {len(behind)} partitions; run {active[0].run_id} is still in progress")
    context.log.info(f"lag {total:,} messages on {len(behind)} partitions: requesting an event-log run")
    return SensorResult(
        run_requests=[
            RunRequest(
                run_key=offsets_run_key(ends),
                run_config=event_log_run_config(ends),
                tags={"ledger_pipelines/lag": str(total)},
            )
        ],
        cursor=offsets_run_key(ends),
    )
