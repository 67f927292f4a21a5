"""``ledger-pipelines demo``: a cross-border payment corridor, end to end, on the local stack.

1. starts Kafka and anvil (anvil with its genesis a week back, so the chain can replay the week);
2. creates three ledgers (sender bank SQL journal, USDC on anvil, beneficiary bank camt.053/054) and a
   week of payments with every break type and one chain reorg (``corridor.py``);
3. publishes everything through Kafka (the reorg happens after the first publication: orphaned legs);
4. runs the event log, then the week one run per day in day order (snapshots, checks, reconciliation,
   reports anchored on chain) and the cross-ledger triggers, all recorded in the Dagster instance;
5. turns on the sensors and the nightly schedule and starts the Dagster UI.

Re-running is safe: a finished demo whose chain is still there is reused as it is (only the UI starts);
when anvil lost its state (it keeps it in memory), the demo is built again from scratch under a new
topic prefix. Everything lives in ``<stack>/demo``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

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
    # ledger_event_log runs in pool ledger_event_log_ingest: one ingest at a time; reconciliation and
    # audit_report in pool ledger_day_report: one day at a time, the days of a backfill in day order
    # (a day carries the breaks left open by the days before it)
    default_limit: 1
    # a run waits in the queue (first in, first out) until its pools are free, instead of starting
    # and waiting for a slot step by step in no particular order
    granularity: run
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
    set_pool_limits(home)
    return home


def set_pool_limits(home: Path) -> None:
    """The pools' limits, set before any run: the run queue applies ``default_limit`` to a pool only from
    the iteration after the one that first saw it, so the first runs of a backfill could start together."""
    from dagster import DagsterInstance

    from ..assets.audit import DAY_REPORT_POOL
    from ..assets.event_log import EVENT_LOG_POOL

    with DagsterInstance.from_config(str(home)) as instance:
        for pool in (DAY_REPORT_POOL, EVENT_LOG_POOL):
            instance.event_log_storage.set_concurrency_slots(pool, 1)


def start_dagster_ui(cfg: StackConfig, port: int, log_path: Path) -> subprocess.Popen:
    env = {**os.environ, "DAGSTER_HOME": str(prepare_dagster_home(cfg))}
    dagster = Path(sys.executable).parent / "dagster"
    log = open(log_path, "ab")
    return subprocess.Popen(
        [str(dagster), "dev", "-w", str(REPO_ROOT / "workspace.yaml"), "-h", cfg.host, "-p", str(port)],
        cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )


class Progress:
    """Steps with elapsed time; long loops report how far they are."""

    def __init__(self, total: int):
        self.total, self.n, self.t0 = total, 0, time.monotonic()

    def step(self, what: str) -> None:
        self.n += 1
        print(f"[{self.n}/{self.total}] {what}  (+{time.monotonic() - self.t0:.0f}s)", flush=True)

    def note(self, what: str) -> None:
        print(f"      {what}", flush=True)


def stop_group(proc: subprocess.Popen, timeout: float = 20.0) -> None:
    """Stop a process started in its own session (dagster dev and its children): TERM, then KILL.

    The whole process group goes: a code server of ``dagster dev`` can outlive its parent (seen: a
    ``dagster api grpc`` that ignored TERM and stayed after the webserver had exited). ``timeout`` is
    the grace for the leader and, up to 5 s of it, for the rest of the group."""
    if not _signal_group(proc, signal.SIGTERM):
        return
    _wait_quietly(proc, timeout)
    deadline = time.monotonic() + min(5.0, timeout)
    while time.monotonic() < deadline:
        if not _signal_group(proc, 0):  # anyone of the group left?
            break
        time.sleep(0.2)
    else:
        _signal_group(proc, signal.SIGKILL)
    _wait_quietly(proc, timeout)


def _signal_group(proc: subprocess.Popen, sig: int) -> bool:
    """Send ``sig`` to the process group of ``proc``; False when no process of it is left."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        return False
    return True


def _wait_quietly(proc: subprocess.Popen, timeout: float) -> None:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass


def _selector() -> bytes:
    from web3 import Web3

    return Web3.keccak(text="transferWithMemo(address,uint256,string)")[:4]


def _calldata(selector: bytes, to: str, value: int, memo: str) -> str:
    raw = memo.encode()
    padded = raw + b"\0" * (-len(raw) % 32)
    return "0x" + (selector + bytes.fromhex(to[2:].rjust(64, "0")) + value.to_bytes(32, "big")
                   + (96).to_bytes(32, "big") + len(raw).to_bytes(32, "big") + padded).hex()


class Rpc:
    """Batched JSON-RPC to anvil (thousands of transactions in a few requests)."""

    def __init__(self, url: str):
        import requests

        self.url, self.session, self.id = url, requests.Session(), 0

    def call(self, method: str, params: list) -> Any:
        return self.batch([(method, params)])[0]

    def batch(self, calls: list[tuple[str, list]]) -> list[Any]:
        body = []
        for method, params in calls:
            self.id += 1
            body.append({"jsonrpc": "2.0", "id": self.id, "method": method, "params": params})
        out = []
        for i in range(0, len(body), 250):
            resp = self.session.post(self.url, json=body[i:i + 250], timeout=120).json()
            for r in sorted(resp, key=lambda r: r["id"]):
                if "error" in r:
                    raise RuntimeError(f"anvil: {r['error']}")
                out.append(r["result"])
        return out

    def mine_at(self, ts: int, blocks: int = 1) -> None:
        for k in range(blocks):
            self.call("evm_setNextBlockTimestamp", [ts + k])
            self.call("evm_mine", [])


def treasury_funds(week) -> int:
    """USDC base units the treasury needs for every chain leg of the week, with a margin (a transfer
    beyond the balance would revert and its leg be missing)."""
    from .corridor import chain_transfers

    return sum(int(p.chain * 10**6) for _, p in chain_transfers(week)) + 10**15


def _mine_week(rpc: Rpc, token: str, treasury: str, wallet: str, week, publish_chain, progress: Progress) -> int:
    """Every chain leg as ``transferWithMemo``, 30-minute blocks at the payments' times; the reorg."""
    from .corridor import chain_transfers

    selector = _selector()
    slots: dict[int, list] = {}
    for at, p in chain_transfers(week):
        slots.setdefault(int(at.timestamp()) // 1800, []).append(p)

    # the nonces are the demo's own: anvil picks "the pending count" for a send without one, and it answers
    # the requests of one batch concurrently, so two sends of a batch can get the same nonce
    nonce = int(rpc.call("eth_getTransactionCount", [treasury, "pending"]), 16)

    def send(p, gas: int, n: int):
        value = int(p.chain * 10**6)
        return ("eth_sendTransaction", [{"from": treasury, "to": token, "gas": hex(gas), "nonce": hex(n),
                                         "data": _calldata(selector, wallet, value, p.ref)}])

    # one block per slot: at 2,500 transfers a slot, 30M-gas blocks would be full one after the other, the
    # base fee would climb above what the waiting transactions offer, and they would never be mined
    most = max((len(pays) for pays in slots.values()), default=0)
    rpc.call("evm_setBlockGasLimit", [hex(max(30_000_000, 2 * 121_000 * most))])

    def mine_pending(ts: int) -> int:
        """Blocks at ts, ts + 1, ... until every sent transaction is mined; returns the next free timestamp."""
        while True:
            rpc.mine_at(ts)
            ts += 1
            pool = rpc.call("txpool_status", [])
            if int(pool["pending"], 16) == 0:
                if int(pool["queued"], 16):
                    raise RuntimeError(f"anvil: {int(pool['queued'], 16)} transfers left waiting behind a nonce gap")
                return ts

    sent = 0
    for n, (slot, pays) in enumerate(sorted(slots.items())):
        end = (slot + 1) * 1800
        normal = [p for p in pays if not p.orphan]
        rpc.batch([send(p, 120_000, nonce + i) for i, p in enumerate(normal)])
        nonce += len(normal)
        ts = max(mine_pending(end - 300), end - 200)
        sent += len(normal)
        for p in (p for p in pays if p.orphan):
            snap = rpc.call("evm_snapshot", [])
            rpc.batch([send(p, 120_000, nonce)])
            rpc.mine_at(ts, blocks=4)  # the leg and 3 confirmations: final
            published = publish_chain()
            progress.note(f"reorg: {p.ref} published in a block that is now being replaced ({published} entries "
                          "published so far)")
            rpc.call("evm_revert", [snap])
            rpc.batch([send(p, 121_000, nonce)])  # sent again (same nonce, the reorg undid the first): another tx
            nonce += 1
            rpc.mine_at(ts)
            sent += 1
        if n % 50 == 0:
            progress.note(f"chain: {sent:,} transfers mined up to {datetime.fromtimestamp(end, timezone.utc):%Y-%m-%d %H:%M}")
    return sent


def demo_config(demo: Path, token: str, treasury: str, days: list) -> dict:
    return {
        "partitions_start": days[0].isoformat(),
        "audit_schedule": {"hour": 2, "minute": 30},
        "ledgers": [
            {"name": "sender_bank", "kind": "sql", "connection_env": "LEDGER_SENDER_BANK_URL", "assets": ["EUR"]},
            {"name": "eth_usdc", "kind": "evm", "rpc_env": "LEDGER_EVM_RPC_URL", "confirmations": 3,
             "tokens": [{"address": token, "symbol": "USDC", "decimals": 6}], "watched_address": treasury,
             "max_block_range": 2000},
            {"name": "beneficiary_bank", "kind": "iso20022", "inbox": str(demo / "inbox")},
        ],
        "reconciliations": [
            {"name": "bank_vs_chain", "left": "sender_bank", "right": "eth_usdc",
             "left_filter": {"account": ["GL-1100-CUSTOMERS"], "direction": "debit"},
             "right_filter": {"direction": "debit"},
             "rules": {"key": "correlation_id", "time_window": "1d", "direction": "any",
                       "fx": [{"from": "EUR", "to": "USDC", "rate": "1.08"}],
                       "amount_tolerance": {"relative": "0.002"}}},
            {"name": "beneficiary_vs_chain", "left": "beneficiary_bank", "right": "eth_usdc",
             "right_filter": {"direction": "debit"},
             "rules": {"key": "correlation_id", "time_window": "1d", "direction": "any",
                       "fx": [{"from": "USD", "to": "USDC", "rate": "1"}],
                       "amount_tolerance": {"absolute": "0.01"}}},
        ],
        "triggers": [
            {"name": "large_payments_on_chain", "source": "sender_bank",
             "filter": {"account": ["GL-1100-CUSTOMERS"], "direction": "debit", "min_amount": "45000",
                        "has_correlation": True},
             "action": {"type": "bridge_record", "reference": "correlation_id"}, "on_orphaned": "hold"},
        ],
    }


def demo_env(demo: Path, prefix: str) -> dict[str, str]:
    cfg = StackConfig.from_env()
    return {"LEDGER_CONFIG": str(demo / "corridor.yaml"), "LEDGER_WAREHOUSE_URL": f"sqlite:///{demo / 'warehouse.db'}",
            "LEDGER_SENDER_BANK_URL": f"sqlite:///{demo / 'sender_bank.db'}", "LEDGER_REPORTS_DIR": str(demo / "reports"),
            "LEDGER_TOPIC_PREFIX": prefix, "LEDGER_EVM_RPC_URL": cfg.anvil_url, "DAGSTER_HOME": str(demo / "dagster_home")}


def publish_details(details: dict) -> str:
    """A publish run's cursor in words: ``; read up to id 1,234 (2 gaps held open)``."""
    parts = []
    if "high" in details:
        gaps = details.get("gaps", 0)
        parts.append(f"read up to id {details['high']:,}" + (f" ({gaps:,} gaps held open)" if gaps else ""))
    if "head" in details:
        parts.append(f"final through block {details['final_through']:,} of {details['head']:,}"
                     + (f", {details['orphaned']:,} orphaned by a reorg" if details.get("orphaned") else ""))
    return f"; {', '.join(parts)}" if parts else ""


def balance_table(checks: list[dict]) -> list[str]:
    """Statement balance checks (opening + movement = closing) as a short table, one row a statement."""
    rows = [("statement", "ccy", "opening", "movement", "closing", "")]
    for c in checks:
        if not c.get("checked"):
            rows.append((c["statement_id"], "", "", "", "", f"not checked: {c['reason']}"))
            continue
        verdict = "balanced" if c["balanced"] else f"OFF BY {c['difference']}"
        rows.append((c["statement_id"], c["currency"], c["opening"], c["movement"], c["closing"], verdict))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    right = (False, False, True, True, True)
    return ["  ".join((v.rjust(w) if r else v.ljust(w)) for v, w, r in zip(row[:5], widths, right)) + "  " + row[5]
            for row in rows]


def build(args, demo: Path, progress: Progress) -> dict:
    """Generate, publish and process the corridor week; returns the manifest."""
    import json
    import shutil

    import yaml

    from ..chain import Signer, contract, contract_address
    from .corridor import generate, journal_rows, statements

    cfg = StackConfig.from_env()
    today = datetime.now(timezone.utc).date()
    days = [today - timedelta(days=k) for k in range(args.days, 0, -1)]
    genesis = int(datetime(days[0].year, days[0].month, days[0].day, tzinfo=timezone.utc).timestamp()) - 86400

    progress.step(f"anvil: restarting with its genesis on {datetime.fromtimestamp(genesis, timezone.utc):%Y-%m-%d} "
                  "to replay the week")
    from .stack import Anvil

    anvil = Anvil(cfg)
    anvil.stop()
    os.environ["LEDGER_ANVIL_GENESIS_TIMESTAMP"] = str(genesis)
    anvil.start()
    if demo.exists():
        shutil.rmtree(demo)
    (demo / "inbox").mkdir(parents=True)
    prefix = f"demo{int(time.time())}."
    os.environ.update(demo_env(demo, prefix))

    progress.step(f"ledgers: generating {args.days} days x {args.payments:,} payments with injected breaks")
    rpc = Rpc(cfg.anvil_url)
    signer = Signer.from_env(cfg.anvil_url, "LEDGER_ANCHOR_KEY")  # owns the token and the anchor contract
    bridge_signer = Signer.from_env(cfg.anvil_url, "LEDGER_BRIDGE_KEY")  # the bridge's owner records on it
    t = genesis + 60
    addresses = {}
    for name, owner in (("LedgerToken", signer), ("LedgerBridge", bridge_signer), ("AuditAnchor", signer)):
        rpc.call("evm_setNextBlockTimestamp", [t])
        t += 1
        if name == "LedgerToken":
            addresses[name] = owner.deploy(name, "USD Coin (demo)", "USDC", 6)
        else:
            addresses[name] = contract_address(owner, name)
    token = contract(signer, "LedgerToken", addresses["LedgerToken"])
    accounts = rpc.call("eth_accounts", [])
    treasury, wallet = accounts[1].lower(), accounts[2].lower()
    rpc.call("evm_setNextBlockTimestamp", [t])
    week = generate(days, args.payments)
    signer.wait(signer.send(token.functions.mint(signer.w3.to_checksum_address(treasury), treasury_funds(week))))
    conf = demo_config(demo, addresses["LedgerToken"].lower(), treasury, days)
    (demo / "corridor.yaml").write_text("# written by `ledger-pipelines demo`\n" + yaml.safe_dump(conf, sort_keys=False))

    from sqlalchemy import text

    from ..config import ledger_by_name, load_config
    from ..connectors.sql.mapping import ColumnMapping
    from ..connectors.sql.journal import SqlLedger
    from ..kafka import ensure_topics
    from ..publish import Publisher
    from ..settings import KafkaSettings
    from ..warehouse import Warehouse

    journal = SqlLedger(os.environ["LEDGER_SENDER_BANK_URL"], ColumnMapping(), "sender_bank")
    journal.create_journal()
    rows = journal_rows(week)
    with journal.engine.begin() as c:
        c.execute(text("INSERT INTO journal_lines (txn_id, posted_at, account, counterparty, currency, amount, side, "
                       "payment_ref) VALUES (:t, :p, :a, :cp, :c, :m, :s, :r)"), rows)
    journal.dispose()
    progress.note(f"sender_bank: {len(rows):,} journal lines")
    files, _ = statements(week)
    for name, body in files.items():
        (demo / "inbox" / name).write_bytes(body)
    progress.note(f"beneficiary_bank: {len(files)} statements in {demo / 'inbox'}")

    ledgers = load_config()
    kafka = KafkaSettings.from_env()
    ensure_topics(kafka, [lc.name for lc in ledgers])
    wh = Warehouse(None)
    wh.create_schema()
    publisher = Publisher(kafka, wh)
    chain_ledger = ledger_by_name(ledgers, "eth_usdc")
    rpc.call("evm_setAutomine", [False])
    try:
        sent = _mine_week(rpc, addresses["LedgerToken"], treasury, wallet, week,
                          lambda: publisher.publish(chain_ledger).published, progress)
        rpc.call("evm_setNextBlockTimestamp", [int(time.time())])
        rpc.call("evm_mine", [])
        rpc.mine_at(int(time.time()) + 1, blocks=3)
    finally:
        rpc.call("evm_setAutomine", [True])
    progress.note(f"eth_usdc: {sent:,} transfers on anvil")

    progress.step("publishing every ledger to Kafka (the reorg's orphaned legs included)")
    for lc in ledgers:
        r = publisher.publish(lc)
        progress.note(f"{lc.name}: {r.published:,} entries published, {r.rejected:,} dead-lettered"
                      f"{publish_details(r.details)}")
        checks = r.details.get("balance_checks") or []
        if checks:
            for line in balance_table(checks):
                progress.note(f"  {line}")
    wh.dispose()
    manifest = {"prefix": prefix, "days": [d.isoformat() for d in days], "genesis": genesis,
                "chain": f"{rpc.call('eth_chainId', [])}:{rpc.call('eth_getBlockByNumber', ['0x0', False])['hash']}",
                "contracts": addresses, "treasury": treasury, "expected": week.expected, "complete": False}
    (demo / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def process(demo: Path, manifest: dict, progress: Progress) -> dict:
    """Event log, the week one run per day, the triggers: all as runs of the Dagster instance."""
    from dagster import DagsterInstance

    from ..definitions import defs
    from ..kafka.topics import end_offsets
    from ..settings import KafkaSettings
    from ..sensors.kafka_offsets_sensor import event_log_run_config

    import logging

    prepare_dagster_home(StackConfig.from_env())
    logging.getLogger("alembic").setLevel(logging.WARNING)
    quiet = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}  # the progress lines stay readable
    instance = DagsterInstance.get()
    progress.step("event log: ledger_event_log up to the topics' end offsets (exactly once)")
    ends = end_offsets(KafkaSettings.from_env())
    r = defs.get_job_def("event_log_job").execute_in_process(run_config={**event_log_run_config(ends), **quiet},
                                                             instance=instance)
    if not r.success:
        raise SystemExit("the event-log run failed; see the Dagster UI")
    days = manifest["days"]
    progress.step(f"the week {days[0]} .. {days[-1]}, one run per day: snapshots, checks, reconciliation, "
                  "reports, anchors")
    # in day order, one after the other: a day carries the breaks the days before it left open
    job = defs.get_job_def("nightly_audit_job")
    failed = []
    for day in days:
        r = job.execute_in_process(instance=instance, raise_on_error=False, run_config=quiet, partition_key=day)
        progress.note(f"{day}: run {r.run_id[:8]} {'succeeded' if r.success else 'FAILED'}")
        if not r.success:
            failed.append(day)
    if failed:
        raise SystemExit(f"the runs of {', '.join(failed)} failed; see the Dagster UI")
    progress.step("cross-ledger triggers: large payments recorded on chain through LedgerBridge")
    r = defs.get_job_def("bridge_job").execute_in_process(instance=instance, run_config=quiet)
    if not r.success:
        raise SystemExit("the bridge run failed; see the Dagster UI")
    return {"runs": 2 + len(days)}


def run_demo(args) -> int:
    import json
    import logging
    import warnings

    warnings.simplefilter("ignore")  # library deprecation/beta notices would bury the progress lines
    logging.getLogger().setLevel(logging.WARNING)
    for noisy in ("great_expectations", "alembic", "dagster"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    cfg = StackConfig.from_env()
    demo = Path(os.environ.get("LEDGER_DEMO_DIR") or cfg.root / "demo")
    progress = Progress(9)
    progress.step("starting the local stack (Kafka, anvil)")
    for svc in services(cfg, ["kafka", "anvil"]):
        svc.start()
        progress.note(f"{svc.name}: {svc.status()}")
    manifest = None
    path = demo / "manifest.json"
    if path.exists() and not args.rebuild:
        manifest = json.loads(path.read_text())
        try:
            rpc = Rpc(cfg.anvil_url)
            chain = f"{rpc.call('eth_chainId', [])}:{rpc.call('eth_getBlockByNumber', ['0x0', False])['hash']}"
        except Exception:
            chain = None
        if not manifest.get("complete") or chain != manifest["chain"]:
            progress.note("the previous demo is incomplete or its chain is gone: building it again")
            manifest = None
    if manifest is None:
        manifest = build(args, demo, progress)
        os.environ.update(demo_env(demo, manifest["prefix"]))
        process(demo, manifest, progress)
        manifest["complete"] = True
        path.write_text(json.dumps(manifest, indent=2))
    else:
        os.environ.update(demo_env(demo, manifest["prefix"]))
        progress.note(f"reusing the finished demo of {manifest['days'][0]} .. {manifest['days'][-1]} "
                      "(--rebuild to build it again)")
        progress.n = 7
    progress.step("turning on the sensors and the nightly schedule")
    home = prepare_dagster_home(cfg)
    dagster = Path(sys.executable).parent / "dagster"
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    for kind in ("sensor", "schedule"):
        done = subprocess.run([str(dagster), kind, "start", "--start-all", "-w", str(REPO_ROOT / "workspace.yaml")],
                              cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            progress.note(f"could not turn on the {kind}s (turn them on in the UI, Automation): "
                          f"{done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}")
    reports = demo / "reports"
    users = demo_desk_users()
    if args.no_ui:
        progress.step(f"done: reports in {reports}")
        print(desk_users_text(users), flush=True)
        return 0
    progress.step("starting the Dagster UI")
    log_path = cfg.root / "logs" / "dagster-demo.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    ui = start_dagster_ui(cfg, args.port, log_path)
    desk_log = cfg.root / "logs" / "desk-demo.log"
    desk = subprocess.Popen([sys.executable, "-m", "ledger_pipelines.cli", "desk", "--port", str(args.desk_port)],
                            cwd=REPO_ROOT, env={**os.environ, "LEDGER_DEMO_DIR": str(demo),
                                                "LEDGER_DESK_URL": f"http://{cfg.host}:{args.desk_port}"},
                            stdout=open(desk_log, "ab"), stderr=subprocess.STDOUT, start_new_session=True)
    last = manifest["days"][-1]
    print(f"""
Dagster UI: http://{cfg.host}:{args.port}   (log: {log_path})
  Assets (Lineage): sender_bank_snapshot, eth_usdc_snapshot, beneficiary_bank_snapshot -> reconciliation
      -> audit_report; ledger_event_log from Kafka. Open audit_report, partition {last}: summary, anchor tx.
  Runs: the event-log run, one nightly_audit_job run per day of the week, the bridge run.
  Automation: kafka_offsets_sensor, bridge_sensor, ... and nightly_audit_schedule are on.
Breaks desk: http://{cfg.host}:{args.desk_port}   (log: {desk_log})
  Open breaks of the week, a break's legs and suggestions; an operator proposes, an approver approves.
{desk_users_text(users)}
Reports: {reports}/<day>/index.html (also on the desk: http://{cfg.host}:{args.desk_port}/days)
Verify a report and its anchor:
  .venv/bin/ledger-pipelines verify --report {reports / last} --rpc {cfg.anvil_url}
Ctrl-C stops the UI; the stack keeps running (`ledger-pipelines stack stop`).""", flush=True)
    stop = {"flag": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(flag=True))
    t0 = time.monotonic()
    try:
        while not stop["flag"] and ui.poll() is None and (not args.duration or time.monotonic() - t0 < args.duration):
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        stop_group(ui)
        stop_group(desk, timeout=5)
    return 0


DEMO_USERS = (("demo-operator", "operator"), ("demo-approver", "approver"))


def demo_desk_users() -> list[tuple[str, str, str | None]]:
    """The demo's two desk users, made once with random passwords: (name, role, password when made now)."""
    import secrets

    from ..desk.store import Desk
    from ..warehouse import Warehouse

    desk = Desk(Warehouse(os.environ["LEDGER_WAREHOUSE_URL"]))
    out = []
    for name, role in DEMO_USERS:
        password = None
        if desk.role_of(name) is None:
            password = secrets.token_urlsafe(12)
            desk.add_user(name, role, password)
        out.append((name, role, password))
    desk.wh.dispose()
    return out


def desk_users_text(users: list[tuple[str, str, str | None]]) -> str:
    lines = ["  Desk users (passwords shown once, when made):"]
    for name, role, password in users:
        lines.append(f"    {name} ({role}): " + (password if password else
                     "made earlier; `ledger-pipelines desk user remove` and `add` give it a new password"))
    return "\n".join(lines)
