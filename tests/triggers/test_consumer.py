"""The bridge consumer on the real stack: SQL journal -> Kafka -> the bridge consumer -> LedgerBridge on anvil
and a mirrored journal entry in PostgreSQL; crashes (from outside, between acting and logging, and SIGKILL)
never double-apply; a node outage leaves actions pending and their records uncommitted until a later run;
the bridge sensor and ``bridge_job``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import pytest
import yaml
from conftest import balanced, post_journal

from ledger_pipelines.config import load_config

from .helpers import DAY

N = 60


def _config(tmp_path: Path, on_orphaned="hold") -> Path:
    doc = {
        "ledgers": [
            {"name": "core_banking", "kind": "sql", "connection_env": "LEDGER_CORE_BANKING_URL"},
            {"name": "mirror", "kind": "sql", "connection_env": "LEDGER_MIRROR_URL"},
        ],
        "triggers": [
            {"name": "payments_on_chain", "source": "core_banking",
             "filter": {"direction": "debit", "account": ["GL-D"], "min_amount": "1", "has_correlation": True},
             "action": {"type": "bridge_record", "reference": "correlation_id"}, "on_orphaned": on_orphaned},
            {"name": "mirror_payments", "source": "core_banking",
             "filter": {"direction": "debit", "account": "GL-D"},
             "action": {"type": "sql_post", "ledger": "mirror", "debit_account": "GL-1300-AUDIT",
                        "credit_account": "GL-9900-SUSPENSE"}},
        ],
    }
    path = tmp_path / "ledgers.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


# the bridge command, crashed from outside: the first time outcomes are about to be logged (after acting on the
# targets, before the action log or the offsets are written), the process exits hard
_CRASH_AFTER_ACT = """
import os, sys
from ledger_pipelines.cli import main
from ledger_pipelines.triggers.action_log import ActionLog

def record(self, outcomes):
    if outcomes:
        os._exit(137)

ActionLog.record = record
sys.exit(main(sys.argv[1:]))
"""


def _bridge(env, *extra, crash_after_act=False, **popen):
    cmd = ["-c", _CRASH_AFTER_ACT] if crash_after_act else ["-m", "ledger_pipelines.cli"]
    return subprocess.Popen([sys.executable, *cmd, "bridge", *extra], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def _actions(wh_url):
    from sqlalchemy import create_engine, text

    eng = create_engine(wh_url)
    try:
        with eng.connect() as c:
            return c.execute(text("SELECT rule, status, count(*) FROM bridge_actions GROUP BY rule, status")).all()
    except Exception:
        return []
    finally:
        eng.dispose()


@pytest.mark.services
def test_bridge_consumer_applies_every_action_exactly_once_across_crashes(tmp_path, kafka, chain, pg_url,
                                                                          stack_config):
    from confluent_kafka import Consumer
    from sqlalchemy import create_engine, text

    from ledger_pipelines.connectors.sql.mapping import ColumnMapping
    from ledger_pipelines.connectors.sql.journal import SqlLedger
    from ledger_pipelines.contracts import deploy
    from ledger_pipelines.kafka.topics import actions_topic, ensure_topics
    from ledger_pipelines.publish import Publisher
    from ledger_pipelines.config import ledger_by_name
    from ledger_pipelines.warehouse import Warehouse

    core = f"sqlite:///{tmp_path / 'core.db'}"
    lines = [x for n in range(N) for x in balanced(f"T{n}", f"{DAY}T09:{n % 60:02d}:00Z", amount=f"{n + 1}.25",
                                                  ref=f"E2E-{n}")]
    post_journal(core, lines)
    SqlLedger(pg_url, ColumnMapping(), "mirror").create_journal()
    bridge = deploy(chain, "LedgerBridge")
    wh_url = f"sqlite:///{tmp_path / 'w.db'}"
    cfg = _config(tmp_path)
    env = {**os.environ, "LEDGER_CONFIG": str(cfg), "LEDGER_CORE_BANKING_URL": core, "LEDGER_MIRROR_URL": pg_url,
           "LEDGER_WAREHOUSE_URL": wh_url, "LEDGER_KAFKA_BOOTSTRAP": kafka.bootstrap_servers,
           "LEDGER_TOPIC_PREFIX": kafka.topic_prefix, "LEDGER_BRIDGE_CONTRACT": bridge.address,
           "LEDGER_BRIDGE_RPC_URL": stack_config.anvil_url}
    ledgers = load_config(cfg)
    ensure_topics(kafka, ["core_banking", "mirror"])
    wh = Warehouse(wh_url)
    wh.create_schema()
    os.environ["LEDGER_CORE_BANKING_URL"] = core
    try:
        assert Publisher(kafka, wh).publish(ledger_by_name(ledgers, "core_banking")).published == 2 * N
    finally:
        del os.environ["LEDGER_CORE_BANKING_URL"]

    # 1. a crash right after acting on the first batch, before anything is logged or committed
    crashed = _bridge(env, crash_after_act=True)
    assert crashed.wait(120) == 137, crashed.stderr.read()[-2000:]
    on_chain_after_crash = len(chain.eth.get_logs({"address": bridge.address, "fromBlock": 0}))
    assert on_chain_after_crash > 0 and _actions(wh_url) == []  # acted on chain, logged nothing

    # 2. SIGKILL mid-stream (a small batch size is not needed: the kill lands whenever it lands)
    victim = _bridge(env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and sum(n for _, _, n in _actions(wh_url)) < 10:
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait(30)

    # 3. restart: runs until every source partition is consumed
    done = _bridge(env, "--until-caught-up")
    out, err = done.communicate(timeout=300)
    assert done.returncode == 0, err[-3000:]
    summary = json.loads(out.strip().splitlines()[-1])

    # every action exactly once: on chain, in SQL, and in the action log
    logs = chain.eth.get_logs({"address": bridge.address, "fromBlock": 0})
    events = [bridge.events.PaymentRecorded().process_log(lg)["args"] for lg in logs]
    assert sorted(e["paymentReference"] for e in events) == sorted(f"E2E-{n}" for n in range(N))
    assert {e["paymentReference"]: (e["amount"], e["scale"]) for e in events}["E2E-7"] == (825, 2)
    mirror = create_engine(pg_url)
    with mirror.connect() as c:
        assert c.execute(text("SELECT count(*) FROM bridge_postings")).scalar() == N
        rows = c.execute(text("SELECT side, count(*), sum(amount) FROM journal_lines GROUP BY side ORDER BY side")).all()
    mirror.dispose()
    total = sum(Decimal(f"{n + 1}.25") for n in range(N))
    assert [(s, n) for s, n, _ in rows] == [("C", N), ("D", N)]
    assert all(Decimal(str(amount)) == total for _, _, amount in rows)
    assert sorted(_actions(wh_url)) == [("mirror_payments", "applied", N), ("payments_on_chain", "applied", N)]
    found = wh.rows("SELECT count(*) FROM bridge_actions WHERE detail LIKE '%found_on_target%'")[0][0]
    assert found >= on_chain_after_crash  # the crashed batch was recognised on the chain, not re-sent
    assert summary["failed"] == 0
    # requests and outcomes are on ledger.bridge.actions; every outcome announced
    assert wh.rows("SELECT count(*) FROM bridge_actions WHERE announced = 0")[0][0] == 0
    c = Consumer({"bootstrap.servers": kafka.bootstrap_servers, "group.id": "t-actions",
                  "auto.offset.reset": "earliest"})
    c.subscribe([actions_topic(kafka)])
    outcomes = set()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(outcomes) < 2 * N:
        m = c.poll(0.5)
        if m is not None and not m.error():
            doc = json.loads(m.value())
            if doc["event"] == "outcome" and doc["status"] == "applied":
                outcomes.add(doc["action_id"])
    c.close()
    assert len(outcomes) == 2 * N


@pytest.mark.services
def test_bridge_sensor_launches_bridge_job_that_applies_the_triggers(tmp_path, kafka, chain, monkeypatch,
                                                                     stack_config):
    from dagster import DagsterInstance, SkipReason, build_sensor_context
    from sqlalchemy import create_engine, text

    from ledger_pipelines.config import ledger_by_name
    from ledger_pipelines.connectors.sql.mapping import ColumnMapping
    from ledger_pipelines.connectors.sql.journal import SqlLedger
    from ledger_pipelines.contracts import deploy
    from ledger_pipelines.kafka.topics import ensure_topics
    from ledger_pipelines.publish import Publisher
    from ledger_pipelines.resources import KafkaResource, WarehouseResource
    from ledger_pipelines.sensors.bridge_sensor import bridge_sensor
    from ledger_pipelines.jobs import bridge_job
    from ledger_pipelines.warehouse import Warehouse

    core, mirror = f"sqlite:///{tmp_path / 'core.db'}", f"sqlite:///{tmp_path / 'mirror.db'}"
    post_journal(core, [x for n in range(5) for x in balanced(f"T{n}", f"{DAY}T10:0{n}:00Z", ref=f"E2E-S{n}")])
    SqlLedger(mirror, ColumnMapping(), "mirror").create_journal()
    bridge = deploy(chain, "LedgerBridge")
    cfg = _config(tmp_path)
    for k, v in {"LEDGER_CONFIG": str(cfg), "LEDGER_CORE_BANKING_URL": core, "LEDGER_MIRROR_URL": mirror,
                 "LEDGER_WAREHOUSE_URL": f"sqlite:///{tmp_path / 'w.db'}", "LEDGER_BRIDGE_CONTRACT": bridge.address,
                 "LEDGER_KAFKA_BOOTSTRAP": kafka.bootstrap_servers, "LEDGER_TOPIC_PREFIX": kafka.topic_prefix}.items():
        monkeypatch.setenv(k, v)
    ensure_topics(kafka, ["core_banking", "mirror"])
    wh = Warehouse(None)
    wh.create_schema()
    Publisher(kafka, wh).publish(ledger_by_name(load_config(), "core_banking"))
    instance = DagsterInstance.ephemeral()
    resources = {"kafka": KafkaResource(), "warehouse": WarehouseResource()}
    request = bridge_sensor(build_sensor_context(instance=instance, resources=resources))
    assert request.run_key.startswith("offsets-")
    result = bridge_job.execute_in_process(instance=instance, resources=resources)
    assert result.success
    # the run's progress is in the Dagster run log: entries, actions, and how each ended
    logged = [e.user_message for e in instance.all_logs(result.run_id)]
    assert any(m.startswith("bridge run done: 10 entries read, 10 actions: 10 applied, 0 found already applied, "
                            "0 pending (tried again on a later run), 0 failed") for m in logged), logged
    assert len(chain.eth.get_logs({"address": bridge.address, "fromBlock": 0})) == 5
    with create_engine(mirror).connect() as c:
        assert c.execute(text("SELECT count(*) FROM bridge_postings")).scalar() == 5
    again = bridge_sensor(build_sensor_context(instance=instance, resources=resources))
    assert isinstance(again, SkipReason) and "caught up" in again.skip_message


def _bridge_only_config(tmp_path: Path) -> Path:
    doc = {"ledgers": [{"name": "core_banking", "kind": "sql", "connection_env": "LEDGER_CORE_BANKING_URL"}],
           "triggers": [{"name": "payments_on_chain", "source": "core_banking",
                         "filter": {"direction": "debit", "account": ["GL-D"], "has_correlation": True},
                         "action": {"type": "bridge_record", "reference": "correlation_id"}}]}
    path = tmp_path / "ledgers.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _committed(kafka, group: str, topic: str) -> int:
    """The sum of the group's committed offsets over the topic's partitions."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": kafka.bootstrap_servers, "group.id": group, "enable.auto.commit": False})
    try:
        return sum(max(tp.offset, 0) for tp in c.committed([TopicPartition(topic, p) for p in range(4)], timeout=15))
    finally:
        c.close()


@pytest.mark.services
def test_a_node_outage_longer_than_the_retries_leaves_actions_pending_and_a_later_run_applies_them_once(
        tmp_path, kafka, chain, monkeypatch, stack_config):
    """The node goes away while the bridge sends: the first send reaches the chain but its answer is lost, then
    every call is refused, for longer than the in-run retries. Nothing is failed or dead-lettered, the records
    stay uncommitted; the next run (node back) records every payment exactly once."""
    import requests
    from web3 import HTTPProvider

    from ledger_pipelines.config import ledger_by_name
    from ledger_pipelines.contracts import deploy
    from ledger_pipelines.kafka.topics import ensure_topics, entries_topic
    from ledger_pipelines.publish import Publisher
    from ledger_pipelines.triggers.consumer import TriggerConsumer
    from ledger_pipelines.triggers.engine import TriggerEngine
    from ledger_pipelines.triggers.rules import rules_from_config
    from ledger_pipelines.warehouse import Warehouse

    core = f"sqlite:///{tmp_path / 'core.db'}"
    post_journal(core, [x for n in range(3) for x in balanced(f"T{n}", f"{DAY}T10:0{n}:00Z", ref=f"E2E-O{n}")])
    bridge = deploy(chain, "LedgerBridge")
    cfg = _bridge_only_config(tmp_path)
    for k, v in {"LEDGER_CONFIG": str(cfg), "LEDGER_CORE_BANKING_URL": core, "LEDGER_BRIDGE_CONTRACT": bridge.address,
                 "LEDGER_BRIDGE_RPC_URL": stack_config.anvil_url}.items():
        monkeypatch.setenv(k, v)
    ensure_topics(kafka, ["core_banking"])
    wh = Warehouse(f"sqlite:///{tmp_path / 'w.db'}")
    wh.create_schema()
    ledgers = load_config(cfg)
    assert Publisher(kafka, wh).publish(ledger_by_name(ledgers, "core_banking")).published == 6
    topic, group = entries_topic(kafka, "core_banking"), f"t-outage-{kafka.topic_prefix}"

    node = {"armed": False, "down": False, "lost": 0, "refused": 0}
    real = HTTPProvider.make_request

    def make_request(self, method, params):  # the node as the bridge sees it
        if node["armed"] and method == "eth_sendRawTransaction" and not node["down"]:
            node["down"], node["lost"] = True, 1
            real(self, method, params)  # the first send reaches the chain ...
            raise requests.exceptions.ReadTimeout("read timed out")  # ... its answer does not, and the node goes
        if node["down"]:
            node["refused"] += 1
            raise requests.exceptions.ConnectionError("[Errno 111] Connection refused (node restarting)")
        return real(self, method, params)

    monkeypatch.setattr(HTTPProvider, "make_request", make_request)

    def run():
        engine = TriggerEngine(rules_from_config(), ledgers, wh, kafka)
        engine.executor(engine.rules[0])  # connects while the node is up
        return engine, TriggerConsumer(engine, group=group, instance=None)

    engine, consumer = run()
    node["armed"] = True
    started = time.monotonic()
    try:
        first = consumer.run(until_caught_up=True)
    finally:
        consumer.close()
    assert time.monotonic() - started > 3  # the in-run retries (0.1 + 0.2 + ... + 1.6 s) were waited out
    assert node["lost"] == 1 and node["refused"] >= 5
    assert (first.pending, first.failed, first.applied, first.found_on_target) == (3, 0, 0, 0)
    rows = wh.rows("SELECT status, detail FROM bridge_actions ORDER BY source_entry_id")
    assert [r[0] for r in rows] == ["pending"] * 3
    assert all("Connection refused" in json.loads(d)["reason"] or "ReadTimeout" in json.loads(d)["reason"]
               for _, d in rows), rows
    assert _committed(kafka, group, topic) < 6  # the pending payments' records are read again by the next run
    assert len(chain.eth.get_logs({"address": bridge.address, "fromBlock": 0})) == 1  # the send whose answer was lost

    node["armed"] = node["down"] = False
    engine, consumer = run()
    try:
        second = consumer.run(until_caught_up=True)
    finally:
        consumer.close()
    assert (second.pending, second.failed) == (0, 0)
    assert (second.applied, second.found_on_target) == (2, 1)  # the lost answer's payment is found on chain
    logs = chain.eth.get_logs({"address": bridge.address, "fromBlock": 0})
    events = [bridge.events.PaymentRecorded().process_log(lg)["args"] for lg in logs]
    assert sorted(e["paymentReference"] for e in events) == ["E2E-O0", "E2E-O1", "E2E-O2"]  # each exactly once
    assert wh.rows("SELECT status, count(*) FROM bridge_actions GROUP BY status") == [("applied", 3)]
    assert _committed(kafka, group, topic) == 6

    engine, consumer = run()  # nothing left to do
    try:
        third = consumer.run(until_caught_up=True)
    finally:
        consumer.close()
    assert (third.seen, third.applied, third.pending) == (0, 0, 0)


def test_bridge_sensor_asks_again_for_offsets_a_run_left_pending(monkeypatch):
    """Actions left pending (node down) hold the consumer's offsets back, so the lag the sensor sees stays
    the same: its run key changes every RETRY_PENDING_SECONDS so that they are retried without new entries,
    and stays the same within that time (no run per tick)."""
    from types import SimpleNamespace

    from dagster import DagsterInstance, build_sensor_context

    from ledger_pipelines import triggers
    from ledger_pipelines.resources import KafkaResource
    from ledger_pipelines.sensors import bridge_sensor as module

    monkeypatch.setattr(triggers, "rules_from_config", lambda *a: [SimpleNamespace(source="eth_usdc")])
    monkeypatch.setattr(module, "bridge_lag", lambda settings, sources: {("ledger.eth_usdc.entries", 0): 7})
    now = [1_800_000_000.0]
    monkeypatch.setattr(module.time, "time", lambda: now[0])
    instance = DagsterInstance.ephemeral()

    def key():
        return module.bridge_sensor(build_sensor_context(instance=instance, resources={"kafka": KafkaResource()})).run_key

    first = key()
    now[0] += 60
    assert key() == first
    now[0] += module.RETRY_PENDING_SECONDS
    assert key() != first


@pytest.mark.services
def test_a_bridge_started_before_its_source_was_ever_published_waits_quietly(tmp_path, kafka):
    """The consumer subscribed to a topic nobody had created yet and the run died at once with Kafka's
    UNKNOWN_TOPIC_OR_PART: a bridge (or a bridge_job) started on a fresh stack before the first publish."""
    from ledger_pipelines.config import _ledger
    from ledger_pipelines.triggers.consumer import TriggerConsumer
    from ledger_pipelines.triggers.engine import TriggerEngine
    from ledger_pipelines.triggers.rules import load_rules
    from ledger_pipelines.warehouse import Warehouse

    lcs = [_ledger({"name": "core_banking", "kind": "sql"})]
    rules = load_rules({"triggers": [{"name": "forward", "source": "core_banking",
                                      "action": {"type": "publish", "topic": f"{kafka.topic_prefix}alerts.entries"}}]},
                       lcs)
    engine = TriggerEngine(rules, lcs, Warehouse(f"sqlite:///{tmp_path / 'w.db'}"), kafka)
    consumer = TriggerConsumer(engine, group=f"{kafka.topic_prefix}bridge", instance=None)
    try:
        result = consumer.run(until_caught_up=True, assign_timeout=30)
    finally:
        consumer.close()
    assert result.seen == 0 and consumer.rejected == 0
