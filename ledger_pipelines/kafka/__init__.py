"""Kafka layer: topic names and administration, idempotent producers, offsets."""

from .topics import (
    actions_topic,
    dlq_topic,
    entries_topic,
    ensure_topics,
    end_offsets,
    entry_topics,
    ledger_of_topic,
)
from .producers import DeadLetterProducer, EntryProducer, PublishError

__all__ = [
    "actions_topic",
    "dlq_topic",
    "entries_topic",
    "ensure_topics",
    "end_offsets",
    "entry_topics",
    "ledger_of_topic",
    "DeadLetterProducer",
    "EntryProducer",
    "PublishError",
]
