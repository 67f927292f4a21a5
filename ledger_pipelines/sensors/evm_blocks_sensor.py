"""``evm_blocks_sensor``: new blocks on a chain ledger -> publish run (pending, final, reorgs)."""

from dagster import DefaultSensorStatus, SensorEvaluationContext, SkipReason, sensor

from ..config import load_config
from ..connectors.evm_reader import EvmReader
from ..jobs import publish_job
from ..publish import source_url
from ..resources import WarehouseResource
from ..warehouse.state import get_cursor
from .source_changes import SourceErrors, publish_request


@sensor(name="evm_blocks_sensor", job=publish_job, minimum_interval_seconds=30,
        default_status=DefaultSensorStatus.RUNNING,
        description="Publishes an EVM ledger when its chain has new blocks since the last pass.")
def evm_blocks_sensor(context: SensorEvaluationContext, warehouse: WarehouseResource):
    requests, errors = [], SourceErrors(context)
    with warehouse.session() as wh:
        for lc in (x for x in load_config() if x.kind == "evm"):
            try:
                head = EvmReader(lc, source_url(lc)).head()
            except Exception as exc:  # node down or misconfigured: the tick says so, and tries again next time
                errors.add(lc.name, exc)
                continue
            cursor = get_cursor(wh, lc.name) or {}
            if head != cursor.get("head"):
                requests.append(publish_request(lc.name, str(head)))
    return errors.result(requests, SkipReason("no new blocks"))
