"""What a day report commits to: the leaves of its Merkle tree and the report version.

One module for both ends, so the writer and ``verify`` cannot drift apart: the day's writer turns
what it writes into leaves here, and ``verify`` turns the files it reads into leaves here again.
The encoding is specified in docs/architecture.md (section "The day report's commitment") for
third-party verifiers.

Every leaf is the canonical JSON (keys sorted, no spaces, UTF-8, no floats) of one object:

- ``{"leaf": "record", "day", "reconciliation", "kind": "match"|"break", "record"}``: one match or
  break record, bound to its day, its reconciliation and its kind;
- ``{"leaf": "summary", "day", "reconciliation", "summary"}``: a reconciliation's ``summary.json``;
- ``{"leaf": "payment", "day", "payment"}``: one line of ``payments.jsonl``;
- ``{"leaf": "decision", "day", "decision"}``: one line of ``decisions.jsonl`` (a desk decision the day's
  records honour: a manual match or an acceptance, with who proposed and who approved it);
- ``{"leaf": "audit", "day", "audit"}``: ``audit.json`` without ``merkle_root`` and ``anchor`` (its
  ``files`` member lists every other file of the folder with its SHA-256).

The leaf hashes are sorted and form an RFC 9162 tree (``merkle.py``). The report version anchored
next to the root is SHA-256 over the canonical ``audit.json`` without ``anchor`` (so it binds the
root too). Inclusion proofs are made on demand (``verify.prove``): stored for every leaf they would
take O(n log n) space, some 2 GB for a day of 1.4 million records.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Iterable

import msgspec

from . import merkle

FORMAT = "ledger-pipelines.day-report/3"
RECORD_FILES = {"match": "matches.jsonl", "break": "breaks.jsonl"}
DECISIONS_FILE = "decisions.jsonl"


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, read a block at a time (a day's record files run to hundreds of MB)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


UNLISTED = ("audit.json", "index.html")  # the two files audit.json's "files" cannot list: itself, and its rendering


_CANONICAL = msgspec.json.Encoder(order="sorted")


def canonical(obj: Any) -> bytes:
    """``json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()``, byte for
    byte, for the values a report holds (objects with text keys, arrays, text, integers, booleans,
    null; tests/test_merkle.py checks the two agree), at a tenth of its cost: a day commits to millions
    of records. The writer never puts a float or a ``Decimal`` in a record (amounts are text), and
    ``verify`` refuses floats before it encodes anything."""
    return _CANONICAL.encode(obj)


def pretty(obj: Any) -> bytes:
    """The form of the folder's JSON documents (audit.json, summary.json): readable and reproducible."""
    return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False).encode() + b"\n"


def _record_head(day: str | None, reconciliation: str | None, kind: str) -> bytes:
    """A record leaf up to its record: ``record`` sorts last among the leaf's keys."""
    return canonical({"day": day, "kind": kind, "leaf": "record", "reconciliation": reconciliation})[:-1] + b',"record":'


def record_leaf(day: str | None, reconciliation: str | None, kind: str, record_line: bytes) -> bytes:
    """The leaf of one record, from its canonical JSON line (as written to matches/breaks.jsonl).

    Equal to ``canonical({"day", "kind", "leaf", "reconciliation", "record"})``: the record's own canonical
    bytes are spliced in after the leaf's other keys rather than encoded a second time."""
    return _record_head(day, reconciliation, kind) + record_line + b"}"


def summary_leaf(day: str | None, reconciliation: str, summary: dict[str, Any]) -> bytes:
    return canonical({"day": day, "leaf": "summary", "reconciliation": reconciliation, "summary": summary})


def payment_leaf(day: str, payment: dict[str, Any]) -> bytes:
    return canonical({"day": day, "leaf": "payment", "payment": payment})


def decision_leaf(day: str, decision: dict[str, Any]) -> bytes:
    return canonical({"day": day, "decision": decision, "leaf": "decision"})


def audit_body(audit: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in audit.items() if k not in ("merkle_root", "anchor")}


def audit_leaf(audit: dict[str, Any]) -> bytes:
    return canonical({"audit": audit_body(audit), "day": audit["day"], "leaf": "audit"})


# the anchor record a report keeps (anchor.anchor_report writes it): outside the commitment, since it
# is made after the root it anchors, so every member of it is checked against the report or the chain
ANCHOR_KEYS = ("block_number", "chain_id", "contract", "merkle_root", "partition", "report_version", "tx_hash",
               "version")
_ANCHOR_FORMS = {"contract": re.compile(r"0x[0-9a-fA-F]{40}"), "tx_hash": re.compile(r"0x[0-9a-f]{64}"),
                 "merkle_root": re.compile(r"[0-9a-f]{64}"), "report_version": re.compile(r"sha256:[0-9a-f]{64}")}


def anchor_record_problem(anchor: Any, day: str, root: str, version: str) -> str | None:
    """Why ``anchor`` is not an anchor record of this report (day, root, report version), or None.

    Offline this is all that can be known of an anchor; ``verify --rpc`` then checks the rest (chain,
    contract, transaction, block) against the chain."""
    if not isinstance(anchor, dict) or set(anchor) != set(ANCHOR_KEYS):
        return f"is not an anchor record (exactly the members {', '.join(ANCHOR_KEYS)} expected)"
    for key in ("block_number", "chain_id", "version"):
        if type(anchor[key]) is not int or anchor[key] < (1 if key != "block_number" else 0):
            return f"has {key} {anchor[key]!r}, not a {'non-negative' if key == 'block_number' else 'positive'} integer"
    for key, form in _ANCHOR_FORMS.items():
        if not isinstance(anchor[key], str) or not form.fullmatch(anchor[key]):
            return f"has {key} {str(anchor[key])[:80]!r}, not of the form {form.pattern}"
    for key, own, what in (("partition", day, "day"), ("merkle_root", root, "root"),
                           ("report_version", version, "report version")):
        if anchor[key] != own:
            return f"is of {key} {str(anchor[key])[:80]!r}, not the report's {what} {own}"
    return None


def report_version(audit: dict[str, Any]) -> str:
    """What is anchored besides the root: a digest of audit.json without its anchor."""
    return "sha256:" + hashlib.sha256(canonical({k: v for k, v in audit.items() if k != "anchor"})).hexdigest()


def record_hashes(day: str | None, reconciliation: str | None, matches: Iterable[bytes],
                  breaks: Iterable[bytes]) -> list[bytes]:
    """The leaf hashes of one reconciliation's records (from their canonical lines), sorted."""
    leaves: list[bytes] = []
    for kind, lines in (("match", matches), ("break", breaks)):
        head = _record_head(day, reconciliation, kind)  # the same for each record of the kind
        leaves += [merkle.leaf_hash(head + line + b"}") for line in lines]
    leaves.sort()
    return leaves


def records_root(day: str | None, reconciliation: str | None, matches: Iterable[bytes], breaks: Iterable[bytes]) -> str:
    """The root over one reconciliation's records alone (its summary's ``merkle_root``)."""
    return merkle.root(record_hashes(day, reconciliation, matches, breaks)).hex()


class Leaves:
    """The leaf hashes of one day report, in any order (the tree sorts them)."""

    def __init__(self) -> None:
        self.hashes: list[bytes] = []

    def add(self, data: bytes) -> None:
        self.hashes.append(merkle.leaf_hash(data))

    def extend(self, hashes: Iterable[bytes]) -> None:
        """Leaf hashes already computed (:func:`record_hashes`)."""
        self.hashes.extend(hashes)

    def root(self) -> str:
        return merkle.root(sorted(self.hashes)).hex()
