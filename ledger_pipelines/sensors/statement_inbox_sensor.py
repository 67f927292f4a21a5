"""``statement_inbox_sensor``: new camt files in a statement ledger's inbox -> publish run."""

import hashlib

from dagster import DefaultSensorStatus, SensorEvaluationContext, SkipReason, sensor

from ..config import load_config
from ..jobs import publish_job
from ..publish import inbox_files
from ..resources import WarehouseResource
from ..warehouse.state import file_processed
from .source_changes import publish_request


@sensor(name="statement_inbox_sensor", job=publish_job, minimum_interval_seconds=30,
        default_status=DefaultSensorStatus.RUNNING,
        description="Publishes ISO 20022 statement files dropped into a ledger's inbox (once per content hash).")
def statement_inbox_sensor(context: SensorEvaluationContext, warehouse: WarehouseResource):
    requests = []
    with warehouse.session() as wh:
        for lc in (x for x in load_config() if x.kind == "iso20022"):
            new = [h for h in (hashlib.sha256(p.read_bytes()).hexdigest() for p in inbox_files(lc))
                   if not file_processed(wh, lc.name, h)]
            if new:
                requests.append(publish_request(lc.name, ",".join(sorted(new))))
    return requests or SkipReason("no new statement files")
