"""Compiled contracts (contracts/build, made by scripts/compile_contracts.sh with npm solc) and deployment."""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

from .settings import REPO_ROOT

BUILD = REPO_ROOT / "contracts" / "build"


@lru_cache
def artifact(name: str) -> tuple[list[dict[str, Any]], str]:
    abi = json.loads((BUILD / f"{name}.abi").read_text())
    return abi, "0x" + (BUILD / f"{name}.bin").read_text().strip()


def web3_for(url: str):
    from web3 import HTTPProvider, Web3

    return Web3(HTTPProvider(url, request_kwargs={"timeout": 30}))


def deploy(w3, name: str, *args, sender: str | None = None):
    """Deploy from an unlocked account (anvil's dev accounts); returns the contract object."""
    abi, bytecode = artifact(name)
    sender = sender or w3.eth.accounts[0]
    tx = w3.eth.contract(abi=abi, bytecode=bytecode).constructor(*args).transact({"from": sender})
    receipt = w3.eth.wait_for_transaction_receipt(tx)
    if receipt["status"] != 1:
        raise RuntimeError(f"deploying {name} failed: {receipt}")
    return w3.eth.contract(address=receipt["contractAddress"], abi=abi)
