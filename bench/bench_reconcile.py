"""Reconciliation benchmark: the product engine (ledger_pipelines.reconcile.reconcile, what the daily
assets and `ledger-pipelines reconcile` run) against two floors measured in the same run on the same
two sides:

  engine     reconcile(left, right, rules) on N x N entries: keyed pairs (exact, tolerant within 0.05,
             amount mismatches, timing), entries missing on either side, duplicates, FX legs (EUR left,
             USDC right at 1.0842), one-to-many batches, 1% unkeyed leftovers matched by amount and time;
  bare_join  a DuckDB full outer join of the same two sides on the key (Arrow tables of the same
             fields), counting matched and unmatched rows: the floor of any set-based engine;
  datacompy  datacompy (pandas) comparing the two sides on the key, amounts as int64 cents;
  cli        `ledger-pipelines reconcile` end to end on JSON Lines files of N x N and 4N x 4N entries
             (reading, validation, reconciliation and writing the four files).

Each phase runs in its own process; the figure is wall time (input built first, outside the timing)
and the peak RSS of the process. The machine may be shared: repeat and read the spread.

    .venv/bin/python bench/bench_reconcile.py [--rows 1000000] [--cli-rows 1000000] [--skip-cli]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

RULES = {"time_window": "1d", "amount_tolerance": {"absolute": "0.05"},
         "fx": [{"from": "EUR", "to": "USDC", "rate": "1.0842"}]}


def lines(n: int, side: str):
    """JSON lines of one side. Entry i: keyed (C<i>) except the last 1% (no key, leftovers); every
    10th keyed one is FX (USDC on the right), every 200th a batch on the left of two right legs, and
    ~1% each of missing, amount mismatch, tolerant, timing and duplicate."""
    import hashlib

    ledger, kind, direction = ("core_banking", "sql", "debit") if side == "L" else ("eth_usdc", "evm", "credit")
    keyed = n - n // 100
    for i in range(n):
        h = int.from_bytes(hashlib.blake2b(i.to_bytes(8, "little"), digest_size=4).digest(), "little")
        cents = 100 + h % 10**7
        roll = h % 100
        minute = (h >> 8) % 1300
        key = f"C{i}" if i < keyed else None
        asset, amount = "EUR", f"{cents // 100}.{cents % 100:02d}"
        extra = []
        if i < keyed and side == "L" and roll == 1:
            continue  # missing on the left
        if i < keyed and side == "R" and roll == 2:
            continue  # missing on the right
        if side == "R" and i < keyed:
            if i % 10 == 0:
                units = cents * 10842  # the EUR amount x 1.0842, exactly, in millionths
                asset, amount = "USDC", f"{units // 10**6}.{units % 10**6:06d}"
            elif roll == 3:
                amount = f"{(cents + 3) // 100}.{(cents + 3) % 100:02d}"  # tolerant
            elif roll == 4:
                amount = f"{(cents + 700) // 100}.{(cents + 700) % 100:02d}"  # mismatch
            if roll == 5:
                minute += 3 * 1440  # timing
            else:
                minute += 10
        attrs = {}
        if i < keyed and i % 200 == 7 and i % 10 != 0:
            if side == "L":
                attrs = {"details": [{"refs": {"EndToEndId": f"C{i}.1"}}, {"refs": {"EndToEndId": f"C{i}.2"}}]}
            else:  # the two members of the left batch, each half of it
                half = cents // 2
                for j, part in ((1, half), (2, cents - half)):
                    extra.append((f"{i}.{j}", f"C{i}.{j}", "EUR", f"{part // 100}.{part % 100:02d}"))
        day, mm = divmod(minute, 1440)
        ts = f"2026-11-{24 + day:02d}T{mm // 60:02d}:{mm % 60:02d}:00Z"
        rows = [(str(i), key, asset, amount)] if not (extra and side == "R") else extra
        if i < keyed and roll == 6 and side == "L":
            rows.append((f"{i}d", key, asset, amount))  # duplicate on the left
        for ref, k, a, amt in rows:
            yield json.dumps({"schema_version": 1, "entry_id": f"{ledger}:{ref}", "ledger": ledger, "ledger_kind": kind,
                              "source_ref": ref, "correlation_id": k, "account": "A1", "counterparty": None,
                              "asset": a, "amount": amt, "direction": direction, "booked_at": ts, "value_date": None,
                              "status": "booked" if side == "L" else "final", "position": {}, "attributes": attrs},
                             separators=(",", ":"))


def write_files(folder: Path, n: int) -> tuple[Path, Path]:
    paths = folder / f"l{n}.jsonl", folder / f"r{n}.jsonl"
    for path, side in zip(paths, "LR"):
        if not path.exists():
            with open(path, "w") as f:
                for line in lines(n, side):
                    f.write(line + "\n")
    return paths


class Peak:
    def __init__(self, pid: int | None = None):
        import psutil

        self.proc, self.peak, self.stop = psutil.Process(pid), 0, False
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.stop:
            try:
                self.peak = max(self.peak, self.proc.memory_info().rss)
            except Exception:
                return
            time.sleep(0.02)

    def done(self) -> int:
        self.stop = True
        self.thread.join()
        return self.peak


def _sides(folder: Path, n: int):
    from ledger_pipelines.reconcile import read_entries

    lp, rp = write_files(folder, n)
    return read_entries(lp, "left"), read_entries(rp, "right")


def _arrow(entries):
    import pyarrow as pa

    return pa.table({c: pa.array([getattr(e, c) for e in entries], pa.string())
                     for c in ("entry_id", "correlation_id", "asset", "amount", "direction", "booked_at")})


def phase_engine(folder: Path, n: int) -> dict:
    from ledger_pipelines.reconcile import Rules, reconcile

    left, right = _sides(folder, n)
    rules = Rules.from_dict(RULES)
    peak = Peak()
    t0 = time.perf_counter()
    r = reconcile(left, right, rules)
    secs = time.perf_counter() - t0
    placed = sum(len(x["left_entry_ids"]) + len(x["right_entry_ids"]) for x in r.matches + r.breaks)
    assert placed == len(left) + len(right)
    return {"phase": "engine", "left": len(left), "right": len(right), "seconds": round(secs, 2),
            "peak_rss_mb": peak.done() // 2**20, "counts": r.counts()}


def phase_bare_join(folder: Path, n: int) -> dict:
    import duckdb

    left, right = _sides(folder, n)
    lt, rt = _arrow(left), _arrow(right)
    del left, right
    con = duckdb.connect()
    con.register("lt", lt)
    con.register("rt", rt)
    peak = Peak()
    t0 = time.perf_counter()
    got = con.execute("""SELECT count(l.entry_id) FILTER (WHERE r.entry_id IS NOT NULL),
                                count(*) FILTER (WHERE l.entry_id IS NULL OR r.entry_id IS NULL)
                         FROM lt l FULL OUTER JOIN rt r ON l.correlation_id = r.correlation_id""").fetchone()
    secs = time.perf_counter() - t0
    return {"phase": "bare_join", "seconds": round(secs, 2), "peak_rss_mb": peak.done() // 2**20,
            "joined": got[0], "unmatched": got[1]}


def phase_datacompy(folder: Path, n: int) -> dict:
    import datacompy

    left, right = _sides(folder, n)
    frames = []
    for es in (left, right):
        df = _arrow(es).to_pandas()
        df["amount_cents"] = [int(e.amount.replace(".", "")[:18]) for e in es]  # the bench's amounts: 2 or 6 decimals
        frames.append(df.drop(columns=["amount"]))
    del left, right
    peak = Peak()
    t0 = time.perf_counter()
    cmp = datacompy.PandasCompare(frames[0], frames[1], join_columns=["correlation_id"], abs_tol=5,
                                  df1_name="left", df2_name="right")
    report = cmp.report()
    secs = time.perf_counter() - t0
    return {"phase": "datacompy", "seconds": round(secs, 2), "peak_rss_mb": peak.done() // 2**20,
            "report_chars": len(report)}


def phase_cli(folder: Path, n: int) -> dict:
    lp, rp = write_files(folder, n)
    (folder / "rules.yaml").write_text(json.dumps(RULES))
    out = folder / f"out{n}"
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "ledger_pipelines.cli", "reconcile", "--left", str(lp),
                             "--right", str(rp), "--rules", str(folder / "rules.yaml"), "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    peak = Peak(proc.pid)
    stdout, stderr = proc.communicate()
    secs = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(stderr[-2000:])
    return {"phase": "cli", "rows_per_side": n, "input_mb": (lp.stat().st_size + rp.stat().st_size) // 2**20,
            "seconds": round(secs, 2), "peak_rss_mb": peak.done() // 2**20,
            "summary": json.loads(stdout.strip().splitlines()[-1])["match_type"]}


PHASES = {"engine": phase_engine, "bare_join": phase_bare_join, "datacompy": phase_datacompy, "cli": phase_cli}


def run_phase(name: str, folder: Path, n: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--phase", name, "--rows", str(n), "--folder", str(folder)],
                         capture_output=True, text=True, timeout=7200)
    if out.returncode != 0:
        raise SystemExit(f"phase {name} failed:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    print(json.dumps(result), flush=True)
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--cli-rows", type=int, default=1_000_000)
    ap.add_argument("--skip-cli", action="store_true")
    ap.add_argument("--phase", choices=sorted(PHASES))
    ap.add_argument("--folder")
    args = ap.parse_args()
    if args.phase:
        print(json.dumps(PHASES[args.phase](Path(args.folder), args.rows)))
        return 0
    with tempfile.TemporaryDirectory(prefix="bench-reconcile-", dir=os.environ.get("BENCH_TMP")) as tmp:
        folder = Path(tmp)
        engine = run_phase("engine", folder, args.rows)
        bare = run_phase("bare_join", folder, args.rows)
        base = run_phase("datacompy", folder, args.rows)
        out = {"rows_per_side": args.rows, "engine_seconds": engine["seconds"], "bare_join_seconds": bare["seconds"],
               "engine_over_bare_join": round(engine["seconds"] / max(bare["seconds"], 1e-3), 1),
               "target_engine_over_bare_join": 3, "datacompy_seconds": base["seconds"],
               "speedup_over_datacompy": round(base["seconds"] / engine["seconds"], 1), "target_speedup": 20}
        if not args.skip_cli:
            # the scaling check ends at the target size: a quarter of --cli-rows, then --cli-rows
            quarter = run_phase("cli", folder, max(1, args.cli_rows // 4))
            full = run_phase("cli", folder, args.cli_rows)
            out.update(cli_seconds=full["seconds"], cli_target_seconds=30, cli_quarter_seconds=quarter["seconds"],
                       cli_4x_ratio=round(full["seconds"] / quarter["seconds"], 2), cli_4x_target_ratio=5)
        print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
