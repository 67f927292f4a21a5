"""The Merkle tree is RFC 9162's: checked against the recursive definition and its proof algorithm."""

import hashlib

from hypothesis import given, settings
from hypothesis import strategies as st

from ledger_pipelines import merkle


def mth(data: list[bytes]) -> bytes:
    """RFC 9162 section 2.1.1, written as the RFC writes it."""
    if not data:
        return hashlib.sha256(b"").digest()
    if len(data) == 1:
        return hashlib.sha256(b"\x00" + data[0]).digest()
    k = 1
    while k * 2 < len(data):
        k *= 2
    return hashlib.sha256(b"\x01" + mth(data[:k]) + mth(data[k:])).digest()


def path_of(m: int, data: list[bytes]) -> list[bytes]:
    """RFC 9162 section 2.1.3.1: PATH(m, D[n])."""
    if len(data) == 1:
        return []
    k = 1
    while k * 2 < len(data):
        k *= 2
    if m < k:
        return path_of(m, data[:k]) + [mth(data[k:])]
    return path_of(m - k, data[k:]) + [mth(data[:k])]


def test_roots_and_paths_are_rfc_9162_for_every_size_up_to_70():
    for n in range(71):
        data = [b"leaf %d" % i for i in range(n)]
        leaves = [merkle.leaf_hash(d) for d in data]
        root, paths = merkle.tree(leaves)
        assert root == mth(data) == merkle.root(leaves)
        for i, path in enumerate(paths):
            assert path == path_of(i, data)
            assert merkle.verify_inclusion(leaves[i], i, n, path, root)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.binary(max_size=12), min_size=1, max_size=40, unique=True), st.data())
def test_a_proof_fails_for_another_leaf_index_size_or_path(data, draw):
    leaves = [merkle.leaf_hash(d) for d in data]
    root, paths = merkle.tree(leaves)
    n = len(leaves)
    i = draw.draw(st.integers(0, n - 1))
    assert merkle.verify_inclusion(leaves[i], i, n, paths[i], root)
    assert not merkle.verify_inclusion(merkle.leaf_hash(data[i] + b"x"), i, n, paths[i], root)
    if n > 1:
        j = draw.draw(st.integers(0, n - 1).filter(lambda j: j != i))
        assert not merkle.verify_inclusion(leaves[i], j, n, paths[i], root)
        assert not merkle.verify_inclusion(leaves[i], i, n, paths[i][:-1], root)
        assert not merkle.verify_inclusion(leaves[i], i, n, [b"\0" * 32] + paths[i][1:], root)
    assert not merkle.verify_inclusion(leaves[i], n, n, paths[i], root)


def test_a_leaf_cannot_pose_as_an_inner_node():
    a, b = merkle.leaf_hash(b"a"), merkle.leaf_hash(b"b")
    root = merkle.root([a, b])
    # the two child hashes presented as one leaf's data give another hash: leaves and nodes are kept apart
    assert merkle.root([merkle.leaf_hash(a + b)]) != root
    assert merkle.node_hash(a, b) == root


def test_no_node_is_duplicated_so_an_odd_tree_is_not_the_tree_with_its_last_leaf_twice():
    leaves = [merkle.leaf_hash(bytes([i])) for i in range(3)]
    assert merkle.root(leaves) != merkle.root(leaves + leaves[-1:])


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**300), max_value=2**300)
    | st.text(st.characters(codec="utf-8"), max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(st.characters(codec="utf-8"), max_size=6),
                                                               inner, max_size=4),
    max_leaves=20)


@settings(max_examples=1000, deadline=None)
@given(_json_values)
def test_canonical_form_is_sorted_compact_json_byte_for_byte(value):
    """The canonical form is the one docs/architecture.md gives third-party verifiers: Python's
    ``json.dumps`` with sorted keys, no spaces and UTF-8 (control characters, quotes, non-BMP text,
    U+2028 and integers beyond 2^64 included)."""
    import json

    from ledger_pipelines.commitment import canonical

    doc = {"record": value, "\u2028\x1f\"": [value]}
    assert canonical(doc) == json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


_text = st.text(st.characters(codec="utf-8"), max_size=12)


@settings(max_examples=500, deadline=None)
@given(st.none() | _text, st.lists(_text, max_size=3), _text, _text, st.lists(_text, max_size=3), _text)
def test_a_match_record_encodes_as_the_json_object_it_stands_for(corr, lids, mid, kind, rids, rule):
    """The engine's ``Match`` values are written, hashed and stored through their canonical form: it must
    be the bytes of the equal JSON object (what verify recomputes from matches.jsonl)."""
    import json

    from ledger_pipelines.commitment import canonical
    from ledger_pipelines.reconcile.engine import Match

    m = Match(corr, tuple(lids), mid, kind, tuple(rids), rule)
    doc = {"correlation_id": corr, "left_entry_ids": lids, "match_id": mid, "match_type": kind,
           "right_entry_ids": rids, "rule": rule}
    assert canonical(m) == json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    assert {k: m[k] for k in doc} == {**doc, "left_entry_ids": tuple(lids), "right_entry_ids": tuple(rids)}
