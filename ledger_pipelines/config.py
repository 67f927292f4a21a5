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
    tokens = tuple(
        TokenConfig(address=str(t["address"]).lower(), symbol=t.get("symbol"), decimals=t.get("decimals"))
        for t in d.get("tokens", [])
    )
    watched = d.get("watched_address")
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
        confirmations=int(d.get("confirmations", 6)), start_block=int(d.get("start_block", 0)),
        max_block_range=int(d.get("max_block_range", 2000)), inbox=d.get("inbox"),
        assets=tuple(d.get("assets", ())), options=dict(d.get("options", {})),
    )


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
    pairs = doc.get("reconciliations", []) or []
    for pair in pairs:
        for side in ("left", "right"):
            if pair.get(side) not in names:
                raise ConfigError(f"reconciliation {pair.get('name')!r}: {side} ledger {pair.get(side)!r} "
                                  "is not configured")
    schedule = doc.get("audit_schedule") or {}
    return ProjectConfig(path=p, ledgers=ledgers, pairs=pairs,
                         partitions_start=str(doc.get("partitions_start", "2026-11-01")),
                         audit_schedule={"hour": int(schedule.get("hour", 2)), "minute": int(schedule.get("minute", 30))},
                         document=doc)


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
