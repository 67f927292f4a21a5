"""Batch writer of the event log: rows, rejects, conflicts and offsets in one transaction."""

from __future__ import annotations

from dataclasses import dataclass, field
from operator import itemgetter
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from .schema import EVENT_COLUMNS

if TYPE_CHECKING:
    from . import Warehouse

# What moved. A later version of an entry (same entry_id) may change its lifecycle (status, position,
# booked_at after a reorg, value_date, attributes) but not these: a re-publication that does is a
# conflict, recorded apart and never overwriting the stored version.
ECON_COLUMNS = ("ledger", "ledger_kind", "source_ref", "account", "counterparty", "asset", "amount",
                "direction", "correlation_id")
_AMOUNT = ECON_COLUMNS.index("amount")
_ENTRY_ID = EVENT_COLUMNS.index("entry_id")
_ECON_INDEX = tuple(EVENT_COLUMNS.index(c) for c in ECON_COLUMNS)
_HASH = EVENT_COLUMNS.index("content_hash")
_entry_id_of = itemgetter(_ENTRY_ID)


class ConcurrentIngestError(RuntimeError):
    """Another run advanced the stored offsets first; this batch was rolled back."""


@dataclass
class EventBatch:
    rows: list[tuple] = field(default_factory=list)  # EVENT_COLUMNS order
    raw: list[bytes] = field(default_factory=list)  # message value of each row
    # (topic, partition, offset, key, error, payload, payload_size)
    rejects: list[tuple] = field(default_factory=list)
    # (topic, partition) -> (stored next offset expected, new next offset)
    offsets: dict[tuple[str, int], tuple[int, int]] = field(default_factory=dict)


@dataclass
class BatchCounts:
    inserted: int = 0
    duplicates: int = 0
    conflicts: int = 0
    rejected: int = 0

    def add(self, other: "BatchCounts") -> None:
        self.inserted += other.inserted
        self.duplicates += other.duplicates
        self.conflicts += other.conflicts
        self.rejected += other.rejected


def _econ(row: tuple) -> tuple:
    return tuple(row[i] for i in _ECON_INDEX)


def _differing(old: tuple, new: tuple) -> list[str]:
    out = []
    for i, name in enumerate(ECON_COLUMNS):
        a, b = old[i], new[i]
        if i == _AMOUNT:
            if Decimal(str(a)) != Decimal(str(b)):
                out.append(name)
        elif a != b:
            out.append(name)
    return out


class _Writer:
    placeholder = "?"

    def __init__(self, warehouse: "Warehouse", consumer: str, run_id: str | None):
        self.consumer = consumer
        self.run_id = run_id
        self._raw = warehouse.engine.raw_connection()
        self.conn = self._raw.driver_connection
        self._insert_rejects = self._sql(
            "INSERT INTO ledger_rejected_events (topic, kafka_partition, kafka_offset, message_key, error, "
            "payload, payload_size, rejected_at, run_id) VALUES ({})", 9
        )
        self._insert_conflicts = self._sql(
            "INSERT INTO ledger_entry_conflicts (topic, kafka_partition, kafka_offset, entry_id, "
            "existing_content_hash, content_hash, differing_fields, payload, detected_at, run_id) VALUES ({})", 10
        )
        self._cas = self._sql(
            "UPDATE ledger_offsets SET next_offset = {p}, updated_at = {p} "
            "WHERE consumer = {p} AND topic = {p} AND kafka_partition = {p} AND next_offset = {p}"
        )

    def _sql(self, template: str, n: int | None = None) -> str:
        if n is not None:
            return template.format(", ".join([self.placeholder] * n))
        return template.replace("{p}", self.placeholder)

    def close(self) -> None:
        # the hot path changed connection state (isolation, autocommit): never return it to the pool
        self._raw.invalidate()

    # -- dialect hooks
    def _prepare(self, cur, batch: EventBatch) -> None:
        """Work done before the write transaction (SQLite stages rows outside its write lock)."""

    def _begin(self, cur) -> None: ...
    def _existing(self, cur, batch: EventBatch) -> list[tuple]: ...
    def _insert(self, cur, batch: EventBatch, inserts: list[tuple]) -> int: ...

    def write(self, batch: EventBatch) -> BatchCounts:
        """One transaction: move the offsets, keep new versions, record conflicts and rejects."""
        from . import utc_now

        counts = BatchCounts(rejected=len(batch.rejects))
        now = utc_now()
        cur = self.conn.cursor()
        try:
            self._prepare(cur, batch)
            self._begin(cur)
            for (topic, part), (expected, new) in batch.offsets.items():
                cur.execute(self._cas, (new, now, self.consumer, topic, part, expected))
                if cur.rowcount != 1:
                    raise ConcurrentIngestError(
                        f"stored offset of {topic}[{part}] is no longer {expected}: another ingest run "
                        f"advanced it; this batch was rolled back"
                    )
            inserts, conflicts = self._classify(self._existing(cur, batch) if batch.rows else [], batch, counts, now)
            if inserts:
                counts.inserted = self._insert(cur, batch, inserts)
            if conflicts:
                cur.executemany(self._insert_conflicts, conflicts)
            if batch.rejects:
                cur.executemany(self._insert_rejects, [(*r, now, self.run_id) for r in batch.rejects])
            self.conn.commit()
        except BaseException:
            self.conn.rollback()
            raise
        finally:
            cur.close()
        counts.conflicts = len(conflicts)
        return counts

    def _classify(self, existing: list[tuple], batch: EventBatch, counts: BatchCounts, now: str):
        """Split the batch into new versions to insert and conflicts; count exact duplicates.

        ``existing`` holds (entry_id, content_hash, *economic fields) of stored versions of the
        batch's entries. Later rows of the batch are compared with earlier ones as well.
        """
        # entry_id -> the batch row of its only version so far (a tuple), or, once a second version
        # or a stored one is involved, [content hashes, economic fields] (a list)
        known: dict[str, Any] = {}
        for rec in existing:
            entry = known.get(rec[0])
            if entry is None:
                known[rec[0]] = [{rec[1]}, tuple(rec[2:])]
            else:
                entry[0].add(rec[1])
        inserts, conflicts = [], []
        for row, raw in zip(batch.rows, batch.raw):
            eid = row[_ENTRY_ID]
            seen = known.get(eid)
            if seen is None:
                known[eid] = row
                inserts.append(row)
                continue
            if type(seen) is tuple:
                seen = known[eid] = [{seen[_HASH]}, _econ(seen)]
            h = row[_HASH]
            if h in seen[0]:
                counts.duplicates += 1
                continue
            diff = _differing(seen[1], _econ(row))
            if diff:
                conflicts.append((row[0], row[1], row[2], eid, next(iter(seen[0])), h, ",".join(diff), raw,
                                  now, self.run_id))
            else:
                seen[0].add(h)  # a new version of the entry (status, position, ...)
                inserts.append(row)
        return inserts, conflicts


_COLS = ", ".join(EVENT_COLUMNS)
_ECON = ", ".join(f"e.{c}" for c in ECON_COLUMNS)


class SqliteWriter(_Writer):
    """Rows are staged in the connection's private temp table before the write lock is taken, so
    that the serialised part of a batch is one INSERT ... SELECT running in SQLite's C code and
    concurrent workers overlap their Python work with each other's writes."""

    placeholder = "?"

    def __init__(self, warehouse, consumer, run_id):
        super().__init__(warehouse, consumer, run_id)
        self.conn.isolation_level = None  # explicit transactions below
        self.conn.execute("CREATE TEMP TABLE IF NOT EXISTS event_stage AS SELECT * FROM ledger_event_log WHERE 0")
        self._stage_sql = f"INSERT INTO temp.event_stage ({_COLS}) VALUES ({', '.join('?' * len(EVENT_COLUMNS))})"
        self._existing_sql = (f"SELECT e.entry_id, e.content_hash, {_ECON} FROM ledger_event_log e "
                              f"WHERE e.entry_id IN (SELECT entry_id FROM temp.event_stage)")
        self._publish = f"INSERT INTO ledger_event_log ({_COLS}) SELECT {_COLS} FROM temp.event_stage"

    def _prepare(self, cur, batch):
        cur.execute("BEGIN")  # a transaction on the temp database only: no lock on the warehouse
        cur.execute("DELETE FROM temp.event_stage")
        if batch.rows:
            cur.executemany(self._stage_sql, batch.rows)
        cur.execute("COMMIT")

    def _begin(self, cur) -> None:
        # take the write lock up front: no lock upgrade deadlock between concurrent writers
        cur.execute("BEGIN IMMEDIATE")

    def _existing(self, cur, batch):
        return cur.execute(self._existing_sql).fetchall()

    def _insert(self, cur, batch, inserts):
        if len(inserts) == len(batch.rows):
            cur.execute(self._publish)
        else:
            keep = {(r[0], r[1], r[2]) for r in inserts}
            skip = [x for r in batch.rows if (r[0], r[1], r[2]) not in keep for x in r[:3]]
            keys = ", ".join(["(?, ?, ?)"] * (len(skip) // 3))
            cur.execute(f"{self._publish} WHERE (topic, kafka_partition, kafka_offset) NOT IN (VALUES {keys})", skip)
        return cur.rowcount


def _pg_text_array(values: list[str]) -> str:
    """A PostgreSQL text[] literal. Ids hardly ever hold a quote or a backslash: when the joined text
    shows none (only the separators' quotes), it is used as is, else every element is escaped."""
    if not values:
        return "{}"
    joined = '","'.join(values)
    if "\\" not in joined and joined.count('"') == 2 * (len(values) - 1):
        return '{"' + joined + '"}'
    return "{" + ",".join('"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"' for v in values) + "}"


class PostgresWriter(_Writer):
    """Existing versions are looked up with one array parameter; new rows go in with COPY."""

    placeholder = "%s"

    def __init__(self, warehouse, consumer, run_id):
        super().__init__(warehouse, consumer, run_id)
        self._copy = f"COPY ledger_event_log ({_COLS}) FROM STDIN"
        self._existing_sql = (f"SELECT e.entry_id, e.content_hash, {_ECON} FROM ledger_event_log e "
                              f"WHERE e.entry_id = ANY(%s::text[])")

    def _existing(self, cur, batch):
        # repeated ids are harmless in = ANY(...): no set built
        cur.execute(self._existing_sql, (_pg_text_array(list(map(_entry_id_of, batch.rows))),))
        return cur.fetchall()

    def _insert(self, cur, batch, inserts):
        with cur.copy(self._copy) as copy:
            for row in inserts:
                copy.write_row(row)
        return len(inserts)


def make_writer(warehouse: "Warehouse", consumer: str, run_id: str | None) -> _Writer:
    return (SqliteWriter if warehouse.dialect == "sqlite" else PostgresWriter)(warehouse, consumer, run_id)
