"""`ledger-pipelines reconcile` on Parquet and Arrow files: the same result as on JSON Lines, and the
same all-or-nothing validation."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.feather
import pyarrow.parquet
import pytest
from reconcile.test_reconcile import RULES, scenario

from ledger_pipelines.cli import main
from ledger_pipelines.model import encode_entry
from ledger_pipelines.reconcile import InputError, read_entries


def _rows(entries):
    rows = []
    for e in entries:
        d = json.loads(encode_entry(e))
        d["position"], d["attributes"] = json.dumps(d["position"]), json.dumps(d["attributes"])
        rows.append(d)
    return rows


def _write(path, rows, schema=None):
    table = pa.Table.from_pylist(rows, schema=schema)
    if path.suffix == ".parquet":
        pyarrow.parquet.write_table(table, path)
    else:
        pyarrow.feather.write_feather(table, path)


def _run(tmp_path, left, right, capsys):
    (tmp_path / "rules.yaml").write_text(json.dumps(RULES.source))
    out = tmp_path / f"out-{left.suffix[1:]}"
    code = main(["reconcile", "--left", str(left), "--right", str(right), "--rules", str(tmp_path / "rules.yaml"),
                 "--out", str(out)])
    return code, out, capsys.readouterr()


@pytest.mark.parametrize("suffix", [".parquet", ".arrow", ".feather"])
def test_a_table_file_reconciles_as_its_json_lines(tmp_path, capsys, suffix):
    left, right = scenario()
    (tmp_path / "l.jsonl").write_bytes(b"".join(encode_entry(e) + b"\n" for e in left))
    (tmp_path / "r.jsonl").write_bytes(b"".join(encode_entry(e) + b"\n" for e in right))
    _write(tmp_path / f"l{suffix}", _rows(left))
    _write(tmp_path / f"r{suffix}", _rows(right))
    assert read_entries(tmp_path / f"l{suffix}", "left") == left
    code_j, out_j, _ = _run(tmp_path, tmp_path / "l.jsonl", tmp_path / "r.jsonl", capsys)
    code_t, out_t, _ = _run(tmp_path, tmp_path / f"l{suffix}", tmp_path / f"r{suffix}", capsys)
    assert code_j == code_t == 0
    for name in ("matches.jsonl", "breaks.jsonl", "summary.json"):
        assert (out_t / name).read_bytes() == (out_j / name).read_bytes()


def test_decimal_and_timestamp_columns_are_read_exactly(tmp_path):
    left, _ = scenario()
    rows = _rows(left[:3])
    schema = pa.Table.from_pylist(rows).schema
    schema = schema.set(schema.get_field_index("amount"), pa.field("amount", pa.decimal128(20, 2)))
    schema = schema.set(schema.get_field_index("booked_at"), pa.field("booked_at", pa.timestamp("us", tz="UTC")))
    from datetime import datetime
    from decimal import Decimal

    typed = [{**r, "amount": Decimal(r["amount"]), "booked_at": datetime.fromisoformat(r["booked_at"])} for r in rows]
    _write(tmp_path / "l.parquet", typed, schema)
    assert read_entries(tmp_path / "l.parquet", "left") == left[:3]


def test_a_repeated_entry_id_names_both_rows_and_nothing_is_written(tmp_path, capsys):
    left, right = scenario()
    _write(tmp_path / "l.parquet", _rows(left + [left[4]]))
    _write(tmp_path / "r.parquet", _rows(right))
    code, out, cap = _run(tmp_path, tmp_path / "l.parquet", tmp_path / "r.parquet", capsys)
    assert code == 2 and not out.exists()
    assert f"on row 5 and again on row {len(left) + 1}" in cap.err


@pytest.mark.parametrize("change, reason", [
    ({"asset": ""}, "asset"),
    ({"booked_at": "2026-11-24 10:00"}, "booked_at"),
    ({"attributes": "[1, 2]"}, "attributes"),
    ({"amount": "1e3"}, "amount"),
])
def test_every_row_is_validated_as_a_canonical_entry(tmp_path, change, reason):
    left, _ = scenario()
    rows = _rows(left)
    rows[7] = {**rows[7], **change}
    _write(tmp_path / "l.feather", rows)
    with pytest.raises(InputError, match=reason) as exc:
        read_entries(tmp_path / "l.feather", "left")
    assert "row 8" in str(exc.value)


def test_a_float_amount_column_is_refused(tmp_path):
    left, _ = scenario()
    table = pa.Table.from_pylist(_rows(left))
    table = table.set_column(table.schema.get_field_index("amount"), "amount",
                             pa.array([float(e.amount) for e in left]))
    pyarrow.parquet.write_table(table, tmp_path / "l.parquet")
    with pytest.raises(InputError, match="never a JSON number") as exc:
        read_entries(tmp_path / "l.parquet", "left")
    assert "row 1" in str(exc.value)


def test_an_unreadable_table_is_one_clear_error(tmp_path):
    (tmp_path / "l.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(InputError, match="not a readable table"):
        read_entries(tmp_path / "l.parquet", "left")
    with pytest.raises(InputError, match="cannot read it"):
        read_entries(tmp_path / "missing.arrow", "left")


def test_a_binary_column_is_refused_not_read_as_base64(tmp_path):
    left, _ = scenario()
    table = pa.Table.from_pylist(_rows(left))
    table = table.set_column(table.schema.get_field_index("asset"), "asset",
                             pa.array([e.asset.encode() for e in left], pa.binary()))
    pyarrow.parquet.write_table(table, tmp_path / "l.parquet")
    with pytest.raises(InputError, match="asset is binary; entry fields are text") as exc:
        read_entries(tmp_path / "l.parquet", "left")
    assert "row 1" in str(exc.value)


def test_a_time_beyond_what_python_holds_names_the_rows(tmp_path):
    left, _ = scenario()
    rows = _rows(left)
    table = pa.Table.from_pylist(rows)
    seconds = [0] * len(rows)
    seconds[3] = 400_000_000_000  # the year 14646
    table = table.set_column(table.schema.get_field_index("booked_at"), "booked_at",
                             pa.array(seconds, pa.timestamp("s", tz="UTC")))
    pyarrow.parquet.write_table(table, tmp_path / "l.parquet")
    with pytest.raises(InputError, match="a value that cannot be read") as exc:
        read_entries(tmp_path / "l.parquet", "left")
    assert f"rows 1-{len(rows)}" in str(exc.value)
