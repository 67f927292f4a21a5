"""Actions and the action log: an action's deterministic id (rule, source entry, kind) and reference, and the
warehouse table ``bridge_actions`` that records each action's outcome once (the exactly-once log)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import text

from ..model import CanonicalEntry
from ..warehouse import Warehouse
from .rules import TriggerRule


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

    def base_reference(self) -> str:
        """The source's reference the rule names (its correlation id or entry id), without this action's suffix."""
        if self.rule.action.get("reference", "correlation_id") == "correlation_id" and self.entry.correlation_id:
            return self.entry.correlation_id
        return self.entry.entry_id

    def reference(self) -> str:
        ref = self.base_reference()
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

    def pending_since(self, ids: list[str]) -> dict[str, tuple[int, str | None]]:
        """For each of ``ids`` logged ``pending``: the runs it has been pending (``detail.pending_runs``) and when
        it first was (``detail.pending_since``, RFC 3339 UTC; None when the log does not say)."""
        out: dict[str, tuple[int, str | None]] = {}
        for aid, detail in self._by_ids("SELECT action_id, detail FROM bridge_actions WHERE status = 'pending'", ids):
            try:
                doc = json.loads(detail)
                runs, since = doc.get("pending_runs", 1), doc.get("pending_since")
            except (ValueError, AttributeError):
                runs, since = 1, None
            out[aid] = (runs if isinstance(runs, int) and not isinstance(runs, bool) and runs > 0 else 1,
                        since if isinstance(since, str) else None)
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
