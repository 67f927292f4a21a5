"""The engine: a batch against the rules and the action log; each action once, compensations after applies,
held rules wait for final entries, and an action pending for MAX_PENDING_SECONDS is failed."""

from __future__ import annotations

import json
import os
import time

import pytest

from ledger_pipelines.triggers.action_log import Action
from ledger_pipelines.triggers.rules import load_rules

from .helpers import source_entry


@pytest.mark.services
def test_orphaned_source_entries_are_compensated_or_held_by_rule(tmp_path, kafka):
    """A chain deposit mirrored to the SQL ledger at once (compensate rule) gets a reversing posting when
    a reorg orphans it; under a hold rule nothing happens before the entry is final; the publish action
    forwards the entry to another topic. Each once, however often the versions are seen."""
    from confluent_kafka import Consumer
    from sqlalchemy import create_engine, text

    from ledger_pipelines.config import _ledger
    from ledger_pipelines.connectors.sql.mapping import ColumnMapping
    from ledger_pipelines.connectors.sql.journal import SqlLedger
    from ledger_pipelines.kafka.topics import ensure_topics
    from ledger_pipelines.triggers.engine import TriggerEngine
    from ledger_pipelines.warehouse import Warehouse

    mirror = f"sqlite:///{tmp_path / 'mirror.db'}"
    SqlLedger(mirror, ColumnMapping(), "mirror").create_journal()
    os.environ["LEDGER_T_MIRROR_URL"] = mirror
    try:
        lcs = [_ledger({"name": "eth_usdc", "kind": "evm"}),
               _ledger({"name": "mirror", "kind": "sql", "connection_env": "LEDGER_T_MIRROR_URL"})]
        forward = f"{kafka.topic_prefix}alerts.entries"
        rules = load_rules({"triggers": [
            {"name": "mirror_now", "source": "eth_usdc", "filter": {"direction": "credit"}, "on_orphaned": "compensate",
             "action": {"type": "sql_post", "ledger": "mirror", "debit_account": "GL-1200-USDC",
                        "credit_account": "GL-2300-CLIENTS"}},
            {"name": "mirror_final", "source": "eth_usdc", "filter": {"direction": "credit", "status": ["final"]},
             "action": {"type": "sql_post", "ledger": "mirror", "debit_account": "GL-1201-USDC-FINAL",
                        "credit_account": "GL-2301-CLIENTS-FINAL"}},
            {"name": "forward", "source": "eth_usdc", "filter": {"min_amount": "100"},
             "action": {"type": "publish", "topic": forward}},
        ]}, lcs)
        ensure_topics(kafka, ["eth_usdc"])
        wh = Warehouse(f"sqlite:///{tmp_path / 'w.db'}")
        engine = TriggerEngine(rules, lcs, wh, kafka)
        dep = dict(ledger="eth_usdc", account="0xabc", direction="credit", amount="250.00", ref="0xt:1", corr="D-1")
        pending, orphaned = source_entry(status="pending", **dep), source_entry(status="orphaned", **dep)
        other_final = source_entry(status="final", **{**dep, "ref": "0xt:2", "amount": "5.00", "corr": "D-2"})
        big_final = source_entry(status="final", **{**dep, "ref": "0xt:3", "amount": "300.00", "corr": "D-3"})
        first = engine.process([pending, pending])  # seen twice: acted on once
        assert (first.applied, first.held) == (1, 4)  # mirror_now at once; mirror_final and forward hold it
        again = engine.process([pending, other_final, big_final])
        assert (again.skipped, again.applied) == (1, 5)  # 0xt:2: both mirrors; 0xt:3: both mirrors + forward
        comp = engine.process([orphaned, orphaned])
        assert comp.applied == 1  # the reversing posting of mirror_now; the held rules never acted on D-1
        assert engine.process([orphaned]).skipped == 3  # compensated once; nothing to compensate elsewhere
    finally:
        del os.environ["LEDGER_T_MIRROR_URL"]
    with create_engine(mirror).connect() as c:
        rows = c.execute(text("SELECT account, side, amount FROM journal_lines WHERE payment_ref = 'D-1' "
                              "ORDER BY id")).all()
    assert [(a, s) for a, s, _ in rows] == [("GL-1200-USDC", "D"), ("GL-2300-CLIENTS", "C"),
                                            ("GL-2300-CLIENTS", "D"), ("GL-1200-USDC", "C")]  # posted, then reversed
    c = Consumer({"bootstrap.servers": kafka.bootstrap_servers, "group.id": "t-fwd", "auto.offset.reset": "earliest"})
    c.subscribe([forward])
    got, deadline = [], time.monotonic() + 20
    while time.monotonic() < deadline and not got:
        m = c.poll(0.5)
        if m is not None and not m.error():
            got.append(json.loads(m.value()))
    c.close()
    assert [g["entry_id"] for g in got] == ["eth_usdc:0xt:3"]


def test_an_action_pending_for_max_pending_seconds_is_failed_however_often_it_was_tried(tmp_path, monkeypatch):
    """By time, not by runs: a bridge retrying every 30 s failed every action of a 50-minute outage at 100 runs."""
    from datetime import datetime, timedelta, timezone

    from ledger_pipelines.config import _ledger
    from ledger_pipelines.triggers import engine as engine_mod
    from ledger_pipelines.triggers.action_log import ActionLog
    from ledger_pipelines.triggers.engine import MAX_PENDING_SECONDS, TriggerEngine
    from ledger_pipelines.warehouse import Warehouse

    clock = [datetime(2026, 11, 18, 10, 0, tzinfo=timezone.utc)]
    monkeypatch.setattr(engine_mod, "_now", lambda: clock[0])
    lcs = [_ledger({"name": "core_banking", "kind": "sql"})]
    rules = load_rules({"triggers": [{"name": "payments_on_chain", "source": "core_banking",
                                      "action": {"type": "bridge_record"}}]}, lcs)
    runs = []

    class NodeDown:
        def run(self, actions):
            runs.append(len(runs) + 1)
            return [(a, "pending", {"reason": f"connection refused (run {len(runs)})"}, 6) for a in actions]

    dead = []
    engine = TriggerEngine.__new__(TriggerEngine)
    engine.rules, engine.ledgers = rules, lcs
    engine.log = ActionLog(Warehouse(f"sqlite:///{tmp_path / 'w.db'}"))
    engine._executors = {"bridge_record:": NodeDown()}
    engine.dlq = type("Dlq", (), {"send": lambda self, *a: dead.append(a), "confirm": lambda self: None})()
    engine._announce_requested = lambda actions: None
    engine.announce = lambda: 0
    entry = source_entry(ref="P9", corr="E2E-P9")
    aid = Action.of(rules[0], "apply", entry).action_id
    for n in range(1, 201):  # 200 runs 30 s apart: 100 minutes of outage, still pending
        res, pending = engine.process_entries([entry])
        assert res.pending == 1 and pending == {entry.entry_id} and dead == []
        clock[0] += timedelta(seconds=30)
    (detail,) = engine.log.wh.rows("SELECT detail FROM bridge_actions WHERE action_id = :a", a=aid)[0]
    assert json.loads(detail)["pending_runs"] == 200 and json.loads(detail)["pending_since"] == "2026-11-18T10:00:00Z"
    clock[0] = datetime(2026, 11, 18, 10, 0, tzinfo=timezone.utc) + timedelta(seconds=MAX_PENDING_SECONDS)
    res, pending = engine.process_entries([entry])
    assert res.failed == 1 and res.pending == 0 and pending == set()
    assert engine.log.status([aid]) == {aid: "failed"}
    ((_, _, reason, _),) = dead
    assert reason == "still pending after 72 hours (201 runs, MAX_PENDING_SECONDS); last reason: connection refused (run 201)"
    res, _ = engine.process_entries([entry])
    assert res.skipped == 1 and len(runs) == 201  # terminal: not tried again


def _bare_engine(tmp_path, triggers, ledgers, dead):
    """A TriggerEngine without Kafka: the DLQ collects into ``dead``, nothing is announced."""
    from ledger_pipelines.config import _ledger
    from ledger_pipelines.triggers.action_log import ActionLog
    from ledger_pipelines.triggers.engine import TriggerEngine
    from ledger_pipelines.warehouse import Warehouse

    lcs = [_ledger(d) for d in ledgers]
    engine = TriggerEngine.__new__(TriggerEngine)
    engine.rules, engine.ledgers = load_rules({"triggers": triggers}, lcs), lcs
    engine.log = ActionLog(Warehouse(f"sqlite:///{tmp_path / 'w.db'}"))
    engine._executors = {}
    engine.dlq = type("Dlq", (), {"send": lambda self, *a: dead.append(a), "confirm": lambda self: None})()
    engine._announce_requested = lambda actions: None
    engine.announce = lambda: 0
    return engine


def test_a_target_down_when_its_executor_is_made_leaves_the_actions_pending_and_keeps_the_rpc_key_out(
        tmp_path, monkeypatch, caplog):
    """The node refusing connections at the first action of a run: the run went down with the raw error, whose
    URL carried the provider's API key, instead of leaving the actions pending."""
    import logging

    key = "9f8e7d6c5b4a39281706f5e4d3c2b1a0"
    monkeypatch.setenv("LEDGER_BRIDGE_RPC_URL", f"http://127.0.0.1:9/v3/{key}")
    dead: list = []
    engine = _bare_engine(tmp_path, [{"name": "on_chain", "source": "core_banking",
                                      "action": {"type": "bridge_record"}}],
                          [{"name": "core_banking", "kind": "sql"}], dead)
    from ledger_pipelines.triggers import engine as engine_mod

    made = []

    class Counted(engine_mod.BridgeRecorder):
        def __init__(self, *a, **kw):
            made.append(1)
            super().__init__(*a, **kw)

    monkeypatch.setattr(engine_mod, "BridgeRecorder", Counted)
    entries = [source_entry(ref=f"P{i}", corr=f"E2E-P{i}") for i in range(3)]
    with caplog.at_level(logging.WARNING):
        res, pending = engine.process_entries(entries)
    assert res.pending == 3 and pending == {e.entry_id for e in entries} and dead == []
    details = [d for (d,) in engine.log.wh.rows("SELECT detail FROM bridge_actions")]
    assert len(details) == 3 and all("bridge_record target not available" in d for d in details)
    assert key not in caplog.text and all(key not in d for d in details)
    assert "Connection refused" in details[0] and made == [1]  # the executor is tried once a batch, not an action


def test_an_outcome_s_reason_is_kept_short_in_the_log_and_the_dlq(tmp_path):
    """A node's message quoting a megabyte reference made an announcement Kafka refuses, and the bridge
    stopped at each start on it."""
    from ledger_pipelines.triggers.engine import MAX_REASON_CHARS

    dead: list = []
    engine = _bare_engine(tmp_path, [{"name": "on_chain", "source": "core_banking",
                                      "action": {"type": "bridge_record"}}],
                          [{"name": "core_banking", "kind": "sql"}], dead)

    class Refusing:
        def run(self, actions):
            return [(a, "failed", {"reason": "invalid argument: " + "x" * 1_000_000}, 1) for a in actions]

    engine._executors = {"bridge_record:": Refusing()}
    res, _ = engine.process_entries([source_entry(ref="P1", corr="E2E-P1")])
    assert res.failed == 1
    ((detail,),) = engine.log.wh.rows("SELECT detail FROM bridge_actions")
    assert MAX_REASON_CHARS < len(detail) < MAX_REASON_CHARS + 200
    ((_, _, reason, _),) = dead
    assert len(reason) == MAX_REASON_CHARS


def test_an_announcement_kafka_refuses_stops_nothing_and_is_announced_later(tmp_path):
    from ledger_pipelines.kafka.producers import PublishError
    from ledger_pipelines.settings import KafkaSettings
    from ledger_pipelines.triggers.engine import TriggerEngine

    dead: list = []
    engine = _bare_engine(tmp_path, [{"name": "on_chain", "source": "core_banking",
                                      "action": {"type": "bridge_record"}}],
                          [{"name": "core_banking", "kind": "sql"}], dead)
    engine._executors = {"bridge_record:": type("Ok", (), {"run": lambda self, actions: [
        (a, "applied", {"reference": "E2E-P1"}, 1) for a in actions]})()}
    engine.process_entries([source_entry(ref="P1", corr="E2E-P1")])
    engine.process_entries([source_entry(ref="P2", corr="E2E-P2")])
    del engine.announce  # the real one, on a producer whose deliveries fail
    engine.kafka = KafkaSettings(bootstrap_servers="127.0.0.1:9")

    class Failing:
        def produce(self, *a, **kw):
            pass

        def confirm(self, timeout=None):
            raise PublishError([(refused, "Broker: Message size too large")])

    refused = engine.log.unannounced()[0]["action_id"]
    engine.producer = Failing()
    assert TriggerEngine.announce(engine) == 1  # the other one was delivered
    assert [r["action_id"] for r in engine.log.unannounced()] == [refused]  # still to be announced


def test_the_bridge_never_acts_on_a_record_the_event_log_refuses(tmp_path):
    """A message on core_banking's topic whose body says it is an eth_usdc entry (the event log dead-letters it:
    it does not belong on that topic) was posted by eth_usdc's rule."""
    from ledger_pipelines.model import encode_entry
    from ledger_pipelines.settings import KafkaSettings
    from ledger_pipelines.triggers.consumer import TriggerConsumer
    from ledger_pipelines.triggers.engine import BatchResult

    dead: list = []
    engine = _bare_engine(tmp_path, [{"name": "mirror_deposits", "source": "eth_usdc",
                                      "action": {"type": "bridge_record"}}],
                          [{"name": "core_banking", "kind": "sql"}, {"name": "eth_usdc", "kind": "evm"}], dead)
    engine.kafka = KafkaSettings(bootstrap_servers="127.0.0.1:9")
    seen = []
    engine.process_entries = lambda entries: (seen.extend(entries), (BatchResult(seen=len(entries)), set()))[1]
    forged = source_entry(ledger="eth_usdc", direction="credit", amount="5000000.00", ref="0xforged:0", corr="X-1")
    honest = source_entry(ledger="eth_usdc", ref="0xabc:1", corr="X-2")
    other_key = source_entry(ledger="eth_usdc", ref="0xabc:2", corr="X-3")

    class Msg:
        def __init__(self, topic, off, entry, key):
            self.args = topic, off, encode_entry(entry), key

        def error(self):
            return None

        def topic(self):
            return self.args[0]

        def partition(self):
            return 0

        def offset(self):
            return self.args[1]

        def value(self):
            return self.args[2]

        def key(self):
            return self.args[3]

    msgs = [Msg("ledger.core_banking.entries", 0, forged, forged.entry_id.encode()),
            Msg("ledger.eth_usdc.entries", 0, honest, honest.entry_id.encode()),
            Msg("ledger.eth_usdc.entries", 1, other_key, b"eth_usdc:someone-else")]
    consumer = TriggerConsumer.__new__(TriggerConsumer)
    consumer.engine, consumer.held, consumer.total, consumer.rejected, consumer.batch = engine, {}, BatchResult(), 0, 500
    consumer.consumer = type("C", (), {"consume": lambda self, num_messages, timeout: msgs,
                                       "commit": lambda self, offsets, asynchronous: None})()
    consumer._commit = lambda offsets: None
    assert consumer.step() == 3
    assert [e.entry_id for e in seen] == [honest.entry_id] and consumer.rejected == 2


def test_a_deposit_orphaned_and_mined_again_by_one_reorganisation_is_mirrored_once(tmp_path, monkeypatch):
    """The EVM reader publishes a reorganised block's orphaned entries together with the new chain's: within
    one batch the latest version decides, so a leg orphaned and mined again is applied once (before, it was
    posted and reversed, net 0, for a deposit final on chain). Versions read again change nothing; a leg
    compensated in one batch and seen again later is not applied again (it cannot be told from a re-read)."""
    from decimal import Decimal

    from sqlalchemy import create_engine, text

    from ledger_pipelines.connectors.sql.journal import SqlLedger
    from ledger_pipelines.connectors.sql.mapping import ColumnMapping

    mirror = f"sqlite:///{tmp_path / 'mirror.db'}"
    SqlLedger(mirror, ColumnMapping(), "mirror").create_journal()
    monkeypatch.setenv("LEDGER_T_MIRROR_URL", mirror)
    dead: list = []
    engine = _bare_engine(tmp_path, [
        {"name": "mirror_now", "source": "eth_usdc", "filter": {"direction": "credit"}, "on_orphaned": "compensate",
         "action": {"type": "sql_post", "ledger": "mirror", "debit_account": "GL-1200-USDC",
                    "credit_account": "GL-2300-CLIENTS"}}],
        [{"name": "eth_usdc", "kind": "evm"}, {"name": "mirror", "kind": "sql", "connection_env": "LEDGER_T_MIRROR_URL"}],
        dead)

    def version(status: str, block: str, ref: str):
        return source_entry(status=status, position={"block_number": 100, "block_hash": block}, ledger="eth_usdc",
                            account="0xabc", direction="credit", amount="250.00", ref=ref, corr=f"D-{ref}")

    def usdc(ref: str) -> tuple[int, str]:
        with create_engine(mirror).connect() as c:
            rows = c.execute(text("SELECT side, amount FROM journal_lines WHERE account = 'GL-1200-USDC' "
                                  "AND payment_ref = :r"), {"r": f"D-{ref}"}).all()
        net = sum((Decimal(amount) if side == "D" else -Decimal(amount) for side, amount in rows), Decimal(0))
        return len(rows), f"{net:.2f}"

    assert engine.process([version("pending", "0xb1", "1")]).applied == 1 and usdc("1") == (1, "250.00")
    # one reorganisation: the block's orphaned version and the new chain's version in one batch
    assert engine.process([version("orphaned", "0xb1", "1"), version("pending", "0xb2", "1")]).skipped == 1
    assert usdc("1") == (1, "250.00")
    assert engine.process([version("final", "0xb2", "1"), version("pending", "0xb1", "1")]).skipped == 1
    # pending, orphaned and final before anything was acted on: applied once
    assert engine.process([version("pending", "0xb1", "2"), version("orphaned", "0xb1", "2"),
                           version("final", "0xb2", "2")]).applied == 1 and usdc("2") == (1, "250.00")
    # orphaned in a batch of its own: compensated once, and a version read again afterwards changes nothing
    assert engine.process([version("orphaned", "0xb2", "2")]).applied == 1 and usdc("2") == (2, "0.00")
    assert engine.process([version("final", "0xb2", "2")]).skipped == 1 and usdc("2") == (2, "0.00") and dead == []


def test_an_entry_seen_again_while_its_compensation_is_unknown_has_it_settled_first(tmp_path):
    """The compensation's outcome unknown (pending: sent, no answer) when another version of the entry comes:
    the compensation is settled first and the entry held until it is known; with only the latest version's
    action, the compensation was never asked for again."""
    dead: list = []
    engine = _bare_engine(tmp_path, [
        {"name": "mirror_now", "source": "eth_usdc", "on_orphaned": "compensate",
         "action": {"type": "bridge_record", "reference": "entry_id"}}], [{"name": "eth_usdc", "kind": "evm"}], dead)
    calls = []

    class Flaky:
        answers = {"compensate": ["pending", "applied"]}

        def run(self, actions):
            out = []
            for a in actions:
                calls.append(a.kind)
                queue = self.answers.get(a.kind)
                st = queue.pop(0) if queue else "applied"
                out.append((a, st, {"reference": a.reference(), **({"reason": "no receipt"} if st == "pending" else {})},
                            1))
            return out

    engine._executors = {"bridge_record:": Flaky()}
    dep = dict(ledger="eth_usdc", account="0xabc", direction="credit", amount="250.00", ref="0xt:1", corr="D-1")
    pending, orphaned = (source_entry(status=s, position={"block_hash": "0xb1"}, **dep) for s in ("pending", "orphaned"))
    final = source_entry(status="final", position={"block_hash": "0xb2"}, **dep)
    engine.process_entries([pending])
    res, held = engine.process_entries([orphaned])
    assert res.pending == 1 and held == {pending.entry_id}
    res, held = engine.process_entries([final])  # mined again: the compensation is settled, the entry held
    assert calls[-1] == "compensate" and res.applied == 1 and held == {final.entry_id}
    res, held = engine.process_entries([final])
    assert res.skipped == 1 and held == set()
    assert calls == ["apply", "compensate", "compensate"] and dead == []


def test_an_orphaned_version_read_with_its_unsettled_apply_settles_the_apply_then_compensates(tmp_path):
    """The apply's outcome unknown (pending), the source read again from the held offset: its pending and
    orphaned versions in one batch. The apply is settled, then compensated, in that batch; with only the latest
    version's action the apply was never asked for again and the partition stayed held."""
    dead: list = []
    engine = _bare_engine(tmp_path, [
        {"name": "mirror_now", "source": "eth_usdc", "on_orphaned": "compensate",
         "action": {"type": "bridge_record", "reference": "entry_id"}}], [{"name": "eth_usdc", "kind": "evm"}], dead)
    calls = []
    answers = {"apply": ["pending"]}

    class Flaky:
        def run(self, actions):
            out = []
            for a in actions:
                calls.append(a.kind)
                st = answers[a.kind].pop(0) if answers.get(a.kind) else "applied"
                out.append((a, st, {"reference": a.reference(), **({"reason": "no receipt"} if st == "pending" else {})},
                            1))
            return out

    engine._executors = {"bridge_record:": Flaky()}
    dep = dict(ledger="eth_usdc", account="0xabc", direction="credit", amount="250.00", ref="0xt:1", corr="D-1")
    pending, orphaned = source_entry(status="pending", **dep), source_entry(status="orphaned", **dep)
    res, held = engine.process_entries([pending])
    assert res.pending == 1 and held == {pending.entry_id}
    res, held = engine.process_entries([pending, orphaned])
    assert calls == ["apply", "apply", "compensate"] and res.applied == 2 and held == set()
