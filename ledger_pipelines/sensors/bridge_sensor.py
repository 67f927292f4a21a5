"""``bridge_sensor``: launches ``bridge_job`` when a trigger source topic has entries the bridge's consumer
group has not committed yet (offsets only; the run consumes up to the ends it finds)."""

import time

from dagster import RunRequest, RunsFilter, SensorEvaluationContext, SkipReason, sensor

from ..jobs import BRIDGE_JOB, bridge_job
from ..ops import BRIDGE_GROUP
from ..resources import KafkaResource
from .kafka_offsets_sensor import _WAITING, offsets_run_key


RETRY_PENDING_SECONDS = 300


def bridge_lag(settings, sources: list[str]) -> dict[tuple[str, int], int]:
    from confluent_kafka import Consumer, TopicPartition

    from ..kafka.topics import end_offsets, entries_topic, entry_topics

    topics = {t: n for t, n in entry_topics(settings).items() if t in {entries_topic(settings, s) for s in sources}}
    ends = end_offsets(settings, topics)
    if not ends:
        return {}
    c = Consumer({**settings.client_config(), "group.id": BRIDGE_GROUP, "enable.auto.commit": False})
    try:
        committed = c.committed([TopicPartition(t, p) for t, p in ends], timeout=15)
    finally:
        c.close()
    done = {(tp.topic, tp.partition): max(tp.offset, 0) for tp in committed}
    return {tp: end for tp, end in ends.items() if end > done.get(tp, 0)}


@sensor(name="bridge_sensor", job=bridge_job, minimum_interval_seconds=30,
        description="Launches bridge_job when a trigger source topic has entries the bridge has not acted on. "
        "For second-level latency run `ledger-pipelines bridge` instead (same consumer group).")
def bridge_sensor(context: SensorEvaluationContext, kafka: KafkaResource):
    from ..triggers import rules_from_config

    rules = rules_from_config()
    if not rules:
        return SkipReason("no triggers configured")
    behind = bridge_lag(kafka.settings(), sorted({r.source for r in rules}))
    if not behind:
        return SkipReason("the bridge is caught up")
    if context.instance.get_runs(filters=RunsFilter(job_name=BRIDGE_JOB, statuses=_WAITING), limit=1):
        return SkipReason("a bridge_job run is still in progress")
    # keyed by the offsets behind and the 5-minute slot: actions a run left pending (node down) hold the
    # offsets back, and the same offsets come again; a repeated run key is never run again, so the slot
    # lets them be retried every five minutes without new entries
    return RunRequest(run_key=f"{offsets_run_key(behind)}-{int(time.time() // RETRY_PENDING_SECONDS)}")
