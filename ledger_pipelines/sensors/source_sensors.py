"""The source sensors: one per ledger kind that can change on its own (SQL journal, chain, statement
inbox, Debezium change topics), all from one factory. Each tick looks at every configured ledger of its kind and requests a
``publish_job`` run for each that has something new, keyed by what changed and a five-minute slot (a
repeated run key is never run again: the key must change whenever there is something new to read, and
a change whose run failed is asked for again in the next slot). A ledger whose publish run is queued or
running is left alone until it ends.

A ledger that cannot be read (misconfigured, node down) is an error, not "nothing new": alone such
errors fail the tick (the UI shows the reason); next to run requests for other ledgers they are logged
as errors, so one broken source does not hold the others back.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence

from dagster import DefaultSensorStatus, RunRequest, SensorDefinition, SensorEvaluationContext, SkipReason, sensor

from ..config import LedgerConfig
from ..jobs import publish_job
from ..resources import WarehouseResource
from ..warehouse import Warehouse

# a statement tick stops starting new files after this long (the evaluation itself times out at 60 s);
# the files left are indexed at the next tick, or by the first day's snapshot that reads them
INDEX_BUDGET_SECONDS = 20.0


class SourceErrors:
    """What a tick could not read, by ledger."""

    def __init__(self, context) -> None:
        self.context = context
        self.problems: list[str] = []

    def add(self, ledger: str, exc: Exception) -> None:
        self.problems.append(f"{ledger}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:500])

    def result(self, requests: list[RunRequest], nothing: SkipReason):
        if self.problems and not requests:
            raise RuntimeError("source not readable: " + "; ".join(self.problems))
        for p in self.problems:
            self.context.log.error(f"source not readable: {p}")
        return requests or nothing


# a change is asked for again after this long while it is still there to read (its run failed, or was
# cancelled): a repeated run key is never run again, so the key carries the slot too
RETRY_SECONDS = 300


def publish_request(ledger: str, what: str) -> RunRequest:
    slot = int(time.time() // RETRY_SECONDS)
    key = hashlib.sha256(f"{ledger}|{what}|{slot}".encode()).hexdigest()[:24]
    return RunRequest(run_key=f"publish-{ledger}-{key}",
                      run_config={"ops": {"publish_ledger": {"config": {"ledger": ledger}}}},
                      tags={"ledger": ledger})


class Tick:
    """What one evaluation hands each ledger's check: the warehouse, the log, the error list, its start."""

    def __init__(self, context: SensorEvaluationContext, wh: Warehouse, errors: SourceErrors) -> None:
        self.context, self.wh, self.errors, self.started = context, wh, errors, time.monotonic()


def sql_rows(lc: LedgerConfig, tick: Tick) -> RunRequest | None:
    """New journal lines above the watermark, or late arrivals in remembered gaps."""
    from ..connectors.sql.journal import SqlLedger
    from ..connectors.kinds import source_url
    from ..warehouse.state import get_cursor

    cursor = get_cursor(tick.wh, lc.name) or {"high": None, "gaps": {}}
    ledger = SqlLedger(source_url(lc), lc.mapping, lc.name)
    try:
        top, filled = ledger.top_and_filled(cursor.get("gaps") or {})
    finally:
        ledger.dispose()
    # keyed by what there is to read: a late row filling a gap on a quiet ledger changes ``filled``
    # (the top id and the gap set alone stay the same)
    if top is not None and (cursor["high"] is None or top > cursor["high"] or filled):
        return publish_request(lc.name, f"{top}|{filled}")
    return None


def evm_blocks(lc: LedgerConfig, tick: Tick) -> RunRequest | None:
    """New blocks on the chain since the last pass (pending, final, reorgs)."""
    from ..connectors.evm.reader import EvmReader
    from ..connectors.kinds import source_url
    from ..warehouse.state import get_cursor

    head = EvmReader(lc, source_url(lc)).head()
    if head != (get_cursor(tick.wh, lc.name) or {}).get("head"):
        return publish_request(lc.name, str(head))
    return None


def statement_files(lc: LedgerConfig, tick: Tick) -> RunRequest | None:
    """Statement files whose content was not published yet; each new content is also indexed by booking
    date (:mod:`ledger_pipelines.statement_inbox`), so the days' snapshots read their part without
    parsing the inbox again. A file that cannot be indexed never holds its publication back."""
    from ..statement_inbox import StatementInbox
    from ..warehouse.state import file_processed

    inbox = StatementInbox(lc)
    listed_at = time.time()
    listing = inbox.listing()
    new = [sha for _, sha in listing if not file_processed(tick.wh, lc.name, sha)]
    request = publish_request(lc.name, ",".join(sorted(new))) if new else None
    budget = max(0.0, INDEX_BUDGET_SECONDS - (time.monotonic() - tick.started))
    try:
        indexed = inbox.index_new(listing, budget_seconds=budget)
    except Exception as exc:  # the day's snapshot indexes the file itself and fails there, named
        tick.errors.add(lc.name, exc)
        return request
    if indexed:
        tick.context.log.info(f"{lc.name}: indexed {len(indexed)} statement file(s): {', '.join(indexed[:20])}")
    inbox.prune({sha for _, sha in listing}, older_than=listed_at)
    return request


def cdc_changes(lc: LedgerConfig, tick: Tick) -> RunRequest | None:
    """Committed change events (or transaction markers) on the ledger's Debezium topics past its cursor; a
    ``source: debezium-postgres`` ledger never published yet is asked for once, to register its connector."""
    from ..connectors.cdc import connect
    from ..kafka.topics import admin, end_offsets
    from ..settings import KafkaSettings
    from ..warehouse.state import get_cursor

    kafka = KafkaSettings.from_env()
    cursor = get_cursor(tick.wh, lc.name)
    if lc.source:
        t = connect.topics(kafka, lc)
        data, txs = t.data, t.transactions
        if cursor is None:
            return publish_request(lc.name, "register")
        # a failed connector writes nothing more: without this the ledger would read as quiet (a few
        # seconds at most: the tick has 60 s for every ledger)
        st = connect.status(lc.name, timeout=5.0)
        why = connect.failure(st)
        if why is not None:
            raise connect.ConnectError(
                f"connector {connect.connector_name(lc.name)} is FAILED: {why}; fix the cause, then restart its "
                "tasks (POST /connectors/<name>/restart?includeTasks=true)")
        if st["connector"] == "absent":
            # removed by hand with its slot kept: the publish registers it again, resuming from the slot;
            # with the slot gone too (removed on purpose, `cdc sync`) nothing is asked for: it says so
            if connect.slot_lag(lc) is None:
                raise connect.ConnectError(f"connector {connect.connector_name(lc.name)} and its replication slot "
                                           "are gone: remove the ledger from the configuration (and reload the "
                                           "code location) or reset it")
            return publish_request(lc.name, "register")
    else:
        data, txs = lc.options["debezium_topic"], lc.options.get("transaction_topic")
    cursor = cursor or {}
    present = admin(kafka).list_topics(timeout=10).topics
    parts = {t: len(present[t].partitions) for t in (data, txs) if t and t in present and present[t].error is None}
    if not parts:
        return None
    ends = end_offsets(kafka, parts)
    seen = {(data, int(p)): o for p, o in cursor.get("offsets", {}).items()}
    seen.update({(txs, int(p)): o for p, o in cursor.get("tx_offsets", {}).items()})
    if any(end > seen.get(tp, 0) for tp, end in ends.items()):
        return publish_request(lc.name, ",".join(f"{t}/{p}:{o}" for (t, p), o in sorted(ends.items())))
    return None


Check = Callable[[LedgerConfig, Tick], "RunRequest | None"]

# sensor name (a connector's ``sensor``), what its tick checks, what it says when nothing changed, description
SOURCES: tuple[tuple[str, Check, str, str], ...] = (
    ("sql_rows_sensor", sql_rows, "no new rows",
     "Publishes a SQL ledger when rows above its watermark exist or a remembered gap was filled."),
    ("evm_blocks_sensor", evm_blocks, "no new blocks",
     "Publishes an EVM ledger when its chain has new blocks since the last pass."),
    ("statement_inbox_sensor", statement_files, "no new statement files",
     "Publishes ISO 20022 statement files dropped into a ledger's inbox (once per content hash) and indexes "
     "each new content by booking date for the daily snapshots."),
    ("cdc_changes_sensor", cdc_changes, "no new change events",
     "Publishes a cdc ledger when its Debezium topics hold committed change events past its cursor (a posting "
     "is handed on once its whole transaction has arrived)."),
)


def _publishing(context: SensorEvaluationContext, ledger: str) -> bool:
    """A ``publish_job`` run of ``ledger`` is queued or running."""
    from dagster import RunsFilter

    from ..jobs import PUBLISH_JOB
    from .kafka_offsets_sensor import _WAITING

    return bool(context.instance.get_runs(
        filters=RunsFilter(job_name=PUBLISH_JOB, statuses=_WAITING, tags={"ledger": ledger}), limit=1))


def source_sensor(name: str, ledgers: Sequence[LedgerConfig], check: Check, nothing: str,
                  description: str) -> SensorDefinition:
    """A sensor that runs ``check`` for each of ``ledgers`` at every tick."""
    ledgers = tuple(ledgers)

    @sensor(name=name, job=publish_job, minimum_interval_seconds=30, default_status=DefaultSensorStatus.RUNNING,
            description=description)
    def _source(context: SensorEvaluationContext, warehouse: WarehouseResource):
        requests, errors = [], SourceErrors(context)
        with warehouse.session() as wh:
            tick = Tick(context, wh, errors)
            for lc in ledgers:
                if _publishing(context, lc.name):
                    continue  # its run reads everything there is when it starts; no second one meanwhile
                try:
                    request = check(lc, tick)
                except Exception as exc:  # unreadable or misconfigured: the tick says so, and tries again
                    errors.add(lc.name, exc)
                    continue
                if request is not None:
                    requests.append(request)
        return errors.result(requests, SkipReason(nothing))

    return _source


def build_source_sensors(ledgers: Sequence[LedgerConfig]) -> dict[str, SensorDefinition]:
    """The source sensors over the configured ledgers (each watches the ledgers whose connector
    names it), by name."""
    from ..connectors.kinds import connector_for

    return {name: source_sensor(name, [lc for lc in ledgers if connector_for(lc).sensor == name], check, nothing,
                                description)
            for name, check, nothing, description in SOURCES}
