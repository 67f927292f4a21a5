"""Connector state in the warehouse: cursors, processed files, EVM block window, daily snapshots."""

from __future__ import annotations

import json
from collections.abc import Iterable
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import msgspec
from sqlalchemy import text

from ..model import CanonicalEntry
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
    return {
        "ledger": ledger, "snapshot_date": day, "entry_id": e.entry_id, "ledger_kind": e.ledger_kind,
        "source_ref": e.source_ref, "correlation_id": e.correlation_id, "account": e.account,
        "counterparty": e.counterparty, "asset": e.asset, "amount": e.amount, "direction": e.direction,
        "booked_at": e.booked_at, "value_date": e.value_date, "status": e.status,
        "position": msgspec.json.encode(e.position, order="sorted").decode(),
        "attributes": msgspec.json.encode(e.attributes, order="sorted").decode(),
    }


def replace_snapshot(wh: "Warehouse", ledger: str, day: str, entries: Iterable[CanonicalEntry]) -> dict[str, Any]:
    """Replace exactly the (ledger, day) partition in one transaction; returns its statistics."""
    rows = [snapshot_row(ledger, day, e) for e in entries]
    cols = ", ".join(SNAPSHOT_COLUMNS)
    marks = ", ".join(f":{c}" for c in SNAPSHOT_COLUMNS)
    with wh.engine.begin() as c:
        c.execute(text("DELETE FROM ledger_snapshots WHERE ledger = :l AND snapshot_date = :d"), {"l": ledger, "d": day})
        if rows:
            c.execute(text(f"INSERT INTO ledger_snapshots ({cols}) VALUES ({marks})"), rows)
    return snapshot_stats(rows)


def snapshot_stats(rows: list[dict[str, Any]]) -> dict[str, Any]:
    totals: dict[str, dict[str, Decimal]] = {}
    for r in rows:
        t = totals.setdefault(r["asset"], {"debit": Decimal(0), "credit": Decimal(0)})
        t[r["direction"]] += Decimal(str(r["amount"]))
    ordered = sorted(rows, key=lambda r: (r["booked_at"], r["entry_id"]))
    return {
        "rows": len(rows),
        "totals": {a: {k: str(v) for k, v in t.items()} for a, t in sorted(totals.items())},
        "statuses": {s: sum(1 for r in rows if r["status"] == s) for s in sorted({r["status"] for r in rows})},
        "first_position": json.loads(ordered[0]["position"]) if ordered else None,
        "last_position": json.loads(ordered[-1]["position"]) if ordered else None,
    }


def read_snapshot(wh: "Warehouse", ledger: str, day: str) -> list[dict[str, Any]]:
    with wh.engine.connect() as c:
        res = c.execute(text(f"SELECT {', '.join(SNAPSHOT_COLUMNS)} FROM ledger_snapshots "
                             "WHERE ledger = :l AND snapshot_date = :d ORDER BY entry_id"), {"l": ledger, "d": day})
        return [dict(r._mapping) for r in res]
