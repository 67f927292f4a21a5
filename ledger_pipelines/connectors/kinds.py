"""The ledger kinds behind one protocol: what publishing, the daily snapshots, the source sensors and the
command line ask of a configured ledger, whatever its technology.

:func:`connector_for` gives a ledger's :class:`Connector`:

- :meth:`~Connector.publish` reads the records that are new since the ledger's cursor (journal rows
  above the watermark, blocks since the last pass, statement files not seen, Debezium offsets), maps
  them to canonical entries and hands entries and rejections to the publisher, then moves the cursor;
- :meth:`~Connector.read_day` reads one day from the source of truth, for the snapshot: the entries,
  the rejected records ``(source, reason, ...)`` and, for bank statements, each statement's balance
  equation;
- :attr:`~Connector.checks`: the snapshot's blocking checks beyond the expectation suite and the
  control totals (``trial_balance`` for a double-entry journal, ``statement_balance`` for statements);
- :attr:`~Connector.sensor`: the source sensor that watches the ledger (``None``: none does);
- :meth:`~Connector.source_env`: what ``ledger-pipelines stack env`` prints for the ledger's source.

Adding a kind is one class here (see docs/development.md); nothing else branches on ``kind``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from datetime import date
from typing import TYPE_CHECKING, Any, ClassVar, Mapping, NamedTuple

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from ..config import LedgerConfig
    from ..model import CanonicalEntry
    from ..publish import Publisher
    from ..validation import PublishResult
    from ..warehouse import Warehouse

TRIAL_BALANCE = "trial_balance"
STATEMENT_BALANCE = "statement_balance"


class SourceEnv(NamedTuple):
    """A ledger's line of ``stack env``: ``var`` to export with ``value`` (``rpc``: a node URL, which may hold
    an API key), or, without ``var``, only ``note``."""

    var: str | None = None
    value: str | None = None
    rpc: bool = False
    note: str | None = None


class DayRead(NamedTuple):
    entries: list["CanonicalEntry"]
    errors: list[tuple]  # (source, reason[, payload]): records of the day that are no entry
    balances: list[dict[str, Any]]  # statements' balance equations (bank statements only)


class Connector:
    kind: ClassVar[str]
    checks: ClassVar[tuple[str, ...]] = ()
    sensor: ClassVar[str | None] = None

    def __init__(self, lc: "LedgerConfig") -> None:
        self.lc = lc

    def source_url(self) -> str:
        """The source's connection URL from its environment variable (required: a missing variable is
        :class:`~ledger_pipelines.config.MissingConnection`, naming it)."""
        return self.lc.require_connection_url()

    def check_source(self) -> None:
        """Raises before Kafka or the warehouse is touched when the source cannot be reached at all."""

    def source_env(self, demo: Mapping[str, str], local_rpc: str) -> SourceEnv:
        """What a CLI or the UI needs to reach the source: its connection variable with the demo's value
        (``demo``: the running demo's variables) or else the configured URL; a note naming the missing
        variable otherwise."""
        from ..config import MissingConnection

        var = self.lc.connection_env or self.lc.rpc_env
        if var and demo.get(var):
            return SourceEnv(var, demo[var])
        try:
            return SourceEnv(var, self.lc.require_connection_url())
        except MissingConnection as exc:
            return SourceEnv(note=str(exc))

    def publish(self, publisher: "Publisher") -> "PublishResult":
        raise ValueError(f"ledger {self.lc.name}: kind {self.lc.kind} cannot be published")

    def read_day(self, day: date, warehouse: "Warehouse") -> DayRead:
        raise NotImplementedError


def _sql_read_day(lc: "LedgerConfig", url: str, day: date) -> DayRead:
    from .sql.journal import SqlLedger

    ledger = SqlLedger(url, lc.mapping, lc.name)
    try:
        entries, errors = ledger.read_day(day)
    finally:
        ledger.dispose()
    return DayRead(entries, errors, [])


class SqlConnector(Connector):
    """A double-entry journal table in a SQL database (``connectors/sql/``)."""

    kind = "sql"
    checks = (TRIAL_BALANCE,)
    sensor = "sql_rows_sensor"

    def check_source(self) -> None:
        self.source_url()

    def publish(self, publisher: "Publisher") -> "PublishResult":
        from ..validation import PublishResult
        from ..warehouse.state import get_cursor, set_cursor
        from .sql.journal import SqlLedger

        lc, wh = self.lc, publisher.warehouse
        result = PublishResult(lc.name)
        ledger = SqlLedger(self.source_url(), lc.mapping, lc.name)
        try:
            while True:
                read = ledger.read_new(get_cursor(wh, lc.name))
                result.read += len(read.entries) + len(read.errors)  # one entry per journal line
                result.published += publisher.send(lc.name, read.entries)
                result.rejected += publisher.dead_letters(lc.name, read.errors)
                result.check()
                set_cursor(wh, lc.name, read.cursor)  # only after Kafka acknowledged
                result.details = {"high": read.cursor["high"], "gaps": len(read.cursor["gaps"])}
                if not read.cursor.get("more"):
                    return result
        finally:
            ledger.dispose()

    def read_day(self, day: date, warehouse: "Warehouse") -> DayRead:
        return _sql_read_day(self.lc, self.source_url(), day)


class CdcConnector(Connector):
    """Another database's changes: from a Debezium topic (``options.debezium_topic``,
    ``connectors/cdc/debezium.py``) or read as a journal table from ``connection_env``. Its day is read from
    the source database when one is configured, else it is what the stream delivered (the event log)."""

    kind = "cdc"

    @property
    def sensor(self) -> str | None:  # type: ignore[override]
        return "cdc_changes_sensor" if (self.debezium_topic or self.lc.source) else None

    @property
    def debezium_topic(self) -> str | None:
        return self.lc.options.get("debezium_topic")

    def source_env(self, demo: Mapping[str, str], local_rpc: str) -> SourceEnv:
        if self.debezium_topic:
            return SourceEnv(note=f"ledger {self.lc.name} (cdc): Debezium topic {self.debezium_topic} on the Kafka "
                                  "above")
        if not (self.lc.connection_env or self.lc.rpc_env):
            return SourceEnv(note=f"ledger {self.lc.name} (cdc): no source connection, its snapshots are what its "
                                  "topic delivered (options.debezium_topic or connection_env name a source)")
        return super().source_env(demo, local_rpc)

    def check_source(self) -> None:
        if not self.debezium_topic:
            self.source_url()  # also a debezium-postgres source: the database the connector reads

    def publish(self, publisher: "Publisher") -> "PublishResult":
        if not (self.debezium_topic or self.lc.source):
            return SqlConnector(self.lc).publish(publisher)
        return self._publish_debezium(publisher)

    def read_day(self, day: date, warehouse: "Warehouse") -> DayRead:
        if self.lc.connection_env and not self.lc.source:  # a Debezium source's day is what it delivered
            return _sql_read_day(self.lc, self.source_url(), day)
        from ..warehouse.state import event_log_day

        return DayRead(event_log_day(warehouse, self.lc.name, day), [], [])

    def _publish_debezium(self, publisher: "Publisher", timeout: float = 60.0) -> "PublishResult":
        """Map the Debezium topic up to its committed end; the topic offsets are the cursor.

        With transaction metadata (the BEGIN/END topic of ``source: debezium-postgres``, or
        ``options.transaction_topic``), the events of a database transaction are handed on only once its END
        has arrived and all of the events it counts for the table have been read: a posting never reaches
        the event log half posted. A transaction still open is kept back (its events are read again on the
        next pass, from the cursor's ``safe`` offsets) and reported in the result's details; a transaction
        with one event that cannot be mapped is set aside whole, each event on the DLQ with the reason."""
        from ..kafka.topics import admin, end_offsets
        from ..validation import PublishResult, record_counts
        from ..warehouse.state import get_cursor, set_cursor

        lc, kafka, wh = self.lc, publisher.kafka, publisher.warehouse
        result = PublishResult(lc.name)
        details: dict = {}
        if lc.source == "debezium-postgres":
            from .cdc import connect

            details["connector"] = connect.register(lc, kafka, published_before=get_cursor(wh, lc.name) is not None)
            details["slot"] = connect.slot_lag(lc)
            t = connect.topics(kafka, lc)
            topic, tx_topic = t.data, t.transactions
        else:
            topic, tx_topic = self.debezium_topic, lc.options.get("transaction_topic")
        present = admin(kafka).list_topics(timeout=15).topics
        md = present.get(topic)
        if md is None or md.error is not None:
            if lc.source == "debezium-postgres":  # the connector has not written a change yet
                result.check(tombstones=0)
                result.details = {**details, "topic": topic, "note": "no change captured yet"}
                return result
            raise RuntimeError(f"ledger {lc.name}: Debezium topic {topic!r} not found")
        tx_md = present.get(tx_topic) if tx_topic else None
        parts = {topic: len(md.partitions)}
        if tx_md is not None and tx_md.error is None:
            parts[tx_topic] = len(tx_md.partitions)
        elif tx_topic:
            # never hand events on unframed: half a posting would go out, and its other lines would wait for
            # ever for an END that counted them all. Until the topic is there (the connector creates it with
            # its first END, after its first change event) every event of a transaction waits; snapshot rows,
            # which belong to none, go through
            why = tx_md.error if tx_md is not None else "unknown topic"
            details["transaction_topic_missing"] = f"{tx_topic} ({why}): the events of transactions wait for it"
            log.warning("ledger %s: transaction topic %s", lc.name, details["transaction_topic_missing"])
        ends = end_offsets(kafka, parts)
        cursor = get_cursor(wh, lc.name) or {}
        if cursor and cursor.get("topic", topic) != topic:
            raise RuntimeError(f"ledger {lc.name}: its cursor is of topic {cursor['topic']!r}, not {topic!r} (the "
                               "mapping, the topic prefix or debezium_topic changed): reset the ledger's cursor "
                               "to read the new topic from its start")
        behind = [p for p, o in cursor.get("offsets", {}).items() if int(p) >= parts[topic]
                  or ends[(topic, int(p))] < o]
        if behind:
            raise RuntimeError(f"ledger {lc.name}: {topic} ends before the cursor on partition(s) {behind} (the topic "
                               "was deleted and created again?): nothing is published until the cursor is reset")
        done = {int(p): o for p, o in cursor.get("offsets", {}).items()}  # read up to here before
        safe = {int(p): o for p, o in cursor.get("safe", {}).items()}  # from here: events of open transactions
        tx_done = {int(p): o for p, o in cursor.get("tx_offsets", {}).items()}
        pending = set(cursor.get("pending", []))
        expected: dict[str, int] = dict(cursor.get("ends", {}))
        start = {(topic, p): min(safe.get(p, done.get(p, 0)), done.get(p, 0)) for p in range(parts[topic])}
        if tx_topic in parts:
            start.update({(tx_topic, p): tx_done.get(p, 0) for p in range(parts[tx_topic])})
        todo = {tp: o for tp, o in start.items() if o < ends[tp]}
        collection = f"{lc.mapping.schema or 'public'}.{lc.mapping.table}"
        events: list[tuple[int, int, bytes | None, str | None]] = []  # (partition, offset, value, transaction)
        for tp, msg in _read_to_end(kafka, lc.name, todo, ends, timeout):
            if tp[0] == tx_topic:
                _transaction_marker(msg.value(), collection, expected)
                continue
            tx = _tx_of(msg.value())
            if msg.offset() < done.get(tp[1], 0) and tx not in pending:
                continue  # handed on by an earlier pass
            events.append((tp[1], msg.offset(), msg.value(), tx))
        entries, errors, counted = self._map_transactions(events, expected, bool(tx_topic), topic, details)
        result.read, mapped, tombstones = counted
        result.published = publisher.send(lc.name, entries)
        result.rejected = publisher.dead_letters(lc.name, errors)
        # a record here is a change event: an update becomes two entries (its new version and the
        # reversal of the old one), so the identity counts events, and entries_published the entries
        held = sum(t["events_read"] for t in details.get("open_transactions", []))
        result.counts = record_counts(f"publish {lc.name}", result.read, mapped, result.rejected,
                                      tombstones=tombstones)
        result.counts["entries_published"] = result.published
        result.counts["events_held_in_open_transactions"] = held
        new_done = {p: max(done.get(p, 0), ends[(topic, p)]) for p in range(parts[topic])}
        open_tx = details.get("open_transactions", [])
        new_safe = {p: min([o for t in open_tx for q, o in t["offsets"] if q == p], default=new_done[p])
                    for p in range(parts[topic])}
        keep = {t["transaction"] for t in open_tx}
        set_cursor(wh, lc.name, {
            "topic": topic,
            "offsets": {str(p): o for p, o in new_done.items()},
            "safe": {str(p): o for p, o in new_safe.items()},
            "tx_offsets": {str(p): ends[(tx_topic, p)] for p in range(parts.get(tx_topic, 0))},
            "pending": sorted(keep),
            # ENDs of transactions whose events are still to come (or still open here)
            "ends": {tx: n for tx, n in expected.items() if n and (tx in keep or tx not in details.get("_closed", set()))},
        })
        details.pop("_closed", None)
        result.details = {**details, "topic": topic, "offsets": new_done,
                          **({"transaction_topic": tx_topic} if tx_topic in parts else {})}
        return result

    def _map_transactions(self, events, expected, framed: bool, topic: str, details: dict):
        """(entries, DLQ errors, (events read, events mapped, tombstones)) of ``events``: each transaction whole
        or not at all."""
        from ..model import EntryError
        from .cdc.debezium import event_to_entries

        lc = self.lc
        groups: dict[str | None, list] = {}
        for ev in events:
            groups.setdefault(ev[3] if framed else None, []).append(ev)
        entries, errors, open_tx, closed = [], [], [], set()
        read = mapped = tombstones = 0
        for tx, evs in groups.items():
            if framed and tx is None:  # outside a transaction: only snapshot rows and tombstones
                stray = [e for e in evs if not _snapshot_or_tombstone(e[2])]
                if stray:
                    errors.extend((f"kafka:{topic}/{p}/{o}", "a change event without its transaction block on a "
                                   "framed topic: it cannot be told whole", value) for p, o, value, _ in stray)
                    read += len(stray)
                    evs = [e for e in evs if _snapshot_or_tombstone(e[2])]
            data = [e for e in evs if e[2] is not None]
            if tx is not None:
                want = expected.get(tx)
                if want is None or len(data) < want:
                    open_tx.append({"transaction": tx, "events_read": len(evs), "events_expected": want,
                                    "offsets": [(p, o) for p, o, _, _ in evs]})
                    continue
                closed.add(tx)
            read += len(evs)
            tombstones += len(evs) - len(data)
            out, bad = [], []
            for p, o, value, _ in data:
                try:
                    out.extend(event_to_entries(value, lc.mapping, lc.name))
                except EntryError as exc:
                    bad.append((f"kafka:{topic}/{p}/{o}", str(exc), value))
            if tx is not None and len(data) > expected[tx]:
                bad.append((f"kafka:{topic}", f"transaction {tx}: {len(data)} events read, its END counts "
                                              f"{expected[tx]}", None))
            if tx is not None and bad:  # one bad line sets the whole posting aside
                reason = "; ".join(f"{w}: {r}" for w, r, _ in bad)[:2000]
                errors.extend((f"kafka:{topic}/{p}/{o}", f"transaction {tx} set aside whole: {reason}", value)
                              for p, o, value, _ in data)
                continue
            errors.extend(bad)
            mapped += len(data) - len(bad)
            entries.extend(out)
        if open_tx:
            details["open_transactions"] = open_tx
        details["_closed"] = closed
        return entries, errors, (read, mapped, tombstones)


def _tx_of(value: bytes | None) -> str | None:
    """The database transaction of a Debezium event: the part of ``transaction.id`` before ':' (the part
    after it differs from one event of the transaction to the next)."""
    if value is None:
        return None
    try:
        tx = _payload(json.loads(value)).get("transaction")
    except (ValueError, AttributeError):
        return None
    if not isinstance(tx, dict) or not isinstance(tx.get("id"), str):
        return None
    return tx["id"].split(":", 1)[0]


def _payload(doc):
    """The record itself, inside or outside Connect's schema envelope."""
    if isinstance(doc, dict) and "payload" in doc and "schema" in doc:
        return doc["payload"]
    return doc


def _snapshot_or_tombstone(value: bytes | None) -> bool:
    if value is None:
        return True
    try:
        return _payload(json.loads(value)).get("op") == "r"
    except (ValueError, AttributeError):
        return False


def _transaction_marker(value: bytes | None, collection: str, expected: dict[str, int]) -> None:
    """An END record: how many events the transaction wrote to ``collection``."""
    try:
        doc = _payload(json.loads(value)) if value is not None else None
    except (ValueError, AttributeError):
        return
    if not isinstance(doc, dict) or doc.get("status") != "END" or not isinstance(doc.get("id"), str):
        return
    counts = {c.get("data_collection"): c.get("event_count") for c in doc.get("data_collections") or []
              if isinstance(c, dict)}
    n = counts.get(collection, 0)
    if type(n) is int and n >= 0:
        expected[doc["id"].split(":", 1)[0]] = n


def _read_to_end(kafka, ledger: str, todo: dict, ends: dict, timeout: float):
    """Every committed message of the partitions of ``todo`` from its offset up to ``ends``."""
    from confluent_kafka import OFFSET_INVALID, Consumer, TopicPartition

    if not todo:
        return
    consumer = Consumer({**kafka.client_config(), "group.id": f"ledger-pipelines.cdc.{ledger}",
                         "enable.auto.commit": False, "isolation.level": "read_committed",
                         "auto.offset.reset": "error"})
    try:
        consumer.assign([TopicPartition(t, p, o) for (t, p), o in todo.items()])
        position = dict(todo)
        deadline = time.monotonic() + timeout
        while any(position[tp] < ends[tp] for tp in todo):
            if time.monotonic() > deadline:
                raise RuntimeError(f"ledger {ledger}: {sorted({t for t, _ in todo})} not read to the end in "
                                   f"{timeout:.0f}s")
            for msg in consumer.consume(5000, timeout=0.5):
                tp = (msg.topic(), msg.partition())
                if msg.error() is not None or msg.offset() >= ends[tp]:
                    continue
                yield tp, msg
            for tpo in consumer.position([TopicPartition(t, p) for t, p in todo]):
                if tpo.offset != OFFSET_INVALID:
                    position[(tpo.topic, tpo.partition)] = min(tpo.offset, ends[(tpo.topic, tpo.partition)])
    finally:
        consumer.close()


class EvmConnector(Connector):
    """Token transfers on an EVM chain (``connectors/evm/``)."""

    kind = "evm"
    sensor = "evm_blocks_sensor"

    def source_url(self) -> str:
        """The RPC URL from ``rpc_env``; the local anvil when none is configured."""
        from ..settings import StackConfig

        return self.lc.connection_url() or StackConfig.from_env().anvil_url

    def source_env(self, demo: Mapping[str, str], local_rpc: str) -> SourceEnv:
        var = self.lc.connection_env or self.lc.rpc_env  # what source_url reads
        if var:
            return SourceEnv(var, demo.get(var) or os.environ.get(var) or local_rpc, rpc=True)
        return SourceEnv(note=f"ledger {self.lc.name} (evm): no rpc_env configured, reads the local anvil {local_rpc}")

    def publish(self, publisher: "Publisher") -> "PublishResult":
        from .evm.reader import EvmPublisher

        result = EvmPublisher(self.lc, self.source_url(), publisher).publish()
        # the EVM connector does not count the logs it read, only the entries (with the orphaned
        # versions of stored ones, details["orphaned"]) and rejections they became, both
        # acknowledged (send, dead_letters): read is their sum
        result.read = result.published + result.rejected
        result.check()
        return result

    def read_day(self, day: date, warehouse: "Warehouse") -> DayRead:
        from .evm.reader import EvmReader

        entries, errors = EvmReader(self.lc, self.source_url()).read_day(day)
        return DayRead(entries, errors, [])


class StatementConnector(Connector):
    """ISO 20022 bank statements dropped into an inbox folder (``connectors/iso20022/``); the days are
    read from the inbox's index (``statement_inbox.py``)."""

    kind = "iso20022"
    checks = (STATEMENT_BALANCE,)
    sensor = "statement_inbox_sensor"

    def source_env(self, demo: Mapping[str, str], local_rpc: str) -> SourceEnv:
        return SourceEnv(note=f"ledger {self.lc.name} (iso20022): statements are read from the inbox "
                              f"{self.lc.inbox_path()}")

    def publish(self, publisher: "Publisher") -> "PublishResult":
        from ..validation import PublishResult
        from ..warehouse.state import file_processed, mark_file_processed
        from ..statement_inbox import inbox_files
        from .iso20022 import CamtError, camt_to_entries, read_document

        lc, wh = self.lc, publisher.warehouse
        result = PublishResult(lc.name)
        lc.inbox_path().mkdir(parents=True, exist_ok=True)
        for path in inbox_files(lc):
            with open(path, "rb") as f:
                digest = hashlib.file_digest(f, "sha256").hexdigest()
            if file_processed(wh, lc.name, digest):
                continue
            data = b""
            try:
                data = read_document(path)
                entries, errors, statements = camt_to_entries(data, lc.name)
            except CamtError as exc:  # an unreadable document is one record, rejected whole
                entries, errors, statements = [], [], []
                result.read += 1
                result.rejected += publisher.dead_letters(lc.name, [(f"file:{path.name}", str(exc), data[:65536])])
            result.read += len(entries) + len(errors)  # one entry per statement entry (Ntry)
            result.published += publisher.send(lc.name, entries)
            result.rejected += publisher.dead_letters(lc.name, [(f"file:{path.name}: {e.source}", e.reason)
                                                                 for e in errors])
            result.check()  # before the file counts as processed
            mark_file_processed(wh, lc.name, digest, path.name, len(entries), len(errors))
            result.files.append(path.name)
            checks = [st.balance_check() for st in statements]
            result.details.setdefault("balance_checks", []).extend(checks)
        result.check()
        return result

    def read_day(self, day: date, warehouse: "Warehouse") -> DayRead:
        """Each file is parsed once per content, and each of its records belongs to one day (see
        :mod:`ledger_pipelines.statement_inbox`)."""
        from ..statement_inbox import StatementInbox

        return DayRead(*StatementInbox(self.lc).read_day(day))


CONNECTORS: dict[str, type[Connector]] = {c.kind: c for c in (SqlConnector, CdcConnector, EvmConnector,
                                                              StatementConnector)}


def connector_for(lc: "LedgerConfig") -> Connector:
    return CONNECTORS[lc.kind](lc)


def source_url(lc: "LedgerConfig") -> str:
    """The ledger's connection URL (see :meth:`Connector.source_url`)."""
    return connector_for(lc).source_url()
