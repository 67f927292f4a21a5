"""Upgrades of warehouses written by earlier versions; :meth:`Warehouse.create_schema` runs them.

Each step checks whether it is needed, so running them again is a no-op, and each runs in one
transaction: a crash leaves the warehouse as it was before the step or after it.
"""

from __future__ import annotations

import logging

from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import Connection, Engine

from .schema import EVENT_COLUMNS, event_log

log = logging.getLogger(__name__)

_COLS = ", ".join(EVENT_COLUMNS)
# the first stored version of an entry is its earliest row (all versions of an entry share its
# partition, the key being its entry_id); every other row is a later version
_IS_FIRST = (
    "NOT EXISTS (SELECT 1 FROM {table} o WHERE o.entry_id = v.entry_id AND "
    "(o.topic, o.kafka_partition, o.kafka_offset) < (v.topic, v.kafka_partition, v.kafka_offset))"
)


def _needs_first_version(conn: Connection) -> bool:
    insp = inspect(conn)
    if not insp.has_table("ledger_event_log"):
        return False
    return "first_version" not in {c["name"] for c in insp.get_columns("ledger_event_log")}


def upgrade_postgresql(conn: Connection) -> list[str]:
    """Run inside create_schema's transaction (PostgreSQL's DDL is transactional)."""
    if not _needs_first_version(conn):
        return []
    conn.execute(text("ALTER TABLE ledger_event_log ADD COLUMN first_version BOOLEAN NOT NULL DEFAULT true"))
    conn.execute(text(f"UPDATE ledger_event_log v SET first_version = false "
                      f"WHERE NOT {_IS_FIRST.format(table='ledger_event_log')}"))
    for index in event_log.indexes:
        if index.unique:  # the two partial version indexes
            index.create(conn)
    conn.execute(text("ALTER TABLE ledger_event_log DROP CONSTRAINT IF EXISTS uq_ledger_event_log_version"))
    log.warning("warehouse upgraded: event log versions marked first/later, partial unique indexes built")
    return ["event_log.first_version"]


def upgrade_sqlite(engine: Engine) -> list[str]:
    """SQLite cannot drop a table's UNIQUE constraint: the event log is rebuilt, in one explicit
    transaction under the write lock (pysqlite would run DDL outside a transaction)."""
    with engine.connect() as c:
        if not _needs_first_version(c):
            return []
    raw = engine.raw_connection()
    try:
        conn = raw.driver_connection
        conn.isolation_level = None
        conn.execute("BEGIN IMMEDIATE")
        try:
            if not _sqlite_needs_first_version(conn):  # another process upgraded it meanwhile
                conn.execute("ROLLBACK")
                return []
            old = "ledger_event_log_before_first_version"
            conn.execute(f"ALTER TABLE ledger_event_log RENAME TO {old}")
            for (name,) in conn.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = ? AND sql IS NOT NULL",
                    (old,)).fetchall():
                conn.execute(f'DROP INDEX "{name}"')  # index names are global: the new table reuses them
            for ddl in _sqlite_event_log_ddl():
                conn.execute(ddl)
            conn.execute(f"INSERT INTO ledger_event_log ({_COLS}, first_version) "
                         f"SELECT {', '.join('v.' + c for c in EVENT_COLUMNS)}, {_IS_FIRST.format(table=old)} "
                         f"FROM {old} v ORDER BY v.rowid")
            conn.execute(f"DROP TABLE {old}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        log.warning("warehouse upgraded: event log rebuilt with first/later versions and partial unique indexes")
        return ["event_log.first_version"]
    finally:
        raw.invalidate()  # its isolation level was changed: never back to the pool


def _sqlite_event_log_ddl() -> list[str]:
    """The statements that create today's event log on SQLite, as SQLAlchemy emits them (table
    first, then its indexes), read back from a scratch in-memory database."""
    scratch = create_engine("sqlite://")
    try:
        event_log.create(scratch)
        with scratch.connect() as c:
            return [r[0] for r in c.exec_driver_sql(
                "SELECT sql FROM sqlite_master WHERE tbl_name = 'ledger_event_log' AND sql IS NOT NULL "
                "ORDER BY type DESC")]
    finally:
        scratch.dispose()


def _sqlite_needs_first_version(conn) -> bool:
    cols = [r[1] for r in conn.execute("PRAGMA table_info(ledger_event_log)")]
    return bool(cols) and "first_version" not in cols
