"""Every run adds up: records read = entries + rejections (+ the stage's other named outcomes).

Publishing, daily snapshots and the event log each feed deliberately bad records and check that
each one is counted as a rejection, in the run's result and in its Dagster metadata; the checker
itself is fed counts that do not add up, and a stage whose counts stop adding up fails its run.
"""

from __future__ import annotations

from datetime import date

import msgspec
import pytest

from conftest import REALDATA, balanced, post_journal
from ledger_pipelines.config import LedgerConfig
from ledger_pipelines.connectors.sql.mapping import ColumnMapping
from ledger_pipelines.generate import synthetic_entries
from ledger_pipelines.model import encode_entry, to_dict
from ledger_pipelines.snapshots import snapshot_day
from ledger_pipelines.validation import CountMismatch, record_counts
from ledger_pipelines.warehouse import Warehouse

DAY = date(2026, 11, 24)


def test_record_counts_add_up_or_name_the_stage_and_the_gap():
    assert record_counts("publish core", 5, 3, 2) == {"read": 5, "entries": 3, "rejected": 2}
    assert record_counts("event log", 9, 4, 1, duplicates=3, conflicts=1)["duplicates"] == 3
    with pytest.raises(CountMismatch, match=r"publish core: 6 records read, but 3 entries \+ 2 rejected = 5: "
                                            r"a record is missing"):
        record_counts("publish core", 6, 3, 2)
    with pytest.raises(CountMismatch, match=r"event log: 4 records read, but 3 entries \+ 1 rejected \+ "
                                            r"1 duplicates = 5: a record was counted twice"):
        record_counts("event log", 4, 3, 1, duplicates=1)


def _core(tmp_path, monkeypatch) -> LedgerConfig:
    """A SQL ledger of two balanced transactions and one line whose amount is negative."""
    url = f"sqlite:///{tmp_path / 'core.db'}"
    post_journal(url, balanced("T1", f"{DAY}T09:00:00Z") + balanced("T2", f"{DAY}T10:00:00Z")
                 + [{"txn": "T3", "posted_at": f"{DAY}T11:00:00Z", "side": "D", "amount": "-5.00"}])
    monkeypatch.setenv("LEDGER_HOSTILE_CORE_URL", url)
    return LedgerConfig(name="core_banking", kind="sql", connection_env="LEDGER_HOSTILE_CORE_URL",
                        mapping=ColumnMapping())


def test_snapshot_counts_the_bad_line_as_a_rejection(tmp_path, monkeypatch):
    lc = _core(tmp_path, monkeypatch)
    wh = Warehouse(f"sqlite:///{tmp_path / 'w.db'}")
    wh.create_schema()
    try:
        stats = snapshot_day(lc, DAY, wh)
        assert stats["counts"] == {"read": 5, "entries": 4, "rejected": 1}
        (bad,) = stats["errors"]
        assert bad["source"] == "sql:core_banking:5" and "amount" in bad["error"]
        assert wh.scalar("SELECT count(*) FROM ledger_snapshots") == 4
    finally:
        wh.dispose()


def test_snapshot_whose_rows_do_not_add_up_fails(tmp_path, monkeypatch):
    """A bug that loses a row on the way into the snapshot table fails the day with the counts."""
    import ledger_pipelines.snapshots as snapshots

    lc = _core(tmp_path, monkeypatch)
    wh = Warehouse(f"sqlite:///{tmp_path / 'w.db'}")
    wh.create_schema()
    real = snapshots.replace_snapshot
    monkeypatch.setattr(snapshots, "replace_snapshot",
                        lambda w, ledger, day, entries: real(w, ledger, day, entries[1:]))
    try:
        with pytest.raises(CountMismatch, match=rf"snapshot core_banking {DAY}: 5 records read, but 3 entries "
                                                r"\+ 1 rejected = 4: a record is missing"):
            snapshot_day(lc, DAY, wh)
    finally:
        wh.dispose()


def test_snapshot_asset_metadata_shows_the_counts(tmp_path, monkeypatch):
    from dagster import DailyPartitionsDefinition, materialize

    from ledger_pipelines.assets.snapshots import build_snapshot_asset
    from ledger_pipelines.resources import ExpectationsResource, WarehouseResource

    lc = _core(tmp_path, monkeypatch)
    monkeypatch.setenv("LEDGER_HOSTILE_WAREHOUSE_URL", f"sqlite:///{tmp_path / 'w.db'}")
    monkeypatch.setenv("LEDGER_REPORTS_DIR", str(tmp_path / "reports"))
    asset = build_snapshot_asset(lc, DailyPartitionsDefinition(start_date="2026-11-01"))
    result = materialize([asset], partition_key=str(DAY), raise_on_error=False, resources={
        "warehouse": WarehouseResource(url_env="LEDGER_HOSTILE_WAREHOUSE_URL"), "expectations": ExpectationsResource()})
    (mat,) = result.asset_materializations_for_node("core_banking_snapshot")
    assert mat.metadata["records_read"].value == 5
    assert mat.metadata["rejected"].value == 1 and mat.metadata["rows"].value == 4
    assert mat.metadata["counts"].value == {"read": 5, "entries": 4, "rejected": 1}  # the run is one day


@pytest.mark.services
def test_publish_counts_the_bad_line_as_a_rejection(tmp_path, monkeypatch, kafka):
    from ledger_pipelines.publish import Publisher

    lc = _core(tmp_path, monkeypatch)
    wh = Warehouse(f"sqlite:///{tmp_path / 'w.db'}")
    try:
        result = Publisher(kafka, wh).publish(lc)
        assert result.counts == {"read": 5, "entries": 4, "rejected": 1}
        assert (result.published, result.rejected) == (4, 1)
        assert Publisher(kafka, wh).publish(lc).counts == {"read": 0, "entries": 0, "rejected": 0}
    finally:
        wh.dispose()


@pytest.mark.services
def test_debezium_publish_counts_change_events(tmp_path, kafka):
    """A change event is the record (an update with a before image becomes two entries, a tombstone none)."""
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    from ledger_pipelines.config import ledger_by_name, load_config
    from ledger_pipelines.publish import Publisher

    topic = f"{kafka.topic_prefix}dbz.inventory.products"
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap_servers})  # kept alive until the topic exists
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic].result(30)
    lines = (REALDATA / "cdc" / "flink_debezium-postgres-data-replica-identity.txt").read_bytes().splitlines()
    p = Producer({"bootstrap.servers": kafka.bootstrap_servers})
    for line in lines:
        p.produce(topic, line, key=b"k")
    p.produce(topic, None, key=b"k")  # the tombstone after a delete
    assert p.flush(30) == 0
    base = ledger_by_name(load_config(), "products_cdc")
    lc = LedgerConfig(**{**base.__dict__, "options": {"debezium_topic": topic}})
    wh = Warehouse(f"sqlite:///{tmp_path / 'w.db'}")
    try:
        result = Publisher(kafka, wh).publish(lc)
        c = result.counts
        assert c["read"] == len(lines) + 1 and c["tombstones"] == 1 and c["rejected"] == 1
        assert c["entries"] == len(lines) - 1
        assert c["entries_published"] == result.published >= c["entries"]
    finally:
        wh.dispose()


def _messy_topic(kafka) -> int:
    """Good entries, one exact duplicate, one conflicting version, bad JSON, a tombstone; returns
    how many good entries."""
    from confluent_kafka import Producer

    from ledger_pipelines.kafka import ensure_topics, entries_topic

    ensure_topics(kafka, ["core_banking"])
    good = list(synthetic_entries("core_banking", 40))
    topic = entries_topic(kafka, "core_banking")
    p = Producer({"bootstrap.servers": kafka.bootstrap_servers})
    for e in good:
        p.produce(topic, encode_entry(e), e.entry_id.encode())
    first = good[0]
    p.produce(topic, encode_entry(first), first.entry_id.encode())  # duplicate
    other = msgspec.json.encode(dict(to_dict(good[1]), amount="999999.99"), order="sorted")
    p.produce(topic, other, good[1].entry_id.encode())  # same id, other amount: a conflict
    p.produce(topic, b"{not json", b"bad-json")
    p.produce(topic, None, b"tombstone")
    assert p.flush(30) == 0
    return len(good)


@pytest.mark.services
def test_event_log_counts_every_message(tmp_path, kafka):
    from ledger_pipelines.ingest import EventLogIngestor

    n = _messy_topic(kafka)
    wh = Warehouse(f"sqlite:///{tmp_path / 'w.db'}")
    try:
        result = EventLogIngestor(kafka, wh).run()
        assert result.records == {"read": n + 4, "entries": n, "rejected": 2, "duplicates": 1, "conflicts": 1}
        assert wh.event_counts() == {"events": n, "distinct_entries": n, "rejected": 2, "conflicts": 1}
    finally:
        wh.dispose()


@pytest.mark.services
def test_event_log_batch_that_does_not_add_up_fails_the_run(tmp_path, kafka, monkeypatch):
    """A writer that reports one stored row fewer than it was given stops the run at that batch."""
    from ledger_pipelines.ingest import EventLogIngestor

    _messy_topic(kafka)
    wh = Warehouse(f"sqlite:///{tmp_path / 'w.db'}")
    real = wh.writer

    class Lossy:
        def __init__(self, writer):
            self.writer = writer

        def write(self, batch):
            counts = self.writer.write(batch)
            counts.inserted -= 1
            return counts

        def close(self):
            self.writer.close()

    monkeypatch.setattr(wh, "writer", lambda consumer, run_id=None: Lossy(real(consumer, run_id)))
    try:
        with pytest.raises(CountMismatch, match=r"event log batch \{'.*core_banking.entries\[\d\]': "
                                                r"\(0, \d+\)[^}]*\}: \d+ records read, .* a record is missing"):
            EventLogIngestor(kafka, wh).run()
    finally:
        wh.dispose()


@pytest.mark.services
def test_event_log_asset_metadata_shows_the_counts(tmp_path, kafka, monkeypatch):
    from dagster import materialize

    from ledger_pipelines.assets.event_log import ledger_event_log
    from ledger_pipelines.resources import ExpectationsResource, KafkaResource, WarehouseResource

    n = _messy_topic(kafka)
    monkeypatch.setenv("LEDGER_HOSTILE_WAREHOUSE_URL", f"sqlite:///{tmp_path / 'w.db'}")
    result = materialize([ledger_event_log], resources={
        "kafka": KafkaResource(bootstrap_servers=kafka.bootstrap_servers, topic_prefix=kafka.topic_prefix),
        "warehouse": WarehouseResource(url_env="LEDGER_HOSTILE_WAREHOUSE_URL"),
        "expectations": ExpectationsResource()})
    (mat,) = result.asset_materializations_for_node("ledger_event_log")
    assert mat.metadata["records"].value == {"read": n + 4, "entries": n, "rejected": 2, "duplicates": 1,
                                             "conflicts": 1}
    assert mat.metadata["messages_consumed"].value == n + 4
