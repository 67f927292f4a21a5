"""The EVM connector on anvil: a token compiled with npm solc, transfers, publishing, daily snapshot,
and a chain reorganisation (anvil_reorg) that orphans entries and corrects the day's snapshot."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from ledger_pipelines.config import LedgerConfig
from ledger_pipelines.connectors.evm.decoding import TokenConfig
from ledger_pipelines.contracts import deploy
from ledger_pipelines.ingest import EventLogIngestor
from ledger_pipelines.publish import Publisher
from ledger_pipelines.snapshots import snapshot_day
from ledger_pipelines.warehouse import Warehouse
from ledger_pipelines.warehouse.state import read_snapshot

pytestmark = pytest.mark.services


def _ledger(token, confirmations=2, max_range=3):
    return LedgerConfig(name="eth_usdc", kind="evm", tokens=(TokenConfig(token.address.lower(), "USDC", 6),),
                        confirmations=confirmations, max_block_range=max_range)


def test_transfers_publish_snapshot_and_reorg(chain, kafka, tmp_path, monkeypatch, stack_config):
    w3 = chain
    monkeypatch.setenv("LEDGER_EVM_RPC_URL", stack_config.anvil_url)
    owner, alice, bob = w3.eth.accounts[:3]
    token = deploy(w3, "LedgerToken", "USD Coin", "USDC", 6)
    token.functions.mint(alice, 10**12).transact({"from": owner})
    for cents in (1_500_000, 2_250_000, 999):
        token.functions.transfer(bob, cents).transact({"from": alice})
    lc = _ledger(token)
    lc = LedgerConfig(**{**lc.__dict__, "rpc_env": "LEDGER_EVM_RPC_URL", "start_block": 0})
    wh = Warehouse(f"sqlite:///{tmp_path / 'w.db'}")
    wh.create_schema()
    pub = Publisher(kafka, wh)
    first = pub.publish(lc)
    assert first.published == 4 and first.rejected == 0  # mint + 3 transfers
    # shallow blocks are pending until `confirmations` deep
    assert first.details["pending"] >= 1
    w3.provider.make_request("anvil_mine", [5])
    second = pub.publish(lc)
    assert second.details["pending"] == 0
    EventLogIngestor(kafka, wh).run()
    statuses = wh.rows("SELECT status, count(*) FROM ledger_event_log GROUP BY status ORDER BY status")
    assert dict(statuses)["final"] == 4
    amounts = sorted(r[0] for r in wh.rows("SELECT amount FROM ledger_event_log WHERE status = 'final'"))
    assert amounts == sorted(["1000000", "1.5", "2.25", "0.000999"])
    day = datetime.fromtimestamp(w3.eth.get_block("latest")["timestamp"], tz=timezone.utc).date()
    stats = snapshot_day(lc, day, wh)
    assert stats["rows"] == 4 and stats["totals"]["USDC"]["debit"] == "1000003.750999"

    # reorg: replace the last 8 blocks (all three transfers) with an empty branch
    tip = w3.eth.block_number
    before_hashes = {n: w3.eth.get_block(n)["hash"] for n in range(tip - 7, tip + 1)}
    w3.provider.make_request("anvil_reorg", [8, []])
    assert any(w3.eth.get_block(n)["hash"] != h for n, h in before_hashes.items())
    third = pub.publish(lc)
    assert third.details["orphaned"] >= 3
    EventLogIngestor(kafka, wh).run()
    orphaned = wh.rows("SELECT count(DISTINCT entry_id) FROM ledger_event_log WHERE status = 'orphaned'")[0][0]
    assert orphaned == third.details["orphaned"]
    # the day's snapshot, taken again, shows only what the canonical chain holds now
    again = snapshot_day(lc, day, wh)
    assert again["rows"] == 4 - third.details["orphaned"]
    assert len(read_snapshot(wh, "eth_usdc", day.isoformat())) == again["rows"]


def test_get_logs_pages_small_ranges(chain, stack_config):
    from ledger_pipelines.connectors.evm.reader import EvmReader

    w3 = chain
    owner, alice = w3.eth.accounts[:2]
    token = deploy(w3, "LedgerToken", "T", "T", 0)
    for _ in range(5):
        token.functions.mint(alice, 7).transact({"from": owner})
    reader = EvmReader(_ledger(token, max_range=1), stack_config.anvil_url)
    head = reader.head()
    logs = reader.get_logs(0, head)
    assert len(logs) == 5 and reader.calls >= head  # one block a call


def test_get_logs_shrinks_the_range_when_the_provider_refuses(chain, stack_config):
    """A proxy in front of anvil answers like hosted providers do when a range holds too much."""
    import json
    import threading
    import urllib.request
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from ledger_pipelines.connectors.evm.reader import EvmReader

    refused = []

    class Limited(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            req = json.loads(body)
            if req.get("method") == "eth_getLogs":
                flt = req["params"][0]
                if int(flt["toBlock"], 16) - int(flt["fromBlock"], 16) + 1 > 2:
                    refused.append((flt["fromBlock"], flt["toBlock"]))
                    out = json.dumps({"jsonrpc": "2.0", "id": req["id"], "error": {
                        "code": -32005, "message": "query returned more than 10000 results"}}).encode()
                    return self._send(out)
            fwd = urllib.request.Request(stack_config.anvil_url, data=body, headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(fwd, timeout=10) as resp:
                self._send(resp.read())

        def _send(self, out):
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Limited)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        w3 = chain
        owner, alice = w3.eth.accounts[:2]
        token = deploy(w3, "LedgerToken", "T", "T", 0)
        for _ in range(6):
            token.functions.mint(alice, 3).transact({"from": owner})
        direct = EvmReader(_ledger(token, max_range=10_000), stack_config.anvil_url)
        limited = EvmReader(_ledger(token, max_range=10_000), f"http://127.0.0.1:{server.server_address[1]}")
        head = direct.head()
        assert limited.get_logs(0, head) == direct.get_logs(0, head)
        assert refused  # the wide first range was refused and halved until it passed
    finally:
        server.shutdown()


def test_memo_correlates_a_transfer_and_bridge_records_decode(chain, stack_config):
    """transferWithMemo: the memo is the transfer's correlation_id; LedgerBridge.PaymentRecorded logs of a
    configured bridge contract decode into entries (reference, asset, exact scaled amount, source entry)."""
    from ledger_pipelines.connectors.evm.reader import EvmReader

    w3 = chain
    owner, alice, bob = w3.eth.accounts[:3]
    token = deploy(w3, "LedgerToken", "USD Coin", "USDC", 6)
    bridge = deploy(w3, "LedgerBridge")
    token.functions.mint(alice, 10**12).transact({"from": owner})
    token.functions.transferWithMemo(bob, 1_234_567, "E2E-MEMO-1").transact({"from": alice})
    token.functions.transfer(bob, 5).transact({"from": alice})
    big = 2**256 - 1
    bridge.functions.record("E2E-MEMO-1", "EUR", 123450, 2, "core_banking:7").transact({"from": owner})
    bridge.functions.record("E2E-BIG", "ETH", big, 18, "core_banking:8").transact({"from": owner})
    day = datetime.fromtimestamp(w3.eth.get_block("latest")["timestamp"], tz=timezone.utc).date()
    lc = LedgerConfig(name="eth_usdc", kind="evm", tokens=(TokenConfig(token.address.lower(), "USDC", 6),),
                      confirmations=0, start_block=w3.eth.block_number - 6)
    entries = {(e.amount, e.correlation_id) for e in EvmReader(lc, stack_config.anvil_url).read_day(day)[0]}
    assert entries == {("1000000", None), ("1.234567", "E2E-MEMO-1"), ("0.000005", None)}
    audit = LedgerConfig(name="bridge_records", kind="evm", confirmations=0, start_block=lc.start_block,
                         options={"bridge_contracts": [bridge.address.lower()], "transfers": False})
    recorded, rejected = EvmReader(audit, stack_config.anvil_url).read_day(day)
    got = sorted((e.correlation_id, e.asset, e.amount, e.attributes["source_entry_id"]) for e in recorded)
    assert got == [("E2E-BIG", "ETH", f"{big // 10**18}.{big % 10**18:018d}", "core_banking:8"),
                   ("E2E-MEMO-1", "EUR", "1234.50", "core_banking:7")]
    assert all(e.account == bridge.address.lower() and e.status == "final" for e in recorded) and rejected == []


def _reader(max_range: int, node, url: str = "http://127.0.0.1:1"):
    from ledger_pipelines.config import _ledger
    from ledger_pipelines.connectors.evm.reader import EvmReader

    reader = EvmReader(_ledger({"name": "eth", "kind": "evm", "max_block_range": max_range}), url)
    reader.provider = node
    return reader


def _range(params) -> tuple[int, int]:
    return int(params[0]["fromBlock"], 16), int(params[0]["toBlock"], 16)


def test_a_rate_limit_is_waited_out_on_the_same_range_never_taken_for_a_range_too_large(monkeypatch):
    """A hosted node refusing for its rate (an HTTP 429, or a JSON-RPC error saying so): the same range is
    asked again after a backoff; the page is not halved."""
    import requests

    from ledger_pipelines.connectors.evm import reader as evm_reader

    sleeps: list[float] = []
    monkeypatch.setattr(evm_reader.time, "sleep", sleeps.append)

    def http_429(retry_after=None):
        response = requests.Response()
        response.status_code = 429
        response.reason = "Too Many Requests"
        if retry_after is not None:
            response.headers["Retry-After"] = retry_after
        return requests.exceptions.HTTPError("429 Client Error: Too Many Requests for url: http://127.0.0.1:1/",
                                             response=response)

    refusals = [lambda: http_429(), lambda: http_429("3"),
                lambda: {"error": {"code": -32005, "message": "rate limit exceeded"}},
                lambda: {"error": {"code": 429, "message": "Too many requests, exceeded your rate-limit"}}]
    for refusal in refusals:
        asked, sleeps[:] = [], []

        class Node:
            def make_request(self, method, params):
                asked.append(_range(params))
                if len(asked) <= 2:
                    answer = refusal()
                    if isinstance(answer, Exception):
                        raise answer
                    return {"jsonrpc": "2.0", "id": 1, **answer}
                lo, hi = _range(params)
                return {"jsonrpc": "2.0", "id": 1, "result": [{"block": b} for b in range(lo, hi + 1)]}

        reader = _reader(1000, Node())
        assert [x["block"] for x in reader.get_logs(0, 1999)] == list(range(2000))
        assert asked == [(0, 999), (0, 999), (0, 999), (1000, 1999)], refusal()
        assert len(sleeps) == 2 and all(s > 0 for s in sleeps)
    assert sleeps == [0.25, 0.5]
    asked.clear()

    class Throttled:
        def make_request(self, method, params):
            asked.append(_range(params))
            raise http_429("3")

    with pytest.raises(requests.exceptions.HTTPError, match="429"):
        _reader(1000, Throttled()).get_logs(0, 1999)
    assert asked == [(0, 999)] * 6  # retried, then raised: neither halved nor skipped


def test_past_the_range_refused_the_page_grows_back_to_the_configured_maximum():
    """A node that refuses more than 10 blocks a call in a dense part of the chain (blocks 0-63) only: the
    pages after it double again up to ``max_block_range``; every block is read, in order, once."""
    asked = []

    class Node:
        def make_request(self, method, params):
            lo, hi = _range(params)
            asked.append((lo, hi))
            if lo <= 63 and hi - lo + 1 > 10:
                return {"jsonrpc": "2.0", "id": 1, "error": {"code": -32005,
                                                             "message": "query returned more than 10000 results"}}
            return {"jsonrpc": "2.0", "id": 1, "result": [{"block": b} for b in range(lo, hi + 1)]}

    reader = _reader(64, Node())
    assert [x["block"] for x in reader.get_logs(0, 9_999)] == list(range(10_000))
    read = [(lo, hi) for lo, hi in asked if not (lo <= 63 and hi - lo + 1 > 10)]
    assert all(b[0] == a[1] + 1 for a, b in zip(read, read[1:]))  # contiguous: no block skipped or read twice
    assert max(hi - lo + 1 for lo, hi in asked) == 64
    assert all(hi - lo + 1 == 64 for lo, hi in read[-100:-1])  # grown back, not stuck at 8 blocks a call
    assert len(asked) < 10_000 // 64 + 20


def test_the_rpc_urls_key_is_taken_out_of_transport_errors():
    import requests

    url = "https://mainnet.example.com/v3/0123456789abcdef0123456789abcdef"

    class Down:
        def make_request(self, method, params):
            raise requests.exceptions.ConnectionError(
                "HTTPSConnectionPool(host='mainnet.example.com', port=443): Max retries exceeded with url: "
                "/v3/0123456789abcdef0123456789abcdef")

    with pytest.raises(requests.exceptions.ConnectionError) as err:
        _reader(10, Down(), url).head()
    assert "0123456789abcdef" not in str(err.value) and "mainnet.example.com" in str(err.value)
