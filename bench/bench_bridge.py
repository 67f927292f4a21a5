"""Cross-ledger trigger benchmark (issue: triggers). On the local stack (Kafka + anvil), in one run:

  (1) latency: a journal transaction inserted into the SQL ledger -> published to Kafka by
      ``ledger-pipelines publish --follow`` -> acted on by the long-running ``ledger-pipelines bridge``
      -> ``PaymentRecorded`` on chain (LedgerBridge on anvil). One transaction every --gap seconds; the
      latency of each is the time from its commit to the moment its event is visible through eth_getLogs
      (polled every 20 ms). Target: p95 <= 2 s.
  (2) throughput: --burst transactions committed at once; actions per second until the last is on chain.
  (3) baseline, same run: the same number of LedgerBridge.record calls sent directly with web3
      (send, wait for the receipt, next), no Kafka, no checks, no action log.

    .venv/bin/python bench/bench_bridge.py [--latency-samples 200] [--gap 0.1] [--burst 2000] [--interval 0.1]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import yaml
from sqlalchemy import create_engine, text

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ledger_pipelines.chain import Signer  # noqa: E402
from ledger_pipelines.connectors.sql.mapping import ColumnMapping  # noqa: E402
from ledger_pipelines.connectors.sql.journal import SqlLedger  # noqa: E402
from ledger_pipelines.kafka import ensure_topics  # noqa: E402
from ledger_pipelines.settings import KafkaSettings  # noqa: E402
from ledger_pipelines.local.stack import StackConfig, services  # noqa: E402


def insert(engine, refs: list[str]) -> float:
    rows = []
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    for ref in refs:
        for side, acct in (("D", "GL-1100-CUSTOMERS"), ("C", "GL-2100-SETTLEMENT")):
            rows.append({"t": ref, "p": now, "a": acct, "c": "EUR", "m": "125.50", "s": side, "r": ref})
    with engine.begin() as c:
        c.execute(text("INSERT INTO journal_lines (txn_id, posted_at, account, currency, amount, side, payment_ref) "
                       "VALUES (:t, :p, :a, :c, :m, :s, :r)"), rows)
    return time.monotonic()


class Watcher:
    """PaymentRecorded events of one bridge contract, polled; first time each reference is seen."""

    def __init__(self, w3, bridge):
        self.w3, self.bridge, self.seen, self.next_block = w3, bridge, {}, w3.eth.block_number + 1

    def poll(self) -> None:
        head = self.w3.eth.block_number
        if head < self.next_block:
            return
        now = time.monotonic()
        for lg in self.w3.eth.get_logs({"address": self.bridge.address, "fromBlock": self.next_block,
                                        "toBlock": head}):
            ref = self.bridge.events.PaymentRecorded().process_log(lg)["args"]["paymentReference"]
            self.seen.setdefault(ref, now)
        self.next_block = head + 1

    def wait(self, refs: list[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not all(r in self.seen for r in refs):
            self.poll()
            time.sleep(0.02)
        missing = [r for r in refs if r not in self.seen]
        if missing:
            raise SystemExit(f"{len(missing)} references not on chain after {timeout:.0f}s, e.g. {missing[:3]}")


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if len(values) > 1 else values[0]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--latency-samples", type=int, default=200)
    ap.add_argument("--gap", type=float, default=0.1, help="seconds between the latency phase's transactions")
    ap.add_argument("--burst", type=int, default=2000)
    ap.add_argument("--interval", type=float, default=0.1, help="publisher poll interval (publish --follow)")
    args = ap.parse_args()

    cfg = StackConfig.from_env()
    for svc in services(cfg, ["kafka", "anvil"]):
        svc.start()
    tmp = Path(tempfile.mkdtemp(prefix="bench-bridge-"))
    source = f"sqlite:///{tmp / 'core.db'}"
    SqlLedger(source, ColumnMapping(), "core").create_journal()
    signer = Signer.from_env(cfg.anvil_url, "LEDGER_BRIDGE_KEY")
    from ledger_pipelines.chain import contract

    bridge = contract(signer, "LedgerBridge", signer.deploy("LedgerBridge"))
    (tmp / "ledgers.yaml").write_text(yaml.safe_dump({
        "ledgers": [{"name": "core", "kind": "sql", "connection_env": "BENCH_CORE_URL"}],
        "triggers": [{"name": "payments_on_chain", "source": "core",
                      "filter": {"account": "GL-1100-CUSTOMERS", "direction": "debit"},
                      "action": {"type": "bridge_record", "reference": "correlation_id"}}]}))
    prefix = f"bench{uuid.uuid4().hex[:8]}."
    env = {**os.environ, "LEDGER_CONFIG": str(tmp / "ledgers.yaml"), "BENCH_CORE_URL": source,
           "LEDGER_WAREHOUSE_URL": f"sqlite:///{tmp / 'warehouse.db'}", "LEDGER_TOPIC_PREFIX": prefix,
           "LEDGER_BRIDGE_CONTRACT": bridge.address, "LEDGER_BRIDGE_RPC_URL": cfg.anvil_url}
    ensure_topics(KafkaSettings(bootstrap_servers=cfg.kafka_bootstrap, topic_prefix=prefix, partitions=4), ["core"])
    cli = [sys.executable, "-m", "ledger_pipelines.cli"]
    logs = open(tmp / "processes.log", "wb")
    procs = [subprocess.Popen([*cli, "publish", "core", "--follow", "--interval", str(args.interval)], env=env,
                              stdout=subprocess.DEVNULL, stderr=logs),
             subprocess.Popen([*cli, "bridge", "--group", f"bench-{prefix}"], env=env, stdout=logs, stderr=logs)]
    engine = create_engine(source)
    watcher = Watcher(signer.w3, bridge)
    try:
        warm = [f"WARM-{i}" for i in range(5)]  # processes up, consumer group joined
        insert(engine, warm)
        watcher.wait(warm, 120)

        latencies = []
        for i in range(args.latency_samples):
            ref = f"LAT-{i:05d}"
            t = insert(engine, [ref])
            deadline = t + args.gap
            while time.monotonic() < deadline:
                watcher.poll()
                time.sleep(0.01)
            latencies.append((ref, t))
        watcher.wait([r for r, _ in latencies], 120)
        lat = [watcher.seen[r] - t for r, t in latencies]

        burst = [f"BURST-{i:06d}" for i in range(args.burst)]
        t0 = insert(engine, burst)
        watcher.wait(burst, 600)
        pipeline_secs = max(watcher.seen[r] for r in burst) - t0
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()

    # baseline: the same number of records sent directly, one after the other
    signer.reset_nonce()  # the bridge process sent from the same key
    t0 = time.monotonic()
    for i in range(args.burst):
        receipt = signer.wait(signer.send(bridge.functions.record(f"BASE-{i:06d}", "EUR", 12550, 2, f"core:{i}"),
                                          gas=300_000))
        assert receipt["status"] == 1
    baseline_secs = time.monotonic() - t0
    out = {
        "latency_samples": len(lat), "gap_s": args.gap, "publisher_interval_s": args.interval,
        "latency_p50_s": round(pct(lat, 50), 3), "latency_p95_s": round(pct(lat, 95), 3),
        "latency_max_s": round(max(lat), 3), "target_p95_s": 2.0,
        "burst": args.burst, "pipeline_actions_per_s": round(args.burst / pipeline_secs, 1),
        "baseline_direct_records_per_s": round(args.burst / baseline_secs, 1),
    }
    print(json.dumps(out, indent=2))
    return 0 if out["latency_p95_s"] <= 2.0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
