"""Golden outputs: every committed real record file that the project maps to canonical entries is
mapped again and compared, byte for byte, with its reviewed output under ``tests/data/golden/``.

For an input ``tests/data/<dir>/<file>``, ``golden/<dir>/<file>.entries.jsonl`` holds its entries as
``ledger-pipelines normalize`` writes them (canonical JSON, one a line) and, when the mapper sets
records aside, ``golden/<dir>/<file>.rejections.jsonl`` holds them (JSON, sorted keys, one a line).

After a deliberate change of a mapping, regenerate them and read the diff before committing it (a
golden file that freezes a wrong value is a defect, not a test):

    .venv/bin/python tests/test_golden.py --regenerate
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from conftest import REALDATA
from ledger_pipelines.cli import _read_logs
from ledger_pipelines.config import DEFAULT_CONFIG, ledger_by_name, load_config
from ledger_pipelines.connectors.cdc.debezium import debezium_events_to_entries
from ledger_pipelines.connectors.evm.decoding import (PAYMENT_RECORDED_TOPIC, LogContext, TokenConfig,
                                             block_timestamps_of, decode_payment_recorded, logs_to_entries,
                                             memos_of)
from ledger_pipelines.connectors.iso20022 import camt_to_entries
from ledger_pipelines.model import encode_entry

GOLDEN = REALDATA / "golden"
# TheDAO token of blocks 1755634-1755635, with its 16 decimals (as tests/connectors/test_evm_decoding.py maps it)
DAO = TokenConfig("0xbb9bc244d798123fde783fcc1c72d3bb8c189413", "DAO", 16)
# (input, ledger, configured tokens); every other log file maps with the `normalize --kind evm-logs`
# defaults: ledger "evm", no token list (asset erc20:<address>, amount in the token's base units)
EVM_INPUTS = [
    ("evm/block_483920_export_token_transfers/web3_response.eth_getFilterLogs_0x0.json", "evm", ()),
    *((str(p.relative_to(REALDATA)), "evm", ()) for p in
      sorted((REALDATA / "evm" / "block_483920_receipts").glob("web3_response.eth_getTransactionReceipt_*.json"))),
    *((str(p.relative_to(REALDATA)), "eth_dao", (DAO,)) for p in
      sorted((REALDATA / "evm" / "block_1755635_stream").glob("web3_response.eth_getTransactionReceipt_*.json"))),
    ("evm/block_1452581_extract_from_logs_csv/logs.csv", "evm", ()),  # no block response: no timestamps
]
CAMT_INPUTS = [str(p.relative_to(REALDATA)) for p in sorted((REALDATA / "iso20022").glob("*.xml"))]
CDC_INPUTS = [str(p.relative_to(REALDATA)) for p in sorted((REALDATA / "cdc").glob("*.txt"))]
INPUTS = CAMT_INPUTS + [name for name, _, _ in EVM_INPUTS] + CDC_INPUTS


def _line(obj: dict) -> bytes:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False).encode() + b"\n"


def _camt(name: str) -> tuple[list, list[dict]]:
    entries, errors, _ = camt_to_entries((REALDATA / name).read_bytes())
    return entries, [{"where": r.source, "reason": r.reason, **({"payload": r.payload} if r.payload else {})}
                     for r in errors]


def _rejections(mapped) -> list[dict]:
    return [{"where": r.where, "reason": r.reason, "index": r.index, "not_an_entry": r.not_an_entry}
            for r in mapped.rejections]


def _evm(name: str) -> tuple[list, list[dict]]:
    _, ledger, tokens = next(x for x in EVM_INPUTS if x[0] == name)
    stamps = block_timestamps_of(json.loads(p.read_text())
                                 for p in sorted((REALDATA / "evm").rglob("web3_response.eth_getBlockByNumber_*.json")))
    logs, bad_lines = _read_logs(str(REALDATA / name))
    assert bad_lines == [], bad_lines
    ctx = LogContext(ledger=ledger, block_timestamps=stamps, tokens={t.address: t for t in tokens},
                     decoders={PAYMENT_RECORDED_TOPIC: decode_payment_recorded}, memos=memos_of(logs))
    mapped = logs_to_entries(logs, ctx, source=name)
    return mapped.entries, _rejections(mapped)


def _cdc(name: str) -> tuple[list, list[dict]]:
    lc = ledger_by_name(load_config(DEFAULT_CONFIG), "products_cdc")
    mapped = debezium_events_to_entries((REALDATA / name).read_bytes(), lc.mapping, lc.name, source=name)
    return mapped.entries, _rejections(mapped)


def mapped_output(name: str) -> dict[str, bytes]:
    """golden file name -> the bytes the project's mapping of input ``name`` gives now."""
    mapper = _camt if name.startswith("iso20022/") else _cdc if name.startswith("cdc/") else _evm
    entries, rejections = mapper(name)
    out = {f"{name}.entries.jsonl": b"".join(encode_entry(e) + b"\n" for e in entries)}
    if rejections:
        out[f"{name}.rejections.jsonl"] = b"".join(map(_line, rejections))
    return out


def test_the_committed_third_party_files_are_the_byte_for_byte_copies_of_sha256sums():
    import hashlib

    listed = dict(reversed(line.split("  ", 1)) for line in (REALDATA / "SHA256SUMS").read_text().splitlines())
    present = {f"./{p.relative_to(REALDATA)}" for d in ("iso20022", "evm", "cdc", "mt940")
               for p in (REALDATA / d).rglob("*") if p.is_file()}
    assert set(listed) == present and len(present) == 42
    assert {name: hashlib.sha256((REALDATA / name).read_bytes()).hexdigest() for name in listed} == listed


def test_every_mapped_input_has_its_golden_files_and_no_golden_file_is_stale():
    expected = {golden for name in INPUTS for golden in mapped_output(name)}
    present = {str(p.relative_to(GOLDEN)) for p in GOLDEN.rglob("*.jsonl")}
    assert present == expected
    assert len(CAMT_INPUTS) == 12 and len(EVM_INPUTS) == 8 and len(CDC_INPUTS) == 2


@pytest.mark.parametrize("name", INPUTS)
def test_the_mapping_of_a_real_file_equals_its_golden_output(name):
    for golden, now in mapped_output(name).items():
        path = GOLDEN / golden
        assert path.is_file(), f"{path} is missing: run `python tests/test_golden.py --regenerate` and review it"
        # line by line first, for a readable difference; then the bytes (line ends, the last newline)
        assert now.decode().splitlines() == path.read_text().splitlines(), golden
        assert now == path.read_bytes(), golden


def regenerate() -> None:
    for old in GOLDEN.rglob("*.jsonl"):
        old.unlink()
    for name in INPUTS:
        for golden, data in mapped_output(name).items():
            path = GOLDEN / golden
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            print(f"{path.relative_to(REALDATA.parent.parent)}: {data.count(10)} lines")


if __name__ == "__main__":
    if sys.argv[1:] != ["--regenerate"]:
        sys.exit(f"usage: python {Path(__file__).name} --regenerate   (rewrites {GOLDEN}; review the diff)")
    regenerate()
