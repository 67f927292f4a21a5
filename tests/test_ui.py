"""The Dagster UI, served by ``dagster dev`` and looked at in headless Chromium (Debian package)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from ledger_pipelines.local.demo import stop_group

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = [pytest.mark.ui, pytest.mark.services]


UNBALANCED_DAY = "2026-11-10"
WEEK = ["2026-11-17", "2026-11-18", "2026-11-19", "2026-11-20", "2026-11-21", "2026-11-22", "2026-11-23"]


def _seed_week(url: str) -> None:
    """Day i of the week gets i+1 balanced transactions; another day holds one that does not balance."""
    from conftest import balanced, post_journal

    post_journal(url, [x for i, day in enumerate(WEEK) for n in range(i + 1)
                       for x in balanced(f"{day}-{n}", f"{day}T12:00:00Z")] + [
        {"txn": "T-BAD", "posted_at": f"{UNBALANCED_DAY}T12:00:00Z", "side": "D", "amount": "5.00", "account": "GL"},
        {"txn": "T-BAD", "posted_at": f"{UNBALANCED_DAY}T12:00:00Z", "side": "C", "amount": "4.99", "account": "GL"}])


def _deliver(core: str, prefix: str, stack_config, warehouse_url: str) -> None:
    """Publish the seeded journal and ingest it, as the sensors would, so control totals agree."""
    from ledger_pipelines.config import LedgerConfig
    from ledger_pipelines.connectors.sql.mapping import ColumnMapping
    from ledger_pipelines.ingest import EventLogIngestor
    from ledger_pipelines.publish import Publisher
    from ledger_pipelines.settings import KafkaSettings
    from ledger_pipelines.warehouse import Warehouse

    os.environ["LEDGER_UI_CORE_URL"] = core
    kafka = KafkaSettings(bootstrap_servers=stack_config.kafka_bootstrap, topic_prefix=prefix)
    wh = Warehouse(warehouse_url)
    lc = LedgerConfig(name="core_banking", kind="sql", connection_env="LEDGER_UI_CORE_URL", mapping=ColumnMapping())
    Publisher(kafka, wh).publish(lc)
    EventLogIngestor(kafka, wh).run()
    wh.dispose()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def dagster_ui(tmp_path_factory, kafka_service, stack_config):
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian chromium is not installed: run scripts/setup.sh")
    home = tmp_path_factory.mktemp("dagster_home")
    from ledger_pipelines.local.demo import DAGSTER_YAML, set_pool_limits

    (home / "dagster.yaml").write_text(DAGSTER_YAML)
    set_pool_limits(home)
    core = f"sqlite:///{home / 'core_banking.db'}"
    _seed_week(core)
    prefix = f"ui{uuid.uuid4().hex[:8]}."
    env = {**os.environ, "DAGSTER_HOME": str(home), "LEDGER_KAFKA_BOOTSTRAP": stack_config.kafka_bootstrap,
           "LEDGER_TOPIC_PREFIX": prefix, "LEDGER_WAREHOUSE_URL": f"sqlite:///{home / 'warehouse.db'}",
           "LEDGER_CORE_BANKING_URL": core, "LEDGER_REPORTS_DIR": str(home / "reports")}
    _deliver(core, prefix, stack_config, f"sqlite:///{home / 'warehouse.db'}")
    proc, url = dagster_dev(env, home / "dagster.log")
    yield url, home
    stop_dagster(proc)


def stop_dagster(proc: subprocess.Popen) -> None:
    """A test's ``dagster dev`` goes with a 3 s grace: its state is thrown away with the test's folder,
    and its orderly shutdown (the 20 s the demo grants) took about 25 s of the suite per UI."""
    stop_group(proc, timeout=3)


def dagster_dev(env: dict, log_path: Path):
    """``dagster dev`` on a free port with ``env``; returns (process, url) once it answers."""
    port = _free_port()
    log = open(log_path, "wb")
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "dagster"), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/server_info", timeout=2) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            time.sleep(1)
        if proc.poll() is not None:
            break
    if proc.poll() is None:
        stop_dagster(proc)
    pytest.fail("dagster dev did not answer in 180 s:\n" + log_path.read_text()[-3000:])


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


def _shot(page, artifacts, name):
    skip = page.get_by_role("button", name="Skip")
    if skip.count() and skip.first.is_visible():  # first-visit "join the community" dialog
        skip.first.click()
        page.wait_for_timeout(500)
    page.screenshot(path=str(artifacts / f"ui-{name}.png"))


def test_asset_graph_shows_every_asset(dagster_ui, browser, artifacts):
    from ledger_pipelines.definitions import build_definitions

    defs = build_definitions()  # of the current LEDGER_CONFIG (the module's defs are of the first one imported)

    dagster_ui, _home = dagster_ui
    names = sorted(k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys())
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        page.goto(dagster_ui + "/assets", wait_until="domcontentloaded")
        for name in names:
            page.get_by_text(name, exact=True).first.wait_for(timeout=90_000)
        _shot(page, artifacts, "asset-catalog")
        page.goto(dagster_ui + "/asset-groups", wait_until="domcontentloaded")
        page.get_by_text("Global asset lineage").first.wait_for(timeout=60_000)
        page.wait_for_timeout(3000)
        _shot(page, artifacts, "asset-graph")
        page.goto(dagster_ui + "/automation", wait_until="domcontentloaded")
        for sensor in ("kafka_offsets_sensor", "sql_rows_sensor", "evm_blocks_sensor", "statement_inbox_sensor"):
            page.get_by_text(sensor).first.wait_for(timeout=60_000)
        _shot(page, artifacts, "automation")
    except Exception:
        _shot(page, artifacts, "failure")
        raise
    finally:
        page.close()


def test_a_week_backfilled_from_the_ui(dagster_ui, browser, artifacts):
    from ledger_pipelines.warehouse import Warehouse

    url, home = dagster_ui
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        page.goto(url + "/assets/core_banking_snapshot", wait_until="domcontentloaded")
        page.get_by_role("button", name="Materialize").first.wait_for(timeout=90_000)
        _shot(page, artifacts, "snapshot-asset")  # also dismisses the first-visit dialog
        page.get_by_role("button", name="Materialize").first.click()
        box = page.get_by_placeholder("No matching partitions")
        box.wait_for(timeout=30_000)
        box.fill(f"[{WEEK[0]}...{WEEK[-1]}]")
        box.press("Enter")
        page.get_by_text("7 partitions").first.wait_for(timeout=30_000)
        page.get_by_text("Backfills in multiple runs, with a maximum of 1 partitions per run").first.wait_for(timeout=10_000)
        _shot(page, artifacts, "backfill-dialog")
        page.get_by_role("button", name="Launch backfill").click()
        page.get_by_text("Created backfill").first.wait_for(timeout=30_000)
        _shot(page, artifacts, "backfill-launched")
    except Exception:
        _shot(page, artifacts, "backfill-failure")
        raise
    finally:
        page.close()
    # the daemon of `dagster dev` runs the backfill: seven runs, one per day
    wh = Warehouse(f"sqlite:///{home / 'warehouse.db'}")
    deadline = time.monotonic() + 240
    per_day: dict = {}
    while time.monotonic() < deadline:
        try:
            per_day = dict(wh.rows("SELECT snapshot_date, count(*) FROM ledger_snapshots "
                                   "WHERE ledger = 'core_banking' GROUP BY snapshot_date"))
        except Exception:
            per_day = {}
        if len(per_day) == 7:
            break
        time.sleep(2)
    assert per_day == {d: 2 * (i + 1) for i, d in enumerate(WEEK)}
    wh.dispose()


def test_a_failing_check_blocks_the_report_and_the_ui_says_why(dagster_ui, browser, artifacts):
    """The nightly audit job for a day with an unbalanced transaction, launched through the UI's
    GraphQL endpoint like the schedule would; the check page in Chromium shows the failure."""
    import json
    import urllib.request

    url, home = dagster_ui
    mutation = """mutation($p: ExecutionParams!) { launchRun(executionParams: $p) {
        __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message } } }"""
    params = {"selector": {"repositoryLocationName": "ledger_pipelines.definitions:defs",
                           "repositoryName": "__repository__", "jobName": "nightly_audit_job"},
              "executionMetadata": {"tags": [{"key": "dagster/partition", "value": UNBALANCED_DAY}]}}
    req = urllib.request.Request(url + "/graphql", data=json.dumps({"query": mutation, "variables": {"p": params}}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        launched = json.loads(resp.read())["data"]["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    run_id = launched["run"]["runId"]
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        page.goto(f"{url}/runs/{run_id}", wait_until="domcontentloaded")
        page.get_by_text("Failure").first.wait_for(timeout=180_000)
        _shot(page, artifacts, "blocked-run")
        page.goto(f"{url}/assets/core_banking_snapshot?view=checks", wait_until="domcontentloaded")
        page.get_by_text("trial_balance").first.wait_for(timeout=60_000)
        page.get_by_text("trial_balance").first.click()
        page.get_by_text("T-BAD:EUR").first.wait_for(timeout=60_000)  # the offending transaction, named
        _shot(page, artifacts, "failed-check")
    except Exception:
        _shot(page, artifacts, "blocked-failure")
        raise
    finally:
        page.close()
    folder = home / "reports" / UNBALANCED_DAY  # no report for the blocked day, only its Data Docs
    assert sorted(p.name for p in folder.iterdir()) == ["data_docs"]
    assert "trial_balance</a>: FAILED" in (folder / "data_docs" / "core_banking" / "index.html").read_text()
