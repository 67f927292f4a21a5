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
``LEDGER_BRIDGE_KEY``, contract ``LEDGER_BRIDGE_CONTRACT``, required except on a local development chain,
where it is deployed once per chain (see :mod:`ledger_pipelines.chain`); its events are read from
``LEDGER_BRIDGE_FROM_BLOCK``, default the contract's deployment block), ``sql_post`` (a
balanced two-line journal entry in a configured SQL ledger: ``ledger``, ``debit_account``,
``credit_account``), ``publish`` (the entry to another topic: ``topic``).

Exactly-once effect. Every action has a deterministic id (rule, source ``entry_id``, kind), and the
warehouse keeps an action log. Before acting, the target is asked whether the action is already
there: the bridge contract's ``PaymentRecorded`` event for the reference names the source entry; an SQL
posting is a row of ``bridge_postings`` (primary key = action id) written in the same transaction as
its journal lines. So a crash between acting and logging is recovered by looking, never by acting
twice. Kafka offsets are committed only after a batch's actions are logged (at-least-once delivery,
idempotent effect). Transient errors are retried with backoff for a few seconds; one that outlasts
that (connection refused, a timeout, HTTP 5xx, a node restarting, a nonce taken by another sender,
insufficient funds for gas, a target database unreachable: a connection-level error, SQLAlchemy's
``OperationalError``/``InterfaceError``) leaves the action ``pending`` in the action log with the reason
and the number of runs it has been pending (``detail.pending_runs``), and its source record uncommitted,
so a later run acts on it (asking the target first, as after a crash). An action still pending after
``MAX_PENDING_RUNS`` runs is ``failed`` with its last reason, so one action never holds its partition for
ever. Every other cause is permanent and logged as ``failed`` and sent to the DLQ with the reason: a call
reverted (with the contract's reason); an argument the ABI refuses; a duplicate reference from another
entry; a reference recorded on chain whose event is not found from the bridge's first block; an amount
beyond 255 decimals; a bad rule; a target database refusing the posting (``DataError``,
``ProgrammingError``, an ``IntegrityError`` with no ``bridge_postings`` row of the action). Requests and
outcomes (``pending`` included) are produced to ``ledger.bridge.actions`` (key: action id).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import sys
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

    def _by_ids(self, select: str, ids: list[str]):
        """Rows of ``select ... AND action_id IN (...)`` for ``ids``, 500 ids a statement."""
        with self.wh.engine.connect() as c:
            for i in range(0, len(ids), 500):
                chunk = ids[i:i + 500]
                marks = ", ".join(f":a{n}" for n in range(len(chunk)))
                yield from c.execute(text(f"{select} AND action_id IN ({marks})"),
                                     {f"a{n}": a for n, a in enumerate(chunk)}).all()

    def status(self, ids: list[str]) -> dict[str, str]:
        return dict(self._by_ids("SELECT action_id, status FROM bridge_actions WHERE 1 = 1", ids))

    def pending_runs(self, ids: list[str]) -> dict[str, int]:
        """For each of ``ids`` logged ``pending``: the runs it has been pending (``detail.pending_runs``)."""
        out: dict[str, int] = {}
        for aid, detail in self._by_ids("SELECT action_id, detail FROM bridge_actions WHERE status = 'pending'", ids):
            try:
                runs = json.loads(detail).get("pending_runs", 1)
            except (ValueError, AttributeError):
                runs = 1
            out[aid] = runs if isinstance(runs, int) and not isinstance(runs, bool) and runs > 0 else 1
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
# An executor's ``run`` gives one outcome per action: (action, status, detail, attempts), status ``applied``,
# ``failed`` (a permanent cause, ``detail["reason"]``) or ``pending`` (a transient cause outlasted the in-run
# retries, ``detail["reason"]``: the action is tried again on a later run).
RETRY_ATTEMPTS = 6
# runs an action may stay pending; at this many it is failed with its last reason (and dead-lettered)
MAX_PENDING_RUNS = 100


def _retry(fn: Callable[[], Any], what: str, attempts: int = RETRY_ATTEMPTS,
           permanent: Callable[[BaseException], str | None] | None = None,
           give_up: tuple[type[BaseException], ...] = (),
           clean: Callable[[str], str] = str) -> tuple[Any, int]:
    """Run ``fn``; transient errors are retried with exponential backoff. Returns (result, attempts).

    ``permanent(exc)`` names a cause retrying cannot cure: raised at once as :class:`PermanentError` with that
    reason. Exceptions of ``give_up`` are raised at once as they are; ``clean`` takes secrets out of the
    message that is logged."""
    for n in range(1, attempts + 1):
        try:
            return fn(), n
        except PermanentError:
            raise
        except give_up:
            raise
        except Exception as exc:  # connection refused, timeouts, node hiccups
            reason = permanent(exc) if permanent else None
            if reason:
                raise PermanentError(clean(reason)) from exc
            if n == attempts:
                raise
            delay = min(5.0, 0.1 * 2 ** (n - 1))
            log.warning("%s: %s; retrying in %.1fs (%d/%d)", what, clean(str(exc)), delay, n, attempts)
            time.sleep(delay)
    raise AssertionError("unreachable")


class BridgeRecorder:
    """``bridge_record``: LedgerBridge.record, several transactions in flight per batch.

    ``failed``: the reference is recorded on chain for another entry, the amount has more than 255 decimals,
    the call reverted (the reason the contract gives) or has an invalid argument, the reference is recorded but
    its event is not found from the first block read, or any failure that is not transient. ``pending``: a
    transient failure (:func:`~ledger_pipelines.chain.transient_failure`: connection refused, timeouts, HTTP
    errors, a node restarting, a nonce taken by another sender, insufficient funds for gas) that outlasts the
    in-run retries, and any failure after a transaction was sent while its receipt is awaited (its outcome is
    unknown); on a later run the chain is asked first, so a transaction that did go through is found there and
    never sent twice. After a connection failure outlasts the retries,
    the actions of the next ``OUTAGE_PAUSE`` seconds are pending at once instead of each waiting out the
    retries against a node that is down."""

    OUTAGE_PAUSE = 10.0
    GAS = 300_000

    def __init__(self, log_page: int | None = None):
        from .chain import LOG_PAGE_BLOCKS, Signer, contract, contract_address, deployment_block
        from .settings import StackConfig

        self.url = os.environ.get("LEDGER_BRIDGE_RPC_URL") or StackConfig.from_env().anvil_url
        self.signer = Signer.from_env(self.url, "LEDGER_BRIDGE_KEY")
        self.address = contract_address(self.signer, "LedgerBridge")
        self.contract = contract(self.signer, "LedgerBridge", self.address)
        self.from_block = deployment_block(self.signer.w3, "LedgerBridge", self.address)
        self.log_page = log_page or LOG_PAGE_BLOCKS
        self._down: tuple[float, str] | None = None  # (until, why) after a connection failure outlasted retries

    def _clean(self, text_: str) -> str:
        from .chain import redact

        return redact(text_, self.url)

    def _recorded_by(self, reference: str) -> str | None:
        """The source entry id the reference was recorded for, or None when it is not recorded."""
        from .chain import FROM_BLOCK_ENV, contract_logs

        w3 = self.signer.w3
        key = w3.keccak(text=reference)
        if not self.contract.functions.recorded(key).call():
            return None
        for lg in contract_logs(w3, self.address, [None, "0x" + key.hex().removeprefix("0x")], self.from_block,
                                page=self.log_page, retries=0):  # _retry retries the whole look-up
            ev = self.contract.events.PaymentRecorded().process_log(lg)
            return ev["args"]["sourceEntryId"]
        raise PermanentError(f"reference {reference!r} is recorded on {self.address}, but no PaymentRecorded event "
                             f"of it was found from block {self.from_block} to {w3.eth.block_number} (is "
                             f"{FROM_BLOCK_ENV['LedgerBridge']} later than the recording transaction?)")

    @staticmethod
    def _permanent(exc: BaseException) -> str | None:
        """Why retrying cannot help: a revert or an invalid argument, or a failure of no transient kind."""
        from .chain import permanent_failure, transient_failure

        reason = permanent_failure(exc)
        if reason or transient_failure(exc):
            return reason
        return f"{type(exc).__name__}: {exc}"

    def _try(self, fn: Callable[[], Any], what: str, give_up: tuple[type[BaseException], ...] = ()) -> tuple[Any, int]:
        try:
            return _retry(fn, what, permanent=self._permanent, give_up=give_up, clean=self._clean)
        except PermanentError:
            raise
        except OSError as exc:  # requests' connection errors, timeouts and HTTP errors are OSErrors
            self._down = (time.monotonic() + self.OUTAGE_PAUSE, f"{type(exc).__name__}: {self._clean(str(exc))}")
            raise

    def _pending(self, a: Action, why: str, exc: BaseException | None, tries: int,
                 **detail: Any) -> tuple[Action, str, dict[str, Any], int]:
        cause = f"{why}: {type(exc).__name__}: {self._clean(str(exc))}" if exc is not None else why
        log.warning("%s: %s; pending, retried on a later run", a.action_id, cause)
        return a, "pending", {**detail, "reason": cause}, tries

    def _revert_reason(self, call, receipt) -> str:
        """What the contract says when the call is replayed on the state after its block."""
        from .chain import permanent_failure

        try:
            call.call({"from": self.signer.address, "gas": self.GAS}, block_identifier=receipt["blockNumber"])
        except Exception as exc:
            reason = permanent_failure(exc)
            if reason:
                return self._clean(reason)
        if receipt.get("gasUsed", 0) >= self.GAS:
            return f"out of gas ({self.GAS})"
        return "no reason given"

    def run(self, actions: list[Action]) -> list[tuple[Action, str, dict[str, Any], int]]:
        from web3.exceptions import TimeExhausted

        from .model import amount_scale

        out, sent = [], []
        for a in actions:
            ref = a.reference()
            if self._down and time.monotonic() < self._down[0]:
                out.append(self._pending(a, f"not tried, the node failed just before ({self._down[1]})", None, 0,
                                         reference=ref))
                continue
            try:
                owner, tries = self._try(lambda: self._recorded_by(ref), f"{a.action_id}: check")
            except PermanentError as exc:
                out.append((a, "failed", {"reason": f"checking reference {ref!r} on chain: {exc}", "reference": ref},
                            1))
                continue
            except Exception as exc:
                out.append(self._pending(a, f"checking reference {ref!r} on chain", exc, RETRY_ATTEMPTS,
                                         reference=ref))
                continue
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
            try:
                call = self.contract.functions.record(ref, a.entry.asset, value, scale, a.entry.entry_id)
            except Exception as exc:  # built locally: only an argument the ABI refuses fails here
                out.append((a, "failed", {"reason": f"LedgerBridge.record: invalid argument: {exc}", "reference": ref},
                            tries))
                continue
            try:
                tx, t2 = self._try(lambda: self.signer.send(call, gas=self.GAS), f"{a.action_id}: send")
            except PermanentError as exc:
                out.append((a, "failed", {"reason": f"LedgerBridge.record {exc}", "reference": ref}, tries + 1))
                continue
            except Exception as exc:
                out.append(self._pending(a, "sending LedgerBridge.record", exc, tries + RETRY_ATTEMPTS, reference=ref))
                continue
            sent.append((a, ref, call, tx, tries + t2))
        for a, ref, call, tx, tries in sent:
            base = {"reference": ref, "tx_hash": tx, "contract": self.address}
            try:
                receipt, t3 = self._try(lambda: self.signer.wait(tx), f"{a.action_id}: receipt", give_up=(TimeExhausted,))
            except Exception as exc:  # sent, outcome unknown: the next run asks the chain before sending again
                out.append(self._pending(a, f"waiting for the receipt of {tx}", exc, tries + 1, **base))
                continue
            detail = {**base, "block_number": receipt["blockNumber"]}
            if receipt["status"] == 1:
                out.append((a, "applied", detail, tries + t3))
                continue
            try:
                owner, _ = self._try(lambda: self._recorded_by(ref), f"{a.action_id}: check")
            except PermanentError as exc:
                out.append((a, "failed", {**detail, "reason": f"tx {tx} reverted; checking reference {ref!r} on "
                                                              f"chain: {exc}"}, tries + t3))
                continue
            except Exception as exc:
                out.append(self._pending(a, f"tx {tx} reverted; checking reference {ref!r} on chain", exc,
                                         tries + t3, **detail))
                continue
            if owner == a.entry.entry_id:  # raced with an earlier attempt of ours
                out.append((a, "applied", {**detail, "found_on_target": True}, tries + t3))
            else:
                out.append((a, "failed", {**detail, "reason": f"LedgerBridge.record reverted in tx {tx}: "
                                                              f"{self._revert_reason(call, receipt)}"}, tries + t3))
        return out


POSTINGS_DDL = ("CREATE TABLE IF NOT EXISTS bridge_postings (action_id VARCHAR(128) PRIMARY KEY, "
                "txn_id VARCHAR(64) NOT NULL, source_entry_id TEXT NOT NULL, posted_at TEXT NOT NULL)")


class SqlPoster:
    """``sql_post``: two journal lines and a ``bridge_postings`` row, in one transaction of the target.

    ``pending``: a connection-level error (SQLAlchemy's ``OperationalError``, ``InterfaceError``) outlasting the
    in-run retries. ``failed``: any other error (``DataError``, ``ProgrammingError``, ...), at once, and an
    ``IntegrityError`` unless the action's ``bridge_postings`` row is there (then it was posted concurrently)."""

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
                result, tries = _retry(lambda: self._post(a), f"{a.action_id}: post", permanent=self._permanent)
                out.append((a, "applied", result, tries))
            except PermanentError as exc:
                out.append((a, "failed", {"reason": str(exc)}, 1))
            except Exception as exc:  # the target database is unreachable: tried again on a later run
                reason = f"posting into {self.lc.name}: {type(exc).__name__}: {exc}"
                log.warning("%s: %s; pending, retried on a later run", a.action_id, reason)
                out.append((a, "pending", {"reason": reason}, RETRY_ATTEMPTS))
        return out

    def _permanent(self, exc: BaseException) -> str | None:
        from sqlalchemy.exc import InterfaceError, OperationalError

        if isinstance(exc, (OperationalError, InterfaceError)):
            return None
        return f"posting into {self.lc.name}: {type(exc).__name__}: {_first_line(exc)}"

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
        except IntegrityError as exc:  # a concurrent run posted it between our check and insert, or a refusal
            with self.engine.connect() as c:
                if self._posted(c, a.action_id):
                    return {"txn_id": txn, "found_on_target": True}
            raise PermanentError(f"posting into {self.lc.name}: IntegrityError and no bridge_postings row of "
                                 f"{a.action_id}: {_first_line(exc)}") from exc
        return {"txn_id": txn, "lines": 2, "debit_account": debit, "credit_account": credit}


def _first_line(exc: BaseException) -> str:
    """A database error's message without the statement and parameters SQLAlchemy appends."""
    return (str(exc).strip().splitlines() or [""])[0]


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
    pending: int = 0  # outcomes left pending by a transient failure (tried again on a later run)
    held: int = 0
    skipped: int = 0

    def add(self, other: "BatchResult") -> None:
        for k in self.__dataclass_fields__:
            setattr(self, k, getattr(self, k) + getattr(other, k))


class TriggerEngine:
    def __init__(self, rules: list[TriggerRule], ledgers: list[LedgerConfig], wh: Warehouse, kafka):
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
        return self.process_entries(entries)[0]

    def process_entries(self, entries: list[CanonicalEntry]) -> tuple[BatchResult, set[str]]:
        """Acts on a batch; returns its counts and the entry ids with an action left pending (their source
        records must be read again on a later run). Applies are acted on before compensations, so an entry's
        apply and its orphaned version in one batch are done in that order."""
        res = BatchResult(seen=len(entries))
        pending: set[str] = set()
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
        for kind in ("apply", "compensate"):
            todo = self._todo([a for a in unique.values() if a.kind == kind], res, pending)
            self._act(todo, res, pending)
        self.announce()
        return res, pending

    def _todo(self, actions: list[Action], res: BatchResult, pending: set[str]) -> list[Action]:
        status = self.log.status([a.action_id for a in actions])
        todo = []
        for a in actions:
            if status.get(a.action_id) in TERMINAL:
                res.skipped += 1
                continue
            if a.kind == "compensate":
                apply_id = Action.of(a.rule, "apply", a.entry).action_id
                applied = self.log.status([apply_id]).get(apply_id)
                if applied == "pending":  # not known yet whether it was done: decided once it is
                    res.pending += 1
                    pending.add(a.entry.entry_id)
                    continue
                if applied != "applied":
                    res.skipped += 1  # nothing was done for it: nothing to compensate
                    continue
                if a.rule.on_orphaned == "hold":  # final entry orphaned by a reorg deeper than the confirmations
                    self._dead_letter(a, "source entry orphaned after its action was applied; rule holds, "
                                         "compensate by hand")
                    self.log.record([self._outcome(a, "failed", {"reason": "orphaned after apply (hold rule)"}, 1)])
                    res.failed += 1
                    continue
            todo.append(a)
        return todo

    def _act(self, todo: list[Action], res: BatchResult, pending: set[str]) -> None:
        by_exec: dict[int, tuple[Any, list[Action]]] = {}
        for a in todo:
            ex = self.executor(a.rule)
            by_exec.setdefault(id(ex), (ex, []))[1].append(a)
        for ex, actions in by_exec.values():
            self._announce_requested(actions)
            outcomes = ex.run(actions)
            before = self.log.pending_runs([a.action_id for a, st, _, _ in outcomes if st == "pending"])
            rows = []
            for a, st, detail, tries in outcomes:
                if st == "pending":
                    runs = before.get(a.action_id, 0) + 1
                    detail = {**detail, "pending_runs": runs}
                    if runs >= MAX_PENDING_RUNS:  # never holds its partition for ever
                        st = "failed"
                        detail["reason"] = (f"still pending after {runs} runs (MAX_PENDING_RUNS); last reason: "
                                            f"{detail.get('reason', 'none given')}")
                rows.append(self._outcome(a, st, detail, tries))
                if st == "failed":
                    res.failed += 1
                    self._dead_letter(a, detail.get("reason", "failed"))
                elif st == "pending":
                    res.pending += 1
                    pending.add(a.entry.entry_id)
                elif detail.get("found_on_target"):
                    res.found_on_target += 1
                else:
                    res.applied += 1
            self.log.record(rows)

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
def _progress_sink() -> Callable[[str], None]:
    """Where a run's progress lines go: the Dagster run log when Dagster runs the bridge (``bridge_job``), else
    this module's logger (``ledger-pipelines bridge``)."""
    if "dagster" in sys.modules:
        from dagster import get_dagster_logger

        return get_dagster_logger("ledger_pipelines.triggers").info
    return log.info


class TriggerConsumer:
    """Consumes the source ledgers' topics (consumer group, offsets committed after each logged batch).

    A source record with an action left pending is not committed past: in each of its partitions the
    committed offset stays at the first such record until its actions are done, so a later run (a restarted
    bridge, the next ``bridge_job``) reads it again; records after it that are done are skipped by the action
    log. A running bridge (``until_caught_up`` off) reads them again itself every ``retry_every`` seconds.
    Progress (entries, actions applied, pending, failed) is logged at INFO every ``progress_every`` seconds
    while anything happens, and once at the end of :meth:`run`."""

    def __init__(self, engine: TriggerEngine, group: str = "ledger-pipelines-bridge", batch: int = 500,
                 instance: str | None = "0", progress: Callable[[str], None] | None = None,
                 progress_every: float = 10.0, retry_every: float = 30.0):
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
        # (topic, partition) -> offset of its first record with a pending action: never committed past
        self.held: dict[tuple[str, int], int] = {}
        self.consumer.subscribe(self.topics, on_assign=self._rebalanced, on_revoke=self._rebalanced)
        self.batch = batch
        self.total = BatchResult()
        self.rejected = 0
        self.progress = progress or _progress_sink()
        self.progress_every = progress_every
        self.retry_every = retry_every
        self._last_progress = time.monotonic()
        self._reported: dict[str, int] | None = None

    def _rebalanced(self, consumer, partitions) -> None:
        # a partition (re)assigned is read from its committed offset, which is at most its hold
        for tp in partitions:
            self.held.pop((tp.topic, tp.partition), None)

    def step(self, timeout: float = 0.2) -> int:
        from confluent_kafka import TopicPartition

        msgs = self.consumer.consume(num_messages=self.batch, timeout=timeout)
        if not msgs:
            return 0
        entries, where = [], []
        ends: dict[tuple[str, int], int] = {}
        for m in msgs:
            if m.error():
                raise RuntimeError(f"Kafka: {m.error()}")
            tp = (m.topic(), m.partition())
            ends[tp] = max(ends.get(tp, 0), m.offset() + 1)
            if m.value() is None:
                continue
            try:
                entries.append(decode_entry(m.value()))
                where.append((tp, m.offset()))
            except EntryError as exc:
                # the event log's ingestion dead-letters it with the same reason; the bridge only skips it
                self.rejected += 1
                log.warning("%s[%d]@%d: not a canonical entry (%s); skipped", m.topic(), m.partition(), m.offset(),
                            exc)
        res, pending = self.engine.process_entries(entries)
        for e, (tp, offset) in zip(entries, where):
            if e.entry_id in pending and offset < self.held.get(tp, offset + 1):
                self.held[tp] = offset
        self.total.add(res)
        self.consumer.commit(offsets=[TopicPartition(t, p, min(end, self.held.get((t, p), end)))
                                      for (t, p), end in sorted(ends.items())], asynchronous=False)
        if res.applied or res.failed or res.found_on_target or res.pending:
            log.info("bridge: %d entries, %d applied, %d found already applied, %d pending, %d failed, %d held",
                     res.seen, res.applied, res.found_on_target, res.pending, res.failed, res.held)
        return len(msgs)

    def retry_held(self) -> int:
        """Seeks each partition holding a pending action back to it (its records are read again); returns how
        many partitions were."""
        from confluent_kafka import TopicPartition

        assigned = {(tp.topic, tp.partition) for tp in self.consumer.assignment()}
        held, self.held = self.held, {}
        n = 0
        for (t, p), offset in sorted(held.items()):
            if (t, p) in assigned:
                self.consumer.seek(TopicPartition(t, p, offset))
                n += 1
        return n

    def report(self, final: bool = False) -> None:
        """One INFO line of the run so far (at most every ``progress_every`` seconds, and only when something
        changed; ``final``: always)."""
        now = time.monotonic()
        counts = dict(self.total.__dict__)
        if not final and (now - self._last_progress < self.progress_every or counts == self._reported):
            return
        self._last_progress, self._reported = now, counts
        t = self.total
        actions = t.applied + t.found_on_target + t.pending + t.failed
        self.progress(f"bridge{' run done' if final else ''}: {t.seen} entries read, {actions} actions: "
                      f"{t.applied} applied, {t.found_on_target} found already applied, {t.pending} pending "
                      f"(tried again on a later run), {t.failed} failed; {t.held} entries held (not final yet), "
                      f"{t.skipped} actions done before")

    def caught_up(self) -> bool:
        """Every assigned partition's position is at its read-committed end offset (a partition not read from
        yet, which has no position: its committed offset is)."""
        from .kafka.topics import end_offsets

        assignment = self.consumer.assignment()
        if not assignment:
            return False
        counts: dict[str, int] = {}
        for tp in assignment:
            counts[tp.topic] = max(counts.get(tp.topic, 0), tp.partition + 1)
        ends = end_offsets(self.engine.kafka, counts)
        committed: dict[tuple[str, int], int] | None = None
        for tp in self.consumer.position(assignment):
            end = ends.get((tp.topic, tp.partition), 0)
            offset = tp.offset
            if end > 0 and offset < 0:
                if committed is None:
                    committed = {(c.topic, c.partition): c.offset
                                 for c in self.consumer.committed(assignment, timeout=15)}
                offset = committed.get((tp.topic, tp.partition), -1)
            if end > 0 and (offset < 0 or offset < end):
                return False
        return True

    def run(self, until_caught_up: bool = False, stop: Callable[[], bool] = lambda: False,
            assign_timeout: float = 60.0) -> BatchResult:
        started = retried = time.monotonic()
        while not stop():
            n = self.step()
            self.report()
            if not until_caught_up and self.held and time.monotonic() - retried >= self.retry_every:
                self.retry_held()
                retried = time.monotonic()
            if n or not until_caught_up:
                continue
            if self.caught_up():
                break
            if not self.consumer.assignment() and time.monotonic() - started > assign_timeout:
                raise RuntimeError(f"no partition of {self.topics} assigned within {assign_timeout:.0f} s "
                                   "(another member of the consumer group holds them?)")
        self.report(final=True)
        return self.total

    def close(self) -> None:
        self.consumer.close()
