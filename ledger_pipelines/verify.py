"""``ledger-pipelines verify --report DIR [--rpc URL] [--contract ADDR]``: does a day report state what
was committed to, and was that commitment anchored?

Offline, from the folder alone: every file is a regular file inside the folder (symlinks refused),
every file is one the commitment covers, each is in the exact form the writer writes, the counts
and totals the report states agree with its records, every record, summary, payment line and
audit.json itself recompute to the leaves of the Merkle root in audit.json, and every inclusion
proof leads to that root. With ``--rpc``: the anchor contract (from ``--contract``, the configuration
or the project's deployment record for that chain, never from the report alone) holds this day's
root and report version as the report's version, and no later version of the day exists.

Never raises on a bad report: the answer is ``{"verified": false, "reason": ...}`` naming the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from datetime import date
from pathlib import Path
from typing import Any

import msgspec

from . import merkle
from .model import EntryError, refuse_deep_json
from .commitment import (DECISIONS_FILE, FORMAT, RECORD_FILES, UNLISTED, anchor_record_problem, audit_leaf, canonical,
                         decision_leaf, payment_leaf, pretty, record_leaf, records_root, report_version, summary_leaf)

_NAME = re.compile(r"[a-z][a-z0-9_]{0,80}")
FORMAT_2 = "ledger-pipelines.day-report/2"  # before the breaks desk: the same, without decisions
_HEX32 = re.compile(r"[0-9a-f]{64}")
MAX_PROBLEMS = 10


class VerificationError(RuntimeError):
    """A report that cannot be read at all (the first problem stops the check)."""


def _no_float(text: str) -> Any:
    raise ValueError(f"a non-integer number ({text}): reports hold amounts as strings")


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise ValueError(f"key {dup!r} appears twice in one object")
    return out


def _same(a: Any, b: Any) -> bool:
    """Equal JSON values, equal in type too: ``false`` is not ``0``, as ``==`` would have it."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(map(_same, a, b))
    return type(a) is type(b) and a == b


def strict_json(data: bytes) -> Any:
    """JSON as the writer writes it: no repeated keys, no floats, NaN or Infinity, no deep nesting."""
    try:
        refuse_deep_json(data)
        return json.loads(data, object_pairs_hook=_unique, parse_float=_no_float, parse_constant=_no_float)
    except EntryError as exc:
        raise ValueError(str(exc)) from None
    except RecursionError:
        raise ValueError("nested too deeply") from None


class _Check:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.files: list[str] = []
        self.problems: list[str] = []

    def problem(self, where: str, reason: str) -> None:
        self.problems.append(f"{where}: {reason}")

    def read(self, rel: str) -> bytes:
        return (self.folder / rel).read_bytes()

    def document(self, rel: str) -> Any:
        """A JSON document of the folder, parsed strictly and required in the writer's exact form."""
        data = self.read(rel)
        try:
            doc = strict_json(data)
            same = pretty(doc) == data
        except ValueError as exc:  # a lone surrogate (\ud800) is valid JSON and encodes to no UTF-8: ValueError too
            raise VerificationError(f"{rel}: not a valid report document ({exc})") from None
        if not same:
            raise VerificationError(f"{rel}: not byte for byte the document its content gives (edited?)")
        return doc

    def lines(self, rel: str) -> list[tuple[bytes, dict[str, Any]]]:
        """The lines of a JSON Lines file, each required to be one canonical JSON object."""
        data = self.read(rel)
        if data and not data.endswith(b"\n"):
            raise VerificationError(f"{rel}: the last line is cut off (no newline at the end)")
        out = []
        for n, line in enumerate(data.split(b"\n")[:-1] if data else [], start=1):
            try:
                obj = strict_json(line)
                same = isinstance(obj, dict) and canonical(obj) == line
            except (ValueError, msgspec.EncodeError) as exc:  # a lone surrogate encodes to no UTF-8
                raise VerificationError(f"{rel} line {n}: not a JSON object ({exc})") from None
            if not same:
                raise VerificationError(f"{rel} line {n}: not a record in canonical form (edited?)")
            out.append((line, obj))
        return out


def _files(folder: Path) -> list[str]:
    """Every file under the folder, relative; refuses symlinks and anything but files and folders."""
    if folder.is_symlink() or not folder.is_dir():
        raise VerificationError(f"{folder}: not a report folder (a symlink or not a directory)")
    out = []
    folders = []

    def unreadable(exc: OSError) -> None:  # a folder that cannot be listed could hide any file
        where = Path(exc.filename or folder)
        rel = where.relative_to(folder).as_posix() if where.is_relative_to(folder) else str(where)
        raise VerificationError(f"{rel}: cannot be listed ({exc.strerror or exc})")

    for top, dirs, files in os.walk(folder, followlinks=False, onerror=unreadable):
        for name in sorted(dirs + files):
            path = Path(top) / name
            rel = path.relative_to(folder).as_posix()
            st = path.lstat()
            if path.is_symlink():
                raise VerificationError(f"{rel}: a symlink (refused: a report holds its own files only)")
            if name in files:
                if not stat.S_ISREG(st.st_mode):
                    raise VerificationError(f"{rel}: not a regular file")
                out.append(rel)
            else:
                folders.append(rel)
    holding = {parent.as_posix() for rel in out for parent in Path(rel).parents}
    for rel in folders:
        if rel not in holding:
            raise VerificationError(f"{rel}: a folder holding no file of the report (added to it?)")
    return sorted(out)


def _counts(records: list[dict[str, Any]], field: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in records:
        out[r[field]] = out.get(r[field], 0) + 1
    return out


def _check_audit_shape(audit: Any) -> None:
    if not isinstance(audit, dict):
        raise VerificationError("audit.json: not an object")
    if audit.get("format") not in (FORMAT, FORMAT_2):
        raise VerificationError(f"audit.json: format {audit.get('format')!r} is not {FORMAT!r} (nor {FORMAT_2!r}): a "
                                "report of another version of ledger-pipelines, or not a day report")
    day = audit.get("day")
    try:
        if not isinstance(day, str) or date.fromisoformat(day).isoformat() != day:
            raise ValueError
    except ValueError:
        raise VerificationError(f"audit.json: day {day!r} is not an ISO date") from None
    if not isinstance(audit.get("merkle_root"), str) or not _HEX32.fullmatch(audit["merkle_root"]):
        raise VerificationError("audit.json: merkle_root is not 32 bytes of lower-case hex")
    recs = audit.get("reconciliations")
    if not isinstance(recs, dict) or not all(isinstance(n, str) and _NAME.fullmatch(n) for n in recs):
        raise VerificationError("audit.json: reconciliations must map plain names (a-z, 0-9, _) to summaries")
    files = audit.get("files")
    if not isinstance(files, dict) or not all(isinstance(v, str) and _HEX32.fullmatch(v) for v in files.values()):
        raise VerificationError("audit.json: files must map paths to SHA-256 digests")
    if type(audit.get("records")) is not int:
        raise VerificationError("audit.json: records is not a number")
    if not isinstance(audit.get("payments"), dict):
        raise VerificationError("audit.json: payments is not an object")
    if "anchor" in audit:  # absent when the report was not anchored
        problem = anchor_record_problem(audit["anchor"], day, audit["merkle_root"], report_version(audit))
        if problem:
            raise VerificationError(f"audit.json: the anchor record {problem}")


def _check_reconciliation(chk: _Check, day: str, name: str, stated: Any, leaves: dict, decided: list) -> int:
    records: dict[str, list[dict[str, Any]]] = {}
    lines: dict[str, list[bytes]] = {}
    for kind, part in RECORD_FILES.items():
        rel = f"{name}/{part}"
        got = chk.lines(rel)
        id_field, type_field = ("match_id", "match_type") if kind == "match" else ("break_id", "break_type")
        other = "break_type" if kind == "match" else "match_type"
        last = ""
        for n, (line, rec) in enumerate(got, start=1):
            if not isinstance(rec.get(id_field), str) or not isinstance(rec.get(type_field), str) or other in rec:
                raise VerificationError(f"{rel} line {n}: not a {kind} record ({id_field} and {type_field} expected)")
            if rec[id_field] <= last:
                raise VerificationError(f"{rel} line {n}: records are not in the writer's order (by {id_field})")
            last = rec[id_field]
            loc = ("record", name, kind, rec[id_field])
            if loc in leaves:
                raise VerificationError(f"{rel} line {n}: record {rec[id_field]} appears twice")
            leaves[loc] = (merkle.leaf_hash(record_leaf(day, name, kind, line)), rel)
            if "decision_id" in rec or rec.get("match_type") == "manual" or "acceptance" in rec:
                decided.append((rel, n, name, kind, rec))
        records[kind] = [rec for _, rec in got]
        lines[kind] = [line for line, _ in got]
    rel = f"{name}/summary.json"
    summary = chk.document(rel)
    if not isinstance(summary, dict):
        raise VerificationError(f"{rel}: not an object")
    leaves[("summary", name)] = (merkle.leaf_hash(summary_leaf(day, name, summary)), rel)
    matches, breaks = records["match"], records["break"]
    stated_figures = {"matches": len(matches), "breaks": len(breaks), "match_type": _counts(matches, "match_type"),
                      "break_type": _counts(breaks, "break_type"),
                      "merkle_root": records_root(day, name, lines["match"], lines["break"])}
    for key, value in stated_figures.items():
        if not _same(summary.get(key), value):
            chk.problem(rel, f"{key} is {summary.get(key)!r}, its records give {value!r}")
    for side, ids_field in (("left", "left_entry_ids"), ("right", "right_entry_ids")):
        ids = [i for r in matches + breaks for i in (r.get(ids_field) or [])]
        if len(ids) != len(set(ids)):
            chk.problem(f"{name}", f"an entry of the {side} side is in more than one record")
        rows = (summary.get("input_rows") or {}).get(side)
        if not _same(rows, len(ids)):
            chk.problem(rel, f"input_rows.{side} is {rows!r}, but {len(ids)} {side} entries are in its records "
                        "(every input entry is in exactly one record)")
    if not isinstance(stated, dict) or not _same({k: v for k, v in stated.items() if k != "carried_in"}, summary):
        chk.problem("audit.json", f"reconciliations.{name} does not state what {rel} states")
    return len(matches) + len(breaks)


def _check_contents(chk: _Check) -> tuple[dict[str, Any], dict]:
    files = chk.files = _files(chk.folder)
    if "audit.json" not in files:
        raise VerificationError("audit.json: missing (not a day report folder?)")
    audit = chk.document("audit.json")
    _check_audit_shape(audit)
    day = audit["day"]
    leaves: dict[tuple, tuple[bytes, str]] = {}
    total = 0
    decided: list = []  # the records that carry a decision (manual matches, accepted breaks)
    for name in sorted(audit["reconciliations"]):
        for part in (*RECORD_FILES.values(), "summary.json"):
            if f"{name}/{part}" not in files:
                raise VerificationError(f"{name}/{part}: missing")
        total += _check_reconciliation(chk, day, name, audit["reconciliations"][name], leaves, decided)
    if audit["records"] != total:
        chk.problem("audit.json", f"records is {audit['records']}, the reconciliations hold {total}")
    if "payments.jsonl" not in files:
        raise VerificationError("payments.jsonl: missing")
    payments = chk.lines("payments.jsonl")
    last = ""
    for n, (_, p) in enumerate(payments, start=1):
        corr = p.get("correlation_id")
        if not isinstance(corr, str) or corr <= last:
            raise VerificationError(f"payments.jsonl line {n}: payments are not in the writer's order "
                                    "(by correlation_id, each once)")
        last = corr
        loc = ("payment", corr)
        leaves[loc] = (merkle.leaf_hash(payment_leaf(day, p)), "payments.jsonl")
    view = [p for _, p in payments]
    stated = audit["payments"]
    given = {"total": len(view), "complete": sum(p.get("status") == "complete" for p in view),
             "missing_leg": sum(p.get("status") == "missing_leg" for p in view),
             "drifting": sum(p.get("drifting") is True for p in view)}
    for key, value in given.items():
        if not _same(stated.get(key), value):
            chk.problem("audit.json", f"payments.{key} is {stated.get(key)!r}, payments.jsonl gives {value}")
    if audit["format"] == FORMAT:
        _check_decisions(chk, day, audit, files, leaves, decided)
    elif decided or DECISIONS_FILE in files or "decisions" in audit:
        chk.problem("audit.json", f"a {FORMAT_2} report holds no desk decisions (decisions.jsonl, manual matches, "
                    "acceptances came with /3)")
    for rel in files:
        if rel not in UNLISTED and rel not in audit["files"]:
            chk.problem(rel, "not covered by the report's commitment (added to the folder?)")
    for rel, digest in sorted(audit["files"].items()):
        if rel in UNLISTED or rel not in files:
            chk.problem(rel, "listed in audit.json but not in the folder")
        elif hashlib.sha256(chk.read(rel)).hexdigest() != digest:
            chk.problem(rel, "its bytes are not the ones committed to (SHA-256 differs from audit.json)")
    leaves[("audit",)] = (merkle.leaf_hash(audit_leaf(audit)), "audit.json")
    from .reconcile.output import render_index

    if "index.html" not in files:  # written by the report's last step; a folder without it is no finished report
        chk.problem("index.html", "missing (the report was not finished, or the page was removed)")
    elif chk.read("index.html") != render_index(audit).encode():
        chk.problem("index.html", "does not show what audit.json states")
    return audit, leaves


_DECISION_KEYS = {"decision_id", "kind", "reconciliation", "break_ids", "left_entry_ids", "right_entry_ids", "reason",
                  "expires", "effective_from", "ended_on", "ended_by", "proposed_by", "proposed_at", "approved_by",
                  "approved_at", "score"}
_ACCEPTANCE_KEYS = ("decision_id", "reason", "expires", "proposed_by", "approved_by")


def _check_decisions(chk: _Check, day: str, audit: dict[str, Any], files: list[str], leaves: dict,
                     decided: list) -> None:
    """decisions.jsonl: each decision once, in order, approved by a second person (or made by the system with
    its score), in force on the day; every manual match and acceptance in the records is one of them, as it
    states; and every decision listed is honoured by some record."""
    if DECISIONS_FILE not in files:
        raise VerificationError(f"{DECISIONS_FILE}: missing")
    by_id: dict[str, dict[str, Any]] = {}
    last = ""
    for n, (_, d) in enumerate(chk.lines(DECISIONS_FILE), start=1):
        where = f"{DECISIONS_FILE} line {n}"
        if set(d) != _DECISION_KEYS or not isinstance(d["decision_id"], str) or d["decision_id"] <= last:
            raise VerificationError(f"{where}: not a decision in the writer's form and order (by decision_id, "
                                    "each once)")
        last = d["decision_id"]
        leaves[("decision", d["decision_id"])] = (merkle.leaf_hash(decision_leaf(day, d)), DECISIONS_FILE)
        by_id[d["decision_id"]] = d
        if d["kind"] not in ("manual_match", "acceptance") or d["reconciliation"] not in audit["reconciliations"]:
            chk.problem(where, f"kind {d['kind']!r} or reconciliation {d['reconciliation']!r} is not one of the report's")
        proposer, approver = d["proposed_by"], d["approved_by"]
        if not isinstance(proposer, str) or not isinstance(approver, str) or not isinstance(d["approved_at"], str):
            chk.problem(where, "not approved (no approver or time)")
        elif proposer == approver and not (proposer == "system" and isinstance(d["score"], int)):
            chk.problem(where, f"{proposer} approved their own proposal (a decision takes a second person)")
        if not isinstance(d["effective_from"], str) or d["effective_from"] > day:
            chk.problem(where, f"in force from {d['effective_from']!r}, after the report's day")
        ended = d["ended_on"]
        if ended is not None and not isinstance(ended, str):
            chk.problem(where, "ended_on is not a day")
        elif d["kind"] == "acceptance" and not (isinstance(d["expires"], str) and d["expires"] >= day
                                                and (ended is None or ended >= day)):
            chk.problem(where, f"an acceptance not in force on the report's day (expires {d['expires']!r}, "
                        f"ended {ended!r})")
        elif d["kind"] == "manual_match" and ended is not None and ended <= day:
            chk.problem(where, f"a manual match that lapsed on {ended}, not after the report's day")
    used: set[str] = set()
    for rel, n, name, kind, rec in decided:
        where = f"{rel} line {n}"
        if kind == "match":
            d = by_id.get(rec.get("decision_id"))
            if rec.get("match_type") != "manual" or d is None:
                chk.problem(where, "a manual match without its decision in decisions.jsonl (or a decision_id on "
                            "another match type)")
            elif (d["kind"] != "manual_match" or d["reconciliation"] != name
                  or d["left_entry_ids"] != rec.get("left_entry_ids") or d["right_entry_ids"] != rec.get("right_entry_ids")):
                chk.problem(where, f"is not the match decision {d['decision_id']} states")
            else:
                used.add(d["decision_id"])
        else:
            acc = rec.get("acceptance")
            d = by_id.get(acc.get("decision_id")) if isinstance(acc, dict) else None
            if d is None:
                chk.problem(where, "an acceptance without its decision in decisions.jsonl")
            elif (d["kind"] != "acceptance" or d["reconciliation"] != name or rec["break_id"] not in d["break_ids"]
                  or acc != {k: d[k] for k in _ACCEPTANCE_KEYS}):
                chk.problem(where, f"is not the acceptance decision {d['decision_id']} states")
            else:
                used.add(d["decision_id"])
    for d in by_id.values():
        if d["decision_id"] not in used:
            chk.problem(DECISIONS_FILE, f"decision {d['decision_id']} is honoured by no record of the report")
    stated = audit.get("decisions")
    given = {k: sum(d["kind"] == k for d in by_id.values()) for k in ("manual_match", "acceptance")}
    if not _same(stated, given):
        chk.problem("audit.json", f"decisions is {stated!r}, decisions.jsonl gives {given}")


PROOF_FORMAT = "ledger-pipelines.inclusion-proof/1"
_PROOF_KEYS = {"format", "day", "merkle_root", "report_version", "anchor", "leaf", "leaf_hash", "index", "tree_size",
               "path"}


def _check_root(chk: _Check, audit: dict[str, Any], leaves: dict) -> list[bytes]:
    ordered = sorted(h for h, _ in leaves.values())
    got = merkle.root(ordered).hex()
    if got != audit["merkle_root"]:
        chk.problem("audit.json", f"merkle_root is {audit['merkle_root']}, but the report's contents give {got}")
    return ordered


def _anchor_problem(chk: _Check, day: str, root: str, version: str, anchor: Any, rpc: str | None,
                    contract: str | None, confirmations: int = 0) -> Any:
    if not rpc:
        return ("not checked (no --rpc): consistent with the root the report states; only the anchor shows that "
                "root is the one anchored")
    from .anchor import check_anchored
    from .chain import ChainError

    try:
        return check_anchored(day, root, version, anchor, rpc, contract, confirmations)
    except ChainError as exc:
        chk.problem("anchor", str(exc))
        return None


def _answer(chk: _Check, day: Any, out: dict[str, Any]) -> dict[str, Any]:
    if chk.problems:
        more = len(chk.problems) - MAX_PROBLEMS
        return {"verified": False, **({"day": day} if isinstance(day, str) else {}),
                "reason": "; ".join(chk.problems[:MAX_PROBLEMS]) + (f" (+{more} more)" if more > 0 else ""),
                "problems": chk.problems}
    return {"verified": True, **out}


_READ_ERRORS = (OSError, ValueError, KeyError, TypeError, AttributeError)


def verify_report(day_dir: Path, rpc: str | None = None, contract: str | None = None,
                  confirmations: int = 0) -> dict[str, Any]:
    chk = _Check(Path(day_dir))
    audit: dict[str, Any] = {}
    out: dict[str, Any] = {}
    try:
        audit, leaves = _check_contents(chk)
        _check_root(chk, audit, leaves)
        name = chk.folder.resolve().name
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", name) and name != audit["day"]:
            chk.problem("audit.json", f"the report of {audit['day']} is in a folder named {name} (renamed?)")
        out = {"day": audit["day"], "merkle_root": audit["merkle_root"], "report_version": report_version(audit),
               "records": audit["records"], "leaves": len(leaves)}
    except VerificationError as exc:
        chk.problems.insert(0, str(exc))
    except _READ_ERRORS as exc:
        chk.problems.insert(0, f"the report could not be read: {type(exc).__name__}: {exc}")
    if not chk.problems:
        anchor = audit.get("anchor")
        out["anchored"] = bool(anchor)  # the report claims an anchor (checked on chain only with rpc)
        if rpc and not anchor:
            chk.problem("anchor", "the report carries no anchor (anchoring was off or failed)")
        else:
            out["anchor"] = _anchor_problem(chk, audit["day"], audit["merkle_root"], out["report_version"], anchor,
                                            rpc, contract, confirmations)
    return _answer(chk, audit.get("day") if isinstance(audit, dict) else None, out)


def _leaf_object(day: str, loc: tuple, folder: Path, audit: dict[str, Any]) -> dict[str, Any]:
    """The object whose canonical JSON is the leaf at ``loc`` (read again from the verified folder)."""
    kind = loc[0]
    if kind == "audit":
        from .commitment import audit_body

        return {"audit": audit_body(audit), "day": day, "leaf": "audit"}
    if kind == "summary":
        return {"day": day, "leaf": "summary", "reconciliation": loc[1],
                "summary": strict_json((folder / loc[1] / "summary.json").read_bytes())}
    if kind == "decision":
        for line in (folder / DECISIONS_FILE).read_bytes().splitlines():
            d = strict_json(line)
            if d.get("decision_id") == loc[1]:
                return {"day": day, "decision": d, "leaf": "decision"}
    if kind == "payment":
        for line in (folder / "payments.jsonl").read_bytes().splitlines():
            p = strict_json(line)
            if p.get("correlation_id") == loc[1]:
                return {"day": day, "leaf": "payment", "payment": p}
    _, name, rkind, rid = loc
    id_field = "match_id" if rkind == "match" else "break_id"
    for line in (folder / name / RECORD_FILES[rkind]).read_bytes().splitlines():
        rec = strict_json(line)
        if rec.get(id_field) == rid:
            return {"day": day, "kind": rkind, "leaf": "record", "reconciliation": name, "record": rec}
    raise VerificationError(f"{loc}: not in the report")


def prove(day_dir: Path, record: str | None = None, reconciliation: str | None = None, payment: str | None = None,
          summary: str | None = None, audit_leaf_: bool = False, decision: str | None = None) -> dict[str, Any]:
    """An inclusion proof of one fact of a report that verifies: a record (by id, with its reconciliation when
    the id is in several), a payment (by correlation id), a reconciliation's summary, or audit.json itself.
    Only a report that verifies is proven from; ``VerificationError`` otherwise, with the reason."""
    folder = Path(day_dir)
    chk = _Check(folder)
    try:
        audit, leaves = _check_contents(chk)
        _check_root(chk, audit, leaves)
    except _READ_ERRORS as exc:
        raise VerificationError(f"the report could not be read: {type(exc).__name__}: {exc}") from None
    if chk.problems:
        raise VerificationError(f"the report does not verify: {'; '.join(chk.problems[:MAX_PROBLEMS])}")
    if record is not None:
        found = [loc for loc in leaves if loc[0] == "record" and loc[3] == record
                 and reconciliation in (None, loc[1])]
        if len(found) != 1:
            raise VerificationError(f"record {record}: " + ("not in the report" if not found else
                                    "in several reconciliations: name one with --reconciliation"))
        loc = found[0]
    elif payment is not None:
        loc = ("payment", payment)
    elif summary is not None:
        loc = ("summary", summary)
    elif decision is not None:
        loc = ("decision", decision)
    elif audit_leaf_:
        loc = ("audit",)
    else:
        raise VerificationError("say which fact to prove: a record, a payment, a summary or audit.json")
    if loc not in leaves:
        raise VerificationError(f"{' '.join(loc)}: not in the report")
    ordered = sorted(h for h, _ in leaves.values())
    target = leaves[loc][0]
    index = ordered.index(target)
    _, paths = merkle.tree(ordered)
    return {"format": PROOF_FORMAT, "day": audit["day"], "merkle_root": audit["merkle_root"],
            "report_version": report_version(audit), "anchor": audit.get("anchor"),
            "leaf": _leaf_object(audit["day"], loc, folder, audit), "leaf_hash": target.hex(), "index": index,
            "tree_size": len(ordered), "path": [h.hex() for h in paths[index]]}


def verify_proof(path: Path, rpc: str | None = None, contract: str | None = None,
                 confirmations: int = 0) -> dict[str, Any]:
    """Checks an inclusion proof made by :func:`prove`: the leaf it carries hashes to its leaf hash, the audit path
    leads from there to the root, and (with ``rpc``) that root and report version are the day's anchored ones."""
    chk = _Check(Path(path).parent)
    out: dict[str, Any] = {}
    doc: Any = {}
    try:
        data = Path(path).read_bytes()
        if len(data) > 1 << 24:
            raise VerificationError(f"{path}: larger than a proof can be")
        doc = strict_json(data)
        if not isinstance(doc, dict) or doc.get("format") != PROOF_FORMAT:
            raise VerificationError(f"{path}: not an inclusion proof ({PROOF_FORMAT})")
        if set(doc) != _PROOF_KEYS:
            raise VerificationError(f"{path}: members {sorted(set(doc) ^ _PROOF_KEYS)} missing or unknown")
        day, root, version, leaf = doc.get("day"), doc.get("merkle_root"), doc.get("report_version"), doc.get("leaf")
        index, size, hashes = doc.get("index"), doc.get("tree_size"), doc.get("path")
        if not (isinstance(day, str) and isinstance(root, str) and _HEX32.fullmatch(root) and isinstance(version, str)
                and isinstance(leaf, dict) and isinstance(index, int) and isinstance(size, int)
                and isinstance(hashes, list) and len(hashes) <= 64
                and all(isinstance(h, str) and _HEX32.fullmatch(h) for h in hashes)):
            raise VerificationError(f"{path}: malformed (day, merkle_root, report_version, leaf, index, tree_size and "
                                    "a path of at most 64 32-byte hex hashes expected)")
        anchor = doc.get("anchor")
        problem = None if anchor is None else anchor_record_problem(anchor, day, root, version)
        if problem:
            raise VerificationError(f"{path}: the anchor record {problem}")
        if leaf.get("day") != day or leaf.get("leaf") not in ("record", "summary", "payment", "decision", "audit"):
            raise VerificationError(f"{path}: the leaf is not a fact of {day} (leaf kind or day differs)")
        if leaf["leaf"] == "audit" and (not isinstance(leaf.get("audit"), dict) or
                                        report_version({**leaf["audit"], "merkle_root": root}) != version):
            chk.problem(str(path), "the audit leaf does not give the report version the proof states")
        leaf_hash = merkle.leaf_hash(canonical(leaf))
        if leaf_hash.hex() != doc.get("leaf_hash"):
            chk.problem(str(path), "the leaf does not hash to the proof's leaf_hash (edited?)")
        if not merkle.verify_inclusion(leaf_hash, index, size, [bytes.fromhex(h) for h in hashes], bytes.fromhex(root)):
            chk.problem(str(path), "its audit path does not lead from the leaf to the root")
        out = {"day": day, "merkle_root": root, "report_version": version, "leaf": leaf["leaf"],
               "index": index, "tree_size": size}
    except VerificationError as exc:
        chk.problems.insert(0, str(exc))
    except _READ_ERRORS as exc:
        chk.problems.insert(0, f"the proof could not be read: {type(exc).__name__}: {exc}")
    if not chk.problems:
        out["anchored"] = bool(doc.get("anchor"))
        if rpc and not doc.get("anchor"):
            chk.problem("anchor", "the proof carries no anchor record (the report was not anchored)")
        else:
            out["anchor"] = _anchor_problem(chk, doc["day"], doc["merkle_root"], doc["report_version"],
                                            doc.get("anchor"), rpc, contract, confirmations)
    return _answer(chk, doc.get("day") if isinstance(doc, dict) else None, out)
