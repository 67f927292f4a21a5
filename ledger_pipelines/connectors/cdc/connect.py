"""A ``kind: cdc`` ledger with ``source: debezium-postgres``: its Debezium PostgreSQL connector on a Kafka
Connect worker, registered, described and removed by the project.

- The connector reads the ledger's journal table (``mapping.schema`` / ``mapping.table``) from the
  PostgreSQL database of ``connection_env`` through ``pgoutput``, with a publication the project
  creates (``ledger_pipelines_<ledger>``) and a replication slot of the same name.
- Amounts arrive as exact decimal strings (``decimal.handling.mode=string``), and every transaction is
  framed by BEGIN/END records on ``<topic.prefix>.transaction`` (``provide.transaction.metadata``), so
  that the publisher hands a posting on only once all of its lines have arrived.
- The database password is never a value of the connector's configuration (Connect keeps that in a
  Kafka topic): it is ``${file:<path>:password}``, resolved by the worker's ``FileConfigProvider``
  from a file readable by its owner only.
- Removing the ledger from the configuration and running ``ledger-pipelines cdc sync`` stops the
  connector, deletes its stored source offsets and the connector, then drops its replication slot
  (a slot left behind pins the database's WAL for ever).
"""

from __future__ import annotations

import json
import os
import re
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...config import CDC_SOURCES as SOURCES
from ...config import load_config
from ...settings import KafkaSettings, StackConfig, redact_url, write_secret

NAME_PREFIX = "ledger-pipelines."
_NAME = re.compile(r"^ledger-pipelines\.([a-z][a-z0-9_]{0,62})\Z")


class ConnectError(RuntimeError):
    pass


def connect_url() -> str:
    """The Kafka Connect REST endpoint: ``LEDGER_CONNECT_URL``, else the local stack's worker."""
    return (os.environ.get("LEDGER_CONNECT_URL") or StackConfig.from_env().connect_url).rstrip("/")


def _request(method: str, url: str, body: Any = None, timeout: float = 120.0) -> tuple[int, Any]:
    """(HTTP status, JSON body) of a Connect REST call. A worker in the middle of a rebalance (after a
    restart, while a dead member is still in its group) answers 409 or not at all for a while: such calls
    are repeated until ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        code, doc = _once(method, url, body, min(30.0, max(1.0, deadline - time.monotonic())))
        if code not in (409, None) or time.monotonic() > deadline:
            if code is None:
                raise ConnectError(f"Kafka Connect at {url.split('/connectors')[0]} does not answer: {doc}")
            return code, doc
        time.sleep(0.5)


def _once(method: str, url: str, body: Any, timeout: float) -> tuple[int | None, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json",
                                                                        "Accept": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
            return resp.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            doc = json.loads(raw) if raw else None
        except ValueError:
            doc = raw.decode(errors="replace")[:500]
        return exc.code, doc
    except (urllib.error.URLError, OSError) as exc:
        return None, exc


def connector_name(ledger: str) -> str:
    return f"{NAME_PREFIX}{ledger}"


def slot_name(ledger: str) -> str:
    return f"ledger_pipelines_{ledger}"


@dataclass(frozen=True)
class DebeziumTopics:
    prefix: str  # Debezium's topic.prefix
    data: str  # <prefix>.<schema>.<table>
    transactions: str  # <prefix>.transaction


def topics(kafka: KafkaSettings, lc) -> DebeziumTopics:
    m = lc.mapping
    prefix = f"{kafka.topic_prefix}cdc.{lc.name}"
    return DebeziumTopics(prefix, f"{prefix}.{m.schema or 'public'}.{m.table}", f"{prefix}.transaction")


# TLS parameters of the source URL, given to both sides: the project's own connections (psycopg) and the
# connector (``database.<name>``); the connector would otherwise connect with its own default
TLS_PARAMS = ("sslmode", "sslrootcert", "sslcert", "sslkey")
SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
# query parameters that only tune the project's own connections (psycopg) and need nothing from the connector
LOCAL_PARAMS = ("connect_timeout", "application_name")


def _pg_params(url: str) -> dict:
    """Host, port, user, password, database, TLS and local-only parameters of a source URL. Any other query
    parameter (``options``, ``sslpassword`` — a secret the connector's configuration would hold in plain
    text —, ...) is refused by name: the connector would read the database differently from the project's
    own connections."""
    from sqlalchemy.engine import make_url

    u = make_url(url)
    if not u.drivername.startswith("postgresql"):
        raise ConnectError(f"a debezium-postgres source is a PostgreSQL URL, not {redact_url(url)}")
    other = sorted(set(u.query) - set(TLS_PARAMS) - set(LOCAL_PARAMS))
    if other:
        raise ConnectError(f"a debezium-postgres source URL takes only {', '.join(TLS_PARAMS + LOCAL_PARAMS)} "
                           f"as query parameters, not {', '.join(other)}")
    tls, local = {}, {}
    for name in TLS_PARAMS + LOCAL_PARAMS:
        value = u.query.get(name)
        if isinstance(value, tuple):
            raise ConnectError(f"the source URL gives {name} more than once")
        if value is not None:
            (tls if name in TLS_PARAMS else local)[name] = str(value)
    if tls.get("sslmode", "prefer") not in SSL_MODES:
        raise ConnectError(f"sslmode={tls['sslmode']!r} is not one of {', '.join(SSL_MODES)}")
    return {"host": u.host or "127.0.0.1", "port": u.port or 5432, "user": u.username, "password": u.password or "",
            "dbname": u.database, "tls": tls, "local": local}


def _connect_pg(params: dict):
    import psycopg

    return psycopg.connect(host=params["host"], port=params["port"], user=params["user"],
                           password=params["password"], dbname=params["dbname"], autocommit=True,
                           **{"connect_timeout": "10", **params.get("local", {}), **params.get("tls", {})})


def secret_file(ledger: str) -> Path:
    """The password file of a ledger's connector, in the local worker's ``secrets/`` folder."""
    return StackConfig.from_env().root / "connect" / "secrets" / f"{ledger}.properties"


def _write_password(path: Path, password: str) -> None:
    if "\n" in password or "\r" in password:
        raise ConnectError("a database password with a line break cannot go into a properties file")
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    escaped = password.replace("\\", "\\\\")
    if path.exists():
        if path.read_text() == f"password={escaped}\n":
            return
        path.unlink()
    write_secret(path, f"password={escaped}\n")


def connector_config(lc, kafka: KafkaSettings, source_url: str, password_ref: str) -> dict[str, str]:
    m = lc.mapping
    p = _pg_params(source_url)
    t = topics(kafka, lc)
    schema = m.schema or "public"
    return {
        "connector.class": "io.debezium.connector.postgresql.PostgresConnector",
        "tasks.max": "1",
        "plugin.name": "pgoutput",
        "database.hostname": str(p["host"]),
        "database.port": str(p["port"]),
        "database.user": str(p["user"]),
        "database.password": password_ref,
        "database.dbname": str(p["dbname"]),
        **{f"database.{name}": value for name, value in p["tls"].items()},
        "topic.prefix": t.prefix,
        "table.include.list": f"{schema}.{m.table}",
        "publication.name": slot_name(lc.name),
        "publication.autocreate.mode": "disabled",
        "slot.name": slot_name(lc.name),
        "snapshot.mode": str(lc.options.get("snapshot_mode", "initial")),
        "decimal.handling.mode": "string",
        "time.precision.mode": "connect",
        "provide.transaction.metadata": "true",
        "exactly.once.support": "required",
        "transaction.boundary": "poll",
        "tombstones.on.delete": "true",
        "poll.interval.ms": str(lc.options.get("poll_interval_ms", 50)),
        "max.batch.size": "4096",
        "max.queue.size": "16384",
        "topic.creation.default.replication.factor": str(kafka.replication_factor),
        "topic.creation.default.partitions": "1",
        "topic.creation.default.min.insync.replicas": str(kafka.min_isr),
        "topic.creation.default.cleanup.policy": "delete",
        "topic.creation.default.retention.ms": "-1",
    }


def prepare_source(lc, source_url: str) -> None:
    """The publication of the journal table (created by the project, not by the connector) and the table's
    full replica identity, so that updates and deletes carry the row's before image."""
    m = lc.mapping
    schema = m.schema or "public"
    with _connect_pg(_pg_params(source_url)) as conn:
        level = conn.execute("SHOW wal_level").fetchone()[0]
        if level != "logical":
            raise ConnectError(f"ledger {lc.name}: the source database has wal_level={level}; Debezium needs "
                               "wal_level=logical (postgresql.conf, then a restart)")
        conn.execute("SET lock_timeout = '10s'")  # never queue the journal's writers behind a long wait
        tables = [tuple(r) for r in conn.execute("SELECT schemaname, tablename FROM pg_publication_tables "
                                                 "WHERE pubname = %s", (slot_name(lc.name),)).fetchall()]
        exists = conn.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (slot_name(lc.name),)).fetchone()
        if not exists:
            conn.execute(f'CREATE PUBLICATION "{slot_name(lc.name)}" FOR TABLE "{schema}"."{m.table}"')
        elif tables != [(schema, m.table)]:
            conn.execute(f'ALTER PUBLICATION "{slot_name(lc.name)}" SET TABLE "{schema}"."{m.table}"')
        identity = conn.execute("SELECT c.relreplident FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                                "WHERE n.nspname = %s AND c.relname = %s", (schema, m.table)).fetchone()
        if identity is None:
            raise ConnectError(f"ledger {lc.name}: table {schema}.{m.table} not found in the source database")
        if identity[0] != "f":
            conn.execute(f'ALTER TABLE "{schema}"."{m.table}" REPLICA IDENTITY FULL')


def register(lc, kafka: KafkaSettings, url: str | None = None, published_before: bool = False) -> dict:
    """Create or update the ledger's connector (idempotent); returns its status.

    A ledger that has published before (``published_before``) whose connector is gone is never given a
    new snapshot: its rows would come back as entries of new ids (a snapshot row's id carries the
    snapshot's log position), counted twice. With its replication slot still there it resumes from the slot
    (``snapshot.mode=no_data``); with the slot gone the changes since are lost to CDC, which is an error
    saying so."""
    url = url or connect_url()
    source_url = lc.require_connection_url()
    secret_path = lc.options.get("connect_password_file")
    if secret_path is None:  # the local worker: the stack writes the file
        path = secret_file(lc.name)
        _write_password(path, _pg_params(source_url)["password"])
        secret_path = str(path)
    config = connector_config(lc, kafka, source_url, f"${{file:{secret_path}:password}}")
    code, doc = _request("GET", f"{url}/connectors/{connector_name(lc.name)}/config")
    if code == 404 and published_before:
        if slot_lag(lc) is None:
            raise ConnectError(
                f"ledger {lc.name}: it has published before, but its connector and its replication slot "
                f"{slot_name(lc.name)} are gone: the changes made since cannot be read from the database's log. "
                "Reset the ledger (its cursor and its entries in the event log) to take a new snapshot")
        config["snapshot.mode"] = "no_data"
    elif code == 200:
        config["snapshot.mode"] = doc.get("snapshot.mode", config["snapshot.mode"])  # kept as registered
    if code != 200 or doc != {**config, "name": connector_name(lc.name)}:
        prepare_source(lc, source_url)  # only when the connector is new or changed: it may lock the table
        code, doc = _request("PUT", f"{url}/connectors/{connector_name(lc.name)}/config", config)
        if code not in (200, 201):
            raise ConnectError(f"ledger {lc.name}: Kafka Connect refused the connector ({code}): {str(doc)[:500]}")
    return _wait_running(lc.name, url)


def _wait_running(ledger: str, url: str, timeout: float = 60.0) -> dict:
    """The connector's status once its task runs; a failed task is an error with Connect's own reason."""
    deadline = time.monotonic() + timeout
    while True:
        st = status(ledger, url)
        why = failure(st)
        if why is not None:
            raise ConnectError(f"connector {connector_name(ledger)} failed: {why}")
        if st["connector"] in ("RUNNING", "STOPPED", "PAUSED") and (st["tasks"] or st["connector"] != "RUNNING") and all(
                t["state"] in ("RUNNING", "PAUSED") for t in st["tasks"]):
            return st
        if time.monotonic() > deadline:
            raise ConnectError(f"connector {connector_name(ledger)} not running after {timeout:.0f}s: {st}")
        time.sleep(0.2)


def _reason(trace: str) -> str:
    """What made a task fail, in one line: the innermost ``Caused by:`` of its Java trace (the first line
    is mostly Connect's generic "An exception occurred in the change event producer"), else the first."""
    lines = [line.strip() for line in trace.splitlines() if line.strip()]
    caused = [line[len("Caused by:"):].strip() for line in lines if line.startswith("Caused by:")]
    return (caused[-1] if caused else lines[0] if lines else "no trace")[:300]


def failure(st: dict) -> str | None:
    """Why a :func:`status` is FAILED (the connector or a task; a failed task's ``reason``), or None."""
    failed = [t for t in st["tasks"] if t["state"] == "FAILED"]
    if not failed and st["connector"] != "FAILED":
        return None
    return failed[0].get("reason", "no trace") if failed else "no trace"


def status(ledger: str, url: str | None = None, timeout: float = 120.0) -> dict:
    """The connector's and its tasks' states (a failed task with its trace); ``timeout`` bounds the waiting
    out of a worker that does not answer or is rebalancing."""
    url = url or connect_url()
    code, doc = _request("GET", f"{url}/connectors/{connector_name(ledger)}/status", timeout=timeout)
    if code == 404:
        return {"connector": "absent", "tasks": []}
    if code != 200:
        raise ConnectError(f"connector {connector_name(ledger)}: status {code}: {str(doc)[:300]}")
    return {"connector": doc["connector"]["state"],
            "tasks": [{"state": t["state"], **({"reason": _reason(t["trace"]), "trace": t["trace"][:500]}
                                               if t.get("trace") else {})}
                      for t in doc.get("tasks", [])]}


def slot_lag(lc) -> dict | None:
    """How far the ledger's replication slot trails the database's WAL (bytes), and whether a connector
    holds it; None when the slot does not exist (yet)."""
    with _connect_pg(_pg_params(lc.require_connection_url())) as conn:
        row = conn.execute(
            "SELECT active, pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint "
            "FROM pg_replication_slots WHERE slot_name = %s", (slot_name(lc.name),)).fetchone()
    return None if row is None else {"slot": slot_name(lc.name), "active": bool(row[0]), "lag_bytes": int(row[1] or 0)}


def remove(name: str, url: str | None = None) -> dict:
    """Stop the connector, delete its stored offsets and the connector, then drop its replication slot
    and publication (the database's address from the connector's own configuration, its password from
    the file the configuration points to)."""
    url = url or connect_url()
    m = _NAME.match(name)
    if not m:
        raise ConnectError(f"{name!r} is not a connector of this project ({NAME_PREFIX}<ledger>)")
    code, config = _request("GET", f"{url}/connectors/{name}/config")
    if code == 404:
        return {"connector": name, "removed": False}
    if code != 200:
        raise ConnectError(f"connector {name}: {code} {str(config)[:300]}")
    for method, path, ok in (("PUT", "stop", (202, 204)), ("DELETE", "offsets", (200, 202, 404)),
                             ("DELETE", "", (204, 404))):
        code, doc = _request(method, f"{url}/connectors/{name}/{path}".rstrip("/"))
        if code == 400 and path == "offsets":  # the stop has not reached the tasks yet
            for _ in range(50):
                time.sleep(0.2)
                code, doc = _request(method, f"{url}/connectors/{name}/{path}")
                if code in ok:
                    break
        if code not in ok:
            raise ConnectError(f"connector {name}: {method} {path or name}: {code} {str(doc)[:300]}")
    for _ in range(150):  # the worker forgets a deleted connector once its config topic says so
        if _request("GET", f"{url}/connectors/{name}/status")[0] == 404:
            break
        time.sleep(0.2)
    slot = config.get("slot.name")
    ref = re.fullmatch(r"\$\{file:(.+):password\}", config.get("database.password", ""))
    out = {"connector": name, "removed": True, "slot_dropped": False}
    if slot and ref:
        import psycopg

        own = secret_file(m.group(1))
        try:
            if Path(ref.group(1)) != own:  # a password is only ever read from the file the project wrote
                raise ConnectError(f"its password file {ref.group(1)} is not {own}: drop the slot by hand")
            params = {"host": config["database.hostname"], "port": int(config["database.port"]),
                      "user": config["database.user"], "password": _read_password(own),
                      "dbname": config["database.dbname"],
                      "tls": {name: config[f"database.{name}"] for name in TLS_PARAMS if f"database.{name}" in config}}
            out["slot_dropped"] = _drop_slot(params, slot, config.get("publication.name"))
        except (psycopg.Error, OSError, ConnectError) as exc:  # the connector is gone: the slot left is said, with why
            out["slot_error"] = f"replication slot {slot} not dropped: {str(exc).strip()[:300]}"
        if Path(ref.group(1)) == secret_file(m.group(1)):
            Path(ref.group(1)).unlink(missing_ok=True)
    return out


def _drop_slot(params: dict, slot: str, publication: str | None) -> bool:
    with _connect_pg(params) as conn:
        for _ in range(100):  # the task lets go of the slot once it stopped
            row = conn.execute("SELECT active FROM pg_replication_slots WHERE slot_name = %s", (slot,)).fetchone()
            if row is None:
                dropped = False
                break
            if not row[0]:
                conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
                dropped = True
                break
            time.sleep(0.2)
        else:
            raise ConnectError(f"replication slot {slot} still in use after its connector was deleted")
        if publication:
            conn.execute(f'DROP PUBLICATION IF EXISTS "{publication}"')
    return dropped


def _read_password(path: Path) -> str:
    for line in path.read_text().splitlines():
        if line.startswith("password="):
            return line[len("password="):].replace("\\\\", "\\")
    raise ConnectError(f"{path}: no password= line")


def sync(ledgers, kafka: KafkaSettings, url: str | None = None) -> dict:
    """Register every configured debezium-postgres ledger; remove this project's connectors whose ledger
    is no longer configured (and their slots)."""
    url = url or connect_url()
    wanted = {connector_name(lc.name): lc for lc in ledgers if lc.kind == "cdc" and lc.source in SOURCES}
    code, names = _request("GET", f"{url}/connectors")
    if code != 200:
        raise ConnectError(f"Kafka Connect at {url}: {code} {str(names)[:300]}")
    out = {"registered": {}, "removed": []}
    for name in sorted(n for n in names if _NAME.match(n) and n not in wanted):
        code, config = _request("GET", f"{url}/connectors/{name}/config")
        # another environment's connector on a shared worker (another topic prefix) is left alone
        if code == 200 and str(config.get("topic.prefix", "")).startswith(f"{kafka.topic_prefix}cdc."):
            out["removed"].append(remove(name, url))
    for name, lc in wanted.items():
        out["registered"][lc.name] = register(lc, kafka, url)
    return out


def describe_connectors(url: str) -> str:
    """One line for ``stack status``: this project's connectors, their state and their slots' lag."""
    try:
        code, names = _request("GET", f"{url}/connectors", timeout=10)
    except ConnectError as exc:
        return str(exc)
    ours = sorted(n for n in names or [] if _NAME.match(n))
    if not ours:
        return "no ledger connectors"
    try:
        by_name = {connector_name(lc.name): lc for lc in load_config()}
    except Exception:
        by_name = {}
    parts = []
    for name in ours:
        st = status(_NAME.match(name).group(1), url)
        text = f"{name} {st['connector']}/{','.join(t['state'] for t in st['tasks']) or 'no task'}"
        lc = by_name.get(name)
        if lc is not None and lc.connection_url():
            try:
                lag = slot_lag(lc)
                text += f" slot lag {lag['lag_bytes']} B" if lag else " (no slot yet)"
            except Exception as exc:  # the status line says it, it does not fail
                text += f" (slot lag unknown: {type(exc).__name__})"
        parts.append(text)
    return "; ".join(parts)
