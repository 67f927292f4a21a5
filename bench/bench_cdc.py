"""CDC benchmark: a PostgreSQL journal through Debezium on Kafka Connect, next to the polling SQL connector on
the same database, in one run (the local stack: Kafka, PostgreSQL with logical decoding, Connect).

Both ledgers are published by the product's long-running publisher (``ledger-pipelines publish LEDGER
--follow --interval 0.05``, one process each) and ingested by a loop of the event-log ingest
(``EventLogIngestor.run``, what the ``ledger_event_log`` asset runs) into a SQLite warehouse.

  (1) latency: one balanced transaction (2 lines) committed at a time; the time from its COMMIT to both of
      its entries in the event log (polled every 10 ms); p50 / p95 / max per ledger.
  (2) throughput: --rows journal lines committed in transactions of 1,000 lines; rows per second from the
      first commit until the last entry is in the event log.

  (3) the Dagster path (--sensor-samples, default 3): the publishers and the ingest loop stopped, ``dagster
      dev`` on the same warehouse; a transaction's COMMIT until its entries are in the event log, through
      ``cdc_changes_sensor`` (the polling ledger: ``sql_rows_sensor``) -> a ``publish_job`` run ->
      ``kafka_offsets_sensor`` -> an event-log run.

    .venv/bin/python bench/bench_cdc.py [--samples 40] [--rows 100000] [--sensor-samples 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import psycopg
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ledger_pipelines.connectors.sql.journal import SqlLedger  # noqa: E402
from ledger_pipelines.connectors.sql.mapping import ColumnMapping  # noqa: E402
from ledger_pipelines.ingest import EventLogIngestor  # noqa: E402
from ledger_pipelines.local.stack import StackConfig, services  # noqa: E402
from ledger_pipelines.settings import KafkaSettings  # noqa: E402
from ledger_pipelines.warehouse import Warehouse  # noqa: E402

TABLES = {"cdc_bench": "journal_lines", "polled_bench": "polled_lines"}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=40)
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--sensor-samples", type=int, default=3)
    args = ap.parse_args()
    cfg = StackConfig.from_env()
    for svc in services(cfg, ["kafka", "postgres", "connect"]):
        svc.start()
    db = f"bench_cdc_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(**cfg.pg_admin_params()) as conn:
        conn.execute(f'CREATE DATABASE "{db}"')
    url = cfg.pg_url().rsplit("/", 1)[0] + f"/{db}"
    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    for ledger, table in TABLES.items():
        SqlLedger(url, ColumnMapping(table=table), ledger).create_journal()
    tmp = Path(tempfile.mkdtemp(prefix="bench_cdc_"))
    config = tmp / "ledgers.yaml"
    config.write_text(yaml.safe_dump({"ledgers": [
        {"name": "cdc_bench", "kind": "cdc", "source": "debezium-postgres", "connection_env": "LEDGER_BENCH_PG_URL",
         "mapping": {}},
        {"name": "polled_bench", "kind": "sql", "connection_env": "LEDGER_BENCH_PG_URL",
         "mapping": {"table": "polled_lines"}}]}))
    prefix = f"bench{uuid.uuid4().hex[:6]}."
    env = {**os.environ, "LEDGER_CONFIG": str(config), "LEDGER_BENCH_PG_URL": url,
           "LEDGER_WAREHOUSE_URL": f"sqlite:///{tmp / 'w.db'}", "LEDGER_KAFKA_BOOTSTRAP": cfg.kafka_bootstrap,
           "LEDGER_TOPIC_PREFIX": prefix, "LEDGER_CONNECT_URL": cfg.connect_url}
    os.environ.update({k: env[k] for k in ("LEDGER_BENCH_PG_URL", "LEDGER_CONNECT_URL")})
    kafka = KafkaSettings(bootstrap_servers=cfg.kafka_bootstrap, topic_prefix=prefix)
    wh = Warehouse(env["LEDGER_WAREHOUSE_URL"])
    wh.create_schema()
    publishers = [subprocess.Popen([sys.executable, "-m", "ledger_pipelines.cli", "publish", ledger, "--follow",
                                    "--interval", "0.05"], env=env, stdout=subprocess.DEVNULL,
                                   stderr=open(tmp / f"{ledger}.log", "wb"))
                  for ledger in TABLES]
    stop = threading.Event()

    def ingest() -> None:
        ing = EventLogIngestor(kafka, Warehouse(env["LEDGER_WAREHOUSE_URL"]))
        while not stop.is_set():
            try:
                ing.run()
            except Exception as exc:  # a topic not created yet
                print(f"# ingest: {type(exc).__name__}: {str(exc)[:120]}", file=sys.stderr)
            time.sleep(0.01)

    threading.Thread(target=ingest, daemon=True).start()
    out = {"machine": f"{os.cpu_count()} cores", "samples": args.samples, "rows": args.rows}
    try:
        def count(ledger: str) -> int:
            return wh.scalar(f"SELECT count(*) FROM ledger_event_log WHERE ledger = '{ledger}'")

        def wait(ledger: str, n: int, timeout: float) -> float:
            deadline = time.monotonic() + timeout
            while count(ledger) < n:
                if time.monotonic() > deadline:
                    raise SystemExit(f"{ledger}: {count(ledger)} of {n} entries after {timeout}s; "
                                     f"see {tmp / (ledger + '.log')}")
                time.sleep(0.01)
            return time.monotonic()

        def post(conn, table: str, first: int, lines: int) -> None:
            with conn.transaction():
                conn.cursor().executemany(
                    f"INSERT INTO {table} (txn_id, posted_at, account, currency, amount, side, payment_ref) "
                    "VALUES (%s, now(), %s, 'EUR', '125.50', %s, %s)",
                    [(f"T{(first + i) // 2}", "GL-D" if i % 2 == 0 else "GL-C", "D" if i % 2 == 0 else "C",
                      f"E2E-{(first + i) // 2}") for i in range(lines)])

        with psycopg.connect(dsn) as conn:
            # warm-up: the connector registered (the first publish pass) and one transaction through
            for ledger, table in TABLES.items():
                post(conn, table, 0, 2)
                wait(ledger, 2, 120)
            for ledger, table in TABLES.items():
                lat = []
                for i in range(args.samples):
                    have = count(ledger)
                    post(conn, table, 2 + 2 * i, 2)
                    t0 = time.monotonic()
                    lat.append(wait(ledger, have + 2, 60) - t0)
                    time.sleep(0.05)
                lat.sort()
                out[f"{ledger}_latency_ms"] = {"p50": round(statistics.median(lat) * 1000),
                                               "p95": round(lat[int(0.95 * (len(lat) - 1))] * 1000),
                                               "max": round(lat[-1] * 1000)}
                print(json.dumps({ledger: out[f"{ledger}_latency_ms"]}), flush=True)
            for ledger, table in TABLES.items():
                have = count(ledger)
                t0 = time.monotonic()
                for start in range(0, args.rows, 1000):
                    post(conn, table, 10_000_000 + start, min(1000, args.rows - start))
                committed = time.monotonic() - t0
                done = wait(ledger, have + args.rows, 900)
                out[f"{ledger}_throughput"] = {"rows_per_s": round(args.rows / (done - t0)),
                                               "commit_s": round(committed, 2), "seconds": round(done - t0, 2)}
                print(json.dumps({ledger: out[f"{ledger}_throughput"]}), flush=True)
            if args.sensor_samples:
                stop.set()
                for p in publishers:
                    p.terminate()
                    p.wait(30)
                time.sleep(1)
                out["sensor_path_s"] = sensor_path(env, tmp, conn, post, count, wait, args.sensor_samples)
                print(json.dumps({"sensor_path_s": out["sensor_path_s"]}), flush=True)
    finally:
        stop.set()
        for p in publishers:
            p.terminate()
            p.wait(30)
        from ledger_pipelines.connectors.cdc import connect

        connect.remove(connect.connector_name("cdc_bench"))
        wh.dispose()
        with psycopg.connect(**cfg.pg_admin_params()) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
    print(json.dumps(out))
    return 0


def sensor_path(env, tmp: Path, conn, post, count, wait, samples: int) -> dict:
    """COMMIT -> event log through the Dagster sensors and runs (``dagster dev``, the demo's instance
    configuration), ``samples`` times."""
    import socket
    import urllib.request

    from ledger_pipelines.local.demo import DAGSTER_YAML, set_pool_limits, stop_group

    home = tmp / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(DAGSTER_YAML)
    set_pool_limits(home)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([str(Path(sys.executable).parent / "dagster"), "dev", "-w", "workspace.yaml", "-h",
                             "127.0.0.1", "-p", str(port)], cwd=REPO, env={**env, "DAGSTER_HOME": str(home)},
                            stdout=open(tmp / "dagster.log", "wb"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit(f"dagster dev did not answer; see {tmp / 'dagster.log'}")
                time.sleep(1)
        out = {}
        for ledger, table in TABLES.items():  # the polling SQL connector through sql_rows_sensor: the baseline
            lat = []
            for i in range(samples):
                have = count(ledger)
                post(conn, table, 20_000_000 + 2 * i, 2)
                t0 = time.monotonic()
                lat.append(wait(ledger, have + 2, 300) - t0)
            out[ledger] = {"samples": [round(x, 1) for x in lat], "median": round(statistics.median(lat), 1)}
        return out
    finally:
        stop_group(proc, timeout=5)


if __name__ == "__main__":
    sys.exit(main())
