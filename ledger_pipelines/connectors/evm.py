"""EVM chains: ERC-20 ``Transfer`` logs (and pluggable decoders for other events) to canonical entries.

Mapping is pure: :func:`decode_transfer_log` slices topics and reads one uint256 by hand (web3's
generic event decoding is two orders of magnitude slower), :func:`transfer_log_to_entry` builds the
entry. Logs may come from JSON-RPC (hex quantities), web3 (ints, HexBytes) or ethereum-etl CSV.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone

from typing import Any

import msgspec

from ..model import CanonicalEntry, EntryError, format_amount, format_timestamp, make_entry, scaled_decimal

TRANSFER_TOPIC = "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef"
# LedgerToken's Memo(string): the payment reference of the Transfer logged just before it in the same tx
MEMO_TOPIC = "0xb0734c6ca9ae9b7406dd80224cb0488aed0928eef358da7449505fa59b8d7a2a"
# LedgerBridge's PaymentRecorded(string paymentReference, bytes32 indexed referenceHash, string asset,
#                                uint256 amount, uint8 scale, string sourceEntryId)
PAYMENT_RECORDED_TOPIC = "0x867cbe6b28b330524493d45b426dcefe2964906512428d4652799bcae7dd02d0"
MAX_MEMO_BYTES = 256
_ZERO_PAD = "0" * 24


class Transfer(msgspec.Struct, frozen=True, gc=False):
    token: str
    sender: str
    receiver: str
    value: int
    tx_hash: str
    log_index: int
    block_number: int
    block_hash: str | None
    removed: bool = False


@dataclass(frozen=True)
class TokenConfig:
    address: str
    symbol: str | None = None
    decimals: int | None = None

    def asset(self) -> str:
        return self.symbol if self.symbol and self.decimals is not None else f"erc20:{self.address}"

    def amount(self, value: int) -> str:
        if self.decimals is None or self.symbol is None:
            return str(value)
        # normalised: 500 tokens of 16 decimals read 500, not 500.0000000000000000
        return format_amount(scaled_decimal(value, self.decimals, normalize=True))


def _hex(v: Any) -> str:
    if isinstance(v, (bytes, bytearray)):
        return "0x" + bytes(v).hex()
    s = str(v)
    return s.lower() if s.startswith("0x") else "0x" + s.lower()


def _int(v: Any) -> int:
    if isinstance(v, int):
        return v
    s = str(v)
    return int(s, 16) if s.startswith(("0x", "0X")) else int(s)


def _topics(log: dict) -> list[str]:
    topics = log.get("topics") or []
    if isinstance(topics, str):  # ethereum-etl CSV: comma-joined
        topics = [t for t in topics.split(",") if t]
    return [_hex(t) for t in topics]


def log_ref(log: dict) -> str:
    """``<tx_hash>:<log_index>`` of a log, for error messages and source references."""
    try:
        return f"{_hex(log.get('transactionHash') or log.get('transaction_hash'))}:{_int(log.get('logIndex', log.get('log_index')))}"
    except Exception:
        return "<log without transaction hash / log index>"


def decode_transfer_log(log: dict) -> Transfer:
    """An ERC-20 Transfer (topic0 Transfer, exactly 3 topics, 32-byte data); EntryError otherwise.

    Hot path: a JSON-RPC log (hex strings) is sliced by hand; other shapes are normalised first.
    """
    topics = log.get("topics")
    data = log.get("data")
    if type(topics) is list and len(topics) == 3 and type(data) is str:
        t0, t1, t2 = topics
        if type(t0) is not str or type(t1) is not str or type(t2) is not str:
            topics, data = _topics(log), _hex(data)
            t0, t1, t2 = topics
    else:
        topics, data = _topics(log), _hex(log.get("data") or "0x")
        if len(topics) != 3:
            return _refuse(log, topics, data)
        t0, t1, t2 = topics
    if len(data) != 66 or len(t1) != 66 or len(t2) != 66 or t1[2:26] != _ZERO_PAD or t2[2:26] != _ZERO_PAD \
            or (t0 != TRANSFER_TOPIC and t0.lower() != TRANSFER_TOPIC):
        return _refuse(log, [t0, t1, t2], data)
    try:
        value = int(data, 16)
        bn = log["blockNumber"] if "blockNumber" in log else log.get("block_number")
        li = log["logIndex"] if "logIndex" in log else log.get("log_index")
        block_number = int(bn, 16) if type(bn) is str and bn[:2] == "0x" else int(bn)
        log_index = int(li, 16) if type(li) is str and li[:2] == "0x" else int(li)
    except (TypeError, ValueError) as exc:
        raise EntryError(f"log {log_ref(log)}: {exc}") from None
    tx = log["transactionHash"] if "transactionHash" in log else log.get("transaction_hash")
    bh = log["blockHash"] if "blockHash" in log else log.get("block_hash")
    token = log.get("address")
    return Transfer(
        token=token.lower() if type(token) is str else _hex(token), sender="0x" + t1[26:].lower(),
        receiver="0x" + t2[26:].lower(), value=value, tx_hash=tx.lower() if type(tx) is str else _hex(tx),
        log_index=log_index, block_number=block_number,
        block_hash=(bh.lower() if type(bh) is str else _hex(bh)) if bh else None,
        removed=log.get("removed") is True,
    )


def _refuse(log: dict, topics: list, data: str):
    ref = log_ref(log)
    topics = [t.lower() for t in topics]
    if not topics or topics[0] != TRANSFER_TOPIC:
        raise EntryError(f"log {ref}: not a Transfer event (topic0 {topics[0] if topics else None})")
    if len(topics) != 3:
        raise EntryError(f"log {ref}: Transfer with {len(topics)} topics is not ERC-20 (ERC-721 indexes the token id)")
    if len(data) != 66:
        raise EntryError(f"log {ref}: Transfer data is {(len(data) - 2) // 2} bytes, an ERC-20 value takes 32")
    for t in topics[1:]:
        if len(t) != 66 or t[2:26] != _ZERO_PAD:
            raise EntryError(f"log {ref}: topic {t} is not a left-padded address")
    raise EntryError(f"log {ref}: malformed Transfer")


def transfer_log_to_entry(
    t: Transfer,
    ledger: str,
    block_timestamp: int,
    status: str = "final",
    token: TokenConfig | None = None,
    watched: str | None = None,
    confirmations: int | None = None,
    correlation_id: str | None = None,
) -> CanonicalEntry:
    """Seen from ``watched`` when it is one side, else sender -> receiver as a debit of the sender."""
    token = token or TokenConfig(t.token)
    account, counterparty, direction = t.sender, t.receiver, "debit"
    if watched is not None and t.receiver == watched and t.sender != watched:
        account, counterparty, direction = t.receiver, t.sender, "credit"
    position = {"block_number": t.block_number, "block_hash": t.block_hash, "log_index": t.log_index,
                "transaction_hash": t.tx_hash}
    if confirmations is not None:
        position["confirmations"] = confirmations
    return make_entry(
        ledger=ledger, ledger_kind="evm", source_ref=f"{t.tx_hash}:{t.log_index}", correlation_id=correlation_id,
        account=account, counterparty=counterparty, asset=token.asset(), amount=token.amount(t.value),
        direction=direction,
        booked_at=format_timestamp(datetime.fromtimestamp(block_timestamp, tz=timezone.utc)),
        value_date=None, status=status, position=position,
        attributes={"token_address": t.token, "raw_value": str(t.value), "from": t.sender, "to": t.receiver},
    )


# -- ABI words by hand (the project's own events: dynamic strings and integers) ---------------------
def _abi_word(data: bytes, i: int) -> int:
    if len(data) < 32 * (i + 1):
        raise ValueError(f"data ends before word {i}")
    return int.from_bytes(data[32 * i:32 * (i + 1)], "big")


def _abi_string(data: bytes, head: int, limit: int = MAX_MEMO_BYTES) -> str:
    offset = _abi_word(data, head)
    if offset % 32 or offset + 32 > len(data):
        raise ValueError(f"string offset {offset} outside the data")
    length = int.from_bytes(data[offset:offset + 32], "big")
    if length > limit or offset + 32 + length > len(data):
        raise ValueError(f"string of {length} bytes (limit {limit}) outside the data")
    return data[offset + 32:offset + 32 + length].decode("utf-8")


def _data(log: dict) -> bytes:
    d = log.get("data") or "0x"
    return bytes(d) if isinstance(d, (bytes, bytearray)) else bytes.fromhex(str(d)[2:] if str(d)[:2] == "0x" else str(d))


def memos_of(logs: Iterable[dict]) -> dict[tuple[str, int], str]:
    """(tx hash, log index of the Transfer) -> memo, from ``Memo`` logs (a Memo follows its Transfer)."""
    out: dict[tuple[str, int], str] = {}
    for lg in logs:
        topics = lg.get("topics") or []
        if not topics or _hex(topics[0]) != MEMO_TOPIC:
            continue
        try:
            memo = _abi_string(_data(lg), 0)
            tx = _hex(lg.get("transactionHash") or lg.get("transaction_hash"))
            index = _int(lg["logIndex"] if "logIndex" in lg else lg.get("log_index"))
        except (ValueError, TypeError, KeyError, UnicodeDecodeError):
            continue  # an unreadable memo leaves the transfer uncorrelated; the transfer itself is still an entry
        if memo:
            out[(tx, index - 1)] = memo
    return out


def decode_payment_recorded(log: dict, ctx: "LogContext") -> CanonicalEntry:
    """A ``LedgerBridge.PaymentRecorded`` log: the on-chain record of a payment of another ledger."""
    ref = log_ref(log)
    try:
        data = _data(log)
        reference, asset = _abi_string(data, 0), _abi_string(data, 1)
        amount, scale = _abi_word(data, 2), _abi_word(data, 3)
        source_entry_id = _abi_string(data, 4)
        block = _int(log["blockNumber"] if "blockNumber" in log else log.get("block_number"))
        index = _int(log["logIndex"] if "logIndex" in log else log.get("log_index"))
        tx = _hex(log.get("transactionHash") or log.get("transaction_hash"))
    except (ValueError, TypeError, KeyError, UnicodeDecodeError) as exc:
        raise EntryError(f"log {ref}: malformed PaymentRecorded event: {exc}") from None
    if scale > 77:
        raise EntryError(f"log {ref}: PaymentRecorded scale {scale} is not a decimal scale")
    ts = ctx.block_timestamps.get(block)
    if ts is None:
        raise EntryError(f"log {ref}: no timestamp for block {block}")
    bh = log.get("blockHash") or log.get("block_hash")
    status = "orphaned" if log.get("removed") is True else ctx.status_of(block)
    return make_entry(
        ledger=ctx.ledger, ledger_kind="evm", source_ref=f"{tx}:{index}", correlation_id=reference,
        account=_hex(log.get("address")), counterparty=None, asset=asset,
        amount=format_amount(scaled_decimal(amount, scale)), direction="credit",
        booked_at=format_timestamp(datetime.fromtimestamp(ts, tz=timezone.utc)), value_date=None, status=status,
        position={"block_number": block, "block_hash": _hex(bh) if bh else None, "log_index": index,
                  "transaction_hash": tx},
        attributes={"event": "PaymentRecorded", "source_entry_id": source_entry_id, "raw_amount": str(amount),
                    "scale": scale},
    )


# A decoder turns a log into an entry or raises EntryError; the bridge contract registers one.
LogDecoder = Callable[[dict, "LogContext"], CanonicalEntry]


@dataclass
class LogContext:
    ledger: str
    block_timestamps: dict[int, int]
    tokens: dict[str, TokenConfig] = field(default_factory=dict)
    watched: str | None = None
    status_of: Callable[[int], str] = lambda _block: "final"
    decoders: dict[str, LogDecoder] = field(default_factory=dict)  # topic0 -> decoder
    memos: dict[tuple[str, int], str] = field(default_factory=dict)  # see memos_of
    transfers: bool = True  # False: only the registered decoders' events are entries


def log_to_entry(log: dict, ctx: LogContext) -> CanonicalEntry | None:
    """The entry of one log: a Transfer, an event with a registered decoder, or None (not ours)."""
    topics = _topics(log)
    if not topics:
        return None
    decoder = ctx.decoders.get(topics[0])
    if decoder is not None:
        return decoder(log, ctx)
    if topics[0] != TRANSFER_TOPIC or not ctx.transfers:
        return None
    t = decode_transfer_log(log)
    if ctx.tokens and t.token not in ctx.tokens:
        return None
    if ctx.watched and ctx.watched not in (t.sender, t.receiver):
        return None
    ts = ctx.block_timestamps.get(t.block_number)
    if ts is None and log.get("blockTimestamp") is not None:  # nodes that include it in logs
        ts = _int(log["blockTimestamp"])
    if ts is None:
        raise EntryError(f"log {t.tx_hash}:{t.log_index}: no timestamp for block {t.block_number}")
    status = "orphaned" if t.removed else ctx.status_of(t.block_number)
    return transfer_log_to_entry(t, ctx.ledger, ts, status, ctx.tokens.get(t.token), ctx.watched,
                                 correlation_id=ctx.memos.get((t.tx_hash, t.log_index)) if ctx.memos else None)


def logs_of(doc: Any) -> list[dict]:
    """Logs from an ``eth_getLogs`` / ``eth_getFilterLogs`` response, a receipt, or a list of either."""
    if isinstance(doc, dict) and "result" in doc:
        doc = doc["result"]
    if isinstance(doc, dict) and "logs" in doc:
        return list(doc["logs"])
    if isinstance(doc, list):
        out = []
        for item in doc:
            out.extend(logs_of(item) if isinstance(item, dict) and ("logs" in item or "result" in item) else [item])
        return out
    raise ValueError("expected a JSON-RPC logs result, a receipt, or a list of logs")


def block_timestamps_of(docs: Iterable[Any]) -> dict[int, int]:
    """block number -> timestamp from ``eth_getBlockByNumber`` responses."""
    out = {}
    for doc in docs:
        block = doc.get("result", doc) if isinstance(doc, dict) else None
        if isinstance(block, dict) and "timestamp" in block and "number" in block:
            out[_int(block["number"])] = _int(block["timestamp"])
    return out
