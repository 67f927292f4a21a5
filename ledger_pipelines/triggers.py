"""Cross-ledger triggers: entries of one ledger cause records in another, each exactly once.

Rules (``triggers:`` in the ledger configuration)::

    triggers:
      - name: payments_on_chain            # [a-z0-9_]+, part of every action id: never rename a live rule
        source: core_banking               # a configured ledger; its topic is consumed
        filter:                            # every given condition must hold
          status: [booked, final]          # default: [booked, final]
          direction: debit
          account: [GL-1100-CUSTOMER]
          asset: [EUR]
          min_amount: "0.01"
          max_amount: "1000000"
          attributes: {bank_code: PMNT}    # attribute equality
          has_correlation: true
        action:
          type: bridge_record              # LedgerBridge.record(reference, asset, amount, scale, entry_id)
          reference: correlation_id        # or entry_id
        on_orphaned: hold                  # hold: act on final/booked entries only (pending waits)
                                           # compensate: act at once; an orphaned version is compensated

Action types: ``bridge_record`` (on chain through ``LedgerBridge``; RPC ``LEDGER_BRIDGE_RPC_URL``, key
``LEDGER_BRIDGE_KEY``, contract ``LEDGER_BRIDGE_CONTRACT`` or deployed once per chain), ``sql_post`` (a
balanced two-line journal entry in a configured SQL ledger: ``ledger``, ``debit_account``,
``credit_account``), ``publish`` (the entry to another topic: ``topic``).

Exactly-once effect. Every action has a deterministic id (rule, source ``entry_id``, kind), and the
warehouse keeps an action log. Before acting, the target is asked whether the action is already
there: the bridge contract's ``PaymentRecorded`` event for the reference names the source entry; an SQL
posting is a row of ``bridge_postings`` (primary key = action id) written in the same transaction as
its journal lines. So a crash between acting and logging is recovered by looking, never by acting
twice. Kafka offsets are committed only after a batch's actions are logged (at-least-once delivery,
idempotent effect). Transient errors are retried with backoff; permanent ones (a reverted call, a
duplicate reference from another entry, a bad rule) are logged as failed and sent to the DLQ with the
reason. Requests and outcomes are produced to ``ledger.bridge.actions`` (key: action id).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any, Callable

from sqlalchemy import text

from .config import ConfigError, LedgerConfig, ledger_by_name
from .model import CanonicalEntry, EntryError, decode_entry, encode_entry
from .warehouse import Warehouse

log = logging.getLogger(__name__)

ACTION_TYPES = ("bridge_record", "sql_post", "publish")
_RULE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}\Z")
_TOPIC = re.compile(r"^[A-Za-z0-9._\-]{1,200}\Z")


class PermanentError(RuntimeError):
    """The action cannot succeed by retrying (it goes to the DLQ)."""


# -- rules -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TriggerRule:
    name: str
    source: str
    action: dict[str, Any]
    statuses: tuple[str, ...] = ("booked", "final")
    directions: tuple[str, ...] = ()
    accounts: tuple[str, ...] = ()
    assets: tuple[str, ...] = ()
    min_amount: Decimal | None = None
    max_amount: Decimal | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    has_correlation: bool = False
    on_orphaned: str = "hold"

    @property
    def kind(self) -> str:
        return self.action["type"]

    def matches(self, e: CanonicalEntry) -> bool:
        if self.directions and e.direction not in self.directions:
            return False
        if self.accounts and e.account not in self.accounts:
            return False
        if self.assets and e.asset not in self.assets:
            return False
        if self.has_correlation and not e.correlation_id:
            return False
        if self.min_amount is not None or self.max_amount is not None:
            amount = Decimal(e.amount)
            if self.min_amount is not None and amount < self.min_amount:
                return False
            if self.max_amount is not None and amount > self.max_amount:
                return False
        return all(e.attributes.get(k) == v for k, v in self.attributes.items())

    def decide(self, e: CanonicalEntry) -> str | None:
        """``apply``, ``compensate`` (an orphaned version under ``compensate``), or None (not now)."""
        if e.ledger != self.source or not self.matches(e):
            return None
        if e.status == "orphaned":
            return "compensate"  # acted only when an apply is logged (see TriggerEngine)
        if e.status == "pending":
            return "apply" if self.on_orphaned == "compensate" else None  # hold: wait until final
        return "apply" if e.status in self.statuses else None


def _as_tuple(v: Any) -> tuple:
    if v is None:
        return ()
    return tuple(v) if isinstance(v, (list, tuple)) else (v,)


def rules_from_config(path=None) -> list[TriggerRule]:
    """``triggers:`` of the ledger configuration file (``LEDGER_CONFIG``)."""
    from .config import _document, load_config

    return load_rules(_document(path), load_config(path))


def load_rules(doc: dict[str, Any], ledgers: list[LedgerConfig]) -> list[TriggerRule]:
    rules, names = [], set()
    for d in doc.get("triggers", []) or []:
        name = d.get("name")
        if not isinstance(name, str) or not _RULE_NAME.match(name) or name in names:
            raise ConfigError(f"trigger name {name!r} must be unique and match {_RULE_NAME.pattern}")
        names.add(name)
        ledger_by_name(ledgers, d.get("source"))
        action = dict(d.get("action") or {})
        if action.get("type") not in ACTION_TYPES:
            raise ConfigError(f"trigger {name}: action type {action.get('type')!r} is not one of {ACTION_TYPES}")
        if action["type"] == "sql_post":
            target = ledger_by_name(ledgers, action.get("ledger"))
            if target.kind != "sql":
                raise ConfigError(f"trigger {name}: sql_post needs a sql ledger, {target.name} is {target.kind}")
            for k in ("debit_account", "credit_account"):
                if not isinstance(action.get(k), str) or not action[k]:
                    raise ConfigError(f"trigger {name}: sql_post needs {k}")
        if action["type"] == "publish" and not _TOPIC.match(str(action.get("topic", ""))):
            raise ConfigError(f"trigger {name}: publish needs a valid topic, got {action.get('topic')!r}")
        if action["type"] == "bridge_record" and action.get("reference", "correlation_id") not in (
                "correlation_id", "entry_id"):
            raise ConfigError(f"trigger {name}: reference must be correlation_id or entry_id")
        f = d.get("filter") or {}
        unknown = set(f) - {"status", "direction", "account", "asset", "min_amount", "max_amount", "attributes",
                            "has_correlation"}
        if unknown:
            raise ConfigError(f"trigger {name}: unknown filter keys {sorted(unknown)}")
        on_orphaned = d.get("on_orphaned", "hold")
        if on_orphaned not in ("hold", "compensate"):
            raise ConfigError(f"trigger {name}: on_orphaned must be hold or compensate")
        rules.append(TriggerRule(
            name=name, source=d["source"], action=action, statuses=_as_tuple(f.get("status")) or ("booked", "final"),
            directions=_as_tuple(f.get("direction")), accounts=_as_tuple(f.get("account")),
            assets=_as_tuple(f.get("asset")),
            min_amount=Decimal(str(f["min_amount"])) if f.get("min_amount") is not None else None,
            max_amount=Decimal(str(f["max_amount"])) if f.get("max_amount") is not None else None,
            attributes=dict(f.get("attributes") or {}), has_correlation=bool(f.get("has_correlation", False)),
            on_orphaned=on_orphaned,
        ))
    return rules


# -- actions and their log -------------------------------------------------------------------------
@dataclass(frozen=True)
class Action:
    action_id: str
    rule: TriggerRule
    kind: str  # apply | compensate
    entry: CanonicalEntry

    @staticmethod
    def of(rule: TriggerRule, kind: str, entry: CanonicalEntry) -> "Action":
        digest = hashlib.sha256(f"{rule.name}|{entry.entry_id}|{kind}".encode()).hexdigest()[:32]
        return Action(f"{rule.name}:{digest}", rule, kind, entry)

    def reference(self) -> str:
        if self.rule.action.get("reference", "correlation_id") == "correlation_id" and self.entry.correlation_id:
            ref = self.entry.correlation_id
        else:
            ref = self.entry.entry_id
        return ref if self.kind == "apply" else f"{ref}:compensation"


ACTIONS_DDL = [
    "CREATE TABLE IF NOT EXISTS bridge_actions (action_id TEXT PRIMARY KEY, rule TEXT NOT NULL, kind TEXT NOT NULL, "
    "source_ledger TEXT NOT NULL, source_entry_id TEXT NOT NULL, action_type TEXT NOT NULL, status TEXT NOT NULL, "
    "target_ref TEXT, detail TEXT NOT NULL, attempts INTEGER NOT NULL, source_booked_at TEXT, "
    "logged_at TEXT NOT NULL, announced INTEGER NOT NULL DEFAULT 0)",
    "CREATE INDEX IF NOT EXISTS ix_bridge_actions_entry ON bridge_actions (source_entry_id)",
]
TERMINAL = ("applied", "failed")


class ActionLog:
    def __init__(self, wh: Warehouse):
        self.wh = wh
        with wh.engine.begin() as c:
            for ddl in ACTIONS_DDL:
                c.execute(text(ddl))

    def status(self, ids: list[str]) -> dict[str, str]:
        out: dict[str, str] = {}
        with self.wh.engine.connect() as c:
            for i in range(0, len(ids), 500):
                chunk = ids[i:i + 500]
                marks = ", ".join(f":a{n}" for n in range(len(chunk)))
                for aid, status in c.execute(text(f"SELECT action_id, status FROM bridge_actions WHERE action_id IN "
                                                  f"({marks})"), {f"a{n}": a for n, a in enumerate(chunk)}):
                    out[aid] = status
        return out

    def record(self, outcomes: list[dict[str, Any]]) -> None:
        if not outcomes:
            return
        now = datetime.now(timezone.utc).isoformat()
        with self.wh.engine.begin() as c:
            for o in outcomes:
                c.execute(text("DELETE FROM bridge_actions WHERE action_id = :a"), {"a": o["action_id"]})
                c.execute(text(
                    "INSERT INTO bridge_actions (action_id, rule, kind, source_ledger, source_entry_id, action_type, "
                    "status, target_ref, detail, attempts, source_booked_at, logged_at, announced) VALUES "
                    "(:action_id, :rule, :kind, :source_ledger, :source_entry_id, :action_type, :status, :target_ref, "
                    ":detail, :attempts, :source_booked_at, :logged_at, 0)"),
                    {**{k: o[k] for k in ("action_id", "rule", "kind", "source_ledger", "source_entry_id",
                                          "action_type", "status", "target_ref", "attempts", "source_booked_at")},
                     "detail": json.dumps(o["detail"], sort_keys=True), "logged_at": now})

    def unannounced(self, limit: int = 5000) -> list[dict[str, Any]]:
        with self.wh.engine.connect() as c:
            rows = c.execute(text("SELECT * FROM bridge_actions WHERE announced = 0 ORDER BY logged_at LIMIT :n"),
                             {"n": limit}).mappings().all()
        return [dict(r) for r in rows]

    def mark_announced(self, ids: list[str]) -> None:
        with self.wh.engine.begin() as c:
            for aid in ids:
                c.execute(text("UPDATE bridge_actions SET announced = 1 WHERE action_id = :a"), {"a": aid})

    def counts(self) -> dict[str, int]:
        with self.wh.engine.connect() as c:
            return {f"{t}:{s}": n for t, s, n in c.execute(text(
                "SELECT action_type, status, count(*) FROM bridge_actions GROUP BY action_type, status"))}


# -- executors -------------------------------------------------------------------------------------
def _retry(fn: Callable[[], Any], what: str, attempts: int = 6) -> tuple[Any, int]:
    """Run ``fn``; transient errors are retried with exponential backoff. Returns (result, attempts)."""
    for n in range(1, attempts + 1):
        try:
            return fn(), n
        except PermanentError:
            raise
        except Exception as exc:  # connection refused, timeouts, node hiccups
            if n == attempts:
                raise
            delay = min(5.0, 0.1 * 2 ** (n - 1))
            log.warning("%s: %s; retrying in %.1fs (%d/%d)", what, exc, delay, n, attempts)
            time.sleep(delay)
    raise AssertionError("unreachable")


class BridgeRecorder:
    """``bridge_record``: LedgerBridge.record, several transactions in flight per batch."""

    def __init__(self):
        from .chain import Signer, contract, contract_address
        from .stack import StackConfig

        url = os.environ.get("LEDGER_BRIDGE_RPC_URL") or StackConfig.from_env().anvil_url
        self.signer = Signer.from_env(url, "LEDGER_BRIDGE_KEY")
        self.address = contract_address(self.signer, "LedgerBridge")
        self.contract = contract(self.signer, "LedgerBridge", self.address)

    def _recorded_by(self, reference: str) -> str | None:
        """The source entry id the reference was recorded for, or None when it is not recorded."""
        w3 = self.signer.w3
        key = w3.keccak(text=reference)
        if not self.contract.functions.recorded(key).call():
            return None
        logs = w3.eth.get_logs({"address": self.address, "fromBlock": 0, "toBlock": "latest",
                                "topics": [None, "0x" + key.hex().removeprefix("0x")]})
        for lg in logs:
            ev = self.contract.events.PaymentRecorded().process_log(lg)
            return ev["args"]["sourceEntryId"]
        return "<unknown>"

    def run(self, actions: list[Action]) -> list[tuple[Action, str, dict[str, Any], int]]:
        from .model import amount_scale

        out, pending = [], []
        for a in actions:
            ref = a.reference()
            owner, tries = _retry(lambda: self._recorded_by(ref), f"{a.action_id}: check")
            if owner == a.entry.entry_id:
                out.append((a, "applied", {"found_on_target": True, "reference": ref}, tries))
                continue
            if owner is not None:
                out.append((a, "failed", {"reason": f"reference {ref!r} already recorded on chain for entry "
                                                    f"{owner}", "reference": ref}, tries))
                continue
            value, scale = amount_scale(a.entry.amount)
            if scale > 255:
                out.append((a, "failed", {"reason": f"amount {a.entry.amount} has more than 255 decimals"}, tries))
                continue
            call = self.contract.functions.record(ref, a.entry.asset, value, scale, a.entry.entry_id)
            try:
                tx, t2 = _retry(lambda: self.signer.send(call, gas=300_000), f"{a.action_id}: send")
            except Exception as exc:
                out.append((a, "failed", {"reason": f"send failed: {exc}", "reference": ref}, tries))
                continue
            pending.append((a, ref, tx, tries + t2))
        for a, ref, tx, tries in pending:
            receipt, t3 = _retry(lambda: self.signer.wait(tx), f"{a.action_id}: receipt")
            detail = {"reference": ref, "tx_hash": tx, "block_number": receipt["blockNumber"], "contract": self.address}
            if receipt["status"] == 1:
                out.append((a, "applied", detail, tries + t3))
            elif self._recorded_by(ref) == a.entry.entry_id:  # raced with an earlier attempt of ours
                out.append((a, "applied", {**detail, "found_on_target": True}, tries + t3))
            else:
                out.append((a, "failed", {**detail, "reason": "LedgerBridge.record reverted"}, tries + t3))
        return out


POSTINGS_DDL = ("CREATE TABLE IF NOT EXISTS bridge_postings (action_id VARCHAR(128) PRIMARY KEY, "
                "txn_id VARCHAR(64) NOT NULL, source_entry_id TEXT NOT NULL, posted_at TEXT NOT NULL)")


class SqlPoster:
    """``sql_post``: two journal lines and a ``bridge_postings`` row, in one transaction of the target."""

    def __init__(self, lc: LedgerConfig):
        from sqlalchemy import create_engine

        from .publish import source_url

        self.lc = lc
        self.mapping = lc.mapping
        self.engine = create_engine(source_url(lc), future=True)
        with self.engine.begin() as c:
            c.execute(text(POSTINGS_DDL))

    def _posted(self, c, action_id: str) -> str | None:
        row = c.execute(text("SELECT txn_id FROM bridge_postings WHERE action_id = :a"), {"a": action_id}).first()
        return row[0] if row else None

    def run(self, actions: list[Action]) -> list[tuple[Action, str, dict[str, Any], int]]:
        out = []
        for a in actions:
            try:
                result, tries = _retry(lambda: self._post(a), f"{a.action_id}: post")
                out.append((a, "applied", result, tries))
            except PermanentError as exc:
                out.append((a, "failed", {"reason": str(exc)}, 1))
        return out

    def _post(self, a: Action) -> dict[str, Any]:
        from sqlalchemy.exc import IntegrityError

        m, spec = self.mapping, a.rule.action
        debit, credit = spec["debit_account"], spec["credit_account"]
        if a.kind == "compensate":
            debit, credit = credit, debit
        txn = "BR-" + hashlib.sha256(a.action_id.encode()).hexdigest()[:24]
        cols = {"txn": m.transaction_id, "at": m.posted_at, "acct": m.account, "cp": m.counterparty,
                "ccy": m.currency, "amt": m.amount, "side": m.side, "ref": m.reference}
        if any(v is None for k, v in cols.items() if k not in ("cp", "ref")):
            raise PermanentError(f"sql_post into {self.lc.name}: the mapping lacks a column "
                                 f"({[k for k, v in cols.items() if v is None]})")
        used = {k: v for k, v in cols.items() if v is not None}
        sql = (f"INSERT INTO {m.qualified_table} ({', '.join(chr(34) + v + chr(34) for v in used.values())}) "
               f"VALUES ({', '.join(':' + k for k in used)})")
        ref = a.entry.correlation_id or a.entry.entry_id
        # posted now: a closed (reconciled, anchored) day of the target ledger is never changed afterwards
        now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        lines = [{"txn": txn, "at": now, "acct": acct, "cp": cp, "ccy": a.entry.asset,
                  "amt": a.entry.amount, "side": side, "ref": ref}
                 for acct, cp, side in ((debit, credit, m.debit_values[0]), (credit, debit, m.credit_values[0]))]
        try:
            with self.engine.begin() as c:
                if self._posted(c, a.action_id):
                    return {"txn_id": txn, "found_on_target": True}
                c.execute(text("INSERT INTO bridge_postings (action_id, txn_id, source_entry_id, posted_at) VALUES "
                               "(:a, :t, :e, :p)"), {"a": a.action_id, "t": txn, "e": a.entry.entry_id,
                                                     "p": datetime.now(timezone.utc).isoformat()})
                c.execute(text(sql), lines)
        except IntegrityError:  # a concurrent run posted it between our check and insert
            return {"txn_id": txn, "found_on_target": True}
        return {"txn_id": txn, "lines": 2, "debit_account": debit, "credit_account": credit}


class TopicPublisher:
    """``publish``: the entry (as is) to another topic, key = entry id; consumers dedupe by entry id."""

    def __init__(self, producer):
        self.producer = producer

    def run(self, actions: list[Action]) -> list[tuple[Action, str, dict[str, Any], int]]:
        out = []
        for a in actions:
            topic = a.rule.action["topic"]
            self.producer.produce(topic, key=a.entry.entry_id.encode(), value=encode_entry(a.entry),
                                  headers=[("action_id", a.action_id.encode())])
            out.append((a, "applied", {"topic": topic}, 1))
        self.producer.confirm(60)
        return out


# -- the engine ------------------------------------------------------------------------------------
@dataclass
class BatchResult:
    seen: int = 0
    applied: int = 0
    found_on_target: int = 0
    failed: int = 0
    held: int = 0
    skipped: int = 0

    def add(self, other: "BatchResult") -> None:
        for k in self.__dataclass_fields__:
            setattr(self, k, getattr(self, k) + getattr(other, k))


class TriggerEngine:
    def __init__(self, rules: list[TriggerRule], ledgers: list[LedgerConfig], wh: Warehouse, kafka,
                 crash_after_act: int | None = None):
        from .kafka.producers import DeadLetterProducer, MessageProducer
        from .kafka.topics import ensure_topics

        self.rules = rules
        self.ledgers = ledgers
        self.log = ActionLog(wh)
        self.kafka = kafka
        # the actions topic, the DLQ and the targets of publish rules exist before anything is produced
        ensure_topics(kafka, [], extra=sorted({r.action["topic"] for r in rules if r.kind == "publish"}))
        self.producer = MessageProducer(kafka, client_id="ledger-pipelines.bridge", **{"linger.ms": 2})
        self.dlq = DeadLetterProducer(kafka, "bridge")
        self._executors: dict[str, Any] = {}
        # fault injection for the crash tests: exit hard after acting, before the action log is written
        self.crash_after_act = crash_after_act

    def executor(self, rule: TriggerRule):
        key = rule.kind + ":" + rule.action.get("ledger", "")
        if key not in self._executors:
            if rule.kind == "bridge_record":
                self._executors[key] = BridgeRecorder()
            elif rule.kind == "sql_post":
                self._executors[key] = SqlPoster(ledger_by_name(self.ledgers, rule.action["ledger"]))
            else:
                self._executors[key] = TopicPublisher(self.producer)
        return self._executors[key]

    def process(self, entries: list[CanonicalEntry]) -> BatchResult:
        res = BatchResult(seen=len(entries))
        wanted: list[Action] = []
        for e in entries:
            for rule in self.rules:
                kind = rule.decide(e)
                if kind is None:
                    if e.ledger == rule.source and e.status == "pending" and rule.matches(e):
                        res.held += 1
                    continue
                wanted.append(Action.of(rule, kind, e))
        # one action per id (a batch may carry an entry's pending and final versions)
        unique: dict[str, Action] = {}
        for a in wanted:
            unique.setdefault(a.action_id, a)
        status = self.log.status(list(unique))
        applies = {aid for aid, s in status.items() if s == "applied"}
        todo = []
        for aid, a in unique.items():
            if status.get(aid) in TERMINAL:
                res.skipped += 1
                continue
            if a.kind == "compensate":
                apply_id = Action.of(a.rule, "apply", a.entry).action_id
                if apply_id not in applies and self.log.status([apply_id]).get(apply_id) != "applied":
                    res.skipped += 1  # nothing was done for it: nothing to compensate
                    continue
                if a.rule.on_orphaned == "hold":  # final entry orphaned by a reorg deeper than the confirmations
                    self._dead_letter(a, "source entry orphaned after its action was applied; rule holds, "
                                         "compensate by hand")
                    self.log.record([self._outcome(a, "failed", {"reason": "orphaned after apply (hold rule)"}, 1)])
                    res.failed += 1
                    continue
            todo.append(a)
        by_exec: dict[int, tuple[Any, list[Action]]] = {}
        for a in todo:
            ex = self.executor(a.rule)
            by_exec.setdefault(id(ex), (ex, []))[1].append(a)
        for ex, actions in by_exec.values():
            self._announce_requested(actions)
            outcomes = ex.run(actions)
            if self.crash_after_act is not None:
                self.crash_after_act -= len(outcomes)
                if self.crash_after_act <= 0:
                    os._exit(137)  # acted, not logged: recovery must find the effects on the target
            rows = []
            for a, st, detail, tries in outcomes:
                rows.append(self._outcome(a, st, detail, tries))
                if st == "failed":
                    res.failed += 1
                    self._dead_letter(a, detail.get("reason", "failed"))
                elif detail.get("found_on_target"):
                    res.found_on_target += 1
                else:
                    res.applied += 1
            self.log.record(rows)
        self.announce()
        return res

    def _outcome(self, a: Action, status: str, detail: dict[str, Any], tries: int) -> dict[str, Any]:
        return {"action_id": a.action_id, "rule": a.rule.name, "kind": a.kind, "source_ledger": a.entry.ledger,
                "source_entry_id": a.entry.entry_id, "action_type": a.rule.kind, "status": status,
                "target_ref": detail.get("reference") or detail.get("txn_id") or detail.get("topic"),
                "detail": detail, "attempts": tries, "source_booked_at": a.entry.booked_at}

    def _dead_letter(self, a: Action, reason: str) -> None:
        self.dlq.send(a.entry.ledger, f"trigger:{a.rule.name}:{a.entry.entry_id}", reason, encode_entry(a.entry))
        self.dlq.confirm()

    def _announce_requested(self, actions: list[Action]) -> None:
        from .kafka.topics import actions_topic

        topic = actions_topic(self.kafka)
        for a in actions:
            self.producer.produce(topic, key=a.action_id.encode(), value=json.dumps(
                {"action_id": a.action_id, "event": "requested", "rule": a.rule.name, "kind": a.kind,
                 "action_type": a.rule.kind, "source_entry_id": a.entry.entry_id}).encode())

    def announce(self) -> int:
        """Outcomes logged but not yet on ``ledger.bridge.actions`` (also after a crash) are produced now."""
        from .kafka.topics import actions_topic

        rows = self.log.unannounced()
        if not rows:
            return 0
        topic = actions_topic(self.kafka)
        for r in rows:
            self.producer.produce(topic, key=r["action_id"].encode(), value=json.dumps(
                {"event": "outcome", **{k: r[k] for k in ("action_id", "rule", "kind", "source_entry_id",
                                                          "action_type", "status", "target_ref", "attempts")},
                 "detail": json.loads(r["detail"])}).encode())
        self.producer.confirm(60)
        self.log.mark_announced([r["action_id"] for r in rows])
        return len(rows)


# -- the consumer ----------------------------------------------------------------------------------
class TriggerConsumer:
    """Consumes the source ledgers' topics (consumer group, offsets committed after each logged batch)."""

    def __init__(self, engine: TriggerEngine, group: str = "ledger-pipelines-bridge", batch: int = 500,
                 instance: str | None = "0"):
        from confluent_kafka import Consumer

        from .kafka.topics import entries_topic

        self.engine = engine
        kafka = engine.kafka
        self.topics = sorted({entries_topic(kafka, r.source) for r in engine.rules})
        conf = {**kafka.client_config(), "group.id": group, "enable.auto.commit": False,
                "auto.offset.reset": "earliest", "isolation.level": "read_committed", "enable.partition.eof": False,
                "session.timeout.ms": 10_000}
        if instance is not None:
            # static membership: a restarted bridge (same instance id) takes its partitions back at once
            # instead of waiting for the dead member's session to expire
            conf["group.instance.id"] = f"{group}.{instance}"
        self.consumer = Consumer(conf)
        self.consumer.subscribe(self.topics)
        self.batch = batch
        self.total = BatchResult()
        self.rejected = 0

    def step(self, timeout: float = 0.2) -> int:
        msgs = self.consumer.consume(num_messages=self.batch, timeout=timeout)
        if not msgs:
            return 0
        entries = []
        for m in msgs:
            if m.error():
                raise RuntimeError(f"Kafka: {m.error()}")
            if m.value() is None:
                continue
            try:
                entries.append(decode_entry(m.value()))
            except EntryError as exc:
                # the event log's ingestion dead-letters it with the same reason; the bridge only skips it
                self.rejected += 1
                log.warning("%s[%d]@%d: not a canonical entry (%s); skipped", m.topic(), m.partition(), m.offset(),
                            exc)
        res = self.engine.process(entries)
        self.total.add(res)
        self.consumer.commit(asynchronous=False)
        if res.applied or res.failed or res.found_on_target:
            log.info("bridge: %d entries, %d applied, %d found already applied, %d failed, %d held",
                     res.seen, res.applied, res.found_on_target, res.failed, res.held)
        return len(msgs)

    def caught_up(self) -> bool:
        """Every assigned partition's position is at its read-committed end offset."""
        from .kafka.topics import end_offsets

        assignment = self.consumer.assignment()
        if not assignment:
            return False
        counts: dict[str, int] = {}
        for tp in assignment:
            counts[tp.topic] = max(counts.get(tp.topic, 0), tp.partition + 1)
        ends = end_offsets(self.engine.kafka, counts)
        for tp in self.consumer.position(assignment):
            end = ends.get((tp.topic, tp.partition), 0)
            if end > 0 and (tp.offset < 0 or tp.offset < end):
                return False
        return True

    def run(self, until_caught_up: bool = False, stop: Callable[[], bool] = lambda: False,
            assign_timeout: float = 60.0) -> BatchResult:
        started = time.monotonic()
        while not stop():
            n = self.step()
            if n or not until_caught_up:
                continue
            if self.caught_up():
                break
            if not self.consumer.assignment() and time.monotonic() - started > assign_timeout:
                raise RuntimeError(f"no partition of {self.topics} assigned within {assign_timeout:.0f} s "
                                   "(another member of the consumer group holds them?)")
        return self.total

    def close(self) -> None:
        self.consumer.close()
