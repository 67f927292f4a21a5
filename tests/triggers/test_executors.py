"""Executors: in-run retries, which causes are permanent (failed at once) and which transient (pending), on
chain (LedgerBridge on anvil) and in a SQL ledger."""

from __future__ import annotations

import json

import pytest

from ledger_pipelines.triggers.action_log import Action
from ledger_pipelines.triggers.rules import load_rules

from .helpers import source_entry


def test_transient_errors_are_retried_with_backoff_permanent_ones_are_not(monkeypatch):
    from ledger_pipelines.triggers import executors

    sleeps = []
    monkeypatch.setattr(executors.time, "sleep", sleeps.append)
    calls = {"n": 0}

    def flaky():
        calls["n"] += 1
        if calls["n"] < 3:
            raise ConnectionError("node restarting")
        return "ok"

    assert executors._retry(flaky, "a1") == ("ok", 3)
    assert sleeps == [0.1, 0.2]  # exponential backoff
    with pytest.raises(ConnectionError):
        executors._retry(lambda: (_ for _ in ()).throw(ConnectionError("down")), "a2", attempts=3)

    def permanent():
        calls["n"] += 1
        raise executors.PermanentError("bad rule")

    calls["n"] = 0
    with pytest.raises(executors.PermanentError):
        executors._retry(permanent, "a3")
    assert calls["n"] == 1


@pytest.mark.services
def test_a_reverted_record_is_failed_with_the_contracts_reason(tmp_path, kafka, chain, monkeypatch, stack_config):
    """A permanent cause: the bridge contract is owned by another account, so record() reverts 'only owner'."""
    from ledger_pipelines.config import _ledger
    from ledger_pipelines.contracts import deploy
    from ledger_pipelines.kafka.topics import ensure_topics
    from ledger_pipelines.triggers.engine import TriggerEngine
    from ledger_pipelines.warehouse import Warehouse

    bridge = deploy(chain, "LedgerBridge", sender=chain.eth.accounts[1])
    monkeypatch.setenv("LEDGER_BRIDGE_CONTRACT", bridge.address)
    monkeypatch.setenv("LEDGER_BRIDGE_RPC_URL", stack_config.anvil_url)
    lcs = [_ledger({"name": "core_banking", "kind": "sql"})]
    rules = load_rules({"triggers": [{"name": "on_chain", "source": "core_banking",
                                      "action": {"type": "bridge_record"}}]}, lcs)
    ensure_topics(kafka, ["core_banking"])
    wh = Warehouse(f"sqlite:///{tmp_path / 'w.db'}")
    res = TriggerEngine(rules, lcs, wh, kafka).process([source_entry(corr="E2E-R1")])
    assert (res.failed, res.pending, res.applied) == (1, 0, 0)
    ((status, detail),) = wh.rows("SELECT status, detail FROM bridge_actions")
    reason = json.loads(detail)["reason"]
    assert status == "failed" and reason.startswith("LedgerBridge.record reverted in tx 0x"), reason
    assert reason.endswith("execution reverted: only owner"), reason
    assert chain.eth.get_logs({"address": bridge.address, "fromBlock": 0}) == []


# -- pending only for connection-level failures -----------------------------------------------------

def _sql_post_action(tmp_path, monkeypatch):
    from ledger_pipelines.config import _ledger
    from ledger_pipelines.connectors.sql.mapping import ColumnMapping
    from ledger_pipelines.connectors.sql.journal import SqlLedger
    from ledger_pipelines.triggers.executors import SqlPoster

    url = f"sqlite:///{tmp_path / 'mirror.db'}"
    monkeypatch.setenv("LEDGER_MIRROR_URL", url)
    SqlLedger(url, ColumnMapping(), "mirror").create_journal()
    lcs = [_ledger({"name": "core_banking", "kind": "sql"}),
           _ledger({"name": "mirror", "kind": "sql", "connection_env": "LEDGER_MIRROR_URL"})]
    (rule,) = load_rules({"triggers": [
        {"name": "mirror_payments", "source": "core_banking",
         "action": {"type": "sql_post", "ledger": "mirror", "debit_account": "GL-A", "credit_account": "GL-B"}}]},
        lcs)
    return SqlPoster(lcs[1]), Action.of(rule, "apply", source_entry(ref="P1", corr="E2E-P1")), url


def test_a_sql_post_the_database_refuses_is_failed_only_a_lost_connection_is_pending(tmp_path, monkeypatch):
    from sqlalchemy.exc import DataError, InterfaceError, OperationalError, ProgrammingError

    from ledger_pipelines.triggers import executors

    monkeypatch.setattr(executors.time, "sleep", lambda s: None)
    poster, action, _ = _sql_post_action(tmp_path, monkeypatch)
    for exc, status in [(DataError("INSERT", {}, Exception("value too long for type character varying(8)")),
                         "failed"),
                        (ProgrammingError("INSERT", {}, Exception('relation "journal_lines" does not exist')),
                         "failed"),
                        (ValueError("an amount the driver cannot bind"), "failed"),
                        (OperationalError("INSERT", {}, Exception("connection refused")), "pending"),
                        (InterfaceError("INSERT", {}, Exception("connection already closed")), "pending")]:
        calls = []

        def post(a, exc=exc):
            calls.append(a)
            raise exc

        monkeypatch.setattr(poster, "_post", post)
        ((_, got, detail, _),) = poster.run([action])
        assert got == status, exc
        assert type(exc).__name__ in detail["reason"] and str(exc.orig if hasattr(exc, "orig") else exc).split()[0] \
            in detail["reason"]
        assert len(calls) == (1 if status == "failed" else executors.RETRY_ATTEMPTS)  # refused: not retried


def test_an_integrity_error_is_found_on_target_only_when_the_actions_posting_row_is_there(tmp_path, monkeypatch):
    from sqlalchemy import create_engine, text

    poster, action, url = _sql_post_action(tmp_path, monkeypatch)
    eng = create_engine(url)
    with eng.begin() as c:  # a target that refuses the journal lines: both lines share one transaction id
        c.execute(text("CREATE UNIQUE INDEX ux_journal_txn ON journal_lines (txn_id)"))
    ((_, status, detail, _),) = poster.run([action])
    assert status == "failed" and "IntegrityError" in detail["reason"] and action.action_id in detail["reason"]
    with eng.connect() as c:
        assert c.execute(text("SELECT count(*) FROM bridge_postings")).scalar() == 0
        assert c.execute(text("SELECT count(*) FROM journal_lines")).scalar() == 0
    eng.dispose()


@pytest.mark.services
def test_a_reference_recorded_but_without_its_event_in_the_range_read_is_failed_not_pending(
        tmp_path, chain, monkeypatch, stack_config):
    from ledger_pipelines.triggers import executors
    from ledger_pipelines.config import _ledger
    from ledger_pipelines.contracts import deploy
    from ledger_pipelines.triggers.executors import BridgeRecorder

    monkeypatch.setattr(executors.time, "sleep", lambda s: None)
    bridge = deploy(chain, "LedgerBridge")
    monkeypatch.setenv("LEDGER_BRIDGE_RPC_URL", stack_config.anvil_url)
    monkeypatch.setenv("LEDGER_BRIDGE_CONTRACT", bridge.address)
    monkeypatch.delenv("LEDGER_BRIDGE_FROM_BLOCK", raising=False)
    first = BridgeRecorder()
    first.signer.wait(first.signer.send(first.contract.functions.record("E2E-NOEV", "EUR", 1000, 2, "core:1")))
    monkeypatch.setenv("LEDGER_BRIDGE_FROM_BLOCK", str(chain.eth.block_number + 1))  # after the recording
    recorder = BridgeRecorder()
    (rule,) = load_rules({"triggers": [{"name": "payments_on_chain", "source": "core_banking",
                                        "action": {"type": "bridge_record"}}]},
                         [_ledger({"name": "core_banking", "kind": "sql"})])
    ((_, status, detail, _),) = recorder.run([Action.of(rule, "apply", source_entry(corr="E2E-NOEV"))])
    assert status == "failed"
    assert "no PaymentRecorded event" in detail["reason"] and "LEDGER_BRIDGE_FROM_BLOCK" in detail["reason"]


def test_a_database_error_is_pending_when_a_later_attempt_can_pass_and_failed_when_none_can(tmp_path, monkeypatch):
    """By SQLSTATE where the driver gives one: a replica in a failover (read-only transaction, 25006), a server
    shutting down (57P01) or a deadlock (40P01) are pending, a constraint (23505) is not; SQLite's missing table
    (an OperationalError) is failed at once instead of retried run after run."""
    from sqlalchemy.exc import IntegrityError, InternalError, OperationalError

    from ledger_pipelines.triggers import executors
    from ledger_pipelines.triggers.executors import sql_transient

    class Orig(Exception):
        def __init__(self, message, sqlstate):
            super().__init__(message)
            self.sqlstate = sqlstate

    def error(kind, message, state=None):
        return kind("INSERT", {}, Orig(message, state) if state else Exception(message))

    assert sql_transient(error(InternalError, "cannot execute INSERT in a read-only transaction", "25006"))
    assert sql_transient(error(OperationalError, "terminating connection due to administrator command", "57P01"))
    assert sql_transient(error(InternalError, "deadlock detected", "40P01"))
    assert not sql_transient(error(IntegrityError, "duplicate key value violates unique constraint", "23505"))
    assert sql_transient(error(OperationalError, "database is locked"))
    assert sql_transient(error(OperationalError, "could not read block: I/O error", "58030"))  # a lost connection kind
    assert sql_transient(error(OperationalError, "password authentication failed", "28P01"))  # credentials rotated

    class Psycopg2Orig(Exception):
        pgcode = "25006"

    assert sql_transient(InternalError("INSERT", {}, Psycopg2Orig("read-only transaction")))
    assert not sql_transient(error(OperationalError, "no such table: journal_lines"))

    monkeypatch.setattr(executors.time, "sleep", lambda s: None)
    poster, action, url = _sql_post_action(tmp_path, monkeypatch)
    from sqlalchemy import create_engine, text

    eng = create_engine(url)
    with eng.begin() as c:
        c.execute(text("DROP TABLE journal_lines"))
    eng.dispose()
    ((_, status, detail, tries),) = poster.run([action])
    assert status == "failed" and tries == 1 and "no such table: journal_lines" in detail["reason"]


def test_a_reference_too_long_for_the_gas_limit_is_failed_without_a_call():
    from ledger_pipelines.config import _ledger
    from ledger_pipelines.triggers.executors import MAX_REFERENCE_BYTES, BridgeRecorder

    (rule,) = load_rules({"triggers": [{"name": "on_chain", "source": "core_banking",
                                        "action": {"type": "bridge_record"}}]}, [_ledger({"name": "core_banking",
                                                                                          "kind": "sql"})])
    recorder = BridgeRecorder.__new__(BridgeRecorder)  # no node: nothing may be asked of one
    recorder._down = None
    long_ref = "R" * (MAX_REFERENCE_BYTES + 1)
    ((_, status, detail, tries),) = recorder.run([Action.of(rule, "apply", source_entry(corr=long_ref))])
    assert status == "failed" and tries == 0
    assert detail["reason"].startswith(f"reference of {MAX_REFERENCE_BYTES + 1} bytes (at most {MAX_REFERENCE_BYTES})")
    assert len(json.dumps(detail)) < 1000
    # the bound is the source's reference: the longest one's compensation (13 bytes more) is sent, not failed
    recorder._down = (float("inf"), "the node is down")  # the first step of a send: the action is left pending
    at_bound = source_entry(corr="R" * MAX_REFERENCE_BYTES)
    for kind in ("apply", "compensate"):
        ((_, status, _, _),) = recorder.run([Action.of(rule, kind, at_bound)])
        assert status == "pending", kind


class _Producer:
    """A MessageProducer whose deliveries fail as given ((topic, key) -> (reason, KafkaError code))."""

    def __init__(self, fail):
        self.fail, self.keys = fail, []

    def produce(self, topic, key, value, headers=None):
        self.keys.append((topic, key.decode()))

    def confirm(self, timeout=None):
        from ledger_pipelines.kafka.producers import PublishError

        failed = [(t, k, *self.fail[(t, k)]) for t, k in self.keys if (t, k) in self.fail]
        self.keys = []
        if failed:
            raise PublishError([(k, r) for _, k, r, _ in failed], [(c, t) for t, _, _, c in failed])
        return 0


def test_a_publish_kafka_refuses_for_good_is_failed_and_one_it_could_not_deliver_yet_is_pending():
    from confluent_kafka import KafkaError

    from ledger_pipelines.config import _ledger
    from ledger_pipelines.triggers.executors import TopicPublisher

    rule, audit = load_rules({"triggers": [
        {"name": "forward", "source": "core_banking", "action": {"type": "publish", "topic": "alerts"}},
        {"name": "to_audit", "source": "core_banking", "action": {"type": "publish", "topic": "audit"}}]},
        [_ledger({"name": "core_banking", "kind": "sql"})])
    big, later, fine = (source_entry(ref=r, corr=f"E2E-{r}") for r in ("BIG", "LATER", "FINE"))
    publisher = TopicPublisher.__new__(TopicPublisher)
    publisher.producer = _Producer({
        ("alerts", big.entry_id): ("Broker: Message size too large", KafkaError.MSG_SIZE_TOO_LARGE),
        ("alerts", later.entry_id): ("Local: Message timed out", KafkaError._MSG_TIMED_OUT),
        ("audit", fine.entry_id): ("Broker: Topic authorization failed", KafkaError.TOPIC_AUTHORIZATION_FAILED)})
    outcomes = {(a.rule.name, a.entry.entry_id): (st, d) for a, st, d, _ in publisher.run(
        [Action.of(rule, "apply", e) for e in (big, later, fine)] + [Action.of(audit, "apply", fine)])}
    assert outcomes[("forward", big.entry_id)] == (
        "failed", {"topic": "alerts", "reason": "publishing to alerts: Broker: Message size too large"})
    assert outcomes[("forward", later.entry_id)][0] == "pending"
    # one entry to two topics: each delivery its own outcome
    assert outcomes[("forward", fine.entry_id)] == ("applied", {"topic": "alerts"})
    assert outcomes[("to_audit", fine.entry_id)][0] == "failed"
