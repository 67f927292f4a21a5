"""``statement_inbox_sensor``: new camt files in a statement ledger's inbox -> publish run; each new
content is indexed by booking date as it arrives (:mod:`ledger_pipelines.statement_inbox`), so the
days' snapshots read their part without parsing the inbox again."""

import time

from dagster import DefaultSensorStatus, SensorEvaluationContext, SkipReason, sensor

from ..config import load_config
from ..jobs import publish_job
from ..resources import WarehouseResource
from ..statement_inbox import StatementInbox
from ..warehouse.state import file_processed
from .source_changes import SourceErrors, publish_request

# a tick stops starting new files after this long (the evaluation itself times out at 60 s); the
# files left are indexed at the next tick, or by the first day's snapshot that reads them
INDEX_BUDGET_SECONDS = 20.0


@sensor(name="statement_inbox_sensor", job=publish_job, minimum_interval_seconds=30,
        default_status=DefaultSensorStatus.RUNNING,
        description="Publishes ISO 20022 statement files dropped into a ledger's inbox (once per content hash) "
        "and indexes each new content by booking date for the daily snapshots.")
def statement_inbox_sensor(context: SensorEvaluationContext, warehouse: WarehouseResource):
    requests = []
    problems = SourceErrors(context)  # a file that cannot be indexed never holds its publication back
    started = time.monotonic()
    with warehouse.session() as wh:
        for lc in (x for x in load_config() if x.kind == "iso20022"):
            inbox = StatementInbox(lc)
            listed_at = time.time()
            listing = inbox.listing()
            new = [sha for _, sha in listing if not file_processed(wh, lc.name, sha)]
            if new:
                requests.append(publish_request(lc.name, ",".join(sorted(new))))
            budget = max(0.0, INDEX_BUDGET_SECONDS - (time.monotonic() - started))
            try:
                indexed = inbox.index_new(listing, budget_seconds=budget)
            except Exception as exc:  # the day's snapshot indexes the file itself and fails there, named
                problems.add(lc.name, exc)
                continue
            if indexed:
                context.log.info(f"{lc.name}: indexed {len(indexed)} statement file(s): {', '.join(indexed[:20])}")
            inbox.prune({sha for _, sha in listing}, older_than=listed_at)
    return problems.result(requests, SkipReason("no new statement files"))
