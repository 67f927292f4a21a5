"""``ledger_event_log``: the entry topics consumed into the warehouse, exactly once."""



from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    Backoff,
    Config,
    MaterializeResult,
    MetadataValue,
    RetryPolicy,
    asset,
)
from pydantic import Field

from ..ingest import DEFAULT_PROCESSES, MAX_PROCESSES, EventLogIngestor
from ..resources import ExpectationsResource, KafkaResource, WarehouseResource

EVENT_LOG_POOL = "ledger_event_log_ingest"
EVENT_LOG_CHECK = "expectations"


class PartitionTarget(Config):
    topic: str
    partition: int
    offset: int = Field(description="ingest up to (excluding) this offset")


class EventLogConfig(Config):
    targets: list[PartitionTarget] = Field(
        default_factory=list,
        description="fixed target offsets (the sensor sets them); empty: the end offsets at run start",
    )
    batch_size: int = Field(default=10_000, ge=1, le=200_000)
    processes: int = Field(
        default=DEFAULT_PROCESSES, ge=1, le=MAX_PROCESSES,
        description="at most this many worker processes share the partitions to read, one per 50,000 "
                    "records (1: the run's own process reads them all)",
    )


def targets_of(config: EventLogConfig) -> dict[tuple[str, int], int] | None:
    return {(t.topic, t.partition): t.offset for t in config.targets} or None


@asset(
    check_specs=[AssetCheckSpec(EVENT_LOG_CHECK, asset="ledger_event_log", blocking=True,
                                description="Great Expectations suite ledger_event_log on the rows this run wrote")],
    name="ledger_event_log",
    group_name="event_log",
    kinds={"kafka", "sql"},
    pool=EVENT_LOG_POOL,
    retry_policy=RetryPolicy(max_retries=3, delay=5, backoff=Backoff.EXPONENTIAL),
    description="Every ledger.<ledger>.entries topic consumed into the warehouse table "
    "ledger_event_log; rows and offsets commit together, so each message counts exactly once.",
)
def ledger_event_log(
    context: AssetExecutionContext,
    config: EventLogConfig,
    kafka: KafkaResource,
    warehouse: WarehouseResource,
    expectations: ExpectationsResource,
) -> MaterializeResult:
    last = {"at": 0}

    def progress(result):
        if result.consumed - last["at"] >= 100_000:
            last["at"] = result.consumed
            context.log.info(f"ingested {result.consumed:,} messages in {result.batches} batches")

    with warehouse.session() as wh:
        ingestor = EventLogIngestor(
            kafka.settings(), wh, batch_size=config.batch_size,
            run_id=context.run.run_id, progress=progress, processes=config.processes,
        )
        result = ingestor.run(targets_of(config))
        check = _check_rows(wh, context.run.run_id, expectations) if result.counts.inserted else None
    lag_total = sum(result.lag.values())
    context.log.info(
        f"event log: {result.consumed:,} messages consumed = {result.counts.inserted:,} new rows + "
        f"{result.counts.duplicates:,} duplicates + {result.counts.rejected:,} rejected + "
        f"{result.counts.conflicts:,} conflicts; lag {lag_total:,}"
    )
    per_partition = {
        f"{t}[{p}]": {"from": result.start[(t, p)], "to": result.final[(t, p)], "lag": result.lag.get((t, p))}
        for t, p in sorted(result.targets)
    }
    if check is None:
        check = AssetCheckResult(check_name=EVENT_LOG_CHECK, passed=True, metadata={"rows_checked": 0})
    return MaterializeResult(
        check_results=[check],
        metadata={
            "rows": MetadataValue.int(result.counts.inserted),
            "duplicates": MetadataValue.int(result.counts.duplicates),
            "rejected": MetadataValue.int(result.counts.rejected),
            "conflicts": MetadataValue.int(result.counts.conflicts),
            "messages_consumed": MetadataValue.int(result.consumed),
            # messages consumed = entries (new rows) + rejected + duplicates + conflicts, checked by the ingest
            "records": MetadataValue.json(result.records),
            # batches written again because another writer stored one of their entries meanwhile
            # (see warehouse/writer.py)
            "writes_retried": MetadataValue.int(result.counts.retries),
            "lag": MetadataValue.int(lag_total),
            "entries_per_second": MetadataValue.float(round(result.rate, 1)),
            "partitions": MetadataValue.json(per_partition),
            "warehouse": MetadataValue.text(warehouse.describe()),
        }
    )


def _check_rows(wh, run_id: str, expectations: ExpectationsResource) -> AssetCheckResult:
    from ..validation import text_frame

    cols = ["entry_id", "account", "amount", "direction", "status", "booked_date"]
    rows = wh.rows(f"SELECT {', '.join(cols)} FROM ledger_event_log WHERE run_id = :r", r=run_id)
    frame = text_frame({c: [None if row[i] is None else str(row[i]) for row in rows] for i, c in enumerate(cols)})
    res = expectations.validator().run("ledger_event_log", frame)
    return AssetCheckResult(
        check_name=EVENT_LOG_CHECK, passed=res.success,
        severity=AssetCheckSeverity.ERROR if res.failures else AssetCheckSeverity.WARN,
        metadata={"rows_checked": len(rows), "failures": MetadataValue.json(res.failures[:10])},
    )
