"""Incremental publishing of a configured ledger to its Kafka topic.

Order of effects, for crash safety: read from the source, produce entries and dead letters, wait
until Kafka acknowledged every one, and only then save the cursor (or mark the file processed).
A crash in between re-publishes the same ``entry_id``s, which the event log counts once.
"""

from __future__ import annotations

import logging

from .config import LedgerConfig
from .connectors.kinds import connector_for
from .kafka import DeadLetterProducer, EntryProducer, ensure_topics
from .settings import KafkaSettings
from .validation import CountMismatch, PublishResult
from .warehouse import Warehouse

log = logging.getLogger(__name__)


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
        """Publish what is new in ``lc``'s source (its kind's :class:`~.connectors.kinds.Connector`)."""
        connector = connector_for(lc)
        connector.check_source()  # a missing connection variable is said before Kafka or the warehouse is touched
        ensure_topics(self.kafka, [lc.name])
        self.warehouse.create_schema()
        return connector.publish(self)


def _acknowledged(ledger: str, what: str, handed: int, acked: int) -> int:
    if acked != handed:
        raise CountMismatch(f"publish {ledger}: Kafka acknowledged {acked} of the {handed} {what} handed to it")
    return acked
