"""Topic naming (ARCHITECTURE section 3), creation and end offsets."""

from __future__ import annotations

import logging
import re
import time

from confluent_kafka import IsolationLevel, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic, OffsetSpec

from ..model import NAME_PATTERN
from ..settings import KafkaSettings

# Entry topics accept values up to 16 MiB so an oversized record reaches the event log's size
# check and the dead-letter queue rather than failing silently at the producer.
ENTRY_TOPIC_MAX_BYTES = 16 * 1024 * 1024
_LEDGER_NAME = re.compile(NAME_PATTERN)
log = logging.getLogger(__name__)

# answers of a partition whose leader is changing: asked again, until the call's timeout
_LEADER_MOVING = frozenset({KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE})


def entries_topic(settings: KafkaSettings, ledger: str) -> str:
    if not _LEDGER_NAME.match(ledger):
        raise ValueError(f"ledger name {ledger!r} must match {NAME_PATTERN}")
    return f"{settings.topic_prefix}{ledger}.entries"


def dlq_topic(settings: KafkaSettings) -> str:
    return f"{settings.topic_prefix}dlq"


def actions_topic(settings: KafkaSettings) -> str:
    return f"{settings.topic_prefix}bridge.actions"


def _entries_regex(settings: KafkaSettings) -> re.Pattern:
    return re.compile(rf"^{re.escape(settings.topic_prefix)}([a-z][a-z0-9_]{{0,62}})\.entries\Z")


def ledger_of_topic(settings: KafkaSettings, topic: str) -> str | None:
    m = _entries_regex(settings).match(topic)
    return m.group(1) if m else None


def admin(settings: KafkaSettings) -> AdminClient:
    return AdminClient(settings.client_config())


def ensure_topics(settings: KafkaSettings, ledgers: list[str], timeout: float = 30.0,
                  extra: list[str] | None = None) -> list[str]:
    """Create the entry topics of ``ledgers`` plus the DLQ and actions topics (and ``extra`` topics, e.g.
    the targets of publish triggers) with the configured replication factor and ``min.insync.replicas``
    (set on each topic: a cluster's own default is 1, which lets a leader alone acknowledge an
    ``acks=all`` write); returns those created."""
    client = admin(settings)
    present = client.list_topics(timeout=timeout).topics
    existing = set(present)
    wanted = {
        entries_topic(settings, name): {"max.message.bytes": str(ENTRY_TOPIC_MAX_BYTES)} for name in ledgers
    }
    wanted[dlq_topic(settings)] = {"max.message.bytes": str(2 * 1024 * 1024)}
    wanted[actions_topic(settings)] = {}
    for t in extra or []:
        wanted.setdefault(t, {"max.message.bytes": str(ENTRY_TOPIC_MAX_BYTES)})
    isr = {"min.insync.replicas": str(settings.min_isr)}
    new = [
        NewTopic(t, num_partitions=settings.partitions, replication_factor=settings.replication_factor,
                 config={**cfg, **isr})
        for t, cfg in wanted.items()
        if t not in existing
    ]
    created, already = [], []
    if new:
        for topic, fut in client.create_topics(new, request_timeout=timeout).items():
            try:
                fut.result()
                created.append(topic)
            except KafkaException as exc:
                if exc.args[0].name() != "TOPIC_ALREADY_EXISTS":
                    raise
                already.append(topic)  # made by someone else, or not yet in the metadata read above
        md = _wait_for_leaders(client, [t.topic for t in new], timeout)
        if already:  # checked like every existing topic, with the metadata that shows all of them
            present = {**present, **{t: md[t] for t in already}}
            existing.update(already)
    own = {entries_topic(settings, name) for name in ledgers} | {dlq_topic(settings), actions_topic(settings)}
    try:  # the project's own topics only: a trigger's target may belong to someone else
        raise_min_isr(client, settings, {t: present[t] for t in wanted if t in existing and t in own},
                      min(timeout, 10.0))
    except KafkaException as exc:  # a degraded cluster: the write itself says whether it can be acknowledged
        log.warning("min.insync.replicas of the existing topics not checked: %s", exc)
    return created


def raise_min_isr(client: AdminClient, settings: KafkaSettings, topics: dict, timeout: float) -> list[str]:
    """Existing topics made as durable as new ones: a ``min.insync.replicas`` below the configured one is
    raised when the topic has the replicas for it (a topic created before the cluster grew, or by a worker
    with another setting); a replication factor below the configured one cannot be raised here (that is a
    partition reassignment) and is logged as a warning with the topic's figures. ``topics``: name -> the
    topic's metadata (``list_topics``). Returns the topics altered."""
    from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource

    if not topics or settings.min_isr <= 1 and settings.replication_factor <= 1:
        return []
    resources = [ConfigResource("topic", t) for t in topics]
    deadline = time.monotonic() + timeout
    while True:
        try:
            current = {r.name: int(f.result()["min.insync.replicas"].value)
                       for r, f in client.describe_configs(resources, request_timeout=_left(deadline)).items()}
            break
        except KafkaException as exc:
            # a topic just made is not known to every broker at once: asked again until the timeout
            err = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
            if err is None or err.code() != KafkaError.UNKNOWN_TOPIC_OR_PART or _left(deadline) <= 0.2:
                raise
            time.sleep(0.2)
    altered = []
    for t in topics:
        replicas = min((len(p.replicas) for p in topics[t].partitions.values()), default=0)
        if replicas < settings.replication_factor:
            log.warning("topic %s has %d replica(s) per partition, fewer than the configured %d: a write it "
                        "acknowledges survives fewer broker losses; reassign its partitions "
                        "(kafka-reassign-partitions.sh)", t, replicas, settings.replication_factor)
            continue  # its min.insync.replicas is left as it is: raised, one broker down would stop its writes
        want = settings.min_isr
        if current[t] < want:
            res = ConfigResource("topic", t, incremental_configs=[
                ConfigEntry("min.insync.replicas", str(want), incremental_operation=AlterConfigOpType.SET)])
            for fut in client.incremental_alter_configs([res], request_timeout=_left(deadline)).values():
                fut.result()
            log.warning("topic %s: min.insync.replicas raised from %d to %d", t, current[t], want)
            altered.append(t)
    return altered


def _left(deadline: float) -> float:
    """Seconds left before ``deadline`` (time.monotonic), at least a tenth of one: the request timeout of
    the next try, so that the tries of one call stay within the timeout it was given."""
    return max(0.1, deadline - time.monotonic())


def _wait_for_leaders(client: AdminClient, topics: list[str], timeout: float) -> dict:
    """Until every partition of ``topics`` has a leader in the metadata the cluster serves: on a cluster a
    topic just created is not known to every broker at once, and a write or a config read in that moment
    is refused as an unknown topic. Returns that metadata (topic name -> metadata)."""
    deadline = time.monotonic() + timeout
    while True:
        md = client.list_topics(timeout=_left(deadline)).topics
        if all(t in md and md[t].error is None and md[t].partitions
               and all(p.leader >= 0 for p in md[t].partitions.values()) for t in topics):
            return md
        if time.monotonic() > deadline:
            raise KafkaException(f"topics {topics} have no leader for every partition after {timeout:.0f}s")
        time.sleep(0.1)


def entry_topics(settings: KafkaSettings, client: AdminClient | None = None, timeout: float = 15.0) -> dict[str, int]:
    """Entry topics that exist now, with their partition counts."""
    client = client or admin(settings)
    md = client.list_topics(timeout=timeout)
    pattern = _entries_regex(settings)
    return {name: len(t.partitions) for name, t in md.topics.items() if pattern.match(name) and not t.error}


def end_offsets(
    settings: KafkaSettings, topics: dict[str, int] | None = None, timeout: float = 15.0
) -> dict[tuple[str, int], int]:
    """Read-committed end offsets (last stable offsets) of every partition of the entry topics."""
    deadline = time.monotonic() + timeout  # one budget for the topic list and the offsets
    client = admin(settings)
    topics = entry_topics(settings, client, timeout) if topics is None else topics
    request = {TopicPartition(t, p): OffsetSpec.latest() for t, n in topics.items() for p in range(n)}
    if not request:
        return {}
    while True:
        futures = client.list_offsets(
            request, isolation_level=IsolationLevel.READ_COMMITTED, request_timeout=_left(deadline)
        )
        try:
            return {(tp.topic, tp.partition): fut.result().offset for tp, fut in futures.items()}
        except KafkaException as exc:
            # a leader moving (an election, a broker restarting) refuses the request for a moment
            err = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
            if err is None or not (err.retriable() or err.code() in _LEADER_MOVING) or _left(deadline) <= 0.2:
                raise
            log.info("end offsets: %s; asking again", err)
            time.sleep(0.2)
