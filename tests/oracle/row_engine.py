"""Reference oracle: the reconciliation rules written as plainly as possible, entry by entry.

Not on the product path (ledger_pipelines.reconcile.engine is): the property tests check that the
product engine gives the same records as this one on random scenarios.

Order of the stages (each takes only entries no earlier stage used):
1. ``orphaned``: chain legs whose block left the canonical chain.
2. ``duplicate_left`` / ``duplicate_right``: a second entry with the same duplicate key on one side.
3. Key groups: DuckDB joins both sides on the rule's key (a batch entry joins through its members'
   ids); groups connected through shared entries are merged. Then per group:
   1:1 -> ``exact`` / ``tolerant`` match, or ``amount_mismatch`` / ``asset_mismatch`` / ``timing``;
   1:n -> ``one_to_many``, n:1 -> ``many_to_one`` when the sums agree, else ``amount_mismatch``;
   n:m -> legs paired by equal amount, the rest left for stage 4.
4. Tolerant matching of what is left (same asset or an FX rate, amount within tolerance, time
   window, expected direction), nearest in time first: a scan of every candidate per entry.
5. ``missing_right`` (left only) / ``missing_left`` (right only).

Amounts are ``Decimal`` from the entries' exact strings; nothing passes through a float.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal, localcontext
from typing import Any

from ledger_pipelines.model import CanonicalEntry
from ledger_pipelines.money import EXACT
from ledger_pipelines.reconcile.rules import Rules


@dataclass
class Reconciliation:
    matches: list[dict[str, Any]] = field(default_factory=list)
    breaks: list[dict[str, Any]] = field(default_factory=list)
    left_count: int = 0
    right_count: int = 0

    def counts(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {"match_type": {}, "break_type": {}}
        for m in self.matches:
            out["match_type"][m["match_type"]] = out["match_type"].get(m["match_type"], 0) + 1
        for b in self.breaks:
            out["break_type"][b["break_type"]] = out["break_type"].get(b["break_type"], 0) + 1
        return out


def _ts(e: CanonicalEntry) -> datetime:
    return datetime.fromisoformat(e.booked_at)


def _nanoseconds(booked_at: str) -> int:
    """An RFC 3339 UTC time as nanoseconds since the epoch (exact: a datetime holds microseconds)."""
    whole, _, frac = booked_at.removesuffix("Z").partition(".")
    seconds = int(datetime.fromisoformat(whole + "+00:00").timestamp())
    return seconds * 10**9 + int(frac.ljust(9, "0") or 0)


def _record_id(prefix: str, left: list[str], right: list[str]) -> str:
    # md5 as an identifier, not a seal (the Merkle tree over the records is SHA-256): it is stable
    # across versions and twice as fast as SHA-256 in DuckDB, where millions of these are computed
    digest = hashlib.md5("\x1f".join(sorted(left)).encode() + b"\x1e" + "\x1f".join(sorted(right)).encode(),
                         usedforsecurity=False)
    return f"{prefix}-{digest.hexdigest()[:20]}"


def _members(e: CanonicalEntry, path: str | None) -> list[str]:
    """Member ids of a batch entry by a path like ``attributes.details[].refs.EndToEndId``."""
    if not path:
        return []
    values: list[Any] = [e]
    for part in path.split("."):
        nxt = []
        many = part.endswith("[]")
        name = part[:-2] if many else part
        for v in values:
            got = getattr(v, name, None) if isinstance(v, CanonicalEntry) else (
                v.get(name) if isinstance(v, dict) else None)
            if got is None:
                continue
            if many and isinstance(got, list):
                nxt.extend(got)
            else:
                nxt.append(got)
        values = nxt
    return [str(v) for v in values if isinstance(v, (str, int)) and str(v)]


class _Engine:
    def __init__(self, left: list[CanonicalEntry], right: list[CanonicalEntry], rules: Rules):
        self.rules = rules
        self.left = {e.entry_id: e for e in left}
        self.right = {e.entry_id: e for e in right}
        if len(self.left) != len(left) or len(self.right) != len(right):
            raise ValueError("entry_id must be unique within each side (latest version of each entry)")
        self.used: set[tuple[str, str]] = set()
        self.out = Reconciliation(left_count=len(left), right_count=len(right))

    # -- records ----------------------------------------------------------------------------
    def match(self, kind: str, lids: list[str], rids: list[str], rule: str) -> None:
        corr = self._correlation(lids, rids)
        self.out.matches.append({"match_id": _record_id("m", lids, rids), "match_type": kind,
                                 "left_entry_ids": sorted(lids), "right_entry_ids": sorted(rids),
                                 "correlation_id": corr, "rule": rule})
        self._use(lids, rids)

    def brk(self, kind: str, lids: list[str], rids: list[str], reason: str, asset: str | None = None,
            left_amount: Decimal | None = None, right_amount: Decimal | None = None) -> None:
        if asset is None:
            any_entry = (self.left[lids[0]] if lids else self.right[rids[0]])
            asset = any_entry.asset
        if left_amount is None and lids:
            left_amount = sum((Decimal(self.left[i].amount) for i in lids), Decimal(0))
        if right_amount is None and rids:
            right_amount = sum((Decimal(self.right[i].amount) for i in rids), Decimal(0))
        diff = None
        # a difference across two assets means nothing: left empty for asset mismatches
        if left_amount is not None and right_amount is not None and kind != "asset_mismatch":
            diff = f"{right_amount - left_amount:f}"  # plain decimal: never an exponent
        self.out.breaks.append({
            "break_id": _record_id("b", lids, rids), "break_type": kind, "left_entry_ids": sorted(lids),
            "right_entry_ids": sorted(rids), "correlation_id": self._correlation(lids, rids), "asset": asset,
            "left_amount": None if left_amount is None else f"{left_amount:f}",
            "right_amount": None if right_amount is None else f"{right_amount:f}",
            "difference": diff, "reason": reason,
        })
        self._use(lids, rids)

    def _use(self, lids, rids) -> None:
        for i in lids:
            self.used.add(("L", i))
        for i in rids:
            self.used.add(("R", i))

    def _correlation(self, lids, rids) -> str | None:
        for i in lids:
            if self.left[i].correlation_id:
                return self.left[i].correlation_id
        for i in rids:
            if self.right[i].correlation_id:
                return self.right[i].correlation_id
        return None

    def free(self, side: str) -> list[CanonicalEntry]:
        """Unused entries of a side in a canonical order (earliest booking first), so that the
        result never depends on the order the inputs came in."""
        entries = self.left if side == "L" else self.right
        return sorted((e for i, e in entries.items() if (side, i) not in self.used),
                      key=lambda e: (_nanoseconds(e.booked_at), e.entry_id))

    # -- stages -----------------------------------------------------------------------------
    def orphaned(self) -> None:
        for side in ("L", "R"):
            for e in self.free(side):
                if e.status == "orphaned":
                    ids = ([e.entry_id], []) if side == "L" else ([], [e.entry_id])
                    self.brk("orphaned", *ids, reason=f"{e.ledger} leg left the canonical chain "
                             f"(block {e.position.get('block_number')})")

    def duplicates(self) -> None:
        key = self.rules.duplicate_key
        for side, kind in (("L", "duplicate_left"), ("R", "duplicate_right")):
            first: dict[tuple, str] = {}
            for e in self.free(side):
                k = tuple(getattr(e, f) for f in key)
                if None in k or "" in k:  # an entry without a reference is not a duplicate of another one
                    continue
                if k in first:
                    ids = ([e.entry_id], []) if side == "L" else ([], [e.entry_id])
                    self.brk(kind, *ids, reason=f"same {', '.join(key)} as {first[k]}")
                else:
                    first[k] = e.entry_id

    def key_groups(self) -> list[tuple[list[str], list[str]]]:
        """Connected groups of free entries sharing a key value."""

        def keys(side: str) -> list[tuple[str, str]]:
            # a batch entry (more than one member) joins through its members' ids, on either side
            rows = []
            for e in self.free(side):
                members = _members(e, self.rules.batch_members)
                rows += [(k, e.entry_id) for k in (members if len(members) > 1 else [getattr(e, self.rules.key)]) if k]
            return rows

        rows_l, rows_r = keys("L"), keys("R")
        by_key: dict[str, list[str]] = defaultdict(list)
        for k, i in rows_r:
            by_key[k].append(i)
        pairs = [(lid, rid) for k, lid in rows_l for rid in by_key.get(k, ())]
        # union-find over the pairs: a batch entry pulls all its members into one group
        parent: dict[tuple[str, str], tuple[str, str]] = {}

        def find(x):
            while parent.setdefault(x, x) != x:
                parent[x] = parent[parent[x]]
                x = parent[x]
            return x

        for lid, rid in pairs:
            a, b = find(("L", lid)), find(("R", rid))
            if a != b:
                parent[a] = b
        groups: dict[tuple[str, str], tuple[list[str], list[str]]] = defaultdict(lambda: ([], []))
        for node in list(parent):
            g = groups[find(node)]
            (g[0] if node[0] == "L" else g[1]).append(node[1])
        return sorted(((sorted(set(lg)), sorted(set(rg))) for lg, rg in groups.values()), key=lambda g: (g[0], g[1]))

    def direction_ok(self, l: CanonicalEntry, r: CanonicalEntry) -> bool:
        return self._directions_ok(l.direction, r.direction)

    def _directions_ok(self, left: str, right: str) -> bool:
        if self.rules.direction == "any":
            return True
        return (left != right) == (self.rules.direction == "opposite")

    def pair(self, l: CanonicalEntry, r: CanonicalEntry, rule: str) -> None:
        la, ra = Decimal(l.amount), Decimal(r.amount)
        # both in one asset (the rate's target when they differ): the left one as expected, the right one as got
        compared = self.rules.compare(l.asset, la, r.asset, ra)
        lid, rid = [l.entry_id], [r.entry_id]
        if compared is None:
            self.brk("asset_mismatch", lid, rid, f"{l.asset} against {r.asset} and no FX rate between them",
                     asset=f"{l.asset}/{r.asset}", left_amount=la, right_amount=ra)
            return
        asset, exp, got = compared
        if not self.direction_ok(l, r):
            self.brk("amount_mismatch", lid, rid, f"direction {l.direction}/{r.direction}, expected "
                     f"{self.rules.direction}", asset=asset, left_amount=exp, right_amount=got)
            return
        equal = exp == got  # exactly equal after conversion at the configured rate (same asset: la == ra)
        if not equal and not self.rules.within_tolerance(exp, got):
            self.brk("amount_mismatch", lid, rid, f"expected {exp} {asset}, got {got}", asset=asset,
                     left_amount=exp, right_amount=got)
            return
        gap = abs((_ts(r) - _ts(l)).total_seconds())
        if gap > self.rules.time_window_seconds:
            self.brk("timing", lid, rid, f"booked {gap:.0f}s apart, window {self.rules.time_window_seconds}s",
                     asset=asset, left_amount=exp, right_amount=got)
            return
        self.match("exact" if equal else "tolerant", lid, rid,
                   (f"{rule}+fx" if l.asset != r.asset else rule) + ("" if equal else "+tolerance"))

    def _into(self, one: CanonicalEntry, many: list[CanonicalEntry]) -> str | None:
        """The asset every leg of a batch converts into by multiplication alone (its own asset, or a rate
        from it): the whole's asset, else a part's (in order); None when there is none."""
        for asset in [one.asset, *sorted({e.asset for e in many})]:
            if all((found := self.rules.rate_between(e.asset, asset)) is not None and not found[1]
                   for e in (one, *many)):
                return asset
        return None

    def group(self, lids: list[str], rids: list[str]) -> None:
        rule = f"key:{self.rules.key}"
        if len(lids) == 1 and len(rids) == 1:
            self.pair(self.left[lids[0]], self.right[rids[0]], rule)
            return
        if len(lids) == 1 or len(rids) == 1:
            one, many = (self.left[lids[0]], [self.right[i] for i in rids]) if len(lids) == 1 else (
                self.right[rids[0]], [self.left[i] for i in lids])
            kind = "one_to_many" if len(lids) == 1 else "many_to_one"
            into = self._into(one, many)
            if into is None:
                unrated = [e.asset for e in many if self.rules.rate_between(e.asset, one.asset) is None]
                if unrated:
                    self.brk("asset_mismatch", lids, rids, f"{unrated[0]} against {one.asset} and no FX rate",
                             asset=f"{unrated[0]}/{one.asset}")
                else:
                    assets = sorted({one.asset, *(e.asset for e in many)})
                    self.brk("asset_mismatch", lids, rids, f"no FX rate converts every leg of {', '.join(assets)} "
                             "into one of them", asset="/".join(assets))
                return
            total = Decimal(0)
            for e in many:
                total += Decimal(e.amount) * self.rules.rate_between(e.asset, into)[0]
            target = Decimal(one.amount) * self.rules.rate_between(one.asset, into)[0]
            left_amt, right_amt = (target, total) if len(lids) == 1 else (total, target)
            # each part against the whole as a pair would be: the direction rule, then the amounts, then the window
            wrong_way = [e for e in many if not (self.direction_ok(one, e) if len(lids) == 1 else
                                                 self.direction_ok(e, one))]
            late = max((abs((_ts(e) - _ts(one)).total_seconds()) for e in many), default=0.0)
            if wrong_way:
                self.brk("amount_mismatch", lids, rids, f"{kind}: direction {one.direction} against "
                         f"{wrong_way[0].direction} of {wrong_way[0].entry_id}, expected {self.rules.direction}",
                         asset=into, left_amount=left_amt, right_amount=right_amt)
            elif not (total == target or self.rules.within_tolerance(target, total)):
                self.brk("amount_mismatch", lids, rids, f"{kind}: parts sum to {total}, whole is {target}",
                         asset=into, left_amount=left_amt, right_amount=right_amt)
            elif late > self.rules.time_window_seconds:
                self.brk("timing", lids, rids, f"{kind}: a part booked {late:.0f}s from the whole, window "
                         f"{self.rules.time_window_seconds}s", asset=into, left_amount=left_amt, right_amount=right_amt)
            else:
                self.match(kind, lids, rids, f"{rule}+batch")
            return
        # n:m under one key: each left leg (in id order) takes the free right leg of its asset and amount, in
        # the expected direction, nearest in time (equal gaps: the smaller id); the rest go to tolerant matching
        rights = [self.right[i] for i in rids]
        for lid in lids:
            l = self.left[lid]
            candidates = [(abs(_ts(r) - _ts(l)), r.entry_id, r) for r in rights
                          if ("R", r.entry_id) not in self.used and r.asset == l.asset
                          and Decimal(r.amount) == Decimal(l.amount) and self.direction_ok(l, r)]
            if candidates:
                self.pair(l, min(candidates, key=lambda c: c[:2])[2], rule)

    def tolerant(self) -> None:
        """Each free left entry, earliest first, takes the free right entry nearest in time (equal gaps:
        the smaller id) among all free right entries of an asset it converts to, in the expected
        direction, with an amount within tolerance, booked within the window."""
        if not self.rules.tolerant_matching:
            return
        rights = self.free("R")
        window = timedelta(seconds=self.rules.time_window_seconds)
        taken: set[str] = set()
        for l in self.free("L"):
            lt, la = _ts(l), Decimal(l.amount)
            best = None
            for r in rights:
                if r.entry_id in taken or not self.direction_ok(l, r):
                    continue
                ra = Decimal(r.amount)
                compared = self.rules.compare(l.asset, la, r.asset, ra)
                if compared is None:
                    continue
                if not ((r.asset == l.asset and ra == la) or self.rules.within_tolerance(*compared[1:])):
                    continue
                gap = abs(_ts(r) - lt)
                if gap <= window and (best is None or (gap, r.entry_id) < best[0]):
                    best = ((gap, r.entry_id), r)
            if best is not None:
                r = best[1]
                taken.add(r.entry_id)
                equal = r.asset == l.asset and Decimal(r.amount) == la
                self.match("exact" if equal and l.correlation_id and l.correlation_id == r.correlation_id
                           else "tolerant", [l.entry_id], [r.entry_id], "tolerant:amount+time")

    def missing(self) -> None:
        for e in self.free("L"):
            self.brk("missing_right", [e.entry_id], [], f"no counterpart on the right for {e.ledger} "
                     f"{e.source_ref}")
        for e in self.free("R"):
            self.brk("missing_left", [], [e.entry_id], f"no counterpart on the left for {e.ledger} {e.source_ref}")


def reconcile(left: list[CanonicalEntry], right: list[CanonicalEntry], rules: Rules | None = None) -> Reconciliation:
    with localcontext(EXACT):
        return _reconcile(left, right, rules)


def _reconcile(left: list[CanonicalEntry], right: list[CanonicalEntry], rules: Rules | None = None) -> Reconciliation:
    engine = _Engine(left, right, rules or Rules())
    engine.orphaned()
    engine.duplicates()
    for lids, rids in engine.key_groups():
        engine.group(lids, rids)
    engine.tolerant()
    engine.missing()
    out = engine.out
    out.matches.sort(key=lambda m: m["match_id"])
    out.breaks.sort(key=lambda b: b["break_id"])
    return out
