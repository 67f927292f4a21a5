"""``sql_rows_sensor``: new journal lines (or remembered gaps) in a SQL ledger -> publish run."""

from dagster import DefaultSensorStatus, SensorEvaluationContext, SkipReason, sensor
from sqlalchemy import text

from ..config import load_config
from ..connectors.sql import SqlLedger
from ..jobs import publish_job
from ..publish import source_url
from ..resources import WarehouseResource
from ..warehouse.state import get_cursor
from .source_changes import publish_request


@sensor(name="sql_rows_sensor", job=publish_job, minimum_interval_seconds=30,
        default_status=DefaultSensorStatus.RUNNING,
        description="Publishes a SQL ledger when rows above its watermark exist or gaps are still open.")
def sql_rows_sensor(context: SensorEvaluationContext, warehouse: WarehouseResource):
    requests = []
    with warehouse.session() as wh:
        for lc in (x for x in load_config() if x.kind == "sql"):
            cursor = get_cursor(wh, lc.name) or {"high": None, "gaps": {}}
            ledger = SqlLedger(source_url(lc), lc.mapping, lc.name)
            try:
                with ledger.engine.connect() as c:
                    top = c.execute(text(f'SELECT max("{lc.mapping.id}") FROM {lc.mapping.qualified_table}')).scalar()
            except Exception as exc:  # the source may not exist yet
                context.log.info(f"{lc.name}: source not readable yet ({type(exc).__name__})")
                continue
            finally:
                ledger.dispose()
            if top is not None and (cursor["high"] is None or top > cursor["high"] or cursor["gaps"]):
                requests.append(publish_request(lc.name, f"{top}|{sorted(cursor['gaps'])}"))
    return requests or SkipReason("no new rows")
