"""Hostile Debezium change events: every event an entry (or two) or a named rejection.

Mapper-level cases call ``debezium_events_to_entries`` (what ``normalize --kind debezium`` calls) on a
generated input holding a valid event beside the hostile one; the command-line cases run the real
command in a subprocess.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from decimal import Decimal

import pytest

from ledger_pipelines.connectors.cdc.debezium import debezium_events_to_entries, event_to_entries
from ledger_pipelines.connectors.sql.mapping import ColumnMapping
from ledger_pipelines.model import EntryError, decode_entry, encode_entry

JOURNAL = ColumnMapping(table="journal_lines")
ROW = {"id": 7, "txn_id": "T1", "posted_at": "2026-11-24T10:15:00Z", "account": "GL-1", "counterparty": "GL-2",
       "currency": "EUR", "side": "D", "payment_ref": "E2E-1", "amount": "12.50"}
DECIMAL_SCHEMA = {"fields": [{"field": "after", "fields": [
    {"field": "amount", "name": "org.apache.kafka.connect.data.Decimal", "parameters": {"scale": "2"}}]}]}


def _payload(lsn=42, op="c", after=None, before=None, **over):
    p = {"before": before, "after": dict(ROW) if after is None else after, "op": op, "ts_ms": 1_700_000_000_000,
         "source": {"schema": "public", "table": "journal_lines", "lsn": lsn, "txId": 9, "ts_ms": 1_700_000_000_000}}
    p.update(over)
    return p


def _line(payload, schema=None) -> str:
    return json.dumps({"schema": schema, "payload": payload} if schema else payload)


def _map(*lines: str):
    good = _line(_payload(lsn=1, after=ROW | {"id": 1}))
    data = "\n".join([good, *lines]).encode()
    entries, rejections, accepted = debezium_events_to_entries(data, JOURNAL, "core_cdc")
    assert accepted + len(rejections) == 1 + len(lines)
    assert len({e.entry_id for e in entries}) == len(entries)
    for e in entries:
        decode_entry(encode_entry(e))  # every entry is a valid canonical entry
    assert entries[0].source_ref == "public.journal_lines:1@1"
    return entries, rejections


def _rejected(line: str, reason: str):
    entries, rejections = _map(line)
    assert len(entries) == 1, entries
    (r,) = rejections
    assert r.where == "line 2" and reason in r.reason, r
    return r


def test_two_versions_without_an_lsn_are_refused_not_given_one_id():
    no_lsn = [_payload(lsn=None, after=ROW | {"amount": a}) for a in ("10", "11")]
    for p in no_lsn:
        del p["source"]["lsn"]
    entries, rejections = _map(*(_line(p) for p in no_lsn))
    assert len(entries) == 1 and len(rejections) == 2
    assert all("no source.lsn" in r.reason for r in rejections)
    assert not any(e.entry_id.endswith("@None") for e in entries)


def test_two_versions_with_their_lsns_get_two_ids():
    entries, rejections = _map(_line(_payload(lsn=50)), _line(_payload(lsn=51, op="u", before=ROW)))
    assert rejections == []
    assert [e.source_ref for e in entries[1:]] == ["public.journal_lines:7@50", "public.journal_lines:7@51",
                                                   "public.journal_lines:7@51:reversal"]


@pytest.mark.parametrize("lsn", ["34078720", -1, 2**64, 1.5, True, {"a": 1}])
def test_an_lsn_that_is_no_log_position_is_refused(lsn):
    _rejected(_line(_payload(lsn=lsn)), "source.lsn")


@pytest.mark.parametrize("payload, reason", [("x", "payload is str"), ([1], "payload is list"),
                                             (None, "payload is NoneType")])
def test_a_payload_that_is_not_an_object_is_refused(payload, reason):
    _rejected(json.dumps({"schema": {}, "payload": payload}), reason)


@pytest.mark.parametrize("field, value", [("source", "pg"), ("source", [1]), ("source", None), ("after", "row"),
                                          ("after", [ROW]), ("before", 5)])
def test_source_or_row_images_that_are_not_objects_are_refused(field, value):
    _rejected(_line(_payload(**{field: value}, op="u")), f"{field} is")


@pytest.mark.parametrize("ts", ["soon", 10**20, -5, 1.7e12, [1], True])
def test_a_ts_ms_that_is_no_time_is_refused(ts):
    p = _payload(after={k: v for k, v in ROW.items() if k != "posted_at"})
    p["source"]["ts_ms"] = ts
    _rejected(_line(p), "ts_ms")


@pytest.mark.parametrize("scale", ["1e9", "abc", "2.5", 2.5, 10**9, -10**9, None, [2]])
def test_a_decimal_scale_that_is_no_small_integer_is_refused(scale):
    raw = base64.b64encode((123450).to_bytes(4, "big", signed=True)).decode()
    schema = json.loads(json.dumps(DECIMAL_SCHEMA))
    schema["fields"][0]["fields"][0]["parameters"]["scale"] = scale
    r = _rejected(_line(_payload(after=ROW | {"amount": raw}), schema), "scale")
    assert "Decimal scale" in r.reason


def test_a_decimal_scale_written_as_json_number_1e9_is_refused():
    raw = base64.b64encode(b"\x01").decode()
    line = _line(_payload(after=ROW | {"amount": raw}), DECIMAL_SCHEMA).replace('"scale": "2"', '"scale": 1e9')
    _rejected(line, "Decimal scale")


def test_the_valid_decimal_beside_them_decodes():
    raw = base64.b64encode((123450).to_bytes(4, "big", signed=True)).decode()
    entries, rejections = _map(_line(_payload(after=ROW | {"amount": raw}), DECIMAL_SCHEMA))
    assert rejections == [] and entries[1].amount == "1234.50"


@pytest.mark.parametrize("raw", ["%%%not-base64", "AAE", "", base64.b64encode(b"\x01" * 41).decode()])
def test_decimal_bytes_that_are_not_base64_of_a_number_are_refused(raw):
    _rejected(_line(_payload(after=ROW | {"amount": raw}), DECIMAL_SCHEMA), "not a Connect Decimal")


@pytest.mark.parametrize("line, reason", [
    ("{not json", "not valid JSON"),
    ('{"op": "c", "after": {"amount": ' + "9" * 5000 + "}}", "not valid JSON"),
    ("[" * 100_000, "not valid JSON"),
    ("null", "a change event is a JSON object"),
    (b"\xff\xfe".decode("latin-1"), "not valid JSON"),
])
def test_lines_that_are_no_json_object_are_refused(line, reason):
    _rejected(line, reason)


@pytest.mark.parametrize("over, reason", [
    ({"account": {"iban": "DE1"}}, "column account holds dict"),
    ({"currency": ["EUR"]}, "column currency holds list"),
    ({"id": None}, "has no id"),
    ({"id": {"k": 1}}, "column id holds dict"),
    ({"amount": "1E+999999999"}, "out of range"),
    ({"amount": "1E-999999999"}, "cannot be represented"),
    ({"posted_at": "9999-12-31T23:00:00-05:00"}, "outside the years"),
])
def test_row_values_that_make_no_valid_entry_are_refused(over, reason):
    _rejected(_line(_payload(after=ROW | over)), reason)


def test_deep_nesting_is_refused_even_where_web3_raised_the_recursion_limit():
    # py_ecc sets the limit to 100000: json.loads would then overflow the C stack (a segfault, not an error)
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(100_000)
    try:
        for line in ("[" * 200_000, '{"a":' * 50_000):
            with pytest.raises(EntryError, match="nested deeper"):
                event_to_entries(line, JOURNAL, "core_cdc")
    finally:
        sys.setrecursionlimit(limit)
    deep_text = _line(_payload(after=ROW | {"payment_ref": "[" * 5000}))  # brackets inside a string are text
    (e,) = event_to_entries(deep_text, JOURNAL, "core_cdc")
    assert e.correlation_id == "[" * 5000


def test_a_duplicate_event_is_refused_naming_both_lines():
    line = _line(_payload(lsn=60))
    entries, rejections = _map(line, line)
    assert [e.source_ref for e in entries] == ["public.journal_lines:1@1", "public.journal_lines:7@60"]
    (r,) = rejections
    assert r.where == "line 3" and "duplicate" in r.reason and "line 2" in r.reason


def test_an_update_is_mapped_whole_or_refused_whole():
    with pytest.raises(EntryError, match="side"):
        event_to_entries(_line(_payload(op="u", before=ROW | {"side": "?"})), JOURNAL, "core_cdc")


def test_exact_amounts_still_exact():
    line = _line(_payload(after=ROW | {"amount": "X"})).replace('"X"', "123456789012345678901234567890.12")
    entries, _ = _map(line)
    assert Decimal(entries[1].amount) == Decimal("123456789012345678901234567890.12")


def _cli(tmp_path, text: str, *args: str):
    f = tmp_path / "events.txt"
    f.write_text(text)
    cfg = tmp_path / "ledgers.yaml"
    cfg.write_text("ledgers:\n  - {name: core_cdc, kind: cdc, mapping: {table: journal_lines}}\n")
    proc = subprocess.run([sys.executable, "-m", "ledger_pipelines.cli", "normalize", "--kind", "debezium",
                           "--config", str(cfg), *args, str(f)], capture_output=True, timeout=60)
    err = proc.stderr.decode()
    assert "Traceback" not in err, err
    lines = [json.loads(x) for x in err.splitlines()]
    assert proc.stdout == b"" or proc.stdout.endswith(b"\n")
    return proc.returncode, [decode_entry(x) for x in proc.stdout.splitlines()], lines


def test_normalize_debezium_ends_with_the_count(tmp_path):
    text = "\n".join([_line(_payload(lsn=1)), "", _line(_payload(lsn=2, op="u", before=ROW)), "{bad",
                      _line(_payload(lsn=None))]) + "\n"
    rc, entries, lines = _cli(tmp_path, text)
    assert rc == 0 and len(entries) == 3
    *errors, summary = lines
    assert summary == {"kind": "debezium", "records": 4, "entries": 2, "rejections": 2, "entry_lines": 3,
                       "unreadable_files": 0}
    assert [e["source"].rsplit(": ", 1)[1] for e in errors] == ["line 4", "line 5"]


def test_normalize_debezium_on_a_missing_file_or_ledger_exits_2(tmp_path):
    rc, entries, lines = _cli(tmp_path, "", "--ledger", "nope")
    assert rc == 2 and entries == [] and len(lines) == 1 and "no ledger 'nope'" in lines[0]["error"]
    f = tmp_path / "missing.txt"
    proc = subprocess.run([sys.executable, "-m", "ledger_pipelines.cli", "normalize", "--kind", "debezium",
                           "--config", str(tmp_path / "ledgers.yaml"), str(f)], capture_output=True, timeout=60)
    assert proc.returncode == 2 and b"Traceback" not in proc.stderr and proc.stdout == b""
    assert str(f).encode() in proc.stderr.splitlines()[0]
