"""``ledger-pipelines verify --report DIR [--rpc URL]``: recompute a day's Merkle root from its records,
check every inclusion proof, and (with ``--rpc``) the report's anchor on chain."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .merkle import leaf_hash, root_of, verify_proof


class VerificationError(RuntimeError):
    pass


def records_of(day_dir: Path, audit: dict[str, Any]) -> list[dict[str, Any]]:
    records = []
    for name in sorted(audit["reconciliations"]):
        for part in ("matches.jsonl", "breaks.jsonl"):
            path = day_dir / name / part
            if not path.exists():
                raise VerificationError(f"{path}: missing")
            records += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return records


def verify_report(day_dir: Path, rpc: str | None = None, contract: str | None = None) -> dict[str, Any]:
    audit = json.loads((day_dir / "audit.json").read_text())
    records = records_of(day_dir, audit)
    problems = []
    root = root_of(records)
    if root != audit["merkle_root"]:
        problems.append(f"Merkle root of the records is {root}, the report says {audit['merkle_root']}")
    if len(records) != audit.get("records", len(records)):
        problems.append(f"{len(records)} records on disk, the report says {audit['records']}")
    by_leaf = {leaf_hash(r).hex(): r for r in records}
    proofs = [json.loads(line) for line in (day_dir / "proofs.jsonl").read_text().splitlines() if line.strip()]
    if len(proofs) != len(records):
        problems.append(f"{len(proofs)} proofs for {len(records)} records")
    for p in proofs:
        rec = by_leaf.get(p["leaf"])
        if rec is None:
            problems.append(f"proof of {p['record_id']}: no record has leaf {p['leaf'][:16]}… (altered record?)")
        elif not verify_proof(rec, p["proof"], audit["merkle_root"]):
            problems.append(f"proof of {p['record_id']} does not lead to the root")
    anchor: Any = "not checked (no --rpc)"
    if rpc and not problems:
        from .anchor import check_anchor
        from .chain import ChainError

        try:
            anchor = check_anchor(audit, rpc, contract)
        except ChainError as exc:
            problems.append(f"anchor: {exc}")
    if problems:
        raise VerificationError("; ".join(problems[:10]) + (f" (+{len(problems) - 10} more)" if len(problems) > 10 else ""))
    return {"day": audit["day"], "merkle_root": audit["merkle_root"], "records": len(records), "proofs": len(proofs),
            "anchor": anchor}
