"""EVM chains: ERC-20 ``Transfer`` logs (and pluggable decoders for other events) to canonical entries.

Mapping is pure: :func:`decode_transfer_log` slices topics and reads one uint256 by hand (web3's
generic event decoding is far slower: docs/performance.md), :func:`transfer_log_to_entry` builds the entry.
Logs may come from JSON-RPC (hex quantities), web3 (ints, HexBytes) or ethereum-etl CSV.
Hex is read in any case (``0X``, upper-case digits) and written lower-case; every hash, address and
topic must have its exact length, every quantity must be a non-negative integer. A log that breaks
a rule raises :class:`EntryError` naming the log; :func:`logs_to_entries` maps a whole input and
counts every log as an entry or a rejection.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from ...model import (MAX_JSON_INT, CanonicalEntry, EntryError, Mapped, NotAnEntry, Rejection, format_amount,
                     make_entry, scaled_decimal, utc_from_epoch)

TRANSFER_TOPIC = "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef"
# LedgerToken's Memo(string): the payment reference of the Transfer logged just before it in the same tx
MEMO_TOPIC = "0xb0734c6ca9ae9b7406dd80224cb0488aed0928eef358da7449505fa59b8d7a2a"
# LedgerBridge's PaymentRecorded(string paymentReference, bytes32 indexed referenceHash, string asset,
#                                uint256 amount, uint8 scale, string sourceEntryId)
PAYMENT_RECORDED_TOPIC = "0x867cbe6b28b330524493d45b426dcefe2964906512428d4652799bcae7dd02d0"
MAX_MEMO_BYTES = 256
_ZERO_PAD = "0" * 24
_HEX_DIGITS = re.compile(r"[0-9a-f]*\Z")
_DECIMAL_DIGITS = re.compile(r"[0-9]+\Z")


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


def hex_text(v: Any, nbytes: int | None = None, what: str = "value") -> str:
    """Hex text (``0x``/``0X`` or none, any case) or bytes as lower-case ``0x`` hex of whole bytes
    (exactly ``nbytes`` when given); EntryError otherwise."""
    if isinstance(v, (bytes, bytearray)):
        digits = bytes(v).hex()
    elif isinstance(v, str):
        digits = (v[2:] if v[:2] in ("0x", "0X") else v).lower()
        if not _HEX_DIGITS.match(digits) or len(digits) % 2:
            raise EntryError(f"{what}: {v[:80]!r} is not hex of whole bytes")
    else:
        raise EntryError(f"{what}: {type(v).__name__} {str(v)[:40]} is not hex" if v is not None else f"{what}: missing")
    if nbytes is not None and len(digits) != 2 * nbytes:
        raise EntryError(f"{what}: {len(digits) // 2} bytes, expected {nbytes}")
    return "0x" + digits


def quantity(v: Any, what: str = "quantity") -> int:
    """A JSON-RPC quantity (``0x`` hex), a decimal string (CSV) or an int, from 0 to 2^63-1."""
    if type(v) is int:
        n = v
    elif isinstance(v, str) and v[:2] in ("0x", "0X") and len(v) > 2 and _HEX_DIGITS.match(v[2:].lower()):
        n = int(v[2:], 16) if len(v) <= 40 else MAX_JSON_INT + 1
    elif isinstance(v, str) and _DECIMAL_DIGITS.match(v):
        n = int(v) if len(v) <= 40 else MAX_JSON_INT + 1
    else:
        raise EntryError(f"{what}: {str(v)[:40]!r} is not a number (0x hex or decimal digits)" if v is not None
                         else f"{what}: missing")
    if not 0 <= n <= MAX_JSON_INT:
        raise EntryError(f"{what}: {str(v)[:40]} is outside 0 to 2^63-1")
    return n


def _get(log: dict, rpc: str, etl: str) -> Any:
    return log[rpc] if rpc in log else log.get(etl)


def _topics(log: dict) -> list[str]:
    topics = log.get("topics")
    if topics is None:
        return []
    if isinstance(topics, str):  # ethereum-etl CSV: comma-joined
        topics = [t for t in topics.split(",") if t]
    if not isinstance(topics, list):
        raise EntryError(f"topics: {type(topics).__name__} is not a list")
    return [hex_text(t, 32, f"topic {i}") for i, t in enumerate(topics)]


def log_ref(log: Any) -> str:
    """``<tx_hash>:<log_index>`` of a log, for error messages and source references."""
    if not isinstance(log, dict):
        return f"<{type(log).__name__}, not a log object>"
    try:
        return (f"{hex_text(_get(log, 'transactionHash', 'transaction_hash'), 32)}:"
                f"{quantity(_get(log, 'logIndex', 'log_index'))}")
    except EntryError:
        return "<log without a valid transaction hash / log index>"


def _position(log: dict) -> tuple[str, int, int, str | None]:
    """(transaction hash, block number, log index, block hash) of a mined log; EntryError otherwise."""
    tx = _get(log, "transactionHash", "transaction_hash")
    if tx is None:
        raise EntryError("pending log (no transaction hash)")
    bn = _get(log, "blockNumber", "block_number")
    if bn is None:
        raise EntryError("pending log (no block number)")
    bh = _get(log, "blockHash", "block_hash")
    return (hex_text(tx, 32, "transactionHash"), quantity(bn, "blockNumber"),
            quantity(_get(log, "logIndex", "log_index"), "logIndex"),
            hex_text(bh, 32, "blockHash") if bh else None)


# a mined JSON-RPC log as nodes write it: the two address topics (left-padded), data, transaction and
# block hash and token address, each of its exact length, checked by one pattern over their joined
# text (the lengths fix where each field starts in it); block number and log index of at most 15 hex
# digits (below 2^63). Anything else takes the general reading, which gives the same Transfer or
# names the rule the log breaks.
_NODE_FIELDS = re.compile(r"(?:0x0{24}[0-9a-f]{40}){2}(?:0x[0-9a-f]{64}){3}0x[0-9a-f]{40}\Z")
_QUANTITY = re.compile(r"0x[0-9a-f]{1,15}\Z")


def decode_transfer_log(log: dict) -> Transfer:
    """An ERC-20 Transfer (topic0 Transfer, exactly 3 topics, 32-byte data); EntryError otherwise."""
    if type(log) is dict:
        topics, data, tx = log.get("topics"), log.get("data"), log.get("transactionHash")
        bn, li, bh, token = log.get("blockNumber"), log.get("logIndex"), log.get("blockHash"), log.get("address")
        if (type(topics) is list and len(topics) == 3 and topics[0] == TRANSFER_TOPIC
                and type(t1 := topics[1]) is str and type(t2 := topics[2]) is str and type(data) is str
                and type(tx) is str and type(bh) is str and type(token) is str and type(bn) is str
                and type(li) is str and len(t1) == len(t2) == len(data) == len(tx) == len(bh) == 66
                and len(token) == 42 and _NODE_FIELDS.match(t1 + t2 + data + tx + bh + token)
                and _QUANTITY.match(bn) and _QUANTITY.match(li)):
            # positional, in the field order (token, sender, receiver, value, tx_hash, log_index,
            # block_number, block_hash, removed)
            return Transfer(token, "0x" + t1[26:], "0x" + t2[26:], int(data, 16), tx, int(li, 16), int(bn, 16),
                            bh, log.get("removed") is True)
    return _decode_any_transfer_log(log)


def _decode_any_transfer_log(log: dict) -> Transfer:
    """:func:`decode_transfer_log` for every form a log comes in (web3's ints and bytes, ethereum-etl's
    names and CSV, hex in any case), and the rejection of a log that breaks a rule."""
    if not isinstance(log, dict):
        raise EntryError(f"log {log_ref(log)}: not a JSON object")
    try:
        topics = _topics(log)
        data = hex_text(log.get("data") or "0x", None, "data")
        if len(topics) != 3 or topics[0] != TRANSFER_TOPIC or len(data) != 66 \
                or topics[1][2:26] != _ZERO_PAD or topics[2][2:26] != _ZERO_PAD:
            _refuse(topics, data)
        tx, block_number, log_index, bh = _position(log)
        token = hex_text(log.get("address"), 20, "address")
    except EntryError as exc:
        raise EntryError(f"log {log_ref(log)}: {exc}") from None
    _, t1, t2 = topics
    return Transfer(
        token=token, sender="0x" + t1[26:], receiver="0x" + t2[26:], value=int(data, 16), tx_hash=tx,
        log_index=log_index, block_number=block_number, block_hash=bh, removed=log.get("removed") is True,
    )


def _refuse(topics: list[str], data: str):
    if not topics or topics[0] != TRANSFER_TOPIC:
        raise EntryError(f"not a Transfer event (topic0 {topics[0] if topics else None})")
    if len(topics) != 3:
        raise EntryError(f"Transfer with {len(topics)} topics is not ERC-20 (ERC-721 indexes the token id)")
    if len(data) != 66:
        raise EntryError(f"Transfer data is {(len(data) - 2) // 2} bytes, an ERC-20 value takes 32")
    for t in topics[1:]:
        if t[2:26] != _ZERO_PAD:
            raise EntryError(f"topic {t} is not a left-padded address")
    raise EntryError("malformed Transfer")


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
    try:
        booked_at = utc_from_epoch(block_timestamp, f"block {t.block_number} timestamp")
    except EntryError as exc:
        raise EntryError(f"log {t.tx_hash}:{t.log_index}: {exc}") from None
    return make_entry(
        ledger=ledger, ledger_kind="evm", source_ref=f"{t.tx_hash}:{t.log_index}", correlation_id=correlation_id,
        account=account, counterparty=counterparty, asset=token.asset(), amount=token.amount(t.value),
        direction=direction, booked_at=booked_at, value_date=None, status=status, position=position,
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
    return bytes.fromhex(hex_text(log.get("data") or "0x", None, "data")[2:])


def memos_of(logs: Iterable[Any]) -> dict[tuple[str, int], str]:
    """(tx hash, log index of the Transfer) -> memo, from ``Memo`` logs (a Memo follows its Transfer)."""
    out: dict[tuple[str, int], str] = {}
    for lg in logs:
        if not isinstance(lg, dict):
            continue
        try:
            topics = _topics(lg)
            if not topics or topics[0] != MEMO_TOPIC:
                continue
            memo = _abi_string(_data(lg), 0)
            tx, _, index, _ = _position(lg)
        except (ValueError, UnicodeDecodeError):  # EntryError is a ValueError
            continue  # an unreadable memo leaves the transfer uncorrelated; map_log refuses the memo log, naming why
        if memo and index > 0:
            out[(tx, index - 1)] = memo
    return out


def decode_payment_recorded(log: dict, ctx: "LogContext") -> CanonicalEntry:
    """A ``LedgerBridge.PaymentRecorded`` log: the on-chain record of a payment of another ledger."""
    ref = log_ref(log)
    try:
        tx, block, index, bh = _position(log)
        account = hex_text(log.get("address"), 20, "address")
        data = _data(log)
        reference, asset = _abi_string(data, 0), _abi_string(data, 1)
        amount, scale = _abi_word(data, 2), _abi_word(data, 3)
        source_entry_id = _abi_string(data, 4)
    except (ValueError, UnicodeDecodeError) as exc:
        raise EntryError(f"log {ref}: malformed PaymentRecorded event: {exc}") from None
    if scale > 77:
        raise EntryError(f"log {ref}: PaymentRecorded scale {scale} is not a decimal scale")
    ts = ctx.block_timestamps.get(block)
    if ts is None:
        raise EntryError(f"log {ref}: no timestamp for block {block}")
    try:
        booked_at = utc_from_epoch(ts, f"block {block} timestamp")
    except EntryError as exc:
        raise EntryError(f"log {ref}: {exc}") from None
    status = "orphaned" if log.get("removed") is True else ctx.status_of(block)
    return make_entry(
        ledger=ctx.ledger, ledger_kind="evm", source_ref=f"{tx}:{index}", correlation_id=reference,
        account=account, counterparty=None, asset=asset,
        amount=format_amount(scaled_decimal(amount, scale)), direction="credit",
        booked_at=booked_at, value_date=None, status=status,
        position={"block_number": block, "block_hash": bh, "log_index": index, "transaction_hash": tx},
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
    try:
        return map_log(log, ctx)
    except NotAnEntry:
        return None


def map_log(log: Any, ctx: LogContext) -> CanonicalEntry:
    """The entry of one log; :class:`NotAnEntry` for a log this ledger does not map, EntryError when bad."""
    if not isinstance(log, dict):
        raise EntryError(f"log {log_ref(log)}: not a JSON object")
    try:
        topics = _topics(log)
    except EntryError as exc:
        raise EntryError(f"log {log_ref(log)}: {exc}") from None
    if not topics:
        raise NotAnEntry(f"log {log_ref(log)}: an anonymous event (no topics) is not an entry of this ledger")
    decoder = ctx.decoders.get(topics[0])
    if decoder is not None:
        return decoder(log, ctx)
    if topics[0] == MEMO_TOPIC:
        try:
            _abi_string(_data(log), 0)
        except (ValueError, UnicodeDecodeError) as exc:  # EntryError is a ValueError
            # a dead letter, not a skipped log: the Transfer before it goes without its correlation_id
            raise EntryError(f"log {log_ref(log)}: unreadable Memo ({exc}): the Transfer logged before it in the "
                             "transaction keeps no correlation_id") from None
        raise NotAnEntry(f"log {log_ref(log)}: a Memo event is not an entry (its text is the correlation_id "
                         f"of the Transfer logged before it)")
    if topics[0] != TRANSFER_TOPIC:
        raise NotAnEntry(f"log {log_ref(log)}: event {topics[0]} is neither an ERC-20 Transfer nor a registered "
                         f"event of this ledger")
    if not ctx.transfers:
        raise NotAnEntry(f"log {log_ref(log)}: Transfer logs are not entries of this ledger (transfers: false)")
    t = decode_transfer_log(log)
    if ctx.tokens and t.token not in ctx.tokens:
        raise NotAnEntry(f"log {t.tx_hash}:{t.log_index}: token {t.token} is not a configured token of this ledger")
    if ctx.watched and ctx.watched not in (t.sender, t.receiver):
        raise NotAnEntry(f"log {t.tx_hash}:{t.log_index}: neither side is the watched address {ctx.watched}")
    ts = ctx.block_timestamps.get(t.block_number)
    if ts is None and log.get("blockTimestamp") is not None:  # nodes that include it in logs
        try:
            ts = quantity(log["blockTimestamp"], "blockTimestamp")
        except EntryError as exc:
            raise EntryError(f"log {t.tx_hash}:{t.log_index}: {exc}") from None
    if ts is None:
        raise EntryError(f"log {t.tx_hash}:{t.log_index}: no timestamp for block {t.block_number}")
    status = "orphaned" if t.removed else ctx.status_of(t.block_number)
    return transfer_log_to_entry(t, ctx.ledger, ts, status, ctx.tokens.get(t.token), ctx.watched,
                                 correlation_id=ctx.memos.get((t.tx_hash, t.log_index)) if ctx.memos else None)


def logs_to_entries(logs: list[Any], ctx: LogContext, source: str | None = None,
                    seen: dict[str, str] | None = None) -> Mapped:
    """Every log of one input (one log is one record) as an entry or a :class:`Rejection`.

    A log with the transaction hash and log index of one already mapped is refused as a duplicate
    naming both positions; ``seen`` (entry id -> where) carries that check across inputs.
    """
    entries: list[CanonicalEntry] = []
    rejections: list[Rejection] = []
    seen = {} if seen is None else seen
    for i, log in enumerate(logs):
        where = f"{source}: log #{i}" if source else f"log #{i}"
        try:
            e = map_log(log, ctx)
            if e.entry_id in seen:
                raise EntryError(f"log {e.source_ref}: duplicate: the same transaction hash and log index as "
                                 f"{seen[e.entry_id]}")
        except NotAnEntry as exc:
            rejections.append(Rejection(where, str(exc), i, not_an_entry=True))
        except EntryError as exc:
            rejections.append(Rejection(where, str(exc), i))
        else:
            seen[e.entry_id] = where
            entries.append(e)
    return Mapped(entries, rejections, len(entries))


def logs_of(doc: Any) -> list[Any]:
    """Logs from an ``eth_getLogs`` / ``eth_getFilterLogs`` response, a receipt, or a list of either."""
    if isinstance(doc, dict) and "result" in doc:
        doc = doc["result"]
    if isinstance(doc, dict) and "logs" in doc:
        if not isinstance(doc["logs"], list):
            raise ValueError(f"a receipt's logs are {type(doc['logs']).__name__}, not a list")
        return list(doc["logs"])
    if isinstance(doc, list):
        out = []
        for item in doc:
            out.extend(logs_of(item) if isinstance(item, dict) and ("logs" in item or "result" in item) else [item])
        return out
    raise ValueError("expected a JSON-RPC logs result, a receipt, or a list of logs")


def block_timestamps_of(docs: Iterable[Any]) -> dict[int, int]:
    """block number -> timestamp from ``eth_getBlockByNumber`` responses (or lists of them).

    ValueError naming the block when a block's number or timestamp is not a quantity.
    """
    out = {}
    for doc in docs:
        for item in doc if isinstance(doc, list) else [doc]:
            block = item.get("result", item) if isinstance(item, dict) else None
            if isinstance(block, dict) and "timestamp" in block and "number" in block:
                try:
                    out[quantity(block["number"], "number")] = quantity(block["timestamp"], "timestamp")
                except EntryError as exc:
                    raise ValueError(f"block {str(block.get('hash'))[:70]}: {exc}") from None
    return out


def token_config(spec: str) -> TokenConfig:
    """``ADDRESS[:SYMBOL[:DECIMALS]]`` of a known token; ValueError with the reason."""
    addr, _, rest = spec.partition(":")
    symbol, _, decimals = rest.partition(":")
    try:
        address = hex_text(addr, 20, "address")
    except EntryError as exc:
        raise ValueError(f"token {spec!r}: {exc}") from None
    if decimals and not (_DECIMAL_DIGITS.match(decimals) and int(decimals) <= 255):
        raise ValueError(f"token {spec!r}: decimals {decimals!r} is not an integer from 0 to 255 (ERC-20 uint8)")
    return TokenConfig(address, symbol or None, int(decimals) if decimals else None)
