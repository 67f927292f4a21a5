"""Breaks desk benchmark: list pages of the desk with 100,000+ open breaks, through `ledger-pipelines desk`.

Setup (not counted): one day of a ledger pair with --left/--right entries that match nothing, reconciled by
``audit.run_day`` (the nightly's path: the pair's breaks, each ledger's bridge breaks, the desk's sync).
Then the desk command serves the warehouse, one user logs in over HTTP, and the bench requests list pages:
sorted by every column both ways, filtered by type, state, priority, amount range, day and reconciliation,
first pages and deep pages. It prints p50/p95/max per kind of page and overall (target: p95 <= 300 ms),
and in the same run the baseline: the default page read in-process by ``Desk.list_breaks`` (its count and its
page, as the server runs them), with no HTTP, session or rendering. Also the time of a repeated sync of the day.

    .venv/bin/python bench/bench_desk.py [--left 60000] [--right 40000] [--requests 200]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from datetime import date, datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from desk_server import Client  # noqa: E402  (the tests' cookie-keeping HTTP client)

from ledger_pipelines.audit import PairConfig, run_day  # noqa: E402
from ledger_pipelines.config import LedgerConfig  # noqa: E402
from ledger_pipelines.desk.store import Desk  # noqa: E402
from ledger_pipelines.model import make_entry  # noqa: E402
from ledger_pipelines.reconcile import Rules  # noqa: E402
from ledger_pipelines.warehouse import Warehouse  # noqa: E402
from ledger_pipelines.warehouse.state import replace_snapshot  # noqa: E402

DAY = date(2026, 11, 20)
PASSWORD = "bench password, long enough"


def build(folder: Path, left: int, right: int) -> tuple[Warehouse, dict, float]:
    wh = Warehouse(f"sqlite:///{folder / 'w.db'}")
    wh.create_schema()

    def leg(ledger, n, direction, amount):
        return make_entry(ledger=ledger, ledger_kind="sql", source_ref=str(n), correlation_id=f"{ledger}-{n}",
                          account="A", counterparty=f"CP {n % 977}", asset="EUR", amount=amount, direction=direction,
                          booked_at=datetime(2026, 11, 20, n % 24, n % 60, tzinfo=timezone.utc), status="booked")

    replace_snapshot(wh, "bank", str(DAY), [leg("bank", n, "debit", f"{1 + n % 250000}.{n % 100:02d}")
                                            for n in range(left)])
    replace_snapshot(wh, "chain", str(DAY), [leg("chain", n, "credit", f"{3 + n % 170000}.{n % 7:02d}")
                                             for n in range(right)])
    pair = PairConfig("bank_vs_chain", "bank", "chain", Rules.from_dict({"time_window": "1d", "tolerant_matching": False}))
    ledgers = [LedgerConfig(name="bank", kind="sql"), LedgerConfig(name="chain", kind="sql")]
    audit = run_day(wh, ledgers, [pair], DAY, folder / "reports")
    breaks = {}
    for name in audit["reconciliations"]:
        breaks[name] = [json.loads(x) for x in (folder / "reports" / str(DAY) / name / "breaks.jsonl").read_text().splitlines()]
    t0 = time.perf_counter()
    Desk(wh).sync(str(DAY), breaks, carried=[pair.name])
    return wh, audit, time.perf_counter() - t0


def pages(n: int) -> list[tuple[str, str]]:
    kinds = []
    for col in ("amount", "first_seen", "last_seen", "reconciliation", "break_id", "type", "state", "asset", "assignee"):
        for order in ("asc", "desc"):
            kinds.append(("sort", f"/breaks?state=unresolved&sort={col}&order={order}"))
    kinds += [("filter", "/breaks?type=missing_right"), ("filter", "/breaks?type=missing_left&sort=amount&order=asc"),
              ("filter", "/breaks?priority=P1"), ("filter", "/breaks?priority=P3&sort=first_seen"),
              ("filter", "/breaks?min=1000&max=50000"), ("filter", f"/breaks?day={DAY}&reconciliation=bank_vs_chain"),
              ("filter", "/breaks?assignee=nobody"), ("filter", "/breaks?state=new&asset=EUR")]
    kinds += [("deep", f"/breaks?state=unresolved&page={p}") for p in (50, 200, 500, 1000, 1500)]
    return [kinds[i % len(kinds)] for i in range(n)]


def baseline(desk: Desk, reps: int) -> list[float]:
    """The default page read in-process (count and page), as the server reads it, without HTTP."""
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        desk.list_breaks({"state": "unresolved"}, "amount", "desc", 1)
        times.append(time.perf_counter() - t0)
    return times


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p * (len(xs) - 1))))]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--left", type=int, default=60_000)
    ap.add_argument("--right", type=int, default=40_000)
    ap.add_argument("--requests", type=int, default=200)
    args = ap.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-desk-"))
    t0 = time.perf_counter()
    wh, audit, resync = build(folder, args.left, args.right)
    setup = time.perf_counter() - t0
    desk = Desk(wh)
    desk.add_user("bench", "operator", PASSWORD)
    _, total = desk.list_breaks({})
    _, open_ = desk.list_breaks({"state": "unresolved"})
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "LEDGER_WAREHOUSE_URL": wh.url, "LEDGER_REPORTS_DIR": str(folder / "reports"),
           "LEDGER_STACK_DIR": str(folder / "stack"), "LEDGER_DESK_SECRET": "bench-only session key, 32+ chars"}
    env.pop("LEDGER_DEMO_DIR", None)
    proc = subprocess.Popen([sys.executable, "-m", "ledger_pipelines.cli", "desk", "--port", str(port)], cwd=REPO,
                            env=env, stdout=subprocess.DEVNULL, stderr=open(folder / "desk.log", "wb"),
                            start_new_session=True)
    try:
        cl = Client(f"http://127.0.0.1:{port}")
        deadline = time.monotonic() + 60
        while True:
            try:
                cl.request("/login")
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit("the desk did not start:\n" + (folder / "desk.log").read_text()[-2000:])
                time.sleep(0.3)
        assert cl.login("bench", PASSWORD) == 303
        by_kind: dict[str, list[float]] = {}
        for kind, path in pages(args.requests):
            t = time.perf_counter()
            status, _, body = cl.request(path)
            by_kind.setdefault(kind, []).append(time.perf_counter() - t)
            assert status == 200 and "breaks" in body, (path, status)
    finally:
        proc.terminate()
        proc.wait(10)
    every = [x for xs in by_kind.values() for x in xs]
    base = baseline(desk, 30)
    out = {
        "breaks_on_the_desk": total, "unresolved": open_, "setup_s": round(setup, 1),
        "sync_again_s": round(resync, 2),
        "list_page_ms": {k: {"n": len(v), "p50": round(pct(v, .5) * 1000, 1), "p95": round(pct(v, .95) * 1000, 1),
                             "max": round(max(v) * 1000, 1)} for k, v in sorted(by_kind.items())},
        "all_pages_ms": {"n": len(every), "p50": round(pct(every, .5) * 1000, 1),
                         "p95": round(pct(every, .95) * 1000, 1), "max": round(max(every) * 1000, 1)},
        "baseline_ms_default_page_in_process": {"p50": round(pct(base, .5) * 1000, 1), "p95": round(pct(base, .95) * 1000, 1)},
        "target_p95_ms": 300,
    }
    out["target_met"] = out["all_pages_ms"]["p95"] <= 300
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
