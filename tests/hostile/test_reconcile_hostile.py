"""Hostile input to ``reconcile``: an entry_id given twice, lines that are not canonical entries
(broken JSON, nesting 100,000 deep, lines over the size bound, bytes that are not UTF-8), and
leftovers in numbers that a scan of every candidate per entry could not finish."""

from __future__ import annotations

import gc
import json
import random
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime, timedelta, timezone

import pytest

from ledger_pipelines.cli import main
from ledger_pipelines.model import encode_entry, make_entry
from ledger_pipelines.reconcile import InputError, Rules, read_entries, reconcile
from ledger_pipelines.model import MAX_NESTING
from ledger_pipelines.reconcile.inputs import MAX_LINE_BYTES

T0 = datetime(2026, 11, 24, 10, 0, tzinfo=timezone.utc)


def entry(ref: str, amount: str = "10.00", ledger: str = "core_banking", direction: str = "debit", **attrs):
    return make_entry(ledger=ledger, ledger_kind="sql", source_ref=ref, correlation_id=f"C-{ref}", account="A-1",
                      asset="EUR", amount=amount, direction=direction, booked_at=T0, status="booked",
                      attributes=attrs)


def line(ref: str, **kw) -> bytes:
    return encode_entry(entry(ref, **kw)) + b"\n"


def run_cli(tmp_path, left: bytes, right: bytes = b"", capsys=None):
    (tmp_path / "l.jsonl").write_bytes(left)
    (tmp_path / "r.jsonl").write_bytes(right)
    out = tmp_path / "out"
    code = main(["reconcile", "--left", str(tmp_path / "l.jsonl"), "--right", str(tmp_path / "r.jsonl"),
                 "--out", str(out)])
    return code, capsys.readouterr().err, out


def test_an_entry_id_given_twice_makes_the_file_invalid(tmp_path):
    """Both versions named, nothing written: keeping either would drop the other from every record."""
    text = b"\n".join([line("1").strip(), line("2").strip(), b"", line("1", amount="99.00").strip(), line("3").strip()])
    (tmp_path / "l.jsonl").write_bytes(text + b"\n")
    (tmp_path / "r.jsonl").write_bytes(line("1", ledger="eth_usdc", direction="credit"))
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, "-m", "ledger_pipelines.cli", "reconcile", "--left", str(tmp_path / "l.jsonl"),
                          "--right", str(tmp_path / "r.jsonl"), "--out", str(out)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode != 0 and not out.exists()
    assert run.stderr.count("\n") == 1 and "Traceback" not in run.stderr, run.stderr
    assert f"left file {tmp_path / 'l.jsonl'}" in run.stderr
    assert "'core_banking:1' on line 1 and again on line 4" in run.stderr


def test_the_same_id_on_both_sides_is_fine(tmp_path, capsys):
    code, err, out = run_cli(tmp_path, line("1"), line("1", direction="credit"), capsys)
    assert code == 0, err
    assert json.loads((out / "summary.json").read_text())["input_rows"] == {"left": 1, "right": 1}


def _nested(depth: int, open_: bytes, close: bytes) -> bytes:
    return line("1").replace(b'"attributes":{}', b'"attributes":{"x":' + open_ * depth + b"0" * (open_ == b'{"a":')
                             + close * depth + b"}")


@pytest.mark.parametrize("bad, reason", [
    (b"not json at all\n", "not valid JSON"),
    (b"[1, 2, 3]\n", "Expected `object`"),
    (b'{"schema_version": 1}\n', "missing required field"),
    (line("1").replace(b'"amount":"10.00"', b'"amount":10.0'), "amount: must be an exact decimal string"),
    (line("1").replace(b'"amount":"10.00"', b'"amount":"1e3"'), "amount: '1e3' is not an exact"),
    (line("1").replace(b'"entry_id":"core_banking:1"', b'"entry_id":"other:1"'), "entry_id: 'other:1' is not"),
    (line("1").replace(b'"booked_at":"2026-11-24T10:00:00Z"', b'"booked_at":"2026-02-30T10:00:00Z"'),
     "booked_at"),
    (_nested(100_000, b"[", b"]"), f"nested deeper than {MAX_NESTING} levels"),
    (_nested(100_000, b'{"a":', b"}"), f"nested deeper than {MAX_NESTING} levels"),
    (_nested(MAX_NESTING - 1, b"[", b"]"), f"nested deeper than {MAX_NESTING} levels"),  # with entry, attributes
    (b"\xff\xfe" + line("1"), "not valid JSON"),
    (line("1").replace(b'"account":"A-1"', b'"account":"A-\x00"'), "not valid JSON"),
    (line("1").strip() + line("2"), "not valid JSON"),
])
def test_a_bad_line_is_one_clear_error_and_nothing_is_written(tmp_path, capsys, bad, reason):
    code, err, out = run_cli(tmp_path, line("0") + b"\n" + bad + line("9"), b"", capsys)
    assert code != 0 and not out.exists()
    assert err.count("\n") == 1 and len(err) < 600, err
    assert f"left file {tmp_path / 'l.jsonl'}, line 3: " in err and reason in err, err


def test_deep_nesting_is_refused_where_web3_raised_the_recursion_limit(tmp_path):
    """py_ecc (imported with web3) sets the recursion limit to 100000: a decoder that trusts the
    limit overflows the C stack on 100000 nested lists and the process dies without a message."""
    (tmp_path / "l.jsonl").write_bytes(_nested(100_000, b"[", b"]"))
    (tmp_path / "r.jsonl").write_bytes(b"")
    out = tmp_path / "out"
    code = ("import sys, web3; from ledger_pipelines.cli import main; "
            f"sys.exit(main(['reconcile', '--left', {str(tmp_path / 'l.jsonl')!r}, '--right', "
            f"{str(tmp_path / 'r.jsonl')!r}, '--out', {str(out)!r}]))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and not out.exists(), (run.returncode, run.stderr[-500:])
    assert f"line 1: not valid JSON: nested deeper than {MAX_NESTING} levels" in run.stderr and run.stderr.count("\n") == 1


def test_nesting_within_the_bound_is_an_entry(tmp_path):
    path = _write(tmp_path / "l.jsonl", _nested(MAX_NESTING - 2, b"[", b"]") + _nested(MAX_NESTING - 2, b'{"a":', b"}")
                  .replace(b"core_banking:1", b"core_banking:2").replace(b'"source_ref":"1"', b'"source_ref":"2"'))
    assert [e.entry_id for e in read_entries(path, "left")] == ["core_banking:1", "core_banking:2"]


def test_lines_over_the_size_bound_are_refused_with_the_reason(tmp_path, capsys):
    base = line("1", pad="")
    at_limit = line("1", pad="x" * (MAX_LINE_BYTES - len(base)))
    assert len(at_limit) == MAX_LINE_BYTES
    assert [e.entry_id for e in read_entries(_write(tmp_path / "ok.jsonl", at_limit), "left")] == ["core_banking:1"]
    over = line("1", pad="x" * (MAX_LINE_BYTES - len(base) + 1))
    with pytest.raises(InputError, match=f"line 1: longer than {MAX_LINE_BYTES} bytes"):
        read_entries(_write(tmp_path / "over.jsonl", over), "left")
    # a line that never ends (no newline in 64 MiB): refused without holding it in memory whole
    code, err, out = run_cli(tmp_path, line("0") + b"[" * (64 << 20), b"", capsys)
    assert code != 0 and not out.exists() and err.count("\n") == 1
    assert "line 2: longer than" in err


def test_blank_lines_and_crlf_are_fine(tmp_path, capsys):
    left = b"\r\n" + line("1").replace(b"\n", b"\r\n") + b"   \n\t\n" + line("2") + b"\n"
    code, err, out = run_cli(tmp_path, left, line("1", ledger="eth_usdc", direction="credit"), capsys)
    assert code == 0, err
    assert json.loads((out / "summary.json").read_text())["input_rows"] == {"left": 2, "right": 1}


def test_a_missing_or_unreadable_file_is_one_clear_error(tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["reconcile", "--left", str(tmp_path / "absent.jsonl"), "--right", str(tmp_path), "--out", str(out)])
    err = capsys.readouterr().err
    assert code != 0 and not out.exists() and err.count("\n") == 1
    assert f"left file {tmp_path / 'absent.jsonl'}: cannot read it" in err


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


# -- leftovers: the cost of tolerant matching grows with the entries, not with their square ------

def _unmatched(n: int, seed: int):
    """n entries a side that no key joins (each its own reference), amounts spread over 1e2-1e8 and
    times over one day, under a one-day window: every right entry is a time candidate for every
    left one; only amount and direction narrow them down."""
    rng = random.Random(seed)

    def side(ledger, direction):
        return [make_entry(ledger=ledger, ledger_kind="sql", source_ref=str(i), correlation_id=f"{ledger}-{i}",
                           account="A", asset="EUR", amount=f"{rng.randrange(100, 10**8)}.{rng.randrange(100):02d}",
                           direction=direction, booked_at=T0 + timedelta(seconds=rng.randrange(86400)),
                           status="booked") for i in range(n)]

    return side("bank", "debit"), side("chain", "credit")


def test_four_times_the_unmatched_entries_cost_at_most_five_times_the_time():
    rules = Rules.from_dict({"time_window": "1d", "amount_tolerance": {"absolute": "0.01", "relative": "0.000001"}})
    sizes = (2000, 8000)
    data = {n: _unmatched(n, n) for n in sizes}
    best = dict.fromkeys(sizes, float("inf"))
    # the collector's full passes walk the whole test process's heap (pytest, hypothesis), which is
    # no part of the engine's cost: what the process held before is frozen out of them
    gc.collect()
    gc.freeze()
    try:
        for _ in range(3):
            for n in sizes:  # interleaved, so a slow moment of the machine hits both sizes alike
                t = time.perf_counter()
                r = reconcile(*data[n], rules)
                best[n] = min(best[n], time.perf_counter() - t)
                counts = Counter(i for rec in r.matches + r.breaks for i in rec["left_entry_ids"])
                assert len(counts) == n and set(counts.values()) == {1}
    finally:
        gc.unfreeze()
    assert best[8000] <= 5 * best[2000], best


def test_an_amount_of_more_than_96_digits_is_refused(tmp_path, capsys):
    from ledger_pipelines.model import MAX_AMOUNT_DIGITS, amount_is_canonical

    assert amount_is_canonical("9" * MAX_AMOUNT_DIGITS) and amount_is_canonical("9" * 48 + "." + "9" * 48)
    assert not amount_is_canonical("9" * (MAX_AMOUNT_DIGITS + 1))
    assert not amount_is_canonical("9" * 48 + "." + "9" * 49)
    good = encode_entry(entry("1"))
    code, err, out = run_cli(tmp_path, good.replace(b'"amount":"10.00"', b'"amount":"' + b"9" * 97 + b'"') + b"\n",
                             capsys=capsys)
    assert code == 2 and "line 1" in err and "amount" in err and not out.exists()


def test_the_summary_states_the_rules_without_exponents(tmp_path):
    from ledger_pipelines.reconcile.output import summary

    rules = Rules.from_dict({"amount_tolerance": {"absolute": "0.0000001", "relative": "0.00000001"},
                             "fx": [{"from": "EUR", "to": "USD", "rate": "0.00000001"}]})
    described = json.dumps(summary(reconcile([], [], rules), [], [], rules, "00")["rules"])
    assert "E-" not in described and "0.0000001" in described and "0.00000001" in described


def test_duplicates_and_leftovers_go_by_time_not_by_its_text():
    """``12:00:00Z`` is before ``12:00:00.5Z``, though it sorts after it as text: the later one is the duplicate."""
    early = make_entry(ledger="core_banking", ledger_kind="sql", source_ref="early", correlation_id="C", account="A",
                       asset="EUR", amount="10.00", direction="debit", booked_at="2026-11-24T10:00:00Z",
                       status="booked")
    late = make_entry(ledger="core_banking", ledger_kind="sql", source_ref="late", correlation_id="C", account="A",
                      asset="EUR", amount="10.00", direction="debit", booked_at="2026-11-24T10:00:00.5Z",
                      status="booked")
    assert late.booked_at < early.booked_at  # as text, the later time sorts first
    for left in ([early, late], [late, early]):
        out = reconcile(left, [], Rules())
        dup = [b for b in out.breaks if b["break_type"] == "duplicate_left"]
        assert [b["left_entry_ids"] for b in dup] == [[late.entry_id]], out.breaks
        assert f"as {early.entry_id}" in dup[0]["reason"]


def test_an_empty_reference_makes_no_duplicate():
    """An empty correlation id is no reference, for duplicates as for the key: two payments of the same
    amount without one are two payments, matched as leftovers."""
    def leg(ledger, ref, direction):
        return make_entry(ledger=ledger, ledger_kind="sql", source_ref=ref, correlation_id="", account="A",
                          asset="EUR", amount="100.00", direction=direction, booked_at=T0, status="booked")

    out = reconcile([leg("bank", "1", "debit"), leg("bank", "2", "debit")],
                    [leg("chain", "1", "credit"), leg("chain", "2", "credit")], Rules())
    assert out.breaks == [] and len(out.matches) == 2, (out.breaks, out.matches)


def test_an_id_holding_a_record_id_separator_is_refused(tmp_path, capsys):
    """Match and break ids hash the entry id lists joined by U+001F and U+001E: (``l:a``, ``r:b␞r:c``) and
    (``l:a␞r:b``, ``r:c``) would get one id. Such an entry is refused with the reason, never reconciled."""
    from ledger_pipelines.model import EntryError

    for sep in ("\x1e", "\x1f"):
        with pytest.raises(EntryError, match="U\\+001E or U\\+001F"):
            entry(f"a{sep}b")
    good = encode_entry(entry("1"))
    bad = good.replace(b'"core_banking:1"', b'"core_banking:1\\u001e"').replace(b'"source_ref":"1"',
                                                                               b'"source_ref":"1\\u001e"')
    code, err, out = run_cli(tmp_path, bad + b"\n", capsys=capsys)
    assert code == 2 and "line 1" in err and "U+001E or U+001F" in err and not out.exists(), err
