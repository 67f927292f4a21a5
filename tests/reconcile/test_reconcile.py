"""Reconciliation engine: every break type injected and found, exact FX, and the invariants."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger_pipelines.commitment import canonical, records_root
from ledger_pipelines.model import encode_entry, make_entry
from ledger_pipelines.reconcile import Rules, reconcile
from ledger_pipelines.reconcile.output import merkle_root

T0 = datetime(2026, 11, 24, 10, 0, tzinfo=timezone.utc)


def bank(ref, amount, corr=None, asset="EUR", at=T0, direction="debit", **attrs):
    return make_entry(ledger="core_banking", ledger_kind="sql", source_ref=ref, correlation_id=corr,
                      account="DE89370400440532013000", asset=asset, amount=amount, direction=direction,
                      booked_at=at, status="booked", attributes=attrs)


def chain(ref, amount, corr=None, asset="EUR", at=T0, status="final", direction="credit"):
    return make_entry(ledger="eth_usdc", ledger_kind="evm", source_ref=ref, correlation_id=corr,
                      account="0x" + "ab" * 20, asset=asset, amount=amount, direction=direction, booked_at=at,
                      status=status, position={"block_number": 7})


RULES = Rules.from_dict({"time_window": "2d", "fx": [{"from": "EUR", "to": "USDC", "rate": "1.0842"}],
                         "amount_tolerance": {"relative": "0.001"}})


def scenario():
    left = [
        bank("1", "100.00", "E-EXACT"),
        bank("2", "10.00", "E-MISSING-RIGHT"),
        bank("4", "50.00", "E-AMOUNT"),
        bank("5", "10.00", "E-ASSET"),
        bank("6a", "20.00", "E-DUP-L"), bank("6b", "20.00", "E-DUP-L"),
        bank("8", "30.00", "E-TIMING", at=T0),
        bank("9", "60.00", "BATCH-1", details=[{"refs": {"EndToEndId": "B1"}}, {"refs": {"EndToEndId": "B2"}},
                                               {"refs": {"EndToEndId": "B3"}}]),
        bank("10a", "30.00", "E-M2O"), bank("10b", "70.00", "E-M2O-2", details=[]),
        bank("11", "100.00", "E-FX-OK"),
        bank("11x", "200.00", "E-FX-EXACT"),
        bank("12", "100.00", "E-FX-BAD"),
        bank("13", "77.70", None, at=T0),
        bank("14", "5.00", "E-DUP-R"),
    ]
    right = [
        chain("1", "100.00", "E-EXACT"),
        chain("3", "11.00", "E-MISSING-LEFT"),
        chain("4", "49.00", "E-AMOUNT"),
        chain("5", "10.00", "E-ASSET", asset="GBP"),
        chain("6", "20.00", "E-DUP-L"),
        chain("7", "1.00", "E-ORPHAN", status="orphaned"),
        chain("8", "30.00", "E-TIMING", at=T0 + timedelta(days=5)),
        chain("9a", "20.00", "B1"), chain("9b", "25.00", "B2"), chain("9c", "15.00", "B3"),
        chain("11", "108.430000000000000000", "E-FX-OK", asset="USDC"),  # 18-decimal token leg, 0.01 off
        chain("11x", "216.840000000000000000", "E-FX-EXACT", asset="USDC"),  # exactly 200.00 x 1.0842
        chain("12", "110.00", "E-FX-BAD", asset="USDC"),
        chain("13", "77.70", None, at=T0 + timedelta(hours=1)),
        chain("14a", "5.00", "E-DUP-R"), chain("14b", "5.00", "E-DUP-R"),
    ]
    # many-to-one: two left legs under one reference against one right leg
    left[9] = bank("10b", "70.00", "E-M2O")
    right.append(chain("10", "100.00", "E-M2O"))
    return left, right


def test_every_injected_break_is_found_with_its_type():
    left, right = scenario()
    r = reconcile(left, right, RULES)
    by_corr = {}
    for rec in r.matches:
        by_corr.setdefault(rec["correlation_id"], []).append(rec["match_type"])
    for rec in r.breaks:
        by_corr.setdefault(rec["correlation_id"], []).append(rec["break_type"])
    assert by_corr["E-EXACT"] == ["exact"]
    assert by_corr["E-MISSING-RIGHT"] == ["missing_right"]
    assert by_corr["E-MISSING-LEFT"] == ["missing_left"]
    assert by_corr["E-AMOUNT"] == ["amount_mismatch"]
    assert by_corr["E-ASSET"] == ["asset_mismatch"]
    assert sorted(by_corr["E-DUP-L"]) == ["duplicate_left", "exact"]
    assert sorted(by_corr["E-DUP-R"]) == ["duplicate_right", "exact"]
    assert by_corr["E-ORPHAN"] == ["orphaned"]
    assert by_corr["E-TIMING"] == ["timing"]
    assert by_corr["BATCH-1"] == ["one_to_many"]
    assert by_corr["E-M2O"] == ["many_to_one"]
    assert by_corr["E-FX-OK"] == ["tolerant"]
    assert by_corr["E-FX-EXACT"] == ["exact"]  # converted at the rate, exactly equal
    assert by_corr["E-FX-BAD"] == ["amount_mismatch"]
    assert by_corr[None] == ["tolerant"]  # no reference: matched by amount and time
    asset = next(b for b in r.breaks if b["correlation_id"] == "E-ASSET")
    assert asset["asset"] == "EUR/GBP" and asset["difference"] is None
    amount = next(b for b in r.breaks if b["correlation_id"] == "E-AMOUNT")
    assert (amount["left_amount"], amount["right_amount"], amount["difference"]) == ("50.00", "49.00", "-1.00")


def test_fx_between_18_decimal_tokens_and_2_decimal_fiat_is_exact():
    rules = Rules.from_dict({"fx": [{"from": "EUR", "to": "USDC", "rate": "1.0842"}]})  # zero tolerance
    left = [bank("1", "100.00", "FX")]
    ok = reconcile(left, [chain("1", "108.420000000000000000", "FX", asset="USDC")], rules)
    # zero tolerance: exactly equal after conversion is an exact match (through the rate)
    assert [(m["match_type"], m["rule"]) for m in ok.matches] == [("exact", "key:correlation_id+fx")]
    assert not ok.breaks
    off_by_one_wei = reconcile(left, [chain("1", "108.420000000000000001", "FX", asset="USDC")], rules)
    (b,) = off_by_one_wei.breaks
    assert b["break_type"] == "amount_mismatch"
    assert (b["left_amount"], b["right_amount"], b["difference"]) == (
        "108.420000", "108.420000000000000001", "0.000000000000000001")


def _ids(records, key):
    return [i for rec in records for i in rec[key]]


def _check_invariants(left, right, r):
    lids = _ids(r.matches, "left_entry_ids") + _ids(r.breaks, "left_entry_ids")
    rids = _ids(r.matches, "right_entry_ids") + _ids(r.breaks, "right_entry_ids")
    assert Counter(lids) == Counter(e.entry_id for e in left)  # every entry in exactly one record
    assert Counter(rids) == Counter(e.entry_id for e in right)


def test_scenario_invariants_and_deterministic_merkle_root():
    left, right = scenario()
    a, b = reconcile(left, right, RULES), reconcile(list(reversed(left)), list(reversed(right)), RULES)
    _check_invariants(left, right, a)
    assert merkle_root(a) == merkle_root(b)


amounts = st.decimals(min_value=Decimal("0.01"), max_value=Decimal("100000"), places=2)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(["K1", "K2", "K3", None]), amounts, st.sampled_from(["EUR", "USD"]),
                       st.integers(0, 72)), max_size=12),
    st.lists(st.tuples(st.sampled_from(["K1", "K2", "K4", None]), amounts, st.sampled_from(["EUR", "USD", "USDC"]),
                       st.integers(0, 72), st.booleans()), max_size=12),
)
def test_property_every_entry_once_and_totals_preserved(lspec, rspec):
    left = [bank(f"l{i}", a, k, asset=c, at=T0 + timedelta(hours=h)) for i, (k, a, c, h) in enumerate(lspec)]
    right = [chain(f"r{i}", a, k, asset=c, at=T0 + timedelta(hours=h), status="orphaned" if o else "final")
             for i, (k, a, c, h, o) in enumerate(rspec)]
    r = reconcile(left, right, RULES)
    _check_invariants(left, right, r)
    shuffled = reconcile(list(reversed(left)), list(reversed(right)), RULES)
    assert merkle_root(shuffled) == merkle_root(r)
    # per-asset totals of the entries in the records equal the input totals, to the cent
    by_id = {("L", e.entry_id): e for e in left} | {("R", e.entry_id): e for e in right}
    seen: dict[tuple[str, str], Decimal] = {}
    for rec in r.matches + r.breaks:
        for side, key in (("L", "left_entry_ids"), ("R", "right_entry_ids")):
            for i in rec[key]:
                e = by_id[(side, i)]
                seen[(side, e.asset)] = seen.get((side, e.asset), Decimal(0)) + Decimal(e.amount)
    expected: dict[tuple[str, str], Decimal] = {}
    for side, es in (("L", left), ("R", right)):
        for e in es:
            expected[(side, e.asset)] = expected.get((side, e.asset), Decimal(0)) + Decimal(e.amount)
    assert seen == expected


def test_reconcile_command_on_files_without_services(tmp_path):
    left, right = scenario()
    (tmp_path / "l.jsonl").write_bytes(b"".join(encode_entry(e) + b"\n" for e in left))
    (tmp_path / "r.jsonl").write_bytes(b"".join(encode_entry(e) + b"\n" for e in right))
    (tmp_path / "rules.yaml").write_text(json.dumps(RULES.source))
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, "-m", "ledger_pipelines.cli", "reconcile", "--left", str(tmp_path / "l.jsonl"),
                          "--right", str(tmp_path / "r.jsonl"), "--rules", str(tmp_path / "rules.yaml"),
                          "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["break_type"]["timing"] == 1 and summary["match_type"]["one_to_many"] == 1
    assert summary["input_rows"] == {"left": len(left), "right": len(right)}
    matches = [json.loads(x) for x in (out / "matches.jsonl").read_text().splitlines()]
    breaks = [json.loads(x) for x in (out / "breaks.jsonl").read_text().splitlines()]
    assert len(matches) == summary["matches"] and len(breaks) == summary["breaks"]
    assert summary["merkle_root"] == records_root(None, None, [canonical(m) for m in matches],
                                                  [canonical(b) for b in breaks])
    report = (out / "report.html").read_text()
    assert "<svg" in report and "http" not in report.replace("http://www.w3.org/2000/svg", "")


def test_multi_ledger_view_names_missing_legs_and_drift():
    from ledger_pipelines.audit import payment_legs

    beneficiary = lambda ref, amount, corr: make_entry(  # noqa: E731
        ledger="bank_statements", ledger_kind="iso20022", source_ref=ref, correlation_id=corr, account="CH93",
        asset="EUR", amount=amount, direction="credit", booked_at=T0, status="booked")
    views = {v["correlation_id"]: v for v in payment_legs({
        "core_banking": [bank("1", "100.00", "P1"), bank("2", "50.00", "P2"), bank("3", "70.00", "P3")],
        "eth_usdc": [chain("1", "108.42", "P1", asset="USDC"), chain("3", "108.42", "P3", asset="USDC")],
        "bank_statements": [beneficiary("1", "100.00", "P1"), beneficiary("3", "69.50", "P3")],
    })}
    assert views["P1"]["status"] == "complete" and not views["P1"]["drifting"]
    assert views["P2"]["status"] == "missing_leg"
    assert views["P2"]["missing_ledgers"] == ["bank_statements", "eth_usdc"]
    assert views["P3"]["drifting"] and {r["ledger"]: r["drift"] for r in views["P3"]["legs"]} == {
        "bank_statements": "-0.50", "core_banking": "0.00", "eth_usdc": None}


def test_a_batch_on_the_right_is_matched_to_its_members_on_the_left():
    """A batch credit on the right (its members' ids under batch_members) against the single legs on
    the left: many_to_one when the sum agrees, amount_mismatch naming both sums when it does not."""
    members = [{"refs": {"EndToEndId": f"P{i}"}} for i in (1, 2, 3)]
    batch = make_entry(ledger="eth_usdc", ledger_kind="evm", source_ref="batch", correlation_id="SETTLE-1",
                       account="0x" + "ab" * 20, asset="EUR", amount="60.00", direction="credit", booked_at=T0,
                       status="final", attributes={"details": members})
    left = [bank("p1", "10.00", "P1"), bank("p2", "20.00", "P2"), bank("p3", "30.00", "P3")]
    r = reconcile(left, [batch], RULES)
    assert [(m["match_type"], m["left_entry_ids"], m["right_entry_ids"]) for m in r.matches] == [
        ("many_to_one", tuple(sorted(e.entry_id for e in left)), (batch.entry_id,))]
    assert not r.breaks
    short = reconcile(left[:2] + [bank("p3", "29.00", "P3")], [batch], RULES)
    (b,) = short.breaks
    assert (b["break_type"], b["left_amount"], b["right_amount"]) == ("amount_mismatch", "59.00", "60.00")
    assert not short.matches


def test_uint256_amounts_beyond_decimal38_are_exact():
    """Amounts no DECIMAL(38) holds: equal ones match exactly, one wei apart is a mismatch of one wei."""
    top = 2**256 - 1
    wei = lambda n: f"{n // 10**18}.{n % 10**18:018d}"  # noqa: E731
    left = [bank("1", wei(top), "U1", asset="WETH"), bank("2", wei(top), "U2", asset="WETH")]
    right = [chain("1", wei(top), "U1", asset="WETH"), chain("2", wei(top - 1), "U2", asset="WETH")]
    r = reconcile(left, right, Rules())
    assert [m["match_type"] for m in r.matches] == ["exact"]
    (b,) = r.breaks
    assert (b["break_type"], b["left_amount"], b["difference"]) == ("amount_mismatch", wei(top), "-0.000000000000000001")


def test_fx_rate_applies_in_both_directions():
    """A rate given EUR->USDC also compares a USDC left leg with a EUR right one: the EUR amount times the
    rate, in USDC. Never through the inverse rate, which has no finite decimal in general (at 3, 3 USDC
    times 1/3 to 200 digits is 0.999…, not 1 EUR)."""
    rules = Rules.from_dict({"fx": [{"from": "EUR", "to": "USDC", "rate": "0.5"}]})
    r = reconcile([bank("1", "10.00", "X", asset="USDC")], [chain("1", "20.00", "X", asset="EUR")], rules)
    assert [(m["match_type"], m["rule"]) for m in r.matches] == [("exact", "key:correlation_id+fx")]
    off = reconcile([bank("1", "10.00", "X", asset="USDC")], [chain("1", "20.01", "X", asset="EUR")], rules)
    assert [(b["break_type"], b["asset"], b["left_amount"], b["right_amount"], b["difference"]) for b in off.breaks] \
        == [("amount_mismatch", "USDC", "10.00", "10.005", "0.005")]
    thirds = Rules.from_dict({"fx": [{"from": "EUR", "to": "USDC", "rate": "3"}]})
    r = reconcile([bank("1", "3.00", "X", asset="USDC")], [chain("1", "1.00", "X", asset="EUR")], thirds)
    assert [(m["match_type"], m["rule"]) for m in r.matches] == [("exact", "key:correlation_id+fx")] and not r.breaks
    # a batch whose parts are in the rate's target asset: the whole converted, the parts summed as they are
    whole = bank("1", "1.00", "B", asset="EUR", details=[{"refs": {"EndToEndId": f"E2E-{i}"}} for i in (1, 2)])
    parts = [chain("p1", "1.00", "E2E-1", asset="USDC"), chain("p2", "2.00", "E2E-2", asset="USDC")]
    r = reconcile([whole], parts, thirds)
    assert [m["match_type"] for m in r.matches] == ["one_to_many"] and not r.breaks, r.breaks
    # and the other way round: the left leg unconverted against the right one times the rate, in leftovers too
    unkeyed = reconcile([bank("1", "3.00", None, asset="USDC")], [chain("1", "1.00", None, asset="EUR")], thirds)
    assert [(m["match_type"], m["rule"]) for m in unkeyed.matches] == [("tolerant", "tolerant:amount+time")]


def test_a_batch_keeps_the_direction_rule_and_the_window():
    """A batch's parts are held to what a pair is: parts in the wrong direction are an amount mismatch, a
    part booked outside the window a timing break, never a one_to_many match."""
    members = [{"refs": {"EndToEndId": f"M{i}"}} for i in (1, 2)]
    whole = bank("w", "100.00", "B", details=members)
    crossed = [chain("1", "50.00", "M1"), chain("2", "50.00", "M2", direction="debit")]
    (b,) = reconcile([whole], crossed, RULES).breaks
    assert b["break_type"] == "amount_mismatch" and "direction debit against debit" in b["reason"], b
    later = [chain("1", "50.00", "M1"), chain("2", "50.00", "M2", at=T0 + timedelta(days=20))]
    (b,) = reconcile([whole], later, RULES).breaks
    assert b["break_type"] == "timing" and "window 172800s" in b["reason"], b
    on_time = [chain("1", "50.00", "M1"), chain("2", "50.00", "M2", at=T0 + timedelta(hours=5))]
    r = reconcile([whole], on_time, RULES)
    assert [m["match_type"] for m in r.matches] == ["one_to_many"] and not r.breaks


def test_legs_under_one_key_pair_by_direction_then_time():
    """A debit and a credit of 100 on the left, two debits and a credit on the right, under one key: each
    left leg takes the right leg in the expected direction (opposite), the nearest in time."""
    rules = Rules.from_dict({"time_window": "2d", "direction": "opposite", "duplicate_key": ["entry_id"]})
    left = [bank("c", "100.00", "K", direction="credit"), bank("d", "100.00", "K", direction="debit")]
    right = [chain("c", "100.00", "K", direction="credit"), chain("d", "100.00", "K", direction="debit",
                                                                 at=T0 + timedelta(hours=1)),
             chain("d2", "100.00", "K", direction="debit")]
    r = reconcile(left, right, rules)
    pairs = sorted((m["left_entry_ids"][0], m["right_entry_ids"][0]) for m in r.matches)
    assert pairs == [("core_banking:c", "eth_usdc:d2"), ("core_banking:d", "eth_usdc:c")], (pairs, r.breaks)
    assert [(b["break_type"], b["right_entry_ids"]) for b in r.breaks] == [("missing_left", ["eth_usdc:d"])]
