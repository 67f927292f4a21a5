"""A week's backfill launched from the UI, one run per day, against the same week as one run.

What a user does: ``dagster dev`` of the code location, then "Materialize -> 7 partitions -> Launch
backfill" on every daily asset (snapshots, reconciliation, audit report), which is the GraphQL
mutation ``launchPartitionBackfill`` the UI sends. Timed from the launch until the backfill is done
(every run finished), for each code version in turn on the same seeded week:

- ``baseline``: a revision of the code whose daily assets backfill as one run for the whole range
  (``git archive`` of ``--baseline-rev``; by default the parent of the last commit that touched
  ``BackfillPolicy.single_run()`` in ledger_pipelines/assets/audit.py);
- ``current``: the working tree: one run per day.

Setup (not timed): two SQL ledgers with ``--payments`` payments a day for 7 days, published through
Kafka and ingested into a SQLite warehouse that each variant gets a copy of. Needs the local Kafka
and anvil (reports are anchored unless ``--anchor off``). Prints the two times and the ratio
(target: current <= 2 x baseline).

    .venv/bin/python bench/bench_backfill.py [--payments 300] [--baseline-rev REV] [--anchor off]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
import uuid
from datetime import date, timedelta
from io import BytesIO
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WEEK = [(date(2026, 11, 17) + timedelta(days=i)).isoformat() for i in range(7)]
DAILY_ASSETS = ["core_banking_snapshot", "settlement_snapshot", "reconciliation", "audit_report"]
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
  - {name: core_banking, kind: sql, connection_env: LEDGER_BENCH_CORE_URL, assets: [EUR]}
  - {name: settlement, kind: sql, connection_env: LEDGER_BENCH_SETTLEMENT_URL, assets: [EUR]}
"""


def baseline_rev() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout

    path = "ledger_pipelines/assets/audit.py"
    if "BackfillPolicy.single_run()" in git("show", f"HEAD:{path}"):
        return "HEAD"  # the committed code is still the single-run one
    return git("log", "-1", "--format=%H", "-S", "BackfillPolicy.single_run()", "--", path).strip() + "~1"


def extract(rev: str, into: Path) -> Path:
    """The repository's files at ``rev`` (no .git), for dagster dev to load the code from."""
    data = subprocess.run(["git", "archive", "--format=tar", rev], cwd=REPO, capture_output=True, check=True).stdout
    with tarfile.open(fileobj=BytesIO(data)) as tar:
        tar.extractall(into, filter="data")
    return into


def seed(work: Path, payments: int, prefix: str) -> Path:
    """The week in both ledgers, published and ingested as the sensors would; returns the warehouse file."""
    from sqlalchemy import text

    from ledger_pipelines.config import load_config
    from ledger_pipelines.connectors.sql.mapping import ColumnMapping
    from ledger_pipelines.connectors.sql.journal import SqlLedger
    from ledger_pipelines.ingest import EventLogIngestor
    from ledger_pipelines.publish import Publisher
    from ledger_pipelines.settings import KafkaSettings
    from ledger_pipelines.warehouse import Warehouse

    rows = {"core_banking": [], "settlement": []}
    for d, day in enumerate(WEEK):
        for n in range(payments):
            ref, at, amount = f"P-{day}-{n}", f"{day}T{n % 24:02d}:{n % 60:02d}:00Z", f"{100 + n}.{d:02d}"
            rows["core_banking"] += [("C" + ref, at, "GL-CUSTOMERS", "D", amount, ref),
                                     ("C" + ref, at, "GL-SETTLEMENT", "C", amount, ref)]
            if n % 50 != 7:  # a few payments never settle: breaks carried day to day
                rows["settlement"] += [("S" + ref, at, "NOSTRO", "C", amount, ref),
                                       ("S" + ref, at, "CLEARING", "D", amount, ref)]
    for name, lines in rows.items():
        ledger = SqlLedger(os.environ[f"LEDGER_BENCH_{'CORE' if name == 'core_banking' else 'SETTLEMENT'}_URL"],
                           ColumnMapping(), name)
        ledger.create_journal()
        with ledger.engine.begin() as c:
            c.execute(text("INSERT INTO journal_lines (txn_id, posted_at, account, currency, amount, side, payment_ref) "
                           "VALUES (:t, :p, :a, 'EUR', :m, :s, :r)"),
                      [{"t": t, "p": p, "a": a, "s": s, "m": m, "r": r} for t, p, a, s, m, r in lines])
        ledger.dispose()
    kafka = KafkaSettings.from_env()
    wh = Warehouse(os.environ["LEDGER_WAREHOUSE_URL"])
    wh.create_schema()
    for lc in load_config():
        Publisher(kafka, wh).publish(lc)
    EventLogIngestor(kafka, wh).run()
    wh.dispose()
    return work / "warehouse.db"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def graphql(url: str, query: str, variables: dict | None = None) -> dict:
    req = urllib.request.Request(url + "/graphql", data=json.dumps({"query": query, "variables": variables or {}}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        out = json.loads(resp.read())
    if out.get("errors"):
        raise RuntimeError(out["errors"])
    return out["data"]


LAUNCH = """mutation($p: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $p) {
  __typename ... on LaunchBackfillSuccess { backfillId } ... on PythonError { message } ... on InvalidSubsetError { message }
  ... on UnauthorizedError { message } } }"""
STATUS = """query($id: String!) { partitionBackfillOrError(backfillId: $id) { __typename
  ... on PartitionBackfill { status runs(limit: 100) { runId status } } } }"""
LOADED = """{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus
  locationOrLoadError { __typename } } } } }"""


def launch_week(url: str) -> str:
    params = {"assetSelection": [{"path": [a]} for a in DAILY_ASSETS], "partitionNames": WEEK, "fromFailure": False}
    out = graphql(url, LAUNCH, {"p": params})["launchPartitionBackfill"]
    if out["__typename"] != "LaunchBackfillSuccess":
        raise RuntimeError(out)
    return out["backfillId"]


def wait_backfill(url: str, backfill_id: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        b = graphql(url, STATUS, {"id": backfill_id})["partitionBackfillOrError"]
        if b["status"] not in ("REQUESTED", "CANCELING", "FAILING"):
            return b
        time.sleep(0.5)
    raise RuntimeError(f"backfill {backfill_id} not done in {timeout:.0f} s")


# the demo module of either checkout (the baseline revision kept it at the package's top level)
DEMO_MODULE = ("try:\n    from ledger_pipelines.local import demo\n"
               "except ImportError:\n    from ledger_pipelines import demo")


def run_variant(name: str, code: Path, seeded: Path, work: Path, env: dict, timeout: float) -> dict:
    home = work / name
    home.mkdir()
    shutil.copy(seeded, home / "warehouse.db")
    yaml_text = subprocess.run([sys.executable, "-c", f"{DEMO_MODULE}\nprint(demo.DAGSTER_YAML, end='')"],
                               cwd=code, env={**env, "PYTHONPATH": str(code)}, capture_output=True, text=True, check=True).stdout
    (home / "dagster.yaml").write_text(yaml_text)
    subprocess.run([sys.executable, "-c", f"import sys\nfrom pathlib import Path\n{DEMO_MODULE}\n"
                    "if hasattr(demo, 'set_pool_limits'): demo.set_pool_limits(Path(sys.argv[1]))", str(home)],
                   cwd=code, env={**env, "PYTHONPATH": str(code)}, capture_output=True, check=True)
    venv_env = {**env, "PYTHONPATH": str(code), "DAGSTER_HOME": str(home),
                "LEDGER_WAREHOUSE_URL": f"sqlite:///{home / 'warehouse.db'}", "LEDGER_REPORTS_DIR": str(home / "reports")}
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(home / "dagster.log", "wb")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "dagster"), "dev", "-w", "workspace.yaml",
                             "-h", "127.0.0.1", "-p", str(port)], cwd=code, env=venv_env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while True:
            try:
                entries = graphql(url, LOADED)["workspaceOrError"]["locationEntries"]
                if entries and all(e["loadStatus"] == "LOADED" for e in entries):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"{name}: dagster dev did not load:\n" + (home / "dagster.log").read_text()[-3000:])
            time.sleep(1)
        time.sleep(5)  # the daemon's first iterations settle before the clock starts
        t0 = time.monotonic()
        backfill = wait_backfill(url, launch_week(url), timeout)
        seconds = time.monotonic() - t0
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    reports = sorted(p.parent.name for p in (home / "reports").glob("*/index.html"))
    return {"variant": name, "seconds": round(seconds, 1), "status": backfill["status"],
            "runs": len(backfill["runs"]), "runs_ok": sum(r["status"] == "SUCCESS" for r in backfill["runs"]),
            "reports": len(reports)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--payments", type=int, default=300, help="payments per day")
    ap.add_argument("--baseline-rev", default=None)
    ap.add_argument("--anchor", choices=["on", "off"], default="on")
    ap.add_argument("--timeout", type=float, default=900)
    args = ap.parse_args()
    from ledger_pipelines.local.stack import StackConfig

    cfg = StackConfig.from_env()
    rev = args.baseline_rev or baseline_rev()
    work = Path(tempfile.mkdtemp(prefix="bench-backfill-"))
    (work / "ledgers.yaml").write_text(CONFIG)
    env = {**os.environ, "LEDGER_CONFIG": str(work / "ledgers.yaml"), "LEDGER_KAFKA_BOOTSTRAP": cfg.kafka_bootstrap,
           "LEDGER_TOPIC_PREFIX": f"bench{uuid.uuid4().hex[:8]}.", "LEDGER_ANCHOR": args.anchor,
           "LEDGER_BENCH_CORE_URL": f"sqlite:///{work / 'core.db'}",
           "LEDGER_BENCH_SETTLEMENT_URL": f"sqlite:///{work / 'settlement.db'}",
           "LEDGER_WAREHOUSE_URL": f"sqlite:///{work / 'warehouse.db'}"}
    os.environ.update(env)
    print(f"seeding 7 days x {args.payments} payments in two ledgers (not timed) in {work}", flush=True)
    seeded = seed(work, args.payments, env["LEDGER_TOPIC_PREFIX"])
    baseline_code = extract(rev, work / "baseline-code")
    results = []
    for name, code in (("baseline", baseline_code), ("current", REPO)):
        r = run_variant(name, code, seeded, work, env, args.timeout)
        r["code"] = rev if name == "baseline" else "working tree"
        print(json.dumps(r), flush=True)
        results.append(r)
    base, cur = results
    ratio = cur["seconds"] / base["seconds"]
    print(json.dumps({"week_backfill_seconds": {"single_run_baseline": base["seconds"], "one_run_per_day": cur["seconds"]},
                      "ratio": round(ratio, 2), "target": "<= 2.0", "met": ratio <= 2.0,
                      "cores": os.cpu_count(), "payments_per_day": args.payments}), flush=True)
    ok = all(r["status"] == "COMPLETED_SUCCESS" and r["reports"] == 7 for r in results)
    if ok:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"a backfill did not complete; logs kept in {work}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
