"""Reconciliation benchmark (issue: validation/reconciliation). Same generated data, same run:

  (1) this project's columnar engine (ledger_pipelines.reconcile.columnar: Arrow in, DuckDB, Arrow out)
      on N x N entries: keyed pairs (exact, tolerant within 0.05, amount mismatches, timing), entries
      missing on either side, duplicates, and --leftovers entries per side without a reference that are
      matched by amount and time (tolerant matching of leftovers);
  (2) the baseline: datacompy (pandas) comparing the same two sides on the reference, amounts as int64
      cents (datacompy cannot match the leftovers without a key: it only lists them as unique rows).

Each phase runs in its own process; the figure is wall time of the reconciliation itself (the
tables are built first, outside the timing) and the peak RSS of the process.

    .venv/bin/python bench/bench_reconcile.py [--rows 5000000] [--leftovers 100000] [--baseline-rows N] [--repeat 3]

The engine runs --repeat times in its process on the same tables; the median is the figure, all runs
are printed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

GEN = """
WITH base AS (SELECT i, hash(i) AS h FROM range({n}) t(i))
SELECT
  {side} || i AS entry_id,
  CASE WHEN i < {keyed} THEN 'C' || i END AS correlation_id,
  'EUR' AS asset,
  CAST(CAST((h % 1000000) + 100 AS VARCHAR)[:-3] || '.' || CAST((h % 1000000) + 100 AS VARCHAR)[-2:]
       AS DECIMAL(18,2)) {adjust} AS amount,
  {direction} AS direction,
  TIMESTAMPTZ '2026-11-24 00:00:00+00' + to_seconds(CAST((h >> 20) % 80000 AS BIGINT)) {shift} AS booked_at,
  'booked' AS status
FROM base {where}
"""


def tables(con, n: int, leftovers: int):
    """Left and right: keyed pairs with ~1% of each break type, plus `leftovers` unkeyed matches a side."""
    keyed = n - leftovers
    left = con.execute(GEN.format(n=n, keyed=keyed, side="'L'", adjust="", shift="", direction="'debit'",
                                  where="WHERE NOT (i < {k} AND h % 100 = 1)".format(k=keyed))).to_arrow_table()
    right = con.execute(GEN.format(
        n=n, keyed=keyed, side="'R'", direction="'credit'",  # seen from the other side (rules: opposite)
        adjust="+ CASE WHEN i < {k} AND h % 100 = 3 THEN 0.03 WHEN i < {k} AND h % 100 = 4 THEN 7.00 ELSE 0.00 END"
        .format(k=keyed),
        shift="+ CASE WHEN i < {k} AND h % 100 = 5 THEN INTERVAL 3 DAY ELSE INTERVAL 10 MINUTE END".format(k=keyed),
        where="WHERE NOT (i < {k} AND h % 100 = 2)".format(k=keyed))).to_arrow_table()
    return left, right


class Peak:
    def __init__(self):
        import psutil

        self.proc, self.peak, self.stop = psutil.Process(), 0, False
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.stop:
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.02)

    def done(self) -> int:
        self.stop = True
        self.thread.join()
        return max(self.peak, self.proc.memory_info().rss)


def phase_engine(n: int, leftovers: int, repeat: int = 3) -> dict:
    import duckdb
    import pyarrow.compute as pc

    from ledger_pipelines.reconcile import Rules
    from ledger_pipelines.reconcile.columnar import reconcile_arrow

    con = duckdb.connect()
    left, right = tables(con, n, leftovers)
    rules = Rules.from_dict({"time_window": "1d", "amount_tolerance": {"absolute": "0.05"}, "batch_members": None})
    peak = Peak()
    runs = []
    for _ in range(repeat):  # the same tables each time; every run builds and drops its own work tables
        r = None  # the last run's result goes first: the peak is that of one run
        t0 = time.perf_counter()
        r = reconcile_arrow(left, right, rules, con=con)
        runs.append((time.perf_counter() - t0, r.timings))
    rss = peak.done()
    secs, stages = sorted(runs, key=lambda x: x[0])[len(runs) // 2]
    placed = sum(pc.sum(pc.list_value_length(t.column(c))).as_py() or 0
                 for t in (r.matches, r.breaks) for c in ("left_entry_ids", "right_entry_ids"))
    assert placed == left.num_rows + right.num_rows, (placed, left.num_rows, right.num_rows)
    counts = r.counts()
    assert counts["match_type"].get("tolerant", 0) >= leftovers * 0.99  # the leftovers were matched
    return {"phase": "engine", "left": left.num_rows, "right": right.num_rows, "seconds": round(secs, 3),
            "runs_seconds": [round(x, 3) for x, _ in runs], "peak_rss_mb": rss // 2**20, "counts": counts,
            "every_entry_in_one_record": True, "stages": stages}


def phase_datacompy(n: int, leftovers: int) -> dict:
    import datacompy
    import duckdb

    con = duckdb.connect()
    left, right = tables(con, n, leftovers)
    frames = []
    for t in (left, right):
        df = t.select(["entry_id", "correlation_id", "asset", "direction", "booked_at", "status"]).to_pandas()
        import pyarrow.compute as pc

        df["amount_cents"] = pc.cast(pc.multiply(t.column("amount"), 100), "int64").to_numpy()
        frames.append(df)
    del left, right
    peak = Peak()
    t0 = time.perf_counter()
    cmp = datacompy.PandasCompare(frames[0], frames[1], join_columns=["correlation_id"], abs_tol=5,
                            df1_name="left", df2_name="right")
    report = cmp.report()
    secs = time.perf_counter() - t0
    rss = peak.done()
    return {"phase": "datacompy", "left": len(frames[0]), "right": len(frames[1]), "seconds": round(secs, 3),
            "peak_rss_mb": rss // 2**20, "report_chars": len(report),
            "unique_left": len(cmp.df1_unq_rows), "unique_right": len(cmp.df2_unq_rows)}


def run_phase(name: str, n: int, leftovers: int, repeat: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--phase", name, "--rows", str(n), "--leftovers", str(leftovers),
                          "--repeat", str(repeat)],
                         capture_output=True, text=True, timeout=7200)
    if out.returncode != 0:
        raise SystemExit(f"phase {name} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=5_000_000)
    ap.add_argument("--leftovers", type=int, default=100_000)
    ap.add_argument("--baseline-rows", type=int, default=None, help="rows for datacompy (default: --rows)")
    ap.add_argument("--repeat", type=int, default=3, help="engine runs (the median is reported; datacompy runs once)")
    ap.add_argument("--phase", choices=["engine", "datacompy"])
    args = ap.parse_args()
    if args.phase:
        if args.phase == "engine":
            print(json.dumps(phase_engine(args.rows, args.leftovers, args.repeat)))
        else:
            print(json.dumps(phase_datacompy(args.rows, args.leftovers)))
        return 0
    base_rows = args.baseline_rows or args.rows
    engine = run_phase("engine", args.rows, args.leftovers, args.repeat)
    print(json.dumps(engine, indent=2), flush=True)
    same = engine if base_rows == args.rows else run_phase("engine", base_rows, args.leftovers * base_rows // args.rows,
                                                           args.repeat)
    base = run_phase("datacompy", base_rows, args.leftovers * base_rows // args.rows, 1)
    print(json.dumps(base, indent=2), flush=True)
    out = {"rows_per_side": args.rows, "engine_seconds": engine["seconds"], "engine_runs_seconds": engine["runs_seconds"],
           "engine_peak_rss_mb": engine["peak_rss_mb"],
           "target_seconds": 5.0, "target_rss_mb": 3072,
           "baseline_rows_per_side": base_rows, "engine_seconds_at_baseline_size": same["seconds"],
           "datacompy_seconds": base["seconds"], "speedup": round(base["seconds"] / same["seconds"], 1),
           "target_speedup": 10}
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
