"""An adversary's tries against a day report: none of them verifies.

The report is a real one: a day reconciled by ``run_day`` from snapshots in a warehouse (matches, breaks
of several types, a payments view), finished by ``finish_report``. Offline checks call ``verify_report``;
what a third party runs (``ledger-pipelines verify``) is run as a command where it matters.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import date, datetime, timezone
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger_pipelines.audit import PairConfig, finish_report, run_day
from ledger_pipelines.commitment import canonical, pretty, report_version
from ledger_pipelines.config import LedgerConfig
from ledger_pipelines.model import make_entry
from ledger_pipelines.reconcile import Rules
from ledger_pipelines.reconcile.output import render_index
from ledger_pipelines.verify import verify_report
from ledger_pipelines.warehouse import Warehouse
from ledger_pipelines.warehouse.state import replace_snapshot

DAY = date(2026, 11, 20)
KEY = DAY.isoformat()


def _leg(ledger, ref, corr, amount, direction, hour=12, asset="EUR"):
    return make_entry(ledger=ledger, ledger_kind="sql", source_ref=ref, correlation_id=corr, account="A", asset=asset,
                      amount=amount, direction=direction, booked_at=datetime(2026, 11, 20, hour, tzinfo=timezone.utc),
                      status="booked")


def build_report(root: Path, bank_amount_p3: str = "30.00", anchor: bool = False) -> Path:
    """A day with exact matches, an amount mismatch, an asset mismatch, a missing leg on each side."""
    wh = Warehouse(f"sqlite:///{root / 'w.db'}")
    wh.create_schema()
    bank = [_leg("bank", "1", "P1", "10.00", "debit"), _leg("bank", "2", "P2", "20.00", "debit"),
            _leg("bank", "3", "P3", bank_amount_p3, "debit"), _leg("bank", "4", "P4", "40.00", "debit"),
            _leg("bank", "5", "P5", "50.00", "debit")]
    chain = [_leg("chain", "1", "P1", "10.00", "credit"), _leg("chain", "2", "P2", "20.00", "credit"),
             _leg("chain", "3", "P3", "31.00", "credit"), _leg("chain", "4", "P4", "40.00", "credit", asset="GBP"),
             _leg("chain", "6", "P6", "60.00", "credit")]
    replace_snapshot(wh, "bank", KEY, bank)
    replace_snapshot(wh, "chain", KEY, chain)
    ledgers = [LedgerConfig(name="bank", kind="sql"), LedgerConfig(name="chain", kind="sql")]
    pair = PairConfig("bank_vs_chain", "bank", "chain", Rules.from_dict({"time_window": "3d"}))
    reports = root / "reports"
    run_day(wh, ledgers, [pair], DAY, reports)
    wh.dispose()
    finish_report(reports / KEY, anchor=anchor)
    return reports / KEY


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    folder = build_report(tmp_path_factory.mktemp("report"))
    assert verify_report(folder)["verified"] is True
    return folder


@pytest.fixture
def report(pristine, tmp_path) -> Path:
    copy = tmp_path / "copy" / KEY
    shutil.copytree(pristine, copy)
    return copy


def files_of(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def refused(folder: Path, *needles: str) -> str:
    out = verify_report(folder)
    assert out["verified"] is False, f"verified although tampered: {out}"
    for needle in needles:
        assert needle in out["reason"], out["reason"]
    return out["reason"]


def cli_verify(folder: Path, *extra: str, env: dict | None = None) -> tuple[int, dict, str]:
    run = subprocess.run([sys.executable, "-m", "ledger_pipelines.cli", "verify", "--report", str(folder), *extra],
                         capture_output=True, text=True, timeout=120, env=env)
    return run.returncode, json.loads(run.stdout), run.stderr


def edit_json(path: Path, change) -> None:
    doc = json.loads(path.read_text())
    change(doc)
    path.write_bytes(pretty(doc))


def edit_lines(path: Path, change) -> None:
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    rows = change(rows)
    path.write_bytes(b"".join(canonical(r) + b"\n" for r in rows))


# -- the report holds what it should, so the attacks below attack something ---------------------------------------

def test_the_report_under_attack_has_matches_breaks_payments_and_committed_files(pristine):
    audit = json.loads((pristine / "audit.json").read_text())
    pair = audit["reconciliations"]["bank_vs_chain"]
    assert pair["match_type"] == {"exact": 2}
    assert pair["break_type"] == {"amount_mismatch": 1, "asset_mismatch": 1, "missing_left": 1, "missing_right": 1}
    assert audit["payments"]["total"] == 6 and "bank_vs_chain/report.html" in audit["files"]
    out = verify_report(pristine)
    assert out["leaves"] == audit["records"] + 3 + 6 + 1  # records, 3 summaries, payments, audit


# -- each class of tampering as its own test ---------------------------------------------------------------------

def test_an_edited_figure_in_audit_json_fails_and_names_the_file(report):
    edit_json(report / "audit.json", lambda d: d["amounts"]["bank"].update(EUR="1.00"))
    (report / "index.html").write_text(render_index(json.loads((report / "audit.json").read_text())))
    refused(report, "audit.json", "merkle_root")


def test_edited_counts_in_summary_json_fail_and_name_the_file(report):
    edit_json(report / "bank_vs_chain" / "summary.json", lambda d: d["break_type"].update(missing_left=0))
    refused(report, "bank_vs_chain/summary.json", "break_type")


def test_a_break_moved_into_matches_fails(report):
    breaks, matches = report / "bank_vs_chain" / "breaks.jsonl", report / "bank_vs_chain" / "matches.jsonl"
    moved = json.loads(breaks.read_text().splitlines()[0])
    edit_lines(breaks, lambda rows: rows[1:])
    as_match = {"match_id": moved["break_id"], "match_type": "exact", "left_entry_ids": moved["left_entry_ids"],
                "right_entry_ids": moved["right_entry_ids"], "correlation_id": moved["correlation_id"], "rule": "key"}
    edit_lines(matches, lambda rows: sorted(rows + [as_match], key=lambda r: r["match_id"]))
    refused(report, "bank_vs_chain")


def test_a_record_kept_in_its_file_but_labelled_a_match_fails(report):
    breaks = report / "bank_vs_chain" / "breaks.jsonl"
    edit_lines(breaks, lambda rows: [{**rows[0], "match_type": "exact"}, *rows[1:]])
    refused(report, "bank_vs_chain/breaks.jsonl line 1", "not a break record")


def test_an_edited_payment_fails(report):
    edit_lines(report / "payments.jsonl", lambda rows: [{**rows[0], "status": "complete", "missing_ledgers": []}
                                                        if rows[0]["status"] != "complete" else
                                                        {**rows[0], "status": "missing_leg"}, *rows[1:]])
    refused(report, "payments")


def test_a_dropped_break_fails_and_names_its_file(report):
    edit_lines(report / "bank_vs_chain" / "breaks.jsonl", lambda rows: rows[1:])
    refused(report, "bank_vs_chain/summary.json", "bank_vs_chain/breaks.jsonl: its bytes")


def test_a_file_replaced_by_a_symlink_to_an_identical_copy_outside_fails(report, tmp_path):
    target = report / "bank_vs_chain" / "matches.jsonl"
    outside = tmp_path / "outside.jsonl"
    shutil.copy(target, outside)
    target.unlink()
    target.symlink_to(outside)
    refused(report, "bank_vs_chain/matches.jsonl", "symlink")


def test_a_symlinked_folder_inside_the_report_fails(report, tmp_path):
    shutil.copytree(report / "bank_vs_chain", tmp_path / "elsewhere")
    shutil.rmtree(report / "bank_vs_chain")
    (report / "bank_vs_chain").symlink_to(tmp_path / "elsewhere")
    refused(report, "bank_vs_chain", "symlink")


def test_the_report_folder_itself_as_a_symlink_fails(report, tmp_path):
    link = tmp_path / "link"
    link.symlink_to(report)
    refused(link, "symlink")


def test_paths_outside_the_folder_are_never_read(report, tmp_path):
    secret = report.parent / "outside.html"
    secret.write_text("x")
    import hashlib

    digest = hashlib.sha256(b"x").hexdigest()
    edit_json(report / "audit.json", lambda d: d["files"].update({"../outside.html": digest}))
    refused(report, "../outside.html", "not in the folder")
    edit_json(report / "audit.json", lambda d: (d["files"].pop("../outside.html"),
                                                d["reconciliations"].update({"../copy": {}})))
    refused(report, "reconciliations must map plain names")


def test_a_file_added_to_the_folder_fails(report):
    (report / "bank_vs_chain" / "note.txt").write_text("all fine")
    refused(report, "bank_vs_chain/note.txt", "not covered")


def test_a_committed_file_removed_fails(report):
    (report / "bank_vs_chain" / "report.html").unlink()
    refused(report, "bank_vs_chain/report.html")


def test_an_edited_report_page_fails(report):
    page = report / "bank_vs_chain" / "report.html"
    original = page.read_text()
    page.write_text(original.replace("missing left", "exact"))
    assert page.read_text() != original
    refused(report, "bank_vs_chain/report.html", "SHA-256")


def test_an_index_page_that_says_something_else_fails(report):
    index = report / "index.html"
    index.write_text(index.read_text().replace("Audit report", "Clean audit report"))
    refused(report, "index.html")


def test_records_in_another_order_fail(report):
    edit_lines(report / "bank_vs_chain" / "breaks.jsonl", lambda rows: rows[::-1])
    refused(report, "bank_vs_chain/breaks.jsonl", "order")


def test_a_repeated_key_in_a_record_fails(report):
    breaks = report / "bank_vs_chain" / "breaks.jsonl"
    lines = breaks.read_bytes().split(b"\n")
    lines[0] = lines[0][:-1] + b',"reason":"ok"}'
    breaks.write_bytes(b"\n".join(lines))
    refused(report, "bank_vs_chain/breaks.jsonl line 1")


def _prove(folder: Path, *what: str) -> tuple[int, dict, str]:
    run = subprocess.run([sys.executable, "-m", "ledger_pipelines.cli", "prove", "--report", str(folder), *what],
                         capture_output=True, text=True, timeout=120)
    return run.returncode, (json.loads(run.stdout) if run.returncode == 0 else {}), run.stderr


def _a_break(folder: Path) -> str:
    return json.loads((folder / "bank_vs_chain" / "breaks.jsonl").read_text().splitlines()[0])["break_id"]


@pytest.mark.parametrize("what", [("--record", None), ("--payment", "P3"), ("--summary", "bank_vs_chain"),
                                  ("--audit",)])
def test_a_proof_of_each_kind_of_fact_verifies_on_its_own(report, tmp_path, what):
    args = ("--record", _a_break(report)) if what == ("--record", None) else what
    code, proof, err = _prove(report, *args)
    assert code == 0, err
    shutil.rmtree(report)  # a third party has the proof alone
    (tmp_path / "p.json").write_text(json.dumps(proof))
    code, out, _ = cli_verify_proof(tmp_path / "p.json")
    assert code == 0 and out["verified"] is True and out["leaf"] == proof["leaf"]["leaf"]


def test_no_proof_is_made_from_a_report_that_does_not_verify(report):
    edit_json(report / "bank_vs_chain" / "summary.json", lambda d: d["break_type"].update(missing_left=0))
    code, _, err = _prove(report, "--record", _a_break(report))
    assert code == 1 and "does not verify" in err and "Traceback" not in err


def test_a_proof_of_an_edited_record_fails(report, tmp_path):
    code, proof, _ = _prove(report, "--record", _a_break(report))
    proof["leaf"]["record"]["difference"] = "0.00"
    (tmp_path / "p.json").write_text(json.dumps(proof))
    code, out, _ = cli_verify_proof(tmp_path / "p.json")
    assert code == 1 and "does not hash" in out["reason"]
    proof["leaf_hash"] = __import__("hashlib").sha256(b"\0" + canonical(proof["leaf"])).hexdigest()
    (tmp_path / "p.json").write_text(json.dumps(proof))
    code, out, _ = cli_verify_proof(tmp_path / "p.json")
    assert code == 1 and "does not lead from the leaf to the root" in out["reason"]


@pytest.mark.parametrize("bad", [
    b"not json",
    b'{"format":"ledger-pipelines.inclusion-proof/1","leaf_hash":"zz","index":0,"tree_size":1,"path":[]}',
    b'{"format":"ledger-pipelines.inclusion-proof/1","day":"2026-11-20","merkle_root":"' + b"0" * 64
    + b'","report_version":"x","leaf":{},"index":-1,"tree_size":"1","path":[]}',
    b"[" * 100000 + b"]" * 100000,
    b'{"format":"ledger-pipelines.inclusion-proof/1","day":"2026-11-20","merkle_root":"' + b"0" * 64
    + b'","report_version":"x","leaf":{"day":"2026-11-20","leaf":"audit"},"index":0,"tree_size":1,"path":['
    + b",".join([b'"' + b"0" * 64 + b'"'] * 100) + b"]}",
    b"",
    b"\xff\xfe",
])
def test_malformed_proofs_give_verified_false_and_a_reason_never_a_traceback(tmp_path, bad):
    (tmp_path / "p.json").write_bytes(bad)
    code, out, err = cli_verify_proof(tmp_path / "p.json")
    assert code == 1 and out["verified"] is False and out["reason"] and "Traceback" not in err


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_no_random_corruption_of_a_real_proof_verifies(pristine, tmp_path_factory, data):
    from ledger_pipelines.verify import prove, verify_proof

    folder = tmp_path_factory.mktemp("proof")
    proof = prove(pristine, record=_a_break(pristine))
    raw = json.dumps(proof, sort_keys=True).encode()
    i = data.draw(st.integers(0, len(raw) - 1))
    b = data.draw(st.integers(0, 255).filter(lambda b: b != raw[i]))
    (folder / "p.json").write_bytes(raw[:i] + bytes([b]) + raw[i + 1:])
    out = verify_proof(folder / "p.json")
    if out["verified"]:  # offline only the leaf under the root is shown; the anchor record and report version
        changed = json.loads(raw[:i] + bytes([b]) + raw[i + 1:])  # are what --rpc checks against the chain
        unchecked = ("anchor", "report_version")
        assert ({k: v for k, v in changed.items() if k not in unchecked}
                == {k: v for k, v in proof.items() if k not in unchecked})


def cli_verify_proof(path: Path, *extra: str, env: dict | None = None) -> tuple[int, dict, str]:
    run = subprocess.run([sys.executable, "-m", "ledger_pipelines.cli", "verify", "--proof", str(path), *extra],
                         capture_output=True, text=True, timeout=120, env=env)
    return run.returncode, json.loads(run.stdout), run.stderr


@pytest.mark.parametrize("content", [b"", b"{", b"[]", b'{"format": 1}', b"\xff\xfe", b"{}" * 10])
def test_a_malformed_audit_json_gives_verified_false_and_a_reason(report, content):
    (report / "audit.json").write_bytes(content)
    code, out, err = cli_verify(report)
    assert code == 1 and out["verified"] is False and "audit.json" in out["reason"] and "Traceback" not in err


def test_a_folder_that_is_no_report_gives_a_reason(tmp_path):
    code, out, err = cli_verify(tmp_path / "nothing-here")
    assert code == 1 and out["verified"] is False and "Traceback" not in err


# -- random corruption: none verifies ---------------------------------------------------------------------------

@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_no_random_corruption_of_a_real_report_verifies(pristine, tmp_path_factory, data):
    folder = tmp_path_factory.mktemp("fuzz") / KEY
    shutil.copytree(pristine, folder)
    names = files_of(folder)
    target = folder / data.draw(st.sampled_from(names), label="file")
    raw = target.read_bytes()
    how = data.draw(st.sampled_from(["flip", "insert", "delete_byte", "truncate", "drop_line", "dup_line",
                                     "swap_lines", "remove", "empty", "line_from_other_file"]), label="how")
    lines = raw.split(b"\n")
    if how == "flip" and raw:
        i = data.draw(st.integers(0, len(raw) - 1))
        b = data.draw(st.integers(0, 255).filter(lambda b: b != raw[i]))
        target.write_bytes(raw[:i] + bytes([b]) + raw[i + 1:])
    elif how == "insert":
        i = data.draw(st.integers(0, len(raw)))
        target.write_bytes(raw[:i] + data.draw(st.binary(min_size=1, max_size=8)) + raw[i:])
    elif how == "delete_byte" and raw:
        i = data.draw(st.integers(0, len(raw) - 1))
        target.write_bytes(raw[:i] + raw[i + 1:])
    elif how == "truncate" and raw:
        target.write_bytes(raw[:data.draw(st.integers(0, len(raw) - 1))])
    elif how in ("drop_line", "dup_line", "swap_lines") and len(lines) > 2:
        i = data.draw(st.integers(0, len(lines) - 2))
        j = data.draw(st.integers(0, len(lines) - 2).filter(lambda j: j != i or how != "swap_lines"))
        if how == "drop_line":
            del lines[i]
        elif how == "dup_line":
            lines.insert(j, lines[i])
        elif lines[i] != lines[j]:
            lines[i], lines[j] = lines[j], lines[i]
        else:
            lines.insert(j, b"{}")
        target.write_bytes(b"\n".join(lines))
    elif how == "remove":
        target.unlink()
    elif how == "empty" and raw:
        target.write_bytes(b"")
    else:  # a line of another file put in place of one of this file
        other = folder / data.draw(st.sampled_from([n for n in names if n.endswith(".jsonl")]))
        donor = [x for x in other.read_bytes().split(b"\n") if x]
        mine = [x for x in lines if x]
        if not donor or not mine or donor[0] == mine[0]:
            target.write_bytes(raw + b"\n")
        else:
            target.write_bytes(raw.replace(mine[0], donor[0], 1) if mine[0] in raw else raw + donor[0] + b"\n")
    assert target.exists() is False or target.read_bytes() != raw or how == "remove"
    out = verify_report(folder)
    assert out["verified"] is False, (target.relative_to(folder), how)


# -- the anchor: what verify trusts ------------------------------------------------------------------------------

@pytest.fixture
def anchored(tmp_path, monkeypatch, chain, stack_config):
    """A report anchored through a contract this project deployed (and recorded for the chain)."""
    monkeypatch.setenv("LEDGER_STACK_DIR", str(tmp_path / "stack"))
    monkeypatch.setenv("LEDGER_ANCHOR_RPC_URL", stack_config.anvil_url)
    monkeypatch.delenv("LEDGER_ANCHOR_CONTRACT", raising=False)
    folder = build_report(tmp_path, anchor=True)
    return folder


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k != "LEDGER_ANCHOR_CONTRACT"}
    env.update(extra)
    return env


@pytest.mark.services
def test_without_contract_verify_trusts_the_deployment_record_and_says_so(anchored, stack_config):
    code, out, _ = cli_verify(anchored, "--rpc", stack_config.anvil_url, env=_env())
    assert code == 0 and out["verified"] is True
    assert out["anchor"]["contract_source"].startswith("the deployment record")
    registry = json.loads((Path(os.environ["LEDGER_STACK_DIR"]) / "deployments.json").read_text())
    assert out["anchor"]["contract"] in [v["AuditAnchor"] for v in registry.values()]


@pytest.mark.services
def test_the_configured_contract_is_what_verify_trusts(anchored, stack_config):
    contract = json.loads((anchored / "audit.json").read_text())["anchor"]["contract"]
    code, out, _ = cli_verify(anchored, "--rpc", stack_config.anvil_url, env=_env(LEDGER_ANCHOR_CONTRACT=contract))
    assert code == 0 and out["anchor"]["contract_source"] == "the configuration (LEDGER_ANCHOR_CONTRACT)"
    code, out, _ = cli_verify(anchored, "--rpc", stack_config.anvil_url,
                              env=_env(LEDGER_ANCHOR_CONTRACT="0x" + "12" * 20))
    assert code == 1 and "expected contract 0x1212" in out["reason"]


@pytest.mark.services
def test_with_no_trusted_contract_verify_fails_with_the_reason(anchored, stack_config, tmp_path):
    code, out, _ = cli_verify(anchored, "--rpc", stack_config.anvil_url,
                              env=_env(LEDGER_STACK_DIR=str(tmp_path / "empty")))
    assert code == 1 and out["verified"] is False
    assert "no anchor contract to check against" in out["reason"] and "not trusted" in out["reason"]


@pytest.mark.services
def test_a_forgery_anchored_through_its_own_contract_fails(anchored, stack_config, tmp_path, monkeypatch):
    """The forger changes an amount, re-commits the day consistently and anchors it through a contract of
    their own, naming it in the report: offline it is consistent, but the trusted contract disagrees."""
    from ledger_pipelines.anchor import anchor_report
    from ledger_pipelines.chain import Signer

    forged = build_report(tmp_path / "forger", bank_amount_p3="31.00")
    signer = Signer.from_env(stack_config.anvil_url, "LEDGER_ANCHOR_KEY")
    own = signer.deploy("AuditAnchor")
    monkeypatch.setenv("LEDGER_ANCHOR_CONTRACT", own)
    audit = json.loads((forged / "audit.json").read_text())
    audit["anchor"] = anchor_report(KEY, audit, signer)
    (forged / "audit.json").write_bytes(pretty(audit))
    (forged / "index.html").write_text(render_index(audit))
    assert verify_report(forged)["verified"] is True  # consistent in itself: only the anchor can tell
    code, out, _ = cli_verify(forged, "--rpc", stack_config.anvil_url, env=_env())  # trusts the deployment record
    assert code == 1 and "expected contract" in out["reason"]


@pytest.mark.services
def test_a_report_recommitted_after_anchoring_fails_on_chain(anchored, stack_config, tmp_path):
    """Contents changed and the whole commitment recomputed, the original anchor record kept: the chain
    holds the original root and report version."""
    original = json.loads((anchored / "audit.json").read_text())
    forged_root = tmp_path / "forged"
    forged = build_report(forged_root, bank_amount_p3="31.00")
    audit = json.loads((forged / "audit.json").read_text())
    audit["anchor"] = original["anchor"]
    (forged / "audit.json").write_bytes(pretty(audit))
    (forged / "index.html").write_text(render_index(audit))
    # the anchor record kept as it was names the original root: refused offline already
    refused(forged, "audit.json: the anchor record is of merkle_root", original["merkle_root"])
    # made to name the new root and report version too, the folder is self-consistent: offline it verifies,
    # exit 3 (the anchor it claims was not checked); on chain it fails
    audit["anchor"] = {**original["anchor"], "merkle_root": audit["merkle_root"], "report_version": report_version(audit)}
    (forged / "audit.json").write_bytes(pretty(audit))
    (forged / "index.html").write_text(render_index(audit))
    code, out, _ = cli_verify(forged)
    assert code == 3 and out["verified"] is True and out["anchored"] is True, out
    code, out, _ = cli_verify(forged, "--rpc", stack_config.anvil_url, env=_env())
    assert code == 1 and "on-chain anchor of 2026-11-20 version 1" in out["reason"]
    assert original["merkle_root"] in out["reason"] and audit["merkle_root"] in out["reason"]


@pytest.mark.services
def test_an_unreachable_node_gives_a_reason(anchored):
    code, out, err = cli_verify(anchored, "--rpc", "http://127.0.0.1:9", env=_env())
    assert code == 1 and "could not be asked" in out["reason"] and "Traceback" not in err


@pytest.mark.services
def test_a_proof_checks_against_the_anchor_and_an_altered_version_does_not(anchored, stack_config, tmp_path):
    code, proof, err = _prove(anchored, "--record", _a_break(anchored))
    assert code == 0, err
    (tmp_path / "p.json").write_text(json.dumps(proof))
    code, out, _ = cli_verify_proof(tmp_path / "p.json", "--rpc", stack_config.anvil_url, env=_env())
    assert code == 0 and out["anchor"]["contract_source"].startswith("the deployment record")
    proof["report_version"] = "sha256:" + "00" * 32
    (tmp_path / "p.json").write_text(json.dumps(proof))
    # its anchor record still names the anchored version: refused without asking the chain
    code, out, _ = cli_verify_proof(tmp_path / "p.json")
    assert code == 1 and "the anchor record is of report_version" in out["reason"], out
    # the record altered alike: only the chain tells
    proof["anchor"]["report_version"] = proof["report_version"]
    (tmp_path / "p.json").write_text(json.dumps(proof))
    code, out, _ = cli_verify_proof(tmp_path / "p.json")
    assert code == 3 and out["verified"] is True, out
    code, out, _ = cli_verify_proof(tmp_path / "p.json", "--rpc", stack_config.anvil_url, env=_env())
    assert code == 1 and "on-chain anchor of 2026-11-20 version 1" in out["reason"]


def test_a_removed_index_page_fails(report):
    (report / "index.html").unlink()
    refused(report, "index.html", "missing")


def _with_anchor(folder: Path, **changes) -> dict:
    """audit.json given an anchor record of the writer's form for this report (as a forger would write one),
    with ``changes``, and its index page rendered from it."""
    audit = json.loads((folder / "audit.json").read_text())
    audit["anchor"] = {"block_number": 7, "chain_id": 31337, "contract": "0x" + "ab" * 20, "merkle_root":
                       audit["merkle_root"], "partition": audit["day"], "report_version": report_version(audit),
                       "tx_hash": "0x" + "cd" * 32, "version": 1, **changes}
    (folder / "audit.json").write_bytes(pretty(audit))
    (folder / "index.html").write_text(render_index(audit))
    return audit


def test_an_anchor_record_that_is_not_one_of_this_report_fails_offline(report):
    """The anchor record is made after the root, so nothing commits to it: each member must be of the
    writer's form and name this report's day, root and report version."""
    _with_anchor(report)
    code, out, _ = cli_verify(report)
    assert code == 3 and out["verified"] is True and out["anchored"] is True, out  # self-consistent, unchecked
    for change, needle in (({"attested_by": "Big Four LLP"}, "is not an anchor record"),
                           ({"block_number": "7 <img src=x onerror=alert(1)>"}, "has block_number"),
                           ({"block_number": True}, "has block_number"), ({"version": 0}, "has version"),
                           ({"tx_hash": "0xnot-a-hash"}, "has tx_hash"), ({"partition": "2026-11-21"}, "of partition"),
                           ({"merkle_root": "00" * 32}, "of merkle_root"),
                           ({"report_version": "sha256:" + "00" * 32}, "of report_version")):
        _with_anchor(report, **change)
        refused(report, "audit.json: the anchor record", needle)
    audit = json.loads((report / "audit.json").read_text())
    audit["anchor"] = None  # an unanchored report has no anchor member at all
    (report / "audit.json").write_bytes(pretty(audit))
    refused(report, "audit.json: the anchor record is not an anchor record")


def test_the_index_page_escapes_every_member_of_the_anchor_record():
    from ledger_pipelines.reconcile.output import _anchor_line

    line = _anchor_line({"chain_id": "<b>1</b>", "contract": "<i>c</i>", "tx_hash": "<s>t</s>",
                         "block_number": "<img src=x onerror=alert(1)>", "version": "<u>v</u>"})
    assert "<img" not in line and "<b>" not in line and "<u>" not in line and "&lt;img src=x" in line


def test_contract_or_confirmations_without_rpc_is_refused(report):
    code, out, _ = cli_verify(report, "--contract", "0x" + "12" * 20)
    assert code == 2 and "--rpc" in out["reason"]
    code, out, _ = cli_verify(report, "--confirmations", "12")
    assert code == 2 and "--confirmations is the depth of the anchor to check on chain: give --rpc" in out["reason"]


def test_an_unanchored_report_verified_offline_exits_0(report):
    code, out, _ = cli_verify(report)
    assert code == 0 and out["verified"] is True and out["anchored"] is False


def test_an_empty_folder_added_to_the_report_fails(report):
    (report / "bank_vs_chain" / "extra" / "deeper").mkdir(parents=True)
    refused(report, "bank_vs_chain/extra", "a folder holding no file of the report")


def test_a_folder_that_cannot_be_listed_fails(report, monkeypatch):
    """A folder the verifier may not read could hide an added file (simulated: the tests may run as root)."""
    import os as os_module

    hidden = report / "bank_vs_chain"
    real = os_module.scandir

    def scandir(path="."):
        if Path(path) == hidden:
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os_module, "scandir", scandir)
    refused(report, "bank_vs_chain: cannot be listed (Permission denied)")


def test_a_report_in_a_folder_named_as_another_day_fails(report):
    renamed = report.parent / "2026-11-21"
    report.rename(renamed)
    refused(renamed, "the report of 2026-11-20 is in a folder named 2026-11-21")
    other = report.parent / "kept-copy"  # a folder not named as a date can hold any day
    renamed.rename(other)
    assert verify_report(other)["verified"] is True


def test_a_record_that_encodes_to_no_utf8_is_refused_naming_its_line(report):
    path = report / "bank_vs_chain" / "breaks.jsonl"
    lines = path.read_bytes().split(b"\n")
    lines[0] = lines[0].replace(b'"reason":"', b'"reason":"\\ud800', 1)
    path.write_bytes(b"\n".join(lines))
    refused(report, "bank_vs_chain/breaks.jsonl line 1: not a JSON object")


def test_a_count_stated_as_a_boolean_is_not_the_count():
    from ledger_pipelines.verify import _same

    assert _same({"a": [1, {"b": 0}]}, {"a": [1, {"b": 0}]})
    assert not _same({"manual_match": False}, {"manual_match": 0})
    assert not _same([True], [1]) and not _same(1, 1.0) and not _same({"a": 1}, {"a": 1, "b": 2})


@pytest.mark.services
def test_an_anchor_record_naming_another_block_fails_on_chain(anchored, stack_config):
    audit = json.loads((anchored / "audit.json").read_text())
    _with_anchor(anchored, **{**audit["anchor"], "block_number": audit["anchor"]["block_number"] + 1})
    code, out, _ = cli_verify(anchored)
    assert code == 3 and out["verified"] is True, out
    code, out, _ = cli_verify(anchored, "--rpc", stack_config.anvil_url, env=_env())
    assert code == 1 and f"the report says block {audit['anchor']['block_number'] + 1}" in out["reason"], out
