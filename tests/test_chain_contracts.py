"""Where the anchor and bridge contracts come from (deployed only on a local development chain, else
configured and checked), reading their events paged from the deployment block, and which send failures
are permanent."""

from __future__ import annotations

import json
import threading

import pytest
import requests

from ledger_pipelines import chain as chain_mod
from ledger_pipelines.chain import ChainError, is_local_dev_chain, permanent_failure, redact


@pytest.fixture
def stack_dir(tmp_path, monkeypatch):
    """A deployment record of this test's own; no contract configured."""
    monkeypatch.setenv("LEDGER_STACK_DIR", str(tmp_path / "stack"))
    for var in ("LEDGER_ANCHOR_CONTRACT", "LEDGER_BRIDGE_CONTRACT", "LEDGER_ANCHOR_FROM_BLOCK",
                "LEDGER_BRIDGE_FROM_BLOCK", "LEDGER_AUTO_DEPLOY", "LEDGER_ANCHOR_KEY", "LEDGER_BRIDGE_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(chain_mod, "_DEPLOY_BLOCKS", {})
    return tmp_path / "stack"


@pytest.fixture
def rpc_calls(monkeypatch):
    """Every JSON-RPC request made through web3's HTTP provider, as (method, params)."""
    from web3 import HTTPProvider

    calls: list[tuple[str, list]] = []
    real = HTTPProvider.make_request

    def make_request(self, method, params):
        calls.append((method, params))
        return real(self, method, params)

    monkeypatch.setattr(HTTPProvider, "make_request", make_request)
    return calls


def _signer(stack_config):
    from ledger_pipelines.chain import Signer

    return Signer.from_env(stack_config.anvil_url, "LEDGER_ANCHOR_KEY")


def _mine(w3, blocks: int) -> None:
    w3.provider.make_request("anvil_mine", [hex(blocks)])


# -- the local-chain rule --------------------------------------------------------------------------

@pytest.mark.parametrize("chain_id, url, local", [
    (31337, "http://127.0.0.1:8545", True),
    (31337, "http://localhost:8545", True),
    (1337, "http://LOCALHOST:7545/", True),
    (31337, "http://127.0.0.2:8545", True),        # all of 127.0.0.0/8 is loopback
    (31337, "http://[::1]:8545", True),
    (1337, "ws://127.0.0.1:8546", True),
    (1, "http://127.0.0.1:8545", False),           # a mainnet fork on this machine is not a dev chain
    (11155111, "http://localhost:8545", False),
    (31337, "http://10.0.0.5:8545", False),        # a dev chain id on another host
    (31337, "http://192.168.1.20:8545", False),
    (31337, "https://rpc.example.com/v3/KEY", False),
    (31337, "http://localhost.example.com:8545", False),
    (31337, "http://127.0.0.1.nip.io:8545", False),  # names are not resolved
    (31337, "http://0.0.0.0:8545", False),
    (31337, "", False),
    (31337, "not a url", False),
    (31337, "http://evil.example\\@127.0.0.1:8545/", False),  # requests/urllib3 connect to evil.example
    (31337, "http://127.0.0.1\\@evil.example:8545/", False),
    (31337, "http://user:pw@127.0.0.1:8545/", False),          # user info: refused, whatever the host
    (31337, "http://evil.example@localhost:8545/", False),
    (31337, "http://127.0.0.1%2f@evil.example/", False),       # urllib3 and urlsplit: another host each
])
def test_a_local_development_chain_is_a_dev_chain_id_on_a_loopback_endpoint(chain_id, url, local):
    assert is_local_dev_chain(chain_id, url) is local


class _FakeChain:
    """A web3 stand-in: a chain id, an RPC endpoint, no contract code anywhere."""

    def __init__(self, chain_id: int, url: str):
        from eth_account import Account

        self.provider = type("Provider", (), {"endpoint_uri": url})()
        self.eth = type("Eth", (), {"chain_id": chain_id, "account": Account,
                                    "get_code": staticmethod(lambda *a, **k: b"")})()

    @staticmethod
    def is_checksum_address(value):
        return True


def test_the_dev_key_is_used_only_on_a_local_anvil_not_for_any_chain_id_31337(stack_dir, monkeypatch):
    from ledger_pipelines.chain import ANVIL_DEV_KEY, Signer

    for url in ("http://10.0.0.5:8545", "https://rpc.example.com/v3/0123456789abcdef",
                "http://evil.example\\@127.0.0.1:8545/"):
        monkeypatch.setattr(chain_mod, "web3_for", lambda _url: _FakeChain(31337, _url))
        with pytest.raises(ChainError, match=r"^LEDGER_ANCHOR_KEY is not set \(the signing key for chain 31337") as err:
            Signer.from_env(url, "LEDGER_ANCHOR_KEY")
        assert "0123456789abcdef" not in str(err.value)
    signer = Signer.from_env("http://127.0.0.1:8545", "LEDGER_ANCHOR_KEY")
    assert signer.key == ANVIL_DEV_KEY


def test_rpc_url_secrets_never_reach_the_contract_errors(stack_dir, monkeypatch):
    from ledger_pipelines.chain import contract_address

    url = "https://mainnet.infura.io/v3/0123456789abcdef0123456789abcdef"
    w3 = _FakeChain(1, url)
    with pytest.raises(ChainError, match=r"^LEDGER_ANCHOR_CONTRACT is not set") as err:
        contract_address(type("S", (), {"w3": w3})(), "AuditAnchor")
    assert "0123456789abcdef" not in str(err.value) and "mainnet.infura.io" in str(err.value)
    monkeypatch.setenv("LEDGER_ANCHOR_CONTRACT", "0x" + "ab" * 20)
    with pytest.raises(ChainError, match="no contract code at that address on chain 1") as err:
        contract_address(type("S", (), {"w3": w3})(), "AuditAnchor")
    assert "0123456789abcdef" not in str(err.value) and "mainnet.infura.io" in str(err.value)


# -- where the contracts come from -----------------------------------------------------------------

@pytest.mark.services
def test_off_a_local_chain_the_anchor_and_bridge_refuse_to_start_without_their_configured_address(
        chain, stack_dir, stack_config, monkeypatch):
    """The running anvil, taken as not local (LEDGER_AUTO_DEPLOY=off makes every chain so): nothing is
    deployed, each entry point names the variable it needs."""
    from ledger_pipelines.anchor import anchor_report
    from ledger_pipelines.triggers import BridgeRecorder

    monkeypatch.setenv("LEDGER_AUTO_DEPLOY", "off")
    monkeypatch.setenv("LEDGER_ANCHOR_RPC_URL", stack_config.anvil_url)
    monkeypatch.setenv("LEDGER_BRIDGE_RPC_URL", stack_config.anvil_url)
    head = chain.eth.block_number
    with pytest.raises(ChainError, match=r"^LEDGER_ANCHOR_CONTRACT is not set: the address of AuditAnchor on chain "
                                         r"31337 .* must come from the configuration"):
        anchor_report("2026-11-24", {"day": "2026-11-24", "merkle_root": "11" * 32})
    with pytest.raises(ChainError, match=r"^LEDGER_BRIDGE_CONTRACT is not set: the address of LedgerBridge"):
        BridgeRecorder()
    assert chain.eth.block_number == head and not (stack_dir / "deployments.json").exists()  # nothing deployed


@pytest.mark.services
def test_configured_addresses_are_checksummed_and_hold_code(chain, stack_dir, stack_config, monkeypatch):
    from ledger_pipelines.chain import contract_address
    from ledger_pipelines.contracts import deploy

    signer = _signer(stack_config)
    bridge = deploy(chain, "LedgerBridge")
    monkeypatch.setenv("LEDGER_AUTO_DEPLOY", "off")
    for value, message in [(bridge.address.lower(), "is not in its EIP-55 checksummed form"),
                           (bridge.address[2:], "is not a 0x-prefixed 20-byte hex address"),
                           (bridge.address + "00", "is not a 0x-prefixed 20-byte hex address"),
                           (chain.eth.accounts[3], "no contract code at that address on chain 31337")]:
        monkeypatch.setenv("LEDGER_BRIDGE_CONTRACT", value)
        with pytest.raises(ChainError, match=f"^LEDGER_BRIDGE_CONTRACT=.*{message}"):
            contract_address(signer, "LedgerBridge")
    monkeypatch.setenv("LEDGER_BRIDGE_CONTRACT", bridge.address)
    assert contract_address(signer, "LedgerBridge") == bridge.address


@pytest.mark.services
def test_on_the_local_chain_two_workers_deploy_once_and_the_deployment_block_is_recorded(
        chain, stack_dir, stack_config):
    from ledger_pipelines.chain import chain_key, contract_address

    signers = [_signer(stack_config), _signer(stack_config)]
    barrier, got = threading.Barrier(2), []

    def worker(signer):
        barrier.wait()
        got.append(contract_address(signer, "AuditAnchor"))

    threads = [threading.Thread(target=worker, args=(s,)) for s in signers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(got) == 2 and got[0] == got[1]
    record = json.loads((stack_dir / "deployments.json").read_text())[chain_key(chain)]
    assert record["AuditAnchor"] == got[0]
    block = record["blocks"]["AuditAnchor"]
    assert chain.eth.get_code(got[0], block_identifier=block) != b""
    assert chain.eth.get_code(got[0], block_identifier=block - 1) == b""
    deployments = [b for b in range(block - 1, chain.eth.block_number + 1)
                   if any(tx["to"] is None for tx in chain.eth.get_block(b, full_transactions=True)["transactions"])]
    assert deployments == [block]  # one deployment, not one per worker


# -- events read from the deployment block, paged ---------------------------------------------------

@pytest.mark.services
def test_the_anchor_lookup_pages_from_the_deployment_block(chain, stack_dir, stack_config, rpc_calls, monkeypatch):
    from ledger_pipelines.anchor import anchor_report, find_anchor_tx
    from ledger_pipelines.chain import contract_address

    signer = _signer(stack_config)
    _mine(chain, 40)  # blocks before the contract: never read
    address = contract_address(signer, "AuditAnchor")
    (deploy_tx,) = chain.eth.get_block(chain.eth.block_number)["transactions"]
    deployed = chain.eth.get_transaction_receipt(deploy_tx)
    assert deployed["contractAddress"] == address
    _mine(chain, 300)
    audit = {"day": "2026-11-24", "merkle_root": "ab" * 32}
    first = anchor_report("2026-11-24", audit, signer)
    _mine(chain, 200)

    for source in ("the deployment record", "a binary search on eth_getCode"):
        if source.startswith("a binary"):
            (stack_dir / "deployments.json").unlink()
            monkeypatch.setattr(chain_mod, "_DEPLOY_BLOCKS", {})
        rpc_calls.clear()
        found = find_anchor_tx(chain, address, "2026-11-24", 1, page=64)
        assert found == first, source
        ranges = [(int(p[0]["fromBlock"], 16), int(p[0]["toBlock"], 16)) for m, p in rpc_calls if m == "eth_getLogs"]
        assert ranges[0][0] == deployed["blockNumber"], source  # from the deployment block, not 0
        assert len(ranges) >= (chain.eth.block_number - deployed["blockNumber"]) // 64, source
        assert all(hi - lo + 1 <= 64 for lo, hi in ranges), source
        assert all(b[0] == a[1] + 1 for a, b in zip(ranges, ranges[1:])), source  # contiguous: no block skipped
        assert ranges[-1][1] == chain.eth.block_number, source
        code_calls = sum(1 for m, _ in rpc_calls if m == "eth_getCode")
        assert code_calls <= 2 + chain.eth.block_number.bit_length() + 1, source  # O(log n)

    monkeypatch.setenv("LEDGER_ANCHOR_FROM_BLOCK", str(first["block_number"]))
    rpc_calls.clear()
    assert find_anchor_tx(chain, address, "2026-11-24", 1, page=64) == first
    assert [int(p[0]["fromBlock"], 16) for m, p in rpc_calls if m == "eth_getLogs"][0] == first["block_number"]
    monkeypatch.setenv("LEDGER_ANCHOR_FROM_BLOCK", "-3")
    with pytest.raises(ChainError, match="LEDGER_ANCHOR_FROM_BLOCK='-3' is not a block number"):
        find_anchor_tx(chain, address, "2026-11-24", 1)


@pytest.mark.services
def test_the_bridge_looks_up_a_recorded_reference_paged_from_the_deployment_block(
        chain, stack_dir, stack_config, rpc_calls, monkeypatch):
    from ledger_pipelines.triggers import BridgeRecorder

    monkeypatch.setenv("LEDGER_BRIDGE_RPC_URL", stack_config.anvil_url)
    _mine(chain, 25)
    recorder = BridgeRecorder(log_page=32)  # deploys on the local chain and records the block
    start = chain.eth.get_code(recorder.address, block_identifier=recorder.from_block - 1)
    assert start == b"" and chain.eth.get_code(recorder.address, block_identifier=recorder.from_block) != b""
    _mine(chain, 100)
    recorder.signer.wait(recorder.signer.send(recorder.contract.functions.record("E2E-P1", "EUR", 1, 2, "core:1")))
    _mine(chain, 150)
    rpc_calls.clear()
    assert recorder._recorded_by("E2E-P1") == "core:1"
    ranges = [(int(p[0]["fromBlock"], 16), int(p[0]["toBlock"], 16)) for m, p in rpc_calls if m == "eth_getLogs"]
    assert ranges[0][0] == recorder.from_block and len(ranges) >= 8 and all(hi - lo < 32 for lo, hi in ranges)
    assert recorder._recorded_by("E2E-P2") is None


def test_a_range_refused_more_often_than_the_retries_is_halved_to_the_end_never_skipped():
    """A node that accepts 3 blocks a call at most, asked for 1000 blocks at once: 9 halvings, more than the
    reader's 5 retries; every block is still read."""
    from ledger_pipelines.config import _ledger
    from ledger_pipelines.connectors.evm.reader import EvmReader

    asked = []

    class Node:
        def make_request(self, method, params):
            lo, hi = int(params[0]["fromBlock"], 16), int(params[0]["toBlock"], 16)
            asked.append((lo, hi))
            if hi - lo + 1 > 3:
                return {"jsonrpc": "2.0", "id": 1, "error": {"code": -32005,
                                                             "message": "query returned more than 10000 results"}}
            return {"jsonrpc": "2.0", "id": 1, "result": [{"block": b} for b in range(lo, hi + 1)]}

    reader = EvmReader(_ledger({"name": "eth", "kind": "evm", "max_block_range": 1000}), "http://127.0.0.1:1")
    reader.provider = Node()
    assert [x["block"] for x in reader.get_logs(0, 999)] == list(range(1000))
    assert asked[0] == (0, 999) and max(hi - lo + 1 for lo, hi in asked[9:]) <= 3


def test_a_refused_connection_is_retried_not_taken_for_a_range_too_large():
    from ledger_pipelines.connectors.evm.reader import fetch_paged

    asked, sleeps = [], []

    def fetch(lo, hi):
        asked.append((lo, hi))
        if len(asked) <= 2:
            raise requests.exceptions.ConnectionError("HTTPConnectionPool: Max retries exceeded with url: /")
        return [(lo, hi)]

    assert fetch_paged(fetch, 0, 99, 100, sleep=sleeps.append) == [(0, 99)]
    assert asked == [(0, 99)] * 3 and sleeps == [0.25, 0.5]

    def down(lo, hi):
        asked.append((lo, hi))
        raise requests.exceptions.ConnectionError("Connection refused")

    asked.clear()
    with pytest.raises(requests.exceptions.ConnectionError):
        fetch_paged(down, 0, 9, 10, retries=2, sleep=sleeps.append)
    assert asked == [(0, 9)] * 3  # retried, then raised: the range is neither halved nor skipped


# -- send failures: permanent or transient ----------------------------------------------------------

def test_only_reverts_and_invalid_arguments_are_permanent():
    from eth_abi.exceptions import EncodingError
    from web3.exceptions import ContractLogicError, MismatchedABI, TimeExhausted, Web3RPCError

    def rpc_error(code, message):
        return Web3RPCError(message, rpc_response={"jsonrpc": "2.0", "id": 1,
                                                   "error": {"code": code, "message": message}})

    http_503 = requests.exceptions.HTTPError("503 Server Error: Service Unavailable")
    assert permanent_failure(ContractLogicError("execution reverted: only owner")) == "execution reverted: only owner"
    assert permanent_failure(rpc_error(3, "execution reverted: already recorded")) == \
        "execution reverted: already recorded"
    assert permanent_failure(rpc_error(-32602, "invalid argument 0: hex string without 0x prefix")).startswith(
        "invalid argument")
    assert permanent_failure(MismatchedABI("Could not identify the intended function")).startswith("invalid argument")
    assert permanent_failure(EncodingError("Value 256 cannot be encoded in 8 bits")).startswith("invalid argument")
    for transient in [requests.exceptions.ConnectionError("[Errno 111] Connection refused"),
                      requests.exceptions.ReadTimeout("read timed out"), TimeoutError("timed out"), http_503,
                      TimeExhausted("not in the chain after 60 seconds"),
                      rpc_error(-32000, "nonce too low"), rpc_error(-32000, "replacement transaction underpriced"),
                      rpc_error(-32003, "insufficient funds for gas * price + value"),
                      rpc_error(-32000, "node is starting up"), ChainError("no event found")]:
        assert permanent_failure(transient) is None, transient


def test_secrets_of_the_rpc_url_are_taken_out_of_messages():
    url = "https://user:pa55word@mainnet.example.com/v3/0123456789abcdef?key=s3cr3tkey"
    message = ("HTTPSConnectionPool(host='mainnet.example.com', port=443): Max retries exceeded with url: "
               "/v3/0123456789abcdef?key=s3cr3tkey (user:pa55word)")
    cleaned = redact(message, url)
    for secret in ("0123456789abcdef", "s3cr3tkey", "pa55word"):
        assert secret not in cleaned
    assert "mainnet.example.com" in cleaned


@pytest.mark.services
def test_a_day_anchored_whose_event_is_not_in_the_range_read_is_an_error_not_a_new_version(
        chain, stack_dir, stack_config, monkeypatch):
    from ledger_pipelines.anchor import anchor_report
    from ledger_pipelines.chain import contract, contract_address

    signer = _signer(stack_config)
    address = contract_address(signer, "AuditAnchor")
    audit = {"day": "2026-11-25", "merkle_root": "cd" * 32}
    first = anchor_report("2026-11-25", audit, signer)
    assert anchor_report("2026-11-25", audit, signer) == first  # a re-run finds its anchor
    later = chain.eth.block_number + 1
    monkeypatch.setenv("LEDGER_ANCHOR_FROM_BLOCK", str(later))  # after the anchoring transaction
    with pytest.raises(ChainError, match=rf"^2026-11-25 is anchored on {address} as version 1 .* no Anchored event "
                                         rf"of it was found in blocks {later} to \d+ \(is LEDGER_ANCHOR_FROM_BLOCK "
                                         r"later than the anchoring transaction"):
        anchor_report("2026-11-25", audit, signer)
    assert contract(signer, "AuditAnchor", address).functions.versions("2026-11-25").call() == 1  # not again


def test_a_local_chain_without_past_states_is_read_from_genesis_and_a_remote_one_is_an_error(monkeypatch):
    """anvil after evm_revert answers BlockOutOfRangeError for past blocks: on a local development chain the
    deployment-block search falls back to genesis (its history is short); elsewhere it says to set the block."""
    from types import SimpleNamespace

    from ledger_pipelines import chain

    monkeypatch.delenv("LEDGER_ANCHOR_FROM_BLOCK", raising=False)

    def fake(url: str, chain_id: int):
        def get_code(address, block_identifier):
            if block_identifier < 37:
                raise ValueError("BlockOutOfRangeError: block height is 37 but requested was 18")
            return b"\x60\x80"
        eth = SimpleNamespace(block_number=37, chain_id=chain_id, get_code=get_code)
        return SimpleNamespace(eth=eth, provider=SimpleNamespace(endpoint_uri=url))

    address = "0x" + "ab" * 20
    assert chain._search_deployment_block(fake("http://127.0.0.1:8545", 31337), "AuditAnchor", address,
                                          "LEDGER_ANCHOR_FROM_BLOCK") == 0
    with pytest.raises(chain.ChainError, match="set LEDGER_ANCHOR_FROM_BLOCK"):
        chain._search_deployment_block(fake("https://node.example/rpc", 1), "AuditAnchor", address,
                                       "LEDGER_ANCHOR_FROM_BLOCK")


# -- the anchor's finality ---------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["-1", "1e3", "²", "3.0", "10001", "0x10"])
def test_a_confirmation_count_that_is_not_a_plain_number_is_refused_by_name(value, monkeypatch):
    from ledger_pipelines.anchor import confirmations

    monkeypatch.setenv("LEDGER_ANCHOR_CONFIRMATIONS", value)
    with pytest.raises(ChainError, match=r"^LEDGER_ANCHOR_CONFIRMATIONS=.* is not a number of confirmations"):
        confirmations()
    monkeypatch.setenv("LEDGER_ANCHOR_CONFIRMATIONS", " 12 ")
    assert confirmations() == 12


def _anchor_tx(w3, signer, address, day: str, timeout: float = 30.0) -> str:
    """The hash of the transaction that anchored ``day`` (waited for: the anchoring runs in a thread)."""
    import time

    from ledger_pipelines.chain import contract

    c = contract(signer, "AuditAnchor", address)
    deadline = time.monotonic() + timeout
    while not c.functions.versions(day).call():
        assert time.monotonic() < deadline, f"{day} was never anchored"
        time.sleep(0.02)
    block = w3.eth.get_block("latest")
    (tx,) = block["transactions"]
    return "0x" + tx.hex().removeprefix("0x")


@pytest.mark.services
def test_the_anchor_record_waits_for_its_confirmations_and_names_the_block_a_reorganisation_moved_it_to(
        chain, stack_dir, stack_config, monkeypatch):
    from ledger_pipelines import anchor as anchor_mod
    from ledger_pipelines.chain import contract_address
    from ledger_pipelines.commitment import report_version

    monkeypatch.setenv("LEDGER_ANCHOR_CONFIRMATIONS", "3")
    monkeypatch.setattr(anchor_mod, "_POLL_SECONDS", 0.02)
    signer = _signer(stack_config)
    address = contract_address(signer, "AuditAnchor")
    day, root = "2026-11-26", "ef" * 32
    result: dict = {}
    worker = threading.Thread(target=lambda: result.update(
        record=anchor_mod.anchor_report(day, {"day": day, "merkle_root": root}, signer)))
    worker.start()
    try:
        tx = _anchor_tx(chain, signer, address, day)
        first_block = chain.eth.get_transaction_receipt(tx)["blockNumber"]
        # the block is taken away and the transaction mined again one block later
        raw = chain.provider.make_request("eth_getRawTransactionByHash", [tx])["result"]
        _mine(chain, 1)
        chain.provider.make_request("anvil_reorg", [2, [[raw, 1]]])
        moved_to = chain.eth.get_transaction_receipt(tx)["blockNumber"]
        assert moved_to == first_block + 1
        _mine(chain, 1)
        worker.join(0.5)
        assert worker.is_alive() and not result  # one block on top of it: no record yet
        _mine(chain, 2)
    finally:
        worker.join(30)
    record = result["record"]
    assert record["tx_hash"] == tx and record["block_number"] == moved_to and record["version"] == 1
    version = report_version({"day": day, "merkle_root": root})
    checked = anchor_mod.check_anchored(day, root, version, record, stack_config.anvil_url, confirmations=3)
    assert checked["confirmations"] == 3 and checked["block_number"] == moved_to
    with pytest.raises(ChainError, match=rf"in block {moved_to} has 3 confirmations, fewer than the 4 asked"):
        anchor_mod.check_anchored(day, root, version, record, stack_config.anvil_url, confirmations=4)


@pytest.mark.services
def test_an_anchor_not_deep_enough_in_time_records_nothing_and_a_re_run_reuses_its_transaction(
        chain, stack_dir, stack_config, monkeypatch):
    from ledger_pipelines import anchor as anchor_mod
    from ledger_pipelines.chain import contract, contract_address

    monkeypatch.setenv("LEDGER_ANCHOR_CONFIRMATIONS", "5")
    monkeypatch.setenv("LEDGER_ANCHOR_TIMEOUT", "1")
    monkeypatch.setattr(anchor_mod, "_POLL_SECONDS", 0.05)
    signer = _signer(stack_config)
    address = contract_address(signer, "AuditAnchor")
    day, audit = "2026-11-27", {"day": "2026-11-27", "merkle_root": "ab" * 32}
    with pytest.raises(ChainError, match=r"^anchor tx 0x[0-9a-f]{64} is in block \d+, 0 of 5 confirmations after 1s "
                                         r"\(LEDGER_ANCHOR_CONFIRMATIONS=5, LEDGER_ANCHOR_TIMEOUT\): no anchor recorded"):
        anchor_mod.anchor_report(day, audit, signer)
    tx = "0x" + chain.eth.get_block("latest")["transactions"][0].hex().removeprefix("0x")
    _mine(chain, 5)
    record = anchor_mod.anchor_report(day, audit, signer)
    assert record["tx_hash"] == tx and record["version"] == 1
    assert contract(signer, "AuditAnchor", address).functions.versions(day).call() == 1  # not anchored twice


@pytest.mark.services
def test_a_bad_finality_setting_stops_the_anchoring_before_a_transaction_is_sent(chain, stack_dir, stack_config,
                                                                                   monkeypatch):
    from ledger_pipelines.anchor import anchor_report

    signer = _signer(stack_config)
    before = chain.eth.get_transaction_count(signer.address)
    monkeypatch.setenv("LEDGER_ANCHOR_TIMEOUT", "ten")
    with pytest.raises(ChainError, match=r"^LEDGER_ANCHOR_TIMEOUT='ten' is not a number of seconds"):
        anchor_report("2026-11-28", {"day": "2026-11-28", "merkle_root": "12" * 32}, signer)
    assert chain.eth.get_transaction_count(signer.address) == before
