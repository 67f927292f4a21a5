"""Exactly-once ingestion of the entry topics into the warehouse's event log.

A run reads every partition from the offset stored in the warehouse up to a target offset fixed
before it started (by the sensor, or by reading the end offsets once). Each batch writes its rows
and its partitions' next offsets in one database transaction, advancing the offsets by
compare-and-set; consumer-group offsets are never committed. A partition is done when the
consumer's *position* reaches its target: transaction markers occupy offsets that are never
delivered, so waiting to see offset target-1 could hang.

A run with ``processes=1`` is one process with one consumer and one database connection for all
its partitions. With ``processes=N`` the partitions to read are shared out between N worker
processes (``python -m ledger_pipelines.ingest_worker``), each with its own consumer and connection;
each batch is still one transaction of rows and offsets, so the workers need no coordination and a
worker that dies leaves only committed batches behind. On the event-log bench two processes ingest
1.5 to 1.8 times as fast as one (docs/performance.md, event-log ingest). A worker costs about a second
to start (its interpreter, imports, consumer and connection), so a run starts one only for every
``records_per_process`` records it has to read (50,000 unless told): a sensor's run of a few
thousand new entries reads them in its own process.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from confluent_kafka import OFFSET_INVALID, Consumer, KafkaError, KafkaException, TopicPartition

from .kafka.producers import DLQ_PAYLOAD_LIMIT, DeadLetterProducer
from .kafka.topics import end_offsets, ledger_of_topic
from .model import EntryError, decode_wire
from .settings import KafkaSettings, library_log_file
from .validation import record_counts
from .warehouse import BatchCounts, EventBatch, Warehouse
from .warehouse.writer import content_hash

log = logging.getLogger(__name__)

DEFAULT_CONSUMER = "ledger_event_log"
MAX_ENTRY_BYTES = 1024 * 1024

TopicPartitionKey = tuple[str, int]


class IngestStalled(RuntimeError):
    pass


class IngestWorkerFailed(RuntimeError):
    pass


MAX_PROCESSES = 16
# seconds a worker asked to stop has to commit its batch in flight; it then exits on its own, and the run
# kills it a few seconds later still
WORKER_STOP_GRACE = 30.0
# what the ledger_event_log asset and `ledger-pipelines ingest` run with unless told otherwise
DEFAULT_PROCESSES = 2
# the records each worker process has to read at least: a worker costs about half a second to start, and
# two processes read about 1.6x as fast as one (~58k records/s), so the second worker, started at 100,000
# records to read (50,000 each), saves about what it costs; beyond that it gains
RECORDS_PER_PROCESS = 50_000


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
    records: dict[str, int] = field(default_factory=dict)  # consumed = entries + rejected + ..., checked
    worker_batches: list[int] = field(default_factory=list)  # batches committed by each process that ran

    @property
    def rate(self) -> float:
        return self.consumed / self.elapsed if self.elapsed else 0.0

    def add_batch(self, counts: BatchCounts, consumed: int) -> None:
        self.counts.add(counts)
        self.consumed += consumed
        self.batches += 1

    def check(self) -> dict[str, int]:
        self.records = _records("event log", self.consumed, self.counts)
        return self.records


def _records(stage: str, consumed: int, c: BatchCounts) -> dict[str, int]:
    """Every message consumed is a stored version (entries), an exact duplicate of a stored one, a
    conflict (same id, other economics: kept apart) or a rejection (on the DLQ)."""
    return record_counts(stage, consumed, c.inserted, c.rejected, duplicates=c.duplicates, conflicts=c.conflicts)


def message_entry(value: bytes | None, key: bytes | None, topic: str, ledger: str | None, max_bytes: int = MAX_ENTRY_BYTES,
                  decode: Callable = decode_wire):
    """The entry of a message of ``topic`` (the entries topic of ``ledger``), decoded by ``decode``; an
    :class:`EntryError` with the reason for anything the event log refuses: a tombstone, a value over
    ``max_bytes``, a NUL character, another ledger's entry, a key other than the entry id. The bridge holds
    what it acts on to the same rules."""
    if value is None:
        raise EntryError("null value (tombstone): entry topics carry entries, not deletions")
    if len(value) > max_bytes:
        raise EntryError(f"value of {len(value)} bytes exceeds the {max_bytes}-byte entry limit")
    if value.find(b"\\u0000") >= 0:
        # PostgreSQL refuses NUL in text; refusing it here keeps one record from failing a batch
        raise EntryError("a string contains the NUL character (\\u0000)")
    e = decode(value, ledger)
    if ledger is not None and e.ledger != ledger:
        raise EntryError(f"ledger: {e.ledger!r} does not belong on topic {topic!r}")
    if key is not None and key != e.entry_id.encode():
        raise EntryError(f"message key {key[:200]!r} differs from entry_id {e.entry_id!r}")
    return e


def _row_of(value: bytes | None, key: bytes | None, topic: str, part: int, off: int, run_id: str | None,
            ledger: str | None, max_bytes: int):
    """The event-log row of a valid message; raises EntryError with the reason otherwise."""
    e = message_entry(value, key, topic, ledger, max_bytes, decode_wire)
    # version identity is the value's bytes: our producers encode canonically (sorted keys, no
    # spaces), so a re-published entry is byte-identical; another producer's formatting of the same
    # content makes a second version with equal economics (never a conflict), and readers take the
    # latest version of an entry
    digest = content_hash(value)
    row = (topic, part, off, e.entry_id, e.ledger, e.ledger_kind, e.source_ref,
           e.correlation_id, e.account, e.counterparty, e.asset, e.amount, e.direction, e.booked_at,
           e.booked_at[:10], e.value_date, e.status, str(e.position, "utf-8"), str(e.attributes, "utf-8"), digest, run_id)
    return row


@dataclass(frozen=True)
class IngestOptions:
    consumer: str = DEFAULT_CONSUMER
    batch_size: int = 10_000
    max_entry_bytes: int = MAX_ENTRY_BYTES
    stall_timeout: float = 60.0
    run_id: str | None = None
    processes: int = 1
    records_per_process: int = RECORDS_PER_PROCESS

    def __post_init__(self):
        if type(self.processes) is not int or not 1 <= self.processes <= MAX_PROCESSES:
            raise ValueError(f"ingest processes must be an integer from 1 to {MAX_PROCESSES}, not {self.processes!r}")
        if type(self.records_per_process) is not int or self.records_per_process < 1:
            raise ValueError(f"ingest records_per_process must be a positive integer, not {self.records_per_process!r}")

    def processes_for(self, records: int) -> int:
        """The processes a run of ``records`` records to read starts: one per ``records_per_process``,
        at least one, at most ``processes``."""
        return max(1, min(self.processes, records // self.records_per_process))


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
        processes: int = 1,
        records_per_process: int = RECORDS_PER_PROCESS,
    ):
        self.kafka = kafka
        self.warehouse = warehouse
        self.options = IngestOptions(consumer, batch_size, max_entry_bytes, stall_timeout, run_id, processes,
                                     records_per_process)
        self.progress = progress

    def run(self, targets: dict[TopicPartitionKey, int] | None = None) -> IngestResult:
        t0 = time.monotonic()
        consumer = self.options.consumer
        self.warehouse.create_schema()
        if targets is None:
            targets = end_offsets(self.kafka)
        self.warehouse.init_offsets(consumer, targets)
        stored = self.warehouse.stored_offsets(consumer)
        result = IngestResult(targets=dict(targets))
        result.start = {tp: stored[tp] for tp in targets}
        # a target at or below the stored offset means another run already took that range
        todo = {tp: (stored[tp], off) for tp, off in targets.items() if stored[tp] < off}
        if todo:
            shares = _shares(todo, self.options.processes_for(sum(b - a for a, b in todo.values())))
            on_batch = lambda counts, n: self._on_batch(result, counts, n)  # noqa: E731
            if len(shares) == 1:
                consume_partitions(self.kafka, self.warehouse, todo, self.options, on_batch)
                result.worker_batches = [result.batches]
            else:
                result.worker_batches = consume_in_processes(
                    self.kafka, self.warehouse.url, shares, self.options, on_batch)
        final = self.warehouse.stored_offsets(consumer)
        result.final = {tp: final[tp] for tp in targets}
        try:
            now_end = end_offsets(self.kafka, _partition_counts(targets))
            result.lag = {tp: max(0, now_end.get(tp, 0) - result.final[tp]) for tp in targets}
        except KafkaException as exc:
            log.warning("could not read end offsets for the lag: %s", exc)
        result.elapsed = time.monotonic() - t0
        result.check()
        return result

    def _on_batch(self, result: IngestResult, counts: BatchCounts, consumed: int) -> None:
        result.add_batch(counts, consumed)
        if self.progress:
            self.progress(result)


def _consumer(kafka: KafkaSettings, options: IngestOptions) -> Consumer:
    return Consumer(
        {
            **kafka.client_config(),
            # librdkafka wants a group id even for assign(); offsets are never committed to it
            "group.id": f"ledger-pipelines.{options.consumer}",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "isolation.level": "read_committed",
            "auto.offset.reset": "error",
            "enable.partition.eof": False,
            "fetch.max.bytes": 24 * 1024 * 1024,
            "max.partition.fetch.bytes": 17 * 1024 * 1024,
            "queued.max.messages.kbytes": 65_536,
            "fetch.wait.max.ms": 50,
            "client.id": f"ledger-pipelines.{options.consumer}.{os.getpid()}",
        }
    )


def consume_partitions(
    kafka: KafkaSettings,
    warehouse: Warehouse,
    todo: dict[TopicPartitionKey, tuple[int, int]],
    options: IngestOptions,
    on_batch: Callable[[BatchCounts, int], None],
    stop: threading.Event | None = None,
) -> None:
    """Ingest each partition of ``todo`` from its stored offset up to its target (start, target). A set
    ``stop`` ends the run between two batches, every batch written so far committed."""
    current = {tp: start for tp, (start, _) in todo.items()}
    target = {tp: tgt for tp, (_, tgt) in todo.items()}
    ledgers = {t: ledger_of_topic(kafka, t) for t, _ in todo}
    consumer = _consumer(kafka, options)
    writer = warehouse.writer(options.consumer, options.run_id)
    dlq = None
    try:
        consumer.assign([TopicPartition(t, p, current[(t, p)]) for t, p in todo])
        open_parts = set(todo)
        last_progress = time.monotonic()
        run_id, max_bytes = options.run_id, options.max_entry_bytes
        while open_parts:
            if stop is not None and stop.is_set():
                log.info("ingest stopped on request; %d partition(s) not at their target", len(open_parts))
                return
            msgs = consumer.consume(options.batch_size, timeout=0.5)
            batch = EventBatch()
            rows_append, raw_append = batch.rows.append, batch.raw.append
            # only open partitions have a limit: a paused one can still hand over prefetched messages
            limits = {tp: target[tp] for tp in open_parts}
            advanced: dict[TopicPartitionKey, int] = {}
            read = 0
            for msg in msgs:
                err = msg.error()
                if err is not None:
                    if err.fatal() or not err.retriable() or err.code() == KafkaError._AUTO_OFFSET_RESET:
                        raise KafkaException(err)
                    log.warning("transient consumer error: %s", err)
                    continue
                topic = msg.topic()
                tp = (topic, msg.partition())
                off = msg.offset()
                if off >= limits.get(tp, -1):
                    continue  # beyond this run's fixed target: the next run takes it
                read += 1
                advanced[tp] = off + 1
                value, key = msg.value(), msg.key()
                try:
                    row = _row_of(value, key, topic, tp[1], off, run_id, ledgers[topic], max_bytes)
                except EntryError as exc:
                    value = value or b""
                    shown = key.decode("utf-8", "replace") if key else None
                    batch.rejects.append((topic, tp[1], off, shown, str(exc), value[:DLQ_PAYLOAD_LIMIT], len(value)))
                    continue
                rows_append(row)
                raw_append(value)
            # the position also covers offsets that hold no message (transaction markers)
            for tpo in consumer.position([TopicPartition(t, p) for t, p in open_parts]):
                tp = (tpo.topic, tpo.partition)
                if tpo.offset != OFFSET_INVALID and tpo.offset > advanced.get(tp, current[tp]):
                    advanced[tp] = tpo.offset
            for tp, nxt in advanced.items():
                nxt = min(nxt, target[tp])
                if nxt > current[tp]:
                    batch.offsets[tp] = (current[tp], nxt)
            if batch.offsets:
                if batch.rejects:
                    dlq = dlq or DeadLetterProducer(kafka, source=options.consumer)
                    for topic, part, off, _key, error, payload, size in batch.rejects:
                        dlq.send(ledgers[topic], f"kafka:{topic}/{part}/{off}", error, payload, size)
                    dlq.confirm()  # the DLQ holds them before any offset moves past them
                counts = writer.write(batch)
                # the batch is committed; a mismatch stops the run before the next one
                ranges = {f"{t}[{p}]": r for (t, p), r in batch.offsets.items()}
                _records(f"event log batch {ranges}", read, counts)
                for tp, (_, nxt) in batch.offsets.items():
                    current[tp] = nxt
                last_progress = time.monotonic()
                on_batch(counts, read)
            done = [tp for tp in open_parts if current[tp] >= target[tp]]
            if done:
                consumer.pause([TopicPartition(t, p) for t, p in done])
                open_parts.difference_update(done)
            if open_parts and time.monotonic() - last_progress > options.stall_timeout:
                raise IngestStalled(
                    "no progress for %.0fs; waiting for %s"
                    % (options.stall_timeout, {f"{t}[{p}]": (current[(t, p)], target[(t, p)]) for t, p in open_parts})
                )
    finally:
        writer.close()
        consumer.close()


def _shares(todo: dict[TopicPartitionKey, tuple[int, int]], processes: int) -> list[dict]:
    """The partitions to read, dealt round-robin in (topic, partition) order to at most ``processes``."""
    keys = sorted(todo)
    n = max(1, min(processes, len(keys)))
    return [{k: todo[k] for k in keys[i::n]} for i in range(n)]


def consume_in_processes(
    kafka: KafkaSettings,
    warehouse_url: str,
    shares: list[dict[TopicPartitionKey, tuple[int, int]]],
    options: IngestOptions,
    on_batch: Callable[[BatchCounts, int], None],
) -> list[int]:
    """Each share of the partitions ingested by a worker process of its own; returns the number of
    batches each worker committed.

    The worker's spec (settings, warehouse URL with its credentials) goes over its stdin, never its
    command line (a worker inherits this process's environment, like any child); stdin then stays
    open, and a worker whose stdin closes (this run stops it, or this run is gone) commits the batch
    it is writing and stops. Each batch a worker commits comes back as one JSON line and is counted
    here. The first worker to fail, or to stop before its share is read (a signal of its own), fails
    the run with the worker's own error and stops the others; the batches they committed stand, and
    the next run goes on from the stored offsets.
    """
    events: queue.Queue = queue.Queue()
    procs: list[subprocess.Popen] = []
    readers: list[threading.Thread] = []
    batches = [0] * len(shares)
    errors: dict[int, str] = {}
    stopped: set[int] = set()
    spec = {"kafka": asdict(kafka), "warehouse_url": warehouse_url, "options": asdict(options),
            "log_level": log.getEffectiveLevel(),
            # librdkafka's lines go where this process sends them: the log file, or (-v, Dagster) stderr
            "library_log_file": library_log_file()}
    try:
        for i, share in enumerate(shares):
            # a session of its own: a signal to this run's process group (Ctrl-C) reaches this process,
            # which stops the workers after their batch in flight, not the workers in mid-batch
            proc = subprocess.Popen([sys.executable, "-m", "ledger_pipelines.ingest_worker"],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True)
            procs.append(proc)
            todo = [[t, p, a, b] for (t, p), (a, b) in share.items()]
            proc.stdin.write(json.dumps({**spec, "todo": todo}).encode() + b"\n")
            proc.stdin.flush()
            reader = threading.Thread(target=_read_lines, args=(i, proc, events), daemon=True)
            reader.start()
            readers.append(reader)
        running = len(procs)
        while running:
            i, line = events.get()
            if line is not None:
                msg = json.loads(line)
                if "counts" in msg:
                    on_batch(BatchCounts(**msg["counts"]), msg["read"])
                    batches[i] += 1
                elif "error" in msg:
                    errors[i] = msg["error"]
                elif msg.get("stopped"):
                    stopped.add(i)
                continue
            running -= 1
            rc = procs[i].wait()
            if rc != 0 or i in stopped:
                parts = ", ".join(f"{t}[{p}]" for t, p in sorted(shares[i]))
                how = errors.get(i) or ("stopped by a signal before its share was read" if rc == 0 else
                                        f"exited with status {rc}")
                raise IngestWorkerFailed(f"ingest worker {i + 1} of {len(procs)} (partitions {parts}): {how}; "
                                         "its committed batches stand, the next run goes on from them")
        return batches
    finally:
        _stop_workers(procs, WORKER_STOP_GRACE + 5)
        for reader in readers:
            reader.join()
        for proc in procs:
            proc.stdout.close()


def _stop_workers(procs: list[subprocess.Popen], grace: float) -> None:
    """Workers still running asked to stop (their stdin closed: each commits the batch it is writing),
    and killed when they have not stopped within ``grace`` seconds."""
    for proc in procs:
        try:
            proc.stdin.close()
        except OSError:
            pass  # a worker that died with data unread in its pipe
    deadline = time.monotonic() + grace
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("ingest worker %d did not stop within %.0fs: killed", proc.pid, grace)
            proc.kill()
            proc.wait()
    if procs:
        log.info("ingest workers stopped: exit statuses %s", [proc.returncode for proc in procs])


def _read_lines(i: int, proc: subprocess.Popen, events: queue.Queue) -> None:
    for line in proc.stdout:
        events.put((i, line))
    events.put((i, None))


def _partition_counts(targets) -> dict[str, int]:
    counts: dict[str, int] = {}
    for t, p in targets:
        counts[t] = max(counts.get(t, 0), p + 1)
    return counts
