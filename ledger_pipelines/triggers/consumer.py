"""The consumer: reads the source ledgers' topics in a consumer group, hands each batch to the engine, commits
offsets only after the batch's actions are logged (never past a record with an action pending), and reports
a run's progress (``ledger-pipelines bridge``, ``bridge_job``)."""

from __future__ import annotations

import logging
import sys
import time
from typing import Callable

from ..ingest import message_entry
from ..kafka.topics import ledger_of_topic
from ..model import EntryError, decode_entry
from .engine import BatchResult, TriggerEngine

log = logging.getLogger(__name__)


def _progress_sink() -> Callable[[str], None]:
    """Where a run's progress lines go: the Dagster run log when Dagster runs the bridge (``bridge_job``), else
    this module's logger (``ledger-pipelines bridge``)."""
    if "dagster" in sys.modules:
        from dagster import get_dagster_logger

        return get_dagster_logger("ledger_pipelines.triggers").info
    return log.info


class TriggerConsumer:
    """Consumes the source ledgers' topics (consumer group, offsets committed after each logged batch).

    A source record with an action left pending is not committed past: in each of its partitions the
    committed offset stays at the first such record until its actions are done, so a later run (a restarted
    bridge, the next ``bridge_job``) reads it again; records after it that are done are skipped by the action
    log. A running bridge (``until_caught_up`` off) reads them again itself every ``retry_every`` seconds.
    Progress (entries, actions applied, pending, failed) is logged at INFO every ``progress_every`` seconds
    while anything happens, and once at the end of :meth:`run`."""

    def __init__(self, engine: TriggerEngine, group: str = "ledger-pipelines-bridge", batch: int = 500,
                 instance: str | None = "0", progress: Callable[[str], None] | None = None,
                 progress_every: float = 10.0, retry_every: float = 30.0):
        from ..kafka.topics import entries_topic

        self.engine = engine
        kafka = engine.kafka
        self.topics = sorted({entries_topic(kafka, r.source) for r in engine.rules})
        conf = {**kafka.client_config(), "group.id": group, "enable.auto.commit": False,
                "auto.offset.reset": "earliest", "isolation.level": "read_committed", "enable.partition.eof": False,
                "session.timeout.ms": 10_000}
        if instance is not None:
            # static membership: a restarted bridge (same instance id) takes its partitions back at once
            # instead of waiting for the dead member's session to expire
            conf["group.instance.id"] = f"{group}.{instance}"
        self._conf = conf
        # (topic, partition) -> offset of its first record with a pending action: never committed past
        self.held: dict[tuple[str, int], int] = {}
        self.consumer = self._subscribe()
        self.batch = batch
        self.total = BatchResult()
        self.rejected = 0
        self.progress = progress or _progress_sink()
        self.progress_every = progress_every
        self.retry_every = retry_every
        self._last_progress = time.monotonic()
        self._reported: dict[str, int] | None = None

    def _subscribe(self):
        from confluent_kafka import Consumer

        consumer = Consumer(self._conf)
        consumer.subscribe(self.topics, on_assign=self._rebalanced, on_revoke=self._rebalanced)
        return consumer

    def _commit(self, offsets) -> None:
        """Commit the read positions. The actions behind them are in the action log already, so a commit
        the group refuses (a coordinator failover: the member fenced or no longer known) loses nothing: the
        records are read again and found done. A consumer librdkafka declares unusable (fatal: a static
        member fenced) is replaced by a new one, which resumes from the committed offsets."""
        from confluent_kafka import KafkaError, KafkaException

        try:
            self.consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            err = exc.args[0]
            group_errors = {KafkaError.FENCED_INSTANCE_ID, KafkaError.UNKNOWN_MEMBER_ID, KafkaError.ILLEGAL_GENERATION,
                            KafkaError.REBALANCE_IN_PROGRESS, KafkaError.NOT_COORDINATOR,
                            KafkaError.COORDINATOR_NOT_AVAILABLE, KafkaError._FATAL}
            if err.code() not in group_errors and not err.fatal():
                raise
            log.warning("bridge: offset commit refused (%s); the records are read again and found done", err.str())
            if err.fatal() or err.code() in (KafkaError.FENCED_INSTANCE_ID, KafkaError._FATAL):
                try:
                    self.consumer.close()
                except Exception:  # a fatal consumer may refuse its own close
                    pass
                self.held = {}
                self.consumer = self._subscribe()

    def _rebalanced(self, consumer, partitions) -> None:
        # a partition (re)assigned is read from its committed offset, which is at most its hold
        for tp in partitions:
            self.held.pop((tp.topic, tp.partition), None)

    def step(self, timeout: float = 0.2) -> int:
        from confluent_kafka import TopicPartition

        msgs = self.consumer.consume(num_messages=self.batch, timeout=timeout)
        if not msgs:
            return 0
        kafka = self.engine.kafka
        entries, where = [], []
        ends: dict[tuple[str, int], int] = {}
        for m in msgs:
            if m.error():
                raise RuntimeError(f"Kafka: {m.error()}")
            tp = (m.topic(), m.partition())
            ends[tp] = max(ends.get(tp, 0), m.offset() + 1)
            if m.value() is None:
                continue
            try:
                # what the event log refuses (another ledger's entry on this topic, a key that is not the
                # entry's id, ...) is never acted on either
                entries.append(message_entry(m.value(), m.key(), m.topic(), ledger_of_topic(kafka, m.topic()),
                                             decode=decode_entry))
                where.append((tp, m.offset()))
            except EntryError as exc:
                # the event log's ingestion dead-letters it with the same reason; the bridge only skips it
                self.rejected += 1
                log.warning("%s[%d]@%d: not an entry of this topic (%s); skipped", m.topic(), m.partition(),
                            m.offset(), str(exc)[:500])
        res, pending = self.engine.process_entries(entries)
        for e, (tp, offset) in zip(entries, where):
            if e.entry_id in pending and offset < self.held.get(tp, offset + 1):
                self.held[tp] = offset
        self.total.add(res)
        self._commit([TopicPartition(t, p, min(end, self.held.get((t, p), end))) for (t, p), end in sorted(ends.items())])
        if res.applied or res.failed or res.found_on_target or res.pending:
            log.info("bridge: %d entries, %d applied, %d found already applied, %d pending, %d failed, %d held",
                     res.seen, res.applied, res.found_on_target, res.pending, res.failed, res.held)
        return len(msgs)

    def retry_held(self) -> int:
        """Seeks each partition holding a pending action back to it (its records are read again); returns how
        many partitions were."""
        from confluent_kafka import TopicPartition

        assigned = {(tp.topic, tp.partition) for tp in self.consumer.assignment()}
        held, self.held = self.held, {}
        n = 0
        for (t, p), offset in sorted(held.items()):
            if (t, p) in assigned:
                self.consumer.seek(TopicPartition(t, p, offset))
                n += 1
        return n

    def report(self, final: bool = False) -> None:
        """One INFO line of the run so far (at most every ``progress_every`` seconds, and only when something
        changed; ``final``: always)."""
        now = time.monotonic()
        counts = dict(self.total.__dict__)
        if not final and (now - self._last_progress < self.progress_every or counts == self._reported):
            return
        self._last_progress, self._reported = now, counts
        t = self.total
        actions = t.applied + t.found_on_target + t.pending + t.failed
        self.progress(f"bridge{' run done' if final else ''}: {t.seen} entries read, {actions} actions: "
                      f"{t.applied} applied, {t.found_on_target} found already applied, {t.pending} pending "
                      f"(tried again on a later run), {t.failed} failed; {t.held} entries held (not final yet), "
                      f"{t.skipped} actions done before")

    def caught_up(self) -> bool:
        """Every assigned partition's position is at its read-committed end offset (a partition not read from
        yet, which has no position: its committed offset is)."""
        from ..kafka.topics import end_offsets

        assignment = self.consumer.assignment()
        if not assignment:
            return False
        counts: dict[str, int] = {}
        for tp in assignment:
            counts[tp.topic] = max(counts.get(tp.topic, 0), tp.partition + 1)
        ends = end_offsets(self.engine.kafka, counts)
        committed: dict[tuple[str, int], int] | None = None
        for tp in self.consumer.position(assignment):
            end = ends.get((tp.topic, tp.partition), 0)
            offset = tp.offset
            if end > 0 and offset < 0:
                if committed is None:
                    committed = {(c.topic, c.partition): c.offset
                                 for c in self.consumer.committed(assignment, timeout=15)}
                offset = committed.get((tp.topic, tp.partition), -1)
            if end > 0 and (offset < 0 or offset < end):
                return False
        return True

    def run(self, until_caught_up: bool = False, stop: Callable[[], bool] = lambda: False,
            assign_timeout: float = 60.0) -> BatchResult:
        started = retried = time.monotonic()
        while not stop():
            n = self.step()
            self.report()
            if not until_caught_up and self.held and time.monotonic() - retried >= self.retry_every:
                self.retry_held()
                retried = time.monotonic()
            if n or not until_caught_up:
                continue
            if self.caught_up():
                break
            if not self.consumer.assignment() and time.monotonic() - started > assign_timeout:
                raise RuntimeError(f"no partition of {self.topics} assigned within {assign_timeout:.0f} s "
                                   "(another member of the consumer group holds them?)")
        self.report(final=True)
        return self.total

    def close(self) -> None:
        self.consumer.close()
