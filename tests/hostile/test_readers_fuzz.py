"""Structured mutations of the real EVM and Debezium files through the entry points ``normalize`` uses.

A mutation replaces a value anywhere in a record with a hostile one, deletes a key, upper-cases or
cuts hex, or duplicates a record. Whatever comes out: no exception escapes, every record is an entry
or a rejection, entry ids are unique within the input, every entry is a valid canonical entry, and a
duplicated record that was an entry is refused as a duplicate.
"""

from __future__ import annotations

import copy
import json
import re
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import REALDATA
from ledger_pipelines.cli import _read_logs
from ledger_pipelines.config import ledger_by_name, load_config
from ledger_pipelines.connectors.cdc.debezium import debezium_events_to_entries
from ledger_pipelines.connectors.evm.decoding import (PAYMENT_RECORDED_TOPIC, LogContext, block_timestamps_of,
                                             decode_payment_recorded, logs_to_entries, memos_of)
from ledger_pipelines.model import decode_entry, encode_entry

EVM_FILES = sorted((REALDATA / "evm").glob("**/*.json"))
CDC_FILES = sorted((REALDATA / "cdc").glob("*.txt"))
CDC_MAPPING = ledger_by_name(load_config(), "products_cdc").mapping
_TMP = Path(tempfile.mkdtemp(prefix="readers-fuzz-"))


def _readable_logs() -> list[list]:
    out = []
    for f in EVM_FILES:
        try:
            logs, _ = _read_logs(str(f))
        except ValueError:
            continue  # block responses and the like: not logs files
        if logs:
            out.append(logs)
    return out


EVM_INPUTS = _readable_logs()
STAMPS = block_timestamps_of(json.loads(f.read_text()) for f in EVM_FILES if "getBlockByNumber" in f.name)
CDC_LINES = [json.loads(line) for f in CDC_FILES for line in f.read_text().splitlines() if line.strip()]

HOSTILE = st.one_of(
    st.none(), st.booleans(), st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([2**256, 2**256 - 1, 10**80, -(2**70), -1, 0, 2**63, 253_402_300_800, 10**20]),
    st.sampled_from(["", "abc", "0x", "0X", "0x" + "f" * 65, "0x" + "F" * 64, "0X" + "AB" * 20, "1e9", "2.5",
                     "NaN", "-0", "9999-12-31T23:59:59-05:00", "%%%", "AAE=", "\x00", "0x" + "zz" * 32]),
    st.text(max_size=12), st.integers(),
    st.just({"nested": {"deep": [1, {"x": None}]}}), st.just([1, "x", None]), st.just({}), st.just([]),
)


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, (*prefix, i))


def _get(node, path):
    for p in path:
        node = node[p]
    return node


def _mutate(record, draw):
    """One structured mutation of ``record`` (a JSON value) in place; returns the new record."""
    path = draw(st.sampled_from(list(_paths(record))))
    op = draw(st.sampled_from(["replace", "delete", "upper", "cut", "extend"]))
    old = _get(record, path)
    if op == "replace" or not path and op == "delete":
        new = copy.deepcopy(draw(HOSTILE))
    elif op == "delete":
        parent = _get(record, path[:-1])
        del parent[path[-1]]
        return record
    elif isinstance(old, str):
        new = {"upper": old.upper(), "cut": old[:-2], "extend": old + "00"}[op]
    else:
        new = copy.deepcopy(draw(HOSTILE))
    if not path:
        return new
    _get(record, path[:-1])[path[-1]] = new
    return record


def _records(draw, base: list, max_mutations: int = 4) -> tuple[list, int | None]:
    """Mutated copies of ``base`` and, maybe, the index of a record duplicated at the end."""
    records = copy.deepcopy(base)
    for _ in range(draw(st.integers(0, max_mutations))):
        i = draw(st.integers(0, len(records) - 1))
        records[i] = _mutate(records[i], draw)
    dup = draw(st.one_of(st.none(), st.integers(0, len(records) - 1)))
    if dup is not None:
        records.append(copy.deepcopy(records[dup]))
    return records, dup


EVM_REF = re.compile(r"0x[0-9a-f]{64}:[0-9]+\Z")
CDC_REF = re.compile(r".+:.+@[0-9]+(:reversal|:delete)?\Z")  # ends in the LSN of the change


def _check_entries(entries, ref):
    assert len({e.entry_id for e in entries}) == len(entries)
    for e in entries:
        decode_entry(encode_entry(e))
        assert ref.match(e.source_ref), e.source_ref  # the id says where the record is, never 'None' or junk


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_evm_logs_are_entries_or_rejections(data):
    base = data.draw(st.sampled_from(EVM_INPUTS))
    logs, dup = _records(data.draw, base)
    as_file = data.draw(st.sampled_from(["json", "jsonl"]))
    path = _TMP / f"logs.{as_file}"
    text = json.dumps({"jsonrpc": "2.0", "result": logs}) if as_file == "json" else \
        "\n".join(json.dumps(lg) for lg in logs)
    path.write_text(text)
    try:
        read, bad_lines = _read_logs(str(path))
    except ValueError:
        return  # the file as a whole is unreadable: normalize names it and exits 2
    ctx = LogContext(ledger="evm", block_timestamps=STAMPS, decoders={PAYMENT_RECORDED_TOPIC: decode_payment_recorded})
    ctx.memos = memos_of(read)
    entries, rejections, accepted = logs_to_entries(read, ctx)
    assert accepted == len(entries) and accepted + len(rejections) == len(read)
    rejected = {r.index for r in rejections}
    assert len(rejected) == len(rejections) and rejected <= set(range(len(read)))
    _check_entries(entries, EVM_REF)
    if dup is not None and as_file == "json" and len(read) == len(logs) and dup not in rejected:
        # the original became an entry: its copy at the end is the same log again
        assert len(read) - 1 in rejected
        (r,) = [r for r in rejections if r.index == len(read) - 1]
        assert "duplicate" in r.reason and f"log #{dup}" in r.reason


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_debezium_events_are_entries_or_rejections(data):
    n = data.draw(st.integers(1, 6))
    start = data.draw(st.integers(0, len(CDC_LINES) - n))
    events, dup = _records(data.draw, CDC_LINES[start:start + n])
    lines = [json.dumps(ev) for ev in events]
    if data.draw(st.booleans()):  # a line cut short, as a truncated file ends
        i = data.draw(st.integers(0, len(lines) - 1))
        lines[i] = lines[i][: data.draw(st.integers(1, max(1, len(lines[i]) - 1)))]
    raw = "\n".join(lines).encode()
    entries, rejections, accepted = debezium_events_to_entries(raw, CDC_MAPPING, "products_cdc")
    records = sum(1 for line in raw.splitlines() if line.strip())
    assert accepted + len(rejections) == records
    assert len(entries) >= accepted
    _check_entries(entries, CDC_REF)
    rejected = {r.index for r in rejections}
    assert len(rejected) == len(rejections) and rejected <= set(range(records))
    if dup is not None and lines[-1] == lines[dup] and dup not in rejected:
        (r,) = [r for r in rejections if r.index == records - 1]
        assert "duplicate" in r.reason and f"line {dup + 1}" in r.reason
