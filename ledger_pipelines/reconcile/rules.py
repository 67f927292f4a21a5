"""Reconciliation rules (YAML). Every field has a default, so an empty file is a valid rule set.

```yaml
key: correlation_id            # exact-key matching on this entry field
time_window: 2d                # legs booked further apart are a `timing` break (s, m, h, d; at most 31d)
direction: opposite            # expected direction of the right leg: opposite | same | any
amount_tolerance:              # tolerant matching of amounts (exact by default)
  absolute: "0.00"             # >= 0
  relative: "0"                # fraction in [0, 1), e.g. "0.001" = 0.1 %
fx:                            # cross-asset legs: right amount ~ left amount * rate (rate > 0)
  - {from: EUR, to: USDC, rate: "1.0842"}
tolerant_matching: true        # leftovers matched by asset, amount tolerance and time window
batch_members: attributes.details[].refs.EndToEndId   # ids of a batch entry's members (one-to-many); null: none
duplicate_key: [correlation_id, asset, amount, direction]   # same on one side = duplicate
```

A rule set is checked against this schema before it is used: unknown keys, wrong types (a quoted
``"false"`` is not a boolean, an unquoted ``0.001`` is a binary float, not a decimal) and values out
of range are refused with a :class:`RulesError` naming the key by its dotted path
(``rules.fx[0].rate``). Decimals are plain decimal strings (or integers) of at most 64 characters,
so that every product of an amount and a rate stays exact in the engine's 200-digit context.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml

from .. import safe_yaml
from ..money import EXACT, plain

_FIELDS = ("entry_id", "correlation_id", "account", "counterparty", "asset", "amount", "direction", "source_ref")
_ENTRY_FIELDS = _FIELDS + ("ledger", "ledger_kind", "booked_at", "value_date", "status", "position", "attributes")
_DIRECTIONS = ("opposite", "same", "any")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"^([0-9]+)([smhd])$")
_PLAIN_DECIMAL = re.compile(r"^(0|[1-9][0-9]*)(\.[0-9]+)?$")
_DECIMAL_CHARS = 64
_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\[\])?(\.[A-Za-z_][A-Za-z0-9_]*(\[\])?)*$")
MAX_WINDOW_SECONDS = 31 * 86400
MAX_RULES_BYTES = 1 << 20

DEFAULT_BATCH_MEMBERS = "attributes.details[].refs.EndToEndId"
DEFAULT_DUPLICATE_KEY = ("correlation_id", "asset", "amount", "direction")


class RulesError(ValueError):
    pass


@dataclass(frozen=True)
class FxRate:
    source: str
    target: str
    rate: Decimal


@dataclass(frozen=True)
class Rules:
    """Built from YAML through :meth:`from_dict` (checked); constructing it directly is for rule sets
    defined in code, such as the audit's bridge check, which may use a window beyond the user bound."""

    key: str = "correlation_id"
    time_window_seconds: int = 2 * 86400
    direction: str = "opposite"
    tolerance_absolute: Decimal = Decimal(0)
    tolerance_relative: Decimal = Decimal(0)
    fx: tuple[FxRate, ...] = ()
    tolerant_matching: bool = True
    batch_members: str | None = DEFAULT_BATCH_MEMBERS
    duplicate_key: tuple[str, ...] = DEFAULT_DUPLICATE_KEY
    source: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Any, where: str = "rules") -> "Rules":
        """``where`` is the dotted path of ``d`` in its document, the prefix of every message."""
        if d is None:
            d = {}
        values = _check_mapping(d, where, _SCHEMA)
        tol = values.pop("amount_tolerance", {})
        return cls(**values, tolerance_absolute=tol.get("absolute", Decimal(0)),
                   tolerance_relative=tol.get("relative", Decimal(0)), source=dict(d))

    def rate_between(self, a: str, b: str) -> tuple[Decimal, bool] | None:
        """How amounts of ``a`` and ``b`` compare: ``(rate, False)`` when an amount of ``a`` times ``rate`` is
        one of ``b`` (the same asset: rate 1), ``(rate, True)`` when a rate is configured from ``b`` to ``a``
        (an amount of ``b`` times ``rate`` is one of ``a``), None without a rate. Never a quotient: the
        inverse of a rate has no finite decimal in general, so the side in the rate's source asset is the
        one multiplied."""
        if a == b:
            return Decimal(1), False
        for r in self.fx:
            if (r.source, r.target) == (a, b):
                return r.rate, False
            if (r.source, r.target) == (b, a):
                return r.rate, True
        return None

    def compare(self, a: str, x: Decimal, b: str, y: Decimal) -> tuple[str, Decimal, Decimal] | None:
        """``x`` of ``a`` and ``y`` of ``b`` in one asset, exactly: ``(asset, x', y')``, the amount in a rate's
        source asset converted at the rate into its target (the same asset: as they are); None without a
        rate between them."""
        found = self.rate_between(a, b)
        if found is None:
            return None
        rate, inverse = found  # the same asset: rate 1, not inverse
        return (a, x, EXACT.multiply(y, rate)) if inverse else (b, EXACT.multiply(x, rate), y)

    def within_tolerance(self, expected: Decimal, actual: Decimal) -> bool:
        diff = EXACT.abs(EXACT.subtract(expected, actual))
        return diff <= self.tolerance_absolute or diff <= EXACT.multiply(EXACT.abs(expected), self.tolerance_relative)

    def describe(self) -> dict[str, Any]:
        return {"key": self.key, "time_window_seconds": self.time_window_seconds, "direction": self.direction,
                "amount_tolerance": {"absolute": plain(self.tolerance_absolute),
                                     "relative": plain(self.tolerance_relative)},
                "fx": [{"from": r.source, "to": r.target, "rate": plain(r.rate)} for r in self.fx],
                "tolerant_matching": self.tolerant_matching, "batch_members": self.batch_members,
                "duplicate_key": list(self.duplicate_key)}


# -- schema: one checker per key, each returning the typed value or raising with the key's path ------

def _type_name(value: Any) -> str:
    if isinstance(value, str):
        return f"the string {value[:80]!r}"
    return f"{type(value).__name__} {str(value)[:80]}"


def _check_mapping(value: Any, path: str, schema: dict[str, tuple[str, Callable[[Any, str], Any]]]) -> dict:
    if not isinstance(value, dict):
        raise RulesError(f"{path}: expected a mapping, got {_type_name(value)}")
    out = {}
    for k, v in value.items():
        if k not in schema:
            raise RulesError(f"{path}.{str(k)[:80]}: unknown key (known: {', '.join(sorted(schema))})")
        name, check = schema[k]
        out[name] = check(v, f"{path}.{k}")
    return out


def _one_of(choices: tuple[str, ...]) -> Callable[[Any, str], str]:
    def check(value: Any, path: str) -> str:
        if not isinstance(value, str) or value not in choices:
            raise RulesError(f"{path}: expected one of {', '.join(choices)}, got {_type_name(value)}")
        return value
    return check


def _boolean(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise RulesError(f"{path}: expected a YAML boolean (true or false, unquoted), got {_type_name(value)}")
    return value


def _decimal(value: Any, path: str) -> Decimal:
    if isinstance(value, float):
        raise RulesError(f"{path}: write decimals as quoted strings ({value!r} was read as a binary float)")
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise RulesError(f"{path}: expected a decimal string, got {_type_name(value)}")
    if len(value) > _DECIMAL_CHARS or not _PLAIN_DECIMAL.match(value):
        raise RulesError(f"{path}: {value[:80]!r} is not a plain non-negative decimal of at most "
                         f"{_DECIMAL_CHARS} characters (digits and an optional fraction, no sign or exponent)")
    return Decimal(value)


def _relative(value: Any, path: str) -> Decimal:
    d = _decimal(value, path)
    if d >= 1:
        raise RulesError(f"{path}: {value!r} must be a fraction in [0, 1)")
    return d


def _window(value: Any, path: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        seconds = value
    elif isinstance(value, str) and (m := _DURATION.match(value.strip())):
        # more digits than any window in range: refused without converting them
        seconds = int(m.group(1)) * _UNITS[m.group(2)] if len(m.group(1)) <= 12 else MAX_WINDOW_SECONDS + 1
    else:
        raise RulesError(f"{path}: {_type_name(value)} is not a duration like 90s, 15m, 6h or 2d")
    if not 0 <= seconds <= MAX_WINDOW_SECONDS:
        raise RulesError(f"{path}: {str(value)[:80]!r} is outside 0 to 31d ({MAX_WINDOW_SECONDS}s)")
    return seconds


def _field_name(value: Any, path: str) -> str:
    return _one_of(_FIELDS)(value, path)


def _duplicate_key(value: Any, path: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise RulesError(f"{path}: expected a non-empty list of entry fields, got {_type_name(value)}")
    names = tuple(_field_name(v, f"{path}[{i}]") for i, v in enumerate(value))
    if len(set(names)) != len(names):
        raise RulesError(f"{path}: a field is listed twice ({', '.join(names)})")
    return names


def _batch_members(value: Any, path: str) -> str | None:
    if value is None:
        return None
    if (not isinstance(value, str) or len(value) > 200 or not _PATH.match(value)
            or value.split(".")[0].removesuffix("[]") not in _ENTRY_FIELDS):
        raise RulesError(f"{path}: expected null or a path like {DEFAULT_BATCH_MEMBERS} starting at an entry "
                         f"field, got {_type_name(value)}")
    return value


def _asset(value: Any, path: str) -> str:
    if not isinstance(value, str) or not value or len(value) > 512:
        raise RulesError(f"{path}: expected an asset code (a non-empty string), got {_type_name(value)}")
    return value


def _positive_rate(value: Any, path: str) -> Decimal:
    d = _decimal(value, path)
    if d <= 0:
        raise RulesError(f"{path}: {value!r} must be greater than 0")
    return d


_FX_SCHEMA = {"from": ("source", _asset), "to": ("target", _asset), "rate": ("rate", _positive_rate)}


def _fx(value: Any, path: str) -> tuple[FxRate, ...]:
    if not isinstance(value, list):
        raise RulesError(f"{path}: expected a list of {{from, to, rate}}, got {_type_name(value)}")
    out: list[FxRate] = []
    pairs: dict[frozenset, int] = {}
    for i, item in enumerate(value):
        where = f"{path}[{i}]"
        got = _check_mapping(item, where, _FX_SCHEMA)
        missing = [k for k, (name, _) in _FX_SCHEMA.items() if name not in got]
        if missing:
            raise RulesError(f"{where}: missing {', '.join(missing)}")
        r = FxRate(**got)
        if r.source == r.target:
            raise RulesError(f"{where}: from and to are both {r.source!r}")
        pair = frozenset((r.source, r.target))
        if pair in pairs:  # either direction: which rate applies would depend on the order
            raise RulesError(f"{where}: a rate between {r.source} and {r.target} is already given at "
                             f"{path}[{pairs[pair]}]")
        pairs[pair] = i
        out.append(r)
    return tuple(out)


_TOLERANCE_SCHEMA = {"absolute": ("absolute", _decimal), "relative": ("relative", _relative)}

_SCHEMA: dict[str, tuple[str, Callable[[Any, str], Any]]] = {
    "key": ("key", _field_name),
    "time_window": ("time_window_seconds", _window),
    "direction": ("direction", _one_of(_DIRECTIONS)),
    "amount_tolerance": ("amount_tolerance", lambda v, p: _check_mapping(v, p, _TOLERANCE_SCHEMA)),
    "fx": ("fx", _fx),
    "tolerant_matching": ("tolerant_matching", _boolean),
    "batch_members": ("batch_members", _batch_members),
    "duplicate_key": ("duplicate_key", _duplicate_key),
}


def load_rules(path: str | Path | None) -> Rules:
    if path is None:
        return Rules()
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_RULES_BYTES + 1)
    except OSError as exc:
        raise RulesError(f"cannot read rules {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_RULES_BYTES:
        raise RulesError(f"rules {path}: larger than {MAX_RULES_BYTES} bytes")
    try:
        doc = safe_yaml.load(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise RulesError(f"rules {path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except yaml.YAMLError as exc:
        raise RulesError(f"rules {path}: not valid YAML: {safe_yaml.describe(exc)}") from None
    try:
        return Rules.from_dict(doc)
    except RulesError as exc:
        raise RulesError(f"rules {path}: {exc}") from None
