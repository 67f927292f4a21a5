"""Ledger configuration (YAML): which ledgers exist, their kind, connection and mapping.

Connections are named by environment variable (``connection_env``, ``rpc_env``); the values are read
only when a connector opens them. A SQL ledger's variable is required: unset or empty, the first use of
the ledger raises :class:`MissingConnection` naming the ledger and the variable (never a value). The
path comes from ``--config`` or ``LEDGER_CONFIG`` (default: ``config/ledgers.example.yaml`` in the
repository).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

import yaml

from . import safe_yaml
from .connectors.evm.decoding import TokenConfig
from .connectors.sql.mapping import ColumnMapping
from .model import NAME_PATTERN
from .settings import REPO_ROOT

KINDS = ("sql", "evm", "iso20022", "cdc")
CDC_SOURCES = ("debezium-postgres",)  # a cdc ledger's connector the project runs (connectors/cdc/connect.py)
DEFAULT_CONFIG = REPO_ROOT / "config" / "ledgers.example.yaml"
_ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*\Z")


class ConfigError(ValueError):
    pass


class MissingConnection(ConfigError):
    """A ledger's connection variable is not configured, unset or empty; the message names the ledger and
    the variable and says what it should hold."""


@dataclass(frozen=True)
class LedgerConfig:
    name: str
    kind: str
    connection_env: str | None = None
    mapping: ColumnMapping | None = None
    # evm
    rpc_env: str | None = None
    tokens: tuple[TokenConfig, ...] = ()
    watched_address: str | None = None
    confirmations: int = 6
    start_block: int = 0
    max_block_range: int = 2000
    # iso20022
    inbox: str | None = None
    assets: tuple[str, ...] = ()
    # cdc: where the changes come from; "debezium-postgres": a Debezium connector the project registers
    # on Kafka Connect for the journal table of connection_env's database (connectors/cdc/connect.py)
    source: str | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def connection_url(self) -> str | None:
        """The value of the ledger's connection variable (``connection_env``, else ``rpc_env``); None when
        none is configured or it is unset or empty."""
        env = self.connection_env or self.rpc_env
        value = os.environ.get(env) if env else None
        return value if value and value.strip() else None

    def require_connection_url(self) -> str:
        """The SQL connection URL in ``connection_env``. There is no default: a ledger read from another
        database than its own would look empty, not broken. Not configured, unset or empty is a
        :class:`MissingConnection` that names the ledger and the variable."""
        hint = f"its connection URL, e.g. sqlite:///path/{self.name}.db or postgresql+psycopg://user@host/db"
        if not self.connection_env:
            raise MissingConnection(
                f"ledger {self.name}: no connection_env configured (the name of the environment variable that "
                f"holds its connection URL, e.g. connection_env: LEDGER_{self.name.upper()}_URL)")
        value = os.environ.get(self.connection_env)
        if value is not None and value.strip():
            return value
        state = "is not set" if value is None else "is empty"
        raise MissingConnection(f"ledger {self.name}: {self.connection_env} {state} ({hint})")

    def inbox_path(self) -> Path:
        p = Path(os.path.expandvars(self.inbox or f".stack/inbox/{self.name}"))
        return p if p.is_absolute() else REPO_ROOT / p


def _ledger(d: dict[str, Any]) -> LedgerConfig:
    name = d.get("name")
    if not isinstance(name, str) or not re.match(NAME_PATTERN, name):
        raise ConfigError(f"ledger name {name!r} must match {NAME_PATTERN}")
    kind = d.get("kind")
    if kind not in KINDS:
        raise ConfigError(f"ledger {name}: kind {kind!r} is not one of {KINDS}")
    for key in ("connection_env", "rpc_env"):
        if d.get(key) is not None and not _ENV_NAME.match(d[key]):
            raise ConfigError(f"ledger {name}: {key} must name an environment variable, got {d[key]!r}")
    try:
        mapping = ColumnMapping.from_dict(d.get("mapping")) if kind in ("sql", "cdc") else None
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"ledger {name}: mapping: {exc}") from None
    tokens = tuple(_token(name, i, t) for i, t in enumerate(_list(name, "tokens", d.get("tokens"))))
    watched = d.get("watched_address")
    if watched is not None and not (isinstance(watched, str) and _ADDRESS.fullmatch(watched)):
        raise ConfigError(f"ledger {name}: watched_address {str(watched)[:80]!r} is not a 0x-prefixed 20-byte hex "
                          "address (quoted: YAML reads 0x... as a number)")
    assets = _list(name, "assets", d.get("assets"))
    if not all(isinstance(a, str) and 0 < len(a) <= 512 for a in assets):
        raise ConfigError(f"ledger {name}: assets must be a list of asset names such as [EUR, USD]")
    options = d.get("options")
    if options is not None and not isinstance(options, dict):
        raise ConfigError(f"ledger {name}: options must be a mapping")
    inbox = d.get("inbox")
    if inbox is not None and not (isinstance(inbox, str) and inbox.strip()):
        raise ConfigError(f"ledger {name}: inbox must be a folder path")
    known = {"name", "kind", "connection_env", "mapping", "rpc_env", "tokens", "watched_address", "confirmations",
             "start_block", "max_block_range", "inbox", "assets", "options", "source"}
    unknown = set(d) - known
    if unknown:
        raise ConfigError(f"ledger {name}: unknown keys {sorted(unknown)}")
    source = d.get("source")
    if source is not None:
        if kind != "cdc" or source not in CDC_SOURCES:
            raise ConfigError(f"ledger {name}: source {source!r} is for kind cdc only, one of {CDC_SOURCES}")
        if not d.get("connection_env"):
            raise ConfigError(f"ledger {name}: source {source} reads the database of connection_env, and none is "
                              "configured")
        if len(name) > 46:  # its slot and publication, ledger_pipelines_<name>, within PostgreSQL's 63 bytes
            raise ConfigError(f"ledger {name}: a {source} ledger's name has at most 46 characters")
        if (d.get("options") or {}).get("debezium_topic"):
            raise ConfigError(f"ledger {name}: source {source} names its own topics; options.debezium_topic is "
                              "for a topic another connector writes")
    return LedgerConfig(
        name=name, kind=kind, source=source, connection_env=d.get("connection_env"), mapping=mapping, rpc_env=d.get("rpc_env"),
        tokens=tokens, watched_address=watched.lower() if watched else None,
        confirmations=_count(f"ledger {name}", "confirmations", d.get("confirmations"), 6, 0, 100_000),
        start_block=_count(f"ledger {name}", "start_block", d.get("start_block"), 0, 0, 2**63 - 1),
        max_block_range=_count(f"ledger {name}", "max_block_range", d.get("max_block_range"), 2000, 1, 10_000_000),
        inbox=inbox, assets=tuple(assets), options=dict(options or {}),
    )


_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
_SYMBOL = re.compile(r"[^\s\x00-\x1f\x7f]{1,64}")


def _count(where: str, key: str, value: Any, default: int, lo: int, hi: int) -> int:
    """An integer setting from ``lo`` to ``hi`` (``default`` when absent); true/false and text are refused."""
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ConfigError(f"{where}: {key} must be an integer from {lo} to {hi}, got {str(value)[:80]!r}")
    return value


def _list(name: str, key: str, value: Any) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ConfigError(f"ledger {name}: {key} must be a list, got {type(value).__name__}")
    return value


def _token(name: str, i: int, t: Any) -> TokenConfig:
    where = f"ledger {name}: tokens[{i}]"
    if not isinstance(t, dict):
        raise ConfigError(f"{where} must be a mapping of address, symbol and decimals")
    unknown = set(t) - {"address", "symbol", "decimals"}
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)}")
    address, symbol = t.get("address"), t.get("symbol")
    if not (isinstance(address, str) and _ADDRESS.fullmatch(address)):
        raise ConfigError(f"{where}: address {str(address)[:80]!r} is not a 0x-prefixed 20-byte hex address "
                          "(quoted: YAML reads 0x... as a number)")
    if symbol is not None and not (isinstance(symbol, str) and _SYMBOL.fullmatch(symbol)):
        raise ConfigError(f"{where}: symbol {str(symbol)[:80]!r} must be 1 to 64 characters without spaces")
    decimals = t.get("decimals")
    if decimals is not None:  # ERC-20 decimals are a uint8
        decimals = _count(where, "decimals", decimals, 0, 0, 255)
    return TokenConfig(address=address.lower(), symbol=symbol, decimals=decimals)


def config_path(path: str | Path | None = None) -> Path:
    return Path(path or os.environ.get("LEDGER_CONFIG") or DEFAULT_CONFIG)


def _document(path: str | Path | None) -> dict[str, Any]:
    p = config_path(path)
    try:
        doc = safe_yaml.load(p.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read ledger configuration {p}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"ledger configuration {p}: not valid YAML: {safe_yaml.describe(exc)}") from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise ConfigError(f"ledger configuration {p}: expected a mapping at the top, got {type(doc).__name__}")
    return doc


@dataclass(frozen=True)
class ProjectConfig:
    """The whole configuration file, read and checked once: the ledgers, the reconciliation pairs, the
    first partition day and the nightly audit's time. Built once where the process starts (the Dagster
    definitions, a CLI command) and passed to what needs it."""

    path: Path
    ledgers: list[LedgerConfig]
    pairs: list[dict[str, Any]]
    partitions_start: str
    audit_schedule: dict[str, int]
    document: dict[str, Any] = field(repr=False, compare=False)


def load_project(path: str | Path | None = None) -> ProjectConfig:
    p = config_path(path)
    doc = _document(p)
    ledgers = [_ledger(d) for d in doc.get("ledgers", []) or []]
    names = [lc.name for lc in ledgers]
    if len(set(names)) != len(names):
        raise ConfigError(f"{p}: duplicate ledger names {names}")
    pairs = doc.get("reconciliations") or []
    if not isinstance(pairs, list):
        raise ConfigError(f"{p}: reconciliations must be a list of ledger pairs")
    pair_names: set[str] = set()
    for i, pair in enumerate(pairs):
        if not isinstance(pair, dict):
            raise ConfigError(f"{p}: reconciliations[{i}] must be a mapping (name, left, right, rules)")
        pair_name = pair.get("name")
        # the name of the pair's folder in each day's report, of its Dagster check and its desk records
        if not isinstance(pair_name, str) or not re.match(NAME_PATTERN, pair_name):
            raise ConfigError(f"{p}: reconciliations[{i}]: name {str(pair_name)[:80]!r} must match {NAME_PATTERN}")
        if pair_name in pair_names:
            raise ConfigError(f"{p}: reconciliation {pair_name}: the name is given twice")
        if pair_name == "data_docs" or pair_name in {f"bridge_{n}" for n in names}:
            raise ConfigError(f"{p}: reconciliation {pair_name}: the name of another folder of each day's report "
                              "(data_docs, bridge_<ledger>)")
        pair_names.add(pair_name)
        unknown = set(pair) - {"name", "left", "right", "rules", "left_filter", "right_filter"}
        if unknown:
            raise ConfigError(f"{p}: reconciliation {pair_name}: unknown keys {sorted(unknown)}")
        for side in ("left", "right"):
            if pair.get(side) not in names:
                raise ConfigError(f"reconciliation {pair_name}: {side} ledger {pair.get(side)!r} "
                                  "is not configured")
    return ProjectConfig(path=p, ledgers=ledgers, pairs=pairs,
                         partitions_start=_start_day(p, doc.get("partitions_start")),
                         audit_schedule=_schedule(p, doc.get("audit_schedule")), document=doc)


def _start_day(p: Path, value: Any) -> str:
    """``partitions_start``: a day, as YAML reads an unquoted one (a date) or ISO text."""
    if value is None:
        return "2026-11-01"
    if isinstance(value, date) and not isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, str) and re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", value):
        try:
            return date.fromisoformat(value).isoformat()
        except ValueError:
            pass
    raise ConfigError(f"{p}: partitions_start {str(value)[:80]!r} is not a day (YYYY-MM-DD)")


def _schedule(p: Path, value: Any) -> dict[str, int]:
    """``audit_schedule``: the nightly audit's hour and minute (UTC)."""
    if value is None:
        value = {}
    if not isinstance(value, dict) or set(value) - {"hour", "minute"}:
        raise ConfigError(f"{p}: audit_schedule must be a mapping of hour and minute, e.g. {{hour: 2, minute: 30}}")
    return {"hour": _count(f"{p}: audit_schedule", "hour", value.get("hour"), 2, 0, 23),
            "minute": _count(f"{p}: audit_schedule", "minute", value.get("minute"), 30, 0, 59)}


def load_config(path: str | Path | None = None) -> list[LedgerConfig]:
    """The configured ledgers (the whole file is read and checked)."""
    return load_project(path).ledgers


def ledger_by_name(ledgers: list[LedgerConfig], name: str) -> LedgerConfig:
    for lc in ledgers:
        if lc.name == name:
            return lc
    raise ConfigError(f"no ledger {name!r} configured (known: {[lc.name for lc in ledgers]})")




def reconciliation_pairs(path: str | Path | None = None) -> list[dict[str, Any]]:
    """``reconciliations:`` of the configuration: ledger pairs and their rules."""
    return load_project(path).pairs
