"""EVM reader (JSON-RPC through web3's HTTP provider) and incremental publisher.

- ``eth_getLogs`` is paged by block range (:func:`fetch_paged`, also used for the project's contracts'
  events); when the node says the result is too large, the range is too wide, or it times out, the
  range is halved (down to one block, however many halvings that takes) and the smaller span is kept
  while the pages are inside the widest range refused; past it, each page read doubles the span again,
  up to the configured maximum. A rate limit (HTTP 429, "rate limit", "too many requests") says
  nothing of the range: the same range is tried again after a backoff (``Retry-After`` when the node
  gives one, at most 30 s). Other failures are retried with backoff, and the last one is raised: no
  range is ever skipped.
- Secrets of the RPC URL (user info, path, query) are taken out of the transport errors raised.
- Finality: an entry in a block at least ``confirmations`` deep is ``final``; shallower ones are
  published as ``pending`` and published again as ``final`` once deep enough.
- Reorgs: the hash of every block that gave entries (and of each pass's last final block) is kept
  in ``ledger_evm_blocks``. When a kept block's hash changes, its entries are re-published with
  status ``orphaned`` and the chain is scanned again from the last block that still matches.
- Block timestamps are fetched once per block.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import date, datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Callable

import msgspec
from sqlalchemy import text

from ...model import CanonicalEntry, EntryError, decode_entry, encode_entry
from .decoding import (MEMO_TOPIC, PAYMENT_RECORDED_TOPIC, TRANSFER_TOPIC, LogContext, LogDecoder, decode_payment_recorded,
                  log_ref, logs_to_entries, memos_of, quantity)

if TYPE_CHECKING:
    from ...config import LedgerConfig
    from ...publish import Publisher
    from ...validation import PublishResult

log = logging.getLogger(__name__)
_TOO_MUCH = ("too many", "limit", "range", "exceed", "timeout", "timed out", "response size", "query returned more")
_RATE_LIMITED = ("rate limit", "rate-limit", "ratelimit", "too many requests", "429 client error")
RETRY_AFTER_MAX = 30.0  # seconds: the longest Retry-After of a rate-limited node that is waited out


class RpcError(RuntimeError):
    pass


def redact_url(text: str, url: str) -> str:
    """``text`` without the parts of ``url`` that may hold a secret (user info, path, query: where hosted nodes
    take their API keys)."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
    except ValueError:
        return text.replace(url, "***") if url else text
    secrets = [x for x in (parts.password, parts.username, parts.path.strip("/"), parts.query) if x and len(x) >= 4]
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def _status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    code = getattr(response, "status_code", None)
    return code if isinstance(code, int) else None


def _rate_limited(exc: BaseException) -> bool:
    """The node refused the request for its rate (HTTP 429, "rate limit", "too many requests"): nothing is
    wrong with the range."""
    if _status(exc) == 429:
        return True
    message = str(exc).lower()
    return any(w in message for w in _RATE_LIMITED)


def _retry_after(exc: BaseException) -> float | None:
    """A rate-limited node's ``Retry-After`` (seconds, capped at ``RETRY_AFTER_MAX``), or None."""
    headers = getattr(getattr(exc, "response", None), "headers", None) or {}
    try:
        value = float(str(headers.get("Retry-After", "")).strip())
    except ValueError:
        return None
    return min(RETRY_AFTER_MAX, value) if value >= 0 else None


def _too_much(exc: BaseException) -> bool:
    """The node refused a range as too large (or timed out on it); a refused connection or a rate limit is
    not that."""
    import requests

    if isinstance(exc, (ConnectionError, requests.exceptions.ConnectionError)):  # "Max retries exceeded": no range
        return False
    if _rate_limited(exc):
        return False
    message = str(exc).lower()
    return any(w in message for w in _TOO_MUCH)


def fetch_paged(fetch: Callable[[int, int], list], start: int, end: int, span: int, retries: int = 5,
                sleep: Callable[[float], None] | None = None) -> list:
    """``fetch(lo, hi)`` over [start, end] in ranges of at most ``span`` blocks, in order.

    A range the node refuses as too large is halved and tried again; the halved span is kept while the pages
    are inside the widest range refused (that part of the chain holds too much for a wider one), and past it
    each page read doubles the span, up to ``span``. A rate limit, or another failure, is retried on the same
    range ``retries`` times with exponential backoff (a rate limit's ``Retry-After`` when it is longer), then
    raised."""
    out: list = []
    widest = span = max(1, span)
    refused_through = start - 1  # the last block of the ranges refused as too large
    lo = start
    while lo <= end:
        hi = min(end, lo + span - 1)
        failures = 0
        while True:
            try:
                got = fetch(lo, hi)
                break
            except Exception as exc:  # RpcError from the node, or a transport error
                if hi > lo and _too_much(exc):
                    refused_through = max(refused_through, hi)
                    span = max(1, (hi - lo + 1) // 2)  # too much at once: halve and retry
                    hi = lo + span - 1
                    continue
                if failures >= retries:
                    raise
                delay = min(8.0, 0.25 * 2 ** failures)
                if _rate_limited(exc):
                    delay = max(delay, _retry_after(exc) or 0.0)
                (sleep or time.sleep)(delay)
                failures += 1
        out.extend(got)
        lo = hi + 1
        if lo > refused_through and span < widest:
            span = min(widest, span * 2)  # past what was refused: grow again
    return out


def default_decoders(lc: "LedgerConfig") -> dict[str, LogDecoder]:
    """``options.bridge_contracts`` set: the LedgerBridge's PaymentRecorded events are entries too."""
    return {PAYMENT_RECORDED_TOPIC: decode_payment_recorded} if lc.options.get("bridge_contracts") else {}


class EvmReader:
    def __init__(self, lc: "LedgerConfig", url: str, decoders: dict[str, LogDecoder] | None = None,
                 retries: int = 5):
        from web3 import HTTPProvider

        self.lc = lc
        self.url = url
        self.provider = HTTPProvider(url, request_kwargs={"timeout": 30})
        self.decoders = decoders if decoders is not None else default_decoders(lc)
        self.transfers = bool(lc.options.get("transfers", True))
        self.retries = retries
        self._blocks: dict[int, dict] = {}
        self.calls = 0

    # -- JSON-RPC -------------------------------------------------------------------------
    def rpc(self, method: str, params: list) -> Any:
        import requests

        self.calls += 1
        try:
            resp = self.provider.make_request(method, params)
        except requests.exceptions.RequestException as exc:  # its message may carry the URL's API key
            message = redact_url(str(exc), self.url)
            if message == str(exc):
                raise
            raise type(exc)(message, response=exc.response, request=exc.request) from None
        if "error" in resp:
            err = resp["error"]
            raise RpcError(f"{method}: {err.get('message', err) if isinstance(err, dict) else err}")
        return resp["result"]

    def head(self) -> int:
        return int(self.rpc("eth_blockNumber", []), 16)

    def block(self, number: int, refresh: bool = False) -> dict | None:
        if refresh or number not in self._blocks:
            b = self.rpc("eth_getBlockByNumber", [hex(number), False])
            if b is None:
                return None
            self._blocks[number] = {"hash": b["hash"], "timestamp": int(b["timestamp"], 16)}
        return self._blocks[number]

    def get_logs(self, start: int, end: int) -> list[dict]:
        """Logs of our topics (and tokens) in [start, end], paging and shrinking on provider limits."""
        topics = [[*((TRANSFER_TOPIC, MEMO_TOPIC) if self.transfers else ()), *self.decoders]]
        addresses = [t.address for t in self.lc.tokens] + list(self.lc.options.get("bridge_contracts", []))

        def fetch(lo: int, hi: int) -> list[dict]:
            flt: dict[str, Any] = {"fromBlock": hex(lo), "toBlock": hex(hi), "topics": topics}
            if addresses:
                flt["address"] = addresses
            return self.rpc("eth_getLogs", [flt])

        return fetch_paged(fetch, start, end, self.lc.max_block_range, retries=self.retries)

    # -- mapping --------------------------------------------------------------------------
    def entries(self, logs: list[dict], head: int) -> tuple[list[CanonicalEntry], list[tuple[str, str, bytes]]]:
        safe = head - self.lc.confirmations
        numbers = set()
        for lg in logs:
            try:
                numbers.add(quantity(lg["blockNumber"], "blockNumber"))
            except (EntryError, KeyError, TypeError):
                pass  # no block to look up: the log's mapping refuses it, naming the reason
        for n in sorted(numbers):
            self.block(n)
        ctx = LogContext(
            ledger=self.lc.name, block_timestamps={n: b["timestamp"] for n, b in self._blocks.items()},
            tokens={t.address: t for t in self.lc.tokens}, watched=self.lc.watched_address,
            status_of=lambda n: "final" if n <= safe else "pending", decoders=self.decoders,
            memos=memos_of(logs), transfers=self.transfers,
        )
        entries, rejections, _ = logs_to_entries(logs, ctx)
        # a log of an event this ledger does not map (a Memo, another token) is skipped, not a dead letter
        errors = [(f"evm:{self.lc.name}:{log_ref(logs[r.index])}", r.reason, json.dumps(logs[r.index]).encode())
                  for r in rejections if not r.not_an_entry]
        return entries, errors

    def first_block_at(self, ts: int, head: int) -> int:
        """The first block whose timestamp is >= ts (head + 1 when none is), by binary search."""
        lo, hi = 0, head + 1
        while lo < hi:
            mid = (lo + hi) // 2
            if self.block(mid)["timestamp"] >= ts:
                hi = mid
            else:
                lo = mid + 1
        return lo

    def read_day(self, day: date) -> tuple[list[CanonicalEntry], list[tuple[str, str]]]:
        """(entries, rejections as (source, reason)) of the blocks stamped on ``day`` (UTC) on the current
        canonical chain."""
        head = self.head()
        start = datetime(day.year, day.month, day.day, tzinfo=timezone.utc)
        lo = self.first_block_at(int(start.timestamp()), head)
        hi = self.first_block_at(int((start + timedelta(days=1)).timestamp()), head) - 1
        if hi < lo:
            return [], []
        entries, errors = self.entries(self.get_logs(lo, hi), head)
        return entries, [(source, reason) for source, reason, _ in errors]


class EvmPublisher:
    def __init__(self, lc: "LedgerConfig", url: str, publisher: "Publisher", decoders=None):
        self.lc = lc
        self.reader = EvmReader(lc, url, decoders)
        self.pub = publisher
        self.wh = publisher.warehouse
        self.window = max(128, 4 * lc.confirmations)

    def _stored(self) -> list[tuple[int, str, str]]:
        return self.wh.rows("SELECT block_number, block_hash, entries FROM ledger_evm_blocks WHERE ledger = :l "
                            "ORDER BY block_number DESC", l=self.lc.name)

    def publish(self) -> "PublishResult":
        from ...validation import PublishResult
        from ...warehouse.state import get_cursor, set_cursor

        result = PublishResult(self.lc.name)
        head = self.reader.head()
        safe = head - self.lc.confirmations
        cursor = get_cursor(self.wh, self.lc.name) or {"next_block": self.lc.start_block}
        start = cursor["next_block"]
        # 1. reorg: kept blocks whose hash changed are abandoned; their entries become orphaned
        orphaned: list[CanonicalEntry] = []
        abandoned: list[int] = []
        for number, stored_hash, entries_json in self._stored():
            current = self.reader.block(number, refresh=True) if number <= head else None
            if current is not None and current["hash"] == stored_hash:
                break
            abandoned.append(number)
            for doc in json.loads(entries_json):
                doc["status"] = "orphaned"
                orphaned.append(decode_entry(msgspec.json.encode(doc)))
        if abandoned:
            start = min(start, min(abandoned))
            log.warning("%s: reorg: %d kept block(s) from %d left the canonical chain; %d entries orphaned",
                        self.lc.name, len(abandoned), min(abandoned), len(orphaned))
        # 2. scan from the first block not known final up to the head
        entries, errors = [], []
        if start <= head:
            entries, errors = self.reader.entries(self.reader.get_logs(start, head), head)
        # 3. publish (orphaned versions first), then remember blocks and the cursor
        result.published = self.pub.send(self.lc.name, [*orphaned, *entries])
        result.rejected = self.pub.dead_letters(self.lc.name, errors)
        by_block: dict[int, list[CanonicalEntry]] = {}
        for e in entries:
            by_block.setdefault(e.position["block_number"], []).append(e)
        if safe >= start and safe not in by_block and safe >= 0:
            by_block.setdefault(safe, [])  # a checkpoint: detects reorgs that touch no entry of ours
        with self.wh.engine.begin() as c:
            if abandoned:
                c.execute(text("DELETE FROM ledger_evm_blocks WHERE ledger = :l AND block_number >= :n"),
                          {"l": self.lc.name, "n": min(abandoned)})
            for number, es in by_block.items():
                block = self.reader.block(number)
                c.execute(text("DELETE FROM ledger_evm_blocks WHERE ledger = :l AND block_number = :n"),
                          {"l": self.lc.name, "n": number})
                c.execute(text("INSERT INTO ledger_evm_blocks (ledger, block_number, block_hash, entries) "
                               "VALUES (:l, :n, :h, :e)"),
                          {"l": self.lc.name, "n": number, "h": block["hash"],
                           "e": "[" + ",".join(encode_entry(e).decode() for e in es) + "]"})
            c.execute(text("DELETE FROM ledger_evm_blocks WHERE ledger = :l AND block_number < :n"),
                      {"l": self.lc.name, "n": head - self.window})
            set_cursor(self.wh, self.lc.name, {"next_block": max(start, safe + 1), "head": head}, conn=c)
        result.details = {"head": head, "final_through": safe, "scanned_from": start, "orphaned": len(orphaned),
                          "pending": sum(1 for e in entries if e.status == "pending"), "rpc_calls": self.reader.calls}
        return result
