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
import os
import time
from datetime import date
from typing import TYPE_CHECKING, Any, ClassVar, Mapping, NamedTuple

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
            self.source_url()

    def publish(self, publisher: "Publisher") -> "PublishResult":
        if not self.debezium_topic:
            return SqlConnector(self.lc).publish(publisher)
        return self._publish_debezium(publisher)

    def read_day(self, day: date, warehouse: "Warehouse") -> DayRead:
        if self.lc.connection_env:
            return _sql_read_day(self.lc, self.source_url(), day)
        from ..warehouse.state import event_log_day

        return DayRead(event_log_day(warehouse, self.lc.name, day), [], [])

    def _publish_debezium(self, publisher: "Publisher", timeout: float = 60.0) -> "PublishResult":
        """Map a Debezium topic up to its committed end; the topic offsets are the cursor."""
        from confluent_kafka import OFFSET_INVALID, Consumer, TopicPartition

        from ..kafka.topics import admin, end_offsets
        from ..model import EntryError
        from ..validation import PublishResult, record_counts
        from ..warehouse.state import get_cursor, set_cursor
        from .cdc.debezium import event_to_entries

        lc, kafka, wh = self.lc, publisher.kafka, publisher.warehouse
        topic = self.debezium_topic
        result = PublishResult(lc.name)
        md = admin(kafka).list_topics(topic=topic, timeout=15).topics.get(topic)
        if md is None or md.error is not None:
            raise RuntimeError(f"ledger {lc.name}: Debezium topic {topic!r} not found")
        ends = end_offsets(kafka, {topic: len(md.partitions)})
        offsets = {int(p): o for p, o in (get_cursor(wh, lc.name) or {}).get("offsets", {}).items()}
        todo = {p: offsets.get(p, 0) for (_, p), end in ends.items() if offsets.get(p, 0) < end}
        if not todo:
            result.check(tombstones=0)
            return result
        consumer = Consumer({**kafka.client_config(), "group.id": f"ledger-pipelines.cdc.{lc.name}",
                             "enable.auto.commit": False, "isolation.level": "read_committed",
                             "auto.offset.reset": "error"})
        entries, errors = [], []
        mapped = tombstones = 0  # change events that became entries; deletions' tombstones
        try:
            consumer.assign([TopicPartition(topic, p, o) for p, o in todo.items()])
            position = dict(todo)
            deadline = time.monotonic() + timeout
            while any(position[p] < ends[(topic, p)] for p in todo):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"ledger {lc.name}: {topic} not read to its end in {timeout:.0f}s")
                for msg in consumer.consume(5000, timeout=0.5):
                    if msg.error() is not None or msg.offset() >= ends[(topic, msg.partition())]:
                        continue
                    source = f"kafka:{topic}/{msg.partition()}/{msg.offset()}"
                    result.read += 1
                    try:
                        if msg.value() is None:  # Debezium's tombstone after a delete: nothing to book
                            tombstones += 1
                            continue
                        entries.extend(event_to_entries(msg.value(), lc.mapping, lc.name))
                        mapped += 1
                    except EntryError as exc:
                        errors.append((source, str(exc), msg.value()))
                for tpo in consumer.position([TopicPartition(topic, p) for p in todo]):
                    if tpo.offset != OFFSET_INVALID:
                        position[tpo.partition] = min(tpo.offset, ends[(topic, tpo.partition)])
        finally:
            consumer.close()
        result.published = publisher.send(lc.name, entries)
        result.rejected = publisher.dead_letters(lc.name, errors)
        # a record here is a change event: an update becomes two entries (its new version and the
        # reversal of the old one), so the identity counts events, and entries_published the entries
        result.counts = record_counts(f"publish {lc.name}", result.read, mapped, result.rejected,
                                      tombstones=tombstones)
        result.counts["entries_published"] = result.published
        offsets.update(position)
        set_cursor(wh, lc.name, {"offsets": {str(p): o for p, o in offsets.items()}})
        result.details = {"topic": topic, "offsets": offsets}
        return result


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
