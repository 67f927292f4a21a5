"""The demo's chain legs at volume: every transfer of a 30,000-payment day is sent in JSON-RPC batches
(dozens of them, sent back to back) and mined in its 30-minute slot, with nonces that never collide
and a base fee that does not climb.

The sending rewinds block time and turns automine off, which the shared anvil's other users must not
see: the test runs the stack's anvil binary on a port and a genesis of its own."""

from __future__ import annotations

import socket
import subprocess
import time
from datetime import datetime, timedelta, timezone

import pytest

from ledger_pipelines.local.stack import REPO_ROOT

pytestmark = pytest.mark.services

PAYMENTS = 30_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def own_anvil():
    binary = REPO_ROOT / "node_modules" / ".bin" / "anvil"
    if not binary.exists():
        pytest.skip("anvil missing: run scripts/setup.sh")
    day = datetime.now(timezone.utc).date() - timedelta(days=1)
    genesis = int(datetime(day.year, day.month, day.day, tzinfo=timezone.utc).timestamp()) - 86400
    port = _free_port()
    proc = subprocess.Popen([str(binary), "--host", "127.0.0.1", "--port", str(port), "--chain-id", "31337",
                             "--silent", "--timestamp", str(genesis)])
    from ledger_pipelines.local.demo import Rpc

    rpc = Rpc(f"http://127.0.0.1:{port}")
    deadline = time.monotonic() + 30
    while True:
        try:
            rpc.call("eth_chainId", [])
            break
        except Exception:
            if time.monotonic() > deadline:
                proc.kill()
                raise
            time.sleep(0.2)
    yield rpc, day, genesis
    proc.terminate()
    proc.wait(30)


def test_a_day_of_30000_payments_is_mined_slot_by_slot(own_anvil):
    from ledger_pipelines.chain import Signer, contract
    from ledger_pipelines.local.corridor import chain_transfers, generate
    from ledger_pipelines.local.demo import Progress, _mine_week, treasury_funds

    rpc, day, genesis = own_anvil
    signer = Signer.from_env(rpc.url, "LEDGER_TEST_UNSET_KEY")  # anvil's dev key
    rpc.call("evm_setNextBlockTimestamp", [genesis + 60])
    token_address = signer.deploy("LedgerToken", "USD Coin (demo)", "USDC", 6)
    token = contract(signer, "LedgerToken", token_address)
    treasury, wallet = (a.lower() for a in rpc.call("eth_accounts", [])[1:3])
    week = generate([day], PAYMENTS)
    rpc.call("evm_setNextBlockTimestamp", [genesis + 61])
    signer.wait(signer.send(token.functions.mint(signer.w3.to_checksum_address(treasury), treasury_funds(week))))
    first = rpc.call("eth_blockNumber", [])

    rpc.call("evm_setAutomine", [False])
    try:
        sent = _mine_week(rpc, token_address, treasury, wallet, week, lambda: 0, Progress(1))
    finally:
        rpc.call("evm_setAutomine", [True])

    legs = chain_transfers(week)
    assert sent == len(legs) > PAYMENTS - 10
    assert int(rpc.call("eth_getTransactionCount", [treasury, "latest"]), 16) == sent
    pool = rpc.call("txpool_status", [])
    assert int(pool["pending"], 16) == int(pool["queued"], 16) == 0
    # every leg succeeded: one Transfer log per leg, in a block of the leg's own 30-minute slot
    logs = signer.w3.eth.get_logs({"address": signer.w3.to_checksum_address(token_address),
                                   "fromBlock": int(first, 16) + 1, "toBlock": "latest",
                                   "topics": [signer.w3.keccak(text="Transfer(address,address,uint256)").hex()]})
    assert len(logs) == sent
    blocks = {n: signer.w3.eth.get_block(n) for n in {lg["blockNumber"] for lg in logs}}
    mined: dict[int, int] = {}
    for lg in logs:
        slot = blocks[lg["blockNumber"]]["timestamp"] // 1800
        mined[slot] = mined.get(slot, 0) + 1
    slots: dict[int, int] = {}
    for at, _ in legs:
        slots[int(at.timestamp()) // 1800] = slots.get(int(at.timestamp()) // 1800, 0) + 1
    assert mined == slots
    # the blocks stay below their gas target, so the base fee never rises while the day is mined
    fees = [blocks[n]["baseFeePerGas"] for n in sorted(blocks)]
    assert all(b <= a for a, b in zip(fees, fees[1:])), fees[:5]
