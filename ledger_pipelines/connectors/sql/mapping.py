"""Column mapping of a SQL ledger table (shared by the SQL and the CDC connectors).

The documented default journal schema (``journal_lines``):

| column | meaning |
|---|---|
| ``id`` | journal line id, integer, increasing (the source reference) |
| ``txn_id`` | the transaction the line belongs to (debits = credits per transaction and currency) |
| ``posted_at`` | UTC posting time |
| ``account`` / ``counterparty`` | the account booked and the other side |
| ``currency`` | ISO 4217 code or token symbol |
| ``amount`` | exact decimal, positive |
| ``side`` | ``D`` (debit) or ``C`` (credit) |
| ``payment_ref`` | payment reference (EndToEndId / UETR / memo): the correlation id |

Every table and column name passes :func:`validate_identifier` before it reaches SQL.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from typing import Any

from ...model import (MAX_EPOCH_SECONDS, CanonicalEntry, EntryError, amount_is_canonical, format_amount,
                     format_timestamp, make_entry)
from ...warehouse import validate_identifier


@dataclass(frozen=True)
class ColumnMapping:
    table: str = "journal_lines"
    schema: str | None = None
    id: str = "id"
    transaction_id: str | None = "txn_id"
    posted_at: str | None = "posted_at"
    account: str = "account"
    counterparty: str | None = "counterparty"
    currency: str | None = "currency"
    amount: str = "amount"
    side: str | None = "side"
    reference: str | None = "payment_ref"
    # constants for tables that lack a column (e.g. a single-currency table)
    currency_value: str | None = None
    direction_value: str | None = None
    debit_values: tuple[str, ...] = ("D", "DEBIT", "DR", "debit")
    credit_values: tuple[str, ...] = ("C", "CREDIT", "CR", "credit")
    # scale of a Kafka Connect Decimal whose schema is not in the event
    decimal_scale: int | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        validate_identifier(self.table, "table")
        if self.schema:
            validate_identifier(self.schema, "schema")
        for name in ("id", "transaction_id", "posted_at", "account", "counterparty", "currency", "amount", "side",
                     "reference"):
            value = getattr(self, name)
            if value is not None:
                validate_identifier(value, f"column for {name}")
        for col in self.extra.values():
            validate_identifier(col, "extra column")
        if self.currency is None and self.currency_value is None:
            raise ValueError("mapping needs a currency column or currency_value")
        if self.side is None and self.direction_value not in ("debit", "credit"):
            raise ValueError("mapping needs a side column or direction_value 'debit'/'credit'")

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "ColumnMapping":
        d = dict(d or {})
        for key in ("debit_values", "credit_values"):
            if key in d:
                d[key] = tuple(d[key])
        return cls(**d)

    @property
    def qualified_table(self) -> str:
        return f'"{self.schema}"."{self.table}"' if self.schema else f'"{self.table}"'

    def columns(self) -> list[str]:
        cols = [self.id, self.transaction_id, self.posted_at, self.account, self.counterparty, self.currency,
                self.amount, self.side, self.reference, *self.extra.values()]
        return [c for c in dict.fromkeys(cols) if c]


def exact_amount(value: Any, where: str) -> str:
    """A column value as an exact canonical decimal; floats only as their shortest decimal text."""
    if value is None:
        raise EntryError(f"{where}: amount is NULL")
    if isinstance(value, float):
        # a float column (e.g. Debezium double) is exact only as the decimal the database printed
        value = Decimal(repr(value))
    try:
        d = value if isinstance(value, Decimal) else Decimal(str(value).strip())
    except (InvalidOperation, ValueError):  # ValueError: an int too long to write as text
        raise EntryError(f"{where}: amount {str(value)[:60]!r} is not a number") from None
    if not d.is_finite():
        raise EntryError(f"{where}: amount {value} is not finite")
    if d < 0:
        raise EntryError(f"{where}: amount {value} is negative; the side column carries the direction")
    if d.adjusted() > 80:
        raise EntryError(f"{where}: amount {value} is out of range")
    return format_amount(d)


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def utc_from_millis(ms: Any, where: str, what: str = "ts_ms") -> str:
    """Milliseconds since 1970 (an int) as a canonical UTC timestamp, exactly (no float division)."""
    if type(ms) is not int or not 0 <= ms <= MAX_EPOCH_SECONDS * 1000 + 999:
        raise EntryError(f"{where}: {what} {str(ms)[:40]!r} is not a whole number of milliseconds "
                         f"in the years 1970-9999")
    return format_timestamp(_EPOCH + timedelta(milliseconds=ms))


def utc_timestamp(value: Any, where: str) -> str:
    if type(value) is int or (type(value) is float and value.is_integer()):
        return utc_from_millis(int(value), where, "posted time")
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip().replace("Z", "+00:00").replace(" ", "T"))
        except ValueError:
            raise EntryError(f"{where}: posted time {value[:60]!r} is not an ISO timestamp") from None
    if not isinstance(value, datetime):
        raise EntryError(f"{where}: posted time {str(value)[:60]!r} missing or of type {type(value).__name__}")
    try:
        return format_timestamp(value if value.tzinfo else value.replace(tzinfo=timezone.utc))
    except EntryError as exc:
        raise EntryError(f"{where}: {exc}") from None


def scalar_text(value: Any, where: str, column: str) -> str | None:
    """A key or name column as text: strings and numbers; a nested object or a boolean is no account name."""
    if value is None or value == "":
        return None
    if isinstance(value, (dict, list, bool, float)):
        raise EntryError(f"{where}: column {column} holds {type(value).__name__} {str(value)[:60]}, not text or a number")
    return str(value)


def row_to_entry(
    row: dict[str, Any], m: ColumnMapping, ledger: str, kind: str = "sql", source_ref: str | None = None,
    status: str = "booked", position: dict | None = None, booked_at: str | None = None,
) -> CanonicalEntry:
    """One journal line (a mapping column -> value) to a canonical entry."""
    rid = row.get(m.id)
    where = f"{ledger} row {m.id}={str(rid)[:60]!r}"
    if scalar_text(rid, where, m.id) is None:
        raise EntryError(f"{where}: no id")
    if m.side is not None:
        side = (scalar_text(row.get(m.side), where, m.side) or "").strip()
        if side in m.debit_values:
            direction = "debit"
        elif side in m.credit_values:
            direction = "credit"
        else:
            raise EntryError(f"{where}: side {side!r} is neither debit {m.debit_values} nor credit {m.credit_values}")
    else:
        direction = m.direction_value
    currency = m.currency_value or scalar_text(row.get(m.currency), where, m.currency)
    if not currency:
        raise EntryError(f"{where}: no currency")
    account = scalar_text(row.get(m.account), where, m.account)
    if account is None:
        raise EntryError(f"{where}: no account")
    when = booked_at or utc_timestamp(row.get(m.posted_at) if m.posted_at else None, where)
    attrs = {k: _plain(row.get(col)) for k, col in m.extra.items() if row.get(col) is not None}
    if m.transaction_id and row.get(m.transaction_id) is not None:
        attrs["transaction_id"] = str(row[m.transaction_id])
    cp = scalar_text(row.get(m.counterparty), where, m.counterparty) if m.counterparty else None
    ref = scalar_text(row.get(m.reference), where, m.reference) if m.reference else None
    return make_entry(
        ledger=ledger, ledger_kind=kind, source_ref=source_ref or str(rid), correlation_id=ref,
        account=account, counterparty=cp, asset=currency,
        amount=exact_amount(row.get(m.amount), where), direction=direction, booked_at=when, value_date=None,
        status=status, position=position or {"row_id": _plain(rid)}, attributes=attrs,
    )


def _plain(v: Any) -> Any:
    if isinstance(v, (Decimal, datetime)):
        return str(v)
    return v


def utc_text(ts: datetime) -> str:
    """RFC 3339 UTC text of a datetime (naive = UTC), without a zero fraction."""
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=timezone.utc)
    elif ts.utcoffset():
        ts = ts.astimezone(timezone.utc)
    us = ts.microsecond
    text = f"{ts.year:04d}-{ts.month:02d}-{ts.day:02d}T{ts.hour:02d}:{ts.minute:02d}:{ts.second:02d}"
    return text + (f".{us:06d}".rstrip("0") if us else "") + "Z"


# PostgreSQL's text of a timestamptz in a UTC session: 2026-11-24 12:00:00[.123456]+00
_PG_UTC_TEXT = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?\+00\Z")


def row_mapper(m: ColumnMapping, ledger: str, columns: list[str], kind: str = "sql", text_times: bool = False):
    """A function from a row tuple (in ``columns`` order) to a canonical entry.

    The hot path of snapshot reads: values come straight from the database driver, are normalised
    by the same rules as :func:`row_to_entry`, and anything unusual falls back to it, so errors
    read the same either way. Times are PostgreSQL's text form in a UTC session
    (``2026-11-24 12:00:00.5+00``) or, with ``text_times`` (SQLite keeps text), any text
    :func:`utc_timestamp` reads; each distinct text is converted once. The names a day repeats
    (account, counterparty, currency) are interned, so a million entries share a few hundred strings
    rather than holding three million (a fifth of an entry's memory).
    """
    idx = {c: i for i, c in enumerate(columns)}
    i_id, i_acct, i_amt = idx[m.id], idx[m.account], idx[m.amount]
    i_cp = idx.get(m.counterparty) if m.counterparty else None
    i_ccy = idx.get(m.currency) if m.currency else None
    i_side = idx.get(m.side) if m.side else None
    i_ref = idx.get(m.reference) if m.reference else None
    i_txn = idx.get(m.transaction_id) if m.transaction_id else None
    i_ts = idx.get(m.posted_at) if m.posted_at else None
    # a value on both lists is a debit, as row_to_entry reads it
    sides = {**{v: "credit" for v in m.credit_values}, **{v: "debit" for v in m.debit_values}}
    prefix = f"{ledger}:"
    fixed_currency, fixed_direction = m.currency_value, m.direction_value
    intern = sys.intern
    booked_of: dict[str, str | None] = {}  # time text -> canonical UTC text, None: not read here

    def slow(row):
        return row_to_entry(dict(zip(columns, row)), m, ledger, kind)

    if m.extra or i_ts is None:
        return slow

    def booked_at(ts: str) -> str | None:
        """The canonical UTC time of a time text; None for anything row_to_entry must read or refuse."""
        booked = None
        if text_times:
            try:
                booked = utc_timestamp(ts, f"{ledger} row")
            except EntryError:
                pass  # refused by row_to_entry, with the row's id
        elif (form := _PG_UTC_TEXT.match(ts)) is not None:
            try:
                datetime.fromisoformat(ts[:19])  # on the calendar, hours to seconds in range
            except ValueError:
                pass
            else:
                frac = (form.group(1) or "").rstrip("0")
                booked = f"{ts[:10]}T{ts[11:19]}{frac if frac != '.' else ''}Z"
        if len(booked_of) >= 200_000:  # a day of distinct seconds, twice over
            booked_of.clear()
        booked_of[ts] = booked
        return booked

    def to_entry(row: tuple) -> CanonicalEntry:
        amount, ts, account = row[i_amt], row[i_ts], row[i_acct]
        if type(amount) is str and amount_is_canonical(amount):
            text = amount
        elif type(amount) is Decimal and amount.is_finite() and amount >= 0:
            text = f"{amount:f}"
        else:
            return slow(row)
        if type(ts) is not str:
            return slow(row)
        booked = booked_of.get(ts, False)
        if booked is False:
            booked = booked_at(ts)
        if booked is None:
            return slow(row)
        if i_side is not None:
            direction = sides.get(row[i_side])
            if direction is None:
                return slow(row)
        else:
            direction = fixed_direction
        currency = fixed_currency or (row[i_ccy] if i_ccy is not None else None)
        rid = row[i_id]
        ref = row[i_ref] if i_ref is not None else None
        cp = row[i_cp] if i_cp is not None else None
        # names are text of at most 512 characters here, amounts of at most 81 integer digits; anything
        # else (a number, an empty or long name, a long amount) is row_to_entry's to read or to refuse
        if (type(account) is not str or not 0 < len(account) <= 512 or type(currency) is not str
                or not 0 < len(currency) <= 512 or (cp is not None and type(cp) is not str)
                or (ref is not None and type(ref) is not str)
                or not (type(rid) is int or (type(rid) is str and rid)) or len(text) > 97
                or (text.find(".") if "." in text else len(text)) > 81):
            return slow(row)
        txn = row[i_txn] if i_txn is not None else None
        source_ref = str(rid)
        if len(prefix) + len(source_ref) > 512:
            return slow(row)
        return CanonicalEntry(
            schema_version=1, entry_id=prefix + source_ref, ledger=ledger, ledger_kind=kind, source_ref=source_ref,
            correlation_id=ref or None, account=intern(account), counterparty=intern(cp) if cp else None,
            asset=intern(currency), amount=text, direction=direction, booked_at=booked, value_date=None,
            status="booked", position={"row_id": rid},
            attributes={"transaction_id": str(txn)} if txn is not None else {},
        )

    return to_entry
