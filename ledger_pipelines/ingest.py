"""Exactly-once ingestion of the entry topics into the warehouse's event log.

The run reads every partition from the offset stored in the warehouse up to a target offset fixed
before it started (by the sensor, or by reading the end offsets once). Each batch writes its rows
and the partitions' next offsets in one database transaction; consumer-group offsets are never
committed. A partition is done when the consumer's position reaches its target: transaction
markers occupy offsets that are never delivered, so waiting to *see* offset target-1 could hang.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from confluent_kafka import OFFSET_INVALID, Consumer, KafkaError, KafkaException, TopicPartition

from .kafka.producers import DLQ_PAYLOAD_LIMIT, DeadLetterProducer
from .kafka.topics import end_offsets, ledger_of_topic
from .model import EntryError, decode_entry, encode_entry
from .settings import KafkaSettings
from .warehouse import BatchCounts, EventBatch, Warehouse

log = logging.getLogger(__name__)

DEFAULT_CONSUMER = "ledger_event_log"
MAX_ENTRY_BYTES = 1024 * 1024

TopicPartitionKey = tuple[str, int]


class IngestStalled(RuntimeError):
    pass


@dataclass
class IngestResult:
    counts: BatchCounts = field(default_factory=BatchCounts)
    consumed: int = 0
    batches: int = 0
    elapsed: float = 0.0
    start: dict[TopicPartitionKey, int] = field(default_factory=dict)
    targets: dict[TopicPartitionKey, int] = field(default_factory=dict)
    final: dict[TopicPartitionKey, int] = field(default_factory=dict)
    lag: dict[TopicPartitionKey, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.consumed / self.elapsed if self.elapsed else 0.0


def _row_of(msg, run_id: str | None, ledger: str | None, max_bytes: int):
    """(row, econ) for a valid message; raises EntryError with the reason otherwise."""
    value = msg.value()
    if value is None:
        raise EntryError("null value (tombstone): entry topics carry entries, not deletions")
    if len(value) > max_bytes:
        raise EntryError(f"value of {len(value)} bytes exceeds the {max_bytes}-byte entry limit")
    e = decode_entry(value)
    if ledger is not None and e.ledger != ledger:
        raise EntryError(f"ledger: {e.ledger!r} does not belong on topic {msg.topic()!r}")
    key = msg.key()
    if key is not None and key != e.entry_id.encode():
        raise EntryError(f"message key {key[:200]!r} differs from entry_id {e.entry_id!r}")
    canonical = encode_entry(e)
    digest = hashlib.blake2b(canonical, digest_size=16).hexdigest()
    pos = _json(e.position)
    attrs = _json(e.attributes)
    row = (msg.topic(), msg.partition(), msg.offset(), e.entry_id, e.ledger, e.ledger_kind, e.source_ref,
           e.correlation_id, e.account, e.counterparty, e.asset, e.amount, e.direction, e.booked_at,
           e.value_date, e.status, pos, attrs, digest, run_id)
    econ = (e.ledger, e.ledger_kind, e.source_ref, e.account, e.counterparty, e.asset, e.amount, e.direction,
            e.correlation_id)
    return row, econ


def _json(obj) -> str:
    import msgspec

    return msgspec.json.encode(obj, order="sorted").decode() if obj else "{}"


class EventLogIngestor:
    def __init__(
        self,
        kafka: KafkaSettings,
        warehouse: Warehouse,
        consumer: str = DEFAULT_CONSUMER,
        batch_size: int = 10_000,
        max_entry_bytes: int = MAX_ENTRY_BYTES,
        stall_timeout: float = 60.0,
        run_id: str | None = None,
        progress: Callable[[IngestResult], None] | None = None,
    ):
        self.kafka = kafka
        self.warehouse = warehouse
        self.consumer_name = consumer
        self.batch_size = batch_size
        self.max_entry_bytes = max_entry_bytes
        self.stall_timeout = stall_timeout
        self.run_id = run_id
        self.progress = progress

    def _consumer(self) -> Consumer:
        return Consumer(
            {
                **self.kafka.client_config(),
                # librdkafka wants a group id even for assign(); offsets are never committed to it
                "group.id": f"ledger-pipelines.{self.consumer_name}",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "isolation.level": "read_committed",
                "auto.offset.reset": "error",
                "enable.partition.eof": False,
                "fetch.max.bytes": 64 * 1024 * 1024,
                "max.partition.fetch.bytes": 17 * 1024 * 1024,
                "queued.max.messages.kbytes": 262_144,
                "fetch.wait.max.ms": 50,
                "client.id": f"ledger-pipelines.{self.consumer_name}",
            }
        )

    def run(self, targets: dict[TopicPartitionKey, int] | None = None) -> IngestResult:
        t0 = time.monotonic()
        self.warehouse.create_schema()
        if targets is None:
            targets = end_offsets(self.kafka)
        self.warehouse.init_offsets(self.consumer_name, targets)
        stored = self.warehouse.stored_offsets(self.consumer_name)
        result = IngestResult(targets=dict(targets))
        result.start = {tp: stored[tp] for tp in targets}
        todo = {tp: off for tp, off in targets.items() if stored[tp] < off}
        current = {tp: stored[tp] for tp in todo}
        if todo:
            self._consume(todo, current, result)
        result.final = {tp: self.warehouse.stored_offsets(self.consumer_name)[tp] for tp in targets}
        try:
            now_end = end_offsets(self.kafka, {t: n for t, n in _partition_counts(targets).items()})
            result.lag = {tp: max(0, now_end.get(tp, 0) - result.final[tp]) for tp in targets}
        except KafkaException as exc:
            log.warning("could not read end offsets for the lag: %s", exc)
        result.elapsed = time.monotonic() - t0
        return result

    def _consume(self, todo: dict, current: dict, result: IngestResult) -> None:
        consumer = self._consumer()
        writer = self.warehouse.writer(self.consumer_name, self.run_id)
        dlq = None
        ledgers = {t: ledger_of_topic(self.kafka, t) for t, _ in todo}
        try:
            consumer.assign([TopicPartition(t, p, current[(t, p)]) for t, p in todo])
            open_parts = set(todo)
            last_progress = time.monotonic()
            while open_parts:
                msgs = consumer.consume(self.batch_size, timeout=0.5)
                batch = EventBatch()
                advanced: dict[TopicPartitionKey, int] = {}
                for msg in msgs:
                    err = msg.error()
                    if err is not None:
                        if err.code() == KafkaError._AUTO_OFFSET_RESET:
                            raise KafkaException(err)
                        if err.fatal() or not err.retriable():
                            raise KafkaException(err)
                        log.warning("transient consumer error: %s", err)
                        continue
                    tp = (msg.topic(), msg.partition())
                    off = msg.offset()
                    if tp not in open_parts or off >= todo[tp]:
                        continue  # beyond this run's fixed target: the next run takes it
                    advanced[tp] = off + 1
                    try:
                        row, econ = _row_of(msg, self.run_id, ledgers[tp[0]], self.max_entry_bytes)
                    except EntryError as exc:
                        value = msg.value() or b""
                        key = msg.key().decode("utf-8", "replace") if msg.key() else None
                        batch.rejects.append((tp[0], tp[1], off, key, str(exc), value[:DLQ_PAYLOAD_LIMIT], len(value)))
                        continue
                    batch.rows.append(row)
                    batch.econ.append(econ)
                    batch.raw.append(msg.value())
                # position covers offsets that hold no message (transaction markers, compaction)
                positions = consumer.position([TopicPartition(t, p) for t, p in open_parts])
                for tpo in positions:
                    tp = (tpo.topic, tpo.partition)
                    if tpo.offset != OFFSET_INVALID and tpo.offset > advanced.get(tp, current[tp]):
                        advanced[tp] = tpo.offset
                for tp, nxt in advanced.items():
                    nxt = min(nxt, todo[tp])
                    if nxt > current[tp]:
                        batch.offsets[tp] = (current[tp], nxt)
                if batch.offsets:
                    if batch.rejects:
                        dlq = dlq or DeadLetterProducer(self.kafka, source=self.consumer_name)
                        for topic, part, off, _key, error, payload, _size in batch.rejects:
                            dlq.send(ledgers[topic], f"kafka:{topic}/{part}/{off}", error, payload)
                        # the DLQ has them before the offsets move past them
                        dlq.confirm()
                    result.counts.add(writer.write(batch))
                    result.batches += 1
                    result.consumed += len(batch.rows) + len(batch.rejects)
                    for tp, (_, nxt) in batch.offsets.items():
                        current[tp] = nxt
                    last_progress = time.monotonic()
                    if self.progress:
                        self.progress(result)
                done = [tp for tp in open_parts if current[tp] >= todo[tp]]
                if done:
                    consumer.pause([TopicPartition(t, p) for t, p in done])
                    open_parts.difference_update(done)
                if open_parts and time.monotonic() - last_progress > self.stall_timeout:
                    raise IngestStalled(
                        "no progress for %.0fs; waiting for %s"
                        % (self.stall_timeout, {f"{t}[{p}]": (current[(t, p)], todo[(t, p)]) for t, p in open_parts})
                    )
        finally:
            writer.close()
            consumer.close()


def _partition_counts(targets) -> dict[str, int]:
    counts: dict[str, int] = {}
    for t, p in targets:
        counts[t] = max(counts.get(t, 0), p + 1)
    return counts
