"""The SQL ledger connector on SQLite and PostgreSQL: incremental publishing, late commits, snapshots."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import pytest
from sqlalchemy import create_engine, text

from ledger_pipelines.config import LedgerConfig
from ledger_pipelines.connectors.sql.mapping import ColumnMapping
from ledger_pipelines.connectors.sql.journal import SqlLedger
from ledger_pipelines.ingest import EventLogIngestor
from ledger_pipelines.publish import Publisher
from ledger_pipelines.snapshots import snapshot_day
from ledger_pipelines.warehouse import Warehouse

pytestmark = pytest.mark.services
DAY = date(2026, 11, 24)


def _insert(engine, n, start_txn=0, day=DAY, amount="100.10"):
    rows = []
    for i in range(n):
        t = f"T{start_txn + i}"
        ts = datetime(day.year, day.month, day.day, 9, tzinfo=timezone.utc) + timedelta(minutes=i)
        for side, acct in (("D", "GL-1000"), ("C", "GL-2000")):
            rows.append({"t": t, "p": ts.strftime("%Y-%m-%dT%H:%M:%SZ"), "a": acct, "c": "EUR", "m": amount,
                         "s": side, "r": f"E2E-{t}"})
    with engine.begin() as c:
        c.execute(text("INSERT INTO journal_lines (txn_id, posted_at, account, counterparty, currency, amount, side, "
                       "payment_ref) VALUES (:t, :p, :a, NULL, :c, :m, :s, :r)"), rows)


@pytest.fixture
def source(warehouse_url, tmp_path):
    """A journal in its own database (PostgreSQL: the test's database; SQLite: its own file)."""
    url = warehouse_url if warehouse_url.startswith("postgresql") else f"sqlite:///{tmp_path / 'core.db'}"
    ledger = SqlLedger(url, ColumnMapping(), "core_banking")
    ledger.create_journal()
    yield url, ledger
    ledger.dispose()


def _lc(monkeypatch, url):
    monkeypatch.setenv("LEDGER_CORE_BANKING_URL", url)
    return LedgerConfig(name="core_banking", kind="sql", connection_env="LEDGER_CORE_BANKING_URL",
                        mapping=ColumnMapping())


def test_publish_then_only_the_new_rows(source, warehouse, kafka, monkeypatch):
    url, ledger = source
    lc = _lc(monkeypatch, url)
    _insert(ledger.engine, 50)
    pub = Publisher(kafka, warehouse)
    assert pub.publish(lc).published == 100
    assert pub.publish(lc).published == 0
    _insert(ledger.engine, 7, start_txn=50)
    assert pub.publish(lc).published == 14
    EventLogIngestor(kafka, warehouse).run()
    assert warehouse.event_counts() == {"events": 114, "distinct_entries": 114, "rejected": 0, "conflicts": 0}
    assert ledger.trial_balance() == []
    stats = snapshot_day(lc, DAY, warehouse)
    assert stats["rows"] == 114 and stats["totals"]["EUR"] == {"credit": "5705.70", "debit": "5705.70"}
    # re-running the partition replaces exactly it
    assert snapshot_day(lc, DAY, warehouse)["rows"] == 114
    assert warehouse.scalar("SELECT count(*) FROM ledger_snapshots") == 114


def test_trial_balance_names_the_unbalanced_transaction(source):
    _, ledger = source
    _insert(ledger.engine, 3)
    with ledger.engine.begin() as c:
        c.execute(text("UPDATE journal_lines SET amount = '100.11' WHERE txn_id = 'T1' AND side = 'C'"))
    (bad,) = ledger.trial_balance(DAY)
    assert bad["transaction_id"] == "T1" and bad["difference"] == "-0.01"


def test_bad_rows_go_to_the_dlq_and_the_rest_is_published(source, warehouse, kafka, monkeypatch):
    url, ledger = source
    lc = _lc(monkeypatch, url)
    _insert(ledger.engine, 2)
    _insert(ledger.engine, 1, start_txn=9, amount="-5.00")
    result = Publisher(kafka, warehouse).publish(lc)
    assert result.published == 4 and result.rejected == 2


def test_identifiers_from_configuration_are_validated():
    with pytest.raises(ValueError, match="identifier"):
        ColumnMapping(table="journal; DROP TABLE x")
    with pytest.raises(ValueError, match="identifier"):
        ColumnMapping(amount='amount" FROM x --')


def test_a_late_committed_row_is_not_skipped(pg_url, kafka, monkeypatch, tmp_path):
    """PostgreSQL hands out ids at insert and commits later: the watermark must come back for them."""
    ledger = SqlLedger(pg_url, ColumnMapping(), "core_banking")
    ledger.create_journal()
    lc = _lc(monkeypatch, pg_url)
    wh = Warehouse(f"sqlite:///{tmp_path / 'w.db'}")
    pub = Publisher(kafka, wh)
    _insert(ledger.engine, 1)  # ids 1, 2
    slow = create_engine(pg_url).connect()
    tx = slow.begin()
    slow.execute(text("INSERT INTO journal_lines (txn_id, posted_at, account, currency, amount, side) "
                      "VALUES ('LATE', '2026-11-24T10:00:00Z', 'GL-9', 'EUR', '1.00', 'D')"))  # id 3, uncommitted
    _insert(ledger.engine, 1, start_txn=1)  # ids 4, 5 committed
    first = pub.publish(lc)
    assert first.published == 4 and first.details["gaps"] == 1
    tx.commit()
    slow.close()
    second = pub.publish(lc)
    assert second.published == 1 and second.details["gaps"] == 0
    EventLogIngestor(kafka, wh).run()
    assert wh.scalar("SELECT count(*) FROM ledger_event_log WHERE account = 'GL-9'") == 1
    ledger.dispose()


def test_rolled_back_ids_stop_being_looked_for_after_the_timeout(pg_url):
    ledger = SqlLedger(pg_url, ColumnMapping(), "core_banking", gap_timeout=timedelta(seconds=0))
    ledger.create_journal()
    with ledger.engine.connect() as c:
        tx = c.begin()
        c.execute(text("INSERT INTO journal_lines (txn_id, posted_at, account, currency, amount, side) "
                       "VALUES ('X', '2026-11-24T10:00:00Z', 'GL-9', 'EUR', '1.00', 'D')"))
        tx.rollback()
    _insert(ledger.engine, 1)
    read = ledger.read_new({"high": 0, "gaps": {}}, now=datetime.now(timezone.utc))
    assert len(read.entries) == 2 and list(read.cursor["gaps"]) == ["1"]  # the rolled-back id
    later = ledger.read_new(read.cursor, now=datetime.now(timezone.utc) + timedelta(seconds=1))
    assert later.cursor["gaps"] == {} and later.entries == []
    ledger.dispose()


def test_day_read_of_text_times_equals_the_row_by_row_mapping(tmp_path):
    """SQLite keeps times as text, in any of the forms the mapping reads: the day read (the compiled
    mapper) gives exactly the entries and errors of the row-by-row mapping, each row's own."""
    from ledger_pipelines.connectors.sql.mapping import row_to_entry
    from ledger_pipelines.model import EntryError

    url = f"sqlite:///{tmp_path / 'core.db'}"
    ledger = SqlLedger(url, ColumnMapping(), "core_banking")
    ledger.create_journal()
    times = ["2026-11-24T09:00:00Z", "2026-11-24T09:00:00.120Z", "2026-11-24 09:00:01", "2026-11-24T09:00:02+00:00",
             "2026-11-24T23:30:00-00:30", "2026-11-24T10:00:00+02:00", "2026-11-24T09:00:00.000001Z",
             "2026-11-24T25:00:00Z", "2026-11-24Tnoon", "2026-11-24T09:00:00Z"]
    rows = [{"t": f"T{i}", "p": p, "a": f"Kontō-{i}", "c": "EUR", "m": f"{i}.50", "s": "DC"[i % 2], "r": f"E2E-{i}"}
            for i, p in enumerate(times)]
    with ledger.engine.begin() as c:
        c.execute(text("INSERT INTO journal_lines (txn_id, posted_at, account, counterparty, currency, amount, side, "
                       "payment_ref) VALUES (:t, :p, :a, NULL, :c, :m, :s, :r)"), rows)
    try:
        entries, errors = ledger.read_day(DAY)
        want_entries, want_errors = [], []
        with ledger.engine.connect() as c:
            for r in c.execute(text(f"{ledger._select} WHERE posted_at >= '2026-11-24' AND posted_at < '2026-11-25' "
                                    "ORDER BY id")):
                try:
                    want_entries.append(row_to_entry(dict(r._mapping), ledger.mapping, "core_banking"))
                except EntryError as exc:
                    want_errors.append((f"sql:core_banking:{r.id}", str(exc)))
        assert entries == want_entries and errors == want_errors
        assert [e.booked_at for e in entries[:3]] == ["2026-11-24T09:00:00Z", "2026-11-24T09:00:00.12Z",
                                                      "2026-11-24T09:00:01Z"]
        assert len(errors) == 2 and "25:00:00" in errors[0][1] and "noon" in errors[1][1]
    finally:
        ledger.dispose()


def test_day_read_of_odd_rows_equals_the_row_by_row_mapping(source):
    """On both databases, the day read's compiled mapper gives exactly the entries and errors of the
    row-by-row mapping (SQLAlchemy's values: datetimes and Decimals on PostgreSQL) for rows off its
    fast path: fractions of seconds, trailing zeros, an amount too large, empty names and references."""
    from ledger_pipelines.connectors.sql.mapping import row_to_entry
    from ledger_pipelines.model import EntryError

    url, ledger = source
    big = "1" + "0" * 100
    rows = [("2026-11-24T09:00:00Z", "GL-1", None, "EUR", "1.500", "D", "E2E-1"),
            ("2026-11-24T09:00:00.120Z", "GL-2", "", "EUR", "0", "C", ""),
            ("2026-11-24T09:00:00.000001Z", "GL-3", "GL-9", "EUR", "0.10", "D", None),
            ("2026-11-24T23:59:59.999999Z", "", "GL-9", "EUR", "2", "C", "E2E-4"),
            ("2026-11-24T10:00:00+02:00", "GL-5", "GL-9", "USDC", big, "D", "E2E-5"),
            ("2026-11-24T12:00:00.5Z", "Kontō-6", "Gegenkontō", "EUR", "12345678901234567890.123456789", "C", "E2E-6"),
            ("2026-11-24T12:00:00.5Z", "GL-7", "GL-9", "", "1", "D", "E2E-7")]
    with ledger.engine.begin() as c:
        c.execute(text("INSERT INTO journal_lines (txn_id, posted_at, account, counterparty, currency, amount, side, "
                       "payment_ref) VALUES (:t, :p, :a, :cp, :c, :m, :s, :r)"),
                  [{"t": f"T{i}", "p": p, "a": a, "cp": cp, "c": ccy, "m": m, "s": s, "r": r}
                   for i, (p, a, cp, ccy, m, s, r) in enumerate(rows)])
    entries, errors = ledger.read_day(DAY)
    want_entries, want_errors = [], []
    with ledger.engine.connect() as c:
        for r in c.execute(text(f"{ledger._select} ORDER BY id")):
            try:
                want_entries.append(row_to_entry(dict(r._mapping), ledger.mapping, "core_banking"))
            except EntryError as exc:
                want_errors.append((f"sql:core_banking:{r.id}", str(exc)))
    assert entries == want_entries and errors == want_errors
    assert [e.booked_at for e in entries][:3] == ["2026-11-24T09:00:00Z", "2026-11-24T09:00:00.12Z",
                                                  "2026-11-24T09:00:00.000001Z"]
    assert [e.amount for e in entries][:3] == ["1.500", "0", "0.10"]
    assert (entries[1].counterparty, entries[1].correlation_id) == (None, None)
    assert sorted(reason.split(": ", 1)[1] for _, reason in errors) == [
        f"amount {big} is out of range", "no account", "no currency"]


_ODD = [
    # (field, value) put into a plain row; each must map as row_to_entry maps it, or be refused alike
    ("posted_at", "2026-11-24 12:00:00 +00"), ("posted_at", "2026-11-24 12:00:00x5+00"),
    ("posted_at", "2026-02-30 12:00:00+00"), ("posted_at", "2026-11-24 12:00:00-08:00+00"),
    ("posted_at", "2026-11-24 24:00:00+00"), ("posted_at", "2026-11-24 12:00:00.1234567+00"),
    ("posted_at", "2026-11-24 12:00:00.120+00"), ("posted_at", "0001-01-01 00:00:00+00"),
    ("posted_at", "２０２６-11-24 12:00:00+00"), ("account", "a" * 600), ("account", ""), ("account", 7),
    ("currency", "U" * 600), ("currency", None), ("amount", "1" * 82), ("amount", "1" * 81),
    ("amount", "0." + "1" * 95), ("id", "x" * 600), ("id", ""), ("id", True), ("side", "X"), ("side", " D"),
    ("counterparty", 5), ("payment_ref", 0), ("payment_ref", ""), ("txn_id", 12),
]


@pytest.mark.parametrize("column, value", _ODD)
@pytest.mark.parametrize("text_times", [False, True])
def test_the_compiled_mapper_reads_every_odd_row_as_the_row_rules_do(column, value, text_times):
    """The day read's mapper (PostgreSQL's text forms, or SQLite's text times) against row_to_entry on
    the same row tuple: the same entry, or the same refusal."""
    from ledger_pipelines.connectors.sql.mapping import row_mapper, row_to_entry
    from ledger_pipelines.model import EntryError

    m = ColumnMapping(debit_values=("D", "X"), credit_values=("C", "X"))  # "X" on both lists reads as debit
    cols = m.columns()
    row = dict(zip(cols, (41, "T1", "2026-11-24 09:00:00+00", "GL-1", "GL-2", "EUR", "10.50", "C", "E2E-1")))
    row[column] = value

    def outcome(fn):
        try:
            return fn()
        except EntryError as exc:
            return f"refused: {exc}"

    fast = outcome(lambda: row_mapper(m, "core_banking", cols, text_times=text_times)(tuple(row.values())))
    slow = outcome(lambda: row_to_entry(row, m, "core_banking"))
    assert fast == slow


def test_a_mapping_with_an_empty_fixed_currency_refuses_each_row():
    from ledger_pipelines.connectors.sql.mapping import row_mapper
    from ledger_pipelines.model import EntryError

    m = ColumnMapping(currency=None, currency_value="")
    with pytest.raises(EntryError, match="no currency"):
        row_mapper(m, "core_banking", m.columns())((1, "T1", "2026-11-24 09:00:00+00", "GL-1", None, "1", "D", None))
