"""Hostile EVM logs through ``normalize --kind evm-logs``: every log an entry or a named rejection.

Each case runs the real command in a subprocess (exit status, stdout and stderr as a user sees
them) on a generated file holding a valid Transfer log beside the hostile one, so a test cannot pass
by refusing everything.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ledger_pipelines.connectors.evm.decoding import TRANSFER_TOPIC, LogContext, logs_to_entries
from ledger_pipelines.model import decode_entry

TX = "0x" + "cd" * 32
BLOCK_TS = 1_700_000_000
TRANSFER_UPPER = "0x" + TRANSFER_TOPIC[2:].upper()


def _log(i: int = 7, **over) -> dict:
    log = {"address": "0x" + "ab" * 20, "topics": [TRANSFER_TOPIC, "0x" + "0" * 24 + "11" * 20,
                                                   "0x" + "0" * 24 + "22" * 20],
           "data": "0x" + "0" * 62 + "64", "transactionHash": TX, "logIndex": hex(i), "blockNumber": "0x10",
           "blockHash": "0x" + "ee" * 32, "blockTimestamp": hex(BLOCK_TS)}
    log.update(over)
    return {k: v for k, v in log.items() if v is not _DROP}


_DROP = object()


def normalize(tmp_path, logs_or_text, *args: str):
    """(exit status, entries on stdout, JSON lines on stderr without the summary, the summary)."""
    f = tmp_path / "logs.json"
    f.write_text(logs_or_text if isinstance(logs_or_text, str) else json.dumps({"jsonrpc": "2.0", "result": logs_or_text}))
    proc = subprocess.run([sys.executable, "-m", "ledger_pipelines.cli", "normalize", "--kind", "evm-logs", str(f),
                           *args], capture_output=True, timeout=60)
    err = proc.stderr.decode()
    assert "Traceback" not in err, err
    lines = [json.loads(line) for line in err.splitlines()]  # every stderr line is one JSON object
    assert proc.stdout == b"" or proc.stdout.endswith(b"\n")  # never a half-written line
    entries = [decode_entry(line) for line in proc.stdout.splitlines()]  # only complete, valid entries
    summary = [x for x in lines if "records" in x]
    errors = [x for x in lines if "records" not in x]
    if summary:
        (s,) = summary
        assert s["records"] == s["entries"] + s["rejections"] and s["entries"] == len(entries)
        assert s["rejections"] + s["unreadable_files"] == len(errors)
    return proc.returncode, entries, errors, summary[0] if summary else None


def _one_rejection(tmp_path, hostile: dict | None, reason: str):
    rc, entries, errors, s = normalize(tmp_path, [_log(1), hostile])
    assert rc == 0
    assert [e.source_ref for e in entries] == [f"{TX}:1"]
    assert s["records"] == 2 and s["rejections"] == 1
    (err,) = errors
    assert "log #1" in err["source"] and "logs.json" in err["source"]
    assert reason in err["error"], err
    return err


@pytest.mark.parametrize("over", [dict(transactionHash=None, blockNumber=None, blockHash=None, logIndex=None),
                                  dict(transactionHash=None)])
def test_a_pending_log_is_a_rejection_not_evm_0xnone(tmp_path, over):
    _one_rejection(tmp_path, _log(**over), "pending log (no transaction hash)")


def test_a_log_without_a_transaction_hash_key_gets_no_id(tmp_path):
    _one_rejection(tmp_path, _log(transactionHash=_DROP), "pending log (no transaction hash)")


def test_a_log_without_a_block_number_is_pending(tmp_path):
    _one_rejection(tmp_path, _log(blockNumber=None), "pending log (no block number)")


@pytest.mark.parametrize("topic0", ["0X" + TRANSFER_TOPIC[2:], TRANSFER_UPPER, "0X" + TRANSFER_TOPIC[2:].upper()])
def test_transfer_topic0_in_any_case_is_a_transfer(tmp_path, topic0):
    hostile = _log(2, topics=[topic0, "0X" + "0" * 24 + "AB" * 20, "0x" + "0" * 24 + "Cd" * 20],
                   transactionHash=TX.upper().replace("0X", "0x"), address="0X" + "EF" * 20)
    rc, entries, errors, s = normalize(tmp_path, [_log(1), hostile])
    assert rc == 0 and errors == [] and s["entries"] == 2
    e = entries[1]
    assert e.entry_id == f"evm:{TX}:2"  # hex written lower-case, so the id is the same in any case
    assert (e.account, e.counterparty) == ("0x" + "ab" * 20, "0x" + "cd" * 20)
    assert e.asset == "erc20:0x" + "ef" * 20


@pytest.mark.parametrize("ts, reason", [
    (hex(253_402_300_800), "years 1970-9999"),  # 10000-01-01T00:00:00Z
    (-1, "blockTimestamp: -1 is outside"),
    (1.7e9, "blockTimestamp: '1700000000.0' is not a number"),
    ("abc", "blockTimestamp: 'abc' is not a number"),
    ("0x", "blockTimestamp"),
    (True, "blockTimestamp: 'True' is not a number"),
])
def test_a_block_timestamp_out_of_range_or_not_an_integer_is_a_rejection(tmp_path, ts, reason):
    _one_rejection(tmp_path, _log(2, blockTimestamp=ts), reason)


def test_a_null_among_the_logs_is_a_rejection(tmp_path):
    _one_rejection(tmp_path, None, "not a JSON object")


@pytest.mark.parametrize("data, reason", [
    ("0x01" + "00" * 32, "33 bytes"),  # a value above 2^256-1 needs a 33rd byte
    ("0x" + "ff" * 31, "31 bytes"),
    ("0x" + "f" * 63, "not hex of whole bytes"),
    ("0x" + "zz" * 32, "not hex"),
    ({"v": 1}, "data"),
])
def test_transfer_data_that_is_no_uint256_is_a_rejection(tmp_path, data, reason):
    _one_rejection(tmp_path, _log(2, data=data), reason)


@pytest.mark.parametrize("topics, reason", [
    ([TRANSFER_TOPIC, "0x" + "11" * 20, "0x" + "0" * 24 + "22" * 20], "topic 1: 20 bytes, expected 32"),
    ([TRANSFER_TOPIC, "0x" + "0" * 24 + "1g" * 20, "0x" + "0" * 24 + "22" * 20], "not hex"),
    ([TRANSFER_TOPIC, 17, "0x" + "0" * 24 + "22" * 20], "topic 1"),
    ({"0": TRANSFER_TOPIC}, "not a list"),
    ([TRANSFER_TOPIC[:-2]], "topic 0: 31 bytes"),
])
def test_topics_that_are_not_32_byte_hex_are_a_rejection(tmp_path, topics, reason):
    _one_rejection(tmp_path, _log(2, topics=topics), reason)


@pytest.mark.parametrize("index", ["abc", 1.5, None, -1, "0x", "0x" + "f" * 20, [3]])
def test_a_log_index_that_is_not_a_number_is_a_rejection(tmp_path, index):
    _one_rejection(tmp_path, _log(logIndex=index), "logIndex")


def test_a_duplicate_log_is_rejected_naming_both_positions(tmp_path):
    rc, entries, errors, s = normalize(tmp_path, [_log(1), _log(2), _log(1)])
    assert rc == 0 and [e.source_ref for e in entries] == [f"{TX}:1", f"{TX}:2"]
    (err,) = errors
    assert "log #2" in err["source"] and "duplicate" in err["error"] and "log #0" in err["error"]
    assert s == {**s, "records": 3, "entries": 2, "rejections": 1}


def test_logs_of_other_events_are_named_rejections_so_the_count_holds(tmp_path):
    rc, entries, errors, s = normalize(tmp_path, [_log(1), _log(2, topics=["0x" + "12" * 32]), _log(3, topics=[])])
    assert rc == 0 and len(entries) == 1 and s["records"] == 3 and s["rejections"] == 2
    assert "neither an ERC-20 Transfer" in errors[0]["error"] and "anonymous" in errors[1]["error"]


@pytest.mark.parametrize("spec, reason", [("0x" + "ab" * 20 + ":USDC:abc", "decimals 'abc'"),
                                          ("0x" + "ab" * 20 + ":USDC:-1", "decimals '-1'"),
                                          ("0x1234:USDC:6", "address: 2 bytes"),
                                          ("nothex:USDC:6", "not hex")])
def test_a_bad_token_option_is_one_line_and_exit_2(tmp_path, spec, reason):
    rc, entries, errors, s = normalize(tmp_path, [_log(1)], "--token", spec)
    assert rc == 2 and entries == [] and s is None
    (err,) = errors
    assert err["source"] == "--token" and reason in err["error"]


def test_a_good_token_option_still_scales(tmp_path):
    rc, entries, _, _ = normalize(tmp_path, [_log(1)], "--token", "0x" + "AB" * 20 + ":USDC:2")
    assert rc == 0 and (entries[0].asset, entries[0].amount) == ("USDC", "1")


@pytest.mark.parametrize("content, reason", [(None, "No such file"), ("{not json", "not eth_getBlockByNumber"),
                                             ('{"result": {"number": "0x10", "timestamp": "abc"}}', "timestamp")])
def test_a_bad_blocks_file_is_one_line_and_exit_2(tmp_path, content, reason):
    blocks = tmp_path / "blocks.json"
    if content is not None:
        blocks.write_text(content)
    rc, entries, errors, s = normalize(tmp_path, [_log(1)], "--blocks", str(blocks))
    assert rc == 2 and entries == [] and s is None
    (err,) = errors
    assert "--blocks" in err["source"] and reason in err["error"]


def test_block_timestamps_from_a_blocks_file_in_the_year_10000_reject_their_logs(tmp_path):
    blocks = tmp_path / "blocks.json"
    blocks.write_text(json.dumps({"result": {"number": "0x11", "hash": "0x" + "aa" * 32,
                                             "timestamp": hex(253_402_300_800)}}))
    _one = _log(2, blockNumber="0x11", blockTimestamp=_DROP)
    rc, entries, errors, s = normalize(tmp_path, [_log(1), _one], "--blocks", str(blocks))
    assert rc == 0 and len(entries) == 1 and "block 17 timestamp" in errors[0]["error"]


@pytest.mark.parametrize("text", ["not json at all", '{"result": null}', '{"result": {"logs": 5}}'])
def test_an_unreadable_logs_file_exits_2_naming_it(tmp_path, text):
    rc, entries, errors, s = normalize(tmp_path, text)
    assert rc == 2 and entries == []
    (err,) = errors
    assert err["source"].endswith("logs.json") and "not a logs file" in err["error"]
    assert s["records"] == 0 and s["unreadable_files"] == 1


def test_a_bad_line_of_a_json_lines_logs_file_is_one_rejection(tmp_path):
    text = json.dumps(_log(1)) + "\n{truncated\n" + json.dumps(_log(2)) + "\n"
    rc, entries, errors, s = normalize(tmp_path, text)
    assert rc == 0 and len(entries) == 2 and s["records"] == 3
    (err,) = errors
    assert err["source"].endswith("line 2")


def test_the_mapper_counts_every_log():
    ctx = LogContext(ledger="evm", block_timestamps={})
    logs = [_log(1), None, _log(1), _log(2, topics="x"), 5, _log(3, data="0x")]
    entries, rejections, accepted = logs_to_entries(logs, ctx)
    assert accepted == len(entries) == 1 and len(rejections) == 5
    assert [r.index for r in rejections] == [1, 2, 3, 4, 5]


def _memo(i: int, data: str) -> dict:
    from ledger_pipelines.connectors.evm.decoding import MEMO_TOPIC

    return {**_log(i), "topics": [MEMO_TOPIC], "data": data}


def _abi_string(text: bytes) -> str:
    return "0x" + (32).to_bytes(32, "big").hex() + len(text).to_bytes(32, "big").hex() + text.ljust(32, b"\0").hex()


def test_a_readable_memo_correlates_its_transfer_and_an_unreadable_one_is_a_dead_letter_naming_it():
    from ledger_pipelines.connectors.evm.decoding import memos_of

    good = [_log(7), _memo(8, _abi_string(b"E2E-1"))]
    bad = [_log(7), _memo(8, _abi_string(b"\xff\xfe not utf-8"))]
    for logs, corr in ((good, "E2E-1"), (bad, None)):
        ctx = LogContext(ledger="evm", block_timestamps={16: 1_700_000_000}, memos=memos_of(logs))
        mapped = logs_to_entries(logs, ctx)
        assert [e.correlation_id for e in mapped.entries] == [corr]
        (rejection,) = mapped.rejections
        if corr:
            assert rejection.not_an_entry  # a readable Memo is no entry of its own
        else:  # counted and dead-lettered: the transfer lost its correlation, and the reason says so
            assert not rejection.not_an_entry and "unreadable Memo" in rejection.reason
            assert "keeps no correlation_id" in rejection.reason
