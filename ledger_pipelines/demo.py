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


def _next_synthetic_id(kafka, ledger: str) -> int:
    """Continue numbering after what the topic already holds, so a re-run adds rather than repeats."""
    from .kafka.topics import end_offsets, entries_topic

    topic = entries_topic(kafka, ledger)
    return sum(o for (t, _), o in end_offsets(kafka).items() if t == topic)


def run_demo(args) -> int:
    from .generate import synthetic_entries
    from .kafka import EntryProducer, ensure_topics
    from .settings import KafkaSettings

    cfg = StackConfig.from_env()
    print("starting the local stack (Kafka) ...", flush=True)
    for svc in services(cfg, ["kafka"]):
        svc.start()
        print(f"  {svc.name}: {svc.status()}", flush=True)
    kafka = KafkaSettings.from_env()
    ledger = "core_banking"
    ensure_topics(kafka, [ledger])
    ui = None
    if not args.no_ui:
        log_path = cfg.root / "logs" / "dagster.log"
        ui = start_dagster_ui(cfg, args.port, log_path)
        print(f"Dagster UI: http://{cfg.host}:{args.port}  (log: {log_path})", flush=True)
        print("  Assets -> ledger_event_log; Automation -> kafka_offsets_sensor (runs every 30 s)", flush=True)
    producer = EntryProducer(kafka, "demo")
    next_id = _next_synthetic_id(kafka, ledger)
    print(f"publishing about {args.rate:g} generated entries/s to {kafka.topic_prefix}{ledger}.entries "
          f"(Ctrl-C to stop)", flush=True)
    stop = {"flag": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(flag=True))
    t0 = time.monotonic()
    published = 0
    try:
        while not stop["flag"] and (not args.duration or time.monotonic() - t0 < args.duration):
            n = max(1, int(args.rate))
            producer.publish(synthetic_entries(ledger, n, start=next_id))
            next_id += n
            published += n
            if published % max(1, n * 10) == 0:
                print(f"  published {published:,} entries", flush=True)
            time.sleep(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        if ui is not None:
            os.killpg(ui.pid, signal.SIGTERM)
            try:
                ui.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(ui.pid, signal.SIGKILL)
    print(f"published {published:,} entries; the stack keeps running (`ledger-pipelines stack stop` ends it)")
    return 0
