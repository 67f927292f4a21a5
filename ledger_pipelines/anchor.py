"""Anchoring a day's audit report on an EVM chain (``AuditAnchor``) and checking the anchor.

Configuration (environment): ``LEDGER_ANCHOR_RPC_URL`` (default: the local anvil),
``LEDGER_ANCHOR_KEY`` (hex private key; on a local anvil, chain id 31337, anvil's first dev key
is used when unset), ``LEDGER_ANCHOR_CONTRACT`` (default: deployed once per chain and remembered),
``LEDGER_ANCHOR=off`` turns anchoring off (reports then say they are not anchored, and
``verify --rpc`` fails on them).

Re-running a partition that reproduces the same Merkle root reuses the existing anchor; a different
root is anchored as a new version of the partition (the contract never overwrites a version).
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from .chain import ChainError, Signer, contract, contract_address
from .stack import StackConfig


def anchor_url() -> str:
    return os.environ.get("LEDGER_ANCHOR_RPC_URL") or StackConfig.from_env().anvil_url


def enabled() -> bool:
    return os.environ.get("LEDGER_ANCHOR", "on").lower() not in ("off", "0", "false", "no")


def report_version(audit: dict[str, Any]) -> str:
    """What is anchored besides the root: a digest of the report's summary (without its anchor)."""
    body = {k: v for k, v in audit.items() if k != "anchor"}
    return "sha256:" + hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _event(c, receipt) -> dict[str, Any]:
    events = c.events.Anchored().process_receipt(receipt)
    if not events:
        raise ChainError(f"tx {receipt['transactionHash'].hex()} emitted no Anchored event")
    return events[0]


def anchor_report(partition: str, audit: dict[str, Any], signer: Signer | None = None) -> dict[str, Any]:
    """Anchor ``audit['merkle_root']`` for ``partition``; returns the anchor record kept in the report."""
    signer = signer or Signer.from_env(anchor_url(), "LEDGER_ANCHOR_KEY")
    address = contract_address(signer, "AuditAnchor")
    c = contract(signer, "AuditAnchor", address)
    root = bytes.fromhex(audit["merkle_root"])
    version = report_version(audit)
    existing = c.functions.versions(partition).call()
    if existing:
        last_root, last_version, _ = c.functions.get(partition, existing).call()
        if last_root == root and last_version == version:  # a re-run reproduced the anchored report
            found = find_anchor_tx(signer.w3, address, partition, existing)
            if found:
                return found
    receipt = signer.wait(signer.send(c.functions.anchor(partition, root, version)))
    if receipt["status"] != 1:
        raise ChainError(f"anchoring {partition} failed in tx {receipt['transactionHash'].hex()}")
    ev = _event(c, receipt)
    return _record(signer.w3, address, receipt, ev)


def _record(w3, address: str, receipt, ev) -> dict[str, Any]:
    return {"chain_id": w3.eth.chain_id, "contract": address, "tx_hash": "0x" + receipt["transactionHash"].hex().removeprefix("0x"),
            "block_number": receipt["blockNumber"], "partition": ev["args"]["partition"],
            "version": ev["args"]["version"], "merkle_root": ev["args"]["merkleRoot"].hex(),
            "report_version": ev["args"]["reportVersion"]}


def find_anchor_tx(w3, address: str, partition: str, version: int) -> dict[str, Any] | None:
    c = contract(w3, "AuditAnchor", address)
    key = w3.keccak(text=partition)
    for lg in w3.eth.get_logs({"address": address, "fromBlock": 0, "toBlock": "latest",
                               "topics": [None, "0x" + key.hex().removeprefix("0x")]}):
        ev = c.events.Anchored().process_log(lg)
        if ev["args"]["partition"] == partition and ev["args"]["version"] == version:
            return _record(w3, address, w3.eth.get_transaction_receipt(lg["transactionHash"]), ev)
    return None


def check_anchor(audit: dict[str, Any], url: str, expected_contract: str | None = None) -> dict[str, Any]:
    """The anchor of a report on chain: the tx exists, succeeded, emitted ``Anchored`` from the anchor
    contract for this partition with this root, and the contract's state still holds that version."""
    from .contracts import web3_for

    anchor = audit.get("anchor")
    if not anchor:
        raise ChainError("the report carries no anchor (anchoring was off or failed)")
    w3 = web3_for(url)
    if w3.eth.chain_id != anchor["chain_id"]:
        raise ChainError(f"anchored on chain {anchor['chain_id']}, but {url} is chain {w3.eth.chain_id}")
    address = anchor["contract"]
    if expected_contract and expected_contract.lower() != address.lower():
        raise ChainError(f"anchored through {address}, expected contract {expected_contract}")
    try:
        receipt = w3.eth.get_transaction_receipt(anchor["tx_hash"])
    except Exception as exc:
        raise ChainError(f"anchor tx {anchor['tx_hash']} not found on chain: {exc}") from None
    if receipt["status"] != 1:
        raise ChainError(f"anchor tx {anchor['tx_hash']} reverted")
    c = contract(w3, "AuditAnchor", address)
    logs = [lg for lg in receipt["logs"] if lg["address"].lower() == address.lower()]
    if not logs:
        raise ChainError(f"anchor tx {anchor['tx_hash']} emitted nothing from {address}")
    ev = c.events.Anchored().process_log(logs[0])
    got = (ev["args"]["partition"], ev["args"]["merkleRoot"].hex(), ev["args"]["version"])
    want = (audit["day"], audit["merkle_root"], anchor["version"])
    if got != want:
        raise ChainError(f"on-chain anchor (partition, root, version) = {got}, the report has {want}")
    state_root, _, _ = c.functions.get(audit["day"], anchor["version"]).call()
    if state_root.hex() != audit["merkle_root"]:
        raise ChainError(f"contract state holds root {state_root.hex()} for {audit['day']} v{anchor['version']}")
    return {"tx_hash": anchor["tx_hash"], "block_number": receipt["blockNumber"], "contract": address,
            "version": anchor["version"], "partition": audit["day"]}
