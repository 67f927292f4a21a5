"""Daily reconciliation and audit report (plain Python; the Dagster assets call these).

For a day: each configured ledger's published snapshot against the event log's latest version of
the same ledger's entries (did the bridge deliver everything, unchanged?), keyed by ``entry_id``;
then every configured pair of ledgers by its rules. Results replace the day in the warehouse and
are written as a report folder (ARCHITECTURE section 4) per run under ``<reports>/<day>/<name>``.
"""

from __future__ import annotations

import itertools
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from decimal import Decimal
from typing import Any, NamedTuple

import msgspec
from sqlalchemy import text

from .config import LedgerConfig
from .model import CanonicalEntry, decode_entry
from .money import EXACT, totals_by_asset
from .commitment import (DECISIONS_FILE, FORMAT, RECORD_FILES, UNLISTED, Leaves, audit_leaf, canonical,
                         decision_leaf, file_sha256, payment_leaf, pretty, summary_leaf)
from .desk.decisions import honour
from .desk.policy import DeskSettings
from .reconcile import Rules, reconcile
from .reconcile.output import open_breaks, replacing, write_records
from .warehouse import Warehouse, bulk_insert
from .warehouse.state import snapshot_and_event_log

BRIDGE_RULES = Rules(key="entry_id", direction="same", tolerant_matching=False, duplicate_key=("entry_id",),
                     time_window_seconds=36500 * 86400, batch_members=None)


_FILTER_KEYS = ("account", "direction", "asset", "status")


@dataclass(frozen=True)
class PairConfig:
    name: str
    left: str
    right: str
    rules: Rules
    # which entries of each side take part, e.g. {"account": ["GL-1100"], "direction": "debit"}
    left_filter: dict[str, tuple[str, ...]] | None = None
    right_filter: dict[str, tuple[str, ...]] | None = None

    def select(self, side: str, entries: list[CanonicalEntry]) -> list[CanonicalEntry]:
        f = self.left_filter if side == "L" else self.right_filter
        if not f:
            return entries
        return [e for e in entries if all(getattr(e, k) in v for k, v in f.items())]


def _filter(name: str, d: dict[str, Any] | None) -> dict[str, tuple[str, ...]] | None:
    if not d:
        return None
    unknown = set(d) - set(_FILTER_KEYS)
    if unknown:
        raise ValueError(f"reconciliation {name}: unknown filter keys {sorted(unknown)} (known: {_FILTER_KEYS})")
    return {k: tuple(v) if isinstance(v, (list, tuple)) else (v,) for k, v in d.items()}


def pairs_from(doc: dict[str, Any]) -> list[PairConfig]:
    return [PairConfig(p["name"], p["left"], p["right"], Rules.from_dict(p.get("rules")),
                       _filter(p["name"], p.get("left_filter")), _filter(p["name"], p.get("right_filter")))
            for p in doc.get("reconciliations", [])]


def run_day(wh: Warehouse, ledgers: list[LedgerConfig], pairs: list[PairConfig], day: date,
            reports: Path, desk_settings: DeskSettings | None = None) -> dict[str, Any]:
    """Reconciles ``day`` and writes its report folder ``<reports>/<day>`` whole: built in a fresh sibling
    folder (with the day's Data Docs copied in) that replaces the previous one only once complete."""
    key = day.isoformat()
    with replacing(reports / key) as folder:
        if (reports / key / "data_docs").is_dir():
            shutil.copytree(reports / key / "data_docs", folder / "data_docs", symlinks=True)
        audit, breaks = _run_day(wh, ledgers, pairs, day, folder)
    from .desk.store import Desk

    # the desk follows the report once it is in place (idempotent: a re-run of the day syncs again)
    audit["desk"] = Desk(wh, desk_settings).sync(key, breaks, carried=[p.name for p in pairs],
                                                 applied=audit.pop("_applied"))
    return audit


def _run_day(wh: Warehouse, ledgers: list[LedgerConfig], pairs: list[PairConfig], day: date,
             folder: Path) -> tuple[dict[str, Any], dict[str, list]]:
    key = day.isoformat()
    leaves = Leaves()
    results: dict[str, Any] = {}
    breaks: dict[str, list] = {}  # each reconciliation's break records (its matches are only written)
    decided: list[dict[str, Any]] = []  # the desk's decisions the day's records honour
    count = 0
    stored: list[str] = []  # the reconciliations whose files reconciliation_results takes, at the end
    carried: list[_OpenChange] = []  # each pair's changes to open_breaks, also made at the end

    def written(name: str, r, left: list[CanonicalEntry], right: list[CanonicalEntry], rules: Rules) -> dict[str, Any]:
        nonlocal count
        (folder / name).mkdir()
        w = write_records(folder / name, r, left, right, rules, key, name)
        leaves.extend(w.leaf_hashes)
        leaves.add(summary_leaf(key, name, w.summary))
        breaks[name] = r.breaks
        count += len(r.matches) + len(r.breaks)
        stored.append(name)
        return w.summary

    snapshots: dict[str, list[CanonicalEntry]] = {}
    event_log: dict[str, list[CanonicalEntry]] = {}
    for lc in ledgers:
        snapshots[lc.name], event_log[lc.name] = snapshot_and_event_log(wh, lc.name, day)
    orphaned: dict[str, list[CanonicalEntry]] = {}
    for lc in ledgers:
        delivered = event_log.pop(lc.name)
        # chain legs published and then orphaned by a reorg are gone from the source's snapshot; the pairs
        # get them from the event log so that they are reported as ``orphaned``, not silently missing
        orphaned[lc.name] = [e for e in delivered if e.status == "orphaned"]
        name = f"bridge_{lc.name}"
        r = reconcile(snapshots[lc.name], delivered, BRIDGE_RULES)
        decided += honour(wh, name, key, r)
        results[name] = written(name, r, snapshots[lc.name], delivered, BRIDGE_RULES)
    for p in pairs:
        carried_left, carried_right, first_seen = _carried(wh, p.name, key)
        left = p.select("L", snapshots.get(p.left, []) + orphaned.get(p.left, []))
        right = p.select("R", snapshots.get(p.right, []) + orphaned.get(p.right, []))
        # an entry carried in that the day's own input holds again (e.g. a chain leg mined again later) is the
        # day's version: each entry is in one record only
        left += _not_in(carried_left, left)
        right += _not_in(carried_right, right)
        r = reconcile(left, right, p.rules)
        decided += honour(wh, p.name, key, r)
        _age(r, first_seen, day)
        carried.append(_open_change(p.name, r, {e.entry_id: e for e in left}, {e.entry_id: e for e in right},
                                    first_seen))
        results[p.name] = {**written(p.name, r, left, right, p.rules),
                           "carried_in": len(carried_left) + len(carried_right)}
    payments = {"total": 0, "complete": 0, "missing_leg": 0, "drifting": 0}
    with open(folder / "payments.jsonl", "xb") as f:
        for leg in payment_legs(snapshots):  # one payment at a time: written, committed, counted
            f.write(canonical(leg) + b"\n")
            leaves.add(payment_leaf(key, leg))
            payments["total"] += 1
            payments[leg["status"]] += 1
            payments["drifting"] += leg["drifting"]
    decided.sort(key=lambda d: d["decision_id"])
    with open(folder / DECISIONS_FILE, "xb") as f:
        for d in decided:
            f.write(canonical(d) + b"\n")
            leaves.add(decision_leaf(key, d))
    aging: dict[str, int] = {}
    for recs in breaks.values():
        for rec in recs:
            if rec["break_type"] in ("missing_left", "missing_right"):
                age = rec.get("age_days", 0)
                bucket = "0 days" if age == 0 else "1 day" if age == 1 else "2-6 days" if age < 7 else "7+ days"
                aging[bucket] = aging.get(bucket, 0) + 1
    amounts = {lc.name: totals_by_asset(snapshots[lc.name]) for lc in ledgers}
    audit = {"format": FORMAT, "day": key, "records": count,
             "reconciliations": results, "open_breaks_by_age": aging, "amounts": amounts,
             "open_breaks": open_breaks(breaks, key),
             "payments": payments,
             "decisions": {"manual_match": sum(d["kind"] == "manual_match" for d in decided),
                           "acceptance": sum(d["kind"] == "acceptance" for d in decided)},
             "files": committed_files(folder)}
    leaves.add(audit_leaf(audit))
    audit["merkle_root"] = leaves.root()
    with open(folder / "audit.json", "xb") as f:
        f.write(pretty(audit))
    # the warehouse takes the day once its report is whole, in one transaction: a run that fails before
    # (or here) leaves open_breaks and reconciliation_results as the report in place says, and the next
    # day carries in what that report left open (only a failure of the folder swap after it is not covered)
    with wh.engine.begin() as c:
        for change in carried:
            _update_open(c, key, change)
        _store(c, key, folder, stored)
    audit["_applied"] = [d["decision_id"] for d in decided]  # for the desk, not part of the report
    return audit, breaks


def _not_in(carried: list[CanonicalEntry], today: list[CanonicalEntry]) -> list[CanonicalEntry]:
    if not carried:
        return carried
    ids = {e.entry_id for e in today}
    return [e for e in carried if e.entry_id not in ids]


def finish_report(folder: Path, anchor: bool = True) -> dict[str, Any]:
    """The report's last step: anchor the day's root and report version on chain (unless ``anchor`` is off),
    record the anchor in audit.json and render the index page from audit.json."""
    from .anchor import anchor_report
    from .reconcile.output import render_index, replace_file

    audit = json.loads((folder / "audit.json").read_text())
    if anchor:
        audit["anchor"] = anchor_report(audit["day"], audit)
    else:
        audit.pop("anchor", None)
    replace_file(folder / "audit.json", pretty(audit))
    replace_file(folder / "index.html", render_index(audit).encode())
    return audit


def committed_files(folder: Path) -> dict[str, str]:
    """Every file of the day folder but audit.json and index.html, with its SHA-256: the list is part of
    audit.json, so the commitment covers the bytes of pages and Data Docs, and an edit anywhere is pinned
    to its file."""
    out = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() or p.is_symlink()):
        rel = path.relative_to(folder).as_posix()
        if rel not in UNLISTED:
            if path.is_symlink():
                raise ValueError(f"{rel}: a symlink in the report folder (reports hold files only)")
            out[rel] = file_sha256(path)
    return out


def payment_legs(snapshots: dict[str, list[CanonicalEntry]]) -> Iterator[dict[str, Any]]:
    """The multi-ledger view, one payment at a time in correlation id order: per correlation id, each
    ledger's legs with status, amount and drift.

    ``complete`` when every ledger that carries correlated entries that day has a leg of the payment;
    otherwise the missing ledgers are named. Drift is per leg against the amount of the first ledger
    in configuration order (the corridor: sender bank, chain, beneficiary bank) in the same asset (legs in other assets are listed without a drift: converting them is the pair rules' job).
    """
    carriers = sorted(name for name, entries in snapshots.items() if any(e.correlation_id for e in entries))
    # per correlation id, its ledgers in configuration order (the order they are first seen in here)
    by_corr: dict[str, dict[str, list[CanonicalEntry]]] = {}
    for name, entries in snapshots.items():
        for e in entries:
            if corr := e.correlation_id:
                legs = by_corr.get(corr)
                if legs is None:
                    by_corr[corr] = {name: [e]}
                elif (same := legs.get(name)) is None:
                    legs[name] = [e]
                else:
                    same.append(e)
    for corr in sorted(by_corr):
        legs = by_corr.pop(corr)
        # the reference leg: the first ledger in configuration order (the corridor's order)
        first = next(iter(legs.values()))[0]
        reference = Decimal(first.amount)
        rows = []
        drifting = False
        for ledger in sorted(legs):
            for e in legs[ledger]:
                drift = None
                if e.asset == first.asset:
                    d = EXACT.subtract(Decimal(e.amount), reference)
                    drift, drifting = f"{d:f}", drifting or d != 0
                rows.append({"ledger": ledger, "entry_id": e.entry_id, "status": e.status, "asset": e.asset,
                             "amount": e.amount, "direction": e.direction, "drift": drift})
        missing = [name for name in carriers if name not in legs]
        yield {"correlation_id": corr, "status": "complete" if not missing else "missing_leg",
               "missing_ledgers": missing, "legs": rows, "drifting": drifting}


CARRIED_TYPES = ("missing_left", "missing_right")
_OPEN_DDL = ("CREATE TABLE IF NOT EXISTS open_breaks (name TEXT NOT NULL, side TEXT NOT NULL, entry_id TEXT NOT NULL, "
             "entry TEXT NOT NULL, first_seen TEXT NOT NULL, closed_on TEXT, PRIMARY KEY (name, side, entry_id))")


def _carried(wh: Warehouse, name: str, day: str):
    """Entries of breaks left open before ``day``: (left entries, right entries, entry_id -> first day)."""
    with wh.engine.begin() as c:
        c.execute(text(_OPEN_DDL))
        rows = c.execute(text("SELECT side, entry, first_seen FROM open_breaks WHERE name = :n AND first_seen < :d "
                              "AND (closed_on IS NULL OR closed_on >= :d) ORDER BY entry_id"),
                         {"n": name, "d": day}).fetchall()
    left, right, first = [], [], {}
    for side, entry, seen in rows:
        e = decode_entry(entry)
        (left if side == "L" else right).append(e)
        first[e.entry_id] = seen
    return left, right, first


def _age(r, first_seen: dict[str, str], day: date) -> None:
    """Open breaks carried in from earlier days say since when (optional fields of the contract)."""
    for b in r.breaks:
        ids = b["left_entry_ids"] + b["right_entry_ids"]
        seen = [first_seen[i] for i in ids if i in first_seen]
        if seen:
            b["first_seen"] = min(seen)
            b["age_days"] = (day - date.fromisoformat(min(seen))).days


class _OpenChange(NamedTuple):
    name: str
    opened: list[tuple[str, str, str]]  # (side, entry_id, entry) of the breaks this day opens
    closed: list[str]  # entry ids carried in that this day matches


def _open_change(name: str, r, left: dict, right: dict, first_seen: dict) -> _OpenChange:
    from .model import encode_entry

    opened = []
    for b in r.breaks:  # a missing counterpart can still arrive: its entry is carried until it is matched
        if b["break_type"] in CARRIED_TYPES:
            for side, ids, pool in (("L", b["left_entry_ids"], left), ("R", b["right_entry_ids"], right)):
                opened += [(side, i, encode_entry(pool[i]).decode()) for i in ids if i not in first_seen]
    matched = {i for m in r.matches for i in m.left_entry_ids + m.right_entry_ids}
    return _OpenChange(name, opened, sorted(matched & set(first_seen)))


def _update_open(c, day: str, change: _OpenChange) -> None:
    """Idempotent per day: forget what this day opened or closed before, then record it again."""
    name, opened = change.name, change.opened
    c.execute(text(_OPEN_DDL))
    # a later day may have closed an entry this day opened: re-running this day keeps that
    later = c.execute(text("SELECT side, entry_id, closed_on FROM open_breaks WHERE name = :n AND first_seen = :d "
                           "AND closed_on > :d"), {"n": name, "d": day}).fetchall()
    c.execute(text("DELETE FROM open_breaks WHERE name = :n AND first_seen = :d"), {"n": name, "d": day})
    c.execute(text("UPDATE open_breaks SET closed_on = NULL WHERE name = :n AND closed_on = :d"),
              {"n": name, "d": day})
    # an entry closed on an earlier day that is open again (its version changed, it was re-mined) starts
    # a new open row; the closed one goes
    again = [{"n": name, "s": side, "i": i, "d": day} for side, i, _ in opened]
    if again:
        c.execute(text("DELETE FROM open_breaks WHERE name = :n AND side = :s AND entry_id = :i "
                       "AND closed_on IS NOT NULL AND closed_on <= :d"), again)
    bulk_insert(c, "open_breaks", ("name", "side", "entry_id", "entry", "first_seen"),
                [(name, side, i, entry, day) for side, i, entry in opened])
    closed = [{"d": day, "n": name, "i": i} for i in change.closed]
    if closed:
        c.execute(text("UPDATE open_breaks SET closed_on = :d WHERE name = :n AND entry_id = :i"), closed)
    kept = [{"c": when, "n": name, "s": side, "i": i, "d": day} for side, i, when in later]
    if kept:
        c.execute(text("UPDATE open_breaks SET closed_on = :c WHERE name = :n AND side = :s AND entry_id = :i "
                       "AND first_seen = :d"), kept)


def _store(c, day: str, folder: Path, names: list[str]) -> None:
    """Replace the day's results in ``reconciliation_results`` (on the day's transaction ``c``): (day, name,
    record id, match or break type, the record's canonical line as its report file holds it). The rows are
    read from the reconciliations' ``matches.jsonl`` and ``breaks.jsonl``, a batch at a time: no record's
    text is held from its reconciliation to the end of the day."""
    c.execute(text("CREATE TABLE IF NOT EXISTS reconciliation_results (day TEXT NOT NULL, name TEXT NOT NULL, "
                   "record_id TEXT NOT NULL, kind TEXT NOT NULL, record TEXT NOT NULL, "
                   "PRIMARY KEY (day, name, record_id))"))
    c.execute(text("DELETE FROM reconciliation_results WHERE day = :d"), {"d": day})
    columns = ("day", "name", "record_id", "kind", "record")
    for name in names:
        for file, head in ((RECORD_FILES["match"], _match_head), (RECORD_FILES["break"], _break_head)):
            with open(folder / name / file, "rb") as f:
                rows = ((day, name, *head(line), line[:-1].decode()) for line in f)
                while batch := list(itertools.islice(rows, _STORE_BATCH)):
                    bulk_insert(c, "reconciliation_results", columns, batch)


class _MatchHead(msgspec.Struct):
    match_id: str
    match_type: str


class _BreakHead(msgspec.Struct):
    break_id: str
    break_type: str


def _head(kind: type):
    """(record id, type) of a record's line."""
    decode = msgspec.json.Decoder(kind).decode
    return lambda line: msgspec.structs.astuple(decode(line))


_match_head, _break_head = _head(_MatchHead), _head(_BreakHead)
_STORE_BATCH = 50_000
