"""A Debezium topic on the real broker, mapped and published as canonical entries, bad events to the DLQ."""

from __future__ import annotations

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from conftest import REALDATA
from ledger_pipelines.config import LedgerConfig, ledger_by_name, load_config
from ledger_pipelines.ingest import EventLogIngestor
from ledger_pipelines.publish import Publisher
from ledger_pipelines.warehouse import Warehouse

pytestmark = pytest.mark.services


def _debezium_topic(kafka, name, path):
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap_servers})
    admin.create_topics([NewTopic(name, num_partitions=2, replication_factor=1)])[name].result(30)
    p = Producer({"bootstrap.servers": kafka.bootstrap_servers})
    for line in path.read_bytes().splitlines():
        p.produce(name, line, key=b"k" + str(len(line) % 2).encode())
    assert p.flush(30) == 0


def test_debezium_topic_to_entries_exactly_once(kafka, tmp_path):
    base = ledger_by_name(load_config(), "products_cdc")
    topic = f"{kafka.topic_prefix}dbz.inventory.products"
    _debezium_topic(kafka, topic, REALDATA / "cdc" / "flink_debezium-postgres-data-replica-identity.txt")
    lc = LedgerConfig(**{**base.__dict__, "options": {"debezium_topic": topic}})
    wh = Warehouse(f"sqlite:///{tmp_path / 'w.db'}")
    pub = Publisher(kafka, wh)
    first = pub.publish(lc)
    assert first.published == 15 and first.rejected == 1  # the delete has no before image
    assert pub.publish(lc).published == 0  # the topic offsets are the cursor
    EventLogIngestor(kafka, wh).run()
    assert wh.event_counts()["events"] == 15
    assert wh.scalar("SELECT count(*) FROM ledger_event_log WHERE ledger = 'products_cdc' AND amount = '5.18'") == 1
