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
    def _stage(self, cur, rows: list[tuple]) -> None: ...

    def write(self, batch: EventBatch) -> BatchCounts:
        """One transaction: move the offsets, stage the rows, keep new versions, record the rest."""
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
            staged, skipped, conflicts = self._classify(cur, batch, counts, now)
            if staged:
                cur.execute(self._publish if not skipped else self._publish_except(len(skipped)),
                            [x for key in skipped for x in key])
                counts.inserted = cur.rowcount
            if conflicts:
                cur.executemany(self._insert_conflicts, conflicts)
            if batch.rejects:
                cur.executemany(self._insert_rejects, [(*r, now, self.run_id) for r in batch.rejects])
            cur.execute(self._clear)
            self.conn.commit()
        except BaseException:
            self.conn.rollback()
            raise
        finally:
            cur.close()
        counts.conflicts = len(conflicts)
        return counts

    def _classify(self, cur, batch: EventBatch, counts: BatchCounts, now: str):
        """Stage the batch's first version of each entry and compare it with the stored ones.

        Returns (staged count, staged keys to leave out, conflict rows). Existing versions are found
        by a join inside the database, so only entries that already exist cost a round trip.
        """
        known: dict[str, tuple[set, tuple]] = {}
        stage, stage_raw, later = [], [], []
        for row, econ, raw in zip(batch.rows, batch.econ, batch.raw):
            eid = row[_ENTRY_ID]
            if eid in known:
                later.append((row, econ, raw))  # a second version inside this batch: decide below
            else:
                known[eid] = ({row[_HASH]}, econ)
                stage.append(row)
                stage_raw.append(raw)
        if stage:
            self._stage(cur, stage)
        cur.execute(self._existing)
        existing = cur.fetchall()
        skipped: list[tuple] = []
        conflicts = []
        if existing:
            stored: dict[str, tuple[set, tuple]] = {}
            for rec in existing:
                entry = stored.setdefault(rec[0], (set(), tuple(rec[2:])))
                entry[0].add(rec[1])
            staged_rows = {row[_ENTRY_ID]: (row, raw) for row, raw in zip(stage, stage_raw)}
            for eid, (hashes, econ) in stored.items():
                row, raw = staged_rows[eid]
                mine = known[eid]
                skipped.append((row[0], row[1], row[2]))
                if row[_HASH] in hashes:
                    counts.duplicates += 1
                    known[eid] = (hashes, econ)
                    continue
                diff = _differing(econ, mine[1])
                if diff:
                    conflicts.append((row[0], row[1], row[2], eid, next(iter(hashes)), row[_HASH], ",".join(diff),
                                      raw, now, self.run_id))
                    known[eid] = (hashes, econ)
                else:
                    skipped.pop()  # a new version of a known entry: keep it
                    known[eid] = (hashes | {row[_HASH]}, econ)
        extra = []
        for row, econ, raw in later:
            hashes, first = known[row[_ENTRY_ID]]
            if row[_HASH] in hashes:
                counts.duplicates += 1
                continue
            diff = _differing(first, econ)
            if diff:
                conflicts.append((row[0], row[1], row[2], row[_ENTRY_ID], next(iter(hashes)), row[_HASH],
                                  ",".join(diff), raw, now, self.run_id))
            else:
                hashes.add(row[_HASH])
                extra.append(row)
        if extra:
            self._stage(cur, extra)
        return len(stage) + len(extra), skipped, conflicts

    def _publish_except(self, n: int) -> str:
        p = self.placeholder
        keys = ", ".join([f"({p}, {p}, {p})"] * n)
        return f"{self._publish} WHERE (topic, kafka_partition, kafka_offset) NOT IN (VALUES {keys})"


_COLS = ", ".join(EVENT_COLUMNS)
_ECON = ", ".join(f"e.{c}" for c in ECON_COLUMNS)


class SqliteWriter(_Writer):
    placeholder = "?"

    def __init__(self, warehouse, consumer, run_id):
        super().__init__(warehouse, consumer, run_id)
        self.conn.isolation_level = None  # explicit BEGIN IMMEDIATE below
        self.conn.execute("CREATE TEMP TABLE IF NOT EXISTS event_stage AS SELECT * FROM ledger_event_log WHERE 0")
        self._stage_sql = f"INSERT INTO temp.event_stage ({_COLS}) VALUES ({', '.join('?' * len(EVENT_COLUMNS))})"
        self._existing = (f"SELECT e.entry_id, e.content_hash, {_ECON} FROM ledger_event_log e "
                          f"WHERE e.entry_id IN (SELECT entry_id FROM temp.event_stage)")
        self._publish = f"INSERT INTO ledger_event_log ({_COLS}) SELECT {_COLS} FROM temp.event_stage"
        self._clear = "DELETE FROM temp.event_stage"

    def _begin(self, cur) -> None:
        # take the write lock up front: no lock upgrade deadlock between concurrent writers
        cur.execute("BEGIN IMMEDIATE")

    def _stage(self, cur, rows):
        cur.executemany(self._stage_sql, rows)


class PostgresWriter(_Writer):
    placeholder = "%s"

    def __init__(self, warehouse, consumer, run_id):
        super().__init__(warehouse, consumer, run_id)
        self.conn.execute(
            "CREATE TEMP TABLE IF NOT EXISTS event_stage (LIKE ledger_event_log) ON COMMIT DELETE ROWS"
        )
        self.conn.commit()
        self._copy = f"COPY event_stage ({_COLS}) FROM STDIN"
        self._existing = (f"SELECT e.entry_id, e.content_hash, {_ECON} FROM ledger_event_log e "
                          f"WHERE e.entry_id IN (SELECT entry_id FROM event_stage)")
        self._publish = f"INSERT INTO ledger_event_log ({_COLS}) SELECT {_COLS} FROM event_stage"
        self._clear = "SELECT 1"  # ON COMMIT DELETE ROWS empties the stage

    def _stage(self, cur, rows):
        with cur.copy(self._copy) as copy:
            for row in rows:
                copy.write_row(row)


def make_writer(warehouse: "Warehouse", consumer: str, run_id: str | None) -> _Writer:
    return (SqliteWriter if warehouse.dialect == "sqlite" else PostgresWriter)(warehouse, consumer, run_id)
