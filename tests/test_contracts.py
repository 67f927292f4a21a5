"""Solidity contracts: committed artifacts equal a fresh npm-solc compile; behaviour on anvil."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from web3.exceptions import ContractLogicError

from ledger_pipelines.contracts import BUILD, deploy

REPO = Path(__file__).resolve().parent.parent


def test_committed_artifacts_equal_a_fresh_compile(tmp_path):
    out = subprocess.run([str(REPO / "scripts" / "compile_contracts.sh"), str(tmp_path)], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    fresh = sorted(p.name for p in tmp_path.iterdir())
    assert fresh == sorted(p.name for p in BUILD.iterdir()) and len(fresh) == 6
    for name in fresh:
        assert (tmp_path / name).read_bytes() == (BUILD / name).read_bytes(), name


@pytest.fixture
def w3(chain):
    return chain


@pytest.mark.services
def test_re_anchoring_a_partition_adds_a_version_and_keeps_the_old(w3):
    owner, other = w3.eth.accounts[:2]
    anchor = deploy(w3, "AuditAnchor")
    first, second = bytes.fromhex("11" * 32), bytes.fromhex("22" * 32)
    tx = anchor.functions.anchor("2026-11-24", first, "v1").transact({"from": owner})
    (event,) = anchor.events.Anchored().process_receipt(w3.eth.wait_for_transaction_receipt(tx))
    assert event["args"]["version"] == 1 and event["args"]["merkleRoot"] == first
    anchor.functions.anchor("2026-11-24", second, "v2").transact({"from": owner})
    assert anchor.functions.versions("2026-11-24").call() == 2
    assert anchor.functions.get("2026-11-24", 1).call()[:2] == [first, "v1"]
    assert anchor.functions.get("2026-11-24", 2).call()[:2] == [second, "v2"]
    with pytest.raises(ContractLogicError, match="only owner"):
        anchor.functions.anchor("2026-11-24", first, "v3").transact({"from": other})


@pytest.mark.services
def test_the_bridge_records_a_reference_once(w3):
    owner = w3.eth.accounts[0]
    bridge = deploy(w3, "LedgerBridge")
    tx = bridge.functions.record("E2E-42", "EUR", 123450, 2, "core_banking:7").transact({"from": owner})
    (event,) = bridge.events.PaymentRecorded().process_receipt(w3.eth.wait_for_transaction_receipt(tx))
    assert (event["args"]["paymentReference"], event["args"]["amount"], event["args"]["scale"]) == ("E2E-42", 123450, 2)
    with pytest.raises(ContractLogicError, match="already recorded"):
        bridge.functions.record("E2E-42", "EUR", 1, 2, "core_banking:8").transact({"from": owner})
    assert bridge.functions.recorded(w3.keccak(text="E2E-42")).call() is True
