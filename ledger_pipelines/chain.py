"""Writing to an EVM chain: a signer whose key comes from the environment, and contract deployments.

- The private key is read from an environment variable when a signer is made and kept out of every
  ``repr``, log line and Dagster metadata (only the derived address is shown).
- Deployments of the project's contracts are remembered per chain in ``<stack>/deployments.json``,
  keyed by chain id *and* genesis block hash, so a restarted anvil (new genesis) gets fresh contracts
  instead of pointing at addresses that hold no code. ``LEDGER_<NAME>_CONTRACT`` overrides.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .contracts import artifact, web3_for
from .stack import StackConfig

# anvil's first dev account: a publicly known key, used only when the chain is a local anvil (31337)
# and no key is configured. Never accepted for any other chain id.
ANVIL_DEV_KEY = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"
CONTRACT_ENV = {"AuditAnchor": "LEDGER_ANCHOR_CONTRACT", "LedgerBridge": "LEDGER_BRIDGE_CONTRACT"}
_KEY = re.compile(r"^(0x)?[0-9a-fA-F]{64}\Z")


class ChainError(RuntimeError):
    pass


# every Signer of this process with the same address sends under one lock: two of them (the anchor key and
# the bridge key may be the same key) must not ask for the same nonce at once
_SEND_LOCKS: dict[str, threading.Lock] = {}
_SEND_LOCKS_GUARD = threading.Lock()
# what a node says when the nonce is already taken (by another process using the same key)
_NONCE_TAKEN = ("nonce too low", "replacement transaction underpriced", "already known", "already imported")


def _send_lock(address: str) -> threading.Lock:
    with _SEND_LOCKS_GUARD:
        return _SEND_LOCKS.setdefault(address.lower(), threading.Lock())


@dataclass
class Signer:
    """Signs and sends transactions with one key."""

    w3: Any
    key: str = field(repr=False)
    address: str = ""
    chain_id: int = 0

    @classmethod
    def from_env(cls, url: str, key_env: str) -> "Signer":
        w3 = web3_for(url)
        chain_id = w3.eth.chain_id
        key = os.environ.get(key_env)
        if not key:
            if chain_id != 31337:
                raise ChainError(f"{key_env} is not set (the signing key for chain {chain_id})")
            key = ANVIL_DEV_KEY
        if not _KEY.match(key):
            raise ChainError(f"{key_env} is not a 32-byte hex private key")
        acct = w3.eth.account.from_key(key)
        return cls(w3=w3, key=key, address=acct.address, chain_id=chain_id)

    def send(self, call, gas: int | None = None) -> str:
        """Sign and send a contract call (``contract.functions.f(...)``); returns the tx hash (hex).

        The nonce is the node's count of the address's transactions, pending ones included, asked for each
        send: a count kept locally goes stale when another Signer or process sends with the same key, or
        when the chain is restarted. Sends of this process are serialized per address; when another
        process took the nonce meanwhile, the node refuses it and the send is tried again."""
        with _send_lock(self.address):
            for attempt in (1, 2, 3):
                nonce = self.w3.eth.get_transaction_count(self.address, "pending")
                tx = call.build_transaction({"from": self.address, "nonce": nonce, "chainId": self.chain_id,
                                             **({"gas": gas} if gas else {})})
                signed = self.w3.eth.account.sign_transaction(tx, self.key)
                try:
                    sent = self.w3.eth.send_raw_transaction(signed.raw_transaction).hex()
                    return sent if sent.startswith("0x") else "0x" + sent  # one form everywhere it is recorded
                except Exception as exc:
                    if attempt == 3 or not any(m in str(exc).lower() for m in _NONCE_TAKEN):
                        raise
        raise AssertionError("unreachable")

    def reset_nonce(self) -> None:
        """Nothing to forget (the nonce is asked of the node at each send); bench/bench_bridge.py calls it."""

    def wait(self, tx_hash: str, timeout: float = 60.0) -> Any:
        receipt = self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=timeout, poll_latency=0.05)
        return receipt

    def deploy(self, name: str, *args) -> str:
        abi, bytecode = artifact(name)
        call = self.w3.eth.contract(abi=abi, bytecode=bytecode).constructor(*args)
        receipt = self.wait(self.send(call))
        if receipt["status"] != 1:
            raise ChainError(f"deploying {name} failed in tx {receipt['transactionHash'].hex()}")
        return receipt["contractAddress"]


def _registry() -> Path:
    return StackConfig.from_env().root / "deployments.json"


def chain_key(w3) -> str:
    return f"{w3.eth.chain_id}:{w3.eth.get_block(0)['hash'].hex()}"


def contract_address(signer: Signer, name: str, deploy: bool = True) -> str:
    """The address of contract ``name`` on the signer's chain: env override, remembered, or deployed now."""
    env = CONTRACT_ENV[name]
    if os.environ.get(env):
        return signer.w3.to_checksum_address(os.environ[env])
    path = _registry()
    key = chain_key(signer.w3)
    doc = json.loads(path.read_text()) if path.exists() else {}
    address = doc.get(key, {}).get(name)
    if address and signer.w3.eth.get_code(address) not in (b"", None):
        return address
    if not deploy:
        raise ChainError(f"{name} is not deployed on chain {key}; set {env}")
    address = signer.deploy(name)
    doc = json.loads(path.read_text()) if path.exists() else {}
    doc.setdefault(key, {})[name] = address
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.{time.monotonic_ns()}.tmp")
    tmp.write_text(json.dumps(doc, indent=2, sort_keys=True))
    tmp.replace(path)
    return address


def contract(signer_or_w3, name: str, address: str):
    w3 = getattr(signer_or_w3, "w3", signer_or_w3)
    return w3.eth.contract(address=w3.to_checksum_address(address), abi=artifact(name)[0])
