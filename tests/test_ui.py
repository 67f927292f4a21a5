"""The Dagster UI, served by ``dagster dev`` and looked at in headless Chromium (Debian package)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = [pytest.mark.ui, pytest.mark.services]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def dagster_ui(tmp_path_factory, kafka_service, stack_config):
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian chromium is not installed: run scripts/setup.sh")
    home = tmp_path_factory.mktemp("dagster_home")
    from ledger_pipelines.demo import DAGSTER_YAML

    (home / "dagster.yaml").write_text(DAGSTER_YAML)
    port = _free_port()
    env = {**os.environ, "DAGSTER_HOME": str(home), "LEDGER_KAFKA_BOOTSTRAP": stack_config.kafka_bootstrap,
           "LEDGER_TOPIC_PREFIX": "uitest.", "LEDGER_WAREHOUSE_URL": f"sqlite:///{home / 'warehouse.db'}"}
    log = open(home / "dagster.log", "wb")
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
                    break
        except OSError:
            time.sleep(1)
        assert proc.poll() is None, (home / "dagster.log").read_text()[-3000:]
    else:
        pytest.fail("dagster dev did not answer in 180 s:\n" + (home / "dagster.log").read_text()[-3000:])
    yield url
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


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
    from ledger_pipelines.definitions import defs

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
