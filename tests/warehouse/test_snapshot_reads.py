"""The snapshot stage's reads and writes on the DBAPI connection give exactly the entries, totals and
statistics that row dicts decoded through JSON give (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
from datetime import date, datetime, timezone
from decimal import Decimal

import msgspec
import pytest

from ledger_pipelines.connectors.sql.mapping import utc_text
from ledger_pipelines.ingest import _row_of
from ledger_pipelines.money import exact, total
from ledger_pipelines.model import EntryError, decode_entry, encode_entry, make_entry
from ledger_pipelines.snapshots import _control_totals_frame, entry_totals, event_log_totals, snapshot_day
from ledger_pipelines.warehouse import EventBatch
from ledger_pipelines.warehouse.state import (entry_stats, event_log_day, read_snapshot, replace_snapshot, snapshot_entries,
                                              snapshot_row, snapshot_stats)

DAY = date(2026, 11, 30)
BIG = str(2**256 - 1)  # the largest uint256 amount


def _entries(ledger: str, kind: str = "evm") -> list:
    """Unicode names, nested attributes, uint256 amounts, fractional and whole seconds, a value date,
    missing counterparty and correlation, an orphaned leg: one of each and a few plain ones."""
    out = []
    for i in range(40):
        out.append(make_entry(
            ledger=ledger, ledger_kind=kind, source_ref=f"{i:04d}-Ωé", correlation_id=None if i % 7 == 0 else f"E2E-ü-{i}",
            account="Zürich-账户" if i % 2 else "GL-1100", counterparty=None if i % 5 == 0 else "Émile 🏦",
            asset="USDC" if i % 3 else "EUR", amount=BIG if i % 4 == 0 else f"{i}.{i:02d}0",
            direction="debit" if i % 2 else "credit",
            booked_at=datetime(2026, 11, 30, i % 24, i, i, (i * 12_340) % 1_000_000, tzinfo=timezone.utc),
            value_date=date(2026, 12, 1) if i % 6 == 0 else None,
            status="orphaned" if i % 9 == 0 else ("final" if i % 2 else "booked"),
            position={"block_number": 10 + i, "log_index": i, "z": {"b": [1, {"ü": None}], "a": 2**70}},
            attributes={"transaction_id": f"T{i // 2}", "nested": {"list": [i, "ß", {"deep": [True, 1.5]}]},
                        "memo": "naïve ✓"} if i % 3 else {},
        ))
    return out


def _reference_snapshot_entries(wh, ledger: str, day: str) -> list:
    """The snapshot read through SQLAlchemy row dicts and a JSON round trip: the definition of the
    result :func:`snapshot_entries` must give."""
    out = []
    for r in read_snapshot(wh, ledger, day):
        booked = r["booked_at"]
        if not isinstance(booked, str):
            booked = utc_text(booked)
        doc = {k: r[k] for k in ("entry_id", "ledger_kind", "source_ref", "correlation_id", "account", "counterparty",
                                 "asset", "direction", "status")}
        doc.update(schema_version=1, ledger=ledger, amount=str(r["amount"]), booked_at=booked,
                   value_date=str(r["value_date"]) if r["value_date"] else None,
                   position=json.loads(r["position"] or "{}"), attributes=json.loads(r["attributes"] or "{}"))
        out.append(decode_entry(msgspec.json.encode(doc)))
    return out


def _reference_event_log_day(wh, ledger: str, day: date) -> list:
    """The event log's day through SQLAlchemy rows and a JSON round trip, the last version winning."""
    rows = wh.rows(
        "SELECT entry_id, ledger_kind, source_ref, correlation_id, account, counterparty, asset, amount, direction, "
        "booked_at, value_date, status, position, attributes FROM ledger_event_log "
        "WHERE ledger = :l AND booked_date = :d ORDER BY entry_id, kafka_partition, kafka_offset",
        l=ledger, d=day.isoformat() if wh.dialect == "sqlite" else day)
    latest = {r[0]: r for r in rows}
    out = []
    for r in latest.values():
        booked = r[9] if isinstance(r[9], str) else utc_text(r[9])
        doc = {"schema_version": 1, "entry_id": r[0], "ledger": ledger, "ledger_kind": r[1], "source_ref": r[2],
               "correlation_id": r[3], "account": r[4], "counterparty": r[5], "asset": r[6], "amount": str(r[7]),
               "direction": r[8], "booked_at": booked, "value_date": str(r[10]) if r[10] else None,
               "status": r[11], "position": msgspec.json.decode(r[12] or "{}"),
               "attributes": msgspec.json.decode(r[13] or "{}")}
        out.append(decode_entry(msgspec.json.encode(doc)))
    return out


def _log(wh, entries_by_partition: dict[int, list]) -> None:
    """Entries into the event log through its writer, each list at increasing offsets of its partition."""
    writer = wh.writer("test")
    try:
        for part, entries in entries_by_partition.items():
            batch = EventBatch()
            for off, e in enumerate(entries):
                value = encode_entry(e)
                batch.rows.append(_row_of(value, e.entry_id.encode(), "t.entries", part, off, None, e.ledger, 1 << 20))
                batch.raw.append(value)
            writer.write(batch)
    finally:
        writer.close()


def test_snapshot_entries_equal_the_row_dict_reading(warehouse):
    bank, chain = _entries("bank", "sql"), _entries("chain")
    replace_snapshot(warehouse, "bank", DAY.isoformat(), bank)
    replace_snapshot(warehouse, "chain", DAY.isoformat(), chain)
    replace_snapshot(warehouse, "chain", "2026-12-01", chain[:3])  # another day of the ledger stays out
    for ledger, entries in (("bank", bank), ("chain", chain)):
        got = snapshot_entries(warehouse, ledger, DAY.isoformat())
        assert got == _reference_snapshot_entries(warehouse, ledger, DAY.isoformat())
        assert got == sorted(entries, key=lambda e: e.entry_id)  # what was written, read back unchanged
        assert any(e.amount == BIG for e in got) and any(e.value_date for e in got)
    assert snapshot_entries(warehouse, "chain", "2026-12-02") == []


def test_event_log_day_takes_the_latest_version_as_the_row_dict_reading(warehouse):
    entries = _entries("chain")
    later = [make_entry(**{**msgspec.to_builtins(e), "status": "orphaned" if i % 2 else "final",
                           "position": {**e.position, "block_hash": "0xab"}})
             for i, e in enumerate(entries[:10])]
    last = make_entry(**{**msgspec.to_builtins(later[0]), "status": "booked"})
    other_day = make_entry(**{**msgspec.to_builtins(entries[1]), "source_ref": "next-day", "entry_id": None,
                              "booked_at": "2026-12-01T00:00:00Z"})
    # partition 0 holds the first versions, partition 1 the later ones: the last by (partition, offset) wins
    _log(warehouse, {0: entries[20:] + entries[:20] + [other_day], 1: later + [last]})
    got = event_log_day(warehouse, "chain", DAY)
    assert got == _reference_event_log_day(warehouse, "chain", DAY)
    latest = {e.entry_id: e for e in entries + later + [last]}
    assert got == [latest[k] for k in sorted(latest)]
    assert sum(e.status == "orphaned" for e in got) >= 5  # orphaned legs are read like any other version
    assert event_log_day(warehouse, "bank", DAY) == []


def test_the_snapshot_and_the_event_log_read_side_by_side_are_the_two_reads(warehouse):
    """Unchanged entries (the same stored row on both sides) are one object shared by both lists; an entry
    whose latest version in the log differs from the snapshot, one in the log only and one in the snapshot
    only are read on their own; the lists equal snapshot_entries and event_log_day."""
    from ledger_pipelines.warehouse.state import snapshot_and_event_log

    entries = _entries("chain")
    snap = entries[:30]
    replace_snapshot(warehouse, "chain", DAY.isoformat(), snap)
    replace_snapshot(warehouse, "chain", "2026-12-01", entries[30:])  # another day stays out
    def changed(es, **fields):
        return [make_entry(**{**msgspec.to_builtins(e), **fields}) for e in es]

    # later versions (status, position: a reorg's) of 5-9 in partition 1 and of 10-14 in partition 0
    _log(warehouse, {0: entries[:25] + entries[35:] + changed(entries[10:15], position={"block_number": 1}),
                     1: changed(entries[5:10], status="orphaned", position={"block_number": 2})})
    got_snap, got_log = snapshot_and_event_log(warehouse, "chain", DAY)
    assert got_snap == snapshot_entries(warehouse, "chain", DAY.isoformat()) == sorted(snap, key=lambda e: e.entry_id)
    assert got_log == event_log_day(warehouse, "chain", DAY)
    by_id = {e.entry_id: e for e in got_snap}
    shared = {e.entry_id for e in got_log if by_id.get(e.entry_id) is e}
    assert shared == {e.entry_id for e in entries[:5] + entries[15:25]}
    assert all(e.position in ({"block_number": 1}, {"block_number": 2}) for e in got_log if e.entry_id not in shared
               and e.entry_id in by_id)
    assert {e.entry_id for e in got_log} - set(by_id) == {e.entry_id for e in entries[35:]}
    assert set(by_id) - {e.entry_id for e in got_log} == {e.entry_id for e in entries[25:30]}
    assert snapshot_and_event_log(warehouse, "bank", DAY) == ([], [])


def test_control_totals_equal_the_totals_of_the_entries(warehouse):
    entries = _entries("chain")
    later = [make_entry(**{**msgspec.to_builtins(e), "status": "orphaned"}) for e in entries[1:6]]
    _log(warehouse, {0: entries, 1: later})
    delivered = _reference_event_log_day(warehouse, "chain", DAY)
    want: dict[tuple[str, str], Decimal] = {}
    with exact():
        for e in delivered:
            if e.status != "orphaned":
                want[(e.asset, e.direction)] = want.get((e.asset, e.direction), Decimal(0)) + Decimal(e.amount)
    assert event_log_totals(warehouse, "chain", DAY) == want == entry_totals(delivered)
    assert any(v > 2**256 for v in want.values())  # exact beyond any float
    frame = _control_totals_frame(entry_totals(entries), event_log_totals(warehouse, "chain", DAY))
    # the orphaned later versions are the difference, exactly, per asset and direction
    gone = {}
    with exact():
        for e in entries[1:6]:
            if e.status != "orphaned":
                gone[f"{e.asset}:{e.direction}"] = gone.get(f"{e.asset}:{e.direction}", Decimal(0)) - Decimal(e.amount)
    assert {k: Decimal(v) for k, v in zip(frame["entry_id"], frame["difference"]) if v != "0"} == gone


def test_entry_stats_equal_the_statistics_of_snapshot_rows():
    entries = _entries("chain")
    # two entries at the same time: the order is (booked_at, entry_id)
    entries.append(make_entry(**{**msgspec.to_builtins(entries[3]), "source_ref": "0003-Ωé-twin", "entry_id": None}))
    rows = [snapshot_row("chain", DAY.isoformat(), e) for e in entries]
    assert entry_stats(entries) == snapshot_stats(rows)
    # a day read twice (every entry again, at another position): ties go as a stable sort puts them
    again = entries + [make_entry(**{**msgspec.to_builtins(e), "position": {"again": True}}) for e in entries]
    stats = entry_stats(again)
    assert stats == snapshot_stats([snapshot_row("chain", DAY.isoformat(), e) for e in again])
    assert stats["first_position"] != {"again": True} and stats["last_position"] == {"again": True}
    stats = entry_stats(entries)
    assert stats["totals"]["EUR"]["credit"] == str(total(e.amount for e in entries
                                                         if e.asset == "EUR" and e.direction == "credit"))
    assert list(stats["first_position"]) == sorted(stats["first_position"])  # keys sorted, as stored
    assert entry_stats([]) == snapshot_stats([]) == {"rows": 0, "totals": {}, "statuses": {},
                                                    "first_position": None, "last_position": None}


def test_a_stored_row_that_is_no_entry_is_refused_with_its_id(warehouse):
    from sqlalchemy import text

    replace_snapshot(warehouse, "chain", DAY.isoformat(), _entries("chain")[:2])
    with warehouse.engine.begin() as c:
        c.execute(text("UPDATE ledger_snapshots SET direction = 'up' WHERE entry_id = 'chain:0001-Ωé'"))
    with pytest.raises(EntryError, match="stored entry 'chain:0001-Ωé' of ledger chain: .*direction"):
        snapshot_entries(warehouse, "chain", DAY.isoformat())


def test_snapshot_day_publishes_the_rows_and_statistics_it_read(tmp_path, monkeypatch):
    """A SQL ledger's day through snapshot_day: the stored rows are the entries read, the statistics
    those of the rows."""
    from conftest import balanced, post_journal

    from ledger_pipelines.config import LedgerConfig
    from ledger_pipelines.connectors.sql.mapping import ColumnMapping
    from ledger_pipelines.connectors.sql.journal import SqlLedger
    from ledger_pipelines.warehouse import Warehouse

    src = f"sqlite:///{tmp_path / 'src.db'}"
    post_journal(src, [line for i in range(30) for line in
                       balanced(f"T{i}", f"2026-11-30T{i % 24:02d}:00:0{i % 10}.{i:03d}Z", f"{i + 1}.5",
                                account=f"Kontō-{i % 3}", ref=f"E2E-{i}")])
    monkeypatch.setenv("LEDGER_CORE_URL", src)
    lc = LedgerConfig(name="core_banking", kind="sql", connection_env="LEDGER_CORE_URL", mapping=ColumnMapping())
    wh = Warehouse(f"sqlite:///{tmp_path / 'w.db'}")
    wh.create_schema()
    try:
        stats = snapshot_day(lc, DAY, wh)
        ledger = SqlLedger(src, ColumnMapping(), "core_banking")
        read, _ = ledger.read_day(DAY)
        ledger.dispose()
        assert snapshot_entries(wh, "core_banking", DAY.isoformat()) == sorted(read, key=lambda e: e.entry_id)
        want = snapshot_stats([snapshot_row("core_banking", DAY.isoformat(), e) for e in read])
        assert {k: stats[k] for k in want} == want and stats["rows"] == 60
    finally:
        wh.dispose()


def test_totals_and_differences_are_exact_in_any_default_context(monkeypatch):
    """uint256 amounts (78 digits) plus cents: the snapshot's totals, control totals and trial balance
    are exact even where the process's default decimal context keeps 28 digits."""
    import decimal
    from fractions import Fraction

    from ledger_pipelines.snapshots import _trial_balance_frame

    monkeypatch.setattr(decimal.getcontext(), "prec", 28)
    legs = [make_entry(ledger="chain", ledger_kind="evm", source_ref=str(i), account="A", asset="USDC",
                       amount=amount, direction=direction, booked_at="2026-11-30T12:00:00Z", status="final",
                       attributes={"transaction_id": "T1"})
            for i, (amount, direction) in enumerate([(BIG, "debit"), ("0.01", "debit"), (BIG, "credit")])]
    debits = Fraction(BIG) + Fraction("0.01")
    assert Fraction(entry_stats(legs)["totals"]["USDC"]["debit"]) == debits
    assert Fraction(entry_totals(legs)[("USDC", "debit")]) == debits
    frame = _control_totals_frame(entry_totals(legs[:1]), entry_totals(legs))
    assert dict(zip(frame["entry_id"], frame["difference"])) == {"USDC:credit": BIG, "USDC:debit": "0.01"}
    assert list(_trial_balance_frame(legs)["difference"]) == ["0.01"]


def test_snapshot_totals_are_plain_decimals_never_exponents():
    """A day of tiny amounts totals 0.00000001, not Decimal's '1E-8'; a zero total keeps its scale."""
    def tiny(ref, amount, direction):
        return make_entry(ledger="chain", ledger_kind="evm", source_ref=ref, account="0xA", asset="WBTC", amount=amount,
                          direction=direction, booked_at="2026-11-30T10:00:00Z", status="final", position={}, attributes={})

    stats = entry_stats([tiny("a", "0.00000001", "debit"), tiny("b", "0.00000000", "credit")])
    assert stats["totals"] == {"WBTC": {"debit": "0.00000001", "credit": "0.00000000"}}


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:", "sqlite:///file:wh?mode=memory&uri=true",
                                 "sqlite:///file::memory:?uri=true", "sqlite:///file::memory:?cache=shared&uri=true"])
def test_an_in_memory_sqlite_warehouse_is_refused_with_the_reason(url):
    """Each connection to an in-memory database is a database of its own: the event log's ingest
    workers, the assets and the desk would each see an empty warehouse."""
    from ledger_pipelines.warehouse import Warehouse

    with pytest.raises(ValueError, match="in-memory SQLite database is private to one connection"):
        Warehouse(url)


def test_unsupported_warehouses_are_refused_with_the_password_masked():
    from ledger_pipelines.warehouse import Warehouse

    with pytest.raises(ValueError, match="SQLite or PostgreSQL") as refused:
        Warehouse("mysql://ops:hunter22@127.0.0.1/ledger")
    assert "hunter22" not in str(refused.value)
