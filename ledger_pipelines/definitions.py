"""The one place that builds the Dagster ``Definitions`` (loaded by workspace.yaml).

The configuration (``LEDGER_CONFIG``, default ``config/ledgers.example.yaml``) is read here, once,
and handed to what is built from it: which snapshot assets and reconciliations exist, the partitions,
the nightly schedule, the source sensors.
"""

from dagster import DailyPartitionsDefinition, Definitions, in_process_executor

from .assets.audit import build_audit_assets, build_audit_report_asset
from .assets.event_log import ledger_event_log
from .assets.snapshots import build_snapshot_asset
from .config import ProjectConfig, load_project
from .desk.policy import DeskSettings
from .jobs import bridge_job, event_log_job, nightly_audit_job, publish_job, snapshots_job
from .resources import ExpectationsResource, KafkaResource, WarehouseResource
from .schedules import nightly_audit_schedule
from .sensors.bridge_sensor import bridge_sensor
from .sensors.kafka_offsets_sensor import kafka_offsets_sensor
from .sensors.source_sensors import build_source_sensors

def build_definitions(project: ProjectConfig | None = None) -> Definitions:
    """The Definitions of a configuration (the current ``LEDGER_CONFIG`` when none is given)."""
    project = project or load_project()
    daily = DailyPartitionsDefinition(start_date=project.partitions_start, timezone="UTC")
    snapshot_assets = [build_snapshot_asset(lc, daily) for lc in project.ledgers]
    audit_assets = [*build_audit_assets(project.ledgers, project.pairs, daily,
                                                  DeskSettings.from_document(project.document)), build_audit_report_asset(daily)]
    return Definitions(
        assets=[ledger_event_log, *snapshot_assets, *audit_assets],
        jobs=[event_log_job, publish_job, snapshots_job, nightly_audit_job, bridge_job],
        schedules=[nightly_audit_schedule(nightly_audit_job, project.audit_schedule["hour"],
                                          project.audit_schedule["minute"])],
        sensors=[kafka_offsets_sensor, *build_source_sensors(project.ledgers).values(), bridge_sensor],
        resources={"kafka": KafkaResource(), "warehouse": WarehouseResource(), "expectations": ExpectationsResource()},
        # a backfill is one run per day: a process per step on top of each run's own (code loaded five
        # times a day) cost more than reading the day's ledgers one after the other
        executor=in_process_executor,
    )


defs = build_definitions()
