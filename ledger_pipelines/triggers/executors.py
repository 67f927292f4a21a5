"""Executors: act on the targets, each asking the target first whether the action is already there.
``BridgeRecorder`` (``bridge_record``: LedgerBridge on chain), ``SqlPoster`` (``sql_post``: a journal entry in a SQL
ledger), ``TopicPublisher`` (``publish``: another topic); the in-run retry of transient errors, and which
errors are permanent."""

from __future__ import annotations

import hashlib
import logging
import os
import time
from datetime import datetime, timezone
from typing import Any, Callable

from sqlalchemy import text

from ..config import LedgerConfig
from ..model import encode_entry
from .action_log import Action

log = logging.getLogger(__name__)


class PermanentError(RuntimeError):
    """The action cannot succeed by retrying (it goes to the DLQ)."""


# An executor's ``run`` gives one outcome per action: (action, status, detail, attempts), status ``applied``,
# ``failed`` (a permanent cause, ``detail["reason"]``) or ``pending`` (a transient cause outlasted the in-run
# retries, ``detail["reason"]``: the action is tried again on a later run).
RETRY_ATTEMPTS = 6


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


# the longest source reference LedgerBridge.record is sent (before its suffix, :compensation): room for
# the longest entry id (512 characters of up to 4 bytes); a record costs about 25 gas a byte of reference above
# ~50,000, so 2 KiB stays far inside GAS, a correlation id of 200 KB did not (its transaction was dropped)
MAX_REFERENCE_BYTES = 2048


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
        from ..chain import LOG_PAGE_BLOCKS, Signer, contract, contract_address, deployment_block
        from ..settings import StackConfig

        self.url = os.environ.get("LEDGER_BRIDGE_RPC_URL") or StackConfig.from_env().anvil_url
        self.signer = Signer.from_env(self.url, "LEDGER_BRIDGE_KEY")
        self.address = contract_address(self.signer, "LedgerBridge")
        self.contract = contract(self.signer, "LedgerBridge", self.address)
        self.from_block = deployment_block(self.signer.w3, "LedgerBridge", self.address)
        self.log_page = log_page or LOG_PAGE_BLOCKS
        self._down: tuple[float, str] | None = None  # (until, why) after a connection failure outlasted retries

    def _clean(self, text_: str) -> str:
        from ..chain import redact

        return redact(text_, self.url)

    def _recorded_by(self, reference: str) -> str | None:
        """The source entry id the reference was recorded for, or None when it is not recorded."""
        from ..chain import FROM_BLOCK_ENV, contract_logs

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
        from ..chain import permanent_failure, transient_failure

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
        from ..chain import permanent_failure

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

        from ..model import amount_scale

        out, sent = [], []
        for a in actions:
            ref = a.reference()
            size = len(a.base_reference().encode("utf-8", "surrogatepass"))
            if size > MAX_REFERENCE_BYTES:  # a correlation id has no bound of its own: sent, its gas would not fit
                out.append((a, "failed", {"reason": f"reference of {size} bytes (at most {MAX_REFERENCE_BYTES}): "
                                                    f"{ref[:80]!r}...", "reference": ref[:80] + "..."}, 0))
                continue
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

    ``pending``: an error a later attempt can pass (:func:`sql_transient`) outlasting the in-run retries.
    ``failed``: any other error (``DataError``, ``ProgrammingError``, ...), at once, and an ``IntegrityError``
    unless the action's ``bridge_postings`` row is there (then it was posted concurrently)."""

    def __init__(self, lc: LedgerConfig):
        from sqlalchemy import create_engine

        from ..connectors.kinds import source_url

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
        return None if sql_transient(exc) else f"posting into {self.lc.name}: {type(exc).__name__}: {_first_line(exc)}"

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


# SQLSTATE classes and codes a later attempt can pass: connection exceptions (08), transaction rollbacks
# (40: serialization failures, deadlocks), insufficient resources (53), operator intervention (57: a server
# shutting down or starting), a read-only transaction (25006: a replica during a failover), lock not
# available (55P03)
_TRANSIENT_SQLSTATES = ("08", "40", "53", "57", "25006", "55P03")
# SQLite reports a missing table or column, which no retry creates, as an OperationalError
_SQLITE_SCHEMA = ("no such table", "no such column", "has no column named")


def sql_transient(exc: BaseException) -> bool:
    """Whether a database error may pass on a later attempt (the target unreachable, restarting, in a failover):
    SQLAlchemy's ``OperationalError`` and ``InterfaceError`` (but SQLite's schema errors), and any other
    database error whose SQLSTATE is of a transient class (a read-only transaction during a failover is an
    ``InternalError``)."""
    from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

    if isinstance(exc, OperationalError):
        return not any(m in str(exc.orig) for m in _SQLITE_SCHEMA)
    if isinstance(exc, InterfaceError):
        return True
    orig = getattr(exc, "orig", None)
    state = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)  # psycopg 3, psycopg2
    return isinstance(exc, DBAPIError) and isinstance(state, str) and state.startswith(_TRANSIENT_SQLSTATES)


def _first_line(exc: BaseException) -> str:
    """A database error's message without the statement and parameters SQLAlchemy appends."""
    return (str(exc).strip().splitlines() or [""])[0]


class TopicPublisher:
    """``publish``: the entry (as is) to another topic, key = entry id; consumers dedupe by entry id.

    A producer of its own (the engine's announcements are not its deliveries). Each message is an outcome:
    ``applied`` once acknowledged; ``failed`` when Kafka refuses it for good (too large for the topic, not
    authorised, an invalid record); ``pending`` for any other failure (brokers unreachable, a leader election
    outlasting the delivery timeout), published again on a later run."""

    def __init__(self, kafka):
        from ..kafka.producers import MessageProducer

        self.producer = MessageProducer(kafka, client_id="ledger-pipelines.bridge.publish", **{"linger.ms": 2})

    def run(self, actions: list[Action]) -> list[tuple[Action, str, dict[str, Any], int]]:
        from confluent_kafka import KafkaException

        from ..kafka.producers import PublishError

        out, sent = [], []
        for a in actions:
            topic = a.rule.action["topic"]
            try:
                self.producer.produce(topic, key=a.entry.entry_id.encode(), value=encode_entry(a.entry),
                                      headers=[("action_id", a.action_id.encode())])
                sent.append(a)
            except KafkaException as exc:  # refused before it leaves (larger than the producer takes, say)
                err = exc.args[0] if exc.args else None
                out.append(_delivery_outcome(a, topic, getattr(err, "str", lambda: str(exc))(),
                                             getattr(err, "code", lambda: None)()))
        try:
            self.producer.confirm(60)
            failures: dict[tuple[str | None, str], tuple[str, Any]] = {}
        except PublishError as exc:
            failures = {(topic, key): (text_, code) for key, text_, code, topic in exc.detailed}
        unknown = failures.get((None, "(pending)"))
        for a in sent:
            topic = a.rule.action["topic"]
            if (topic, a.entry.entry_id) in failures:
                out.append(_delivery_outcome(a, topic, *failures[(topic, a.entry.entry_id)]))
            elif unknown:
                out.append((a, "pending", {"topic": topic, "reason": unknown[0]}, 1))
            else:
                out.append((a, "applied", {"topic": topic}, 1))
        return out


def _delivery_outcome(a: Action, topic: str, reason: str, code: Any) -> tuple[Action, str, dict[str, Any], int]:
    from confluent_kafka import KafkaError

    permanent = {KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.TOPIC_AUTHORIZATION_FAILED,
                 KafkaError.INVALID_RECORD, KafkaError.RECORD_LIST_TOO_LARGE, KafkaError.INVALID_MSG_SIZE,
                 KafkaError.CLUSTER_AUTHORIZATION_FAILED}
    status = "failed" if code in permanent else "pending"
    if status == "pending":
        log.warning("%s: publishing to %s: %s; pending, retried on a later run", a.action_id, topic, reason)
    return a, status, {"topic": topic, "reason": f"publishing to {topic}: {reason}"}, 1
