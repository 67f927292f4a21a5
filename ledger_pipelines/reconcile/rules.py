"""Reconciliation rules (YAML). Every field has a default, so an empty file is a valid rule set.

```yaml
key: correlation_id            # exact-key matching on this entry field
time_window: 2d                # legs booked further apart are a `timing` break (s, m, h, d)
direction: opposite            # expected direction of the right leg: opposite | same | any
amount_tolerance:              # tolerant matching of amounts (exact by default)
  absolute: "0.00"
  relative: "0"                # fraction, e.g. "0.001" = 0.1 %
fx:                            # cross-asset legs: right amount ~ left amount * rate
  - {from: EUR, to: USDC, rate: "1.0842"}
tolerant_matching: true        # leftovers matched by asset, amount tolerance and time window
batch_members: attributes.details[].refs.EndToEndId   # ids of a batch entry's members (one-to-many)
duplicate_key: [correlation_id, asset, amount, direction]   # same on one side = duplicate
```
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import yaml

_DURATION = re.compile(r"^\s*(\d+)\s*([smhd])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_FIELDS = ("entry_id", "correlation_id", "account", "counterparty", "asset", "amount", "direction", "source_ref")


class RulesError(ValueError):
    pass


def _decimal(value: Any, what: str) -> Decimal:
    if isinstance(value, float):
        raise RulesError(f"{what}: write decimals as strings ({value!r} is a float)")
    try:
        d = Decimal(str(value))
    except InvalidOperation:
        raise RulesError(f"{what}: {value!r} is not a decimal") from None
    if not d.is_finite() or d < 0:
        raise RulesError(f"{what}: {value!r} must be a finite non-negative decimal")
    return d


def _seconds(value: Any) -> int:
    if isinstance(value, int):
        return value
    m = _DURATION.match(str(value))
    if not m:
        raise RulesError(f"time_window: {value!r} is not a duration like 90s, 15m, 6h or 2d")
    return int(m.group(1)) * _UNITS[m.group(2)]


@dataclass(frozen=True)
class FxRate:
    source: str
    target: str
    rate: Decimal


@dataclass(frozen=True)
class Rules:
    key: str = "correlation_id"
    time_window_seconds: int = 2 * 86400
    direction: str = "opposite"
    tolerance_absolute: Decimal = Decimal(0)
    tolerance_relative: Decimal = Decimal(0)
    fx: tuple[FxRate, ...] = ()
    tolerant_matching: bool = True
    batch_members: str | None = "attributes.details[].refs.EndToEndId"
    duplicate_key: tuple[str, ...] = ("correlation_id", "asset", "amount", "direction")
    source: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "Rules":
        d = dict(d or {})
        unknown = set(d) - {"key", "time_window", "direction", "amount_tolerance", "fx", "tolerant_matching",
                            "batch_members", "duplicate_key"}
        if unknown:
            raise RulesError(f"unknown rule keys {sorted(unknown)}")
        key = d.get("key", "correlation_id")
        if key not in _FIELDS:
            raise RulesError(f"key: {key!r} is not one of {_FIELDS}")
        direction = d.get("direction", "opposite")
        if direction not in ("opposite", "same", "any"):
            raise RulesError("direction: opposite, same or any")
        tol = d.get("amount_tolerance") or {}
        fx = tuple(FxRate(str(r["from"]), str(r["to"]), _decimal(r["rate"], "fx rate")) for r in d.get("fx") or [])
        dup = tuple(d.get("duplicate_key") or ("correlation_id", "asset", "amount", "direction"))
        for f in dup:
            if f not in _FIELDS:
                raise RulesError(f"duplicate_key: {f!r} is not one of {_FIELDS}")
        return cls(
            key=key, time_window_seconds=_seconds(d.get("time_window", "2d")), direction=direction,
            tolerance_absolute=_decimal(tol.get("absolute", "0"), "amount_tolerance.absolute"),
            tolerance_relative=_decimal(tol.get("relative", "0"), "amount_tolerance.relative"),
            fx=fx, tolerant_matching=bool(d.get("tolerant_matching", True)),
            batch_members=d.get("batch_members", "attributes.details[].refs.EndToEndId"), duplicate_key=dup,
            source=d,
        )

    def rate(self, source: str, target: str) -> Decimal | None:
        """Units of ``target`` per unit of ``source``; the inverse rate works the other way."""
        for r in self.fx:
            if (r.source, r.target) == (source, target):
                return r.rate
            if (r.source, r.target) == (target, source):
                return Decimal(1) / r.rate
        return None

    def within_tolerance(self, expected: Decimal, actual: Decimal) -> bool:
        diff = abs(expected - actual)
        return diff <= self.tolerance_absolute or diff <= abs(expected) * self.tolerance_relative

    def describe(self) -> dict[str, Any]:
        return {"key": self.key, "time_window_seconds": self.time_window_seconds, "direction": self.direction,
                "amount_tolerance": {"absolute": str(self.tolerance_absolute),
                                     "relative": str(self.tolerance_relative)},
                "fx": [{"from": r.source, "to": r.target, "rate": str(r.rate)} for r in self.fx],
                "tolerant_matching": self.tolerant_matching, "batch_members": self.batch_members,
                "duplicate_key": list(self.duplicate_key)}


def load_rules(path: str | Path | None) -> Rules:
    if path is None:
        return Rules()
    try:
        return Rules.from_dict(yaml.safe_load(Path(path).read_text()))
    except OSError as exc:
        raise RulesError(f"cannot read rules {path}: {exc}") from None
