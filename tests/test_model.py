from decimal import Decimal

import msgspec
import pytest

from ledger_pipelines.generate import synthetic_entries
from ledger_pipelines.model import (
    CanonicalEntry,
    EntryError,
    decode_entry,
    decode_wire,
    encode_entry,
    format_amount,
    make_entry,
)

UINT256_MAX = 2**256 - 1


def _entry(**over):
    base = dict(ledger="eth_usdc", ledger_kind="evm", source_ref="0xabc:3", account="0x" + "a" * 40,
                counterparty="0x" + "b" * 40, asset="USDC", amount="1234.50", direction="debit",
                booked_at="2026-11-24T10:15:00Z", status="final", position={"block_number": 1})
    base.update(over)
    return make_entry(**base)


def test_round_trip_is_canonical_and_exact():
    e = _entry(amount=str(UINT256_MAX), asset="erc20:0x" + "c" * 40)
    data = encode_entry(e)
    back = decode_entry(data)
    assert back == e
    assert back.amount_decimal == Decimal(UINT256_MAX)
    assert int(back.amount) == UINT256_MAX  # beyond 2**64 and exact
    assert encode_entry(back) == data
    assert list(msgspec.json.decode(data)) == sorted(msgspec.json.decode(data))
    assert e.entry_id == "eth_usdc:0xabc:3"


def test_wire_decoding_agrees_with_full_decoding():
    for e in synthetic_entries(count=50):
        data = encode_entry(e)
        w = decode_wire(data)
        assert (w.entry_id, w.amount, w.booked_at, w.status) == (e.entry_id, e.amount, e.booked_at, e.status)
        assert msgspec.json.decode(bytes(w.attributes)) == e.attributes


def test_entries_are_immutable():
    e = _entry()
    with pytest.raises(AttributeError):
        e.amount = "1"


@pytest.mark.parametrize(
    "mutate, reason",
    [
        (lambda d: d.update(amount=12.5), "amount"),
        (lambda d: d.update(amount="-1.00"), "amount"),
        (lambda d: d.update(amount="1e400"), "amount"),
        (lambda d: d.update(amount="NaN"), "amount"),
        (lambda d: d.update(amount="01.5"), "amount"),
        (lambda d: d.update(amount="1" * 120), "amount"),
        (lambda d: d.update(schema_version=2), "schema_version"),
        (lambda d: d.pop("account"), "account"),
        (lambda d: d.update(direction="sideways"), "direction"),
        (lambda d: d.update(status="lost"), "status"),
        (lambda d: d.update(booked_at="2026-11-24 10:15:00"), "booked_at"),
        (lambda d: d.update(booked_at="2026-13-45T10:15:00Z"), "booked_at"),
        (lambda d: d.update(booked_at="2026-11-24T10:15:00+02:00"), "booked_at"),
        (lambda d: d.update(entry_id="other:1"), "entry_id"),
        (lambda d: d.update(ledger="Bad Name"), "ledger"),
    ],
)
def test_invalid_entries_name_the_field(mutate, reason):
    d = msgspec.to_builtins(_entry())
    mutate(d)
    with pytest.raises(EntryError) as exc:
        decode_entry(msgspec.json.encode(d))
    assert reason in str(exc.value)


def test_not_json():
    with pytest.raises(EntryError, match="not valid JSON"):
        decode_entry(b"\x00garbage")


def test_format_amount_refuses_floats_and_keeps_scale():
    assert format_amount(Decimal("1234.50")) == "1234.50"
    assert format_amount(UINT256_MAX) == str(UINT256_MAX)
    assert format_amount("0.000000000000000001") == "0.000000000000000001"
    assert format_amount(Decimal("1E+3")) == "1000"
    for bad in (1.5, -1, Decimal("NaN"), Decimal("-0.01"), "abc", True):
        with pytest.raises(EntryError):
            format_amount(bad)


def test_struct_is_a_msgspec_struct():
    assert issubclass(CanonicalEntry, msgspec.Struct)


def test_amount_arithmetic_is_exact_beyond_28_digits():
    """uint256 values at 18 decimals, summed and scaled, in the main thread and in a new one, while the
    process's default decimal context stays Python's own (28 digits: importing the package changes
    nothing, and the same sum in that context would be rounded)."""
    import decimal
    import threading
    from decimal import Decimal

    import ledger_pipelines  # noqa: F401
    from ledger_pipelines.model import scaled_decimal
    from ledger_pipelines.money import total, totals_by_asset

    assert decimal.getcontext().prec == 28 and decimal.DefaultContext.prec == 28
    big = 2**256 - 1
    assert str(scaled_decimal(big, 18)) == f"{big // 10**18}.{big % 10**18:018d}"
    a = _entry(amount=f"{big // 10**18}.{big % 10**18:018d}")
    b = _entry(amount="0.000000000000000001", source_ref="0xabc:4")
    exact_sum = f"{big // 10**18}.{big % 10**18 + 1:018d}"
    want = {a.asset: {"debit": exact_sum, "credit": "0"}}
    out = {}
    t = threading.Thread(target=lambda: out.update(totals_by_asset([a, b])))
    t.start()
    t.join()
    assert totals_by_asset([a, b]) == want and out == want
    assert f"{total([a.amount, b.amount]):f}" == exact_sum
    assert Decimal(a.amount) + Decimal(b.amount) != Decimal(exact_sum)  # the default context rounds


def test_remembered_timestamps_and_dates_do_not_let_invalid_ones_through():
    """Valid booked_at / value_date strings are remembered; a string is only remembered once it passed
    both the pattern and the calendar, so an impossible date is refused every time, also after a
    valid one of the same shape and after the memo was emptied at its bound."""
    from ledger_pipelines import model

    ok = msgspec.to_builtins(_entry(value_date="2026-11-24"))
    for _ in range(2):
        assert decode_entry(msgspec.json.encode(ok)).booked_at == "2026-11-24T10:15:00Z"
    assert "2026-11-24T10:15:00Z" in model._VALID_TIMES and "2026-11-24" in model._VALID_DATES
    for field, bad in (("booked_at", "2026-02-30T10:15:00Z"), ("value_date", "2026-02-30")):
        for _ in range(2):
            with pytest.raises(EntryError, match=field):
                decode_entry(msgspec.json.encode({**ok, field: bad}))
    assert "2026-02-30T10:15:00Z" not in model._VALID_TIMES and "2026-02-30" not in model._VALID_DATES
    model._VALID_TIMES.update(f"x{i}" for i in range(100_000))  # at the bound: emptied, then the new one
    decode_entry(msgspec.json.encode({**ok, "booked_at": "2026-11-24T10:15:01Z"}))
    assert model._VALID_TIMES == {"2026-11-24T10:15:01Z"}


def test_amounts_are_bounded_before_they_are_written_out():
    for bad in (Decimal("1E+999999999"), Decimal("1E-999999999"), 10**97, "1e400"):
        with pytest.raises(EntryError, match="amount"):
            format_amount(bad)
    assert format_amount(Decimal("1E+5")) == "100000" and format_amount(10**95) == str(10**95)


def test_an_entry_id_longer_than_the_event_log_accepts_is_refused_when_built():
    with pytest.raises(EntryError, match="entry_id"):
        _entry(source_ref="x" * 512)
    assert len(_entry(source_ref="x" * 500).entry_id) <= 512


def test_timestamps_of_early_years_keep_four_digits_and_late_offsets_are_refused():
    from datetime import datetime, timedelta, timezone

    from ledger_pipelines.model import format_timestamp, utc_from_epoch

    assert format_timestamp(datetime(999, 1, 2, tzinfo=timezone.utc)) == "0999-01-02T00:00:00Z"
    with pytest.raises(EntryError, match="outside the years"):
        format_timestamp(datetime(9999, 12, 31, 23, tzinfo=timezone(timedelta(hours=-5))))
    assert utc_from_epoch(253_402_300_799) == "9999-12-31T23:59:59Z"
    for bad in (253_402_300_800, -1, 1.5, True, "1"):
        with pytest.raises(EntryError):
            utc_from_epoch(bad)
