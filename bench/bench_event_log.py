"""Event-log ingest benchmark (issue: foundation).

Produces N canonical entries to a 4-partition topic on the local broker, then measures in the
same run:
  (a) baseline: raw confluent-kafka batch consume + decode into canonical entries (msgspec, typed;
      the untyped JSON decode rate is printed too), no database;
  (b) ledger_event_log ingest into a fresh SQLite file;
  (c) ledger_event_log ingest into a fresh PostgreSQL database;
  (d) the same entries published again, ingested into a log that holds them (all duplicates: every
      stored version found by the writer's lookup), per database; each log is filled by an untimed
      ingest in a process of its own first;
  (e) for comparison, per database: the ingest with processes=1 (the run's own process reads every
      partition) into a fresh log.
(b)-(d) run the ingest as the ledger_event_log asset and `ledger-pipelines ingest` do, with
DEFAULT_PROCESSES worker processes sharing the partitions.
Each phase runs --repeat times in a fresh process; the median is reported with the range. Prints
every figure, the ratios to the baseline, and the peak RSS of each phase (process tree).
Every run starts after os.sync(): one run's dirty pages are not written back on the next run's time.

    .venv/bin/python bench/bench_event_log.py [--count 1000000] [--repeat 3] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import subprocess
import time
import uuid
from datetime import datetime, timezone

import msgspec
import psutil
import psycopg
from confluent_kafka import TopicPartition

from ledger_pipelines.generate import synthetic_entries
from ledger_pipelines.ingest import DEFAULT_PROCESSES, EventLogIngestor, IngestOptions, _consumer
from ledger_pipelines.kafka import EntryProducer, end_offsets, ensure_topics
from ledger_pipelines.model import decode_entry, encode_entry
from ledger_pipelines.settings import KafkaSettings
from ledger_pipelines.local.stack import Kafka, Postgres, StackConfig
from ledger_pipelines.warehouse import Warehouse


PHASE_ENV = "LEDGER_BENCH_PHASE_SPEC"


def tree_peak_rss(proc: subprocess.Popen) -> int:
    """Peak RSS of a process and its children, sampled every 100 ms until it exits (a
    sample walks /proc: at 20 ms the sampler took a few per cent of this 2-core machine from the run)."""
    peak = 0
    root = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            total = root.memory_info().rss + sum(c.memory_info().rss for c in root.children(recursive=True))
        except psutil.Error:
            total = 0
        peak = max(peak, total)
        time.sleep(0.1)
    return peak


def phase_baseline(kafka: KafkaSettings, ends: dict) -> dict:
    """Raw batch consume with the ingest's own consumer settings, decoding every message (no database)."""
    out = {}
    for label, decode in (("typed", decode_entry), ("untyped", msgspec.json.decode)):
        c = _consumer(kafka, IngestOptions(consumer=f"bench-baseline-{label}"))
        c.assign([TopicPartition(t, p, 0) for t, p in ends])
        total, n, t0 = sum(ends.values()), 0, time.perf_counter()
        while n < total:
            for m in c.consume(10_000, timeout=1.0):
                if m.error() is None:
                    decode(m.value())
                    n += 1
        out[label] = n / (time.perf_counter() - t0)
        c.close()
    return {"per_second": out["typed"], "untyped_per_second": out["untyped"]}


def phase_ingest(kafka: KafkaSettings, ends: dict, url: str, count: int, republished: bool = False,
                 processes: int = DEFAULT_PROCESSES) -> dict:
    """Ingest up to ``ends``; with ``republished``, into a log that holds every entry already."""
    wh = Warehouse(url)
    result = EventLogIngestor(kafka, wh, processes=processes).run(ends)
    c = result.counts
    if republished:
        assert (c.inserted, c.duplicates) == (0, count), c
    else:
        assert c.inserted == count, c
    assert wh.event_counts()["events"] == count
    wh.dispose()
    return {"per_second": result.consumed / result.elapsed, "seconds": result.elapsed, "batches": result.batches,
            "retries": c.retries}


def _launch(name: str, kafka: KafkaSettings, ends: dict, **extra) -> subprocess.Popen:
    spec = {"phase": name, "kafka": kafka.__dict__, "ends": [[t, p, o] for (t, p), o in ends.items()], **extra}
    # the spec holds the database URL with its password: the environment, unlike argv, is not shown by ps
    return subprocess.Popen([sys.executable, __file__, "--phase"], stdout=subprocess.PIPE,
                            env={**os.environ, PHASE_ENV: json.dumps(spec)})


def run_phase(name: str, kafka: KafkaSettings, ends: dict, **extra) -> dict:
    proc = _launch(name, kafka, ends, **extra)
    peak = tree_peak_rss(proc)
    out, _ = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"phase {name} failed")
    return {**json.loads(out.decode().strip().splitlines()[-1]), "peak_rss_mb": peak / 2**20}


def median_of(runs: list[dict]) -> dict:
    """The run with the median rate, with the range of rates and the highest peak RSS of all runs."""
    ordered = sorted(runs, key=lambda r: r["per_second"])
    mid = dict(ordered[len(ordered) // 2])
    mid.update(min=ordered[0]["per_second"], max=ordered[-1]["per_second"], runs=len(runs),
               peak_rss_mb=max(r["peak_rss_mb"] for r in runs))
    return mid


def child() -> int:
    spec = json.loads(os.environ.pop(PHASE_ENV))
    kafka = KafkaSettings(**spec["kafka"])
    ends = {(t, p): o for t, p, o in spec["ends"]}
    if spec["phase"] == "baseline":
        out = phase_baseline(kafka, ends)
    else:
        out = phase_ingest(kafka, ends, spec["url"], spec["count"], spec.get("republished", False),
                           spec.get("processes", DEFAULT_PROCESSES))
    print(json.dumps(out))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3, help="runs of each phase; the median is reported")
    ap.add_argument("--json", help="write the figures to this file too")
    ap.add_argument("--phase", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.phase:
        return child()

    cfg = StackConfig.from_env()
    Kafka(cfg).start()
    Postgres(cfg).start()
    kafka = KafkaSettings(bootstrap_servers=cfg.kafka_bootstrap, topic_prefix=f"bench{uuid.uuid4().hex[:8]}.",
                          partitions=4)
    ensure_topics(kafka, ["core_banking"])
    # one booking day for both publications: phase (d) re-publishes byte-identical entries even when
    # the bench runs across midnight UTC
    day = datetime.now(timezone.utc).date()
    sample = list(synthetic_entries("core_banking", min(10_000, args.count), day=day, compact=True))
    size = sum(len(encode_entry(e)) for e in sample) / len(sample)
    t0 = time.perf_counter()
    EntryProducer(kafka, "bench").publish(synthetic_entries("core_banking", args.count, day=day, compact=True))
    produce_s = time.perf_counter() - t0
    ends = end_offsets(kafka)
    print(f"produced {args.count:,} entries (mean {size:.0f} bytes) to 4 partitions in {produce_s:.2f}s "
          f"({args.count / produce_s:,.0f}/s)")

    figures = {"count": args.count, "mean_entry_bytes": round(size)}
    os.sync()  # the produced topic is on disk before anything is timed
    base = figures["baseline"] = median_of([run_phase("baseline", kafka, ends) for _ in range(args.repeat)])
    print(f"(a) baseline, raw batch consume + decode into canonical entries: {base['per_second']:,.0f} entries/s "
          f"[{base['min']:,.0f}..{base['max']:,.0f}] (untyped JSON decode: {base['untyped_per_second']:,.0f}/s), "
          f"peak RSS {base['peak_rss_mb']:.0f} MB")
    admin = cfg.pg_admin_params()

    def fresh_url(label: str, tmp: str, i: int, conn) -> str:
        if label == "sqlite":
            return f"sqlite:///{os.path.join(tmp, f'bench{i}.db')}"
        dbname = f"bench_{uuid.uuid4().hex[:8]}"
        conn.execute(f'CREATE DATABASE "{dbname}"')
        conn.execute("CHECKPOINT")  # start from a clean buffer pool, not the last run's debt
        return cfg.pg_url().rsplit("/", 1)[0] + f"/{dbname}"

    def drop(label: str, url: str, conn) -> None:
        if label == "postgresql":
            conn.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')
        else:
            path = url.removeprefix("sqlite:///")
            for suffix in ("", "-wal", "-shm"):
                if os.path.exists(path + suffix):
                    os.remove(path + suffix)

    labels = ("sqlite", "postgresql")
    with tempfile.TemporaryDirectory() as tmp, psycopg.connect(**admin) as conn:
        for step, label in zip("bc", labels):
            runs = []
            for i in range(args.repeat):
                url = fresh_url(label, tmp, i, conn)
                # each run starts with the page cache written back: the previous run's (or phase's) dirty
                # pages must not be flushed on this run's time
                os.sync()
                try:
                    runs.append(run_phase("ingest", kafka, ends, url=url, count=args.count))
                finally:
                    drop(label, url, conn)
            fig = figures[label] = median_of(runs)
            fig["ratio_to_baseline"] = fig["per_second"] / base["per_second"]
            print(f"({step}) ledger_event_log ingest into {label}: {fig['per_second']:,.0f} entries/s "
                  f"[{fig['min']:,.0f}..{fig['max']:,.0f}] ({fig['seconds']:.2f}s, {fig['batches']} batches, "
                  f"{fig['retries']} writes retried), {fig['ratio_to_baseline']:.2f}x baseline, peak RSS "
                  f"{fig['peak_rss_mb']:.0f} MB")

        EntryProducer(kafka, "bench").publish(synthetic_entries("core_banking", args.count, day=day, compact=True))
        again = end_offsets(kafka)
        for label in labels:
            runs = []
            for i in range(args.repeat):
                url = fresh_url(label, tmp, 100 + i, conn)
                try:
                    # the log holds the first publication (untimed, in a process of its own: the timed
                    # run's peak RSS is its own)
                    run_phase("ingest", kafka, ends, url=url, count=args.count)
                    os.sync()
                    runs.append(run_phase("ingest", kafka, again, url=url, count=args.count,
                                          republished=True))
                finally:
                    drop(label, url, conn)
            rep = figures[f"{label}_republished"] = median_of(runs)
            rep["ratio_to_baseline"] = rep["per_second"] / base["per_second"]
            print(f"(d) the same {args.count:,} entries published again, into the {label} log that holds them "
                  f"(all duplicates): {rep['per_second']:,.0f} entries/s [{rep['min']:,.0f}..{rep['max']:,.0f}] "
                  f"({rep['seconds']:.2f}s), {rep['ratio_to_baseline']:.2f}x baseline, peak RSS "
                  f"{rep['peak_rss_mb']:.0f} MB; {rep['retries']} writes retried")

        for label in labels:
            runs = []
            for i in range(args.repeat):
                url = fresh_url(label, tmp, 200 + i, conn)
                os.sync()
                try:
                    runs.append(run_phase("ingest", kafka, ends, url=url, count=args.count, processes=1))
                finally:
                    drop(label, url, conn)
            fig = figures[f"{label}_one_process"] = median_of(runs)
            fig["ratio_to_baseline"] = fig["per_second"] / base["per_second"]
            print(f"(e) for comparison, the ingest with processes=1 into {label}: {fig['per_second']:,.0f} entries/s "
                  f"[{fig['min']:,.0f}..{fig['max']:,.0f}] ({fig['seconds']:.2f}s, {fig['retries']} writes retried), "
                  f"{fig['ratio_to_baseline']:.2f}x baseline; {DEFAULT_PROCESSES} processes (b, c) are "
                  f"{figures[label]['per_second'] / fig['per_second']:.2f}x it; peak RSS {fig['peak_rss_mb']:.0f} MB")

    ratio = min(figures[k]["ratio_to_baseline"] for k in ("sqlite", "postgresql"))
    targets_ok = {  # the ingest as it runs: speed (b, c), peak RSS (b, c, d)
        "ingest >= 0.5x baseline": ratio >= 0.5,
        "postgresql >= 150k/s": figures["postgresql"]["per_second"] >= 150_000,
        "sqlite >= 100k/s": figures["sqlite"]["per_second"] >= 100_000,
        "peak RSS <= 1 GB": max(figures[k]["peak_rss_mb"] for k in ("sqlite", "postgresql", "sqlite_republished",
                                                                    "postgresql_republished")) <= 1024,
    }
    figures["targets"] = targets_ok
    for name, ok in targets_ok.items():
        print(f"  target {name}: {'met' if ok else 'MISSED'}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
