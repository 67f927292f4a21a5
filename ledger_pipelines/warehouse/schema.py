"""Warehouse tables (SQLAlchemy Core), portable between SQLite and PostgreSQL.

Amounts are TEXT on SQLite (its NUMERIC affinity would turn them into floats) and unbounded
NUMERIC on PostgreSQL; both are exact. Timestamps are RFC 3339 text on SQLite and TIMESTAMPTZ on
PostgreSQL. ``position`` and ``attributes`` are canonical JSON text (sorted keys): parsing them
into JSONB on every insert halves PostgreSQL's ingest rate, and queries can cast when needed.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    text,
)
from sqlalchemy.dialects import postgresql

metadata = MetaData()

ExactAmount = Text().with_variant(postgresql.NUMERIC(), "postgresql")
UtcTimestamp = Text().with_variant(DateTime(timezone=True), "postgresql")
IsoDate = Text().with_variant(Date(), "postgresql")

# Column order here is the order the writer sends rows in.
EVENT_COLUMNS = (
    "topic", "kafka_partition", "kafka_offset", "entry_id", "ledger", "ledger_kind", "source_ref",
    "correlation_id", "account", "counterparty", "asset", "amount", "direction", "booked_at",
    "booked_date", "value_date", "status", "position", "attributes", "content_hash", "run_id",
)

def _entry_columns(*, with_booked_date: bool) -> list[Column]:
    """The canonical entry's fields as columns (event log and snapshots share them)."""
    cols = [
        Column("entry_id", String(600), nullable=False),
        Column("ledger", String(64), nullable=False),
        Column("ledger_kind", String(16), nullable=False),
        Column("source_ref", String(512), nullable=False),
        Column("correlation_id", Text),
        Column("account", Text, nullable=False),
        Column("counterparty", Text),
        Column("asset", Text, nullable=False),
        Column("amount", ExactAmount, nullable=False),
        Column("direction", String(6), nullable=False),
        Column("booked_at", UtcTimestamp, nullable=False),
    ]
    if with_booked_date:
        # the UTC day of booked_at: daily partitions select on it, and its index stays append-only
        # within a day (a booked_at index takes random inserts and dirties a page per row)
        cols.append(Column("booked_date", IsoDate, nullable=False))
    return cols + [
        Column("value_date", IsoDate),
        Column("status", String(10), nullable=False),
        Column("position", Text),
        Column("attributes", Text),
    ]


event_log = Table(
    "ledger_event_log",
    metadata,
    Column("topic", String(255), nullable=False),
    Column("kafka_partition", Integer, nullable=False),
    Column("kafka_offset", BigInteger, nullable=False),
    *_entry_columns(with_booked_date=True),
    Column("content_hash", String(16), nullable=False),
    Column("run_id", String(64)),
    # True on the first stored version of an entry, false on its later versions (a new lifecycle
    # status, a reorg's new position); COPY and INSERT ... SELECT leave it out on first versions.
    Column("first_version", Boolean, nullable=False, server_default=text("true")),
    # One row per version of an entry; an identical re-publication is stored once. Two partial
    # unique indexes instead of one on (entry_id, content_hash): a new entry (the bulk of any
    # stream) costs one index insert, and that insert is also the check that the entry is new, so
    # the writer need not look up stored versions first (see writer.py). Every stored entry has
    # exactly one first version. They also make (topic, kafka_partition, kafka_offset) unique
    # without an index of its own: an offset always holds the same bytes, so re-reading it yields
    # the same (entry_id, content_hash), which either index refuses.
    Index("uq_ledger_event_log_entry", "entry_id", unique=True,
          sqlite_where=text("first_version"), postgresql_where=text("first_version")),
    Index("uq_ledger_event_log_later_version", "entry_id", "content_hash", unique=True,
          sqlite_where=text("NOT first_version"), postgresql_where=text("NOT first_version")),
    Index("ix_ledger_event_log_ledger_day", "ledger", "booked_date").ddl_if(dialect="sqlite"),
    Index("ix_ledger_event_log_day_brin", "booked_date", postgresql_using="brin",
          postgresql_with={"autosummarize": "on"}).ddl_if(dialect="postgresql"),
)

offsets = Table(
    "ledger_offsets",
    metadata,
    Column("consumer", String(128), nullable=False),
    Column("topic", String(255), nullable=False),
    Column("kafka_partition", Integer, nullable=False),
    Column("next_offset", BigInteger, nullable=False),
    Column("updated_at", UtcTimestamp, nullable=False),
    PrimaryKeyConstraint("consumer", "topic", "kafka_partition", name="pk_ledger_offsets"),
)

rejected_events = Table(
    "ledger_rejected_events",
    metadata,
    Column("topic", String(255), nullable=False),
    Column("kafka_partition", Integer, nullable=False),
    Column("kafka_offset", BigInteger, nullable=False),
    Column("message_key", Text),
    Column("error", Text, nullable=False),
    Column("payload", LargeBinary),
    Column("payload_size", BigInteger, nullable=False),
    Column("rejected_at", UtcTimestamp, nullable=False),
    Column("run_id", String(64)),
    PrimaryKeyConstraint("topic", "kafka_partition", "kafka_offset", name="pk_ledger_rejected_events"),
)

entry_conflicts = Table(
    "ledger_entry_conflicts",
    metadata,
    Column("topic", String(255), nullable=False),
    Column("kafka_partition", Integer, nullable=False),
    Column("kafka_offset", BigInteger, nullable=False),
    Column("entry_id", String(600), nullable=False),
    Column("existing_content_hash", String(16), nullable=False),
    Column("content_hash", String(16), nullable=False),
    Column("differing_fields", Text, nullable=False),
    Column("payload", LargeBinary, nullable=False),
    Column("detected_at", UtcTimestamp, nullable=False),
    Column("run_id", String(64)),
    PrimaryKeyConstraint("topic", "kafka_partition", "kafka_offset", name="pk_ledger_entry_conflicts"),
    Index("ix_ledger_entry_conflicts_entry", "entry_id"),
)

# Durable connector cursors: one JSON document per ledger (SQL watermark, EVM block, ...).
cursors = Table(
    "ledger_cursors",
    metadata,
    Column("ledger", String(64), primary_key=True),
    Column("cursor", Text, nullable=False),
    Column("updated_at", UtcTimestamp, nullable=False),
)

# Statement files already published, by content hash: a file dropped twice is published once.
processed_files = Table(
    "ledger_processed_files",
    metadata,
    Column("ledger", String(64), nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("file_name", Text, nullable=False),
    Column("entries", Integer, nullable=False),
    Column("rejected", Integer, nullable=False),
    Column("processed_at", UtcTimestamp, nullable=False),
    PrimaryKeyConstraint("ledger", "sha256", name="pk_ledger_processed_files"),
)

# Recently scanned EVM blocks with their hashes and entries, to detect reorgs and orphan entries.
evm_blocks = Table(
    "ledger_evm_blocks",
    metadata,
    Column("ledger", String(64), nullable=False),
    Column("block_number", BigInteger, nullable=False),
    Column("block_hash", String(66), nullable=False),
    Column("entries", Text, nullable=False),  # JSON list of canonical entries published from it
    PrimaryKeyConstraint("ledger", "block_number", name="pk_ledger_evm_blocks"),
)

SNAPSHOT_COLUMNS = (
    "ledger", "snapshot_date", "entry_id", "ledger_kind", "source_ref", "correlation_id", "account",
    "counterparty", "asset", "amount", "direction", "booked_at", "value_date", "status", "position", "attributes",
)

# Daily ledger snapshots read from each source of truth; a re-run replaces its (ledger, day).
snapshots = Table(
    "ledger_snapshots",
    metadata,
    Column("snapshot_date", IsoDate, nullable=False),
    *_entry_columns(with_booked_date=False),
    PrimaryKeyConstraint("ledger", "snapshot_date", "entry_id", name="pk_ledger_snapshots"),
)

# The breaks desk (ledger_pipelines/desk). ``desk_events`` is the audit trail: append-only, one row per
# action (who, when, what, why, the break's state before and after). ``desk_decisions`` and
# ``desk_breaks`` are its projections, written in the same transaction as the event they follow from.
desk_users = Table(
    "desk_users",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("role", String(16), nullable=False),
    Column("password_hash", Text, nullable=False),
    Column("session_epoch", String(32), nullable=False),  # in every session; a new one ends them all
    Column("created_at", Text, nullable=False),
)

desk_events = Table(
    "desk_events",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("at", Text, nullable=False),
    Column("actor", String(64), nullable=False),
    Column("action", String(24), nullable=False),
    Column("reconciliation", String(81)),
    Column("break_id", String(40)),
    Column("decision_id", String(40)),
    Column("detail", Text, nullable=False),  # canonical JSON: reason, assignee, expiry, score...
    Column("before", Text),  # canonical JSON of the break's workflow state
    Column("after", Text),
    Index("ix_desk_events_break", "reconciliation", "break_id"),
)

desk_decisions = Table(
    "desk_decisions",
    metadata,
    Column("decision_id", String(40), primary_key=True),
    Column("kind", String(16), nullable=False),  # manual_match | acceptance
    Column("reconciliation", String(81), nullable=False),
    Column("break_ids", Text, nullable=False),  # JSON lists
    Column("left_entry_ids", Text, nullable=False),
    Column("right_entry_ids", Text, nullable=False),
    Column("reason", Text, nullable=False),
    Column("expires", Text),  # acceptance: the last report day it holds
    Column("effective_from", Text, nullable=False),  # the first report day that honours it
    Column("state", String(12), nullable=False),  # proposed | approved | rejected | withdrawn | lapsed
    Column("ended_on", Text),  # an acceptance reopened early: the last report day it held
    Column("ended_by", String(64)),
    Column("proposed_by", String(64), nullable=False),
    Column("proposed_at", Text, nullable=False),
    Column("decided_by", String(64)),
    Column("decided_at", Text),
    Column("score", Integer),  # an auto-confirmed match's confidence (0-100)
    Index("ix_desk_decisions_state", "reconciliation", "state"),
)

DESK_SORTS = ("amount_key", "first_seen", "last_seen", "break_type", "state", "asset", "assignee", "break_id")

desk_breaks = Table(
    "desk_breaks",
    metadata,
    Column("reconciliation", String(81), nullable=False),
    Column("break_id", String(40), nullable=False),
    Column("break_type", String(24), nullable=False),
    Column("asset", Text),
    Column("amount", Text, nullable=False),  # the amount at stake, exact
    # the same, as text that sorts in numeric order, byte by byte (PostgreSQL: the "C" collation)
    Column("amount_key", Text().with_variant(postgresql.TEXT(collation="C"), "postgresql"), nullable=False),
    Column("correlation_id", Text),
    Column("first_seen", Text, nullable=False),
    Column("last_seen", Text, nullable=False),
    Column("state", String(16), nullable=False),  # open | assigned | accepted | matched | resolved
    # a one-sided break of a ledger pair: carried from day to day until matched, so a later day that no longer
    # reports it resolves it (any other break is settled only by a re-run of its own day)
    Column("carried", Boolean, nullable=False, server_default=text("false")),
    Column("assignee", String(64)),
    Column("accepted_until", Text),
    Column("decision_id", String(40)),  # the acceptance or manual match in force
    Column("pending", String(40)),  # a proposal waiting for its approver
    Column("resolution", Text),
    Column("resolved_on", Text),
    PrimaryKeyConstraint("reconciliation", "break_id", name="pk_desk_breaks"),
    # the desk's list sorted by any column (its ties by reconciliation and id, the same way) walks one of
    # these and stops after a page; ``state``, the usual filter, is read from the index itself
    *(Index(f"ix_desk_breaks_by_{col}", col, "reconciliation", "break_id", "state") for col in DESK_SORTS),
    # a one-sided break's candidate counterparts: the other side's, in its asset, nearest in amount
    Index("ix_desk_breaks_candidates", "reconciliation", "break_type", "asset", "amount_key"),
)

# each break's record as its latest report states it, apart: the lists never read it, and the rows they
# scan and sort stay narrow
desk_break_records = Table(
    "desk_break_records",
    metadata,
    Column("reconciliation", String(81), nullable=False),
    Column("break_id", String(40), nullable=False),
    Column("record", Text, nullable=False),
    PrimaryKeyConstraint("reconciliation", "break_id", name="pk_desk_break_records"),
)
