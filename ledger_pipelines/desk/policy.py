"""The desk's rules, as plain functions: priority tiers, the amount key that sorts, suggestion scores.

Configured under ``desk:`` in the ledger configuration (docs/configuration.md); the defaults below are
what a desk gets without one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from difflib import SequenceMatcher
from typing import Any

from ..config import ConfigError
from ..money import EXACT

ROLES = ("operator", "approver", "auditor")
USER_NAME = re.compile(r"[a-z][a-z0-9_.-]{0,63}")
STATES = ("new", "open", "assigned", "accepted", "matched", "resolved")


@dataclass(frozen=True)
class Tier:
    """A priority tier: it applies to a break whose amount at stake is at least ``min_amount`` or whose age
    is at least ``min_age_days`` (a tier with neither applies to every break: the last one)."""

    name: str
    due_hours: int
    min_amount: Decimal | None = None
    min_age_days: int | None = None


DEFAULT_TIERS = (Tier("P1", 24, Decimal("100000"), 5), Tier("P2", 72, Decimal("10000"), 2), Tier("P3", 168))


@dataclass(frozen=True)
class DeskSettings:
    tiers: tuple[Tier, ...] = DEFAULT_TIERS
    auto_confirm: bool = False  # off by default: a person confirms every match
    auto_confirm_min_score: int = 95
    session_hours: float = 8.0
    suggestions: int = 3

    @classmethod
    def from_document(cls, doc: dict[str, Any]) -> "DeskSettings":
        d = doc.get("desk") or {}
        if not isinstance(d, dict):
            raise ConfigError("desk: expected a mapping")
        unknown = set(d) - {"priorities", "auto_confirm", "session_hours"}
        if unknown:
            raise ConfigError(f"desk: unknown keys {sorted(unknown)} (known: priorities, auto_confirm, session_hours)")
        tiers = tuple(_tier(t) for t in d["priorities"]) if d.get("priorities") else DEFAULT_TIERS
        if not tiers or tiers[-1].min_amount is not None or tiers[-1].min_age_days is not None:
            raise ConfigError("desk.priorities: the last tier must apply to every break (no min_amount, no min_age_days)")
        if len({t.name for t in tiers}) != len(tiers):
            raise ConfigError("desk.priorities: tier names must differ")
        auto = d.get("auto_confirm") or {}
        if not isinstance(auto, dict) or set(auto) - {"enabled", "min_score"}:
            raise ConfigError("desk.auto_confirm: expected {enabled: true|false, min_score: 0-100}")
        score = auto.get("min_score", 95)
        if not isinstance(score, int) or isinstance(score, bool) or not 50 <= score <= 100:
            raise ConfigError(f"desk.auto_confirm.min_score: {score!r} is not a whole number from 50 to 100")
        hours = d.get("session_hours", 8)
        if not isinstance(hours, (int, float)) or isinstance(hours, bool) or not 0 < hours <= 24 * 7:
            raise ConfigError(f"desk.session_hours: {hours!r} is not a number of hours (at most a week)")
        return cls(tiers=tiers, auto_confirm=auto.get("enabled", False) is True, auto_confirm_min_score=score,
                   session_hours=float(hours))


def _tier(t: Any) -> Tier:
    if not isinstance(t, dict) or set(t) - {"tier", "min_amount", "min_age_days", "due_hours"}:
        raise ConfigError(f"desk.priorities: {t!r} is not {{tier, min_amount, min_age_days, due_hours}}")
    name = t.get("tier")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_-]{1,16}", name):
        raise ConfigError(f"desk.priorities: tier name {name!r} is not a short word")
    due = t.get("due_hours")
    if not isinstance(due, int) or isinstance(due, bool) or not 0 < due <= 24 * 366:
        raise ConfigError(f"desk.priorities.{name}: due_hours {due!r} is not a whole number of hours")
    amount = t.get("min_amount")
    if amount is not None:
        try:
            amount = Decimal(str(amount)) if isinstance(amount, (str, int)) and not isinstance(amount, bool) else None
        except InvalidOperation:
            amount = None
        if amount is None or not amount.is_finite() or amount < 0:
            raise ConfigError(f"desk.priorities.{name}: min_amount {t.get('min_amount')!r} is not an amount "
                              "(write it as text, e.g. \"100000\")")
    age = t.get("min_age_days")
    if age is not None and (not isinstance(age, int) or isinstance(age, bool) or age < 0):
        raise ConfigError(f"desk.priorities.{name}: min_age_days {age!r} is not a whole number of days")
    return Tier(name, due, amount, age)


def amount_key(amount: Decimal | str) -> str:
    """Text that sorts (byte by byte) as the non-negative amount does: the integer part's length in three
    digits, the integer part, then the fraction without trailing zeros. Exact, for any canonical amount."""
    text = f"{Decimal(amount):f}"
    whole, _, frac = text.partition(".")
    frac = frac.rstrip("0")
    return f"{len(whole):03d}{whole}" + (f".{frac}" if frac else "")


def tier_of(settings: DeskSettings, amount: Decimal, first_seen: str, today: date) -> Tier:
    age = (today - date.fromisoformat(first_seen)).days
    for t in settings.tiers:
        if ((t.min_amount is None and t.min_age_days is None) or (t.min_amount is not None and amount >= t.min_amount)
                or (t.min_age_days is not None and age >= t.min_age_days)):
            return t
    return settings.tiers[-1]


def due_at(tier: Tier, first_seen: str) -> datetime:
    """A break is due ``due_hours`` after the end of the day it was first reported on."""
    start = datetime.combine(date.fromisoformat(first_seen) + timedelta(days=1), datetime.min.time(), timezone.utc)
    return start + timedelta(hours=tier.due_hours)


# ---- suggested matches ---------------------------------------------------------------------------------

WEIGHTS = {"amount": 40, "time": 20, "reference": 25, "counterparty": 15}
TIME_SCALE_HOURS = 72.0
_REF_KEYS = re.compile(r"ref|end_to_end|remit|memo|instr|purpose", re.IGNORECASE)


def reference_text(entry: dict[str, Any]) -> str:
    """What an entry says about the payment it belongs to: its correlation id and its reference-like attributes."""
    parts = [entry.get("correlation_id") or ""]
    for k, v in sorted((entry.get("attributes") or {}).items()):
        if isinstance(v, str) and _REF_KEYS.search(k):
            parts.append(v)
    return " ".join(p for p in parts if p)


def _similar(a: str, b: str) -> float:
    a, b = re.sub(r"[^0-9a-z]", "", a.lower()), re.sub(r"[^0-9a-z]", "", b.lower())
    if not a or not b:
        return 0.0
    return SequenceMatcher(None, a, b, autojunk=False).ratio()


def _utc(ts: str) -> datetime:
    return datetime.fromisoformat(ts.replace("Z", "+00:00"))


def score(entry: dict[str, Any], candidate: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """A candidate counterpart's confidence, 0-100, and how it is made up: amount closeness (relative),
    time apart, reference similarity and counterparty similarity, weighted as ``WEIGHTS``."""
    a, b = Decimal(entry["amount"]), Decimal(candidate["amount"])
    top = max(a, b)
    # the relative difference in exact decimals (amounts run past what a float holds)
    amount_part = Decimal(1) if top == 0 else max(Decimal(0), 1 - EXACT.divide(abs(a - b), top))
    if entry.get("asset") != candidate.get("asset"):
        amount_part = Decimal(0)
    hours = abs((_utc(entry["booked_at"]) - _utc(candidate["booked_at"])).total_seconds()) / 3600
    time_part = max(0.0, 1.0 - hours / TIME_SCALE_HOURS)
    refs = reference_text(entry), reference_text(candidate)
    ref_part = _similar(*refs)
    cps = entry.get("counterparty") or "", candidate.get("counterparty") or ""
    cp_part = _similar(*cps)
    parts = {"amount": amount_part, "time": time_part, "reference": ref_part, "counterparty": cp_part}
    points = {k: round(WEIGHTS[k] * v) for k, v in parts.items()}
    explain = {
        "amount": {"this": entry["amount"], "candidate": candidate["amount"], "asset": candidate.get("asset"),
                   "points": points["amount"], "of": WEIGHTS["amount"]},
        "time": {"hours_apart": round(hours, 1), "points": points["time"], "of": WEIGHTS["time"]},
        "reference": {"this": refs[0], "candidate": refs[1], "points": points["reference"], "of": WEIGHTS["reference"]},
        "counterparty": {"this": cps[0], "candidate": cps[1], "points": points["counterparty"],
                         "of": WEIGHTS["counterparty"]},
    }
    return min(100, sum(points.values())), explain


def suggest(breaks: list[tuple[str, dict[str, Any]]], candidates: list[tuple[str, dict[str, Any]]], n: int = 3,
            window: int = 8) -> dict[str, list[tuple[str, int, dict[str, Any]]]]:
    """For each (break id, entry) of one side, up to ``n`` candidates among the other side's one-sided breaks:
    the ``window`` nearest in amount on either side within the same asset, scored, best first (ties by id).
    Sorting once and looking at a fixed window keeps it O(n log n), never all candidates per break."""
    from bisect import bisect_left

    by_asset: dict[str, list[tuple[Decimal, str, dict[str, Any]]]] = {}
    for cid, e in candidates:
        by_asset.setdefault(e["asset"], []).append((Decimal(e["amount"]), cid, e))
    for pool in by_asset.values():
        pool.sort(key=lambda t: (t[0], t[1]))
    out: dict[str, list[tuple[str, int, dict[str, Any]]]] = {}
    for bid, e in breaks:
        pool = by_asset.get(e["asset"], [])
        if not pool:
            continue
        i = bisect_left(pool, Decimal(e["amount"]), key=lambda t: t[0])
        scored = []
        for amount, cid, c in pool[max(0, i - window):i + window]:
            s, explain = score(e, c)
            scored.append((cid, s, explain))
        scored.sort(key=lambda t: (-t[1], t[0]))
        out[bid] = scored[:n]
    return out


DEFAULT_PORT = 8600


def desk_base_url(env: dict[str, str] | None = None) -> str:
    """Where the desk is reached (links from Dagster's metadata): ``LEDGER_DESK_URL``, else the local desk."""
    import os

    raw = (env if env is not None else os.environ).get("LEDGER_DESK_URL") or f"http://127.0.0.1:{DEFAULT_PORT}"
    if not re.fullmatch(r"https?://[A-Za-z0-9.\-\[\]:]+(/[A-Za-z0-9._~/\-]*)?", raw):
        raise ConfigError(f"LEDGER_DESK_URL={raw!r} is not an http(s) URL of the desk")
    return raw.rstrip("/")


def trusted_proxies(env: dict[str, str] | None = None) -> list[str]:
    """The reverse proxies whose ``X-Forwarded-For`` / ``X-Forwarded-Proto`` the desk believes
    (``LEDGER_DESK_TRUSTED_PROXIES``: addresses or networks, comma-separated); none by default, so a client
    cannot pick the address the login rate limit counts it under by sending the header itself."""
    import ipaddress
    import os

    raw = (env if env is not None else os.environ).get("LEDGER_DESK_TRUSTED_PROXIES", "")
    out = []
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        try:
            out.append(str(ipaddress.ip_network(item, strict=True)))
        except ValueError:
            raise ConfigError(f"LEDGER_DESK_TRUSTED_PROXIES: {item[:60]!r} is not an IP address or network "
                              "(e.g. 127.0.0.1 or 10.0.0.0/24; '*' is not allowed)") from None
    return out
