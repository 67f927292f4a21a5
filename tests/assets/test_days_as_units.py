"""Days are units: a week backfilled in one go through ``dagster dev`` (the UI's launchPartitionBackfill),
one day made bad. Every day is its own run with its own materializations, metadata and check results;
the bad day's failed check blocks that day's reconciliation and report only, the other six complete
and reconcile in day order (each carries the break the day before left open); Chromium shows it.

The instance is the production one: ``deploy/dagster.yaml`` (PostgreSQL run, event-log and schedule
storage, the QueuedRunCoordinator, run and pool limits) on the stack's PostgreSQL. The ledgers reach the
event log the way they do in production: the source sensors request publish runs, the offsets sensor an
event-log run, before the week is backfilled."""

from __future__ import annotations

import json
import os
import time
import urllib.request
import uuid
from datetime import date, timedelta

import pytest

from conftest import post_journal
from test_ui import CHROMIUM, REPO, _shot, browser, dagster_dev, stop_dagster  # noqa: F401 (browser: a fixture)

from ledger_pipelines.local.demo import set_pool_limits

pytestmark = [pytest.mark.ui, pytest.mark.services]

WEEK = [(date(2026, 11, 17) + timedelta(days=i)).isoformat() for i in range(7)]
BAD = WEEK[3]
DAILY = ["core_banking_snapshot", "settlement_snapshot", "reconciliation", "audit_report"]
CONFIG = """\
partitions_start: "2026-11-01"
reconciliations:
  - name: core_vs_settlement
    left: core_banking
    right: settlement
    left_filter: {account: [GL-CUSTOMERS]}
    right_filter: {account: [NOSTRO]}
    rules: {key: correlation_id, time_window: 3d, direction: any}
ledgers:
  - {name: core_banking, kind: sql, connection_env: LEDGER_DAYS_CORE_URL, assets: [EUR]}
  - {name: settlement, kind: sql, connection_env: LEDGER_DAYS_SETTLEMENT_URL, assets: [EUR]}
"""


def _lines(txn, at, debit_account, credit_account, amount, ref, credit_amount=None):
    return [{"txn": txn, "posted_at": at, "side": "D", "amount": amount, "account": debit_account, "ref": ref},
            {"txn": txn, "posted_at": at, "side": "C", "amount": credit_amount or amount, "account": credit_account,
             "ref": ref}]


def _seed(core: str, settlement: str) -> int:
    """Day i: i+1 payments settled the same day, and one (LATE-<day>) settled the next day; the bad day
    also holds a transaction whose debits and credits differ."""
    core_lines, settled = [], []
    for i, day in enumerate(WEEK):
        for n in range(i + 1):
            ref, amount = f"P-{day}-{n}", f"{10 + n}.{i:02d}"
            core_lines += _lines(f"C-{ref}", f"{day}T10:{n:02d}:00Z", "GL-CUSTOMERS", "GL-SETTLEMENT", amount, ref)
            settled += _lines(f"S-{ref}", f"{day}T11:{n:02d}:00Z", "CLEARING", "NOSTRO", amount, ref)
        late = f"LATE-{day}"
        core_lines += _lines(f"C-{late}", f"{day}T20:00:00Z", "GL-CUSTOMERS", "GL-SETTLEMENT", "77.00", late)
        if i + 1 < len(WEEK):
            settled += _lines(f"S-{late}", f"{WEEK[i + 1]}T09:00:00Z", "CLEARING", "NOSTRO", "77.00", late)
    core_lines += _lines("T-BAD", f"{BAD}T12:00:00Z", "GL-A", "GL-B", "5.00", None, credit_amount="4.99")
    post_journal(core, core_lines)
    post_journal(settlement, settled)
    return len(core_lines) + len(settled)


def _event_log_rows(url: str) -> int:
    from sqlalchemy import create_engine, text

    eng = create_engine(url)
    try:
        with eng.connect() as c:
            return c.execute(text("SELECT count(*) FROM ledger_event_log")).scalar()
    except Exception:  # not created yet
        return 0
    finally:
        eng.dispose()


def _graphql(url: str, query: str, variables: dict | None = None) -> dict:
    req = urllib.request.Request(url + "/graphql", data=json.dumps({"query": query, "variables": variables or {}}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        out = json.loads(resp.read())
    assert not out.get("errors"), out["errors"]
    return out["data"]


LAUNCH = """mutation($p: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $p) {
  __typename ... on LaunchBackfillSuccess { backfillId } ... on PythonError { message } ... on InvalidSubsetError { message }
  } }"""
STATUS = """query($id: String!) { partitionBackfillOrError(backfillId: $id) { __typename
  ... on PartitionBackfill { status runs(limit: 100) { runId status tags { key value } } } } }"""
LOADED = """{ workspaceOrError { ... on Workspace { locationEntries { loadStatus } } } }"""


@pytest.fixture(scope="module")
def week_backfill(tmp_path_factory, kafka_service, anvil_service, postgres_service, stack_config):
    """The week launched as one backfill of every daily asset, run by the daemon of ``dagster dev`` on the
    production instance configuration with its storage in a PostgreSQL database of its own."""
    import psycopg

    if not os.path.exists(CHROMIUM):
        pytest.fail("Debian chromium is not installed: run scripts/setup.sh")
    home = tmp_path_factory.mktemp("days_home")
    (home / "dagster.yaml").write_text((REPO / "deploy" / "dagster.yaml").read_text())
    db = f"dagster_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(**stack_config.pg_admin_params()) as conn:
        conn.execute(f'CREATE DATABASE "{db}"')
    pg = {"DAGSTER_PG_HOST": stack_config.host, "DAGSTER_PG_PORT": str(stack_config.pg_port),
          "DAGSTER_PG_USER": stack_config.pg_user, "DAGSTER_PG_PASSWORD": stack_config.pg_password(),
          "DAGSTER_PG_DB": db}
    saved = {k: os.environ.get(k) for k in pg}
    os.environ.update(pg)  # for this module's own reads of the instance (DagsterInstance.from_config)
    set_pool_limits(home)
    (home / "ledgers.yaml").write_text(CONFIG)
    env = {"LEDGER_CONFIG": str(home / "ledgers.yaml"), "LEDGER_KAFKA_BOOTSTRAP": stack_config.kafka_bootstrap,
           "LEDGER_TOPIC_PREFIX": f"days{uuid.uuid4().hex[:8]}.",
           "LEDGER_WAREHOUSE_URL": f"sqlite:///{home / 'warehouse.db'}",
           "LEDGER_DAYS_CORE_URL": f"sqlite:///{home / 'core.db'}",
           "LEDGER_DAYS_SETTLEMENT_URL": f"sqlite:///{home / 'settlement.db'}",
           "LEDGER_REPORTS_DIR": str(home / "reports"), "DAGSTER_HOME": str(home), **pg}
    lines = _seed(env["LEDGER_DAYS_CORE_URL"], env["LEDGER_DAYS_SETTLEMENT_URL"])
    proc, url = dagster_dev({**os.environ, **env}, home / "dagster.log")
    try:
        deadline = time.monotonic() + 180
        while not all(e["loadStatus"] == "LOADED"
                      for e in _graphql(url, LOADED)["workspaceOrError"]["locationEntries"] or [{"loadStatus": ""}]):
            assert time.monotonic() < deadline, "the code location did not load"
            time.sleep(1)
        # sensor -> publish runs -> offsets sensor -> event-log run, queued and launched by the daemon
        deadline = time.monotonic() + 300
        while _event_log_rows(env["LEDGER_WAREHOUSE_URL"]) < lines:
            assert time.monotonic() < deadline, (f"the sensors' runs delivered {_event_log_rows(env['LEDGER_WAREHOUSE_URL'])}"
                                                 f" of {lines} journal lines in 300 s")
            time.sleep(1)
        params = {"assetSelection": [{"path": [a]} for a in DAILY], "partitionNames": WEEK, "fromFailure": False}
        launched = _graphql(url, LAUNCH, {"p": params})["launchPartitionBackfill"]
        assert launched["__typename"] == "LaunchBackfillSuccess", launched
        backfill_id = launched["backfillId"]
        deadline = time.monotonic() + 600
        while True:
            backfill = _graphql(url, STATUS, {"id": backfill_id})["partitionBackfillOrError"]
            if backfill["status"] not in ("REQUESTED", "CANCELING", "FAILING"):
                break
            assert time.monotonic() < deadline, f"backfill not done in 600 s: {backfill}"
            time.sleep(1)
        yield url, home, backfill_id, backfill
    finally:
        stop_dagster(proc)
        with psycopg.connect(**stack_config.pg_admin_params()) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


def _events(home, asset: str) -> dict:
    """The asset's materializations in the instance, by partition."""
    from dagster import AssetKey, DagsterEventType, DagsterInstance, EventRecordsFilter

    with DagsterInstance.from_config(str(home)) as instance:
        records = instance.get_event_records(EventRecordsFilter(event_type=DagsterEventType.ASSET_MATERIALIZATION,
                                                                asset_key=AssetKey(asset)))
        out: dict = {}
        for r in records:
            mat = r.asset_materialization
            out.setdefault(mat.partition, []).append((r.run_id, mat.metadata))
        return out


def _check_evaluations(home, backfill: dict, asset: str, check: str) -> dict:
    """The check's results in each run of the backfill, by the run's day."""
    from dagster import DagsterEventType, DagsterInstance

    out = {}
    with DagsterInstance.from_config(str(home)) as instance:
        for run in backfill["runs"]:
            for e in instance.all_logs(run["runId"], of_type=DagsterEventType.ASSET_CHECK_EVALUATION):
                ev = e.dagster_event.event_specific_data
                if ev.asset_key.to_user_string() == asset and ev.check_name == check:
                    out.setdefault(_day_of(run), []).append(ev.passed)
    return out


def _day_of(run: dict) -> str:
    """The one day a backfill run covers (tagged as a partition, or as a range of one day)."""
    tags = {t["key"]: t["value"] for t in run["tags"]}
    if "dagster/partition" in tags:
        return tags["dagster/partition"]
    start, end = tags["dagster/asset_partition_range_start"], tags["dagster/asset_partition_range_end"]
    assert start == end, (start, end)
    return start


def test_the_instance_is_postgresql_backed_and_the_sensors_runs_delivered_the_ledgers(week_backfill):
    """deploy/dagster.yaml as loaded: PostgreSQL storage, the queued coordinator; the publish and event-log
    runs the sensors requested went through the queue and succeeded."""
    from dagster import DagsterInstance
    from dagster._core.run_coordinator import QueuedRunCoordinator
    from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage

    from ledger_pipelines.jobs import EVENT_LOG_JOB, PUBLISH_JOB

    _url, home, _id, _backfill = week_backfill
    with DagsterInstance.from_config(str(home)) as instance:
        assert isinstance(instance.run_storage, PostgresRunStorage)
        assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
        assert isinstance(instance.run_coordinator, QueuedRunCoordinator)
        by_sensor: dict = {}
        for run in instance.get_runs():
            if run.tags.get("dagster/sensor_name"):
                by_sensor.setdefault((run.tags["dagster/sensor_name"], run.job_name), []).append(run.status.value)
    assert by_sensor[("sql_rows_sensor", PUBLISH_JOB)] == ["SUCCESS", "SUCCESS"], by_sensor  # one per ledger
    assert set(by_sensor[("kafka_offsets_sensor", EVENT_LOG_JOB)]) == {"SUCCESS"}, by_sensor


def test_each_day_is_its_own_run_and_a_bad_day_blocks_only_itself(week_backfill):
    _url, home, _id, backfill = week_backfill
    assert backfill["status"] == "COMPLETED_FAILED", backfill["status"]  # one day failed, the backfill finished
    runs = {_day_of(r): r["status"] for r in backfill["runs"]}
    assert len(backfill["runs"]) == 7  # one run per day, not one for the range
    assert runs == {d: "FAILURE" if d == BAD else "SUCCESS" for d in WEEK}
    good = [d for d in WEEK if d != BAD]
    reports, recons = _events(home, "audit_report"), _events(home, "reconciliation")
    snapshots = _events(home, "core_banking_snapshot")
    # the bad day's reconciliation and report did not materialize; its report folder holds only Data Docs
    assert BAD not in reports and BAD not in recons
    assert sorted(p.name for p in (home / "reports" / BAD).iterdir()) == ["data_docs"]
    assert set(reports) == set(recons) == set(good)
    roots = set()
    for i, day in enumerate(WEEK):
        ((run_id, snap),) = snapshots[day]
        assert snap["day"].value == day
        assert snap["rows"].value == 2 * (i + 2) + (2 if day == BAD else 0)  # that day's own count
        assert run_id == next(r["runId"] for r in backfill["runs"] if _day_of(r) == day)
        if day == BAD:
            continue
        audit = json.loads((home / "reports" / day / "audit.json").read_text())
        ((_, rep),), ((_, rec),) = reports[day], recons[day]
        for md in (rep, rec):  # each partition's page: its own day, its own root
            assert md["day"].value == day and md["merkle_root"].value == audit["merkle_root"]
            assert day in md["summary"].value
        assert rep["anchor"].data["partition"] == day and rep["anchor_tx"].value == audit["anchor"]["tx_hash"]
        assert rep["matches"].value == sum(r["matches"] for r in audit["reconciliations"].values())
        assert rec["breaks"].value["core_vs_settlement"] == audit["reconciliations"]["core_vs_settlement"]["breaks"]
        roots.add(audit["merkle_root"])
    assert len(roots) == len(good)
    checks = _check_evaluations(home, backfill, "core_banking_snapshot", "trial_balance")
    assert checks == {d: [d != BAD] for d in WEEK}  # one result per day; the failed one is that day's only
    assert _check_evaluations(home, backfill, "settlement_snapshot", "trial_balance") == {d: [True] for d in WEEK}


def test_the_days_of_a_backfill_reconcile_in_day_order(week_backfill):
    """Day d matches the payment that day d-1 left unsettled: d-1 was reconciled before d."""
    _url, home, _id, _backfill = week_backfill
    for prev, day in zip(WEEK, WEEK[1:]):
        if BAD in (prev, day):
            continue
        folder = home / "reports" / day / "core_vs_settlement"
        records = [json.loads(line) for part in ("matches.jsonl", "breaks.jsonl")
                   for line in (folder / part).read_text().splitlines()]
        late = [r for r in records if r["correlation_id"] == f"LATE-{prev}"]
        assert len(late) == 1 and late[0].get("match_type"), (day, late)
        audit = json.loads((home / "reports" / day / "audit.json").read_text())
        assert audit["reconciliations"]["core_vs_settlement"]["carried_in"] >= 1


def test_the_ui_shows_each_day_and_the_blocked_one(week_backfill, browser, artifacts):  # noqa: F811
    url, home, backfill_id, _ = week_backfill
    day = WEEK[5]
    root = json.loads((home / "reports" / day / "audit.json").read_text())["merkle_root"]
    page = browser.new_page(viewport={"width": 1500, "height": 1100})
    try:
        page.goto(f"{url}/runs/b/{backfill_id}", wait_until="domcontentloaded")
        page.get_by_text(f"{WEEK[0]}...{WEEK[-1]}").first.wait_for(timeout=90_000)  # the week, as one backfill
        _shot(page, artifacts, "days-backfill")
        page.goto(f"{url}/overview/activity/timeline", wait_until="domcontentloaded")
        page.get_by_text("Jobless asset materializations").first.wait_for(timeout=90_000)
        page.wait_for_timeout(3000)
        _shot(page, artifacts, "days-timeline")  # the backfill's runs: six succeeded, one failed
        page.goto(f"{url}/runs?q%5B0%5D=tag%3Adagster%2Fbackfill%3D{backfill_id}", wait_until="domcontentloaded")
        page.get_by_text("Failure").first.wait_for(timeout=60_000)
        page.wait_for_timeout(2000)
        _shot(page, artifacts, "days-backfill-runs")
        page.goto(f"{url}/assets/audit_report?view=partitions&partition={day}", wait_until="domcontentloaded")
        page.get_by_text(root).first.wait_for(timeout=90_000)  # that day's own root on that day's page
        _shot(page, artifacts, "days-audit-report-partition")
        page.goto(f"{url}/assets/audit_report?view=partitions&partition={BAD}", wait_until="domcontentloaded")
        page.get_by_text(BAD).first.wait_for(timeout=60_000)
        page.wait_for_timeout(3000)
        assert page.get_by_text("merkle_root").count() == 0  # nothing materialized for the blocked day
        _shot(page, artifacts, "days-blocked-partition")
    except Exception:
        _shot(page, artifacts, "days-failure")
        raise
    finally:
        page.close()
