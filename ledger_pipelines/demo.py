"""``ledger-pipelines demo``: the local stack, the Dagster UI and a generated stream of entries.

Re-running is safe: the stack is reused when it runs, topics are created only when missing, and
the generated entries continue from the highest id already published.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from .stack import REPO_ROOT, StackConfig, services

DAGSTER_YAML = """\
# Dagster instance of the local stack (written by ledger-pipelines; edit freely).
# Production: PostgreSQL run/event storage with dagster-postgres, e.g.
#   storage:
#     postgres:
#       postgres_url:
#         env: DAGSTER_PG_URL
concurrency:
  pools:
    # ledger_event_log runs in pool ledger_event_log_ingest: one ingest at a time
    default_limit: 1
  runs:
    max_concurrent_runs: 4
telemetry:
  enabled: false
"""


def prepare_dagster_home(cfg: StackConfig) -> Path:
    home = Path(os.environ.get("DAGSTER_HOME") or cfg.root / "dagster_home")
    home.mkdir(parents=True, exist_ok=True)
    conf = home / "dagster.yaml"
    if not conf.exists():
        conf.write_text(DAGSTER_YAML)
    return home


def start_dagster_ui(cfg: StackConfig, port: int, log_path: Path) -> subprocess.Popen:
    env = {**os.environ, "DAGSTER_HOME": str(prepare_dagster_home(cfg))}
    dagster = Path(sys.executable).parent / "dagster"
    log = open(log_path, "ab")
    return subprocess.Popen(
        [str(dagster), "dev", "-w", str(REPO_ROOT / "workspace.yaml"), "-h", cfg.host, "-p", str(port)],
        cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )


def _post_journal(ledger, rng, n: int, now) -> int:
    """Post ``n`` balanced two-line transactions to the demo's SQL ledger; returns lines written."""
    from sqlalchemy import text

    rows = []
    for _ in range(n):
        txn = f"T{now:%Y%m%d%H%M%S}-{rng.randrange(10**9):09d}"
        cents = rng.randrange(100, 5_000_000)
        amount = f"{cents // 100}.{cents % 100:02d}"
        ccy = rng.choice(("EUR", "USD", "CHF"))
        ref = f"E2E-{txn}"
        for side, acct, cp in (("D", "GL-1100-CUSTOMER", "GL-2100-NOSTRO"), ("C", "GL-2100-NOSTRO", "GL-1100-CUSTOMER")):
            rows.append({"t": txn, "p": now.strftime("%Y-%m-%dT%H:%M:%SZ"), "a": acct, "cp": cp, "c": ccy,
                         "m": amount, "s": side, "r": ref})
    with ledger.engine.begin() as c:
        c.execute(text("INSERT INTO journal_lines (txn_id, posted_at, account, counterparty, currency, amount, side, "
                       "payment_ref) VALUES (:t, :p, :a, :cp, :c, :m, :s, :r)"), rows)
    return len(rows)


def run_demo(args) -> int:
    import random
    from datetime import datetime, timezone

    from .config import ledger_by_name, load_config
    from .connectors.sql import SqlLedger
    from .generate import synthetic_camt053
    from .kafka import ensure_topics
    from .publish import source_url
    from .settings import KafkaSettings

    cfg = StackConfig.from_env()
    print("starting the local stack (Kafka, anvil) ...", flush=True)
    for svc in services(cfg, ["kafka", "anvil"]):
        svc.start()
        print(f"  {svc.name}: {svc.status()}", flush=True)
    kafka = KafkaSettings.from_env()
    ledgers = load_config()
    ensure_topics(kafka, [lc.name for lc in ledgers])
    core = ledger_by_name(ledgers, "core_banking")
    journal = SqlLedger(source_url(core), core.mapping, core.name)
    journal.create_journal()
    statements = ledger_by_name(ledgers, "bank_statements")
    inbox = statements.inbox_path()
    inbox.mkdir(parents=True, exist_ok=True)
    today = datetime.now(timezone.utc).date()
    stmt = inbox / f"camt053-{today}.xml"
    if not stmt.exists():
        stmt.write_bytes(synthetic_camt053(200, day=today, seed=today.toordinal()))
    ui = None
    if not args.no_ui:
        log_path = cfg.root / "logs" / "dagster.log"
        ui = start_dagster_ui(cfg, args.port, log_path)
        print(f"Dagster UI: http://{cfg.host}:{args.port}  (log: {log_path})", flush=True)
        print("  Automation: sql_rows_sensor and statement_inbox_sensor publish to Kafka, kafka_offsets_sensor\n"
              "  fills ledger_event_log; Catalog: materialize <ledger>_snapshot partitions (or backfill a week)",
              flush=True)
    print(f"posting about {args.rate:g} journal lines/s to {core.name} ({source_url(core).split('///')[-1]}), "
          f"statement {stmt.name} waiting in {inbox} (Ctrl-C to stop)", flush=True)
    stop = {"flag": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(flag=True))
    rng = random.Random()
    t0 = time.monotonic()
    posted = 0
    try:
        while not stop["flag"] and (not args.duration or time.monotonic() - t0 < args.duration):
            posted += _post_journal(journal, rng, max(1, int(args.rate / 2)), datetime.now(timezone.utc))
            if posted % 200 < max(2, int(args.rate)):
                print(f"  posted {posted:,} journal lines", flush=True)
            time.sleep(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        journal.dispose()
        if ui is not None:
            os.killpg(ui.pid, signal.SIGTERM)
            try:
                ui.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(ui.pid, signal.SIGKILL)
    print(f"posted {posted:,} journal lines; the stack keeps running (`ledger-pipelines stack stop` ends it)")
    return 0
