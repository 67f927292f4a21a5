"""Debezium through Kafka Connect on the real stack: a ``source: debezium-postgres`` ledger registers its
connector on the stack's Connect worker for a PostgreSQL journal; inserts, updates and deletes reach the
event log exactly once; a posting's lines arrive as one unit (and an open transaction is held back and
reported); a SIGKILL of the worker in the middle of 20,000 inserts and a stopped connector lose nothing;
removing the ledger removes the connector and drops its replication slot."""

from __future__ import annotations

import threading
import time
import uuid

import psycopg
import pytest
import yaml

from ledger_pipelines.config import load_config
from ledger_pipelines.connectors.cdc import connect
from ledger_pipelines.ingest import EventLogIngestor
from ledger_pipelines.local.stack import Connect
from ledger_pipelines.publish import Publisher
from ledger_pipelines.warehouse import Warehouse

pytestmark = [pytest.mark.services, pytest.mark.connect]


@pytest.fixture(scope="session")
def connect_service(kafka_service, postgres_service, stack_config):
    svc = Connect(stack_config)
    started = svc.start(timeout=120)
    yield svc
    if started:
        svc.stop()


@pytest.fixture
def cdc(connect_service, kafka, pg_url, tmp_path, monkeypatch):
    """A cdc ledger on a fresh PostgreSQL journal: (ledger config, psycopg connect args, publisher, warehouse)."""
    from ledger_pipelines.connectors.sql.journal import SqlLedger
    from ledger_pipelines.connectors.sql.mapping import ColumnMapping

    name = f"pg_{uuid.uuid4().hex[:8]}"
    SqlLedger(pg_url, ColumnMapping(), name).create_journal()
    cfg = tmp_path / "ledgers.yaml"
    cfg.write_text(yaml.safe_dump({"ledgers": [{"name": name, "kind": "cdc", "source": "debezium-postgres",
                                                "connection_env": "LEDGER_T_CDC_URL", "mapping": {}}]}))
    monkeypatch.setenv("LEDGER_T_CDC_URL", pg_url)
    monkeypatch.setenv("LEDGER_CONNECT_URL", connect_service.cfg.connect_url)
    lc = load_config(cfg)[0]
    wh = Warehouse(f"sqlite:///{tmp_path / 'w.db'}")
    wh.create_schema()
    pub = Publisher(kafka, wh)
    yield lc, pg_url.replace("postgresql+psycopg://", "postgresql://"), pub, wh
    connect.remove(connect.connector_name(name))
    wh.dispose()


def _publish_until(pub, lc, wh, events: int, timeout: float = 90.0, each=None) -> list:
    """Publish passes until the event log holds ``events`` rows of the ledger; the results of the passes."""
    results = []
    deadline = time.monotonic() + timeout
    ingest = EventLogIngestor(pub.kafka, wh)
    while True:
        results.append(pub.publish(lc))
        ingest.run()
        if each:
            each()
        n = wh.scalar(f"SELECT count(*) FROM ledger_event_log WHERE ledger = '{lc.name}'")
        if n >= events:
            return results
        assert time.monotonic() < deadline, f"{n} of {events} entries after {timeout}s: {results[-1].details}"
        time.sleep(0.3)


def _post(dsn: str, rows: list[tuple], conn=None) -> None:
    with psycopg.connect(dsn) as c, c.transaction():
        c.cursor().executemany("INSERT INTO journal_lines (txn_id, posted_at, account, currency, amount, side, "
                               "payment_ref) VALUES (%s, %s, %s, 'EUR', %s, %s, %s)", rows)


def test_inserts_updates_deletes_reach_the_event_log_once_and_a_posting_whole(cdc):
    lc, dsn, pub, wh = cdc
    first = pub.publish(lc)  # registers the connector (its publication, the slot), nothing captured yet
    assert first.details["connector"] == {"connector": "RUNNING", "tasks": [{"state": "RUNNING"}]}
    with psycopg.connect(dsn) as c:
        assert c.execute("SELECT count(*) FROM pg_publication WHERE pubname = %s",
                         (connect.slot_name(lc.name),)).fetchone()[0] == 1
    # one 3-line posting (exact to 18 places, beyond a float), then an update of one line and a delete of another
    ts = "2026-11-20T10:00:00Z"
    _post(dsn, [("P1", ts, "GL-1000", "12345678901234567890.123456789012345678", "D", "E2E-1"),
                ("P1", ts, "GL-2000", "12345678901234567890.000000000000000001", "C", "E2E-1"),
                ("P1", ts, "GL-2001", "0.123456789012345677", "C", "E2E-1")])

    def whole() -> None:  # after every pass: the posting's entries are all there or none
        n = wh.scalar(f"SELECT count(*) FROM ledger_event_log WHERE ledger = '{lc.name}' AND status = 'booked'")
        assert n in (0, 3), f"{n} of the 3 lines of posting P1 in the event log"

    _publish_until(pub, lc, wh, 3, each=whole)
    with psycopg.connect(dsn) as c:
        c.execute("UPDATE journal_lines SET amount = 5.5 WHERE account = 'GL-2001'")
        c.execute("DELETE FROM journal_lines WHERE account = 'GL-2001'")
    # 3 inserts + the update (its new version and the reversal of the old one) + the delete's reversal
    _publish_until(pub, lc, wh, 6)
    EventLogIngestor(pub.kafka, wh).run()
    again = pub.publish(lc)
    assert again.published == 0
    rows = wh.rows(f"SELECT status, amount FROM ledger_event_log WHERE ledger = '{lc.name}' ORDER BY status, amount")
    assert sorted((s, str(a)) for s, a in rows) == sorted([
        ("booked", "12345678901234567890.123456789012345678"), ("booked", "12345678901234567890.000000000000000001"),
        ("booked", "0.123456789012345677"), ("booked", "5.5"), ("reversed", "0.123456789012345677"),
        ("reversed", "5.5")])
    assert wh.scalar(f"SELECT count(DISTINCT entry_id) FROM ledger_event_log WHERE ledger = '{lc.name}'") == 6
    lag = connect.slot_lag(lc)
    assert lag["slot"] == connect.slot_name(lc.name) and lag["lag_bytes"] >= 0
    # the password is a reference in the connector's configuration, never its value
    code, config = connect._request("GET", f"{connect.connect_url()}/connectors/{connect.connector_name(lc.name)}/config")
    password = connect._pg_params(lc.require_connection_url())["password"]
    assert config["database.password"].startswith("${file:") and password not in str(config)
    assert oct(connect.secret_file(lc.name).stat().st_mode & 0o777) == "0o600"

    # removing the ledger from the configuration: `cdc sync` removes the connector and drops its slot
    out = connect.sync([], pub.kafka)
    assert [r["connector"] for r in out["removed"] if r["removed"]] == [connect.connector_name(lc.name)]
    assert connect.status(lc.name)["connector"] == "absent"
    with psycopg.connect(dsn) as c:
        assert c.execute("SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s",
                         (connect.slot_name(lc.name),)).fetchone()[0] == 0
    # published before, connector and slot gone: no new snapshot (its rows would be booked twice), an error
    with pytest.raises(connect.ConnectError, match="are gone"):
        pub.publish(lc)
    assert connect.status(lc.name)["connector"] == "absent"


def test_a_transaction_is_held_back_until_its_end_has_arrived(kafka, tmp_path, monkeypatch):
    """The publisher's side of whole transactions, on Debezium's own record shapes: BEGIN, two of three
    events -> nothing handed on, the transaction reported open; the third event and END -> all three."""
    import json

    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    from ledger_pipelines.config import LedgerConfig
    from ledger_pipelines.connectors.sql.mapping import ColumnMapping

    data, txs = f"{kafka.topic_prefix}dbz.public.journal_lines", f"{kafka.topic_prefix}dbz.transaction"
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap_servers})
    for f in admin.create_topics([NewTopic(t, 1, 1) for t in (data, txs)]).values():
        f.result(30)
    lc = LedgerConfig(name="pg_framed", kind="cdc", mapping=ColumnMapping(),
                      options={"debezium_topic": data, "transaction_topic": txs})
    wh = Warehouse(f"sqlite:///{tmp_path / 'w.db'}")
    wh.create_schema()
    pub = Publisher(kafka, wh)
    producer = Producer({"bootstrap.servers": kafka.bootstrap_servers})

    def event(n: int, lsn: int) -> bytes:
        row = {"id": n, "txn_id": "P9", "posted_at": "2026-11-20T10:00:00Z", "account": f"GL-{n}", "counterparty": None,
               "currency": "EUR", "amount": "1.00" if n < 3 else "2.00", "side": "D" if n == 3 else "C",
               "payment_ref": "E2E-9"}
        return json.dumps({"before": None, "after": row, "op": "c", "ts_ms": 1,
                           "source": {"schema": "public", "table": "journal_lines", "txId": 731, "lsn": lsn,
                                      "ts_ms": 1},
                           "transaction": {"id": f"731:{lsn}", "total_order": n, "data_collection_order": n}}).encode()

    from dagster import DagsterInstance, build_sensor_context

    from ledger_pipelines.resources import KafkaResource, WarehouseResource
    from ledger_pipelines.sensors.source_sensors import build_source_sensors

    for k, v in {"LEDGER_WAREHOUSE_URL": f"sqlite:///{tmp_path / 'w.db'}", "LEDGER_KAFKA_BOOTSTRAP": kafka.bootstrap_servers,
                 "LEDGER_TOPIC_PREFIX": kafka.topic_prefix}.items():
        monkeypatch.setenv(k, v)
    sensor, instance = build_source_sensors([lc])["cdc_changes_sensor"], DagsterInstance.ephemeral()

    def tick() -> list:
        out = sensor(build_sensor_context(instance=instance, resources={"warehouse": WarehouseResource(),
                                                                         "kafka": KafkaResource()}))
        return out if isinstance(out, list) else []

    assert tick() == []  # nothing on the topics yet
    producer.produce(txs, json.dumps({"status": "BEGIN", "id": "731:100", "event_count": None,
                                      "data_collections": None}).encode())
    producer.produce(data, event(1, 100))
    producer.produce(data, event(2, 200))
    producer.flush(30)
    assert [r.run_config["ops"]["publish_ledger"]["config"]["ledger"] for r in tick()] == ["pg_framed"]
    held = pub.publish(lc)
    assert tick() == []  # read up to the end: nothing new until more arrives
    assert held.published == 0 and held.counts["events_held_in_open_transactions"] == 2
    assert held.details["open_transactions"][0]["transaction"] == "731"
    assert held.details["open_transactions"][0]["events_expected"] is None  # no END yet
    assert pub.publish(lc).published == 0  # still open on the next pass
    producer.produce(data, event(3, 300))
    producer.produce(txs, json.dumps({"status": "END", "id": "731:400", "event_count": 3, "data_collections": [
        {"data_collection": "public.journal_lines", "event_count": 3}]}).encode())
    producer.flush(30)
    assert len(tick()) == 1
    done = pub.publish(lc)
    assert done.published == 3 and done.counts["read"] == 3 and "open_transactions" not in done.details
    assert pub.publish(lc).published == 0  # handed on once

    # a change event without its transaction block on a framed topic is set aside, never handed on alone;
    # a snapshot row (op r) has none and goes through
    stray = json.loads(event(4, 500))
    del stray["transaction"]
    snap = {**json.loads(event(5, 600)), "op": "r"}
    del snap["transaction"]
    producer.produce(data, json.dumps(stray).encode())
    producer.produce(data, json.dumps(snap).encode())
    producer.flush(30)
    mixed = pub.publish(lc)
    assert (mixed.published, mixed.rejected, mixed.counts["read"]) == (1, 1, 2)

    # the transaction topic gone: nothing is published unframed
    gone = LedgerConfig(name="pg_framed", kind="cdc", mapping=ColumnMapping(),
                        options={"debezium_topic": data, "transaction_topic": f"{kafka.topic_prefix}dbz.missing"})
    producer.produce(data, event(6, 700))  # a change of a transaction: it waits for the topic of its END
    producer.flush(30)
    waiting = pub.publish(gone)
    assert waiting.published == 0 and "wait for it" in waiting.details["transaction_topic_missing"]
    assert waiting.details["open_transactions"][0]["transaction"] == "731"
    # the cursor belongs to its topic: another topic is not read against it
    other = f"{kafka.topic_prefix}dbz.public.other_lines"
    admin.create_topics([NewTopic(other, 1, 1)])[other].result(30)
    moved = LedgerConfig(name="pg_framed", kind="cdc", mapping=ColumnMapping(),
                         options={"debezium_topic": other, "transaction_topic": txs})
    with pytest.raises(RuntimeError, match="its cursor is of topic"):
        pub.publish(moved)


def test_sigkill_of_the_worker_mid_20000_inserts_and_a_stopped_connector_lose_nothing(cdc, connect_service):
    lc, dsn, pub, wh = cdc
    pub.publish(lc)
    total, per_tx = 20_000, 100

    def insert() -> None:
        with psycopg.connect(dsn) as c:
            for t in range(total // per_tx):
                with c.transaction():
                    c.cursor().executemany(
                        "INSERT INTO journal_lines (txn_id, posted_at, account, currency, amount, side) "
                        "VALUES (%s, '2026-11-20T10:00:00Z', 'GL-1', 'EUR', %s, 'D')",
                        [(f"T{t}", f"{t}.{i:02d}") for i in range(per_tx)])

    writer = threading.Thread(target=insert)
    writer.start()
    topic = connect.topics(pub.kafka, lc).data
    from confluent_kafka.admin import AdminClient

    from ledger_pipelines.kafka.topics import end_offsets

    admin = AdminClient({"bootstrap.servers": pub.kafka.bootstrap_servers})
    deadline = time.monotonic() + 120
    while True:  # the kill lands while the connector streams
        md = admin.list_topics(timeout=10).topics.get(topic)
        if md is not None and sum(end_offsets(pub.kafka, {topic: 1}).values()) > 1000:
            break
        assert time.monotonic() < deadline, "the connector never streamed"
        time.sleep(0.1)
    connect_service.kill()
    writer.join()
    connect_service.start(timeout=120)
    _publish_until(pub, lc, wh, total, timeout=240)
    assert wh.scalar(f"SELECT count(*) FROM ledger_event_log WHERE ledger = '{lc.name}'") == total
    assert wh.scalar(f"SELECT count(DISTINCT entry_id) FROM ledger_event_log WHERE ledger = '{lc.name}'") == total

    # a stopped connector: the changes made while it is down arrive once it resumes (its slot kept them)
    name, url = connect.connector_name(lc.name), connect.connect_url()
    assert connect._request("PUT", f"{url}/connectors/{name}/stop")[0] in (202, 204)
    _post(dsn, [(f"S{n}", "2026-11-20T11:00:00Z", "GL-2", f"{n}.00", "C", None) for n in range(50)])
    time.sleep(2)
    assert connect._request("PUT", f"{url}/connectors/{name}/resume")[0] in (202, 204)
    _publish_until(pub, lc, wh, total + 50, timeout=120)
    assert wh.scalar(f"SELECT count(DISTINCT entry_id) FROM ledger_event_log WHERE ledger = '{lc.name}'") == total + 50
    assert wh.scalar(f"SELECT count(*) FROM ledger_event_log WHERE ledger = '{lc.name}'") == total + 50

    # the connector deleted behind the project's back, its slot kept: registered again without a new snapshot
    # (the 20,050 rows are not booked a second time), and what changed meanwhile arrives from the slot
    assert connect._request("DELETE", f"{url}/connectors/{name}")[0] == 204
    for _ in range(100):
        if connect.status(lc.name)["connector"] == "absent":
            break
        time.sleep(0.2)
    _post(dsn, [("R1", "2026-11-20T12:00:00Z", "GL-3", "7.00", "D", None)])
    _publish_until(pub, lc, wh, total + 51, timeout=120)
    time.sleep(2)
    pub.publish(lc)
    EventLogIngestor(pub.kafka, wh).run()
    assert wh.scalar(f"SELECT count(*) FROM ledger_event_log WHERE ledger = '{lc.name}'") == total + 51
