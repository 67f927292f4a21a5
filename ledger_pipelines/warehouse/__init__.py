"""The warehouse: SQLite file by default, PostgreSQL by URL.

The event log's hot path works on the DBAPI connection (COPY on PostgreSQL, executemany on
SQLite); everything else goes through SQLAlchemy. A batch and the offsets it advances are written
in one transaction, and the offsets are advanced by compare-and-set, so a concurrent or replayed
run can never write the same Kafka offsets twice.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine, make_url

from ..settings import default_warehouse_url, redact_url
from .schema import metadata
from .writer import BatchCounts, ConcurrentIngestError, EventBatch, make_writer, utc_now

__all__ = [
    "BatchCounts",
    "ConcurrentIngestError",
    "EventBatch",
    "Warehouse",
    "utc_now",
    "validate_identifier",
]

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}\Z")


def validate_identifier(name: str, what: str = "identifier") -> str:
    """Identifiers from configuration reach SQL only after this check."""
    if not isinstance(name, str) or not _IDENTIFIER.match(name):
        raise ValueError(f"{what} {name!r} is not a plain SQL identifier ([A-Za-z_][A-Za-z0-9_]*, at most 63)")
    return name


class Warehouse:
    def __init__(self, url: str | None = None):
        self.url = url or default_warehouse_url()
        parsed = make_url(self.url)
        self.dialect = parsed.get_backend_name()
        if self.dialect not in ("sqlite", "postgresql"):
            raise ValueError(f"unsupported warehouse {redact_url(self.url)}: SQLite or PostgreSQL")
        if self.dialect == "postgresql" and parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
        if self.dialect == "sqlite" and (not parsed.database or parsed.database == ":memory:"
                                         or parsed.database.startswith("file::memory:")
                                         or parsed.query.get("mode") == "memory"):
            # each connection to an in-memory database is a database of its own, seen by no other
            # process; the event log, its ingest workers, the assets and the desk share the warehouse
            raise ValueError(f"warehouse {redact_url(self.url)}: an in-memory SQLite database is private to "
                             "one connection; give a file (sqlite:///path/to/warehouse.db)")
        if self.dialect == "sqlite":
            from pathlib import Path

            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        self.engine: Engine = create_engine(parsed, pool_pre_ping=True)
        if self.dialect == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)

    def __repr__(self) -> str:
        return f"Warehouse({self.describe()})"

    def describe(self) -> str:
        return redact_url(self.url)

    def create_schema(self) -> None:
        """Create missing tables; safe when several processes do it at once. (No version of the schema
        was released before this one, so there is nothing to upgrade; a change to a released schema
        comes with its migration, docs/development.md.)"""
        import time

        from sqlalchemy.exc import DBAPIError

        for attempt in range(10):
            try:
                with self.engine.begin() as conn:
                    if self.dialect == "postgresql":
                        conn.execute(text("SELECT pg_advisory_xact_lock(7262001)"))
                    metadata.create_all(conn)
                return
            except DBAPIError as exc:
                # another process created a table between check and create, or (SQLite) wrote
                # between this transaction's read and its write: a snapshot conflict the busy
                # handler does not retry
                message = str(exc)
                if ("already exists" not in message and "database is locked" not in message) or attempt == 9:
                    raise
                time.sleep(0.05 * (attempt + 1))

    def dispose(self) -> None:
        self.engine.dispose()

    # -- offsets --------------------------------------------------------------------------
    def stored_offsets(self, consumer: str) -> dict[tuple[str, int], int]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                text("SELECT topic, kafka_partition, next_offset FROM ledger_offsets WHERE consumer = :c"),
                {"c": consumer},
            )
            return {(t, p): o for t, p, o in rows}

    def init_offsets(self, consumer: str, partitions: Iterable[tuple[str, int]]) -> None:
        """Give every partition a stored offset (0) so batches can compare-and-set it."""
        stored = self.stored_offsets(consumer)
        missing = [tp for tp in partitions if tp not in stored]
        if not missing:
            return
        now = utc_now()
        insert = (
            "INSERT INTO ledger_offsets (consumer, topic, kafka_partition, next_offset, updated_at) "
            "VALUES (:c, :t, :p, 0, :now) ON CONFLICT DO NOTHING"
        )
        with self.engine.begin() as conn:
            conn.execute(text(insert), [{"c": consumer, "t": t, "p": p, "now": now} for t, p in missing])

    # -- event log ------------------------------------------------------------------------
    def writer(self, consumer: str, run_id: str | None = None):
        return make_writer(self, consumer, run_id)

    def scalar(self, sql: str, **params):
        with self.engine.connect() as conn:
            return conn.execute(text(sql), params).scalar()

    def rows(self, sql: str, **params) -> list[tuple]:
        with self.engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text(sql), params)]

    def event_counts(self) -> dict[str, int]:
        return {
            "events": self.scalar("SELECT count(*) FROM ledger_event_log"),
            "distinct_entries": self.scalar("SELECT count(DISTINCT entry_id) FROM ledger_event_log"),
            "rejected": self.scalar("SELECT count(*) FROM ledger_rejected_events"),
            "conflicts": self.scalar("SELECT count(*) FROM ledger_entry_conflicts"),
        }


def bulk_insert(conn, table: str, columns: tuple[str, ...], rows: list[tuple]) -> None:
    """INSERT of many rows on a SQLAlchemy connection, straight through the driver's ``executemany``
    (SQLite's C loop; psycopg's pipeline): ``text()`` with a dict per row spends more time binding
    parameters in Python than the database spends storing them. ``table`` and ``columns`` are the
    code's own names, never configuration."""
    if not rows:
        return
    mark = "?" if conn.dialect.name == "sqlite" else "%s"
    conn.exec_driver_sql(f"INSERT INTO {validate_identifier(table)} "
                         f"({', '.join(validate_identifier(c) for c in columns)}) "
                         f"VALUES ({', '.join([mark] * len(columns))})", rows)


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    # only a new database takes it (before its first write, so before journal_mode): 16 KiB pages
    # hold four times the rows of the default 4 KiB, so an append-mostly log splits and logs fewer
    # pages (the event log's SQLite write path took 12% less CPU a row)
    cur.execute("PRAGMA page_size=16384")
    # WAL lets readers (sensor, UI) run beside the writer; NORMAL keeps every commit atomic and
    # durable across a process crash (a power loss can only drop whole trailing transactions,
    # rows and offsets together, which a re-run re-reads from Kafka).
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    # random-keyed index inserts (entry ids) thrash the default 2 MB page cache
    cur.execute("PRAGMA cache_size=-65536")
    cur.execute("PRAGMA temp_store=MEMORY")
    cur.execute("PRAGMA wal_autocheckpoint=16384")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()
