"""The breaks desk's state in the warehouse: users, the append-only trail of actions, decisions (four-eyes)
and each break's lifecycle, kept in step with the day reports by :meth:`Desk.sync`.

A break is identified by its reconciliation and ``break_id``; the id is derived from the break's entries,
so a break carried from day to day keeps it as long as it stays open. Every change of a break's workflow
state goes through one transaction that appends its event (who, when, what, why, before, after) and
updates the projections (``desk_breaks``, ``desk_decisions``).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Iterator
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from sqlalchemy import and_, bindparam, case, func, insert, literal, or_, select, text, update

from ..commitment import canonical
from ..reconcile.output import at_stake
from ..warehouse import Warehouse
from ..warehouse import bulk_insert
from ..warehouse.schema import desk_break_records, desk_breaks, desk_decisions, desk_events, desk_users
from . import policy
from .auth import check_password, hash_password, waste_a_check
from .policy import DeskSettings

SYSTEM = "system"  # the actor of what the nightly run does by itself (resolving, reopening, auto-confirming)
ONE_SIDED = ("missing_left", "missing_right")
CAN = {"operator": {"assign", "comment", "propose", "reopen"},
       "approver": {"assign", "comment", "propose", "reopen", "approve", "reject"},
       "auditor": set()}
SORTS = {"amount": desk_breaks.c.amount_key, "first_seen": desk_breaks.c.first_seen,
         "last_seen": desk_breaks.c.last_seen, "reconciliation": desk_breaks.c.reconciliation,
         "break_id": desk_breaks.c.break_id, "type": desk_breaks.c.break_type, "state": desk_breaks.c.state,
         "asset": desk_breaks.c.asset, "assignee": desk_breaks.c.assignee}
PAGE = 100
FEW = 20_000  # a filter matching fewer breaks than this is read through its own index


class DeskError(ValueError):
    status = 400


class NotFound(DeskError):
    status = 404


class Forbidden(DeskError):
    status = 403


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _json(v: Any) -> str:
    return canonical(v).decode()


def _workflow(row) -> dict[str, Any]:
    return {"state": row.state, "assignee": row.assignee, "accepted_until": row.accepted_until,
            "decision_id": row.decision_id, "pending": row.pending}


class Desk:
    def __init__(self, wh: Warehouse, settings: DeskSettings | None = None) -> None:
        self.wh, self.settings = wh, settings or DeskSettings()
        wh.create_schema()

    # ---- users ---------------------------------------------------------------------------------------

    def add_user(self, name: str, role: str, password: str) -> None:
        if not policy.USER_NAME.fullmatch(name) or name == SYSTEM:
            raise DeskError(f"user name {name!r}: lower-case letters, digits, '.', '_' or '-', starting with a "
                            f"letter, at most 64 (and not {SYSTEM!r})")
        if role not in policy.ROLES:
            raise DeskError(f"role {role!r}: one of {', '.join(policy.ROLES)}")
        if len(password) < 12:
            raise DeskError("the password is shorter than 12 characters")
        with self.wh.engine.begin() as c:
            if c.execute(select(desk_users.c.name).where(desk_users.c.name == name)).first():
                raise DeskError(f"user {name!r} exists (remove it first)")
            c.execute(insert(desk_users).values(name=name, role=role, password_hash=hash_password(password),
                                                session_epoch=uuid.uuid4().hex, created_at=utc_now()))
            self._event(c, SYSTEM, "user_add", None, None, None, {"user": name, "role": role})

    def remove_user(self, name: str) -> None:
        with self.wh.engine.begin() as c:
            if not c.execute(desk_users.delete().where(desk_users.c.name == name)).rowcount:
                raise NotFound(f"no user {name!r}")
            self._event(c, SYSTEM, "user_remove", None, None, None, {"user": name})

    def users(self) -> list[dict[str, str]]:
        with self.wh.engine.connect() as c:
            return [dict(r._mapping) for r in c.execute(
                select(desk_users.c.name, desk_users.c.role, desk_users.c.created_at).order_by(desk_users.c.name))]

    def role_of(self, name: str | None) -> str | None:
        if not name:
            return None
        with self.wh.engine.connect() as c:
            return c.execute(select(desk_users.c.role).where(desk_users.c.name == name)).scalar()

    def session_of(self, name: str | None) -> tuple[str, str] | None:
        """(role, session epoch) of a user: a session names the epoch it was made in, and a new epoch (at
        logout, or a user removed and added again) ends every earlier session of the name."""
        if not name:
            return None
        with self.wh.engine.connect() as c:
            row = c.execute(select(desk_users.c.role, desk_users.c.session_epoch).where(desk_users.c.name == name)).first()
        return tuple(row) if row else None

    def end_sessions(self, name: str) -> None:
        with self.wh.engine.begin() as c:
            c.execute(update(desk_users).where(desk_users.c.name == name).values(session_epoch=uuid.uuid4().hex))

    def authenticate(self, name: str, password: str) -> tuple[str, str] | None:
        """(role, session epoch) when the password is right, else None (as slow either way)."""
        with self.wh.engine.connect() as c:
            row = c.execute(select(desk_users.c.role, desk_users.c.password_hash, desk_users.c.session_epoch)
                            .where(desk_users.c.name == name)).first()
        if row is None:
            waste_a_check(password)
            return None
        return (row.role, row.session_epoch) if check_password(password, row.password_hash) else None

    # ---- the trail -----------------------------------------------------------------------------------

    def _event(self, c, actor: str, action: str, rec: str | None, bid: str | None, decision: str | None,
               detail: dict[str, Any], before: dict | None = None, after: dict | None = None, at: str | None = None) -> None:
        c.execute(insert(desk_events).values(
            at=at or utc_now(), actor=actor, action=action, reconciliation=rec, break_id=bid, decision_id=decision,
            detail=_json(detail), before=None if before is None else _json(before),
            after=None if after is None else _json(after)))

    def _may(self, actor: str, what: str) -> str:
        role = self.role_of(actor)
        if role is None or what not in CAN[role]:
            raise Forbidden(f"{actor} ({role or 'no such user'}) may not {what}")
        return role

    def _break(self, c, rec: str, bid: str):
        row = c.execute(select(desk_breaks, desk_break_records.c.record).join(desk_break_records, _same_break)
                        .where(desk_breaks.c.reconciliation == rec, desk_breaks.c.break_id == bid)).first()
        if row is None:
            raise NotFound(f"no break {bid} in {rec}")
        return row

    def _set(self, c, actor: str, action: str, row, changes: dict[str, Any], detail: dict[str, Any],
             decision: str | None = None, at: str | None = None, guard=None) -> None:
        """Changes a break's workflow and appends the event. ``guard``: a condition the row must still meet in
        the database (checked by the UPDATE itself, so two people acting at once cannot both succeed)."""
        before = _workflow(row)
        after = {**before, **{k: v for k, v in changes.items() if k in before}}
        q = update(desk_breaks).where(desk_breaks.c.reconciliation == row.reconciliation,
                                      desk_breaks.c.break_id == row.break_id)
        if guard is not None:
            q = q.where(guard)
        if c.execute(q.values(**changes)).rowcount != 1:
            raise DeskError(f"break {row.break_id} changed meanwhile: reload the page")
        self._event(c, actor, action, row.reconciliation, row.break_id, decision, detail, before, after, at=at)

    # ---- actions -------------------------------------------------------------------------------------

    def assign(self, actor: str, rec: str, bid: str, assignee: str | None) -> None:
        self._may(actor, "assign")
        if assignee and self.role_of(assignee) not in ("operator", "approver"):
            raise DeskError(f"{assignee!r} is not an operator or approver of the desk")
        with self.wh.engine.begin() as c:
            row = self._break(c, rec, bid)
            if row.state in ("resolved", "matched"):
                raise DeskError(f"break {bid} is {row.state}: nothing to assign")
            state = row.state if row.state == "accepted" else "assigned" if assignee else "open"
            self._set(c, actor, "assign", row, {"assignee": assignee or None, "state": state},
                      {"assignee": assignee or None})

    def comment(self, actor: str, rec: str, bid: str, note: str) -> None:
        self._may(actor, "comment")
        note = _reason(note, "comment")
        with self.wh.engine.begin() as c:
            row = self._break(c, rec, bid)
            self._event(c, actor, "comment", rec, bid, None, {"comment": note}, _workflow(row), _workflow(row))

    def propose_acceptance(self, actor: str, rec: str, bid: str, reason: str, expires: date) -> str:
        self._may(actor, "propose")
        reason = _reason(reason, "reason")
        with self.wh.engine.begin() as c:
            row = self._open_for_proposal(c, rec, bid)
            start = self._effective_from(row)
            if expires < start:
                raise DeskError(f"the acceptance would expire ({expires}) before the first report that can honour "
                                f"it ({start})")
            record = json.loads(row.record)
            return self._propose(c, actor, "acceptance", rec, [row], record["left_entry_ids"],
                                 record["right_entry_ids"], reason, expires.isoformat(), start)

    def propose_match(self, actor: str, rec: str, bids: list[str], reason: str, score: int | None = None,
                      at: str | None = None) -> str:
        """A manual match of the entries of ``bids`` (breaks of one reconciliation): after approval the
        reports from the next day on record them as one match (``match_type: manual``)."""
        if actor != SYSTEM:
            self._may(actor, "propose")
        reason = _reason(reason, "reason")
        if len(set(bids)) < 1:
            raise DeskError("name the breaks to match")
        with self.wh.engine.begin() as c:
            rows = [self._open_for_proposal(c, rec, b) for b in sorted(set(bids))]
            left = sorted({i for r in rows for i in json.loads(r.record)["left_entry_ids"]})
            right = sorted({i for r in rows for i in json.loads(r.record)["right_entry_ids"]})
            if not left or not right:
                raise DeskError("a match needs entries of both sides: add a break of the other side")
            start = max(self._effective_from(r) for r in rows)
            return self._propose(c, actor, "manual_match", rec, rows, left, right, reason, None, start, score, at)

    def _open_for_proposal(self, c, rec: str, bid: str):
        row = self._break(c, rec, bid)
        if row.state in ("resolved", "matched", "accepted"):
            raise DeskError(f"break {bid} is {row.state}")
        if row.pending:
            raise DeskError(f"break {bid} already has a proposal waiting for approval ({row.pending})")
        return row

    def _effective_from(self, row) -> date:
        """The first report day that honours a decision about ``row``: for a carried break, the day after the
        last report that showed it (that report stays as anchored); for any other break, which no later day
        reports again, that day itself: a re-run of the day settles it."""
        last = date.fromisoformat(row.last_seen)
        return last + timedelta(days=1) if row.carried else last

    def _propose(self, c, actor, kind, rec, rows, left, right, reason, expires, start, score=None, at=None) -> str:
        decision = f"d-{uuid.uuid4().hex[:20]}"
        at = at or utc_now()
        c.execute(insert(desk_decisions).values(
            decision_id=decision, kind=kind, reconciliation=rec, break_ids=_json(sorted(r.break_id for r in rows)),
            left_entry_ids=_json(left), right_entry_ids=_json(right), reason=reason, expires=expires,
            effective_from=start.isoformat(), state="proposed", proposed_by=actor, proposed_at=at, score=score))
        detail = {"kind": kind, "reason": reason, "expires": expires, "breaks": sorted(r.break_id for r in rows),
                  **({"score": score} if score is not None else {})}
        for row in rows:
            self._set(c, actor, "propose", row, {"pending": decision}, detail, decision, at=at,
                      guard=and_(desk_breaks.c.pending.is_(None), desk_breaks.c.state.in_(("open", "assigned"))))
        return decision

    def approve(self, actor: str, decision: str, at: str | None = None) -> None:
        if actor != SYSTEM:
            self._may(actor, "approve")
        with self.wh.engine.begin() as c:
            d = self._decision(c, decision)
            if d.state != "proposed":
                raise DeskError(f"decision {decision} is {d.state}, not waiting for approval")
            if d.proposed_by == actor and actor != SYSTEM:
                raise Forbidden(f"{actor} proposed {decision}: a second person approves it (four-eyes)")
            at = at or utc_now()
            self._decide(c, decision, state="approved", decided_by=actor, decided_at=at)
            for bid in json.loads(d.break_ids):
                row = self._break(c, d.reconciliation, bid)
                changes = ({"state": "accepted", "accepted_until": d.expires} if d.kind == "acceptance"
                           else {"state": "matched"})
                # every break of the decision is still open and still waiting for this very decision
                self._set(c, actor, "auto_confirm" if actor == SYSTEM else "approve", row,
                          {**changes, "decision_id": decision, "pending": None},
                          {"kind": d.kind, "reason": d.reason, **({"score": d.score} if d.score is not None else {})},
                          decision, at=at, guard=and_(desk_breaks.c.pending == decision,
                                                      desk_breaks.c.state.in_(("open", "assigned"))))

    def reject(self, actor: str, decision: str, reason: str) -> None:
        self._may(actor, "reject")
        reason = _reason(reason, "reason")
        with self.wh.engine.begin() as c:
            d = self._decision(c, decision)
            if d.state != "proposed":
                raise DeskError(f"decision {decision} is {d.state}, not waiting for approval")
            at = utc_now()
            self._decide(c, decision, state="rejected", decided_by=actor, decided_at=at)
            for bid in json.loads(d.break_ids):
                row = self._break(c, d.reconciliation, bid)
                if row.pending == decision:
                    self._set(c, actor, "reject", row, {"pending": None}, {"kind": d.kind, "reason": reason},
                              decision, at=at, guard=desk_breaks.c.pending == decision)

    def _decide(self, c, decision: str, **values) -> None:
        """Moves a proposal out of ``proposed``, once: a second approve or reject at the same time fails."""
        q = update(desk_decisions).where(desk_decisions.c.decision_id == decision, desk_decisions.c.state == "proposed")
        if c.execute(q.values(**values)).rowcount != 1:
            raise DeskError(f"decision {decision} was decided meanwhile: reload the page")

    def reopen(self, actor: str, rec: str, bid: str, reason: str) -> None:
        """Ends an acceptance before its expiry."""
        self._may(actor, "reopen")
        reason = _reason(reason, "reason")
        with self.wh.engine.begin() as c:
            row = self._break(c, rec, bid)
            if row.state != "accepted":
                raise DeskError(f"break {bid} is {row.state}, not accepted")
            self._end_acceptance(c, actor, row, reason, row.last_seen)

    def _end_acceptance(self, c, actor: str, row, reason: str, last: str) -> None:
        """No report after ``last`` honours the acceptance any more (the ones up to it stay as anchored). The
        approved expiry stays as approved; the end is recorded beside it, with who ended it."""
        if last < (row.accepted_until or last):
            c.execute(update(desk_decisions).where(desk_decisions.c.decision_id == row.decision_id)
                      .values(ended_on=last, ended_by=actor))
        self._set(c, actor, "reopen", row, {"state": "assigned" if row.assignee else "open", "accepted_until": None,
                                            "decision_id": None}, {"reason": reason}, row.decision_id)

    def _decision(self, c, decision: str):
        d = c.execute(select(desk_decisions).where(desk_decisions.c.decision_id == decision)).first()
        if d is None:
            raise NotFound(f"no decision {decision}")
        return d

    # ---- reads ---------------------------------------------------------------------------------------

    def _tier_case(self, today: date):
        whens = []
        for t in self.settings.tiers[:-1]:
            conds = []
            if t.min_amount is not None:
                conds.append(desk_breaks.c.amount_key >= policy.amount_key(t.min_amount))
            if t.min_age_days is not None:
                conds.append(desk_breaks.c.first_seen <= (today - timedelta(days=t.min_age_days)).isoformat())
            whens.append((or_(*conds), t.name))
        last = self.settings.tiers[-1].name
        return case(*whens, else_=literal(last)) if whens else literal(last)

    def _filters(self, f: dict[str, str], today: date) -> list:
        c = desk_breaks.c
        where = []
        if f.get("reconciliation"):
            where.append(c.reconciliation == f["reconciliation"])
        if f.get("type"):
            where.append(c.break_type == f["type"])
        if f.get("state"):
            if f["state"] == "new":
                where.append(and_(c.state == "open", c.first_seen == c.last_seen))
            elif f["state"] == "open":
                where.append(and_(c.state == "open", c.first_seen < c.last_seen))
            elif f["state"] == "unresolved":
                where.append(c.state.in_(("open", "assigned", "accepted")))
            else:
                where.append(c.state == f["state"])
        if f.get("day"):
            where.append(and_(c.first_seen <= f["day"], c.last_seen >= f["day"]))
        if f.get("assignee"):
            where.append(c.assignee == f["assignee"])
        if f.get("asset"):
            where.append(c.asset == f["asset"])
        if f.get("priority"):
            where.append(self._tier_case(today) == f["priority"])
        for bound, op in (("min", "__ge__"), ("max", "__le__")):
            if f.get(bound):
                where.append(getattr(c.amount_key, op)(policy.amount_key(_amount(f[bound], bound))))
        return where

    def list_breaks(self, f: dict[str, str], sort: str = "amount", order: str = "desc", page: int = 1,
                    per_page: int = PAGE, today: date | None = None) -> tuple[list[dict[str, Any]], int]:
        """One page of breaks matching the filters, and how many match in all.

        The page's keys are found first, on an index of the sort column (ties by reconciliation and id, in the
        same direction, so the index gives the order and the walk stops after the page); only then are the
        page's rows read. A filter that matches few breaks is read through its own index and sorted instead
        (``|| ''`` keeps the planner off the sort column's index, which would visit every break to find them)."""
        today = today or datetime.now(timezone.utc).date()
        if sort not in SORTS:
            raise DeskError(f"sort by one of {', '.join(SORTS)}")
        b = desk_breaks.c
        where = self._filters(f, today)
        with self.wh.engine.connect() as c:
            total = c.execute(select(func.count()).select_from(desk_breaks).where(*where)).scalar()
            col = SORTS[sort]
            if total < FEW and any(v for k, v in f.items() if k != "state"):
                col = col.op("||")("")
            keys = [col, b.reconciliation, b.break_id]
            order_by = [k.desc() if order == "desc" else k.asc() for k in keys]
            page_keys = (select(b.reconciliation, b.break_id).where(*where).order_by(*order_by).limit(per_page)
                         .offset((max(page, 1) - 1) * per_page).subquery())
            tier = self._tier_case(today).label("priority")
            q = (select(desk_breaks, tier).join(page_keys, and_(page_keys.c.reconciliation == b.reconciliation,
                                                                page_keys.c.break_id == b.break_id))
                 .order_by(*[k.desc() if order == "desc" else k.asc() for k in (SORTS[sort], b.reconciliation, b.break_id)]))
            rows = [self._row(r, today) for r in c.execute(q)]
        return rows, total

    def iter_breaks(self, f: dict[str, str], today: date | None = None) -> Iterator[dict[str, Any]]:
        """Every break matching the filters, for an export (read a page at a time)."""
        page = 1
        while True:
            rows, _ = self.list_breaks(f, "break_id", "asc", page, 5000, today)
            yield from rows
            if len(rows) < 5000:
                return
            page += 1

    def _row(self, r, today: date) -> dict[str, Any]:
        d = dict(r._mapping)
        tier = next(t for t in self.settings.tiers if t.name == d["priority"])
        due = policy.due_at(tier, d["first_seen"])
        d["age_days"] = (today - date.fromisoformat(d["first_seen"])).days
        d["due"] = due.isoformat().replace("+00:00", "Z")
        d["overdue"] = d["state"] in ("open", "assigned") and datetime.combine(
            today, datetime.max.time(), timezone.utc) > due
        d["shown_state"] = ("new" if d["state"] == "open" and d["first_seen"] == d["last_seen"] else d["state"])
        return d

    def detail(self, rec: str, bid: str, today: date | None = None) -> dict[str, Any]:
        today = today or datetime.now(timezone.utc).date()
        with self.wh.engine.connect() as c:
            row = c.execute(select(desk_breaks, desk_break_records.c.record, self._tier_case(today).label("priority"))
                            .join(desk_break_records, _same_break)
                            .where(desk_breaks.c.reconciliation == rec, desk_breaks.c.break_id == bid)).first()
            if row is None:
                raise NotFound(f"no break {bid} in {rec}")
            out = self._row(row, today)
            out.pop("record")
            out["record_obj"] = json.loads(row.record)
            out["history"] = [dict(e._mapping) for e in c.execute(
                select(desk_events).where(desk_events.c.reconciliation == rec, desk_events.c.break_id == bid)
                .order_by(desk_events.c.seq))]
            out["suggestions"] = self._suggestions(c, row)
            rec_obj = out["record_obj"]
            out["entries"] = {side: [self._entry(c, rec, s, i) for i in rec_obj[f"{side}_entry_ids"]]
                              for side, s in (("left", "L"), ("right", "R"))}
            corr = rec_obj.get("correlation_id")
            out["payment"] = self._payment(c, corr) if corr else []
            out["pending_decision"] = (dict(self._decision(c, row.pending)._mapping) if row.pending else None)
        return out

    def _entry(self, c, rec: str, side: str, entry_id: str) -> dict[str, Any]:
        """The entry as the reconciliation used it (kept with the open breaks), else its latest snapshot."""
        got = c.execute(text("SELECT entry FROM open_breaks WHERE name = :n AND side = :s AND entry_id = :i"),
                        {"n": rec, "s": side, "i": entry_id}).scalar() if _has_table(c, "open_breaks") else None
        if got:
            return json.loads(got)
        row = c.execute(text("SELECT * FROM ledger_snapshots WHERE entry_id = :i ORDER BY snapshot_date DESC LIMIT 1"),
                        {"i": entry_id}).first()
        if row is None:
            return {"entry_id": entry_id, "missing": "not in the warehouse"}
        return _entry_row(row)

    def _payment(self, c, corr: str) -> list[dict[str, Any]]:
        rows = c.execute(text("SELECT * FROM ledger_snapshots WHERE correlation_id = :c "
                              "ORDER BY ledger, snapshot_date, entry_id LIMIT 200"), {"c": corr})
        return [_entry_row(r) for r in rows]

    def decisions(self, state: str | None = None, since: str | None = None, until: str | None = None) -> list[dict]:
        q = select(desk_decisions).order_by(desk_decisions.c.proposed_at)
        if state:
            q = q.where(desk_decisions.c.state == state)
        return self._in_period(q, desk_decisions.c.proposed_at, since, until)

    def events(self, since: str | None = None, until: str | None = None) -> list[dict]:
        return self._in_period(select(desk_events).order_by(desk_events.c.seq), desk_events.c.at, since, until)

    def _in_period(self, q, when, since: str | None, until: str | None) -> list[dict]:
        """The rows of ``q`` whose ``when`` (UTC text) is in [since, until)."""
        if since:
            q = q.where(when >= since)
        if until:
            q = q.where(when < until)
        with self.wh.engine.connect() as c:
            return [dict(r._mapping) for r in c.execute(q)]

    def aging(self, today: date | None = None) -> list[dict[str, Any]]:
        """Unresolved breaks per reconciliation, priority and age bucket."""
        today = today or datetime.now(timezone.utc).date()
        out: dict[tuple, dict[str, Any]] = {}
        for r in self.iter_breaks({"state": "unresolved"}, today):
            age = r["age_days"]
            bucket = "0 days" if age == 0 else "1 day" if age == 1 else "2-6 days" if age < 7 else "7+ days"
            key = (r["reconciliation"], r["priority"], bucket)
            slot = out.setdefault(key, {"reconciliation": key[0], "priority": key[1], "age": bucket, "breaks": 0,
                                        "overdue": 0})
            slot["breaks"] += 1
            slot["overdue"] += r["overdue"]
        return [out[k] for k in sorted(out)]

    def days(self) -> list[str]:
        with self.wh.engine.connect() as c:
            if not _has_table(c, "reconciliation_results"):
                return []
            return [r[0] for r in c.execute(text("SELECT DISTINCT day FROM reconciliation_results ORDER BY day DESC"))]

    # ---- suggestions -------------------------------------------------------------------------------

    def _one_sided(self, c, name: str, rows) -> list[tuple[str, dict[str, Any]]]:
        """(break id, entry) of one-sided breaks whose single entry is kept with the open breaks."""
        out = []
        if not rows or not _has_table(c, "open_breaks"):
            return out
        for r in rows:
            rec = json.loads(r.record)
            side, ids = ("L", rec["left_entry_ids"]) if r.break_type == "missing_right" else ("R", rec["right_entry_ids"])
            if len(ids) != 1:
                continue
            entry = c.execute(text("SELECT entry FROM open_breaks WHERE name = :n AND side = :s AND entry_id = :i"),
                              {"n": name, "s": side, "i": ids[0]}).scalar()
            if entry:
                out.append((r.break_id, json.loads(entry)))
        return out

    def _suggestions(self, c, row) -> list[dict[str, Any]]:
        """Up to ``settings.suggestions`` counterparts of a one-sided open break, made when asked: the other
        side's open one-sided breaks in its asset, the ``window`` nearest in amount above and below (an index
        range each), scored (``policy.score``), best first."""
        if row.break_type not in ONE_SIDED or row.state not in ("open", "assigned"):
            return []
        (this,) = self._one_sided(c, row.reconciliation, [row]) or [(None, None)]
        if this is None:
            return []
        b = desk_breaks.c
        other = "missing_left" if row.break_type == "missing_right" else "missing_right"
        base = (select(desk_breaks, desk_break_records.c.record).join(desk_break_records, _same_break)
                .where(b.reconciliation == row.reconciliation, b.break_type == other, b.asset == row.asset,
                       b.state.in_(("open", "assigned"))))
        near = [*c.execute(base.where(b.amount_key >= row.amount_key).order_by(b.amount_key).limit(WINDOW)),
                *c.execute(base.where(b.amount_key < row.amount_key).order_by(b.amount_key.desc()).limit(WINDOW))]
        by_id = {r.break_id: r for r in near}
        found = policy.suggest([this], self._one_sided(c, row.reconciliation, near), self.settings.suggestions, WINDOW)
        return [{"candidate_id": cid, "score": score, "explain": explain, "break_type": by_id[cid].break_type,
                 "amount": by_id[cid].amount, "asset": by_id[cid].asset, "candidate_state": by_id[cid].state}
                for cid, score, explain in found.get(this[0], [])]

    # ---- the nightly run -----------------------------------------------------------------------------

    def sync(self, day: str, breaks: dict[str, list[dict[str, Any]]], carried: Iterable[str],
             applied: Iterable[str] = ()) -> dict[str, int]:
        """Brings the desk in step with ``day``'s report: its breaks are (re)opened or updated; a carried break
        that its reconciliation's latest day no longer reports is resolved (matched, or fixed at the source);
        acceptances past their expiry reopen; an approved manual match that a report in its time could not
        apply (its entries were matched otherwise meanwhile) lapses and its breaks reopen; a proposal whose
        break is resolved is withdrawn. ``carried``: the reconciliations that carry their one-sided breaks;
        ``applied``: the decisions the day's records honour. With auto-confirm on, two breaks that are each
        other's best suggestion at or above the threshold become a match made by the system."""
        carried, applied = set(carried), set(applied)
        counts = {"opened": 0, "updated": 0, "resolved": 0, "reopened": 0, "lapsed": 0, "auto_confirmed": 0}
        at = utc_now()
        for name, recs in breaks.items():
            with self.wh.engine.begin() as c:
                self._sync_one(c, day, name, recs, name in carried, applied, counts, at)
            if name in carried and self.settings.auto_confirm:
                counts["auto_confirmed"] += self._auto_confirm(name)
        with self.wh.engine.begin() as c:  # the planner's figures for the lists (which index a filter takes)
            c.execute(text("ANALYZE desk_breaks"))
        return counts

    def _sync_one(self, c, day: str, name: str, recs: list[dict[str, Any]], pair: bool, applied: set[str],
                  counts: dict, at: str) -> None:
        b = desk_breaks.c
        existing = {r.break_id: r for r in c.execute(select(desk_breaks).where(b.reconciliation == name))}
        latest = max([r.last_seen for r in existing.values()] + [day])
        new_rows, new_records, moved, records = [], [], [], []
        for rec in recs:
            bid = rec["break_id"]
            stake = at_stake(rec)
            first = rec.get("first_seen") or day
            values = (rec["break_type"], rec.get("asset"), f"{stake:f}", policy.amount_key(stake), rec.get("correlation_id"))
            row = existing.get(bid)
            if row is None:
                new_rows.append((name, bid, *values, first, day, "open", pair and rec["break_type"] in ONE_SIDED))
                new_records.append((name, bid, _json(rec)))
                continue
            counts["updated"] += 1
            if day >= row.last_seen:  # the latest report states the break: its figures and record
                moved.append((*values, min(row.first_seen, first), day, name, bid))
                records.append((_json(rec), name, bid))
            elif first < row.first_seen:
                moved.append((row.break_type, row.asset, row.amount, row.amount_key, row.correlation_id, first,
                              row.last_seen, name, bid))
            if row.state == "resolved" and day >= row.resolved_on:  # reported again since it was resolved
                self._set(c, SYSTEM, "reopen", row, {"state": "assigned" if row.assignee else "open",
                                                     "resolution": None, "resolved_on": None},
                          {"reason": f"reported again on {day}"}, at=at)
                counts["reopened"] += 1
            elif row.state == "accepted" and row.accepted_until and row.accepted_until < day and day >= row.last_seen:
                self._end_acceptance(c, SYSTEM, row, f"the acceptance expired on {row.accepted_until}", day)
                counts["reopened"] += 1
            elif row.state == "matched" and row.decision_id not in applied and day >= self._starts(c, row.decision_id):
                # in force, yet the day could not apply it: its entries no longer form those breaks
                self._lapse(c, row.decision_id, day, at)
                counts["lapsed"] += 1
        bulk_insert(c, "desk_breaks", ("reconciliation", "break_id", "break_type", "asset", "amount", "amount_key",
                                       "correlation_id", "first_seen", "last_seen", "state", "carried"), new_rows)
        bulk_insert(c, "desk_break_records", ("reconciliation", "break_id", "record"), new_records)
        _many(c, "UPDATE desk_breaks SET break_type = ?, asset = ?, amount = ?, amount_key = ?, correlation_id = ?, "
                 "first_seen = ?, last_seen = ? WHERE reconciliation = ? AND break_id = ?", moved)
        _many(c, "UPDATE desk_break_records SET record = ? WHERE reconciliation = ? AND break_id = ?", records)
        counts["opened"] += len(new_rows)
        reported = {r["break_id"] for r in recs}
        for bid in existing:
            if bid in reported:
                continue
            row = self._break(c, name, bid)  # as it is now (a lapse above may have reopened it)
            if row.state == "resolved" or (row.state == "matched" and row.resolved_on):
                continue
            # gone from a re-run of the day it was last reported on, or (carried) from the latest day
            if row.last_seen == day or (row.carried and day >= latest and row.last_seen < day):
                if row.state == "matched" and row.decision_id not in applied:
                    self._lapse(c, row.decision_id, day, at)  # matched by other means: the decision did nothing
                    counts["lapsed"] += 1
                    row = self._break(c, name, bid)
                if row.pending:
                    self._withdraw(c, row.pending, f"break {bid} was resolved on {day}", at)
                    row = self._break(c, name, bid)
                how = self._how_resolved(c, name, row, day, applied)
                state = "matched" if row.state == "matched" else "resolved"
                self._set(c, SYSTEM, "resolve", row, {"state": state, "resolution": how, "resolved_on": day},
                          {"resolution": how}, at=at)
                counts["resolved"] += 1

    def _starts(self, c, decision: str | None) -> str:
        d = c.execute(select(desk_decisions.c.effective_from).where(desk_decisions.c.decision_id == decision)).scalar()
        return d or "9999-12-31"

    def _lapse(self, c, decision: str, day: str, at: str) -> None:
        """An approved manual match that a report in force could not apply: it lapses, its breaks reopen."""
        c.execute(update(desk_decisions).where(desk_decisions.c.decision_id == decision)
                  .values(state="lapsed", ended_on=day, ended_by=SYSTEM))
        for r in c.execute(select(desk_breaks).where(desk_breaks.c.decision_id == decision)).fetchall():
            self._set(c, SYSTEM, "lapse", r, {"state": "assigned" if r.assignee else "open", "decision_id": None,
                                              "resolution": None, "resolved_on": None},
                      {"reason": f"the report of {day} could not apply it: its entries were matched otherwise"},
                      decision, at=at)

    def _withdraw(self, c, decision: str, reason: str, at: str) -> None:
        c.execute(update(desk_decisions).where(desk_decisions.c.decision_id == decision,
                                               desk_decisions.c.state == "proposed")
                  .values(state="withdrawn", decided_by=SYSTEM, decided_at=at))
        for r in c.execute(select(desk_breaks).where(desk_breaks.c.pending == decision)).fetchall():
            self._set(c, SYSTEM, "withdraw", r, {"pending": None}, {"reason": reason}, decision, at=at)

    def _how_resolved(self, c, name: str, row, day: str, applied: set[str]) -> str:
        if row.state == "matched" and row.decision_id in applied:
            return f"manual match {row.decision_id}, reported on {day}"
        if not _has_table(c, "open_breaks"):
            return f"no longer reported on {day} (fixed at the source)"
        rec = json.loads(row.record)
        q = text("SELECT count(*) FROM open_breaks WHERE name = :n AND closed_on = :d AND entry_id IN :ids")
        closed = c.execute(q.bindparams(bindparam("ids", expanding=True)),
                           {"n": name, "d": day, "ids": rec["left_entry_ids"] + rec["right_entry_ids"]}).scalar()
        return f"matched on {day}" if closed else f"no longer reported on {day} (fixed at the source)"

    def _auto_confirm(self, name: str) -> int:
        """Every one-sided open break's suggestions, made at once (``policy.suggest``: one sort per side and
        asset); a pair that is each other's best at or above the threshold is matched by the system."""
        b = desk_breaks.c
        with self.wh.engine.connect() as c:
            rows = c.execute(select(desk_breaks, desk_break_records.c.record).join(desk_break_records, _same_break)
                             .where(b.reconciliation == name, b.break_type.in_(ONE_SIDED),
                                    b.state.in_(("open", "assigned")), b.pending.is_(None))).fetchall()
            sides = {k: self._one_sided(c, name, [r for r in rows if r.break_type == k]) for k in ONE_SIDED}
        best = {}
        for this, other in (("missing_right", "missing_left"), ("missing_left", "missing_right")):
            for bid, found in policy.suggest(sides[this], sides[other], 1, WINDOW).items():
                if found:
                    best[bid] = found[0][:2]
        done = 0
        for bid, (cid, s) in sorted(best.items()):
            if s >= self.settings.auto_confirm_min_score and best.get(cid, (None,))[0] == bid and bid < cid:
                try:
                    d = self.propose_match(SYSTEM, name, [bid, cid], f"auto-confirmed: score {s}", score=s)
                    self.approve(SYSTEM, d)
                    done += 1
                except DeskError:
                    continue  # one of the two is no longer open (a person acted on it meanwhile)
        return done


WINDOW = 8  # candidates looked at on either side of a break's amount
_same_break = and_(desk_break_records.c.reconciliation == desk_breaks.c.reconciliation,
                   desk_break_records.c.break_id == desk_breaks.c.break_id)


def _many(c, sql: str, rows: list[tuple]) -> None:
    """An UPDATE for many rows through the driver's executemany (``?`` marks; ``%s`` on PostgreSQL)."""
    if rows:
        c.exec_driver_sql(sql if c.dialect.name == "sqlite" else sql.replace("?", "%s"), rows)


def _reason(text_: str, what: str) -> str:
    text_ = (text_ or "").strip()
    if not text_:
        raise DeskError(f"a {what} is required")
    if len(text_) > 2000:
        raise DeskError(f"the {what} is longer than 2000 characters")
    return text_


def _amount(raw: str, what: str) -> Decimal:
    """An amount bound of a filter: plain digits only (no exponent, so no giant numbers from a short text)."""
    import re

    raw = raw.strip()
    if not re.fullmatch(r"[0-9]{1,96}(\.[0-9]{1,96})?", raw):
        raise DeskError(f"{what}: {raw!r} is not an amount (digits, optionally a point and decimals)")
    return Decimal(raw)


_SEEN_TABLES: set[tuple[str, str]] = set()


def _has_table(c, name: str) -> bool:
    """Whether the warehouse has the table (asked of the database once it does: tables are never dropped)."""
    from sqlalchemy import inspect

    key = (str(c.engine.url), name)
    if key not in _SEEN_TABLES and inspect(c).has_table(name):
        _SEEN_TABLES.add(key)
    return key in _SEEN_TABLES


def _entry_row(row) -> dict[str, Any]:
    d = {k: (v if isinstance(v, (str, int, type(None))) else str(v)) for k, v in row._mapping.items()}
    for k in ("position", "attributes"):
        if isinstance(d.get(k), str):
            try:
                d[k] = json.loads(d[k])
            except ValueError:
                pass
    return d
