"""Merkle tree over reconciliation records: root, inclusion proofs, verification.

Leaves are SHA-256(0x00 || canonical JSON of the record), sorted; an inner node is
SHA-256(0x01 || left || right) (the prefixes keep leaves and nodes apart); a level with an odd
count pairs its last node with itself. Sorting the leaves makes the root independent of record
order, so re-running a day from the same inputs reproduces it.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


def canonical(record: dict[str, Any]) -> bytes:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def leaf_hash(record: dict[str, Any]) -> bytes:
    return hashlib.sha256(b"\x00" + canonical(record)).digest()


def _node(a: bytes, b: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + a + b).digest()


def _levels(leaves: list[bytes]) -> list[list[bytes]]:
    levels = [leaves]
    while len(levels[-1]) > 1:
        level = levels[-1]
        if len(level) % 2:
            level = level + [level[-1]]
        levels.append([_node(level[i], level[i + 1]) for i in range(0, len(level), 2)])
    return levels


def root_of(records: list[dict[str, Any]]) -> str:
    leaves = sorted(leaf_hash(r) for r in records)
    if not leaves:
        return hashlib.sha256(b"").hexdigest()
    return _levels(leaves)[-1][0].hex()


def proofs(records: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """(root, one proof per record): the sibling hashes from the leaf up, each with its side."""
    hashed = sorted((leaf_hash(r), r) for r in records) if records else []
    leaves = [h for h, _ in hashed]
    if not leaves:
        return root_of([]), []
    levels = _levels(leaves)
    out = []
    for i, (h, rec) in enumerate(hashed):
        path, idx = [], i
        for level in levels[:-1]:
            padded = level + [level[-1]] if len(level) % 2 else level
            sibling = idx ^ 1
            path.append({"hash": padded[sibling].hex(), "side": "left" if sibling < idx else "right"})
            idx //= 2
        out.append({"record_id": rec.get("match_id") or rec.get("break_id"), "leaf": h.hex(), "proof": path})
    return levels[-1][0].hex(), out


def verify_proof(record: dict[str, Any], proof: list[dict[str, str]], root: str) -> bool:
    h = leaf_hash(record)
    for step in proof:
        sib = bytes.fromhex(step["hash"])
        h = _node(sib, h) if step["side"] == "left" else _node(h, sib)
    return h.hex() == root
