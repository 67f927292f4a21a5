"""Batch writer of the event log: rows, rejects, conflicts and offsets in one transaction."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING

from .schema import EVENT_COLUMNS

if TYPE_CHECKING:
    from . import Warehouse

ECON_COLUMNS = ("ledger", "ledger_kind", "source_ref", "account", "counterparty", "asset", "amount",
                "direction", "correlation_id")
_AMOUNT = ECON_COLUMNS.index("amount")
_ENTRY_ID = EVENT_COLUMNS.index("entry_id")
_HASH = EVENT_COLUMNS.index("content_hash")
_LOOKUP_CHUNK = 5000


class ConcurrentIngestError(RuntimeError):
    """Another run advanced the stored offsets first; this batch was rolled back."""


@dataclass
class EventBatch:
    rows: list[tuple] = field(default_factory=list)  # EVENT_COLUMNS order
    econ: list[tuple] = field(default_factory=list)  # ECON_COLUMNS of each row
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
    def _begin(self, cur) -> None: ...
    def _lookup(self, cur, ids: list[str]) -> list[tuple]: ...
    def _insert_events(self, cur, rows: list[tuple]) -> None: ...

    def write(self, batch: EventBatch) -> BatchCounts:
        from . import utc_now

        counts = BatchCounts(rejected=len(batch.rejects))
        now = utc_now()
        cur = self.conn.cursor()
        try:
            self._begin(cur)
            for (topic, part), (expected, new) in batch.offsets.items():
                cur.execute(self._cas, (new, now, self.consumer, topic, part, expected))
                if cur.rowcount != 1:
                    raise ConcurrentIngestError(
                        f"stored offset of {topic}[{part}] is no longer {expected}: another ingest run "
                        f"advanced it; this batch was rolled back"
                    )
            inserts, conflicts = self._dedupe(cur, batch, counts, now)
            if inserts:
                self._insert_events(cur, inserts)
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
        counts.inserted = len(inserts)
        counts.conflicts = len(conflicts)
        return counts

    def _dedupe(self, cur, batch: EventBatch, counts: BatchCounts, now: str):
        ids = list({row[_ENTRY_ID] for row in batch.rows})
        known: dict[str, tuple[set, tuple]] = {}
        for start in range(0, len(ids), _LOOKUP_CHUNK):
            for rec in self._lookup(cur, ids[start:start + _LOOKUP_CHUNK]):
                entry = known.get(rec[0])
                if entry is None:
                    known[rec[0]] = ({rec[1]}, tuple(rec[2:]))
                else:
                    entry[0].add(rec[1])
        inserts, conflicts = [], []
        for row, econ, raw in zip(batch.rows, batch.econ, batch.raw):
            eid, h = row[_ENTRY_ID], row[_HASH]
            seen = known.get(eid)
            if seen is None:
                known[eid] = ({h}, econ)
                inserts.append(row)
            elif h in seen[0]:
                counts.duplicates += 1
            else:
                diff = _differing(seen[1], econ)
                if diff:
                    conflicts.append((row[0], row[1], row[2], eid, next(iter(seen[0])), h, ",".join(diff), raw,
                                      now, self.run_id))
                else:
                    seen[0].add(h)
                    inserts.append(row)
        return inserts, conflicts


_LOOKUP_COLUMNS = "entry_id, content_hash, " + ", ".join(ECON_COLUMNS)


class SqliteWriter(_Writer):
    placeholder = "?"

    def __init__(self, warehouse, consumer, run_id):
        super().__init__(warehouse, consumer, run_id)
        self.conn.isolation_level = None  # explicit BEGIN IMMEDIATE below
        self._insert = self._sql(
            f"INSERT INTO ledger_event_log ({', '.join(EVENT_COLUMNS)}) VALUES ({{}})", len(EVENT_COLUMNS)
        )

    def _begin(self, cur) -> None:
        # take the write lock up front: no lock upgrade deadlock between concurrent writers
        cur.execute("BEGIN IMMEDIATE")

    def _lookup(self, cur, ids):
        marks = ",".join("?" * len(ids))
        return cur.execute(f"SELECT {_LOOKUP_COLUMNS} FROM ledger_event_log WHERE entry_id IN ({marks})", ids).fetchall()

    def _insert_events(self, cur, rows):
        cur.executemany(self._insert, rows)


class PostgresWriter(_Writer):
    placeholder = "%s"

    def __init__(self, warehouse, consumer, run_id):
        super().__init__(warehouse, consumer, run_id)
        self._copy = f"COPY ledger_event_log ({', '.join(EVENT_COLUMNS)}) FROM STDIN"

    def _lookup(self, cur, ids):
        cur.execute(f"SELECT {_LOOKUP_COLUMNS} FROM ledger_event_log WHERE entry_id = ANY(%s)", (ids,))
        return cur.fetchall()

    def _insert_events(self, cur, rows):
        with cur.copy(self._copy) as copy:
            for row in rows:
                copy.write_row(row)


def make_writer(warehouse: "Warehouse", consumer: str, run_id: str | None) -> _Writer:
    return (SqliteWriter if warehouse.dialect == "sqlite" else PostgresWriter)(warehouse, consumer, run_id)
