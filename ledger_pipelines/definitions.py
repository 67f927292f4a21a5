"""The one place that builds the Dagster ``Definitions`` (loaded by workspace.yaml).

Which snapshot assets exist depends on the ledger configuration (``LEDGER_CONFIG``, default
``config/ledgers.example.yaml``), read here and nowhere else at load time.
"""

from dagster import DailyPartitionsDefinition, Definitions, in_process_executor

from .assets.audit import build_audit_assets, build_audit_report_asset
from .assets.event_log import ledger_event_log
from .assets.snapshots import build_snapshot_asset
from .config import audit_schedule, load_config, partitions_start, reconciliation_pairs
from .jobs import bridge_job, event_log_job, nightly_audit_job, publish_job, snapshots_job
from .schedules import nightly_audit_schedule
from .resources import ExpectationsResource, KafkaResource, WarehouseResource
from .sensors.bridge_sensor import bridge_sensor
from .sensors.evm_blocks_sensor import evm_blocks_sensor
from .sensors.kafka_offsets_sensor import kafka_offsets_sensor
from .sensors.sql_rows_sensor import sql_rows_sensor
from .sensors.statement_inbox_sensor import statement_inbox_sensor

daily = DailyPartitionsDefinition(start_date=partitions_start(), timezone="UTC")
ledgers = load_config()
snapshot_assets = [build_snapshot_asset(lc, daily) for lc in ledgers]
audit_assets = [*build_audit_assets(ledgers, reconciliation_pairs(), daily), build_audit_report_asset(daily)]
schedule = audit_schedule()

defs = Definitions(
    assets=[ledger_event_log, *snapshot_assets, *audit_assets],
    jobs=[event_log_job, publish_job, snapshots_job, nightly_audit_job, bridge_job],
    schedules=[nightly_audit_schedule(nightly_audit_job, schedule["hour"], schedule["minute"])],
    sensors=[kafka_offsets_sensor, sql_rows_sensor, evm_blocks_sensor, statement_inbox_sensor, bridge_sensor],
    resources={"kafka": KafkaResource(), "warehouse": WarehouseResource(), "expectations": ExpectationsResource()},
    # a backfill is one run per day: a process per step on top of each run's own (code loaded five
    # times a day) cost more than reading the day's ledgers one after the other
    executor=in_process_executor,
)
