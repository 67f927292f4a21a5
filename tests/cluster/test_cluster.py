"""A 3-node Kafka cluster of the project's own launcher (``stack start kafka --nodes 3``) under faults:
SIGKILL of a partition leader during a publish, an ingest and a bridge run ends with exactly N entries
and every bridge action applied once; a killed node comes back and catches up; with two nodes down the
publisher stops, says why, and a later run loses nothing."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from conftest import balanced, logged, post_journal

from ledger_pipelines.local.stack import KafkaCluster
from ledger_pipelines.settings import KafkaSettings, StackConfig

pytestmark = [pytest.mark.services, pytest.mark.cluster]

DAY = "2026-11-18"


def _free_block(n: int) -> int:
    """A base port with ``n`` consecutive free ports on 127.0.0.1, below the ephemeral range (32768-): a client
    retrying a connection to a killed node's port from an ephemeral port can take that very port (a TCP
    self-connect), and the node restarted there could not bind it."""
    for base in range(23000 + os.getpid() % 100 * 20, 32000, 20):
        ok = True
        for p in range(base, base + n):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", p)) == 0:
                    ok = False
                    break
        if ok:
            return base
    raise RuntimeError("no free ports")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    base = _free_block(6)
    cfg = StackConfig(root=tmp_path_factory.mktemp("cluster-stack"), kafka_port=base, kafka_controller_port=base + 3,
                      kafka_heap="384m", kafka_nodes=3)
    kc = KafkaCluster(cfg)
    kc.start(timeout=180)
    yield kc
    kc.stop(timeout=10)  # a throwaway cluster: no need to wait out the last nodes' shutdown without a quorum


@pytest.fixture
def settings(cluster, request) -> KafkaSettings:
    prefix = "c" + request.node.name[-20:].replace("[", "").replace("]", "").replace("_", "")[-12:] + "."
    return KafkaSettings(bootstrap_servers=cluster.cfg.kafka_bootstrap, topic_prefix=prefix.lower(), partitions=3,
                         replication_factor=3)


def _admin(settings):
    from confluent_kafka.admin import AdminClient

    return AdminClient({"bootstrap.servers": settings.bootstrap_servers})


def _leader(settings, topic: str, partition: int = 0) -> int:
    return _admin(settings).list_topics(topic=topic, timeout=15).topics[topic].partitions[partition].leader


def _wait_in_sync(settings, topic: str, nodes: int = 3, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        parts = _admin(settings).list_topics(topic=topic, timeout=15).topics[topic].partitions.values()
        if all(len(p.isrs) == nodes for p in parts):
            return
        time.sleep(0.5)
    raise AssertionError(f"{topic}: not every partition back to {nodes} in-sync replicas in {timeout}s")


def _env(settings, tmp_path: Path, config: Path, core: str, **extra) -> dict:
    return {**os.environ, "LEDGER_CONFIG": str(config), "LEDGER_CORE_BANKING_URL": core,
            "LEDGER_WAREHOUSE_URL": f"sqlite:///{tmp_path / 'w.db'}", "LEDGER_KAFKA_BOOTSTRAP": settings.bootstrap_servers,
            "LEDGER_TOPIC_PREFIX": settings.topic_prefix, "LEDGER_KAFKA_REPLICATION": "3",
            "LEDGER_KAFKA_PARTITIONS": "3", **extra}


def _cli(env, *args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ledger_pipelines.cli", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _config(tmp_path: Path, triggers: bool = False) -> Path:
    doc = {"ledgers": [{"name": "core_banking", "kind": "sql", "connection_env": "LEDGER_CORE_BANKING_URL"},
                       {"name": "mirror", "kind": "sql", "connection_env": "LEDGER_MIRROR_URL"}]}
    if triggers:
        doc["triggers"] = [{"name": "mirror_payments", "source": "core_banking",
                            "filter": {"direction": "debit", "account": "GL-D"},
                            "action": {"type": "sql_post", "ledger": "mirror", "debit_account": "GL-1300-AUDIT",
                                       "credit_account": "GL-9900-SUSPENSE"}}]
    path = tmp_path / "ledgers.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _journal(tmp_path: Path, payments: int) -> str:
    core = f"sqlite:///{tmp_path / 'core.db'}"
    post_journal(core, [x for n in range(payments)
                        for x in balanced(f"T{n}", f"{DAY}T{n // 3600 % 24:02d}:{n // 60 % 60:02d}:{n % 60:02d}Z",
                                          amount=f"{n % 997 + 1}.{n % 100:02d}", ref=f"E2E-{n}")])
    return core


def _topic_records(settings, topic: str) -> int:
    from ledger_pipelines.kafka.topics import end_offsets

    md = _admin(settings).list_topics(topic=topic, timeout=15).topics[topic]
    return sum(end_offsets(settings, {topic: len(md.partitions)}).values())


def _assert_entries_once(env: dict, n: int) -> None:
    """The event log holds exactly ``n`` entries, each once."""
    from ledger_pipelines.warehouse import Warehouse

    wh = Warehouse(env["LEDGER_WAREHOUSE_URL"])
    try:
        assert wh.scalar("SELECT count(*) FROM ledger_event_log") == n
        assert wh.scalar("SELECT count(DISTINCT entry_id) FROM ledger_event_log") == n
    finally:
        wh.dispose()


def _kill_when(condition, cluster, settings, topic, proc, timeout=60.0) -> int:
    """SIGKILL the leader of ``topic``'s partition 0 once ``condition()`` holds, while ``proc`` still runs (a
    kill after the run ended would test nothing); returns the killed node's id."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"the run ended before the kill: {proc.stderr.read()[-2000:]}"
        assert time.monotonic() < deadline, "the run never reached the point of the kill"
        time.sleep(0.05)
    victim = _leader(settings, topic)
    cluster.node(victim).kill()
    assert proc.poll() is None, "the run ended before the kill landed"
    return victim


def test_topics_on_the_cluster_are_replicated_with_a_min_isr(cluster, settings):
    from confluent_kafka.admin import ConfigResource

    from ledger_pipelines.kafka.topics import ensure_topics

    created = ensure_topics(settings, ["core_banking"])
    topic = f"{settings.topic_prefix}core_banking.entries"
    assert topic in created
    md = _admin(settings).list_topics(topic=topic, timeout=15).topics[topic]
    assert all(len(p.replicas) == 3 for p in md.partitions.values())
    res, admin = ConfigResource("topic", topic), _admin(settings)
    assert admin.describe_configs([res])[res].result()["min.insync.replicas"].value == "2"
    assert KafkaSettings(bootstrap_servers="x:1", replication_factor=3).min_isr == 2
    assert KafkaSettings(bootstrap_servers="x:1", replication_factor=1).min_isr == 1
    assert "127.0.0.1" in cluster.cfg.kafka_bootstrap and cluster.cfg.kafka_bootstrap.count(",") == 2


def test_existing_topics_get_the_configured_min_isr_and_an_under_replicated_one_is_named(cluster, settings):
    """Topics made before (by an older setting, or before the cluster grew): a min.insync.replicas of 1 on a
    3-replica topic is raised to 2; a topic of 1 replica is left alone and named in a warning."""
    from confluent_kafka.admin import ConfigResource, NewTopic

    from ledger_pipelines.kafka.topics import ensure_topics

    admin = _admin(settings)
    full, thin = (f"{settings.topic_prefix}{name}.entries" for name in ("full_rf", "thin_rf"))
    for topic, rf in ((full, 3), (thin, 1)):
        admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=rf,
                                      config={"min.insync.replicas": "1"})])[topic].result()
    with logged("ledger_pipelines.kafka.topics") as kept:
        created = ensure_topics(settings, ["full_rf", "thin_rf"])
    assert full not in created and thin not in created
    warnings = "\n".join(kept)
    assert f"topic {thin} has 1 replica(s) per partition, fewer than the configured 3" in warnings
    assert f"topic {full}: min.insync.replicas raised from 1 to 2" in warnings

    def min_isr(topic: str) -> str:
        res = ConfigResource("topic", topic)
        return admin.describe_configs([res])[res].result()["min.insync.replicas"].value

    deadline = time.monotonic() + 15  # every broker serves the new value once the change has reached it
    while any(min_isr(full) != "2" for _ in range(3)):
        assert time.monotonic() < deadline, "the raised min.insync.replicas did not reach every broker"
        time.sleep(0.2)
    assert min_isr(thin) == "1"
    # once raised, nothing more to do: a broker the change has not reached yet may still answer 1 (the
    # describe goes to any broker), and is raised again to the same value, until every broker has it
    while True:
        with logged("ledger_pipelines.kafka.topics") as kept:
            ensure_topics(settings, ["full_rf"])
        if not kept:
            break
        assert kept == [f"topic {full}: min.insync.replicas raised from 1 to 2"], kept
        assert time.monotonic() < deadline + 15, "a broker kept answering min.insync.replicas 1"
        time.sleep(0.5)


def test_leader_killed_during_publish_then_during_ingest_gives_exactly_n_entries(cluster, settings, tmp_path):
    payments = 60_000
    core = _journal(tmp_path, payments)
    env = _env(settings, tmp_path, _config(tmp_path), core)
    topic = f"{settings.topic_prefix}core_banking.entries"
    from ledger_pipelines.kafka.topics import ensure_topics

    ensure_topics(settings, ["core_banking", "mirror"])

    pub = _cli(env, "publish", "core_banking")
    victim = _kill_when(lambda: _topic_records(settings, topic) > 0, cluster, settings, topic, pub)
    out, err = pub.communicate(timeout=300)
    assert pub.returncode == 0, err[-3000:]
    published_while = _topic_records(settings, topic)
    assert published_while == 2 * payments  # idempotent producer: no duplicate message on any partition
    cluster.node(victim).start(timeout=120)
    _wait_in_sync(settings, topic)  # the restarted node caught up with what was written while it was down

    ingest = _cli(env, "ingest", "--batch-size", "2000")
    wh_path = tmp_path / "w.db"

    def ingested_some() -> bool:
        import sqlite3

        try:
            with sqlite3.connect(wh_path, timeout=0.2) as c:
                return c.execute("SELECT count(*) FROM ledger_event_log").fetchone()[0] > 0
        except sqlite3.Error:
            return False

    victim = _kill_when(ingested_some, cluster, settings, topic, ingest)
    out, err = ingest.communicate(timeout=300)
    assert ingest.returncode == 0, err[-3000:]
    _assert_entries_once(env, 2 * payments)
    cluster.node(victim).start(timeout=120)
    _wait_in_sync(settings, topic)


def test_leader_killed_during_a_bridge_run_applies_every_action_once(cluster, settings, tmp_path):
    from sqlalchemy import create_engine, text

    from ledger_pipelines.connectors.sql.journal import SqlLedger
    from ledger_pipelines.connectors.sql.mapping import ColumnMapping
    from ledger_pipelines.kafka.topics import actions_topic, ensure_topics

    payments = 3000
    core = _journal(tmp_path, payments)
    mirror = f"sqlite:///{tmp_path / 'mirror.db'}"
    SqlLedger(mirror, ColumnMapping(), "mirror").create_journal()
    env = _env(settings, tmp_path, _config(tmp_path, triggers=True), core, LEDGER_MIRROR_URL=mirror)
    ensure_topics(settings, ["core_banking", "mirror"])
    pub = _cli(env, "publish", "core_banking")
    assert pub.wait(300) == 0, pub.stderr.read()[-3000:]

    def postings() -> int:
        import sqlite3

        try:
            with sqlite3.connect(tmp_path / "mirror.db", timeout=0.2) as c:
                return c.execute("SELECT count(*) FROM bridge_postings").fetchone()[0]
        except sqlite3.Error:
            return 0

    bridge = _cli(env, "bridge", "--until-caught-up")
    victim = _kill_when(lambda: postings() > 0, cluster, settings, actions_topic(settings), bridge)
    out, err = bridge.communicate(timeout=600)
    assert bridge.returncode == 0, err[-3000:]
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["failed"] == 0
    eng = create_engine(mirror)
    with eng.connect() as c:
        assert c.execute(text("SELECT count(*) FROM bridge_postings")).scalar() == payments
        assert c.execute(text("SELECT count(DISTINCT payment_ref) FROM journal_lines")).scalar() == payments
        assert c.execute(text("SELECT count(*) FROM journal_lines")).scalar() == 2 * payments
    eng.dispose()
    wh = create_engine(env["LEDGER_WAREHOUSE_URL"])
    with wh.connect() as c:
        assert c.execute(text("SELECT status, count(*) FROM bridge_actions GROUP BY status")).all() == [
            ("applied", payments)]
    wh.dispose()
    cluster.node(victim).start(timeout=120)
    _wait_in_sync(settings, actions_topic(settings))


def test_with_two_nodes_down_the_publisher_stops_and_says_why_and_loses_nothing(cluster, settings, tmp_path):
    from ledger_pipelines.kafka.topics import ensure_topics

    payments = 500
    core = _journal(tmp_path, payments)
    env = _env(settings, tmp_path, _config(tmp_path), core, LEDGER_KAFKA_DELIVERY_TIMEOUT="15")
    ensure_topics(settings, ["core_banking", "mirror"])
    topic = f"{settings.topic_prefix}core_banking.entries"
    first, second = _leader(settings, topic), None
    cluster.node(first).kill()
    second = next(n.node_id for n in cluster.nodes if n.node_id != first)
    cluster.node(second).kill()  # one node left: below min.insync.replicas=2, and no controller quorum
    try:
        t0 = time.monotonic()
        pub = _cli(env, "publish", "core_banking")
        out, err = pub.communicate(timeout=180)
        assert pub.returncode != 0 and time.monotonic() - t0 < 120
        assert "not acknowledged by Kafka" in err, err[-2000:]
    finally:
        threads = [threading.Thread(target=cluster.node(n).start, kwargs={"timeout": 180}) for n in (first, second)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert cluster.running()
    pub = _cli(env, "publish", "core_banking")
    out, err = pub.communicate(timeout=300)
    assert pub.returncode == 0, err[-3000:]
    ingest = _cli(env, "ingest")
    assert ingest.wait(300) == 0, ingest.stderr.read()[-3000:]
    _assert_entries_once(env, 2 * payments)
    _wait_in_sync(settings, topic)
