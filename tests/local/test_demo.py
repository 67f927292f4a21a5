"""The demo end to end on the real stack: ``ledger-pipelines demo`` builds the corridor week, every
injected break is reported with its type, every day's report verifies with its on-chain anchor, a
tampered report fails, the triggers acted once per payment, re-running is safe, and the Dagster UI
(headless Chromium) shows the assets and the anchored audit report partition."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PAYMENTS = 150

pytestmark = pytest.mark.services


def _cli(*args, env=None, timeout=900):
    return subprocess.run([sys.executable, "-m", "ledger_pipelines.cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def demo(tmp_path_factory, kafka_service, anvil_service):
    folder = tmp_path_factory.mktemp("demo")
    env = {**os.environ, "LEDGER_DEMO_DIR": str(folder)}
    t0 = time.monotonic()
    run = _cli("demo", "--no-ui", "--payments", str(PAYMENTS), env=env)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    steps = [line for line in run.stdout.splitlines() if line.startswith("[")]
    assert steps[0].startswith("[1/9]") and steps[-1].startswith("[9/9] done"), run.stdout  # progress shown
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["complete"] is True
    (folder.parent / f"{folder.name}-stdout.txt").write_text(run.stdout)
    return folder, manifest, env, time.monotonic() - t0


def test_the_desk_serves_the_demo_week_to_its_two_users(demo):
    import re
    import socket

    from desk_server import Client
    from ledger_pipelines.local.demo import stop_group

    folder, manifest, env, _ = demo
    out = (folder.parent / f"{folder.name}-stdout.txt").read_text()
    users = dict(re.findall(r"^    (demo-[a-z]+) \((?:operator|approver)\): (\S+)$", out, re.M))
    assert set(users) == {"demo-operator", "demo-approver"} and len(set(users.values())) == 2
    assert not any(p in (REPO / "README.md").read_text() for p in users.values())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "ledger_pipelines.cli", "desk", "--port", str(port)], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        cl = Client(f"http://127.0.0.1:{port}")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if cl.request("/login")[0] == 200:
                    break
            except OSError:
                time.sleep(0.5)
        assert cl.login("demo-operator", users["demo-operator"]) == 303
        # the desk holds every break the last day's report states, under the same ids
        last = manifest["days"][-1]
        audit = json.loads((folder / "reports" / last / "audit.json").read_text())
        stated = sum(r["breaks"] for r in audit["reconciliations"].values())
        status, _, body = cl.request(f"/breaks?day={last}")
        assert status == 200 and re.search(r"<p>(\d+) breaks", body).group(1) == str(stated), stated
        name, some = next((n, json.loads(lines[0])) for n in ("bank_vs_chain", "beneficiary_vs_chain")
                          if (lines := (folder / "reports" / last / n / "breaks.jsonl").read_text().splitlines()))
        status, _, body = cl.request(f"/breaks/{name}/{some['break_id']}")
        assert status == 200 and all(i in body for i in some["left_entry_ids"] + some["right_entry_ids"])
        last = manifest["days"][-1]
        status, _, body = cl.request(f"/day/{last}")
        assert status == 200 and "anchored in tx" in body
        assert cl.request(f"/reports/{last}/index.html")[0] == 200
    finally:
        stop_group(proc, timeout=5)


def _records(folder: Path, day: str, name: str) -> list[dict]:
    return [json.loads(line) for part in ("matches.jsonl", "breaks.jsonl")
            for line in (folder / "reports" / day / name / part).read_text().splitlines()]


def test_every_injected_break_is_reported_with_its_type(demo):
    folder, manifest, _, _ = demo
    expected = manifest["expected"]
    kinds = {e["type"] for e in expected}
    assert kinds >= {"missing_left", "missing_right", "amount_mismatch", "asset_mismatch", "duplicate_left",
                     "timing", "orphaned", "one_to_many", "tolerant"}
    for e in expected:
        got = [r.get("match_type") or r.get("break_type") for r in _records(folder, e["day"], e["reconciliation"])
               if r["correlation_id"] in e["members"]]
        assert e["type"] in got, (e, got)
    # every input entry in exactly one record, per reconciliation and day
    for day in manifest["days"]:
        audit = json.loads((folder / "reports" / day / "audit.json").read_text())
        for name, summary in audit["reconciliations"].items():
            recs = _records(folder, day, name)
            for side in ("left", "right"):
                ids = [i for r in recs for i in r[f"{side}_entry_ids"]]
                assert len(ids) == len(set(ids)) == summary["input_rows"][side], (day, name, side)
        # the bridge delivered every entry of every ledger unchanged (the reorg's orphaned leg aside)
        for ledger in ("sender_bank", "beneficiary_bank", "eth_usdc"):
            breaks = audit["reconciliations"][f"bridge_{ledger}"]["break_type"]
            assert set(breaks) <= {"orphaned"}, (day, ledger, breaks)


def test_every_report_verifies_with_its_anchor_and_a_tampered_one_fails(demo, stack_config, tmp_path):
    folder, manifest, env, _ = demo
    rpc = stack_config.anvil_url
    roots = set()
    for day in manifest["days"]:
        run = _cli("verify", "--report", str(folder / "reports" / day), "--rpc", rpc,
                   "--contract", manifest["contracts"]["AuditAnchor"], env=env, timeout=120)
        out = json.loads(run.stdout)
        assert run.returncode == 0 and out["verified"] is True, out
        assert out["anchor"]["partition"] == day and out["records"] > PAYMENTS
        roots.add(out["merkle_root"])
    assert len(roots) == len(manifest["days"])
    day = manifest["days"][3]
    copy = tmp_path / day
    shutil.copytree(folder / "reports" / day, copy)
    breaks = copy / "bank_vs_chain" / "breaks.jsonl"
    lines = breaks.read_text().splitlines()
    doc = json.loads(lines[0])
    doc["reason"] = doc["reason"] + " (edited)"
    breaks.write_text("\n".join([json.dumps(doc, sort_keys=True, separators=(",", ":")), *lines[1:]]) + "\n")
    run = _cli("verify", "--report", str(copy), "--rpc", rpc, env=env, timeout=120)
    out = json.loads(run.stdout)
    assert run.returncode == 1 and out["verified"] is False and "root" in out["reason"]
    assert "bank_vs_chain/breaks.jsonl" in out["reason"]  # the edited file is named


def test_large_payments_were_recorded_on_chain_once_each(demo, stack_config):
    from sqlalchemy import create_engine, text

    from ledger_pipelines.contracts import web3_for
    from ledger_pipelines.chain import contract

    folder, manifest, _, _ = demo
    eng = create_engine(f"sqlite:///{folder / 'sender_bank.db'}")
    with eng.connect() as c:
        rows = c.execute(text("SELECT payment_ref, count(*) FROM journal_lines WHERE account = 'GL-1100-CUSTOMERS' "
                              "AND side = 'D' AND CAST(amount AS NUMERIC) >= 45000 GROUP BY payment_ref")).all()
    eng.dispose()
    assert rows, "the corridor has no payment above the trigger's threshold"
    w3 = web3_for(stack_config.anvil_url)
    bridge = contract(w3, "LedgerBridge", manifest["contracts"]["LedgerBridge"])
    logs = w3.eth.get_logs({"address": bridge.address, "fromBlock": 0, "toBlock": "latest"})
    recorded = [bridge.events.PaymentRecorded().process_log(lg)["args"]["paymentReference"] for lg in logs]
    assert sorted(recorded) == sorted(ref for ref, _ in rows)  # once per reference, none missing
    wh = create_engine(f"sqlite:///{folder / 'warehouse.db'}")
    with wh.connect() as c:
        status = dict(c.execute(text("SELECT status, count(*) FROM bridge_actions GROUP BY status")).all())
    wh.dispose()
    # a payment the bank posted twice: the second posting's action is refused (reference already on chain)
    assert status == {"applied": len(rows), **({"failed": sum(n - 1 for _, n in rows)} if any(n > 1 for _, n in rows)
                                               else {})}


def test_rerunning_the_demo_is_safe(demo):
    folder, manifest, env, first = demo
    before = {d: json.loads((folder / "reports" / d / "audit.json").read_text())["merkle_root"]
              for d in manifest["days"]}
    run = _cli("demo", "--no-ui", "--payments", str(PAYMENTS), env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "reusing the finished demo" in run.stdout
    after = {d: json.loads((folder / "reports" / d / "audit.json").read_text())["merkle_root"]
             for d in manifest["days"]}
    assert after == before


@pytest.mark.ui
def test_the_ui_shows_the_corridor_and_the_anchored_report(demo, artifacts):
    from playwright.sync_api import sync_playwright
    from test_ui import CHROMIUM, CHROMIUM_ARGS, _shot, dagster_dev, stop_dagster

    from ledger_pipelines.local.demo import demo_env

    folder, manifest, env, _ = demo
    denv = {**env, **demo_env(folder, manifest["prefix"])}
    proc, url = dagster_dev(denv, folder / "dagster-ui.log")
    try:
        day = manifest["days"][-1]
        anchor = json.loads((folder / "reports" / day / "audit.json").read_text())["anchor"]
        with sync_playwright() as p:
            b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            page = b.new_page(viewport={"width": 1500, "height": 1100})
            try:
                names = ("sender_bank_snapshot", "eth_usdc_snapshot", "beneficiary_bank_snapshot", "ledger_event_log",
                         "reconciliation", "audit_report")
                page.goto(url + "/assets", wait_until="domcontentloaded")
                for name in names:
                    page.get_by_text(name, exact=True).first.wait_for(timeout=90_000)
                _shot(page, artifacts, "demo-asset-catalog")
                page.goto(url + "/assets/audit_report?view=lineage&lineageScope=upstream&lineageDepth=5",
                          wait_until="domcontentloaded")
                for name in names[:3] + names[4:]:
                    page.get_by_text(name, exact=True).first.wait_for(timeout=90_000)
                page.wait_for_timeout(2000)
                _shot(page, artifacts, "demo-asset-graph")
                page.goto(url + f"/assets/audit_report?view=partitions&partition={day}",
                          wait_until="domcontentloaded")
                page.get_by_text("anchor_tx").first.wait_for(timeout=90_000)
                page.get_by_text(anchor["tx_hash"]).first.wait_for(timeout=30_000)
                page.get_by_text("merkle_root").first.wait_for(timeout=30_000)
                _shot(page, artifacts, "demo-audit-report-partition")
                page.goto(url + "/runs", wait_until="domcontentloaded")
                page.get_by_text("nightly_audit_job").first.wait_for(timeout=60_000)
                _shot(page, artifacts, "demo-runs")
                page.goto(url + "/assets/reconciliation", wait_until="domcontentloaded")
                page.get_by_role("button", name="Materialize").first.wait_for(timeout=60_000)
                page.get_by_role("button", name="Materialize").first.click()
                page.get_by_text("Launch backfill").first.wait_for(timeout=30_000)  # a backfill can be launched
                _shot(page, artifacts, "demo-backfill-dialog")
            except Exception:
                _shot(page, artifacts, "demo-failure")
                raise
            finally:
                b.close()
    finally:
        stop_dagster(proc)


def test_the_demo_turned_on_the_sensors_and_the_nightly_schedule(demo):
    from ledger_pipelines.local.demo import demo_env

    folder, manifest, env, _ = demo
    denv = {**env, **demo_env(folder, manifest["prefix"])}
    dagster = str(Path(sys.executable).parent / "dagster")
    sensors = subprocess.run([dagster, "sensor", "list", "-w", "workspace.yaml"], cwd=REPO, env=denv,
                             capture_output=True, text=True, timeout=300).stdout
    for name in ("kafka_offsets_sensor", "bridge_sensor", "sql_rows_sensor", "evm_blocks_sensor",
                 "statement_inbox_sensor"):
        assert f"Sensor: {name} [RUNNING]" in sensors, sensors
    schedules = subprocess.run([dagster, "schedule", "list", "-w", "workspace.yaml"], cwd=REPO, env=denv,
                               capture_output=True, text=True, timeout=300).stdout
    assert "Schedule: nightly_audit_schedule [RUNNING]" in schedules, schedules
