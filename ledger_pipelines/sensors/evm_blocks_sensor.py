"""``evm_blocks_sensor``: new blocks on a chain ledger -> publish run (pending, final, reorgs)."""

from dagster import DefaultSensorStatus, SensorEvaluationContext, SkipReason, sensor

from ..config import load_config
from ..connectors.evm_reader import EvmReader
from ..jobs import publish_job
from ..publish import source_url
from ..resources import WarehouseResource
from ..warehouse.state import get_cursor
from .source_changes import publish_request


@sensor(name="evm_blocks_sensor", job=publish_job, minimum_interval_seconds=30,
        default_status=DefaultSensorStatus.RUNNING,
        description="Publishes an EVM ledger when its chain has new blocks since the last pass.")
def evm_blocks_sensor(context: SensorEvaluationContext, warehouse: WarehouseResource):
    requests = []
    with warehouse.session() as wh:
        for lc in (x for x in load_config() if x.kind == "evm"):
            try:
                head = EvmReader(lc, source_url(lc)).head()
            except Exception as exc:  # node down: say so, try next tick
                context.log.info(f"{lc.name}: node not reachable ({type(exc).__name__})")
                continue
            cursor = get_cursor(wh, lc.name) or {}
            if head != cursor.get("head"):
                requests.append(publish_request(lc.name, str(head)))
    return requests or SkipReason("no new blocks")
