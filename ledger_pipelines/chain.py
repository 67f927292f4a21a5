"""Writing to an EVM chain: a signer whose key comes from the environment, and the project's contracts.

- The private key is read from an environment variable when a signer is made and kept out of every
  ``repr``, log line and Dagster metadata (only the derived address is shown).
- Where the contracts are (:func:`contract_address`). On a **local development chain** the project
  deploys ``AuditAnchor`` and ``LedgerBridge`` itself when they are not there yet, and remembers them in
  ``<stack>/deployments.json``, keyed by chain id *and* genesis block hash (a restarted anvil, new genesis,
  gets fresh contracts), with the block each was deployed in. A chain is a local development chain when
  **both** hold (:func:`is_local_dev_chain`): its chain id is 31337 (anvil, Hardhat) or 1337 (Ganache,
  geth ``--dev``), **and** the RPC endpoint's host is a loopback address, written as ``localhost`` or an
  IP literal in 127.0.0.0/8 or ``::1`` (the host name is not resolved: DNS never makes a chain local), in
  a plain URL: one with a backslash or user info, or whose host ``urllib3`` (which the HTTP client
  connects with) and ``urlsplit`` read differently, is never local. anvil's public dev key is the default
  signing key only on a local development chain of chain id 31337.
  ``LEDGER_AUTO_DEPLOY=off`` turns automatic deployment off on every chain. Deploying takes a file lock
  beside the record, so two workers of one machine deploy once.
- On every other chain the addresses come from the configuration, ``LEDGER_ANCHOR_CONTRACT`` and
  ``LEDGER_BRIDGE_CONTRACT``, and nothing starts without them. A configured address (on any chain) must
  be a 0x-prefixed 20-byte hex address in its EIP-55 checksummed form, with contract code at that address
  on the chain.
- Reading a contract's events (:func:`contract_logs`) starts at its deployment block, not at block 0:
  ``LEDGER_ANCHOR_FROM_BLOCK`` / ``LEDGER_BRIDGE_FROM_BLOCK`` when set, else the block the deployment
  record holds, else the first block with code at the address, found by binary search on ``eth_getCode``
  at block numbers (O(log n) calls; a node that keeps no past state cannot answer it: set the variable).
  ``eth_getLogs`` is then paged up to the head with the EVM connector's adaptive paging
  (:func:`~ledger_pipelines.connectors.evm.reader.fetch_paged`).
- An RPC URL in an error message is redacted (:func:`redact`: user info, path and query, where hosted
  nodes take their API keys, are masked).
- Which send failures are permanent (:func:`permanent_failure`): a revert (with its reason) and an invalid
  argument (the ABI refuses a value, the node refuses the parameters). Anything else, among them
  connection refused, timeouts, HTTP 5xx, a node restarting, a nonce taken by another sender and
  insufficient funds for gas, is transient: nothing is wrong with the call itself, so it is tried again.
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import os
import re
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlsplit

from .contracts import artifact, web3_for
from .settings import StackConfig

# anvil's first dev account: a publicly known key, used only when the chain is a local anvil (chain id 31337
# on a loopback RPC endpoint, :func:`is_local_dev_chain`) and no key is configured. Never used elsewhere.
ANVIL_DEV_KEY = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"
_ENV_PREFIX = {"AuditAnchor": "LEDGER_ANCHOR", "LedgerBridge": "LEDGER_BRIDGE"}
CONTRACT_ENV = {name: f"{prefix}_CONTRACT" for name, prefix in _ENV_PREFIX.items()}
FROM_BLOCK_ENV = {name: f"{prefix}_FROM_BLOCK" for name, prefix in _ENV_PREFIX.items()}
LOCAL_CHAIN_IDS = (31337, 1337)
LOG_PAGE_BLOCKS = 10_000  # the widest eth_getLogs range; halved while the node refuses it, grown back past it
_KEY = re.compile(r"^(0x)?[0-9a-fA-F]{64}\Z")
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}\Z")


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
            if chain_id != 31337 or not is_local_dev_chain(chain_id, url):
                raise ChainError(f"{key_env} is not set (the signing key for chain {chain_id} at "
                                 f"{redact(url, url)}; anvil's public dev key is used only on a local anvil: "
                                 "chain id 31337 with its RPC endpoint on a loopback address)")
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
        return self.deploy_receipt(name, *args)["contractAddress"]

    def deploy_receipt(self, name: str, *args) -> Any:
        """Deploy ``name``; the receipt (``contractAddress``, ``blockNumber``)."""
        abi, bytecode = artifact(name)
        call = self.w3.eth.contract(abi=abi, bytecode=bytecode).constructor(*args)
        receipt = self.wait(self.send(call))
        if receipt["status"] != 1:
            raise ChainError(f"deploying {name} failed in tx {receipt['transactionHash'].hex()}")
        return receipt


def _registry() -> Path:
    return StackConfig.from_env().root / "deployments.json"


def chain_key(w3) -> str:
    return f"{w3.eth.chain_id}:{w3.eth.get_block(0)['hash'].hex()}"


def endpoint(w3) -> str:
    """The RPC URL a web3 instance talks to ("" when its provider has none)."""
    return str(getattr(w3.provider, "endpoint_uri", "") or "")


def _plain_host(url: str) -> str | None:
    """The host of ``url`` as the HTTP client (urllib3) connects to it, lower case, or None when the URL is
    not plain: it holds a backslash or user info, cannot be parsed, or ``urllib3.util.parse_url`` and
    ``urllib.parse.urlsplit`` disagree on its host (``http://evil.example\\@127.0.0.1/`` is evil.example to
    urllib3 and 127.0.0.1 to urlsplit)."""
    from urllib3.util import parse_url

    if not url or "\\" in url:
        return None
    try:
        parsed, split = parse_url(url), urlsplit(url)
        other = split.hostname
    except ValueError:  # urllib3's LocationParseError is a ValueError
        return None
    if parsed.auth or split.username is not None or split.password is not None or "@" in split.netloc:
        return None
    host = (parsed.host or "").lower().removeprefix("[").removesuffix("]")
    if not host or host != (other or "").lower():
        return None
    return host


def is_local_dev_chain(chain_id: int, url: str) -> bool:
    """Chain id 31337 or 1337 *and* an RPC endpoint whose host is ``localhost`` or a loopback IP literal, in a
    plain URL (no backslash, no user info, one host whichever parser reads it: see :func:`_plain_host`)."""
    if chain_id not in LOCAL_CHAIN_IDS:
        return False
    host = _plain_host(url)
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name other than localhost: not resolved
        return False


def auto_deploy(chain_id: int, url: str) -> bool:
    """Whether the project may deploy its contracts on this chain: a local development chain, and
    ``LEDGER_AUTO_DEPLOY`` is not ``off``."""
    off = os.environ.get("LEDGER_AUTO_DEPLOY", "on").strip().lower() in ("off", "0", "false", "no")
    return not off and is_local_dev_chain(chain_id, url)


def configured_address(w3, name: str) -> str | None:
    """The address of ``name`` from its variable (``LEDGER_ANCHOR_CONTRACT``, ``LEDGER_BRIDGE_CONTRACT``),
    checked: EIP-55 checksummed hex, and contract code there on this chain. None when the variable is unset."""
    env = CONTRACT_ENV[name]
    value = os.environ.get(env, "").strip()
    if not value:
        return None
    if not _ADDRESS.fullmatch(value):
        raise ChainError(f"{env}={value!r} is not a 0x-prefixed 20-byte hex address")
    if not w3.is_checksum_address(value):
        raise ChainError(f"{env}={value} is not in its EIP-55 checksummed form (mixed case, as the chain's tools "
                         "print it): a mistyped address cannot be told from a right one without it")
    if w3.eth.get_code(value) in (b"", None):
        url = endpoint(w3)
        raise ChainError(f"{env}={value}: no contract code at that address on chain {w3.eth.chain_id} "
                         f"({redact(url, url)})")
    return value


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock (flock) on ``<path>.lock``: between processes of this machine and threads alike."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _read_registry(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}


def contract_address(signer: Signer, name: str, deploy: bool = True) -> str:
    """The address of contract ``name`` on the signer's chain: from the configuration; else, on a local
    development chain only, the one remembered for the chain, or deployed now (``deploy``) and remembered
    with its deployment block. Elsewhere an unset variable is an error naming it."""
    w3 = signer.w3
    configured = configured_address(w3, name)
    if configured:
        return configured
    env = CONTRACT_ENV[name]
    chain_id, url = w3.eth.chain_id, endpoint(w3)
    if not auto_deploy(chain_id, url):
        raise ChainError(f"{env} is not set: the address of {name} on chain {chain_id} ({redact(url, url)}) must "
                         f"come from the configuration (contracts are deployed automatically only on a local "
                         f"development chain: chain id {' or '.join(map(str, LOCAL_CHAIN_IDS))} with its RPC endpoint "
                         f"on a loopback address, and LEDGER_AUTO_DEPLOY not off)")
    path = _registry()
    key = chain_key(w3)
    with _locked(path):
        doc = _read_registry(path)
        address = doc.get(key, {}).get(name)
        if address and w3.eth.get_code(address) not in (b"", None):
            return address
        if not deploy:
            raise ChainError(f"{name} is not deployed on chain {key}; set {env}")
        receipt = signer.deploy_receipt(name)
        address = receipt["contractAddress"]
        entry = doc.setdefault(key, {})
        entry[name] = address
        entry.setdefault("blocks", {})[name] = receipt["blockNumber"]
        tmp = path.with_suffix(f".{os.getpid()}.{time.monotonic_ns()}.tmp")
        tmp.write_text(json.dumps(doc, indent=2, sort_keys=True))
        tmp.replace(path)
    return address


# (chain key, address) -> deployment block found in this process
_DEPLOY_BLOCKS: dict[tuple[str, str], int] = {}


def _has_code(w3, address: str, block: int) -> bool:
    return w3.eth.get_code(address, block_identifier=block) not in (b"", None)


def _is_deployment_block(w3, address: str, block: int) -> bool:
    """Code at ``address`` in ``block`` and none in the block before (False when the node cannot say)."""
    try:
        return _has_code(w3, address, block) and (block == 0 or not _has_code(w3, address, block - 1))
    except Exception:
        return False


def count_env(name: str, what: str, limit: int = 10**12) -> int | None:
    """The non-negative integer in the environment variable ``name`` (ASCII digits, at most ``limit``), or
    None when it is unset or blank; anything else is a :class:`ChainError` naming the variable."""
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    if not re.fullmatch(r"[0-9]{1,13}", value) or int(value) > limit:
        raise ChainError(f"{name}={value[:40]!r} is not {what} (an integer from 0 to {limit})")
    return int(value)


def deployment_block(w3, name: str, address: str) -> int:
    """The block to read ``name``'s events from: ``LEDGER_<ANCHOR|BRIDGE>_FROM_BLOCK``, else the deployment
    record's block, else the first block with code at ``address`` (binary search on ``eth_getCode``)."""
    env = FROM_BLOCK_ENV[name]
    given = count_env(env, "a block number")
    if given is not None:
        return given
    address = w3.to_checksum_address(address)
    key = chain_key(w3)
    known = _DEPLOY_BLOCKS.get((key, address))
    if known is None:
        try:
            entry = _read_registry(_registry()).get(key, {})
        except (OSError, ValueError):
            entry = {}
        if isinstance(entry, dict) and str(entry.get(name, "")).lower() == address.lower():
            recorded = (entry.get("blocks") or {}).get(name)
            known = recorded if isinstance(recorded, int) and not isinstance(recorded, bool) else None
    if known is not None and _is_deployment_block(w3, address, known):  # still true (a reverted chain moves it)
        return known
    found = _search_deployment_block(w3, name, address, env)
    _DEPLOY_BLOCKS[(key, address)] = found
    return found


def _search_deployment_block(w3, name: str, address: str, env: str) -> int:
    try:
        hi = w3.eth.block_number
        if not _has_code(w3, address, hi):
            raise ChainError(f"no contract code at {address} ({name}) on chain {w3.eth.chain_id}")
        lo = 0
        while lo < hi:  # invariant: code at hi; none before lo
            mid = (lo + hi) // 2
            if _has_code(w3, address, mid):
                hi = mid
            else:
                lo = mid + 1
        return lo
    except ChainError:
        raise
    except Exception as exc:
        # a local development chain does not always serve past states (anvil after evm_revert answers
        # "BlockOutOfRangeError" for blocks it still has): its history is short, read it from genesis
        try:
            local = is_local_dev_chain(w3.eth.chain_id, endpoint(w3))
        except Exception:
            local = False
        if local:
            return 0
        raise ChainError(f"the deployment block of {name} at {address} cannot be found (eth_getCode at past blocks: "
                         f"{type(exc).__name__}: {exc}); set {env}") from None


def contract_logs(w3, address: str, topics: list, from_block: int, page: int = LOG_PAGE_BLOCKS,
                  retries: int = 5) -> list:
    """``eth_getLogs`` of ``address`` with ``topics`` from ``from_block`` to the current head, in pages of at
    most ``page`` blocks, halved while the node refuses a range and grown back past it, waiting out rate limits
    on the same range (the EVM connector's paging)."""
    from .connectors.evm.reader import fetch_paged

    head = w3.eth.block_number

    def fetch(lo: int, hi: int) -> list:
        return list(w3.eth.get_logs({"address": address, "fromBlock": lo, "toBlock": hi, "topics": topics}))

    return fetch_paged(fetch, from_block, head, page, retries=retries)


def redact(text: str, url: str) -> str:
    """``text`` without the parts of ``url`` that may hold a secret (user info, path, query: where hosted nodes
    take their API keys), for error messages that end up in logs and the action log (the EVM connector's
    :func:`~ledger_pipelines.connectors.evm.reader.redact_url`)."""
    from .connectors.evm.reader import redact_url

    return redact_url(text, url)


def permanent_failure(exc: BaseException) -> str | None:
    """Why a call can never succeed by being sent again (a revert, with its reason; an invalid argument), or
    None: the failure is transient (connection refused, timeout, HTTP 5xx, node restarting, nonce taken,
    insufficient funds for gas, anything else) and the call is tried again later."""
    from eth_abi.exceptions import EncodingError
    from web3.exceptions import (ABIFunctionNotFound, ContractLogicError, MismatchedABI, Web3RPCError,
                                 Web3TypeError, Web3ValidationError)

    if isinstance(exc, ContractLogicError):
        message = str(exc.message or exc)
        return message if "revert" in message.lower() else f"reverted: {message}"
    if isinstance(exc, (Web3ValidationError, MismatchedABI, ABIFunctionNotFound, EncodingError, Web3TypeError)):
        return f"invalid argument: {exc}"
    if isinstance(exc, Web3RPCError):
        err = (exc.rpc_response or {}).get("error") if isinstance(exc.rpc_response, dict) else None
        code = err.get("code") if isinstance(err, dict) else None
        message = str(err.get("message", "")) if isinstance(err, dict) else str(exc)
        if "revert" in message.lower():
            return message
        if code == -32602:
            return f"invalid argument: {message}"
    return None


def transient_failure(exc: BaseException) -> bool:
    """Whether a chain call's failure is one of the transient kinds (:func:`permanent_failure`'s "anything else"
    narrowed to what a node or its connection does): a connection, timeout or HTTP error (``OSError``, which
    requests' errors are), web3's lost connection and receipt timeout, or a JSON-RPC error that is not a revert
    nor an invalid argument (nonce taken, insufficient funds, node starting up). Anything else, an answer the
    project cannot use for instance, is neither transient nor cured by waiting."""
    from web3.exceptions import ProviderConnectionError, TimeExhausted, Web3RPCError

    if permanent_failure(exc):
        return False
    return isinstance(exc, (OSError, ProviderConnectionError, TimeExhausted, Web3RPCError))


def contract(signer_or_w3, name: str, address: str):
    w3 = getattr(signer_or_w3, "w3", signer_or_w3)
    return w3.eth.contract(address=w3.to_checksum_address(address), abi=artifact(name)[0])
