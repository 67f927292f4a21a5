"""SQL double-entry ledger (any SQLAlchemy database; tested on SQLite and PostgreSQL).

Incremental reads use a *gap-aware watermark* on the increasing line id: rows above the high-water
mark are read in id order, and ids skipped below it (a transaction that took its id earlier but
commits later, or one that rolled back) are remembered as gaps and looked for again on every pass
until ``gap_timeout`` has passed. So a late-committed row is never skipped, and a rolled-back id
stops being looked for after the timeout.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

from ...model import CanonicalEntry, EntryError
from ...money import exact
from .mapping import ColumnMapping, row_mapper, row_to_entry

DEFAULT_GAP_TIMEOUT = timedelta(minutes=10)
MAX_GAPS = 100_000


@dataclass
class ReadResult:
    entries: list[CanonicalEntry]
    errors: list[tuple[str, str]]  # (source, reason)
    cursor: dict[str, Any]


JOURNAL_DDL = {
    "sqlite": """CREATE TABLE IF NOT EXISTS "{table}" (
        id INTEGER PRIMARY KEY AUTOINCREMENT, txn_id TEXT NOT NULL, posted_at TEXT NOT NULL,
        account TEXT NOT NULL, counterparty TEXT, currency TEXT NOT NULL, amount TEXT NOT NULL,
        side TEXT NOT NULL CHECK (side IN ('D', 'C')), payment_ref TEXT)""",
    "postgresql": """CREATE TABLE IF NOT EXISTS "{table}" (
        id BIGSERIAL PRIMARY KEY, txn_id TEXT NOT NULL, posted_at TIMESTAMPTZ NOT NULL,
        account TEXT NOT NULL, counterparty TEXT, currency TEXT NOT NULL, amount NUMERIC NOT NULL,
        side CHAR(1) NOT NULL CHECK (side IN ('D', 'C')), payment_ref TEXT)""",
}


class SqlLedger:
    def __init__(self, url: str, mapping: ColumnMapping, ledger: str, gap_timeout: timedelta = DEFAULT_GAP_TIMEOUT):
        self.url = url
        self.mapping = mapping
        self.ledger = ledger
        self.gap_timeout = gap_timeout
        self.engine: Engine = create_engine(url, pool_pre_ping=True)
        m = mapping
        self._select = f"SELECT {', '.join(f'{chr(34)}{c}{chr(34)}' for c in m.columns())} FROM {m.qualified_table}"
        self._id = f'"{m.id}"'

    def dispose(self) -> None:
        self.engine.dispose()

    def create_journal(self) -> None:
        """The documented default journal schema (for the demo and tests)."""
        ddl = JOURNAL_DDL[self.engine.dialect.name].format(table=self.mapping.table)
        with self.engine.begin() as c:
            c.execute(text(ddl))
            c.execute(text(f'CREATE INDEX IF NOT EXISTS "ix_{self.mapping.table}_posted" ON '
                           f'"{self.mapping.table}" (posted_at)'))

    def _entries(self, rows) -> tuple[list[CanonicalEntry], list[tuple[str, str]]]:
        entries, errors = [], []
        for row in rows:
            r = dict(row._mapping)
            try:
                entries.append(row_to_entry(r, self.mapping, self.ledger))
            except EntryError as exc:
                errors.append((f"sql:{self.ledger}:{r.get(self.mapping.id)}", str(exc)))
        return entries, errors

    def top_and_filled(self, gaps) -> tuple[Any, list[str]]:
        """(the highest id, the remembered gap ids that now exist): what a sensor needs to tell a new
        state of the journal from one it already requested a run for."""
        with self.engine.connect() as c:
            top = c.execute(text(f"SELECT max({self._id}) FROM {self.mapping.qualified_table}")).scalar()
            ids = sorted(int(g) for g in gaps)
            filled = []
            for start in range(0, len(ids), 5000):
                chunk = ids[start:start + 5000]
                marks = ", ".join(f":g{i}" for i in range(len(chunk)))
                filled += [str(r[0]) for r in c.execute(
                    text(f"SELECT {self._id} FROM {self.mapping.qualified_table} WHERE {self._id} IN ({marks})"),
                    {f"g{i}": v for i, v in enumerate(chunk)})]
        return top, sorted(filled, key=int)

    def read_new(self, cursor: dict[str, Any] | None, limit: int = 50_000, now: datetime | None = None) -> ReadResult:
        """Rows not yet read: above the high-water mark, plus late arrivals in remembered gaps."""
        now = now or datetime.now(timezone.utc)
        cursor = cursor or {"high": None, "gaps": {}}
        high = cursor.get("high")
        gaps: dict[str, str] = dict(cursor.get("gaps", {}))
        with self.engine.connect() as c:
            rows = []
            if gaps:
                ids = [int(g) for g in gaps]
                for start in range(0, len(ids), 5000):
                    chunk = ids[start:start + 5000]
                    marks = ", ".join(f":g{i}" for i in range(len(chunk)))
                    rows += list(c.execute(text(f"{self._select} WHERE {self._id} IN ({marks})"),
                                           {f"g{i}": v for i, v in enumerate(chunk)}))
            found_gaps = {str(r._mapping[self.mapping.id]) for r in rows}
            where = f"WHERE {self._id} > :high " if high is not None else ""
            fresh = list(c.execute(text(f"{self._select} {where}ORDER BY {self._id} LIMIT :lim"),
                                   {"high": high, "lim": limit}))
        rows += fresh
        for g in found_gaps:
            gaps.pop(g, None)
        ids = [int(r._mapping[self.mapping.id]) for r in fresh]
        if ids:
            seen = set(ids)
            start = (high + 1) if high is not None else min(ids)
            for missing in range(start, max(ids)):
                if missing not in seen:
                    gaps[str(missing)] = now.isoformat()
            high = max(ids)
        expired = [g for g, since in gaps.items() if now - datetime.fromisoformat(since) > self.gap_timeout]
        for g in expired:
            gaps.pop(g)
        if len(gaps) > MAX_GAPS:  # keep the newest; a flood of rollbacks must not grow the cursor forever
            gaps = dict(sorted(gaps.items(), key=lambda kv: int(kv[0]))[-MAX_GAPS:])
        entries, errors = self._entries(rows)
        return ReadResult(entries, errors, {"high": high, "gaps": gaps, "more": len(fresh) == limit})

    def read_day(self, day: date) -> tuple[list[CanonicalEntry], list[tuple[str, str]]]:
        """Every line posted on ``day`` (UTC), straight from the source (DBAPI cursor, compiled mapper)."""
        m = self.mapping
        to_entry = row_mapper(m, self.ledger, m.columns(), text_times=self.engine.dialect.name != "postgresql")
        entries, errors = [], []
        for rows in self.day_rows(day):
            for row in rows:
                try:
                    entries.append(to_entry(row))
                except EntryError as exc:
                    errors.append((f"sql:{self.ledger}:{row[0]}", str(exc)))
        return entries, errors

    def day_rows(self, day: date, batch: int = 20_000) -> Iterator[list[tuple]]:
        """The lines posted on ``day`` (UTC) as the driver returns them, in batches, in id order; each row
        holds ``ColumnMapping.columns()`` (the id first). PostgreSQL sends amounts and times as text, in
        a UTC session: no Decimal or datetime is made per row."""
        start = datetime(day.year, day.month, day.day, tzinfo=timezone.utc)
        lo, hi = self._bounds(start), self._bounds(start + timedelta(days=1))
        m = self.mapping
        col = f'"{m.posted_at}"'
        pg = self.engine.dialect.name == "postgresql"
        mark = "%s" if pg else "?"
        select = ", ".join(f'"{c}"::text' if pg and c in (m.amount, m.posted_at) else f'"{c}"' for c in m.columns())
        raw = self.engine.raw_connection()
        try:
            cur = raw.cursor()
            if pg:
                cur.execute("SET TIME ZONE 'UTC'")
            cur.execute(f"SELECT {select} FROM {m.qualified_table} WHERE {col} >= {mark} AND {col} < {mark} "
                        f"ORDER BY {self._id}", (lo, hi))
            while rows := cur.fetchmany(batch):
                yield rows
            cur.close()
            if pg:
                raw.rollback()
        finally:
            raw.close()

    def _bounds(self, ts: datetime):
        # SQLite stores text: a bare date sorts before every time of that day, whether the text
        # separates date and time with "T" or a space; PostgreSQL compares timestamps
        return ts.strftime("%Y-%m-%d") if self.engine.dialect.name == "sqlite" else ts

    def trial_balance(self, day: date | None = None) -> list[dict[str, Any]]:
        """Transactions whose debits and credits differ, per currency (empty when the books balance)."""
        entries = self.read_day(day)[0] if day else self._entries(self._all())[0]
        sums: dict[tuple[str, str], dict[str, Decimal]] = {}
        with exact():
            for e in entries:
                key = (e.attributes.get("transaction_id") or e.source_ref, e.asset)
                s = sums.setdefault(key, {"debit": Decimal(0), "credit": Decimal(0)})
                s[e.direction] += Decimal(e.amount)
            differences = {k: s["debit"] - s["credit"] for k, s in sums.items()}
        return [{"transaction_id": t, "currency": ccy, "debits": str(s["debit"]), "credits": str(s["credit"]),
                 "difference": str(differences[(t, ccy)])}
                for (t, ccy), s in sorted(sums.items()) if s["debit"] != s["credit"]]

    def _all(self) -> Iterator:
        with self.engine.connect() as c:
            yield from c.execute(text(f"{self._select} ORDER BY {self._id}"))
