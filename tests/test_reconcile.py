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
    assert merkle_root(a.matches + a.breaks) == merkle_root(b.matches + b.breaks)


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
    assert merkle_root(shuffled.matches + shuffled.breaks) == merkle_root(r.matches + r.breaks)
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
    assert summary["merkle_root"] == merkle_root(matches + breaks)
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


def _arrow(entries):
    import pyarrow as pa

    cols = ("entry_id", "correlation_id", "asset", "amount", "direction", "booked_at", "status")
    return pa.table({c: [getattr(e, c) for e in entries] for c in cols})


def _fates(matches, breaks):
    out = {}
    for rec in matches + breaks:
        kind = rec.get("match_type") or rec.get("break_type")
        for side in ("left", "right"):
            for i in rec[f"{side}_entry_ids"]:
                assert (side, i) not in out, f"{i} in two records"
                out[(side, i)] = kind
    return out


def test_columnar_engine_agrees_with_the_row_engine():
    """The Arrow/DuckDB engine (for millions of rows) classifies every entry as the row engine does, on
    random scenarios with every break type it handles (no FX, no batches: those stay in the row engine)."""
    import random

    from ledger_pipelines.reconcile.columnar import reconcile_arrow

    rules = Rules.from_dict({"time_window": "1d", "amount_tolerance": {"absolute": "0.05"}, "batch_members": None})
    for seed in range(12):
        rng = random.Random(seed)
        left, right = [], []
        for i in range(300):
            corr, amt = f"C{i}", f"{rng.randrange(100, 10**6)}.{rng.randrange(100):02d}"
            at = T0 + timedelta(minutes=rng.randrange(0, 2000))
            roll = rng.random()
            if roll < 0.04:
                left.append(bank(f"{i}", amt, corr, at=at))  # missing right
            elif roll < 0.08:
                right.append(chain(f"{i}", amt, corr, at=at))  # missing left
            elif roll < 0.12:
                left.append(bank(f"{i}", amt, corr, at=at))
                right.append(chain(f"{i}", f"{Decimal(amt) + 1:f}", corr, at=at))  # amount mismatch
            elif roll < 0.16:
                left.append(bank(f"{i}", amt, corr, at=at))
                right.append(chain(f"{i}", f"{Decimal(amt) + Decimal('0.03'):f}", corr, at=at))  # tolerant
            elif roll < 0.20:
                left.append(bank(f"{i}", amt, corr, at=at))
                right.append(chain(f"{i}", amt, corr, asset="GBP", at=at))  # asset mismatch
            elif roll < 0.24:
                left.append(bank(f"{i}", amt, corr, at=at))
                right.append(chain(f"{i}", amt, corr, at=at + timedelta(days=3)))  # timing
            elif roll < 0.28:
                left += [bank(f"{i}a", amt, corr, at=at), bank(f"{i}b", amt, corr, at=at + timedelta(hours=1))]
                right.append(chain(f"{i}", amt, corr, at=at))  # duplicate left + exact
            elif roll < 0.31:
                left.append(bank(f"{i}", amt, corr, at=at))
                right.append(chain(f"{i}", amt, corr, status="orphaned", at=at))  # orphaned + missing right
            elif roll < 0.36:
                left.append(bank(f"{i}", amt, None, at=at))
                right.append(chain(f"{i}", amt, None, at=at + timedelta(hours=2)))  # no key: tolerant leftover
            elif roll < 0.38:  # n:m under one key: handed to the row engine
                left += [bank(f"{i}a", amt, corr, at=at), bank(f"{i}b", "1.00", corr, at=at)]
                right += [chain(f"{i}a", amt, corr, at=at), chain(f"{i}b", "2.00", corr, at=at)]
            else:
                left.append(bank(f"{i}", amt, corr, at=at))
                right.append(chain(f"{i}", amt, corr, at=at + timedelta(minutes=5)))  # exact
        rng.shuffle(left)
        rng.shuffle(right)
        row = reconcile(left, right, rules)
        col = reconcile_arrow(_arrow(left), _arrow(right), rules)
        m, b = col.records()
        assert _fates(m, b) == _fates(row.matches, row.breaks), seed
        assert len(_fates(m, b)) == len(left) + len(right)
        ids_row = {r.get("match_id") or r.get("break_id") for r in row.matches + row.breaks
                   if len(r["left_entry_ids"]) + len(r["right_entry_ids"]) <= 2}
        ids_col = {r.get("match_id") or r.get("break_id") for r in m + b
                   if len(r["left_entry_ids"]) + len(r["right_entry_ids"]) <= 2}
        assert ids_col == ids_row  # the same record ids


def test_columnar_engine_refuses_floats_repeated_ids_and_fx():
    import pyarrow as pa

    from ledger_pipelines.reconcile.columnar import NotColumnar, reconcile_arrow

    left = [bank("1", "10.00", "A")]
    t = _arrow(left)
    floats = t.set_column(t.schema.get_field_index("amount"), "amount", pa.array([10.0]))
    with pytest.raises(ValueError, match="never floats"):
        reconcile_arrow(floats, _arrow([chain("1", "10.00", "A")]))
    with pytest.raises(ValueError, match="unique"):
        reconcile_arrow(_arrow(left + left), _arrow([chain("1", "10.00", "A")]))
    with pytest.raises(NotColumnar, match="FX"):
        reconcile_arrow(t, t, RULES)


def test_columnar_engine_leaves_the_callers_connection_as_it_was():
    """Work tables live in a database attached for the run and detached after it, also when the run
    fails (here: repeated ids on the right, found on the second cursor's thread)."""
    import duckdb

    from ledger_pipelines.reconcile.columnar import reconcile_arrow

    con = duckdb.connect()
    con.execute("CREATE TABLE mine AS SELECT 1 AS x")
    con.execute("SET threads = 1")

    def state():
        return (con.execute("SELECT current_database(), current_setting('threads')").fetchone(),
                sorted(r[0] for r in con.execute("SELECT database_name FROM duckdb_databases()").fetchall()),
                sorted(r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()),
                sorted(r[0] for r in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()))

    before = state()
    left, right = [bank("1", "10.00", "A")], [chain("1", "10.00", "A")]
    first = reconcile_arrow(_arrow(left), _arrow(right), con=con).records()
    assert state() == before
    with pytest.raises(ValueError, match="unique"):
        reconcile_arrow(_arrow(left), _arrow(right + right), con=con)
    assert state() == before
    assert reconcile_arrow(_arrow(left), _arrow(right), con=con).records() == first
    assert con.execute("SELECT x FROM mine").fetchall() == [(1,)]


def _quadratic_tolerant(self):
    """The leftover matching as first written (a scan of every candidate of every asset per left
    entry): the reference the indexed one must agree with."""
    import bisect
    from collections import defaultdict

    from ledger_pipelines.reconcile.engine import _ts

    if not self.rules.tolerant_matching:
        return
    by_asset = defaultdict(list)
    for r in self.free("R"):
        by_asset[r.asset].append((_ts(r), Decimal(r.amount), r))
    for lst in by_asset.values():
        lst.sort(key=lambda x: (x[0], x[2].entry_id))
    window = self.rules.time_window_seconds
    for l in sorted(self.free("L"), key=lambda e: (e.booked_at, e.entry_id)):
        lt, la = _ts(l), Decimal(l.amount)
        best = None
        for asset, lst in by_asset.items():
            exp = self.expected(l.asset, la, asset)
            if exp is None:
                continue
            times = [x[0] for x in lst]
            lo = bisect.bisect_left(times, lt.fromtimestamp(lt.timestamp() - window, lt.tzinfo))
            hi = bisect.bisect_right(times, lt.fromtimestamp(lt.timestamp() + window, lt.tzinfo))
            for t, ra, r in lst[lo:hi]:
                if ("R", r.entry_id) in self.used or not self.direction_ok(l, r):
                    continue
                if (asset == l.asset and ra == la) or self.rules.within_tolerance(exp, ra):
                    score = (abs((t - lt).total_seconds()), r.entry_id)
                    if best is None or score < best[0]:
                        best = (score, r)
        if best is not None:
            r = best[1]
            equal = r.asset == l.asset and Decimal(r.amount) == la
            self.match("exact" if equal and l.correlation_id and l.correlation_id == r.correlation_id
                       else "tolerant", [l.entry_id], [r.entry_id], "tolerant:amount+time")


# amounts close together (inside and just outside every tolerance), also across the EUR/USDC rate
_near = st.sampled_from(["100.00", "100.00", "100.01", "99.99", "100.05", "99.90", "108.42", "108.43", "0.01"])
_rule_sets = st.fixed_dictionaries({
    "time_window": st.sampled_from(["0s", "30m", "1h", "2h", "1d"]),
    "direction": st.sampled_from(["opposite", "same", "any"]),
    "amount_tolerance": st.fixed_dictionaries({"absolute": st.sampled_from(["0", "0.01", "0.01", "0.05"]),
                                               "relative": st.sampled_from(["0", "0.0005", "0.001", "0.01"])}),
    "fx": st.sampled_from([[], [{"from": "EUR", "to": "USDC", "rate": "1.0842"}],
                           [{"from": "USDC", "to": "EUR", "rate": "0.9223"}, {"from": "USD", "to": "EUR", "rate": "1"}]]),
    "tolerant_matching": st.sampled_from([True, True, True, False]),
    "duplicate_key": st.sampled_from([["correlation_id", "asset", "amount", "direction"], ["amount", "asset"]]),
})
_legs = st.lists(st.tuples(st.sampled_from(["K1", "K2", "B1", "B2", None, None, None]), _near,
                           st.sampled_from(["EUR", "EUR", "USD", "USDC"]), st.integers(0, 4),
                           st.sampled_from(["debit", "credit"]), st.booleans()), max_size=14)


@settings(max_examples=300, deadline=None)
@given(_rule_sets, _legs, _legs)
def test_indexed_leftover_matching_agrees_with_the_quadratic_scan(rule_doc, lspec, rspec):
    """Same records, ids and order as the scan of all candidates, on small scenarios with every rule:
    tolerances, windows (equal gaps on both sides of an entry included), FX both ways, duplicates,
    batches (``batch`` on a left leg: its members are B1 and B2) and unkeyed leftovers."""
    from unittest import mock

    from ledger_pipelines.reconcile.engine import _Engine

    rules = Rules.from_dict(rule_doc)
    batch = {"details": [{"refs": {"EndToEndId": "B1"}}, {"refs": {"EndToEndId": "B2"}}]}
    left = [bank(f"l{i}", a, k, asset=c, at=T0 + timedelta(minutes=30 * m), direction=d, **(batch if b else {}))
            for i, (k, a, c, m, d, b) in enumerate(lspec)]
    right = [chain(f"r{i}", a, k, asset=c, at=T0 + timedelta(minutes=30 * m), direction=d,
                   status="orphaned" if b and i % 3 == 0 else "final")
             for i, (k, a, c, m, d, b) in enumerate(rspec)]
    got = reconcile(left, right, rules)
    with mock.patch.object(_Engine, "tolerant", _quadratic_tolerant):
        want = reconcile(left, right, rules)
    assert (got.matches, got.breaks) == (want.matches, want.breaks)
    _check_invariants(left, right, got)
