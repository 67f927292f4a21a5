"""Rules YAML that tries to fool the schema: out-of-range decimals and windows, strings posing as
booleans, floats posing as decimals, unknown and repeated keys, hostile YAML. Each is refused with
the key's dotted path and the reason, as a RulesError (never a traceback, never a silent default)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger_pipelines.reconcile import Rules, RulesError, load_rules
from ledger_pipelines.reconcile.rules import MAX_RULES_BYTES

FX = {"from": "EUR", "to": "USD"}


@pytest.mark.parametrize("doc, path, reason", [
    ({"fx": [{**FX, "rate": "1e-999999"}]}, "rules.fx[0].rate", "plain non-negative decimal"),
    ({"fx": [{**FX, "rate": "0"}]}, "rules.fx[0].rate", "greater than 0"),
    ({"fx": [{**FX, "rate": "0.000"}]}, "rules.fx[0].rate", "greater than 0"),
    ({"fx": [{**FX, "rate": "-1.08"}]}, "rules.fx[0].rate", "no sign"),
    ({"fx": [{**FX, "rate": 1.08}]}, "rules.fx[0].rate", "binary float"),
    ({"fx": [{**FX, "rate": "NaN"}]}, "rules.fx[0].rate", "plain non-negative decimal"),
    ({"fx": [{**FX, "rate": "Infinity"}]}, "rules.fx[0].rate", "plain non-negative decimal"),
    ({"fx": [{**FX, "rate": True}]}, "rules.fx[0].rate", "expected a decimal string"),
    ({"fx": [{**FX, "rate": "1." + "1" * 70}]}, "rules.fx[0].rate", "at most 64 characters"),
    ({"fx": [{**FX, "rate": "1.1"}, {"from": "USD", "to": "EUR", "rate": "0.9"}]}, "rules.fx[1]", "already given"),
    ({"fx": [{"from": "EUR", "to": "EUR", "rate": "1"}]}, "rules.fx[0]", "both 'EUR'"),
    ({"fx": [{"from": "EUR", "rate": "1"}]}, "rules.fx[0]", "missing to"),
    ({"fx": [{**FX, "rate": "1", "ratio": "2"}]}, "rules.fx[0].ratio", "known: from, rate, to"),
    ({"fx": [{**FX, "rate": "1", "from": ""}]}, "rules.fx[0].from", "asset code"),
    ({"fx": {"EUR/USD": "1.1"}}, "rules.fx", "expected a list"),
    ({"amount_tolerance": {"relative": "1"}}, "rules.amount_tolerance.relative", "[0, 1)"),
    ({"amount_tolerance": {"relative": "12.5"}}, "rules.amount_tolerance.relative", "[0, 1)"),
    ({"amount_tolerance": {"relative": 0.001}}, "rules.amount_tolerance.relative", "binary float"),
    ({"amount_tolerance": {"absolute": "-0.01"}}, "rules.amount_tolerance.absolute", "no sign"),
    ({"amount_tolerance": {"absolute": -1}}, "rules.amount_tolerance.absolute", "no sign"),
    ({"amount_tolerance": {"abs": "0.01"}}, "rules.amount_tolerance.abs", "known: absolute, relative"),
    ({"amount_tolerance": None}, "rules.amount_tolerance", "expected a mapping"),
    ({"time_window": "99999999999999d"}, "rules.time_window", "outside 0 to 31d"),
    ({"time_window": "9" * 5000 + "d"}, "rules.time_window", "outside 0 to 31d"),
    ({"time_window": "32d"}, "rules.time_window", "outside 0 to 31d"),
    ({"time_window": 31 * 86400 + 1}, "rules.time_window", "outside 0 to 31d"),
    ({"time_window": -1}, "rules.time_window", "outside 0 to 31d"),
    ({"time_window": "-1d"}, "rules.time_window", "not a duration"),
    ({"time_window": "1w"}, "rules.time_window", "not a duration"),
    ({"time_window": 1.5}, "rules.time_window", "not a duration"),
    ({"time_window": True}, "rules.time_window", "not a duration"),
    ({"tolerant_matching": "false"}, "rules.tolerant_matching", "YAML boolean"),
    ({"tolerant_matching": "no"}, "rules.tolerant_matching", "YAML boolean"),
    ({"tolerant_matching": 0}, "rules.tolerant_matching", "YAML boolean"),
    ({"tolerant_matching": None}, "rules.tolerant_matching", "YAML boolean"),
    ({"direction": "sideways"}, "rules.direction", "opposite, same, any"),
    ({"direction": False}, "rules.direction", "opposite, same, any"),
    ({"key": "booked_at"}, "rules.key", "expected one of"),
    ({"key": ["correlation_id"]}, "rules.key", "expected one of"),
    ({"duplicate_key": []}, "rules.duplicate_key", "non-empty list"),
    ({"duplicate_key": "correlation_id"}, "rules.duplicate_key", "non-empty list"),
    ({"duplicate_key": ["amount", "amount"]}, "rules.duplicate_key", "listed twice"),
    ({"duplicate_key": ["amount", "price"]}, "rules.duplicate_key[1]", "expected one of"),
    ({"batch_members": "__class__.__name__"}, "rules.batch_members", "starting at an entry field"),
    ({"batch_members": "attributes..refs"}, "rules.batch_members", "path like"),
    ({"batch_members": 7}, "rules.batch_members", "path like"),
    ({"tolerant_matchng": False}, "rules.tolerant_matchng", "known: amount_tolerance, batch_members, direction, "
                                                            "duplicate_key, fx, key, time_window, tolerant_matching"),
    ({1: "x"}, "rules.1", "unknown key"),
    (["key", "entry_id"], "rules", "expected a mapping"),
    ("key: entry_id", "rules", "expected a mapping"),
])
def test_each_invalid_rule_is_refused_naming_the_key(doc, path, reason):
    with pytest.raises(RulesError) as exc:
        Rules.from_dict(doc)
    assert str(exc.value).startswith(f"{path}: "), str(exc.value)
    assert reason in str(exc.value)


def test_the_documented_rule_sets_are_valid_and_exact():
    r = Rules.from_dict({"key": "correlation_id", "time_window": "1d", "direction": "any",
                         "fx": [{"from": "EUR", "to": "USDC", "rate": "1.08"}],
                         "amount_tolerance": {"relative": "0.002", "absolute": "0.00"},
                         "duplicate_key": ["correlation_id", "asset", "amount", "direction"],
                         "batch_members": "attributes.details[].refs.EndToEndId", "tolerant_matching": False})
    assert (r.time_window_seconds, r.direction, r.tolerant_matching) == (86400, "any", False)
    assert r.fx[0].rate == Decimal("1.08") and r.tolerance_relative == Decimal("0.002")
    assert Rules.from_dict({"time_window": "31d"}).time_window_seconds == 31 * 86400
    assert Rules.from_dict({"time_window": 90, "amount_tolerance": {"absolute": 0}}).time_window_seconds == 90
    assert Rules.from_dict(None) == Rules.from_dict({}) == Rules()


def test_every_rules_field_can_be_set_from_yaml():
    """The schema covers every setting the engine reads: each field of Rules differs from its
    default when set through from_dict."""
    doc = {"key": "entry_id", "time_window": "3h", "direction": "same",
           "amount_tolerance": {"absolute": "0.01", "relative": "0.5"}, "fx": [{**FX, "rate": "1.1"}],
           "tolerant_matching": False, "batch_members": None, "duplicate_key": ["entry_id"]}
    r, default = Rules.from_dict(doc), Rules()
    unchanged = [f.name for f in dataclasses.fields(Rules) if f.name != "source"
                 and getattr(r, f.name) == getattr(default, f.name)]
    assert unchanged == []


def test_the_audit_bridge_rules_stay_valid_beyond_the_user_window():
    from ledger_pipelines.audit import BRIDGE_RULES

    assert BRIDGE_RULES.time_window_seconds == 36500 * 86400 and BRIDGE_RULES.key == "entry_id"
    with pytest.raises(RulesError, match="rules.time_window"):
        Rules.from_dict({"time_window": "36500d"})


@pytest.mark.parametrize("text, reason", [
    ("tolerant_matching: 'false'\n", "rules.tolerant_matching: expected a YAML boolean"),
    ("tolerant_matching: false\ntolerant_matching: true\n", "key 'tolerant_matching' is given twice at line 2"),
    ("fx:\n  - {from: EUR, to: USD, rate: 1e-999999}\n", "rules.fx[0].rate: '1e-999999' is not a plain"),
    ("fx:\n  - {from: EUR, to: USD, rate: 1.0e-999999}\n", "rules.fx[0].rate: write decimals as quoted strings"),
    ("fx:\n  - {from: EUR, to: USD, rate: 0}\n", "rules.fx[0].rate: 0 must be greater than 0"),
    ("time_window: 99999999999999d\n", "rules.time_window: '99999999999999d' is outside 0 to 31d"),
    ("amount_tolerance: {relative: 0.001}\n", "rules.amount_tolerance.relative: write decimals as quoted"),
    ("key: [unclosed\n", "not valid YAML"),
    ("a: &a [1]\nb: !!python/object/apply:os.system [true]\n", "not valid YAML"),
    ("[" * 100_000, "nested deeper than 64 levels at line 1, column 65"),
    ("a:\n" + "".join(f"{'  ' * i}- b:\n" for i in range(1, 80)), "nested deeper than 64 levels"),
    ("- key\n", "rules: expected a mapping"),
    # YAML 1.1 numbers that are not what they look like
    ("time_window: 1:30\n", "'1:30' is read by YAML as the number 90: quote it"),
    ("time_window: 010\n", "'010' has a leading zero, which YAML reads as an octal number or as text"),
    ("time_window: 08\n", "'08' has a leading zero, which YAML reads as an octal number or as text"),
    ("time_window: 0x10\n", "'0x10' is read by YAML as the number 16"),
    ("time_window: 1_000\n", "'1_000' is read by YAML as the number 1000"),
])
def test_rules_files_are_refused_with_a_reason(tmp_path, text, reason):
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    with pytest.raises(RulesError) as exc:
        load_rules(path)
    assert str(exc.value).startswith(f"rules {path}: ") and reason in str(exc.value), str(exc.value)


def test_unreadable_oversized_and_binary_rules_files(tmp_path):
    with pytest.raises(RulesError, match="cannot read rules"):
        load_rules(tmp_path / "absent.yaml")
    big = tmp_path / "big.yaml"
    big.write_text("# " + "x" * MAX_RULES_BYTES + "\n")
    with pytest.raises(RulesError, match=f"larger than {MAX_RULES_BYTES} bytes"):
        load_rules(big)
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"key: \xff\xfe\x00")
    with pytest.raises(RulesError, match="not UTF-8"):
        load_rules(binary)


def test_a_yaml_boolean_turns_tolerant_matching_off(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text("tolerant_matching: false\ntime_window: 6h\n")
    assert load_rules(path).tolerant_matching is False


def test_the_command_refuses_invalid_rules_in_one_line_and_writes_nothing(tmp_path):
    (tmp_path / "l.jsonl").write_text("")
    (tmp_path / "r.jsonl").write_text("")
    rules = tmp_path / "rules.yaml"
    rules.write_text("fx:\n  - {from: EUR, to: USD, rate: '0'}\n")
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, "-m", "ledger_pipelines.cli", "reconcile", "--left", str(tmp_path / "l.jsonl"),
                          "--right", str(tmp_path / "r.jsonl"), "--rules", str(rules), "--out", str(out)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode != 0 and not out.exists()
    assert run.stderr.count("\n") == 1 and "Traceback" not in run.stderr, run.stderr
    assert "rules.fx[0].rate" in run.stderr and "greater than 0" in run.stderr


_scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**30, 10**30), st.floats(allow_nan=True),
                     st.text(max_size=12), st.sampled_from(["1e-999999", "0", "2d", "1.5", "false", "entry_id",
                                                            "opposite", "EUR", "attributes.x[]"]))
_values = st.recursive(_scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                         st.dictionaries(st.text(max_size=8) | _scalars.filter(
                                                             lambda v: v is not None and not isinstance(v, float)),
                                                             inner, max_size=4)), max_leaves=12)
_keys = st.sampled_from(["key", "time_window", "direction", "amount_tolerance", "fx", "tolerant_matching",
                         "batch_members", "duplicate_key", "absolute", "relative", "from", "to", "rate"])


@settings(max_examples=400, deadline=None)
@given(st.one_of(_values, st.dictionaries(_keys, st.one_of(_values, st.dictionaries(_keys, _values, max_size=3),
                                                           st.lists(st.dictionaries(_keys, _values, max_size=4),
                                                                    max_size=2)), max_size=5)))
def test_any_document_gives_rules_or_a_rules_error(doc):
    try:
        r = Rules.from_dict(doc)
    except RulesError as exc:
        assert str(exc).startswith("rules")
        return
    assert 0 <= r.time_window_seconds <= 31 * 86400
    assert r.tolerance_absolute >= 0 and 0 <= r.tolerance_relative < 1
    assert all(f.rate > 0 for f in r.fx) and isinstance(r.tolerant_matching, bool)


def test_deep_nesting_is_refused_at_once_whatever_the_recursion_limit(tmp_path):
    """web3 (py_ecc) raises the recursion limit to 100,000 at import: the refusal must not depend on
    the limit, nor recurse as deep as the document."""
    import sys
    import time

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(100_000)
    try:
        path = tmp_path / "rules.yaml"
        path.write_text("[" * 100_000)
        t0 = time.monotonic()
        with pytest.raises(RulesError, match="nested deeper than 64 levels"):
            load_rules(path)
        assert time.monotonic() - t0 < 5
    finally:
        sys.setrecursionlimit(limit)


def test_the_ledger_configuration_is_read_with_the_same_guards(tmp_path):
    from ledger_pipelines.config import ConfigError, load_config

    deep = tmp_path / "deep.yaml"
    deep.write_text("ledgers: " + "[" * 10_000)
    twice = tmp_path / "twice.yaml"
    twice.write_text("ledgers: []\nledgers: []\n")
    listed = tmp_path / "listed.yaml"
    listed.write_text("- ledgers\n")
    for path, reason in ((deep, "nested deeper than 64 levels"), (twice, "'ledgers' is given twice at line 2"),
                         (listed, "expected a mapping at the top")):
        with pytest.raises(ConfigError, match=reason):
            load_config(path)


def test_aliases_are_refused_so_nesting_cannot_pass_the_bound_through_them(tmp_path):
    """Anchors each nesting 60 levels around the alias of the one before would load a document thousands of
    levels deep while every single node sits under the depth bound."""
    lines = ["a0: &a0 1"]
    for i in range(1, 40):
        lines.append(f"a{i}: &a{i} " + "[" * 60 + f"*a{i - 1}" + "]" * 60)
    path = tmp_path / "rules.yaml"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(RulesError, match=r"aliases \(\*name\) are not accepted at line 2"):
        load_rules(path)
