"""The engine: matches a batch of entries against the rules (the latest version of an entry decides), skips
actions the log holds as done, runs the rest on their executors (applies before compensations), logs the
outcomes, dead-letters the failed, bounds how long an action stays pending, and announces requests and
outcomes on ``ledger.bridge.actions``."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from ..config import LedgerConfig, ledger_by_name
from ..kafka.producers import PublishError
from ..model import CanonicalEntry, encode_entry
from ..warehouse import Warehouse
from .action_log import TERMINAL, Action, ActionLog
from .executors import BridgeRecorder, SqlPoster, TopicPublisher
from .rules import TriggerRule

# how long an action may stay pending (a target down, retried run after run); then it is failed with its last
# reason (and dead-lettered): by time, not by runs, so that a bridge retrying every 30 s and a sensor every
# 5 minutes ride out the same outage
MAX_PENDING_SECONDS = 3 * 24 * 3600
# an outcome's reason is kept (action log, announcement, DLQ) to this many characters
MAX_REASON_CHARS = 2000
log = logging.getLogger(__name__)


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _parse_utc(text_: str, default: datetime) -> datetime:
    try:
        return datetime.strptime(text_, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    except ValueError:
        return default


class _Unavailable(RuntimeError):
    """An executor that could not be made earlier in the same batch (its reason already cleaned)."""


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
        from ..kafka.producers import DeadLetterProducer, MessageProducer
        from ..kafka.topics import ensure_topics

        self.rules = rules
        self.ledgers = ledgers
        self.log = ActionLog(wh)
        self.kafka = kafka
        # the actions topic, the DLQ and the targets of publish rules exist before anything is produced, and the
        # sources' topics before the consumer subscribes (a source never published yet is no error, only quiet)
        ensure_topics(kafka, sorted({r.source for r in rules}),
                      extra=sorted({r.action["topic"] for r in rules if r.kind == "publish"}))
        self.producer = MessageProducer(kafka, client_id="ledger-pipelines.bridge", **{"linger.ms": 2})
        self.dlq = DeadLetterProducer(kafka, "bridge")
        self._executors: dict[str, Any] = {}

    @staticmethod
    def _executor_key(rule: TriggerRule) -> str:
        return rule.kind + ":" + rule.action.get("ledger", "")

    def executor(self, rule: TriggerRule):
        key = self._executor_key(rule)
        if key not in self._executors:
            if rule.kind == "bridge_record":
                self._executors[key] = BridgeRecorder()
            elif rule.kind == "sql_post":
                self._executors[key] = SqlPoster(ledger_by_name(self.ledgers, rule.action["ledger"]))
            else:
                self._executors[key] = TopicPublisher(self.kafka)
        return self._executors[key]

    def _unavailable(self, rule: TriggerRule, exc: Exception) -> str:
        """Why ``rule``'s executor could not be made (its target unreachable at the start, a setting missing),
        with the secrets of its endpoint taken out: an RPC URL's path and query (where hosted nodes take their
        API keys), a database URL's password."""
        import os

        from ..chain import redact
        from ..settings import StackConfig, mask_secrets

        text_ = f"{type(exc).__name__}: {exc}"
        if rule.kind == "bridge_record":
            text_ = redact(text_, os.environ.get("LEDGER_BRIDGE_RPC_URL") or StackConfig.from_env().anvil_url)
        elif rule.kind == "sql_post":
            text_ = mask_secrets(text_, ledger_by_name(self.ledgers, rule.action["ledger"]).connection_url())
        return f"{rule.kind} target not available: {text_}"[:MAX_REASON_CHARS]

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
        # one action per rule and entry, the one its latest version in the batch asks for (a batch may carry an
        # entry's pending, orphaned and final versions; the EVM reader publishes a reorganised block's orphaned
        # entries with the new chain's: a leg orphaned and mined again by one reorganisation is applied once)
        latest: dict[tuple[str, str], Action] = {}
        for a in wanted:
            latest[(a.rule.name, a.entry.entry_id)] = a
        current = self._settling(list(latest.values()), pending)
        for kind in ("apply", "compensate"):
            todo = self._todo([a for a in current if a.kind == kind], res, pending)
            self._act(todo, res, pending)
        self.announce()
        return res, pending

    def _settling(self, actions: list[Action], hold: set[str]) -> list[Action]:
        """The actions with those whose outcome is unknown (``pending``) settled first: an entry seen again while
        its compensation is pending gets that compensation (and is held, added to ``hold``, until it is known);
        a compensation whose apply is pending comes with that apply, settled first in the batch (applies run
        before compensations)."""
        out = []
        both = [(Action.of(a.rule, "apply", a.entry), Action.of(a.rule, "compensate", a.entry)) for a in actions]
        status = self.log.status([x.action_id for pair in both for x in pair])
        for a, (ap, cp) in zip(actions, both):
            if a.kind == "apply" and status.get(ap.action_id) == "applied" and status.get(cp.action_id) == "pending":
                out.append(cp)
                hold.add(a.entry.entry_id)
                continue
            if a.kind == "compensate" and status.get(ap.action_id) == "pending":
                out.append(ap)
            out.append(a)
        return out

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
        unavailable: list[tuple[Action, str, dict[str, Any], int]] = []
        down: dict[str, str] = {}  # executors that could not be made in this batch: tried once each
        for a in todo:
            key = self._executor_key(a.rule)
            try:
                if key in down:
                    raise _Unavailable(down[key])
                ex = self.executor(a.rule)
            except Exception as exc:  # its target down at the start: the action waits for a later run
                reason = down.setdefault(key, str(exc) if isinstance(exc, _Unavailable) else self._unavailable(a.rule, exc))
                log.warning("%s: %s; pending, retried on a later run", a.action_id, reason)
                unavailable.append((a, "pending", {"reason": reason}, 0))
                continue
            by_exec.setdefault(id(ex), (ex, []))[1].append(a)
        groups = [(ex.run, actions) for ex, actions in by_exec.values()]
        if unavailable:
            groups.append((lambda _actions: unavailable, [a for a, *_ in unavailable]))
        for run, actions in groups:
            self._announce_requested(actions)
            outcomes = run(actions)
            before = self.log.pending_since([a.action_id for a, st, _, _ in outcomes if st == "pending"])
            now = _now()
            rows = []
            for a, st, detail, tries in outcomes:
                if st == "pending":
                    runs, since = before.get(a.action_id, (0, None))
                    since = since or now.strftime("%Y-%m-%dT%H:%M:%SZ")
                    detail = {**detail, "pending_runs": runs + 1, "pending_since": since}
                    waited = (now - _parse_utc(since, now)).total_seconds()
                    if waited >= MAX_PENDING_SECONDS:  # never holds its partition for ever
                        st = "failed"
                        detail["reason"] = (f"still pending after {waited / 3600:.0f} hours ({runs + 1} runs, "
                                            f"MAX_PENDING_SECONDS); last reason: {detail.get('reason', 'none given')}")
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
        if len(str(detail.get("reason", ""))) > MAX_REASON_CHARS:  # a node's message may quote every argument
            detail = {**detail, "reason": str(detail["reason"])[:MAX_REASON_CHARS] + "..."}
        return {"action_id": a.action_id, "rule": a.rule.name, "kind": a.kind, "source_ledger": a.entry.ledger,
                "source_entry_id": a.entry.entry_id, "action_type": a.rule.kind, "status": status,
                "target_ref": detail.get("reference") or detail.get("txn_id") or detail.get("topic"),
                "detail": detail, "attempts": tries, "source_booked_at": a.entry.booked_at}

    def _dead_letter(self, a: Action, reason: str) -> None:
        self.dlq.send(a.entry.ledger, f"trigger:{a.rule.name}:{a.entry.entry_id}", reason[:MAX_REASON_CHARS],
                      encode_entry(a.entry))
        self.dlq.confirm()

    def _announce_requested(self, actions: list[Action]) -> None:
        from ..kafka.topics import actions_topic

        topic = actions_topic(self.kafka)
        for a in actions:
            self.producer.produce(topic, key=a.action_id.encode(), value=json.dumps(
                {"action_id": a.action_id, "event": "requested", "rule": a.rule.name, "kind": a.kind,
                 "action_type": a.rule.kind, "source_entry_id": a.entry.entry_id}).encode())

    def announce(self) -> int:
        """Outcomes logged but not yet on ``ledger.bridge.actions`` (also after a crash) are produced now."""
        from ..kafka.topics import actions_topic

        rows = self.log.unannounced()
        if not rows:
            return 0
        topic = actions_topic(self.kafka)
        for r in rows:
            self.producer.produce(topic, key=r["action_id"].encode(), value=json.dumps(
                {"event": "outcome", **{k: r[k] for k in ("action_id", "rule", "kind", "source_entry_id",
                                                          "action_type", "status", "target_ref", "attempts")},
                 "detail": json.loads(r["detail"])}).encode())
        try:
            self.producer.confirm(60)
            failed: set[str] = set()
        except PublishError as exc:  # the log holds the outcomes: announced on a later call, never a reason to stop
            log.warning("announcing %d outcome(s) on %s: %s; announced again later", len(rows), topic, str(exc)[:500])
            failed = {key for key, *_ in exc.detailed}
            if "(pending)" in failed:  # some not acknowledged in time, which ones unknown: all again later
                return 0
        done = [r["action_id"] for r in rows if r["action_id"] not in failed]
        self.log.mark_announced(done)
        return len(done)
