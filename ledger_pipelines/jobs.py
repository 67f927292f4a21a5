"""Jobs by asset selection."""

from dagster import AssetSelection, define_asset_job

EVENT_LOG_JOB = "event_log_job"

event_log_job = define_asset_job(
    EVENT_LOG_JOB,
    selection=AssetSelection.assets("ledger_event_log"),
    description="Consume the entry topics into the warehouse event log up to fixed offsets.",
)
