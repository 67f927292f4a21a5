"""Trigger rules: ``triggers:`` of the ledger configuration, parsed and checked (rule names, source and target
ledgers, action types, topics, filter keys), and the filter that decides whether an entry acts now."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from ..config import ConfigError, LedgerConfig, ledger_by_name
from ..model import CanonicalEntry

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


def load_rules(doc: dict[str, Any], ledgers: list[LedgerConfig]) -> list[TriggerRule]:
    rules, names = [], set()
    for d in doc.get("triggers", []) or []:
        name = d.get("name")
        if not isinstance(name, str) or not _RULE_NAME.match(name) or name in names:
            raise ConfigError(f"trigger name {name!r} must be unique and match {_RULE_NAME.pattern}")
        names.add(name)
        ledger_by_name(ledgers, d.get("source"))
        action = dict(d.get("action") or {})
        if action.get("type") not in ACTION_TYPES:
            raise ConfigError(f"trigger {name}: action type {action.get('type')!r} is not one of {ACTION_TYPES}")
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
        unknown = set(f) - {"status", "direction", "account", "asset", "min_amount", "max_amount", "attributes",
                            "has_correlation"}
        if unknown:
            raise ConfigError(f"trigger {name}: unknown filter keys {sorted(unknown)}")
        on_orphaned = d.get("on_orphaned", "hold")
        if on_orphaned not in ("hold", "compensate"):
            raise ConfigError(f"trigger {name}: on_orphaned must be hold or compensate")
        rules.append(TriggerRule(
            name=name, source=d["source"], action=action, statuses=_as_tuple(f.get("status")) or ("booked", "final"),
            directions=_as_tuple(f.get("direction")), accounts=_as_tuple(f.get("account")),
            assets=_as_tuple(f.get("asset")),
            min_amount=Decimal(str(f["min_amount"])) if f.get("min_amount") is not None else None,
            max_amount=Decimal(str(f["max_amount"])) if f.get("max_amount") is not None else None,
            attributes=dict(f.get("attributes") or {}), has_correlation=bool(f.get("has_correlation", False)),
            on_orphaned=on_orphaned,
        ))
    return rules
