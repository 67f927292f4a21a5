"""``sql_rows_sensor``: new journal lines (or late arrivals in remembered gaps) in a SQL ledger -> publish run."""

from dagster import DefaultSensorStatus, SensorEvaluationContext, SkipReason, sensor

from ..config import load_config
from ..connectors.sql import SqlLedger
from ..jobs import publish_job
from ..publish import source_url
from ..resources import WarehouseResource
from ..warehouse.state import get_cursor
from .source_changes import SourceErrors, publish_request


@sensor(name="sql_rows_sensor", job=publish_job, minimum_interval_seconds=30,
        default_status=DefaultSensorStatus.RUNNING,
        description="Publishes a SQL ledger when rows above its watermark exist or a remembered gap was filled.")
def sql_rows_sensor(context: SensorEvaluationContext, warehouse: WarehouseResource):
    requests, errors = [], SourceErrors(context)
    with warehouse.session() as wh:
        for lc in (x for x in load_config() if x.kind == "sql"):
            cursor = get_cursor(wh, lc.name) or {"high": None, "gaps": {}}
            try:
                ledger = SqlLedger(source_url(lc), lc.mapping, lc.name)
                try:
                    top, filled = ledger.top_and_filled(cursor.get("gaps") or {})
                finally:
                    ledger.dispose()
            except Exception as exc:
                errors.add(lc.name, exc)
                continue
            # keyed by what there is to read: a late row filling a gap on a quiet ledger changes ``filled``
            # (the top id and the gap set alone stay the same, and a repeated run key is never run again)
            if top is not None and (cursor["high"] is None or top > cursor["high"] or filled):
                requests.append(publish_request(lc.name, f"{top}|{filled}"))
    return errors.result(requests, SkipReason("no new rows"))
