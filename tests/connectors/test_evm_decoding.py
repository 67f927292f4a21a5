"""ERC-20 Transfer decoding against ethereum-etl's expected output for recorded mainnet data."""

from __future__ import annotations

import csv
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import REALDATA
from ledger_pipelines.connectors.evm.decoding import (
    TRANSFER_TOPIC,
    LogContext,
    TokenConfig,
    block_timestamps_of,
    decode_transfer_log,
    log_to_entry,
    logs_of,
)
from ledger_pipelines.model import EntryError, encode_entry

EVM = REALDATA / "evm"


def _etl_rows(transfers):
    return [{"token_address": t.token, "from_address": t.sender, "to_address": t.receiver, "value": str(t.value),
             "transaction_hash": t.tx_hash, "log_index": str(t.log_index), "block_number": str(t.block_number)}
            for t in transfers]


def _transfers(logs):
    return [decode_transfer_log(log) for log in logs if log_is_erc20(log)]


def log_is_erc20(log):
    topics = log["topics"].split(",") if isinstance(log["topics"], str) else log["topics"]
    return topics[0].lower() == TRANSFER_TOPIC and len(topics) == 3


def test_set1_filter_logs_equal_ethereum_etl():
    d = EVM / "block_483920_export_token_transfers"
    logs = logs_of(json.loads((d / "web3_response.eth_getFilterLogs_0x0.json").read_text()))
    expected = list(csv.DictReader((d / "expected_token_transfers.csv").read_text().splitlines()))
    assert _etl_rows(_transfers(logs)) == expected


def test_set2_receipt_logs_equal_ethereum_etl_and_timestamps_come_from_blocks():
    d = EVM / "block_1755635_stream"
    logs = []
    for f in sorted(d.glob("web3_response.eth_getTransactionReceipt_*.json")):
        logs += logs_of(json.loads(f.read_text()))
    assert len(logs) == 2  # a Transfer and a 3-topic non-Transfer event
    expected = [json.loads(line) for line in (d / "expected_token_transfers.json").read_text().splitlines()]
    got = _transfers(logs)
    # ethereum-etl's JSON stores value as a number: compare as exact integers
    assert [(t.token, t.sender, t.receiver, t.value, t.tx_hash, t.log_index, t.block_number, t.block_hash)
            for t in got] == [(x["token_address"], x["from_address"], x["to_address"], int(x["value"]),
                               x["transaction_hash"], x["log_index"], x["block_number"], x["block_hash"])
                              for x in expected]
    stamps = block_timestamps_of(json.loads(f.read_text()) for f in d.glob("web3_response.eth_getBlockByNumber_0x*"))
    ctx = LogContext(ledger="eth_dao", block_timestamps=stamps,
                     tokens={got[0].token: TokenConfig(got[0].token, "DAO", 16)})
    entries = [e for e in (log_to_entry(log, ctx) for log in logs) if e is not None]
    assert len(entries) == 1
    e = entries[0]
    assert e.booked_at == expected[0]["item_timestamp"] and e.amount == "500" and e.asset == "DAO"
    assert e.entry_id == f"eth_dao:{expected[0]['transaction_hash']}:0"
    assert e.attributes["raw_value"] == "5000000000000000000"


def test_set3_ethereum_etl_logs_csv_with_values_beyond_2_64():
    d = EVM / "block_1452581_extract_from_logs_csv"
    logs = list(csv.DictReader((d / "logs.csv").read_text().splitlines()))
    expected = list(csv.DictReader((d / "expected_token_transfers.csv").read_text().splitlines()))
    assert _etl_rows(_transfers(logs)) == expected
    assert int(expected[0]["value"]) > 2**64


def _log(**over):
    log = {"address": "0x" + "ab" * 20, "topics": [TRANSFER_TOPIC, "0x" + "0" * 24 + "11" * 20, "0x" + "0" * 24 + "22" * 20],
           "data": "0x" + "f" * 64, "transactionHash": "0x" + "cd" * 32, "logIndex": "0x7", "blockNumber": "0x10",
           "blockHash": "0x" + "ee" * 32}
    log.update(over)
    return log


def test_uint256_max_is_exact_end_to_end():
    ctx = LogContext(ledger="eth_x", block_timestamps={16: 1_700_000_000})
    e = log_to_entry(_log(), ctx)
    assert e.amount == str(2**256 - 1) and b'"amount":"' + str(2**256 - 1).encode() in encode_entry(e)


@pytest.mark.parametrize("over, reason", [
    ({"topics": [TRANSFER_TOPIC, "0x" + "0" * 24 + "11" * 20, "0x" + "0" * 24 + "22" * 20, "0x" + "0" * 63 + "1"]},
     "4 topics"),
    ({"data": "0x1234"}, "2 bytes"),
    ({"topics": [TRANSFER_TOPIC, "0x" + "11" * 32, "0x" + "0" * 24 + "22" * 20]}, "not a left-padded address"),
])
def test_malformed_transfer_logs_are_refused_with_the_log_named(over, reason):
    with pytest.raises(EntryError) as exc:
        decode_transfer_log(_log(**over))
    assert reason in str(exc.value) and "0x" + "cd" * 32 + ":7" in str(exc.value)


def test_non_transfer_logs_are_not_entries():
    ctx = LogContext(ledger="eth_x", block_timestamps={16: 1})
    assert log_to_entry(_log(topics=["0x" + "12" * 32]), ctx) is None


_HEXES = {"transactionHash": 32, "blockHash": 32, "data": 32, "address": 20}


@st.composite
def _variants(draw):
    """A Transfer log in one of the forms it comes in, or broken: hex in either case, with or without
    its prefix, as bytes, of the wrong length; quantities as hex, ints or text; fields missing or null."""
    log = _log(logIndex=hex(draw(st.integers(0, 2**64))), blockNumber=hex(draw(st.integers(0, 2**64))),
               data="0x" + draw(st.binary(min_size=32, max_size=32)).hex(),
               removed=draw(st.sampled_from([False, True, None, "true"])))
    for key in draw(st.lists(st.sampled_from([*_HEXES, "logIndex", "blockNumber", "topics", "removed"]),
                             max_size=3, unique=True)):
        value = log[key]
        change = draw(st.sampled_from(["upper", "0X", "bare", "bytes", "short", "int", "none", "drop", "junk"]))
        if key == "topics":
            topics = list(value)
            i = draw(st.integers(0, 2))
            t = topics[i]
            topics[i] = {"upper": t.upper, "0X": lambda: "0X" + t[2:], "short": lambda: t[:-2],
                         "bytes": lambda: bytes.fromhex(t[2:])}.get(change, lambda: t + "0")()
            log["topics"] = topics if change != "drop" else topics[:2]
        elif change == "drop":
            del log[key]
        elif change == "none":
            log[key] = None
        elif change == "junk":
            log[key] = draw(st.sampled_from(["", "0x", "0xzz", 7, 1.5, ["0x1"]]))
        elif key == "removed":
            log[key] = draw(st.sampled_from([1, "false", 0]))
        elif key in ("logIndex", "blockNumber"):
            log[key] = {"int": lambda: int(value, 16), "upper": value.upper, "0X": lambda: "0X" + value[2:],
                        "bare": lambda: str(int(value, 16))}.get(change, lambda: value + "g")()
        else:
            log[key] = {"upper": value.upper, "0X": lambda: "0X" + value[2:], "bare": lambda: value[2:],
                        "bytes": lambda: bytes.fromhex(value[2:]), "short": lambda: value[:-2]}.get(
                            change, lambda: value + "00")()
    return log


@settings(max_examples=400, deadline=None)
@given(_variants())
def test_the_fast_reading_of_node_logs_equals_the_general_one(log):
    """Logs as JSON-RPC nodes write them take a shortcut; whatever the form, the Transfer, or the reason
    a log is refused, is the general reading's."""
    from ledger_pipelines.connectors.evm.decoding import _decode_any_transfer_log

    def outcome(fn):
        try:
            return fn(dict(log))
        except EntryError as exc:
            return f"refused: {exc}"

    assert outcome(decode_transfer_log) == outcome(_decode_any_transfer_log)


@pytest.mark.parametrize("over", [
    # fields whose joined text reads as a log's: each field is held to its own length and form
    {"topics": [TRANSFER_TOPIC, "0x" + "0" * 24 + "11" * 20 + "0x" + "0" * 24 + "22" * 20, ""]},
    {"transactionHash": "0x" + "cd" * 31, "blockHash": "cd" + "0x" + "ee" * 32},
    {"blockNumber": "0x10", "logIndex": "x20"},
    {"blockNumber": "0x100x7", "logIndex": ""},
])
def test_a_log_whose_fields_only_read_right_joined_is_refused(over):
    from ledger_pipelines.connectors.evm.decoding import _decode_any_transfer_log

    log = _log(**over)
    with pytest.raises(EntryError) as general:
        _decode_any_transfer_log(dict(log))
    with pytest.raises(EntryError) as fast:
        decode_transfer_log(dict(log))
    assert str(fast.value) == str(general.value)
