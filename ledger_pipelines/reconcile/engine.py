"""The reconciliation engine: every input entry ends in exactly one match or break record.

Stages (each takes only entries no earlier stage used):

0. Rules keyed on ``entry_id`` with ``entry_id`` as duplicate key (the bridge check): an entry found on
   the other side with every field equal is an ``exact`` match, found by one comparison (see
   :func:`_unchanged` for the conditions).
1. ``orphaned``: chain legs whose block left the canonical chain.
2. ``duplicate_left`` / ``duplicate_right``: a later entry (by booking time, then id) with the same
   ``duplicate_key`` as an earlier one on the same side.
3. Key groups: both sides joined on the rule's key; a batch entry (more than one member id under
   ``batch_members``), on either side, joins through its members' ids. Entries connected through
   shared keys form one group:
   1:1 -> ``exact`` / ``tolerant`` match, or ``amount_mismatch`` / ``asset_mismatch`` / ``timing``;
   1:n -> ``one_to_many``, n:1 -> ``many_to_one`` when every part is in the expected direction to the
   whole, the sums agree (within tolerance) and every part is booked within the window of the whole,
   else ``amount_mismatch`` / ``timing``; n:m -> each left leg takes the right leg of its asset and
   amount in the expected direction nearest in time (then the smaller id), the rest left for stage 4.
4. Leftovers (no key, or a key found on one side only): each left entry, earliest first, takes the
   free right entry nearest in time (equal gaps: the smaller id) of an asset it converts to, in the
   expected direction, with an amount within tolerance, booked within the window.
5. ``missing_right`` (left only) / ``missing_left`` (right only).

Where the work runs. Stages 1-3 are DuckDB over Arrow tables of the entries: duplicates, the key join
and the classification of every 1:1 pair into its match record, with amounts as DECIMAL(38, 18) and
an FX rate as a DECIMAL of its own scale, so every product and comparison is exact. The bound on the
amounts that may take this path is derived from the rules (rate and tolerance digits) so that no
intermediate value can overflow DECIMAL(38); a pair with a larger amount (uint256 token amounts,
say), with a rate used in its inverse direction or that is not a match is classified by the exact
Python path below (``Decimal`` in a 200-digit context), which also builds every break record. Amounts
of two assets are compared only by multiplication (``Rules.compare``): the side in a rate's source
asset is converted into its target, so a rate given EUR->USDC compares a USDC left leg with a EUR
right leg in USDC, and never through the rate's inverse, which has no finite decimal in general. A
batch is compared in the first asset (the whole's, else a part's) every leg converts into so. Groups with more than one entry on a side (batches, shared keys) are
few and go through the same Python path. Stage 4 is an index: right entries by asset and direction,
then amount, then time, and by time alone; a left entry looks at whichever is smaller, the amounts
inside its tolerance band (for each, the entries either side of its own time) or the entries inside
its time window (nearest first), so a wide band costs no scan of every amount (near-linear; SQL has
no greedy choice).

Amounts are exact everywhere; nothing passes through a float.
"""

from __future__ import annotations

import bisect
import hashlib
import threading
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal, localcontext
from operator import attrgetter
from typing import Any

import msgspec

from ..model import CanonicalEntry
from ..money import EXACT
from ..money import plain as _plain
from .rules import Rules


class RecordStruct(msgspec.Struct, frozen=True, gc=False):
    """A record read like the JSON object it is written as (``m["match_id"]``)."""

    def __getitem__(self, name: str) -> Any:
        if name not in self.__struct_fields__:
            raise KeyError(name)
        return getattr(self, name)


class Match(RecordStruct, frozen=True, gc=False):
    """A match record (ARCHITECTURE section 4), read like the JSON object it is written as
    (``m["match_id"]``). The fields are in the order canonical JSON sorts them, so it encodes to the
    bytes of the equal dict. A value of text and tuples of text that can never be part of a reference
    cycle, hence ``gc=False`` (as the canonical entries): a day holds millions of matches."""

    correlation_id: str | None
    left_entry_ids: tuple[str, ...]
    match_id: str
    match_type: str
    right_entry_ids: tuple[str, ...]
    rule: str


@dataclass
class Reconciliation:
    matches: list[Match] = field(default_factory=list)
    breaks: list[dict[str, Any]] = field(default_factory=list)
    left_count: int = 0
    right_count: int = 0

    def counts(self) -> dict[str, dict[str, int]]:
        return {"match_type": dict(Counter(map(attrgetter("match_type"), self.matches))),
                "break_type": dict(Counter(b["break_type"] for b in self.breaks))}


def _ts(e: CanonicalEntry) -> datetime:
    return datetime.fromisoformat(e.booked_at)


def booked_order(e: CanonicalEntry) -> tuple[str, str]:
    """Earliest booking first, then the smaller id: ``booked_at`` with its fraction of a second written
    out to nine digits, so text order is time order (``12:00:00Z`` before ``12:00:00.5Z``, which plain
    text order reverses) to the nanosecond. :data:`_BOOKED_ORDER_SQL` is the same in DuckDB."""
    t = e.booked_at
    return t[:19] + t[20:-1].ljust(9, "0"), e.entry_id


_BOOKED_ORDER_SQL = r"substr(booked_at, 1, 19) || rpad(regexp_extract(booked_at, '\.([0-9]+)Z$', 1), 9, '0')"


def record_id(prefix: str, left: list[str], right: list[str]) -> str:
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


def _time_of(item: tuple) -> datetime:
    return item[0]


def _time_id(item: tuple) -> tuple[datetime, str]:
    return item[0], item[1]


class _ByAmount:
    """Right entries of one asset and direction, free for tolerant matching, indexed two ways: the
    distinct amounts in order, each with its entries ordered by (booking time, id); and all of them
    ordered by (booking time, id). A left entry searches whichever is smaller around it: the amounts
    inside its tolerance band, or the entries inside its time window. Items are (time, id, entry, amount)."""

    def __init__(self) -> None:
        self.times: dict[Decimal, list[tuple]] = defaultdict(list)
        self.amounts: list[Decimal] = []
        self.by_time: list[tuple] = []
        self.taken: set[str] = set()  # taken entries still in by_time (skipped; dropped when they are many)

    def add(self, e: CanonicalEntry) -> None:
        item = (_ts(e), e.entry_id, e, Decimal(e.amount))
        self.times[item[3]].append(item)
        self.by_time.append(item)

    def sort(self) -> None:
        for lst in self.times.values():
            lst.sort(key=_time_id)
        self.amounts = sorted(self.times)
        self.by_time.sort(key=_time_id)

    def band(self, lo: Decimal, hi: Decimal):
        """(amount, entries) for the amounts in [lo, hi] that still have entries."""
        for i in range(bisect.bisect_left(self.amounts, lo), bisect.bisect_right(self.amounts, hi)):
            times = self.times[self.amounts[i]]
            if times:
                yield self.amounts[i], times

    def amounts_within(self, lo: Decimal, hi: Decimal) -> int:
        return bisect.bisect_right(self.amounts, hi) - bisect.bisect_left(self.amounts, lo)

    def entries_within(self, t: datetime, window: timedelta) -> int:
        return (bisect.bisect_right(self.by_time, t + window, key=_time_of)
                - bisect.bisect_left(self.by_time, t - window, key=_time_of))

    def nearest_in_time(self, t: datetime, window: timedelta, fits) -> tuple | None:
        """(gap, id, item) of the free entry nearest to ``t`` within ``window`` whose item ``fits`` (equal
        gaps: the smaller id): entries taken in order of their distance from ``t``, both ways at once."""
        items = self.by_time
        after = bisect.bisect_left(items, t, key=_time_of)
        before = after - 1
        best = None
        while before >= 0 or after < len(items):
            if after >= len(items) or (before >= 0 and t - items[before][0] <= items[after][0] - t):
                item, gap = items[before], t - items[before][0]
                before -= 1
            else:
                item, gap = items[after], items[after][0] - t
                after += 1
            if gap > window or (best is not None and gap > best[0]):
                break
            if item[1] not in self.taken and fits(item) and (best is None or (gap, item[1]) < best[:2]):
                best = (gap, item[1], item)
        return best

    def take(self, item: tuple) -> None:
        entries = self.times[item[3]]
        del entries[bisect.bisect_left(entries, _time_id(item), key=_time_id)]
        self.taken.add(item[1])
        if len(self.taken) > 64 and 2 * len(self.taken) > len(self.by_time):
            self.by_time = [i for i in self.by_time if i[1] not in self.taken]
            self.taken.clear()


def _band(expected: Decimal, tolerance: Decimal, per: Decimal | None = None) -> tuple[Decimal, Decimal]:
    """``expected`` ± ``tolerance``, or with ``per`` the amounts ``a`` with ``a * per`` in it (a rate used
    in its inverse direction). Rounded outwards: the band may be a hair wider than the tolerance, never
    narrower (a search range only: every amount in it is still checked exactly, multiplied)."""
    with localcontext() as ctx:
        ctx.rounding = ROUND_FLOOR
        lo = expected - tolerance if per is None else (expected - tolerance) / per
        ctx.rounding = ROUND_CEILING
        hi = expected + tolerance if per is None else (expected + tolerance) / per
    return lo, hi


def _nearest(times: list[tuple], t: datetime) -> tuple[timedelta, str, int] | None:
    """(gap, id, index) of the entry nearest to ``t`` in time, the smaller id on equal gaps."""
    i = bisect.bisect_left(times, t, key=lambda x: x[0])
    best = (times[i][0] - t, times[i][1], i) if i < len(times) else None
    if i > 0:
        before = times[i - 1][0]
        j = bisect.bisect_left(times, before, 0, i, key=lambda x: x[0])  # the smallest id at that time
        if best is None or (t - before, times[j][1]) < best[:2]:
            best = (t - before, times[j][1], j)
    return best



_COLUMNS = ("entry_id", "correlation_id", "asset", "direction", "booked_at", "status")
_SCALE = 18  # amounts with at most this many decimals (18: ERC-20 tokens) may take the SQL path


def _table(entries: list[CanonicalEntry], path: str | None, bound: int, fields: tuple[str, ...]):
    """The entries as an Arrow table of their text fields plus ``dec``, the amount as DECIMAL(38, 18)
    where it has at most ``bound`` integer digits (else null: the Python path), and their batches as
    (entry_id, member) rows (only entries with more than one member)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    cols = {c: pa.array(list(map(attrgetter(c), entries)), pa.string()) for c in fields}
    # amounts are canonical (digits, at most one dot): those with at most ``bound`` integer digits and
    # _SCALE decimals, cast by Arrow, which refuses any loss of digits (DuckDB's text-to-DECIMAL(38)
    # cast costs ~100x more)
    amounts = cols["amount"] if "amount" in cols else pa.array(list(map(attrgetter("amount"), entries)), pa.string())
    dot = pc.find_substring(amounts, ".")
    length = pc.utf8_length(amounts)
    whole = pc.if_else(pc.less(dot, 0), length, dot)
    frac = pc.if_else(pc.less(dot, 0), 0, pc.subtract(pc.subtract(length, dot), 1))
    fits = pc.and_(pc.less_equal(whole, bound), pc.less_equal(frac, _SCALE))
    cols["dec"] = pc.cast(pc.if_else(fits, amounts, pa.scalar(None, pa.string())), pa.decimal128(38, _SCALE))
    batch_ids: list[str] = []
    batch_members: list[str] = []
    if path:
        # the default path starts at attributes: an entry without attributes has no members
        first = path.split(".")[0].removesuffix("[]")
        for e in entries:
            if first == "attributes" and not e.attributes:
                continue
            members = _members(e, path)
            if len(members) > 1:
                batch_ids += [e.entry_id] * len(members)
                batch_members += members
    return pa.table(cols), pa.table({"entry_id": pa.array(batch_ids, pa.string()),
                                     "member": pa.array(batch_members, pa.string())})


def _digits(d: Decimal) -> tuple[int, int]:
    """(integer digits, fraction digits) of a non-negative decimal."""
    sign, digits, exp = d.normalize().as_tuple()
    frac = max(0, -exp)
    return max(1, len(digits) + exp), frac


class _SqlPlan:
    """The SQL text fragments of the 1:1 pair classification and the amount bound that keeps every
    DECIMAL intermediate within 38 digits (``None``: no pair takes the SQL path)."""

    def __init__(self, rules: Rules):
        forward = list(rules.fx)  # in SQL in their given direction only: an inverse has no finite decimal
        rate_int = max([_digits(r.rate)[0] for r in forward], default=1)
        rate_frac = max([_digits(r.rate)[1] for r in forward], default=0)
        rel_frac = _digits(rules.tolerance_relative)[1] if rules.tolerance_relative else 0
        # |expected| < 10^(bound + rate_int); its scale is 18 + rate_frac, the relative product's one
        # rel_frac more, and a difference needs one digit more than its operands
        self.bound = 38 - 1 - _SCALE - rate_frac - rel_frac - rate_int
        self.exp_scale = _SCALE + rate_frac
        self.rate_int, self.rate_frac = rate_int, rate_frac
        self.fx = [(r.source, r.target, _plain(r.rate)) for r in forward]
        cap = Decimal(10) ** (self.bound + rate_int + 1)  # no difference of two amounts in range is this large
        with localcontext(EXACT) as ctx:
            ctx.rounding = ROUND_FLOOR
            # the differences have scale exp_scale: d <= A exactly when d <= A cut to that scale
            self.tol_abs = _plain(min(rules.tolerance_absolute, cap).quantize(Decimal(1).scaleb(-self.exp_scale)))
        self.rel = _plain(rules.tolerance_relative) if rules.tolerance_relative else None
        self.rel_frac = rel_frac

    @property
    def usable(self) -> bool:
        return self.bound >= 1

_DB: Any = None
_DB_LOCK = threading.Lock()


def _database():
    """One in-memory DuckDB database per process: opening one costs more than reconciling a small day,
    and each run works on a cursor of its own (a separate connection, safe from any thread)."""
    global _DB
    with _DB_LOCK:
        if _DB is None:
            import duckdb

            _DB = duckdb.connect(config={"preserve_insertion_order": False})
        return _DB


class _Engine:
    def __init__(self, left: list[CanonicalEntry], right: list[CanonicalEntry], rules: Rules):
        self.rules = rules
        self.left = {e.entry_id: e for e in left}
        self.right = {e.entry_id: e for e in right}
        if len(self.left) != len(left) or len(self.right) != len(right):
            raise ValueError("entry_id must be unique within each side (latest version of each entry)")
        self.used: set[tuple[str, str]] = set()  # entries the Python stages placed
        self.out = Reconciliation(left_count=len(left), right_count=len(right))
        self.leftover: dict[str, list[CanonicalEntry]] = {"L": [], "R": []}

    # -- records ----------------------------------------------------------------------------
    def match(self, kind: str, lids: list[str], rids: list[str], rule: str) -> None:
        corr = self._correlation(lids, rids)
        self.out.matches.append(Match(corr, tuple(sorted(lids)), record_id("m", lids, rids), kind,
                                      tuple(sorted(rids)), rule))
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
            "break_id": record_id("b", lids, rids), "break_type": kind, "left_entry_ids": sorted(lids),
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

    def set_stages(self, left: list[CanonicalEntry], right: list[CanonicalEntry]) -> None:
        """Stages 1-3 in DuckDB; what needs the Python path is handed to it from here."""
        rules = self.rules
        plan = _SqlPlan(rules)
        # only the fields the SQL reads: building a column costs a pass over the Python objects
        fields = tuple(dict.fromkeys(_COLUMNS + (rules.key,) + rules.duplicate_key))
        lt, lb = _table(left, rules.batch_members, plan.bound, fields)
        rt, rb = _table(right, rules.batch_members, plan.bound, fields)
        con = _database().cursor()  # a connection of its own: its temporary tables go with it
        try:
            for name, t in (("l_arrow", lt), ("r_arrow", rt), ("l_batch", lb), ("r_batch", rb)):
                con.register(name, t)
            # the entries copied into DuckDB once: the stages scan them several times, and each scan of
            # an Arrow table converts its text columns again
            for s in ("l", "r"):
                con.execute(f"CREATE TEMP TABLE {s}_in AS SELECT * FROM {s}_arrow")
            self._sql(con, plan)
        finally:
            con.close()

    def _sql(self, con, plan: _SqlPlan) -> None:
        rules = self.rules
        q = con.execute
        dup = ", ".join(rules.duplicate_key)  # entry field names (checked by the rules schema)
        # an empty reference is no reference (as for the key): such entries are nobody's duplicates
        dup_set = " AND ".join(f"{c} IS NOT NULL AND {c} <> ''" for c in rules.duplicate_key)
        key = rules.key
        for s in ("l", "r"):
            # duplicates can only be among rows whose duplicate key repeats: one hash aggregate finds
            # those, and only their rows are ordered
            q(f"""CREATE TEMP TABLE {s}_dup AS
                  SELECT entry_id, first_value(entry_id) OVER w AS first_id, row_number() OVER w AS rn
                  FROM (SELECT * FROM {s}_in SEMI JOIN (
                          SELECT {dup} FROM {s}_in WHERE status <> 'orphaned' AND {dup_set}
                          GROUP BY ALL HAVING count(*) > 1) USING ({dup})
                        WHERE status <> 'orphaned')
                  WINDOW w AS (PARTITION BY {dup} ORDER BY {_BOOKED_ORDER_SQL}, entry_id)
                  QUALIFY rn > 1""")
            q(f"""CREATE TEMP TABLE {s}_free AS
                  SELECT * FROM {s}_in ANTI JOIN {s}_dup USING (entry_id) WHERE status <> 'orphaned'""")
            q(f"""CREATE TEMP TABLE {s}_keys AS
                  SELECT entry_id, {key} AS k FROM {s}_free ANTI JOIN {s}_batch USING (entry_id)
                  WHERE {key} IS NOT NULL AND {key} <> ''
                  UNION ALL SELECT entry_id, member FROM {s}_batch SEMI JOIN {s}_free USING (entry_id)""")
        for side, s in (("L", "l"), ("R", "r")):
            for (eid,) in q(f"SELECT entry_id FROM {s}_in WHERE status = 'orphaned'").fetchall():
                e = (self.left if side == "L" else self.right)[eid]
                self.brk("orphaned", *self._ids(side, eid), reason=f"{e.ledger} leg left the canonical chain "
                         f"(block {e.position.get('block_number')})")
            for eid, first in q(f"SELECT entry_id, first_id FROM {s}_dup").fetchall():
                self.brk("duplicate_left" if side == "L" else "duplicate_right", *self._ids(side, eid),
                         reason=f"same {', '.join(rules.duplicate_key)} as {first}")
        q("""CREATE TEMP TABLE pairs AS
             SELECT lid, rid, count(*) OVER (PARTITION BY lid) AS nl, count(*) OVER (PARTITION BY rid) AS nr
             FROM (SELECT DISTINCT l.entry_id AS lid, r.entry_id AS rid FROM l_keys l JOIN r_keys r USING (k))""")
        # groups with more than one entry on a side: connected components in Python (they are few)
        self._groups(q("SELECT lid, rid FROM pairs WHERE nl > 1 OR nr > 1").fetchall())
        self._pairs(con, plan)
        for side, s, col in (("L", "l", "lid"), ("R", "r", "rid")):
            entries = self.left if side == "L" else self.right
            free = [entries[i] for (i,) in q(f"SELECT entry_id FROM {s}_free ANTI JOIN pairs "
                                              f"ON {s}_free.entry_id = pairs.{col}").fetchall()]
            self.leftover[side] += free

    def _ids(self, side: str, eid: str) -> tuple[list[str], list[str]]:
        return ([eid], []) if side == "L" else ([], [eid])

    def _groups(self, pairs: list[tuple[str, str]]) -> None:
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
        for lids, rids in sorted((sorted(lg), sorted(rg)) for lg, rg in groups.values()):
            self.group(lids, rids)
            # n:m groups leave their unpaired legs to the leftover stage
            self.leftover["L"] += [self.left[i] for i in lids if ("L", i) not in self.used]
            self.leftover["R"] += [self.right[i] for i in rids if ("R", i) not in self.used]

    def _pairs(self, con, plan: _SqlPlan) -> None:
        """1:1 groups: matches in SQL where the amounts allow it, everything else by :meth:`pair`."""
        rules = self.rules
        q = con.execute
        rule = f"key:{rules.key}"
        if plan.usable:
            es = plan.exp_scale
            rate_type = f"DECIMAL({plan.rate_int + plan.rate_frac}, {plan.rate_frac})"
            q(f"CREATE TEMP TABLE fx (src VARCHAR, dst VARCHAR, rate {rate_type})")
            for src, dst, rate in plan.fx:
                q("INSERT INTO fx VALUES (?, ?, ?)", [src, dst, rate])
            direction_ok = {"any": "TRUE", "same": "l.direction = r.direction",
                            "opposite": "l.direction <> r.direction"}[rules.direction]
            within = f"d <= CAST('{plan.tol_abs}' AS DECIMAL(38, {es}))"
            if plan.rel is not None:
                within += f" OR d <= abs(x) * CAST('{plan.rel}' AS DECIMAL({plan.rel_frac}, {plan.rel_frac}))"
            window_us = int(rules.time_window_seconds) * 1_000_000
            q(f"""CREATE TEMP TABLE classified AS
                  SELECT lid, rid, la, ra, lc, rc,
                         CASE WHEN fast AND ok AND (x = y OR {within}) AND gap <= {window_us}
                              THEN (CASE WHEN x = y THEN 'exact' ELSE 'tolerant' END) END AS kind,
                         x = y AS equal
                  FROM (SELECT *, abs(x - y) AS d FROM (
                    SELECT p.lid, p.rid, l.asset AS la, r.asset AS ra, l.correlation_id AS lc,
                           r.correlation_id AS rc, {direction_ok} AS ok,
                           abs(epoch_us(CAST(r.booked_at AS TIMESTAMPTZ)) - epoch_us(CAST(l.booked_at AS TIMESTAMPTZ))) AS gap,
                           l.dec IS NOT NULL AND r.dec IS NOT NULL
                             AND (l.asset = r.asset OR fx.rate IS NOT NULL) AS fast,
                           CASE WHEN fast THEN
                             CASE WHEN l.asset = r.asset THEN CAST(l.dec AS DECIMAL(38, {es}))
                                  ELSE CAST(l.dec * fx.rate AS DECIMAL(38, {es})) END END AS x,
                           CASE WHEN fast THEN CAST(r.dec AS DECIMAL(38, {es})) END AS y
                    FROM pairs p JOIN l_free l ON l.entry_id = p.lid JOIN r_free r ON r.entry_id = p.rid
                         LEFT JOIN fx ON fx.src = l.asset AND fx.dst = r.asset
                    WHERE p.nl = 1 AND p.nr = 1))""")
            # fetched as columns and made into Match values by map (a Python tuple per row costs more
            # than the rest of this stage), in match_id order: the final sort then finds them a run
            cols = q(f"""SELECT coalesce(nullif(lc, ''), nullif(rc, '')) AS corr, lid,
                                'm-' || substr(md5(lid || chr(30) || rid), 1, 20) AS mid, kind, rid,
                                '{rule}' || CASE WHEN la <> ra THEN '+fx' ELSE '' END
                                         || CASE WHEN equal THEN '' ELSE '+tolerance' END AS rule
                         FROM classified WHERE kind IS NOT NULL ORDER BY mid""").to_arrow_table()
            corr, lid, mid, kind, rid, rule_ = (cols.column(c).to_pylist() for c in cols.column_names)
            self.out.matches += map(Match, corr, zip(lid), mid, kind, zip(rid), rule_)
            rest = q("SELECT lid, rid FROM classified WHERE kind IS NULL").fetchall()
        else:
            rest = q("SELECT lid, rid FROM pairs WHERE nl = 1 AND nr = 1").fetchall()
        for lid, rid in rest:
            self.pair(self.left[lid], self.right[rid], rule)

    def tolerant(self) -> None:
        """Each free left entry, earliest first, takes the free right entry nearest in time (equal
        gaps: the smaller id) among those of an asset it converts to, in the expected direction, with
        an amount within tolerance, booked within the window. Right entries are indexed by asset and
        direction, then amount, then time, and by time alone (:class:`_ByAmount`): a left entry looks at
        the amounts inside its tolerance band, or at the entries inside its window when they are fewer."""
        if not self.rules.tolerant_matching:
            return
        index: dict[tuple[str, str], _ByAmount] = defaultdict(_ByAmount)
        for r in self.leftover["R"]:
            index[(r.asset, r.direction)].add(r)
        for bucket in index.values():
            bucket.sort()
        window = timedelta(seconds=self.rules.time_window_seconds)
        for l in self.leftover["L"]:  # earliest booking first
            lt, la = _ts(l), Decimal(l.amount)
            best = None
            for (asset, direction), bucket in index.items():
                if not self._directions_ok(l.direction, direction):
                    continue
                found = self.rules.rate_between(l.asset, asset)
                if found is None:
                    continue
                rate, inverse = found
                if inverse:  # compared in the left asset: the right amounts times the rate around the left one
                    lo, hi = _band(la, self._tolerance(la), per=rate)
                else:
                    exp = la * rate
                    lo, hi = _band(exp, self._tolerance(exp))

                def fits(ra: Decimal) -> bool:
                    return (asset == l.asset and ra == la) or (
                        self.rules.within_tolerance(la, ra * rate) if inverse else self.rules.within_tolerance(exp, ra))

                if bucket.amounts_within(lo, hi) <= bucket.entries_within(lt, window):
                    candidates = []
                    for ra, times in bucket.band(lo, hi):
                        near = _nearest(times, lt) if fits(ra) else None
                        if near is not None:
                            candidates.append((near[0], near[1], times[near[2]]))
                else:  # a wide band: the entries inside the window, nearest first
                    near = bucket.nearest_in_time(lt, window, lambda item: lo <= item[3] <= hi and fits(item[3]))
                    candidates = [near] if near is not None else []
                for gap, rid, item in candidates:
                    if gap <= window and (best is None or (gap, rid) < best[:2]):
                        best = (gap, rid, item, bucket)
            if best is not None:
                self.taken_left.add(l.entry_id)
                _, _, item, bucket = best
                bucket.take(item)
                r = item[2]
                self.taken.add(r.entry_id)
                equal = r.asset == l.asset and item[3] == la
                self.match("exact" if equal and l.correlation_id and l.correlation_id == r.correlation_id
                           else "tolerant", [l.entry_id], [r.entry_id], "tolerant:amount+time")

    def _tolerance(self, expected: Decimal) -> Decimal:
        """Largest difference :meth:`Rules.within_tolerance` accepts around ``expected``."""
        return max(self.rules.tolerance_absolute, abs(expected) * self.rules.tolerance_relative)

    def missing(self) -> None:
        for e in self.leftover["L"]:
            if e.entry_id in self.taken_left:
                continue
            self.brk("missing_right", [e.entry_id], [], f"no counterpart on the right for {e.ledger} "
                     f"{e.source_ref}")
        for e in self.leftover["R"]:
            if e.entry_id in self.taken:
                continue
            self.brk("missing_left", [], [e.entry_id], f"no counterpart on the left for {e.ledger} {e.source_ref}")


def _unchanged(engine: _Engine, left: list[CanonicalEntry], right: list[CanonicalEntry]
               ) -> tuple[list[CanonicalEntry], list[CanonicalEntry]]:
    """Stage 0, for rules keyed on ``entry_id`` whose duplicate key is ``entry_id`` too (the bridge check:
    a snapshot against what the event log delivered). Ids are unique on each side, so no entry is a
    duplicate, and an entry found on the other side with every field equal is the 1:1 group of its key
    and an ``exact`` match (same asset, amount, direction and time) unless the direction rule is
    ``opposite``, it is orphaned or it is a batch: those and every other entry go through the stages.
    Returns the entries left for them. Millions of entries delivered unchanged are matched here by
    one comparison each, without building their columns for DuckDB."""
    rules = engine.rules
    if (rules.key != "entry_id" or rules.duplicate_key != ("entry_id",) or rules.direction == "opposite"
            or rules.batch_members):
        return left, right
    from hashlib import md5

    rule = f"key:{rules.key}"
    other = engine.right
    same: set[str] = set()
    rest_left = []
    matches = engine.out.matches
    for e in left:
        if e.status != "orphaned" and other.get(e.entry_id) == e:
            same.add(e.entry_id)
            # record_id("m", [id], [id]), written out: it is most of this stage's cost
            mid = "m-" + md5(f"{e.entry_id}\x1e{e.entry_id}".encode(), usedforsecurity=False).hexdigest()[:20]
            ids = (e.entry_id,)
            matches.append(Match(e.correlation_id or None, ids, mid, "exact", ids, rule))
        else:
            rest_left.append(e)
    if not same:
        return left, right
    return rest_left, [e for e in right if e.entry_id not in same]


def reconcile(left: list[CanonicalEntry], right: list[CanonicalEntry], rules: Rules | None = None) -> Reconciliation:
    with localcontext(EXACT):
        engine = _Engine(left, right, rules or Rules())
        engine.set_stages(*_unchanged(engine, left, right))
        for side in ("L", "R"):  # a canonical order: the result never depends on the order the inputs came in
            engine.leftover[side].sort(key=booked_order)
        engine.taken, engine.taken_left = set(), set()
        engine.tolerant()
        engine.missing()
    out = engine.out
    out.matches.sort(key=attrgetter("match_id"))
    out.breaks.sort(key=lambda b: b["break_id"])
    return out
