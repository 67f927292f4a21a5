"""Great Expectations validation speed: the ledger_snapshot suite on N rows (target <= 2 s per 1M rows).

    .venv/bin/python bench/bench_validation.py [--rows 1000000]
"""

from __future__ import annotations

import argparse
import sys
import time

from ledger_pipelines.validation import Validator, snapshot_frame


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    args = ap.parse_args()
    rows = [{"entry_id": f"core_banking:{i}", "account": f"GL-{i % 977}", "asset": ("EUR", "USD", "CHF")[i % 3],
             "amount": f"{i % 100000}.{i % 100:02d}", "direction": "debit" if i % 2 else "credit", "status": "booked",
             "booked_at": f"2026-11-24T{(i // 3600) % 24:02d}:{(i // 60) % 60:02d}:{i % 60:02d}Z"}
            for i in range(args.rows)]
    t0 = time.perf_counter()
    v = Validator()
    setup = time.perf_counter() - t0
    frame = snapshot_frame(rows)
    v.run("ledger_snapshot", frame.head(100), {"days": ["2026-11-24"], "assets": ["EUR", "USD", "CHF"]})  # warm-up
    t0 = time.perf_counter()
    res = v.run("ledger_snapshot", frame, {"days": ["2026-11-24"], "assets": ["EUR", "USD", "CHF"]})
    secs = time.perf_counter() - t0
    assert res.success, res.failures
    per_million = secs / (args.rows / 1e6)
    print(f"ledger_snapshot suite ({res.evaluated} expectations) on {args.rows:,} rows: {secs:.2f}s "
          f"= {per_million:.2f}s per 1M rows (context setup {setup:.2f}s)  "
          f"[target <= 2 s per 1M rows: {'met' if per_million <= 2 else 'MISSED'}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
