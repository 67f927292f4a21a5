"""Incremental publishing of a configured ledger to its Kafka topic.

Order of effects, for crash safety: read from the source, produce entries and dead letters, wait
until Kafka acknowledged every one, and only then save the cursor (or mark the file processed).
A crash in between re-publishes the same ``entry_id``s, which the event log counts once.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from .config import LedgerConfig
from .kafka import DeadLetterProducer, EntryProducer, ensure_topics
from .settings import KafkaSettings, StackConfig
from .validation import CountMismatch, PublishResult, record_counts
from .warehouse import Warehouse
from .warehouse.state import file_processed, get_cursor, mark_file_processed, set_cursor

log = logging.getLogger(__name__)


def source_url(lc: LedgerConfig) -> str:
    """The ledger's connection URL from its environment variable. A SQL ledger's is required
    (:class:`~ledger_pipelines.config.MissingConnection` names the variable); an EVM ledger's defaults
    to the local anvil."""
    if lc.kind == "evm":
        return lc.connection_url() or StackConfig.from_env().anvil_url
    return lc.require_connection_url()


class Publisher:
    def __init__(self, kafka: KafkaSettings, warehouse: Warehouse):
        self.kafka = kafka
        self.warehouse = warehouse
        self._producer: EntryProducer | None = None
        self._dlq: DeadLetterProducer | None = None

    @property
    def producer(self) -> EntryProducer:
        if self._producer is None:
            self._producer = EntryProducer(self.kafka, "publisher")
        return self._producer

    def dead_letters(self, ledger: str, errors) -> int:
        """Set bad records aside on the DLQ (source, reason[, payload]); returns how many, once confirmed."""
        if not errors:
            return 0
        if self._dlq is None:
            self._dlq = DeadLetterProducer(self.kafka, source="publisher")
        for source, reason, *payload in errors:
            log.warning("%s: %s", source, reason)
            self._dlq.send(ledger, source, reason, payload[0] if payload else None)
        return _acknowledged(ledger, "rejections on the DLQ", len(errors), self._dlq.confirm())

    def send(self, ledger: str, entries) -> int:
        """Entries to the ledger's topic; returns how many, once Kafka acknowledged every one."""
        return _acknowledged(ledger, "entries", len(entries), self.producer.publish(entries))

    def publish(self, lc: LedgerConfig) -> PublishResult:
        if lc.kind == "sql" or (lc.kind == "cdc" and not lc.options.get("debezium_topic")):
            source_url(lc)  # a missing connection variable is said before Kafka or the warehouse is touched
        ensure_topics(self.kafka, [lc.name])
        self.warehouse.create_schema()
        if lc.kind == "cdc" and lc.options.get("debezium_topic"):
            return self._publish_debezium(lc)
        if lc.kind in ("sql", "cdc"):
            return self._publish_sql(lc)
        if lc.kind == "iso20022":
            return self._publish_inbox(lc)
        if lc.kind == "evm":
            from .connectors.evm_reader import EvmPublisher

            result = EvmPublisher(lc, source_url(lc), self).publish()
            # the EVM connector does not count the logs it read, only the entries (with the orphaned
            # versions of stored ones, details["orphaned"]) and rejections they became, both
            # acknowledged (send, dead_letters): read is their sum
            result.read = result.published + result.rejected
            result.check()
            return result
        raise ValueError(f"ledger {lc.name}: kind {lc.kind} cannot be published")

    def _publish_sql(self, lc: LedgerConfig) -> PublishResult:
        from .connectors.sql import SqlLedger

        result = PublishResult(lc.name)
        ledger = SqlLedger(source_url(lc), lc.mapping, lc.name)
        try:
            while True:
                read = ledger.read_new(get_cursor(self.warehouse, lc.name))
                result.read += len(read.entries) + len(read.errors)  # one entry per journal line
                result.published += self.send(lc.name, read.entries)
                result.rejected += self.dead_letters(lc.name, read.errors)
                result.check()
                set_cursor(self.warehouse, lc.name, read.cursor)  # only after Kafka acknowledged
                result.details = {"high": read.cursor["high"], "gaps": len(read.cursor["gaps"])}
                if not read.cursor.get("more"):
                    return result
        finally:
            ledger.dispose()

    def _publish_debezium(self, lc: LedgerConfig, timeout: float = 60.0) -> PublishResult:
        """Map a Debezium topic up to its committed end; the topic offsets are the cursor."""
        import time

        from confluent_kafka import OFFSET_INVALID, Consumer, TopicPartition

        from .connectors.debezium import event_to_entries
        from .kafka.topics import admin, end_offsets
        from .model import EntryError

        topic = lc.options["debezium_topic"]
        result = PublishResult(lc.name)
        md = admin(self.kafka).list_topics(topic=topic, timeout=15).topics.get(topic)
        if md is None or md.error is not None:
            raise RuntimeError(f"ledger {lc.name}: Debezium topic {topic!r} not found")
        ends = end_offsets(self.kafka, {topic: len(md.partitions)})
        offsets = {int(p): o for p, o in (get_cursor(self.warehouse, lc.name) or {}).get("offsets", {}).items()}
        todo = {p: offsets.get(p, 0) for (_, p), end in ends.items() if offsets.get(p, 0) < end}
        if not todo:
            result.check(tombstones=0)
            return result
        consumer = Consumer({**self.kafka.client_config(), "group.id": f"ledger-pipelines.cdc.{lc.name}",
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
        result.published = self.send(lc.name, entries)
        result.rejected = self.dead_letters(lc.name, errors)
        # a record here is a change event: an update becomes two entries (its new version and the
        # reversal of the old one), so the identity counts events, and entries_published the entries
        result.counts = record_counts(f"publish {lc.name}", result.read, mapped, result.rejected,
                                      tombstones=tombstones)
        result.counts["entries_published"] = result.published
        offsets.update(position)
        set_cursor(self.warehouse, lc.name, {"offsets": {str(p): o for p, o in offsets.items()}})
        result.details = {"topic": topic, "offsets": offsets}
        return result

    def _publish_inbox(self, lc: LedgerConfig) -> PublishResult:
        from .connectors.iso20022 import CamtError, camt_to_entries, read_document

        result = PublishResult(lc.name)
        lc.inbox_path().mkdir(parents=True, exist_ok=True)
        for path in inbox_files(lc):
            with open(path, "rb") as f:
                digest = hashlib.file_digest(f, "sha256").hexdigest()
            if file_processed(self.warehouse, lc.name, digest):
                continue
            data = b""
            try:
                data = read_document(path)
                entries, errors, statements = camt_to_entries(data, lc.name)
            except CamtError as exc:  # an unreadable document is one record, rejected whole
                entries, errors, statements = [], [], []
                result.read += 1
                result.rejected += self.dead_letters(lc.name, [(f"file:{path.name}", str(exc), data[:65536])])
            result.read += len(entries) + len(errors)  # one entry per statement entry (Ntry)
            result.published += self.send(lc.name, entries)
            result.rejected += self.dead_letters(lc.name, [(f"file:{path.name}: {e.source}", e.reason)
                                                            for e in errors])
            result.check()  # before the file counts as processed
            mark_file_processed(self.warehouse, lc.name, digest, path.name, len(entries), len(errors))
            result.files.append(path.name)
            checks = [st.balance_check() for st in statements]
            result.details.setdefault("balance_checks", []).extend(checks)
        result.check()
        return result


def _acknowledged(ledger: str, what: str, handed: int, acked: int) -> int:
    if acked != handed:
        raise CountMismatch(f"publish {ledger}: Kafka acknowledged {acked} of the {handed} {what} handed to it")
    return acked


def inbox_files(lc: LedgerConfig) -> list[Path]:
    inbox = lc.inbox_path()
    return sorted(p for p in inbox.iterdir() if p.is_file() and p.suffix.lower() == ".xml") if inbox.is_dir() else []
