"""The day's reconciliation honours the desk's approved decisions (plain Python, called by ``audit``).

- A manual match whose entries are all in the day's breaks of its reconciliation replaces those breaks by
  one match record, ``match_type: manual``, carrying its ``decision_id``.
- An acceptance in force on the day (``effective_from`` <= day <= ``expires``) stays a break record, with
  the acceptance attached (``acceptance``: decision, reason, expiry, who proposed and who approved).

Each decision honoured is one line of the day's ``decisions.jsonl``, covered by the day's commitment: the
report proves who decided what, and ``verify`` checks every manual match and acceptance against it.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import inspect, select

from ..reconcile.engine import Reconciliation, RecordStruct, record_id
from ..warehouse import Warehouse
from ..warehouse.schema import desk_decisions


class ManualMatch(RecordStruct, frozen=True, gc=False):
    """A match record made by a decision (ARCHITECTURE section 4): fields in canonical (sorted) order."""

    correlation_id: str | None
    decision_id: str
    left_entry_ids: tuple[str, ...]
    match_id: str
    match_type: str
    right_entry_ids: tuple[str, ...]
    rule: str


def decision_line(d) -> dict[str, Any]:
    """A decision as the day report states it (one line of ``decisions.jsonl``)."""
    return {"decision_id": d.decision_id, "kind": d.kind, "reconciliation": d.reconciliation,
            "break_ids": json.loads(d.break_ids), "left_entry_ids": json.loads(d.left_entry_ids),
            "right_entry_ids": json.loads(d.right_entry_ids), "reason": d.reason, "expires": d.expires,
            "effective_from": d.effective_from, "ended_on": d.ended_on, "ended_by": d.ended_by,
            "proposed_by": d.proposed_by, "proposed_at": d.proposed_at, "approved_by": d.decided_by,
            "approved_at": d.decided_at, "score": d.score}


def in_force(d, day: str) -> bool:
    """A manual match holds from ``effective_from`` until the day it lapsed (not included); an acceptance from
    ``effective_from`` through its expiry, or through the day it was ended early."""
    if d.effective_from > day:
        return False
    if d.kind == "manual_match":
        return d.state == "approved" or (d.state == "lapsed" and d.ended_on is not None and day < d.ended_on)
    return d.state == "approved" and (d.expires or "") >= day and (d.ended_on is None or day <= d.ended_on)


def approved(wh: Warehouse, name: str, day: str) -> list:
    with wh.engine.connect() as c:
        if not inspect(c).has_table("desk_decisions"):
            return []
        q = (select(desk_decisions).where(desk_decisions.c.reconciliation == name,
                                          desk_decisions.c.state.in_(("approved", "lapsed")),
                                          desk_decisions.c.effective_from <= day)
             .order_by(desk_decisions.c.decision_id))
        return [d for d in c.execute(q) if in_force(d, day)]


def honour(wh: Warehouse, name: str, day: str, r: Reconciliation) -> list[dict[str, Any]]:
    """Applies ``name``'s decisions in force on ``day`` to its result ``r``: manual matches first (a break they
    take is no break any more), then acceptances of the breaks that remain. Returns the lines of the decisions
    some record honours, and only those."""
    decisions = approved(wh, name, day)
    if not decisions:
        return []
    by_entry: dict[tuple[str, str], int] = {}
    for n, b in enumerate(r.breaks):
        for side, field in (("L", "left_entry_ids"), ("R", "right_entry_ids")):
            for i in b[field]:
                by_entry[(side, i)] = n
    used: dict[str, dict[str, Any]] = {}
    gone: set[int] = set()
    for d in (d for d in decisions if d.kind == "manual_match"):
        line = decision_line(d)
        wanted = [("L", i) for i in line["left_entry_ids"]] + [("R", i) for i in line["right_entry_ids"]]
        if not all(w in by_entry for w in wanted):
            continue  # some of its entries were matched (or changed) since: the desk lapses it
        rows = {by_entry[w] for w in wanted}
        # the decision takes whole breaks only: a break holding other entries too stays as it is
        covered = {(s, i) for n in rows for s, f in (("L", "left_entry_ids"), ("R", "right_entry_ids"))
                   for i in r.breaks[n][f]}
        if covered != set(wanted) or rows & gone:
            continue
        corr = {r.breaks[n].get("correlation_id") for n in rows} - {None}
        r.matches.append(ManualMatch(
            correlation_id=corr.pop() if len(corr) == 1 else None, decision_id=d.decision_id,
            left_entry_ids=tuple(line["left_entry_ids"]), match_id=record_id("m", line["left_entry_ids"],
                                                                             line["right_entry_ids"]),
            match_type="manual", right_entry_ids=tuple(line["right_entry_ids"]), rule="manual"))
        gone |= rows
        used[d.decision_id] = line
    by_id = {b["break_id"]: n for n, b in enumerate(r.breaks) if n not in gone}
    for d in (d for d in decisions if d.kind == "acceptance"):
        line = decision_line(d)
        hit = [by_id[b] for b in line["break_ids"] if b in by_id and "acceptance" not in r.breaks[by_id[b]]]
        for n in hit:
            r.breaks[n]["acceptance"] = {"decision_id": d.decision_id, "reason": d.reason, "expires": d.expires,
                                         "proposed_by": d.proposed_by, "approved_by": d.decided_by}
        if hit:
            used[d.decision_id] = line
    if gone:
        r.breaks[:] = [b for n, b in enumerate(r.breaks) if n not in gone]
    return list(used.values())
