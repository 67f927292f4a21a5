"""Jobs by asset selection (and the publishing op job)."""

from dagster import AssetSelection, define_asset_job, job

from .ops import apply_triggers, publish_ledger

EVENT_LOG_JOB = "event_log_job"
PUBLISH_JOB = "publish_job"

event_log_job = define_asset_job(
    EVENT_LOG_JOB,
    selection=AssetSelection.assets("ledger_event_log"),
    description="Consume the entry topics into the warehouse event log up to fixed offsets.",
)


@job(name=PUBLISH_JOB, description="Publish one configured ledger's new records to its Kafka topic.",
     tags={"dagster/max_retries": 2})
def publish_job():
    publish_ledger()


snapshots_job = define_asset_job(
    "snapshots_job", selection=AssetSelection.groups("snapshots"),
    description="Daily snapshots of every configured ledger, read from the sources.",
)

NIGHTLY_AUDIT_JOB = "nightly_audit_job"

nightly_audit_job = define_asset_job(
    NIGHTLY_AUDIT_JOB, selection=AssetSelection.groups("snapshots", "audit"),
    description="Snapshots of every ledger, then reconciliation and the audit report, for one day (a "
    "backfill: one run per day, reconciling in day order); a failed blocking check of a snapshot stops "
    "the reconciliation and the report of that day only.",
)

BRIDGE_JOB = "bridge_job"


@job(name=BRIDGE_JOB, description="Cross-ledger triggers: act on the source ledgers' new entries, each action once.")
def bridge_job():
    apply_triggers()
