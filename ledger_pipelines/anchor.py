"""Anchoring a day's audit report on an EVM chain (``AuditAnchor``) and checking the anchor.

Configuration (environment): ``LEDGER_ANCHOR_RPC_URL`` (default: the local anvil),
``LEDGER_ANCHOR_KEY`` (hex private key; on a local anvil, chain id 31337 on a loopback RPC host, anvil's
first dev key is used when unset), ``LEDGER_ANCHOR_CONTRACT`` (required, EIP-55 checksummed, code at the address;
only on a local development chain, see :mod:`ledger_pipelines.chain`, it defaults to a contract the
project deploys once per chain and remembers), ``LEDGER_ANCHOR_FROM_BLOCK`` (the block the contract's
events are read from, default: its deployment block, recorded or found by binary search),
``LEDGER_ANCHOR=off`` turns anchoring off (reports then say they are not anchored, and
``verify --rpc`` fails on them).

Finality. The anchor record names the block of the anchoring transaction, and ``verify --rpc`` holds it
to the chain, so it is written only once that block is ``LEDGER_ANCHOR_CONFIRMATIONS`` deep (default 0:
the first receipt; a chain that can reorganise needs its reorganisation depth) and still on the node's
canonical chain, its receipt read again then: a transaction a reorganisation moved to another block is
recorded in that block. A transaction not that deep within ``LEDGER_ANCHOR_TIMEOUT`` seconds (default
600), or no longer in any block, stops the run with an error and no anchor record; a re-run reuses the
transaction once the contract holds it, else anchors again.

Re-running a partition that reproduces the same Merkle root reuses the existing anchor; a different
root is anchored as a new version of the partition (the contract never overwrites a version). When the
contract holds the same root and report version but its ``Anchored`` event is not in the blocks read
(``LEDGER_ANCHOR_FROM_BLOCK`` later than the anchoring transaction, a node lagging behind), the run stops
with an error naming the range and the variable instead of anchoring the day again.
"""

from __future__ import annotations

import json
import os
import re
import time
from typing import Any

from .chain import (FROM_BLOCK_ENV, LOG_PAGE_BLOCKS, ChainError, Signer, contract, contract_address, contract_logs,
                    count_env, deployment_block, redact)
from .commitment import anchor_record_problem, report_version
from .settings import StackConfig


def anchor_url() -> str:
    return os.environ.get("LEDGER_ANCHOR_RPC_URL") or StackConfig.from_env().anvil_url


def enabled() -> bool:
    return os.environ.get("LEDGER_ANCHOR", "on").lower() not in ("off", "0", "false", "no")


CONFIRMATIONS_ENV = "LEDGER_ANCHOR_CONFIRMATIONS"
TIMEOUT_ENV = "LEDGER_ANCHOR_TIMEOUT"
_POLL_SECONDS = 1.0


def confirmations() -> int:
    """Blocks on top of the anchoring transaction's before its record is written (``LEDGER_ANCHOR_CONFIRMATIONS``)."""
    n = count_env(CONFIRMATIONS_ENV, "a number of confirmations", limit=10_000)
    return 0 if n is None else n


def _settled(w3, tx_hash: str, depth: int, timeout: float) -> Any:
    """The receipt of ``tx_hash`` once its block is ``depth`` blocks deep and still the node's block at that
    height, read again then (a reorganisation may have moved the transaction); a :class:`ChainError` when it
    is not so within ``timeout`` seconds."""
    from web3.exceptions import TransactionNotFound

    deadline = time.monotonic() + timeout
    while True:
        try:
            receipt = w3.eth.get_transaction_receipt(tx_hash)
        except TransactionNotFound:
            receipt = None
        head = w3.eth.block_number
        if receipt is not None:
            block = receipt["blockNumber"]
            if head - block >= depth and w3.eth.get_block(block)["hash"] == receipt["blockHash"]:
                return receipt
            state = f"in block {block}, {max(head - block, 0)} of {depth} confirmations"
        else:
            state = "in no block of the chain (dropped by a reorganisation?)"
        if time.monotonic() >= deadline:
            raise ChainError(f"anchor tx {tx_hash} is {state} after {timeout:.0f}s ({CONFIRMATIONS_ENV}={depth}, "
                             f"{TIMEOUT_ENV}): no anchor recorded; run the day again once the chain has moved on")
        time.sleep(_POLL_SECONDS)


def _finality() -> tuple[int, int]:
    """(confirmations, timeout in seconds) of the anchoring, from the environment (read before anything is sent)."""
    timeout = count_env(TIMEOUT_ENV, "a number of seconds", limit=86_400)
    return confirmations(), 600 if timeout is None else timeout


def _final_record(w3, c, address: str, tx_hash: str, finality: tuple[int, int]) -> dict[str, Any]:
    """The anchor record of ``tx_hash`` once it is final (:func:`_settled`)."""
    receipt = _settled(w3, tx_hash, *finality)
    if receipt["status"] != 1:
        raise ChainError(f"anchoring failed in tx {tx_hash} (block {receipt['blockNumber']})")
    return _record(w3, address, receipt, _event(c, receipt))


def _event(c, receipt) -> dict[str, Any]:
    events = c.events.Anchored().process_receipt(receipt)
    if not events:
        raise ChainError(f"tx {receipt['transactionHash'].hex()} emitted no Anchored event")
    return events[0]


def anchor_report(partition: str, audit: dict[str, Any], signer: Signer | None = None) -> dict[str, Any]:
    """Anchor ``audit['merkle_root']`` for ``partition``; returns the anchor record kept in the report."""
    finality = _finality()  # a bad value stops the run before a transaction is sent
    signer = signer or Signer.from_env(anchor_url(), "LEDGER_ANCHOR_KEY")
    address = contract_address(signer, "AuditAnchor")
    c = contract(signer, "AuditAnchor", address)
    root = bytes.fromhex(audit["merkle_root"])
    version = report_version(audit)
    existing = c.functions.versions(partition).call()
    if existing:
        last_root, last_version, _ = c.functions.get(partition, existing).call()
        if last_root == root and last_version == version:  # a re-run reproduced the anchored report
            w3 = signer.w3
            first = deployment_block(w3, "AuditAnchor", address)
            found = find_anchor_tx(w3, address, partition, existing)
            if found:
                return _final_record(w3, c, address, found["tx_hash"], finality)
            raise ChainError(f"{partition} is anchored on {address} as version {existing} with this report's root "
                             f"and report version, but no Anchored event of it was found in blocks {first} to "
                             f"{w3.eth.block_number} (is {FROM_BLOCK_ENV['AuditAnchor']} later than the anchoring "
                             f"transaction, or is the node behind?); not anchored again")
    tx_hash = signer.send(c.functions.anchor(partition, root, version))
    receipt = signer.wait(tx_hash)
    if receipt["status"] != 1:
        raise ChainError(f"anchoring {partition} failed in tx {tx_hash}")
    return _final_record(signer.w3, c, address, tx_hash, finality)


def _record(w3, address: str, receipt, ev) -> dict[str, Any]:
    return {"chain_id": w3.eth.chain_id, "contract": address, "tx_hash": "0x" + receipt["transactionHash"].hex().removeprefix("0x"),
            "block_number": receipt["blockNumber"], "partition": ev["args"]["partition"],
            "version": ev["args"]["version"], "merkle_root": ev["args"]["merkleRoot"].hex(),
            "report_version": ev["args"]["reportVersion"]}


def find_anchor_tx(w3, address: str, partition: str, version: int,
                   page: int = LOG_PAGE_BLOCKS) -> dict[str, Any] | None:
    """The anchor record of ``version`` of ``partition``, from its ``Anchored`` event (read from the contract's
    deployment block to the head, ``page`` blocks a call at most), or None."""
    c = contract(w3, "AuditAnchor", address)
    key = w3.keccak(text=partition)
    for lg in contract_logs(w3, address, [None, "0x" + key.hex().removeprefix("0x")],
                            deployment_block(w3, "AuditAnchor", address), page=page):
        ev = c.events.Anchored().process_log(lg)
        if ev["args"]["partition"] == partition and ev["args"]["version"] == version:
            return _record(w3, address, w3.eth.get_transaction_receipt(lg["transactionHash"]), ev)
    return None


_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")


def trusted_contract(w3, given: str | None) -> tuple[str, str]:
    """The anchor contract ``verify`` trusts, and where it came from: ``--contract``, else the configuration
    (``LEDGER_ANCHOR_CONTRACT``), else the deployment record this project keeps for the chain and its genesis
    block. Never the address a report names for itself: a forger can deploy a contract of their own."""
    from .chain import _registry, chain_key

    for address, source in ((given, "--contract"),
                            (os.environ.get("LEDGER_ANCHOR_CONTRACT"), "the configuration (LEDGER_ANCHOR_CONTRACT)")):
        if address:
            if not _ADDRESS.fullmatch(address):
                raise ChainError(f"the anchor contract from {source} is not a 0x-prefixed 20-byte address")
            return address, source
    path = _registry()
    key = chain_key(w3)
    try:
        address = json.loads(path.read_text()).get(key, {}).get("AuditAnchor") if path.exists() else None
    except (OSError, ValueError, AttributeError) as exc:
        raise ChainError(f"the deployment record {path} cannot be read: {exc}") from None
    if not address or not _ADDRESS.fullmatch(str(address)):
        raise ChainError(f"no anchor contract to check against: pass --contract ADDR or set LEDGER_ANCHOR_CONTRACT "
                         f"(no deployment record for chain {key} in {path}; the address a report names is not trusted)")
    return address, f"the deployment record for chain {key} ({path})"


def check_anchored(day: str, root: str, version: str, anchor: dict[str, Any], url: str,
                   expected_contract: str | None = None, confirmations: int = 0) -> dict[str, Any]:
    """The trusted contract holds, as the anchor record's version of ``day``, exactly ``root`` and report
    ``version``; the anchoring tx succeeded and emitted that, in the block the record names, at least
    ``confirmations`` blocks deep; and no later version of the day exists."""
    from .contracts import web3_for

    if not anchor:
        raise ChainError("the report carries no anchor (anchoring was off or failed)")
    problem = anchor_record_problem(anchor, day, root, version)
    if problem:
        raise ChainError(f"the report's anchor record {problem}")
    try:
        w3 = web3_for(url)
        chain_id = w3.eth.chain_id
        trusted, source = trusted_contract(w3, expected_contract)
        if anchor["chain_id"] != chain_id:
            raise ChainError(f"anchored on chain {anchor['chain_id']}, but {redact(url, url)} is chain {chain_id}")
        if anchor["contract"].lower() != trusted.lower():
            raise ChainError(f"the report says it was anchored through {anchor['contract']}, but the anchor contract "
                             f"is {trusted} (from {source}): expected contract {trusted}")
        if w3.eth.get_code(w3.to_checksum_address(trusted)) in (b"", None):
            raise ChainError(f"no contract code at {trusted} on chain {chain_id} (from {source})")
        c = contract(w3, "AuditAnchor", trusted)
        latest = c.functions.versions(day).call()
        v = anchor["version"]
        if not 1 <= v <= latest:
            raise ChainError(f"the report says version {v} of {day}, the contract holds {latest} version(s)")
        on_root, on_version, anchored_at = c.functions.get(day, v).call()
        if on_root.hex() != root or on_version != version:
            raise ChainError(f"on-chain anchor of {day} version {v} is root {on_root.hex()} with report version "
                             f"{on_version}; the report's contents give root {root} with report version {version}")
        try:
            receipt = w3.eth.get_transaction_receipt(anchor["tx_hash"])
        except Exception as exc:
            raise ChainError(f"anchor tx {anchor['tx_hash']} not found on chain: {exc}") from None
        if receipt["status"] != 1:
            raise ChainError(f"anchor tx {anchor['tx_hash']} reverted")
        if receipt["blockNumber"] != anchor["block_number"]:
            raise ChainError(f"anchor tx {anchor['tx_hash']} is in block {receipt['blockNumber']}, the report says "
                             f"block {anchor['block_number']}")
        depth = w3.eth.block_number - receipt["blockNumber"]
        if depth < confirmations:
            raise ChainError(f"anchor tx {anchor['tx_hash']} in block {receipt['blockNumber']} has {max(depth, 0)} "
                             f"confirmations, fewer than the {confirmations} asked: not final yet")
        logs = [lg for lg in receipt["logs"] if lg["address"].lower() == trusted.lower()]
        if not logs:
            raise ChainError(f"anchor tx {anchor['tx_hash']} emitted nothing from {trusted}")
        ev = c.events.Anchored().process_log(logs[0])["args"]
        got = (ev["partition"], ev["merkleRoot"].hex(), ev["version"], ev["reportVersion"])
        if got != (day, root, v, version):
            raise ChainError(f"on-chain anchor (partition, root, version, report version) in tx {anchor['tx_hash']} "
                             f"= {got}, the report has {(day, root, v, version)}")
        if latest > v:
            later_root, _, later_at = c.functions.get(day, latest).call()
            raise ChainError(f"superseded: {day} was anchored again as version {latest} (root {later_root.hex()}, "
                             f"at {_utc(later_at)}); this copy is version {v}, not the current report")
    except ChainError:
        raise
    except Exception as exc:  # the node's answers: connection refused, malformed replies, reverted calls
        raise ChainError(redact(f"the chain at {url} could not be asked: {type(exc).__name__}: {exc}", url)) from None
    return {"contract": trusted, "contract_source": source, "chain_id": chain_id, "version": v,
            "latest_version": latest, "tx_hash": anchor["tx_hash"], "block_number": receipt["blockNumber"],
            "confirmations": depth,
            "anchored_at": _utc(anchored_at), "partition": day}


def _utc(seconds: int) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
