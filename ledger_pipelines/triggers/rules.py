"""Trigger rules: ``triggers:`` of the ledger configuration, parsed and checked (rule names, source and target
ledgers, action types, topics, filter keys), and the filter that decides whether an entry acts now."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from ..config import ConfigError, LedgerConfig, ledger_by_name
from ..model import STATUSES, CanonicalEntry, amount_is_canonical

ACTION_TYPES = ("bridge_record", "sql_post", "publish")
_RULE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}\Z")
_TOPIC = re.compile(r"^[A-Za-z0-9._\-]{1,200}\Z")

@dataclass(frozen=True)
class TriggerRule:
    name: str
    source: str
    action: dict[str, Any]
    statuses: tuple[str, ...] = ("booked", "final")
    directions: tuple[str, ...] = ()
    accounts: tuple[str, ...] = ()
    assets: tuple[str, ...] = ()
    min_amount: Decimal | None = None
    max_amount: Decimal | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    has_correlation: bool = False
    on_orphaned: str = "hold"

    @property
    def kind(self) -> str:
        return self.action["type"]

    def matches(self, e: CanonicalEntry) -> bool:
        if self.directions and e.direction not in self.directions:
            return False
        if self.accounts and e.account not in self.accounts:
            return False
        if self.assets and e.asset not in self.assets:
            return False
        if self.has_correlation and not e.correlation_id:
            return False
        if self.min_amount is not None or self.max_amount is not None:
            amount = Decimal(e.amount)
            if self.min_amount is not None and amount < self.min_amount:
                return False
            if self.max_amount is not None and amount > self.max_amount:
                return False
        return all(e.attributes.get(k) == v for k, v in self.attributes.items())

    def decide(self, e: CanonicalEntry) -> str | None:
        """``apply``, ``compensate`` (an orphaned version under ``compensate``), or None (not now)."""
        if e.ledger != self.source or not self.matches(e):
            return None
        if e.status == "orphaned":
            return "compensate"  # acted only when an apply is logged (see TriggerEngine)
        if e.status == "pending":
            return "apply" if self.on_orphaned == "compensate" else None  # hold: wait until final
        return "apply" if e.status in self.statuses else None


def _as_tuple(v: Any) -> tuple:
    if v is None:
        return ()
    return tuple(v) if isinstance(v, (list, tuple)) else (v,)


def rules_from_config(path=None) -> list[TriggerRule]:
    """``triggers:`` of the ledger configuration file (``LEDGER_CONFIG``)."""
    from ..config import _document, load_config

    return load_rules(_document(path), load_config(path))


_RULE_KEYS = {"name", "source", "action", "filter", "on_orphaned"}
_ACTION_KEYS = {"bridge_record": {"type", "reference"},
                "sql_post": {"type", "ledger", "debit_account", "credit_account"},
                "publish": {"type", "topic"}}
def _amount(name: str, key: str, value: Any) -> Decimal | None:
    """A filter bound: a non-negative decimal written out as an entry's amount is (``"45000"``, ``"0.01"``; no NaN,
    infinity or exponent)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)) or not amount_is_canonical(str(value)):
        raise ConfigError(f"trigger {name}: filter {key} {str(value)[:80]!r} is not a non-negative decimal amount "
                          "(quoted, e.g. \"45000.00\")")
    return Decimal(str(value))


def _choices(name: str, key: str, value: Any, allowed: tuple[str, ...]) -> tuple[str, ...]:
    values = _as_tuple(value)
    wrong = [v for v in values if v not in allowed]
    if wrong:
        raise ConfigError(f"trigger {name}: filter {key} {wrong[0]!r} is not one of {allowed}")
    return values


def load_rules(doc: dict[str, Any], ledgers: list[LedgerConfig]) -> list[TriggerRule]:
    rules, names = [], set()
    triggers = doc.get("triggers", []) or []
    if not isinstance(triggers, list) or not all(isinstance(d, dict) for d in triggers):
        raise ConfigError("triggers must be a list of rules (mappings of name, source, action, filter)")
    for d in triggers:
        name = d.get("name")
        if not isinstance(name, str) or not _RULE_NAME.match(name) or name in names:
            raise ConfigError(f"trigger name {name!r} must be unique and match {_RULE_NAME.pattern}")
        names.add(name)
        unknown = set(d) - _RULE_KEYS
        if unknown:  # a misspelt filter: or on_orphaned: would act on every entry or fall back to hold
            raise ConfigError(f"trigger {name}: unknown keys {sorted(unknown)} (known: {sorted(_RULE_KEYS)})")
        ledger_by_name(ledgers, d.get("source"))
        if not isinstance(d.get("action"), dict):
            raise ConfigError(f"trigger {name}: action must be a mapping with a type of {ACTION_TYPES}")
        action = dict(d["action"])
        if action.get("type") not in ACTION_TYPES:
            raise ConfigError(f"trigger {name}: action type {action.get('type')!r} is not one of {ACTION_TYPES}")
        unknown = set(action) - _ACTION_KEYS[action["type"]]
        if unknown:
            raise ConfigError(f"trigger {name}: unknown keys of a {action['type']} action {sorted(unknown)} "
                              f"(known: {sorted(_ACTION_KEYS[action['type']])})")
        if action["type"] == "sql_post":
            target = ledger_by_name(ledgers, action.get("ledger"))
            if target.kind != "sql":
                raise ConfigError(f"trigger {name}: sql_post needs a sql ledger, {target.name} is {target.kind}")
            for k in ("debit_account", "credit_account"):
                if not isinstance(action.get(k), str) or not action[k]:
                    raise ConfigError(f"trigger {name}: sql_post needs {k}")
        if action["type"] == "publish" and not _TOPIC.match(str(action.get("topic", ""))):
            raise ConfigError(f"trigger {name}: publish needs a valid topic, got {action.get('topic')!r}")
        if action["type"] == "bridge_record" and action.get("reference", "correlation_id") not in (
                "correlation_id", "entry_id"):
            raise ConfigError(f"trigger {name}: reference must be correlation_id or entry_id")
        f = d.get("filter") or {}
        if not isinstance(f, dict):
            raise ConfigError(f"trigger {name}: filter must be a mapping")
        unknown = set(f) - {"status", "direction", "account", "asset", "min_amount", "max_amount", "attributes",
                            "has_correlation"}
        if unknown:
            raise ConfigError(f"trigger {name}: unknown filter keys {sorted(unknown)}")
        on_orphaned = d.get("on_orphaned", "hold")
        if on_orphaned not in ("hold", "compensate"):
            raise ConfigError(f"trigger {name}: on_orphaned must be hold or compensate")
        low, high = _amount(name, "min_amount", f.get("min_amount")), _amount(name, "max_amount", f.get("max_amount"))
        if low is not None and high is not None and low > high:
            raise ConfigError(f"trigger {name}: filter min_amount {low} is above max_amount {high}: nothing would match")
        has_correlation = f.get("has_correlation", False)
        if not isinstance(has_correlation, bool):
            raise ConfigError(f"trigger {name}: filter has_correlation must be true or false, got {has_correlation!r}")
        if not isinstance(f.get("attributes") or {}, dict):
            raise ConfigError(f"trigger {name}: filter attributes must be a mapping")
        rules.append(TriggerRule(
            name=name, source=d["source"], action=action,
            statuses=_choices(name, "status", f.get("status"), STATUSES) or ("booked", "final"),
            directions=_choices(name, "direction", f.get("direction"), ("debit", "credit")),
            accounts=_as_tuple(f.get("account")), assets=_as_tuple(f.get("asset")), min_amount=low, max_amount=high,
            attributes=dict(f.get("attributes") or {}), has_correlation=has_correlation, on_orphaned=on_orphaned,
        ))
    return rules
