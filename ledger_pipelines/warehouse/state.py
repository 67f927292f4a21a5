"""Connector state in the warehouse: cursors, processed files, EVM block window, daily snapshots."""

from __future__ import annotations

import json
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable
from datetime import date
from decimal import Decimal
from operator import attrgetter, itemgetter
from typing import TYPE_CHECKING, Any, get_args

import msgspec
from sqlalchemy import text

from ..connectors.sql.mapping import utc_text
from ..money import plain, total
from ..model import STATUSES, CanonicalEntry, Direction, EntryError, LedgerKind, check_entry
from .schema import SNAPSHOT_COLUMNS

if TYPE_CHECKING:
    from . import Warehouse


def get_cursor(wh: "Warehouse", ledger: str) -> dict[str, Any] | None:
    raw = wh.scalar("SELECT cursor FROM ledger_cursors WHERE ledger = :l", l=ledger)
    return json.loads(raw) if raw else None


def cursor_upsert_sql() -> str:
    return ("INSERT INTO ledger_cursors (ledger, cursor, updated_at) VALUES (:l, :c, :t) "
            "ON CONFLICT (ledger) DO UPDATE SET cursor = excluded.cursor, updated_at = excluded.updated_at")


def set_cursor(wh: "Warehouse", ledger: str, cursor: dict[str, Any], conn=None) -> None:
    from . import utc_now

    params = {"l": ledger, "c": json.dumps(cursor, sort_keys=True), "t": utc_now()}
    if conn is not None:
        conn.execute(text(cursor_upsert_sql()), params)
        return
    with wh.engine.begin() as c:
        c.execute(text(cursor_upsert_sql()), params)


def file_processed(wh: "Warehouse", ledger: str, sha256: str) -> bool:
    return wh.scalar("SELECT count(*) FROM ledger_processed_files WHERE ledger = :l AND sha256 = :s",
                     l=ledger, s=sha256) > 0


def mark_file_processed(wh: "Warehouse", ledger: str, sha256: str, name: str, entries: int, rejected: int) -> None:
    from . import utc_now

    with wh.engine.begin() as c:
        c.execute(text("INSERT INTO ledger_processed_files (ledger, sha256, file_name, entries, rejected, processed_at) "
                       "VALUES (:l, :s, :n, :e, :r, :t) ON CONFLICT DO NOTHING"),
                  {"l": ledger, "s": sha256, "n": name, "e": entries, "r": rejected, "t": utc_now()})


def snapshot_row(ledger: str, day: str, e: CanonicalEntry) -> dict[str, Any]:
    return dict(zip(SNAPSHOT_COLUMNS, snapshot_tuple(ledger, day, e)))


def snapshot_tuple(ledger: str, day: str, e: CanonicalEntry) -> tuple:
    """One ``ledger_snapshots`` row in ``SNAPSHOT_COLUMNS`` order."""
    return (ledger, day, e.entry_id, e.ledger_kind, e.source_ref, e.correlation_id, e.account, e.counterparty,
            e.asset, e.amount, e.direction, e.booked_at, e.value_date, e.status,
            _encode_sorted(e.position).decode(), _encode_sorted(e.attributes).decode())


_encode_sorted = msgspec.json.Encoder(order="sorted").encode


def replace_snapshot(wh: "Warehouse", ledger: str, day: str, entries: Iterable[CanonicalEntry]) -> dict[str, Any]:
    """Replace exactly the (ledger, day) partition in one transaction; returns its statistics.

    Rows go to the DBAPI connection as tuples, made one at a time while the database takes them
    (``executemany`` on SQLite, ``COPY`` on PostgreSQL, as the event log's writer does)."""
    entries = entries if isinstance(entries, list) else list(entries)
    rows = (snapshot_tuple(ledger, day, e) for e in entries)
    cols = ", ".join(SNAPSHOT_COLUMNS)
    with wh.engine.begin() as c:
        c.execute(text("DELETE FROM ledger_snapshots WHERE ledger = :l AND snapshot_date = :d"), {"l": ledger, "d": day})
        cur = c.connection.dbapi_connection.cursor()
        try:
            if wh.dialect == "postgresql":
                with cur.copy(f"COPY ledger_snapshots ({cols}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
            else:
                cur.executemany(f"INSERT INTO ledger_snapshots ({cols}) VALUES ({', '.join('?' * len(SNAPSHOT_COLUMNS))})",
                                rows)
        finally:
            cur.close()
    return entry_stats(entries)


def snapshot_stats(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The statistics of snapshot rows (dicts of ``SNAPSHOT_COLUMNS``); see :func:`entry_stats`."""
    column = lambda name: map(itemgetter(name), rows)  # noqa: E731
    return _stats(rows, column, lambda r: json.loads(r["position"]), str)


def entry_stats(entries: list[CanonicalEntry]) -> dict[str, Any]:
    """Rows, exact debit and credit totals per asset, rows per status, and the positions of the first
    and the last entry by (booked_at, entry_id)."""
    column = lambda name: map(attrgetter(name), entries)  # noqa: E731
    return _stats(entries, column, lambda e: msgspec.json.decode(_encode_sorted(e.position)))


def _stats(items: list, column, position, amount_text=None) -> dict[str, Any]:
    """``column(name)`` iterates a field of every item, in order; the loops run in C but one."""
    n = len(items)
    # first and last by (booked_at, entry_id); the index breaks ties as a stable sort would
    first = min(zip(column("booked_at"), column("entry_id"), range(n)), default=None)
    last = max(zip(column("booked_at"), column("entry_id"), range(n)), default=None)
    amounts: dict[tuple[str, str], list] = defaultdict(list)
    for key, amount in zip(zip(column("asset"), column("direction")), column("amount")):
        amounts[key].append(amount)
    totals: dict[str, dict[str, Decimal]] = {}
    for (asset, direction), group in amounts.items():
        t = totals.setdefault(asset, {"debit": Decimal(0), "credit": Decimal(0)})
        t[direction] = total(map(amount_text, group) if amount_text else group)
    statuses = Counter(column("status"))
    return {
        "rows": n,
        "totals": {a: {k: plain(v) for k, v in t.items()} for a, t in sorted(totals.items())},
        "statuses": {s: statuses[s] for s in sorted(statuses)},
        "first_position": position(items[first[2]]) if first is not None else None,
        "last_position": position(items[last[2]]) if last is not None else None,
    }


def read_snapshot(wh: "Warehouse", ledger: str, day: str) -> list[dict[str, Any]]:
    with wh.engine.connect() as c:
        res = c.execute(text(f"SELECT {', '.join(SNAPSHOT_COLUMNS)} FROM ledger_snapshots "
                             "WHERE ledger = :l AND snapshot_date = :d ORDER BY entry_id"), {"l": ledger, "d": day})
        return [dict(r._mapping) for r in res]


# the canonical entry's columns as both tables store them, in the order stored_entry reads them
ENTRY_COLUMNS = ("entry_id", "ledger_kind", "source_ref", "correlation_id", "account", "counterparty", "asset",
                 "amount", "direction", "booked_at", "value_date", "status", "position", "attributes")


def entry_select(wh: "Warehouse", columns: Iterable[str] = ENTRY_COLUMNS) -> str:
    """A select list of entry columns; PostgreSQL sends amounts as text (no Decimal a row, and never
    the exponent form ``str(Decimal)`` writes for small amounts)."""
    return ", ".join(f"{c}::text" if c == "amount" and wh.dialect == "postgresql" else c for c in columns)


_decode_object = msgspec.json.Decoder(dict[str, Any]).decode
_intern = sys.intern


def stored_entry(ledger: str, r: tuple) -> CanonicalEntry:
    """A stored row (``ENTRY_COLUMNS`` order) of ``ledger`` as a canonical entry, held to the rules
    :func:`~ledger_pipelines.model.decode_entry` holds one to; raises EntryError naming the entry."""
    booked, value_date, counterparty = r[9], r[10], r[5]
    if type(booked) is not str:  # PostgreSQL hands back a datetime in the session's zone
        booked = utc_text(booked)
    if value_date:
        value_date = _intern(value_date if type(value_date) is str else str(value_date))
    try:
        # the values a day repeats (kinds, names, times) are interned: a million entries share them
        # rather than holding a copy each (a third of an entry's memory)
        entry = CanonicalEntry(
            schema_version=1, entry_id=r[0], ledger=ledger, ledger_kind=_intern(r[1]), source_ref=r[2],
            correlation_id=r[3], account=_intern(r[4]),
            counterparty=_intern(counterparty) if type(counterparty) is str else counterparty,
            asset=_intern(r[6]), amount=r[7] if type(r[7]) is str else str(r[7]), direction=_intern(r[8]),
            booked_at=_intern(booked), value_date=value_date or None, status=_intern(r[11]),
            position=_decode_object(r[12] or "{}"), attributes=_decode_object(r[13] or "{}"))
        if entry.ledger_kind not in _KINDS or entry.direction not in _DIRECTIONS or entry.status not in _STATUSES:
            raise EntryError(f"ledger_kind, direction, status: {entry.ledger_kind!r}, {entry.direction!r}, "
                             f"{entry.status!r} is not a known kind, direction and status")
        if not (0 < len(entry.account) <= 512 and 0 < len(entry.asset) <= 512 and 0 < len(entry.source_ref) <= 512
                and len(entry.entry_id) <= 512):
            raise EntryError("entry_id, source_ref, account, asset: must be non-empty and at most 512 characters")
        return check_entry(entry, known_ledger=ledger)
    except (msgspec.ValidationError, msgspec.DecodeError, EntryError, TypeError) as exc:
        raise EntryError(f"stored entry {str(r[0])[:120]!r} of ledger {ledger}: {exc}") from None


_KINDS = frozenset(get_args(LedgerKind))
_DIRECTIONS = frozenset(get_args(Direction))
_STATUSES = frozenset(STATUSES)


def stored_rows(wh: "Warehouse", sql: str, params: tuple, chunk: int = 20_000):
    """The rows of a query on the DBAPI connection (``?`` marks, written ``%s`` for PostgreSQL), a chunk
    at a time: PostgreSQL through a server-side cursor, so a million rows are never one result."""
    with wh.engine.connect() as c:
        raw = c.connection.dbapi_connection
        pg = wh.dialect == "postgresql"
        cur = raw.cursor(name="ledger_stored_rows") if pg else raw.cursor()
        try:
            cur.execute(sql.replace("?", "%s") if pg else sql, params)
            while True:
                rows = cur.fetchmany(chunk)
                if not rows:
                    break
                yield from rows
        finally:
            cur.close()


def snapshot_entries(wh: "Warehouse", ledger: str, day: str) -> list[CanonicalEntry]:
    """The published snapshot of (ledger, day) as canonical entries, ordered by entry_id."""
    return [stored_entry(ledger, r) for r in _snapshot_rows(wh, ledger, day)]


def _snapshot_rows(wh: "Warehouse", ledger: str, day: str):
    sql = (f"SELECT {entry_select(wh)} FROM ledger_snapshots WHERE ledger = ? AND snapshot_date = ? "
           "ORDER BY entry_id")
    return stored_rows(wh, sql, (ledger, day))


def event_log_day(wh: "Warehouse", ledger: str, day: date) -> list[CanonicalEntry]:
    """The latest version (the last by partition and offset) of every entry of ``ledger`` the event
    log holds for ``day``, ordered by entry_id."""
    return [stored_entry(ledger, r) for r in _latest_versions(wh, ledger, day, entry_select(wh, ENTRY_COLUMNS))]


def snapshot_and_event_log(wh: "Warehouse", ledger: str, day: date) -> tuple[list[CanonicalEntry], list[CanonicalEntry]]:
    """(:func:`snapshot_entries`, :func:`event_log_day`) of (ledger, day), read side by side in entry_id order.

    An entry the event log delivered as the snapshot holds it (the same stored row, column for column) is
    the snapshot's entry object: :func:`stored_entry` is a function of the row, so decoding the row again
    would give an equal entry. A bridge check of a million unchanged entries then decodes them once, and
    holds them once. Any other row (changed, or on one side only) is decoded on its own; the two lists
    are the ones the two functions return."""
    snapshot: list[CanonicalEntry] = []
    delivered: list[CanonicalEntry] = []
    snap_rows = _snapshot_rows(wh, ledger, day.isoformat())
    ahead = next(snap_rows, None)  # the next snapshot row not yet decoded
    try:
        for row in _latest_versions(wh, ledger, day, entry_select(wh, ENTRY_COLUMNS)):
            # both are in the database's entry_id order; where Python orders two ids otherwise, a row is
            # only not shared (decoded twice), never misplaced
            while ahead is not None and ahead[0] < row[0]:
                snapshot.append(stored_entry(ledger, ahead))
                ahead = next(snap_rows, None)
            if ahead is not None and ahead[0] == row[0]:
                entry = stored_entry(ledger, ahead)
                snapshot.append(entry)
                delivered.append(entry if ahead == row else stored_entry(ledger, row))
                ahead = next(snap_rows, None)
            else:
                delivered.append(stored_entry(ledger, row))
        while ahead is not None:
            snapshot.append(stored_entry(ledger, ahead))
            ahead = next(snap_rows, None)
    finally:
        snap_rows.close()
    return snapshot, delivered


def _latest_versions(wh: "Warehouse", ledger: str, day: date, select: str):
    """The event log's rows of (ledger, day), the latest version of each entry (its first column is
    entry_id; the versions of an entry come together, in partition and offset order)."""
    sql = (f"SELECT {select} FROM ledger_event_log WHERE ledger = ? AND booked_date = ? "
           "ORDER BY entry_id, kafka_partition, kafka_offset")
    last = None
    for r in stored_rows(wh, sql, (ledger, day.isoformat())):
        if last is not None and r[0] != last[0]:
            yield last
        last = r
    if last is not None:
        yield last
