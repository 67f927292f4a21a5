"""Merkle tree of RFC 9162 section 2.1: root, inclusion proofs and their verification.

A leaf is hashed as SHA-256(0x00 || data) and an inner node as SHA-256(0x01 || left || right), so a
leaf can never pose as a node. The tree over n leaves splits at the largest power of two below n
(no node is duplicated, so two different leaf lists never share a root); the empty tree's hash is
SHA-256 of the empty string. An inclusion proof is the audit path of section 2.1.3.1, checked by
the algorithm of section 2.1.3.2, so any RFC 9162 / RFC 6962 verifier accepts it.

Computed level by level: pairing neighbours and carrying an odd last node up unchanged gives the
same tree as the recursive definition.
"""

from __future__ import annotations

import hashlib

EMPTY_ROOT = hashlib.sha256(b"").digest()
_sha256 = hashlib.sha256


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _up(level: list[bytes]) -> list[bytes]:
    """The level above: neighbours paired, an odd last node carried up unchanged."""
    # node_hash written out: a day's tree has millions of nodes, and the call is a third of each
    up = [_sha256(b"\x01" + a + b).digest() for a, b in zip(level[0::2], level[1::2])]
    if len(level) % 2:
        up.append(level[-1])
    return up


def _levels(leaves: list[bytes]) -> list[list[bytes]]:
    levels = [leaves]
    while len(levels[-1]) > 1:
        levels.append(_up(levels[-1]))
    return levels


def root(leaves: list[bytes]) -> bytes:
    """The tree head over leaf hashes, in the order given; only the level being built is held."""
    if not leaves:
        return EMPTY_ROOT
    level = leaves
    while len(level) > 1:
        level = _up(level)
    return level[0]


def tree(leaves: list[bytes]) -> tuple[bytes, list[list[bytes]]]:
    """(root, audit path of every leaf): one pass builds the levels, each path is read off them."""
    if not leaves:
        return EMPTY_ROOT, []
    levels = _levels(leaves)
    paths = []
    for index in range(len(leaves)):
        path, i = [], index
        for level in levels[:-1]:
            sibling = i ^ 1
            if sibling < len(level):  # an odd last node has no sibling at this level: it is carried up
                path.append(level[sibling])
            i //= 2
        paths.append(path)
    return levels[-1][0], paths


def verify_inclusion(leaf: bytes, index: int, tree_size: int, path: list[bytes], expected_root: bytes) -> bool:
    """RFC 9162 section 2.1.3.2: does ``path`` prove ``leaf`` at ``index`` of a tree of ``tree_size``?"""
    if not 0 <= index < tree_size:
        return False
    fn, sn, r = index, tree_size - 1, leaf
    for p in path:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == expected_root
