"""Idempotent producers. A publisher may advance its cursor only after :meth:`EntryProducer.publish`
returned: that call returns once the broker acknowledged (acks=all) every message, and raises
:class:`PublishError` naming the failed records otherwise."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec
from confluent_kafka import KafkaError, Producer

from ..model import SCHEMA_VERSION, CanonicalEntry, encode_entry
from ..settings import KafkaSettings
from .topics import dlq_topic, entries_topic

# A DLQ record keeps at most this much of the offending payload (and says how large it was).
DLQ_PAYLOAD_LIMIT = 64 * 1024


class PublishError(RuntimeError):
    def __init__(self, failures: list[tuple[str, str]], codes: list[tuple[Any, str | None]] | None = None):
        self.failures = failures
        # (key, reason, KafkaError code or None, topic or None) of each failure
        self.detailed = [(k, e, c, t) for (k, e), (c, t) in zip(failures, codes or [(None, None)] * len(failures))]
        sample = "; ".join(f"{k}: {e}" for k, e in failures[:5])
        super().__init__(f"{len(failures)} message(s) not acknowledged by Kafka: {sample}")


class _AckingProducer:
    def __init__(self, settings: KafkaSettings, client_id: str, **overrides: Any):
        conf = {
            **settings.client_config(),
            "client.id": client_id,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 20,
            "batch.size": 1_000_000,
            "compression.type": "lz4",
            "message.max.bytes": 16 * 1024 * 1024 + 4096,
            "queue.buffering.max.messages": 500_000,
            "queue.buffering.max.kbytes": 1_048_576,
            # retries (leader elections, NOT_ENOUGH_REPLICAS) end here, and confirm() says so
            "message.timeout.ms": int(settings.delivery_timeout_s * 1000),
        }
        conf.update(overrides)
        self.settings = settings
        self.client_id = client_id
        self._producer = Producer(conf)
        self._failures: list[tuple[str, str]] = []
        self._codes: list[tuple[Any, str | None]] = []
        self._acked = 0

    def _on_delivery(self, err: KafkaError | None, msg) -> None:
        if err is not None:
            key = msg.key().decode("utf-8", "replace") if msg.key() else "?"
            self._failures.append((key, err.str()))
            self._codes.append((err.code(), msg.topic()))
        else:
            self._acked += 1

    def _produce(self, topic: str, key: bytes, value: bytes, headers: list) -> None:
        while True:
            try:
                self._producer.produce(topic, value=value, key=key, headers=headers, on_delivery=self._on_delivery)
                return
            except BufferError:
                self._producer.poll(0.1)

    def confirm(self, timeout: float | None = None) -> int:
        """Wait for every outstanding acknowledgement; raise if any message failed. By default a little
        longer than the delivery timeout, after which librdkafka fails each message it could not deliver."""
        if timeout is None:
            timeout = self.settings.delivery_timeout_s + 10.0
        remaining = self._producer.flush(timeout)
        if remaining:
            self._failures.append(("(pending)", f"{remaining} message(s) still unacknowledged after {timeout}s"))
            self._codes.append((None, None))
        failures, self._failures = self._failures, []
        codes, self._codes = self._codes, []
        acked, self._acked = self._acked, 0
        if failures:
            raise PublishError(failures, codes)
        return acked


class EntryProducer(_AckingProducer):
    """Publishes canonical entries to ``ledger.<ledger>.entries``, key = ``entry_id``."""

    def __init__(self, settings: KafkaSettings, connector: str, **overrides: Any):
        super().__init__(settings, client_id=f"ledger-pipelines.{connector}", **overrides)
        self._headers = [("schema_version", str(SCHEMA_VERSION).encode()), ("connector", connector.encode())]
        self._topics: dict[str, str] = {}

    def send(self, entry: CanonicalEntry) -> None:
        topic = self._topics.get(entry.ledger)
        if topic is None:
            topic = self._topics[entry.ledger] = entries_topic(self.settings, entry.ledger)
        self._produce(topic, entry.entry_id.encode(), encode_entry(entry), self._headers)

    def publish(self, entries: Iterable[CanonicalEntry], timeout: float | None = None) -> int:
        for entry in entries:
            self.send(entry)
            self._producer.poll(0)
        return self.confirm(timeout)


class MessageProducer(_AckingProducer):
    """Idempotent, acks=all producer of arbitrary messages (the bridge's actions and forwards);
    ``confirm`` waits for every acknowledgement and raises on any failed delivery."""

    def produce(self, topic: str, key: bytes, value: bytes, headers: list | None = None) -> None:
        self._produce(topic, key, value, headers or [])


def dlq_record(
    ledger: str | None, source: str, error: str, payload: bytes | str | None, size: int | None = None
) -> dict:
    """The DLQ value of ARCHITECTURE section 3, with the payload kept as text when it is UTF-8."""
    record: dict[str, Any] = {"ledger": ledger, "source": source, "error": error, "payload": None}
    if payload is None:
        return record
    raw = payload.encode() if isinstance(payload, str) else payload
    size = len(raw) if size is None else size  # the caller may hand over an already clipped payload
    record["payload_size"] = size
    clipped = raw[:DLQ_PAYLOAD_LIMIT]
    record["payload_truncated"] = size > len(clipped)
    try:
        record["payload"] = clipped.decode("utf-8")
    except UnicodeDecodeError:
        import base64

        record["payload"] = base64.b64encode(clipped).decode()
        record["payload_encoding"] = "base64"
    return record


class DeadLetterProducer(_AckingProducer):
    """Sets aside what could not be decoded or validated, with the reason, on ``ledger.dlq``."""

    def __init__(self, settings: KafkaSettings, source: str, **overrides: Any):
        super().__init__(settings, client_id=f"ledger-pipelines.dlq.{source}", **overrides)
        self._topic = dlq_topic(settings)
        self._headers = [("schema_version", str(SCHEMA_VERSION).encode()), ("connector", source.encode())]

    def send(
        self, ledger: str | None, source: str, error: str, payload: bytes | str | None, size: int | None = None
    ) -> None:
        value = msgspec.json.encode(dlq_record(ledger, source, error, payload, size))
        self._produce(self._topic, source.encode(), value, self._headers)
