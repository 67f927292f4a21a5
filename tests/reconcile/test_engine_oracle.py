"""The product engine against the reference oracle (tests/oracle/row_engine.py): the same records, ids
and order on random scenarios with every rule."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from oracle.row_engine import reconcile as oracle

from ledger_pipelines.model import make_entry
from ledger_pipelines.reconcile import Rules, reconcile

T0 = datetime(2026, 11, 24, 10, 0, tzinfo=timezone.utc)
BATCH = {"details": [{"refs": {"EndToEndId": "B1"}}, {"refs": {"EndToEndId": "B2"}}]}
UINT256_MAX = 2**256 - 1


def leg(side, i, key, amount, asset, minutes, direction, flag):
    # a flagged leg is a batch over B1 and B2 on either side; on the right every third one is orphaned
    return make_entry(ledger="core_banking" if side == "L" else "eth_usdc", ledger_kind="sql" if side == "L" else "evm",
                      source_ref=f"{side.lower()}{i}", correlation_id=key, account="A1", asset=asset, amount=amount,
                      direction=direction, booked_at=T0 + timedelta(minutes=30 * minutes),
                      status="orphaned" if side == "R" and flag and i % 3 == 0 else
                      ("booked" if side == "L" else "final"),
                      position={"block_number": 7}, attributes=BATCH if flag else {})


# amounts inside and just outside every tolerance, across the rates, in other scales, and uint256 values
# (raw wei and at 18 decimals) that no DECIMAL(38) holds
_near = st.sampled_from([
    "100.00", "100.00", "100.0", "100.01", "99.99", "100.05", "99.90", "108.42", "108.43", "92.23", "0.01",
    "100", "50.00", "200.00", str(UINT256_MAX), str(UINT256_MAX - 1),
    "115792089237316195423570985008687907853269984665640564039457.584007913129639935",
    "115792089237316195423570985008687907853269984665640564039457.584007913129639934",
    "12345678901234567890123.000000000000000001", "12345678901234567890123"])
_rule_sets = st.fixed_dictionaries({
    "time_window": st.sampled_from(["0s", "30m", "1h", "2h", "1d"]),
    "direction": st.sampled_from(["opposite", "same", "any"]),
    # a band wider than every amount (1000000, relative 0.5): leftovers searched by time, not by amount
    "amount_tolerance": st.fixed_dictionaries({"absolute": st.sampled_from(["0", "0.01", "0.01", "0.05", "1", "1000000"]),
                                               "relative": st.sampled_from(["0", "0.0005", "0.001", "0.01", "0.5"])}),
    "fx": st.sampled_from([[], [{"from": "EUR", "to": "USDC", "rate": "1.0842"}],
                           [{"from": "USDC", "to": "EUR", "rate": "0.9223"}, {"from": "USD", "to": "EUR", "rate": "1"}],
                           [{"from": "EUR", "to": "USD", "rate": "0.5"}, {"from": "USDC", "to": "USD", "rate": "12"}]]),
    "tolerant_matching": st.sampled_from([True, True, True, False]),
    "duplicate_key": st.sampled_from([["correlation_id", "asset", "amount", "direction"], ["amount", "asset"]]),
    "batch_members": st.sampled_from(["attributes.details[].refs.EndToEndId", None]),
})
_legs = st.lists(st.tuples(st.sampled_from(["K1", "K2", "K3", "B1", "B2", None, None, None, ""]), _near,
                           st.sampled_from(["EUR", "EUR", "USD", "USDC"]), st.integers(0, 4),
                           st.sampled_from(["debit", "credit"]), st.booleans()), max_size=14)


def _plain(matches):
    """The engine's match records as the JSON objects they are written as (the oracle's form)."""
    import msgspec

    return msgspec.json.decode(msgspec.json.encode(matches))


def _placed_once(left, right, r):
    ids = Counter((side, i) for rec in r.matches + r.breaks
                  for side, k in (("L", "left_entry_ids"), ("R", "right_entry_ids")) for i in rec[k])
    assert ids == Counter([("L", e.entry_id) for e in left] + [("R", e.entry_id) for e in right])


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_rule_sets, _legs, _legs)
def test_engine_gives_the_oracles_records(rule_doc, lspec, rspec):
    """Tolerances, windows (equal gaps on both sides of an entry included), direction rules, FX both
    ways of a rate, duplicates, orphaned legs, batches on either side, n:m keys, unkeyed leftovers and
    uint256 amounts: the same records (ids, types, amounts, reasons) in the same order."""
    rules = Rules.from_dict(rule_doc)
    left = [leg("L", i, *spec) for i, spec in enumerate(lspec)]
    right = [leg("R", i, *spec) for i, spec in enumerate(rspec)]
    got = reconcile(left, right, rules)
    want = oracle(left, right, rules)
    assert _plain(got.matches) == want.matches
    assert got.breaks == want.breaks
    _placed_once(left, right, got)


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 40), st.integers(0, 2**32), st.sampled_from(["EUR", "USDC"]))
def test_many_keyed_pairs_take_the_set_path_and_agree(n, seed, asset):
    """Larger keyed sets (the SQL classification of 1:1 pairs): right amounts a few cents either side
    of the left one or of its conversion (inside and outside both tolerances), times either side of
    the window's edge, both directions."""
    import random

    rng = random.Random(seed)
    rules = Rules.from_dict({"time_window": "1h", "amount_tolerance": {"absolute": "0.03", "relative": "0.0001"},
                             "fx": [{"from": "EUR", "to": "USDC", "rate": "1.0842"}]})
    left, right = [], []
    for i in range(n):
        cents = rng.randrange(1, 10**6)
        amt = Decimal(cents).scaleb(-2)
        base = amt * Decimal("1.0842") if asset == "USDC" and rng.random() < 0.8 else amt
        ra = base + Decimal(rng.randrange(-12, 13)).scaleb(-2) + rng.choice([0, 0, Decimal("0.000001")])
        left.append(leg("L", i, f"C{i}", f"{amt:f}", "EUR", 2, "debit", False))
        right.append(leg("R", i + 1, f"C{i}" if rng.random() < 0.9 else None, f"{abs(ra):f}", asset,
                         rng.choice([0, 1, 2, 3, 4]), rng.choice(["credit", "credit", "debit"]), False))
    got, want = reconcile(left, right, rules), oracle(left, right, rules)
    assert (_plain(got.matches), got.breaks) == (want.matches, want.breaks)
    assert {m["match_type"] for m in got.matches} <= {"exact", "tolerant"}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(["same", "same", "amount", "time", "status", "orphaned", "left only",
                                           "right only"]), _near, st.sampled_from(["", "P1", None])),
                max_size=20),
       st.sampled_from(["same", "any"]))
def test_the_bridge_check_of_unchanged_entries_gives_the_oracles_records(spec, direction):
    """Rules keyed on entry_id with entry_id as duplicate key (the bridge check, where most entries are
    delivered unchanged and are matched by comparing them whole): entries equal on both sides, changed in
    one field, orphaned, on one side only, with uint256 amounts and empty correlation ids."""
    import msgspec

    rules = Rules.from_dict({"key": "entry_id", "duplicate_key": ["entry_id"], "direction": direction,
                             "time_window": "31d", "tolerant_matching": False, "batch_members": None})
    left, right = [], []
    for i, (change, amount, corr) in enumerate(spec):
        e = make_entry(ledger="core_banking", ledger_kind="sql", source_ref=f"r{i}", correlation_id=corr,
                       account="A1", asset="EUR", amount=amount, direction="debit", booked_at=T0,
                       status="orphaned" if change == "orphaned" else "booked", position={"id": i}, attributes={})
        other = {"amount": msgspec.structs.replace(e, amount=amount + "1" if "." in amount else amount + ".5"),
                 "time": msgspec.structs.replace(e, booked_at="2026-11-24T10:00:01Z"),
                 "status": msgspec.structs.replace(e, status="reversed")}.get(change, e)
        if change != "right only":
            left.append(e)
        if change != "left only":
            right.append(other)
    got, want = reconcile(left, right, rules), oracle(left, right, rules)
    assert (_plain(got.matches), got.breaks) == (want.matches, want.breaks)
    _placed_once(left, right, got)


@pytest.mark.parametrize("tolerance", ["0.01", "1000000"])
def test_many_leftovers_searched_by_amount_or_by_time_agree_with_the_oracle(tolerance):
    """Hundreds of unkeyed legs a side, their times spread over days: with a narrow band each left leg looks
    at the few amounts inside it, with a band wider than every amount at the few legs inside its window;
    either way the records are the oracle's (nearest in time within tolerance, ties by id)."""
    import random

    rnd = random.Random(7)
    rules = Rules.from_dict({"time_window": "2h", "amount_tolerance": {"absolute": tolerance},
                             "fx": [{"from": "EUR", "to": "USDC", "rate": "1.0842"}]})

    def side(s, n):
        return [make_entry(ledger="core_banking" if s == "L" else "eth_usdc", ledger_kind="sql", source_ref=f"{s}{i}",
                           correlation_id=None, account="A1", asset=rnd.choice(["EUR", "USDC"]),
                           amount=f"{rnd.randrange(1, 500)}.{rnd.randrange(100):02d}",
                           direction="debit" if s == "L" else "credit",
                           booked_at=T0 + timedelta(minutes=rnd.randrange(0, 6 * 24 * 60)), status="booked")
                for i in range(n)]

    left, right = side("L", 400), side("R", 400)
    mine, theirs = reconcile(left, right, rules), oracle(left, right, rules)
    _placed_once(left, right, mine)
    assert _plain(mine.matches) == theirs.matches and mine.breaks == theirs.breaks
    assert any(m.rule == "tolerant:amount+time" for m in mine.matches)
