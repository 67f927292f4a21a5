"""Daily reconciliation and audit report through Dagster, on the real broker; the nightly schedule."""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timezone

import pytest
from dagster import DagsterInstance, build_schedule_context, materialize
from sqlalchemy import text
from conftest import balanced, post_journal
from ledger_pipelines.ingest import EventLogIngestor
from ledger_pipelines.publish import Publisher
from ledger_pipelines.commitment import canonical, records_root
from ledger_pipelines.warehouse import Warehouse

pytestmark = pytest.mark.services
DAY = "2026-11-20"


def _journal(url, unbalanced=False):
    lines = [x for n in range(20) for x in balanced(f"T{n}", f"{DAY}T09:{n:02d}:00Z", ref=f"E2E-{n}")]
    if unbalanced:
        lines[7]["amount"] = "10.01"  # the credit line of T3
    post_journal(url, lines)


@pytest.fixture
def env(tmp_path, monkeypatch, kafka, anvil_service):
    monkeypatch.setenv("LEDGER_CORE_BANKING_URL", f"sqlite:///{tmp_path / 'core.db'}")
    monkeypatch.setenv("LEDGER_WAREHOUSE_URL", f"sqlite:///{tmp_path / 'w.db'}")
    monkeypatch.setenv("LEDGER_REPORTS_DIR", str(tmp_path / "reports"))
    monkeypatch.setenv("LEDGER_KAFKA_BOOTSTRAP", kafka.bootstrap_servers)
    monkeypatch.setenv("LEDGER_TOPIC_PREFIX", kafka.topic_prefix)
    return tmp_path


def _verify(folder, *extra):
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-m", "ledger_pipelines.cli", "verify", "--report", str(folder), *extra],
                         capture_output=True, text=True, timeout=120)
    out = json.loads(run.stdout)
    # 3: the contents verify, the anchor they claim was not checked (no --rpc)
    assert run.returncode == (1 if not out["verified"] else 3 if out["anchored"] and "--rpc" not in extra else 0)
    return out


def _proof(folder, record_id, path):
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-m", "ledger_pipelines.cli", "prove", "--report", str(folder), "--record",
                          record_id], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    path.write_text(run.stdout)
    return json.loads(run.stdout)


def _verify_proof(proof, path, *extra):
    import subprocess
    import sys

    path.write_text(json.dumps(proof))
    run = subprocess.run([sys.executable, "-m", "ledger_pipelines.cli", "verify", "--proof", str(path), *extra],
                         capture_output=True, text=True, timeout=120)
    out = json.loads(run.stdout)
    # 3: the contents verify, the anchor they claim was not checked (no --rpc)
    assert run.returncode == (1 if not out["verified"] else 3 if out["anchored"] and "--rpc" not in extra else 0)
    return out


def _rewrite_audit(folder, doc):
    """audit.json and its index page as a forger who knows the format would rewrite them."""
    from ledger_pipelines.commitment import pretty
    from ledger_pipelines.reconcile.output import render_index

    (folder / "audit.json").write_bytes(pretty(doc))
    (folder / "index.html").write_text(render_index(doc))


def _assets():
    from ledger_pipelines.definitions import build_definitions

    defs = build_definitions()  # of the current LEDGER_CONFIG (the module's defs are of the first one imported)

    return [defs.resolve_assets_def(n) for n in ("core_banking_snapshot", "reconciliation", "audit_report")]


def test_the_day_is_reconciled_against_the_bridge_and_reported(env, kafka, stack_config):
    from ledger_pipelines.config import ledger_by_name, load_config

    _journal(f"sqlite:///{env / 'core.db'}")
    wh = Warehouse(f"sqlite:///{env / 'w.db'}")
    Publisher(kafka, wh).publish(ledger_by_name(load_config(), "core_banking"))
    EventLogIngestor(kafka, wh).run()
    result = materialize(_assets(), instance=DagsterInstance.ephemeral(), partition_key=DAY)
    assert result.success
    folder = env / "reports" / DAY
    bridge = json.loads((folder / "bridge_core_banking" / "summary.json").read_text())
    assert bridge["match_type"] == {"exact": 40} and bridge["breaks"] == 0  # the bridge delivered every line
    pair = json.loads((folder / "bank_vs_statements" / "summary.json").read_text())
    assert pair["break_type"] == {"missing_right": 40}  # no statement for the day: every leg reported missing
    audit = json.loads((folder / "audit.json").read_text())
    records = []
    for name in ("bridge_core_banking", "bank_vs_statements", "bridge_bank_statements", "bridge_eth_usdc",
                 "bridge_products_cdc"):
        matches, breaks = ([canonical(json.loads(x)) for x in (folder / name / part).read_text().splitlines()]
                           for part in ("matches.jsonl", "breaks.jsonl"))
        summary = json.loads((folder / name / "summary.json").read_text())
        assert summary["merkle_root"] == records_root(DAY, name, matches, breaks)
        # the records are bound to their day and name
        assert not (matches or breaks) or summary["merkle_root"] != records_root(None, None, matches, breaks)
        records += [json.loads(x) for x in matches + breaks]
    report = result.asset_materializations_for_node("audit_report")[0]
    assert report.metadata["merkle_root"].value == audit["merkle_root"]
    assert report.metadata["breaks"].value == 40
    # the metadata links to the day on the breaks desk, as URLs the UI makes clickable
    from dagster import UrlMetadataValue

    assert report.metadata["desk"] == UrlMetadataValue(f"http://127.0.0.1:8600/day/{DAY}")
    assert report.metadata["report"] == UrlMetadataValue(f"http://127.0.0.1:8600/reports/{DAY}/index.html")
    rec = result.asset_materializations_for_node("reconciliation")[0]
    assert rec.metadata["desk"] == UrlMetadataValue(f"http://127.0.0.1:8600/breaks?day={DAY}&state=unresolved")
    assert audit["amounts"]["core_banking"] == {"EUR": {"debit": "200.00", "credit": "200.00"}}  # per direction
    assert audit["open_breaks_by_age"] == {"0 days": 40}
    index = (folder / "index.html").read_text()
    assert "Breaks by type" in index and "Open breaks by age" in index and "200.00" in index and "400.00" not in index
    # the root is anchored on chain; the tx hash is in the report and its metadata
    anchor = audit["anchor"]
    assert report.metadata["anchor_tx"].value == anchor["tx_hash"] and anchor["partition"] == DAY
    assert anchor["merkle_root"] == audit["merkle_root"] and anchor["tx_hash"] in index
    # the report verifies, with its anchor; an altered record or proof fails loudly
    verify = _verify(folder)
    assert verify["verified"] is True and verify["records"] == len(records)
    # a leaf for every record, each reconciliation's summary, each payment line and audit.json
    assert verify["leaves"] == len(records) + 5 + audit["payments"]["total"] + 1
    rpc = ("--rpc", stack_config.anvil_url)
    on_chain = _verify(folder, *rpc)
    assert on_chain["verified"] is True and on_chain["anchor"]["tx_hash"] == anchor["tx_hash"]
    deep = _verify(folder, *rpc, "--confirmations", "1000")  # a third party's finality: not yet that deep
    assert deep["verified"] is False and "fewer than the 1000 asked: not final yet" in deep["reason"]
    wrong_contract = _verify(folder, *rpc, "--contract", "0x" + "12" * 20)
    assert wrong_contract["verified"] is False and "expected contract" in wrong_contract["reason"]
    breaks = folder / "bank_vs_statements" / "breaks.jsonl"
    original = breaks.read_text()
    breaks.write_text(original.replace('"left_amount":"10.00"', '"left_amount":"1.00"', 1))
    tampered = _verify(folder)
    assert tampered["verified"] is False and "bank_vs_statements/breaks.jsonl" in tampered["reason"]
    assert "SHA-256 differs" in tampered["reason"] and "merkle_root" in tampered["reason"]
    breaks.write_text(original)
    # one break proven to a third party: the proof checks against the anchor; an altered proof does not
    break_id = json.loads(original.splitlines()[0])["break_id"]
    proof = _proof(folder, break_id, env / "break.proof.json")
    assert proof["leaf"]["record"]["break_id"] == break_id and proof["leaf"]["reconciliation"] == "bank_vs_statements"
    assert _verify_proof(proof, env / "break.proof.json", *rpc)["verified"] is True
    proof["path"][0] = "00" * 32
    assert "does not lead" in _verify_proof(proof, env / "bad.proof.json", *rpc)["reason"]
    # re-running the day's reconciliation and report from the same inputs reproduces the same root and reuses its
    # anchor (a re-run of the snapshot renders new Data Docs, with the new run's time: a new report version)
    again = materialize(_assets()[1:], instance=DagsterInstance.ephemeral(), partition_key=DAY)
    meta = again.asset_materializations_for_node("audit_report")[0].metadata
    assert meta["merkle_root"].value == audit["merkle_root"] and meta["anchor_tx"].value == anchor["tx_hash"]
    assert _verify(folder, *rpc)["verified"] is True
    # an anchor that does not match: a root changed in the report (and its records kept) is caught on chain
    audit_file = folder / "audit.json"
    doc = json.loads(audit_file.read_text())
    doc["anchor"]["version"] = 7
    _rewrite_audit(folder, doc)
    assert "version 7" in _verify(folder, *rpc)["reason"]
    doc["anchor"]["version"] = anchor["version"]
    doc["anchor"]["tx_hash"] = "0x" + "ab" * 32
    _rewrite_audit(folder, doc)
    assert "not found on chain" in _verify(folder, *rpc)["reason"]
    del doc["anchor"]
    _rewrite_audit(folder, doc)
    missing = _verify(folder, *rpc)
    assert missing["verified"] is False and "no anchor" in missing["reason"]


def test_re_anchoring_a_changed_partition_adds_a_version(env, kafka, stack_config):
    """New inputs for a day give a new root: anchored as version 2, version 1 kept on chain."""
    from ledger_pipelines.anchor import anchor_url
    from ledger_pipelines.chain import Signer, contract, contract_address
    from ledger_pipelines.config import ledger_by_name, load_config

    core = f"sqlite:///{env / 'core.db'}"
    _journal(core)
    wh = Warehouse(f"sqlite:///{env / 'w.db'}")
    lc = ledger_by_name(load_config(), "core_banking")
    day = "2026-11-19"
    post_journal(core, balanced("X1", f"{day}T08:00:00Z", ref="E2E-X1"))
    Publisher(kafka, wh).publish(lc)
    EventLogIngestor(kafka, wh).run()
    first = materialize(_assets(), instance=DagsterInstance.ephemeral(), partition_key=day)
    a1 = json.loads((env / "reports" / day / "audit.json").read_text())["anchor"]
    shutil.copytree(env / "reports" / day, env / "v1" / day)
    post_journal(core, balanced("X2", f"{day}T09:00:00Z", ref="E2E-X2"))
    Publisher(kafka, wh).publish(lc)
    EventLogIngestor(kafka, wh).run()
    second = materialize(_assets(), instance=DagsterInstance.ephemeral(), partition_key=day)
    assert first.success and second.success
    a2 = json.loads((env / "reports" / day / "audit.json").read_text())["anchor"]
    assert a2["version"] == a1["version"] + 1 and a2["merkle_root"] != a1["merkle_root"]
    signer = Signer.from_env(anchor_url(), "LEDGER_ANCHOR_KEY")
    c = contract(signer, "AuditAnchor", contract_address(signer, "AuditAnchor", deploy=False))
    assert c.functions.get(day, a1["version"]).call()[0].hex() == a1["merkle_root"]
    assert c.functions.get(day, a2["version"]).call()[0].hex() == a2["merkle_root"]
    assert _verify(env / "reports" / day, "--rpc", stack_config.anvil_url)["verified"] is True
    # the copy of version 1 is still intact, but cannot pass for the current report
    old = _verify(env / "v1" / day, "--rpc", stack_config.anvil_url)
    assert old["verified"] is False and f"superseded: {day} was anchored again as version {a2['version']}" in old["reason"]
    assert _verify(env / "v1" / day)["verified"] is True  # offline, its contents are still what version 1 committed


def test_a_failed_blocking_check_stops_reconciliation_and_report(env):
    _journal(f"sqlite:///{env / 'core.db'}", unbalanced=True)
    result = materialize(_assets(), instance=DagsterInstance.ephemeral(), partition_key=DAY, raise_on_error=False)
    assert not result.success
    materialized = {m.asset_key.to_user_string() for m in result.get_asset_materialization_events()}
    assert "reconciliation" not in materialized and "audit_report" not in materialized
    folder = env / "reports" / DAY
    assert sorted(p.name for p in folder.iterdir()) == ["data_docs"]  # no reconciliation, no report
    docs = (folder / "data_docs" / "core_banking" / "index.html").read_text()
    assert "trial_balance</a>: FAILED" in docs and "expectations</a>: passed" in docs
    page = (folder / "data_docs" / "core_banking" / "trial_balance.html").read_text()
    assert "expect_column_values_to_be_in_set" in page or "values must belong to this set" in page


def test_the_nightly_schedule_requests_the_last_complete_day():
    from ledger_pipelines.definitions import build_definitions

    defs = build_definitions()  # of the current LEDGER_CONFIG (the module's defs are of the first one imported)

    schedule = defs.resolve_schedule_def("nightly_audit_schedule")
    ctx = build_schedule_context(scheduled_execution_time=datetime(2026, 11, 25, 2, 30, tzinfo=timezone.utc))
    (request,) = schedule.evaluate_tick(ctx).run_requests
    assert request.partition_key == "2026-11-24"


def _carry_days(tmp_path):
    """A bank and a chain ledger over three days: P1 and P2 leave the bank on day 1, P1 reaches the chain
    on day 2, P2 never does. (warehouse, ledgers, pair, the three days, reports folder)."""
    from datetime import date

    from ledger_pipelines.audit import PairConfig
    from ledger_pipelines.config import LedgerConfig
    from ledger_pipelines.model import make_entry
    from ledger_pipelines.reconcile import Rules
    from ledger_pipelines.warehouse.state import replace_snapshot

    wh = Warehouse(f"sqlite:///{tmp_path / 'w.db'}")
    wh.create_schema()
    d1, d2, d3 = date(2026, 11, 20), date(2026, 11, 21), date(2026, 11, 22)

    def leg(ledger, ref, corr, day, direction):
        return make_entry(ledger=ledger, ledger_kind="sql", source_ref=ref, correlation_id=corr, account="A",
                          asset="EUR", amount="10.00", direction=direction,
                          booked_at=datetime(day.year, day.month, day.day, 12, tzinfo=timezone.utc), status="booked")

    replace_snapshot(wh, "bank", str(d1), [leg("bank", "1", "P1", d1, "debit"), leg("bank", "2", "P2", d1, "debit")])
    replace_snapshot(wh, "chain", str(d2), [leg("chain", "1", "P1", d2, "credit")])  # P1 settles a day later
    pair = PairConfig("bank_vs_chain", "bank", "chain", Rules.from_dict({"time_window": "3d"}))
    ledgers = [LedgerConfig(name="bank", kind="sql"), LedgerConfig(name="chain", kind="sql")]
    return wh, ledgers, pair, (d1, d2, d3), tmp_path / "reports"


def test_open_breaks_carry_forward_with_their_age_until_matched(tmp_path):
    from ledger_pipelines.audit import run_day

    wh, ledgers, pair, (d1, d2, d3), reports = _carry_days(tmp_path)
    day1 = run_day(wh, ledgers, [pair], d1, reports)
    assert day1["reconciliations"]["bank_vs_chain"]["break_type"] == {"missing_right": 2}
    for _ in range(2):  # re-running day 2 gives the same answer
        day2 = run_day(wh, ledgers, [pair], d2, reports)
        assert day2["reconciliations"]["bank_vs_chain"]["match_type"] == {"exact": 1}
        assert day2["reconciliations"]["bank_vs_chain"]["break_type"] == {"missing_right": 1}
    breaks = [json.loads(x) for x in (reports / str(d2) / "bank_vs_chain" / "breaks.jsonl").read_text().splitlines()]
    assert breaks[0]["correlation_id"] == "P2" and breaks[0]["age_days"] == 1 and breaks[0]["first_seen"] == str(d1)
    day3 = run_day(wh, ledgers, [pair], d3, reports)
    assert day3["reconciliations"]["bank_vs_chain"]["break_type"] == {"missing_right": 1}
    b3 = json.loads((reports / str(d3) / "bank_vs_chain" / "breaks.jsonl").read_text())
    assert b3["age_days"] == 2  # still open, a day older; P1 is not carried any more
    # reconciliation_results holds each day's records as its report files do, once (day 2 ran twice)
    for day in (d1, d2, d3):
        want = []
        for folder in sorted(p for p in (reports / str(day)).iterdir() if (p / "matches.jsonl").exists()):
            for file, id_key, kind_key in (("matches.jsonl", "match_id", "match_type"),
                                           ("breaks.jsonl", "break_id", "break_type")):
                for line in (folder / file).read_text().splitlines():
                    rec = json.loads(line)
                    want.append((folder.name, rec[id_key], rec[kind_key], line))
        with wh.engine.connect() as c:
            got = c.execute(text("SELECT name, record_id, kind, record FROM reconciliation_results WHERE day = :d "
                                 "ORDER BY name, record_id"), {"d": str(day)}).fetchall()
        assert want and [tuple(r) for r in got] == sorted(want)


def _warehouse_day_rows(wh):
    with wh.engine.connect() as c:
        return ([tuple(r) for r in c.execute(text("SELECT * FROM open_breaks ORDER BY name, side, entry_id"))],
                [tuple(r) for r in c.execute(text("SELECT * FROM reconciliation_results ORDER BY day, name, record_id"))])


def test_a_day_that_fails_late_changes_nothing_in_the_warehouse(tmp_path, monkeypatch):
    """Its report stays the previous one, so open_breaks and reconciliation_results must too: the next day
    carries in what the report in place left open, not what a run that never finished found."""
    from ledger_pipelines import audit

    wh, ledgers, pair, (d1, d2, _), reports = _carry_days(tmp_path)
    audit.run_day(wh, ledgers, [pair], d1, reports)
    first = audit.run_day(wh, ledgers, [pair], d2, reports)
    before, report = _warehouse_day_rows(wh), (reports / str(d2) / "audit.json").read_bytes()
    assert before[0] and any(row[0] == str(d2) for row in before[1])
    # day 2 again, once P1's match is gone from it (the chain leg was taken back), failing at the very end
    from ledger_pipelines.warehouse.state import replace_snapshot

    replace_snapshot(wh, "chain", str(d2), [])

    def boom(*args, **kwargs):
        raise RuntimeError("the disk is full")

    monkeypatch.setattr(audit, "committed_files", boom)
    with pytest.raises(RuntimeError, match="disk is full"):
        audit.run_day(wh, ledgers, [pair], d2, reports)
    assert _warehouse_day_rows(wh) == before
    assert (reports / str(d2) / "audit.json").read_bytes() == report
    monkeypatch.undo()
    again = audit.run_day(wh, ledgers, [pair], d2, reports)  # the day run whole: the warehouse follows it
    assert again["merkle_root"] != first["merkle_root"] and _warehouse_day_rows(wh) != before


def test_the_anchor_key_comes_from_the_environment_and_is_never_logged(env, kafka, stack_config, monkeypatch, capfd):
    from ledger_pipelines.chain import Signer
    from ledger_pipelines.config import ledger_by_name, load_config

    key = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d"  # anvil's second dev account
    monkeypatch.setenv("LEDGER_ANCHOR_KEY", key)
    signer = Signer.from_env(stack_config.anvil_url, "LEDGER_ANCHOR_KEY")
    assert key not in repr(signer) and key[2:] not in repr(signer)
    monkeypatch.setenv("LEDGER_ANCHOR_CONTRACT", signer.deploy("AuditAnchor"))  # owned by that key
    _journal(f"sqlite:///{env / 'core.db'}")
    wh = Warehouse(f"sqlite:///{env / 'w.db'}")
    Publisher(kafka, wh).publish(ledger_by_name(load_config(), "core_banking"))
    EventLogIngestor(kafka, wh).run()
    instance = DagsterInstance.ephemeral()
    result = materialize(_assets(), instance=instance, partition_key=DAY)
    assert result.success
    anchor = json.loads((env / "reports" / DAY / "audit.json").read_text())["anchor"]
    from web3 import Web3

    tx = Web3(Web3.HTTPProvider(stack_config.anvil_url)).eth.get_transaction(anchor["tx_hash"])
    assert tx["from"] == signer.address  # signed with the key from the environment
    logged = "\n".join(str(e) for e in instance.all_logs(result.run_id))
    out, err = capfd.readouterr()
    for text_ in (logged, out, err, (env / "reports" / DAY / "audit.json").read_text(),
                  (env / "reports" / DAY / "index.html").read_text()):
        assert key[2:].lower() not in text_.lower()
