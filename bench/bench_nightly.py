"""The nightly audit at a bank's daily volume: ``nightly_audit_job`` for one day of 1,000,000 SQL journal
lines, 300,000 camt.053 entries (with their transaction details) and 100,000 token transfers on anvil,
with the floors of its largest reconciliation pair measured in the same run.

Setup (timed and printed, not counted), on the local stack (Kafka, anvil):

1. ``demo.build`` for one day (yesterday) of ``100,000 x scale`` corridor payments: anvil restarted with
   its genesis the day before, the sender bank's journal (customer debit + USDC settlement credit per
   payment), every chain leg mined as ``transferWithMemo`` at the payment's time, the beneficiary bank's
   camt.053 (and camt.054) with the demo's injected breaks, everything published to Kafka;
2. the rest of the bank's day: payments of the same customers sent through the correspondent bank
   instead of the chain (customer debit + USD nostro credit in the journal, one camt.053 entry each with
   references, amounts, parties, agents and remittance information on the beneficiary's correspondent
   account; a few credited with fees deducted or not at all), and the other postings of the day (card
   settlements, fees, interest, SEPA in and out; no payment reference), until the journal holds
   ``1,000,000 x scale`` lines and the statements ``300,000 x scale`` entries;
3. the configuration: the demo's ledgers and pairs, with ``bank_vs_chain`` on the settlement account's
   credits and ``beneficiary_vs_chain`` on the corridor's account (the correspondent route is not a chain
   leg), plus ``sender_vs_beneficiary``: every customer debit against the beneficiary's credits (EUR to
   USD at 1.08), the largest pair;
4. what the sensors do: the statement inbox indexed by booking date, ``publish_job`` runs of the new
   journal lines and statement files, ``event_log_job`` up to the topics' end offsets.

Timed: ``nightly_audit_job`` (``ledger_pipelines.definitions``, ``execute_in_process`` with the day's
partition key, the instance of the built day) in a process of its own: every stage's time from the
run's step events (step start to success), the run's time, and the peak RSS of the job's process tree
(psutil, every 0.1 s, summed over the process and its children; ``wait4``'s ``ru_maxrss`` is the largest
single process). Then, in processes of their own, on the largest pair's two sides as the
reconciliation asset builds them (snapshot + orphaned legs + carried breaks, the pair's filters): the
engine (``reconcile()``, what the asset calls), a bare DuckDB full outer join on the key (Arrow
tables, no rules) and datacompy (pandas; the left amounts converted at the pair's rate, the pair's
tolerance), each timed alone after its input is built.

Targets (2 cores): the job <= 60 s, peak RSS <= 4 GB, engine <= 3 x the bare join, datacompy >= 20 x
the engine. The machine is shared: figures are noisy, read the spread of repeated runs.

    LEDGER_STACK_DIR=... .venv/bin/python bench/bench_nightly.py [--scale 1.0] [--keep DIR] [--json PATH]
        [--rss-limit-gb 14]

``--keep DIR`` builds the day in DIR (it must be empty, new, or a day this bench built) and keeps it;
run again with the same DIR and scale while anvil still has the chain, the setup is skipped and the
job runs the day again (a re-run: the report and its anchor get a new version). ``--rss-limit-gb``
stops the job when its process tree passes that much (a shared machine), reported as a failure with
the stage it was in.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SQL_LINES, CAMT_ENTRIES, CHAIN_TRANSFERS = 1_000_000, 300_000, 100_000
TARGET_JOB_SECONDS, TARGET_RSS_GB, TARGET_OVER_JOIN, TARGET_SPEEDUP = 60, 4, 3, 20
JOB = "nightly_audit_job"
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
MARKER = "bench_nightly.json"

CORRESPONDENT_IBAN = "US29CITI00000000483207"  # the beneficiary's account at its correspondent bank
NOSTRO = "GL-2200-NOSTRO-USD"
BIG_PAIR = "sender_vs_beneficiary"
# the other postings of the bank's day: (kind, debit account, credit account, amount range in cents)
POSTINGS = (("CARD", "GL-1300-CARD-RECEIVABLES", "GL-2300-CARD-SCHEME-PAYABLE", 300, 50_000),
            ("FEE", "GL-1000-CURRENT-ACCOUNTS", "GL-4100-FEE-INCOME", 50, 5_000),
            ("INT", "GL-5100-INTEREST-EXPENSE", "GL-2000-DEPOSITS", 1, 20_000),
            ("SEPAIN", "GL-1500-TARGET2", "GL-1000-CURRENT-ACCOUNTS", 1_000, 5_000_000),
            ("SEPAOUT", "GL-1000-CURRENT-ACCOUNTS", "GL-1500-TARGET2", 1_000, 2_000_000))
NAMES = ("Muller Maschinenbau GmbH", "Rossi Import SRL", "Dupont Logistique SA", "Novak Software s.r.o.",
         "Jansen Agro BV", "Garcia Textiles SL", "Nilsson Marine AB", "Kowalski Meble Sp. z o.o.")
CREDITORS = ("Harbor Supply Inc", "Lakeside Components LLC", "Pioneer Freight Corp", "Summit Analytics Inc")


# -- process tree sampling -----------------------------------------------------------------------------

class TreeRss:
    """RSS of a process and its children, summed, every ``interval`` seconds; stops the tree (its
    process group) when the sum passes ``limit`` bytes."""

    def __init__(self, pid: int, limit: int | None = None, interval: float = 0.1):
        import psutil

        self.root, self.limit, self.interval = psutil.Process(pid), limit, interval
        self.samples: list[tuple[float, int]] = []
        self.peak = self.peak_single = 0
        self.killed: tuple[float, int] | None = None
        self._stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        import psutil

        while not self._stop:
            try:
                procs = [self.root, *self.root.children(recursive=True)]
            except psutil.Error:
                return
            total = single = 0
            for p in procs:
                try:
                    rss = p.memory_info().rss
                except psutil.Error:
                    continue
                total, single = total + rss, max(single, rss)
            now = time.time()
            self.samples.append((now, total))
            self.peak, self.peak_single = max(self.peak, total), max(self.peak_single, single)
            if self.limit and total > self.limit and self.killed is None:
                self.killed = (now, total)
                try:
                    os.killpg(self.root.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(self.interval)

    def done(self) -> None:
        self._stop = True
        self.thread.join()

    def peak_between(self, start: float, end: float) -> int:
        return max((rss for t, rss in self.samples if start <= t <= end), default=0)

    def at(self, t: float) -> int:
        before = [rss for s, rss in self.samples if s <= t]
        return before[-1] if before else 0


class SelfPeak:
    """Peak RSS of this process while a timed phase runs (bench_reconcile's way)."""

    def __init__(self):
        import psutil

        self.proc, self.peak, self._stop = psutil.Process(), 0, False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop:
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.02)

    def done(self) -> int:
        self._stop = True
        self.thread.join()
        return self.peak


def run_child(phase: str, work: Path, env: dict, limit: int | None = None, timeout: float = 4 * 3600) -> dict:
    """``phase`` in a process of its own (its own session, so the whole tree can be stopped); its result
    file, its wall time, the tree's RSS and the process's ``ru_maxrss``."""
    out = work / f"{phase}.result.json"
    out.unlink(missing_ok=True)
    log_path = work / "logs" / f"{phase}.log"
    log_path.parent.mkdir(exist_ok=True)
    with open(log_path, "wb") as log:
        t0 = time.time()
        proc = subprocess.Popen([sys.executable, __file__, "--phase", phase, "--work", str(work), "--out", str(out)],
                                cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        rss = TreeRss(proc.pid, limit)
        timer = threading.Timer(timeout, lambda: os.killpg(proc.pid, signal.SIGKILL))
        timer.start()
        _, status, usage = os.wait4(proc.pid, 0)
        timer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.time() - t0
        rss.done()
    result = json.loads(out.read_text()) if out.exists() else {}
    result.update(phase=phase, returncode=proc.returncode, wall_seconds=wall, started=t0, rss=rss,
                  ru_maxrss=usage.ru_maxrss * 1024, log=str(log_path))
    if proc.returncode != 0 and not rss.killed:
        result["log_tail"] = log_path.read_text(errors="replace")[-3000:]
    return result


# -- the day's data --------------------------------------------------------------------------------------

def correspondent_payments(day: date, n: int, seed: int = 11) -> list[dict]:
    """Payments of the sender bank's customers through the correspondent bank: EUR debited, USD credited
    at 1.08 on the beneficiary's correspondent account; every 400th credited with 15.00 of fees deducted,
    every 1,000th not credited (yet)."""
    from ledger_pipelines.local.corridor import usdc

    rng = random.Random(seed * 1000 + day.toordinal())
    start = datetime(day.year, day.month, day.day, 0, 5, tzinfo=timezone.utc)
    step = timedelta(hours=21) / max(n, 1)
    out = []
    for i in range(n):
        eur = Decimal(rng.randrange(5_000, 5_000_000)).scaleb(-2)
        usd = usdc(eur)
        if i % 400 == 17:
            usd -= Decimal("15.00")
        out.append({"ref": f"E2E-{day:%Y%m%d}-C{i:06d}", "at": start + step * i, "eur": eur, "usd": usd,
                    "credited": i % 1000 != 503, "debtor": NAMES[i % len(NAMES)],
                    "debtor_iban": f"DE{rng.randrange(10, 99)}5001051{rng.randrange(10**12, 10**13)}",
                    "creditor": CREDITORS[i % len(CREDITORS)],
                    "uetr": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                    "invoice": f"INV-{rng.randrange(10**6, 10**7)}"})
    return out


def _correspondent_ntry(i: int, day: date, p: dict) -> str:
    amt = p["usd"]
    return (f"<Ntry><NtryRef>{i}</NtryRef><Amt Ccy=\"USD\">{amt}</Amt><CdtDbtInd>CRDT</CdtDbtInd>"
            f"<Sts><Cd>BOOK</Cd></Sts><BookgDt><Dt>{day}</Dt></BookgDt><ValDt><Dt>{day}</Dt></ValDt>"
            f"<AcctSvcrRef>CITI{day:%Y%m%d}{i:08d}</AcctSvcrRef><BkTxCd><Domn><Cd>PMNT</Cd><Fmly><Cd>RCDT</Cd>"
            f"<SubFmlyCd>XBCT</SubFmlyCd></Fmly></Domn><Prtry><Cd>NTRF+103</Cd><Issr>SWIFT</Issr></Prtry></BkTxCd>"
            f"<NtryDtls><TxDtls><Refs><AcctSvcrRef>CITI{day:%Y%m%d}{i:08d}</AcctSvcrRef>"
            f"<InstrId>SB{day:%y%m%d}{i:08d}</InstrId><EndToEndId>{p['ref']}</EndToEndId><UETR>{p['uetr']}</UETR>"
            f"</Refs><Amt Ccy=\"USD\">{amt}</Amt><CdtDbtInd>CRDT</CdtDbtInd><AmtDtls><InstdAmt>"
            f"<Amt Ccy=\"EUR\">{p['eur']}</Amt></InstdAmt></AmtDtls>"
            f"<RltdPties><Dbtr><Pty><Nm>{p['debtor']}</Nm><PstlAdr><Ctry>DE</Ctry></PstlAdr></Pty></Dbtr>"
            f"<DbtrAcct><Id><IBAN>{p['debtor_iban']}</IBAN></Id></DbtrAcct><Cdtr><Pty><Nm>{p['creditor']}</Nm></Pty>"
            f"</Cdtr><CdtrAcct><Id><Othr><Id>{4_000_000_000 + i}</Id></Othr></Id></CdtrAcct></RltdPties>"
            f"<RltdAgts><DbtrAgt><FinInstnId><BICFI>SNDBDEFFXXX</BICFI></FinInstnId></DbtrAgt></RltdAgts>"
            f"<RmtInf><Ustrd>{p['invoice']} {p['ref']}</Ustrd></RmtInf></TxDtls></NtryDtls></Ntry>")


# statements carry at most this many entries: a document is read up to 64 MiB (iso20022.MAX_DOCUMENT_BYTES),
# and an entry with its details is about 1.2 kB
ENTRIES_PER_STATEMENT = 25_000


def correspondent_statements(day: date, pays: list[dict]) -> dict[str, bytes]:
    """The day's credits on the correspondent account as consecutive statements of at most
    ``ENTRIES_PER_STATEMENT`` entries (one file each, ``ElctrncSeqNb`` 1, 2, ...), each opening where the
    one before closed."""
    from ledger_pipelines.local.corridor import _bal

    credited = [p for p in pays if p["credited"]]
    balance, files = Decimal("5000000.00"), {}
    for seq, first in enumerate(range(0, len(credited), ENTRIES_PER_STATEMENT), start=1):
        part = credited[first:first + ENTRIES_PER_STATEMENT]
        opening, balance = balance, balance + sum((p["usd"] for p in part), Decimal(0))
        entries = "".join(_correspondent_ntry(first + i, day, p) for i, p in enumerate(part))
        files[f"camt053-correspondent-{day}-{seq:02d}.xml"] = (
            '<?xml version="1.0" encoding="UTF-8"?><Document xmlns="urn:iso:std:iso:20022:tech:xsd:camt.053.001.08">'
            f"<BkToCstmrStmt><GrpHdr><MsgId>CITI-{day}-{seq}</MsgId><CreDtTm>{day}T23:15:00Z</CreDtTm></GrpHdr>"
            f"<Stmt><Id>CITI-{day}-{seq}</Id><ElctrncSeqNb>{seq}</ElctrncSeqNb><Acct><Id><IBAN>{CORRESPONDENT_IBAN}"
            f"</IBAN></Id><Ccy>USD</Ccy></Acct>{_bal('OPBD', opening, day)}{_bal('CLBD', balance, day)}{entries}"
            "</Stmt></BkToCstmrStmt></Document>").encode()
    return files


def journal_lines(day: date, pays: list[dict], postings: int, seed: int = 13):
    """The journal lines of the correspondent payments and of ``postings`` other transactions (two lines each)."""
    from ledger_pipelines.local.corridor import CUSTOMERS

    for p in pays:
        posted = p["at"].strftime("%Y-%m-%dT%H:%M:%SZ")
        txn = f"{p['ref']}-T0"
        for side, account, other in (("D", CUSTOMERS, NOSTRO), ("C", NOSTRO, CUSTOMERS)):
            yield {"t": txn, "p": posted, "a": account, "cp": other, "c": "EUR", "m": str(p["eur"]), "s": side,
                   "r": p["ref"]}
    rng = random.Random(seed * 1000 + day.toordinal())
    midnight = datetime(day.year, day.month, day.day, tzinfo=timezone.utc)
    for n in range(postings):
        kind, debit, credit, lo, hi = POSTINGS[n % len(POSTINGS)]
        cents = rng.randrange(lo, hi)
        amount = f"{cents // 100}.{cents % 100:02d}"
        posted = (midnight + timedelta(seconds=rng.randrange(86_400))).strftime("%Y-%m-%dT%H:%M:%SZ")
        txn = f"{kind}-{day:%Y%m%d}-{n:07d}"
        yield {"t": txn, "p": posted, "a": debit, "cp": credit, "c": "EUR", "m": amount, "s": "D", "r": None}
        yield {"t": txn, "p": posted, "a": credit, "cp": debit, "c": "EUR", "m": amount, "s": "C", "r": None}


def bench_config(conf: dict) -> dict:
    """The demo's configuration with the correspondent route: the chain pairs on the corridor's accounts,
    and every customer debit against the beneficiary's credits."""
    from ledger_pipelines.local.corridor import BENEFICIARY_IBAN, CUSTOMERS, SETTLEMENT

    recs = {r["name"]: r for r in conf["reconciliations"]}
    recs["bank_vs_chain"]["left_filter"] = {"account": [SETTLEMENT], "direction": "credit"}
    recs["beneficiary_vs_chain"]["left_filter"] = {"account": [BENEFICIARY_IBAN]}
    conf["reconciliations"].append({
        "name": BIG_PAIR, "left": "sender_bank", "right": "beneficiary_bank",
        "left_filter": {"account": [CUSTOMERS], "direction": "debit"},
        "rules": {"key": "correlation_id", "time_window": "1d", "direction": "any",
                  "fx": [{"from": "EUR", "to": "USD", "rate": "1.08"}], "amount_tolerance": {"relative": "0.002"}}})
    return conf


def setup(work: Path, scale: float) -> dict:
    """Build, publish and ingest the day (see the module's doc); returns what the run needs to know."""
    import yaml
    from sqlalchemy import text

    from ledger_pipelines.local import demo
    from ledger_pipelines.local.stack import StackConfig, services

    timings: dict[str, float] = {}
    t = time.monotonic()
    cfg = StackConfig.from_env()
    for svc in services(cfg, ["kafka", "anvil"]):
        svc.start()
    timings["stack"] = time.monotonic() - t

    t = time.monotonic()
    payments = max(400, round(CHAIN_TRANSFERS * scale))
    progress = demo.Progress(4)
    manifest = demo.build(SimpleNamespace(days=1, payments=payments), work, progress)
    timings["corridor: ledgers, chain, publish (demo.build)"] = time.monotonic() - t
    day = date.fromisoformat(manifest["days"][0])

    t = time.monotonic()
    inbox = work / "inbox"
    corridor_entries = sum(p.read_bytes().count(b"<Ntry>") for p in inbox.glob("*.xml"))
    n_corr = max(0, round(CAMT_ENTRIES * scale) - corridor_entries)
    pays = correspondent_payments(day, n_corr)
    # one credited entry per payment but the ones not credited: top up so the statements reach the target
    while sum(p["credited"] for p in pays) < n_corr:
        pays = correspondent_payments(day, len(pays) + (n_corr - sum(p["credited"] for p in pays)))
    for name, body in correspondent_statements(day, pays).items():
        (inbox / name).write_bytes(body)
    from ledger_pipelines.connectors.sql.mapping import ColumnMapping
    from ledger_pipelines.connectors.sql.journal import SqlLedger

    journal = SqlLedger(os.environ["LEDGER_SENDER_BANK_URL"], ColumnMapping(), "sender_bank")
    with journal.engine.connect() as c:
        corridor_lines = c.execute(text("SELECT count(*) FROM journal_lines")).scalar()
    postings = max(0, (round(SQL_LINES * scale) - corridor_lines - 2 * len(pays)) // 2)
    insert = text("INSERT INTO journal_lines (txn_id, posted_at, account, counterparty, currency, amount, side, "
                  "payment_ref) VALUES (:t, :p, :a, :cp, :c, :m, :s, :r)")
    batch: list[dict] = []
    with journal.engine.begin() as c:
        for row in journal_lines(day, pays, postings):
            batch.append(row)
            if len(batch) == 100_000:
                c.execute(insert, batch)
                batch = []
        if batch:
            c.execute(insert, batch)
    journal.dispose()
    conf_path = Path(os.environ["LEDGER_CONFIG"])
    conf = bench_config(yaml.safe_load(conf_path.read_text()))
    conf_path.write_text("# written by bench/bench_nightly.py (the demo's corridor and the correspondent route)\n"
                         + yaml.safe_dump(conf, sort_keys=False))
    del pays
    timings["correspondent route and other postings"] = time.monotonic() - t
    progress.note(f"correspondent route: {n_corr:,} payments; other postings: {postings:,} transactions")

    # what the sensors do from here: index the new statement, publish the new records, ingest the event log
    from ledger_pipelines.config import ledger_by_name, load_config
    from ledger_pipelines.statement_inbox import StatementInbox

    demo.prepare_dagster_home(cfg)
    from dagster import DagsterInstance

    from ledger_pipelines.definitions import defs
    from ledger_pipelines.kafka.topics import end_offsets
    from ledger_pipelines.sensors.kafka_offsets_sensor import event_log_run_config
    from ledger_pipelines.settings import KafkaSettings

    instance = DagsterInstance.get()
    t = time.monotonic()
    bank = StatementInbox(ledger_by_name(load_config(), "beneficiary_bank"))
    bank.index_new(bank.listing())
    timings["statement inbox indexed (statement_inbox_sensor)"] = time.monotonic() - t
    t = time.monotonic()
    for ledger in ("sender_bank", "beneficiary_bank"):
        r = defs.get_job_def("publish_job").execute_in_process(
            instance=instance, run_config={"ops": {"publish_ledger": {"config": {"ledger": ledger}}}, **QUIET})
        if not r.success:
            raise SystemExit(f"publish_job of {ledger} failed; Dagster instance in {os.environ['DAGSTER_HOME']}")
    timings["publish_job: the new journal lines and statement"] = time.monotonic() - t
    t = time.monotonic()
    ends = end_offsets(KafkaSettings.from_env())
    r = defs.get_job_def("event_log_job").execute_in_process(run_config={**event_log_run_config(ends), **QUIET},
                                                             instance=instance)
    if not r.success:
        raise SystemExit("event_log_job failed")
    timings["event_log_job (ledger_event_log to the end offsets)"] = time.monotonic() - t
    got = volumes(day.isoformat())
    wanted = {"sender_bank": SQL_LINES, "beneficiary_bank": CAMT_ENTRIES, "eth_usdc": CHAIN_TRANSFERS}
    short = {k: (got.get(k, 0), round(n * scale)) for k, n in wanted.items() if got.get(k, 0) < 0.99 * round(n * scale)}
    if short:  # a file dead-lettered whole, say: not the day this bench is about
        raise SystemExit("the day's event log is short of its volumes (entries, wanted): "
                         + ", ".join(f"{k} {a:,} of {b:,}" for k, (a, b) in short.items()))
    return {"scale": scale, "day": day.isoformat(), "prefix": manifest["prefix"], "chain": manifest["chain"],
            "setup_seconds": timings, "complete": True}


def volumes(day: str) -> dict[str, int]:
    """Entries the event log holds for the day, per ledger (one per journal line, Ntry, Transfer log)."""
    from ledger_pipelines.warehouse import Warehouse

    wh = Warehouse(os.environ["LEDGER_WAREHOUSE_URL"])
    try:
        rows = wh.rows("SELECT ledger, count(DISTINCT entry_id) FROM ledger_event_log WHERE booked_date = :d "
                       "GROUP BY ledger", d=day)
    finally:
        wh.dispose()
    return {ledger: n for ledger, n in rows}


# -- phases (each in a process of its own) ---------------------------------------------------------------

def phase_job(work: Path) -> dict:
    from dagster import DagsterInstance

    from ledger_pipelines.definitions import defs

    day = json.loads((work / MARKER).read_text())["day"]
    instance = DagsterInstance.get()
    t0 = time.time()
    r = defs.get_job_def(JOB).execute_in_process(instance=instance, raise_on_error=False, run_config=QUIET,
                                                 partition_key=day)
    return {"run_id": r.run_id, "success": r.success, "execute_seconds": time.time() - t0}


def _pair_sides(day: str):
    """Every configured pair's two sides as the reconciliation asset builds them (audit._run_day):
    snapshot + orphaned legs from the event log, the pair's filters, plus the breaks carried in."""
    from ledger_pipelines.audit import _carried, pairs_from
    from ledger_pipelines.warehouse.state import snapshot_entries
    from ledger_pipelines.config import load_config, reconciliation_pairs
    from ledger_pipelines.warehouse.state import event_log_day
    from ledger_pipelines.warehouse import Warehouse

    ledgers = load_config()
    pairs = pairs_from({"reconciliations": reconciliation_pairs()})
    wh = Warehouse(os.environ["LEDGER_WAREHOUSE_URL"])
    snaps = {lc.name: snapshot_entries(wh, lc.name, day) for lc in ledgers}
    # only chain legs are ever orphaned (a reorg): the other ledgers' event log days are not read here
    orphaned = {lc.name: [e for e in event_log_day(wh, lc.name, date.fromisoformat(day)) if e.status == "orphaned"]
                for lc in ledgers if lc.kind == "evm"}
    sides = {}
    for p in pairs:
        carried_left, carried_right, _ = _carried(wh, p.name, day)
        sides[p.name] = (p, p.select("L", snaps.get(p.left, []) + orphaned.get(p.left, [])) + carried_left,
                         p.select("R", snaps.get(p.right, []) + orphaned.get(p.right, [])) + carried_right)
    wh.dispose()
    return sides


_ARROW_FIELDS = ("entry_id", "correlation_id", "asset", "amount", "direction", "booked_at")


def phase_engine(work: Path) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ledger_pipelines.reconcile import reconcile

    day = json.loads((work / MARKER).read_text())["day"]
    sides = _pair_sides(day)
    sizes = {name: (len(left), len(right)) for name, (_, left, right) in sides.items()}
    name = max(sides, key=lambda n: sum(sizes[n]))
    pair, left, right = sides.pop(name)
    sides.clear()
    for side, entries in (("left", left), ("right", right)):
        pq.write_table(pa.table({c: pa.array([getattr(e, c) for e in entries], pa.string()) for c in _ARROW_FIELDS}),
                       work / f"pair-{side}.parquet")
    (work / "pair.json").write_text(json.dumps({
        "name": name, "fx": [[r.source, r.target, str(r.rate)] for r in pair.rules.fx],
        "absolute": str(pair.rules.tolerance_absolute), "relative": str(pair.rules.tolerance_relative)}))
    peak = SelfPeak()
    t0 = time.perf_counter()
    r = reconcile(left, right, pair.rules)
    secs = time.perf_counter() - t0
    peak_rss = peak.done()
    placed = sum(len(x["left_entry_ids"]) + len(x["right_entry_ids"]) for x in r.matches + r.breaks)
    assert placed == len(left) + len(right), (placed, len(left), len(right))
    return {"pair": name, "left": len(left), "right": len(right), "sizes": sizes, "seconds": secs,
            "peak_rss": peak_rss, "counts": r.counts()}


def phase_bare_join(work: Path) -> dict:
    import duckdb
    import pyarrow.parquet as pq

    lt, rt = pq.read_table(work / "pair-left.parquet"), pq.read_table(work / "pair-right.parquet")
    con = duckdb.connect()
    con.register("lt", lt)
    con.register("rt", rt)
    peak = SelfPeak()
    t0 = time.perf_counter()
    joined, unmatched = con.execute(
        """SELECT count(l.entry_id) FILTER (WHERE r.entry_id IS NOT NULL),
                  count(*) FILTER (WHERE l.entry_id IS NULL OR r.entry_id IS NULL)
           FROM lt l FULL OUTER JOIN rt r ON l.correlation_id = r.correlation_id""").fetchone()
    secs = time.perf_counter() - t0
    return {"seconds": secs, "peak_rss": peak.done(), "joined": joined, "unmatched": unmatched}


def phase_datacompy(work: Path) -> dict:
    import datacompy
    import pyarrow.parquet as pq

    pair = json.loads((work / "pair.json").read_text())
    rates = {(a, b): Decimal(r) for a, b, r in pair["fx"]}
    right_assets = set(pq.read_table(work / "pair-right.parquet", columns=["asset"]).column("asset").to_pylist())
    frames = []
    for side in ("left", "right"):
        df = pq.read_table(work / f"pair-{side}.parquet").to_pandas()
        amounts, assets = [], []
        for asset, amount in zip(df["asset"], df["amount"]):
            rate = next(((b, r) for (a, b), r in rates.items() if a == asset and b in right_assets), None) \
                if side == "left" else None
            value = Decimal(amount) * rate[1] if rate else Decimal(amount)
            amounts.append(int(value.scaleb(2).to_integral_value()))  # cents, in the right side's asset
            assets.append(rate[0] if rate else asset)
        df["amount_cents"], df["asset"] = amounts, assets
        frames.append(df.drop(columns=["amount"]))
    peak = SelfPeak()
    t0 = time.perf_counter()
    cmp = datacompy.PandasCompare(frames[0], frames[1], join_columns=["correlation_id"],
                                  rel_tol=float(pair["relative"]), abs_tol=float(pair["absolute"]) * 100,
                                  df1_name="left", df2_name="right")
    report = cmp.report()
    secs = time.perf_counter() - t0
    return {"seconds": secs, "peak_rss": peak.done(), "report_chars": len(report),
            "left_unique": int(cmp.df1_unq_rows.shape[0]), "right_unique": int(cmp.df2_unq_rows.shape[0])}


def phase_records(work: Path) -> dict:
    """The per-record floor of the day's report in Python, on the records the job wrote: building each
    record as the object the engine makes (decoded from its line: a ``Match`` value for a match, a dict
    for a break), encoding it canonically, its leaf hash and the day's Merkle root, and storing the rows
    in a fresh SQLite table (what the reconciliation step does for every record after the engine). No
    engine, no reading of entries: what any design that holds one Python object per record pays at
    least."""
    import sqlite3

    import msgspec

    from ledger_pipelines import merkle
    from ledger_pipelines.commitment import canonical, record_leaf
    from ledger_pipelines.reconcile.engine import Match

    day = json.loads((work / MARKER).read_text())["day"]
    files = sorted((work / "reports" / day).glob("*/*.jsonl"))
    raw = [(f.parent.name, "match" if f.name == "matches.jsonl" else "break", f.read_bytes().splitlines())
           for f in files if f.name in ("matches.jsonl", "breaks.jsonl")]
    n = sum(len(lines) for _, _, lines in raw)
    times = {}
    t = time.perf_counter()
    as_match = msgspec.json.Decoder(Match).decode
    records = [(name, kind, as_match(line) if kind == "match" else msgspec.json.decode(line))
               for name, kind, lines in raw for line in lines]
    times["records as objects"] = time.perf_counter() - t
    t = time.perf_counter()
    lines = [(name, kind, canonical(rec)) for name, kind, rec in records]
    times["canonical lines"] = time.perf_counter() - t
    t = time.perf_counter()
    hashes = sorted(merkle.leaf_hash(record_leaf(day, name, kind, line)) for name, kind, line in lines)
    merkle.root(hashes)
    times["leaf hashes and the root"] = time.perf_counter() - t
    db = sqlite3.connect(work / "records-floor.db")
    try:
        db.execute("DROP TABLE IF EXISTS r")
        db.execute("CREATE TABLE r (day TEXT, name TEXT, record_id TEXT, kind TEXT, record TEXT, "
                   "PRIMARY KEY (day, name, record_id))")
        t = time.perf_counter()
        db.executemany("INSERT INTO r VALUES (?, ?, ?, ?, ?)",
                       ((day, name, *((rec.match_id, rec.match_type) if kind == "match" else
                                      (rec["break_id"], rec["break_type"])), line.decode())
                        for (name, kind, rec), (_, _, line) in zip(records, lines)))
        db.commit()
        times["stored in SQLite"] = time.perf_counter() - t
    finally:
        db.close()
        (work / "records-floor.db").unlink(missing_ok=True)
    return {"records": n, "seconds": times}


PHASES = {"job": phase_job, "engine": phase_engine, "bare_join": phase_bare_join, "datacompy": phase_datacompy,
          "records": phase_records}


# -- the run's step events --------------------------------------------------------------------------------

def run_events(run_id: str | None) -> dict:
    """Steps (start, end, status, error) and the run's start and end, from the instance's event log; the
    latest run of the job when ``run_id`` is unknown (a job stopped from outside)."""
    from dagster import DagsterEventType as E
    from dagster import DagsterInstance, RunsFilter

    with DagsterInstance.get() as instance:
        if run_id is None:
            runs = instance.get_runs(filters=RunsFilter(job_name=JOB), limit=1)
            if not runs:
                return {"steps": {}, "checks": []}
            run_id = runs[0].run_id
        steps: dict[str, dict] = {}
        run: dict = {"run_id": run_id, "steps": steps, "checks": []}
        for rec in instance.all_logs(run_id):
            ev = rec.dagster_event
            if ev is None:
                continue
            kind = ev.event_type
            if kind == E.RUN_START:
                run["start"] = rec.timestamp
            elif kind in (E.RUN_SUCCESS, E.RUN_FAILURE, E.RUN_CANCELED):
                run["end"], run["status"] = rec.timestamp, kind.name
            elif kind == E.STEP_START:
                steps.setdefault(ev.step_key, {})["start"] = rec.timestamp
            elif kind in (E.STEP_SUCCESS, E.STEP_FAILURE, E.STEP_SKIPPED):
                s = steps.setdefault(ev.step_key, {})
                s["end"], s["status"] = rec.timestamp, kind.name
                if kind == E.STEP_FAILURE:
                    err = ev.step_failure_data.error
                    msgs = []
                    while err is not None:
                        msgs.append(err.message.strip())
                        err = err.cause
                    s["error"] = " <- ".join(msgs)[:1500]
            elif kind == E.ASSET_CHECK_EVALUATION:
                c = ev.event_specific_data
                run["checks"].append({"asset": c.asset_key.to_user_string(), "check": c.check_name,
                                      "passed": c.passed})
    return run


# -- output -----------------------------------------------------------------------------------------------

def gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB"  # decimal: the target's 4 GB is 4e9 bytes (3.73 GiB)


def met(ok: bool) -> str:
    return "met" if ok else "MISSED"


def report(figures: dict) -> None:
    v, job = figures["volumes"], figures["job"]
    print()
    print(f"nightly audit at a bank's daily volume — scale {figures['scale']}, day {figures['day']}, "
          f"{os.cpu_count()} cores shared with other work (figures are noisy)")
    print("volumes (event log, the day): " + ", ".join(f"{k} {n:,}" for k, n in sorted(v.items())))
    setup = figures["setup_seconds"]
    if setup:
        print(f"setup, not counted: {sum(setup.values()):.0f} s")
        for what, secs in setup.items():
            print(f"  {what:<56} {secs:8.1f} s")
    else:
        print("setup: reused the kept day (--keep); this run re-runs the job on it")
    print()
    print(f"{'nightly_audit_job stage (step start -> end)':<46} {'seconds':>9} {'peak RSS':>10}  status")
    for name, s in job["steps"].items():
        secs = f"{s['seconds']:9.1f}" if s.get("seconds") is not None else f"{'-':>9}"
        print(f"  {name:<44} {secs} {gb(s['peak_rss']):>10}  {s.get('status', 'not finished')}")
        if s.get("error"):
            print(f"      error: {s['error'][:600]}")
    checks = job.get("checks", [])
    failed = [c for c in checks if not c["passed"]]
    print(f"  asset checks: {len(checks) - len(failed)} of {len(checks)} passed"
          + (": failed " + ", ".join(f"{c['asset']}/{c['check']}" for c in failed) if failed else ""))
    print(f"  {'the run (RUN_START -> ' + str(job.get('status', 'none')) + ')':<44} "
          f"{job['run_seconds'] if job.get('run_seconds') is not None else float('nan'):9.1f}")
    print(f"  {'the job process (python start -> exit)':<44} {job['wall_seconds']:9.1f}")
    print(f"  peak RSS of the job's process tree: {gb(job['peak_rss'])} (largest single process "
          f"{gb(job['peak_single'])}, ru_maxrss {gb(job['ru_maxrss'])})")
    if job.get("killed"):
        print(f"  STOPPED at {gb(job['killed']['rss'])} (--rss-limit-gb) during {job['killed']['stage']}")
    print(f"  target job <= {TARGET_JOB_SECONDS} s: {met(job['met_seconds'])}; "
          f"target peak RSS <= {TARGET_RSS_GB} GB: {met(job['met_rss'])}")
    f = figures.get("floors")
    if f:
        print()
        print(f"largest pair {f['pair']}: {f['left']:,} x {f['right']:,} entries "
              f"(pairs: {', '.join(f'{n} {a:,}x{b:,}' for n, (a, b) in f['sizes'].items())})")
        for what, key in (("engine, reconcile() (what the asset calls)", "engine"),
                          ("bare DuckDB full outer join on the key", "bare_join"),
                          ("datacompy (pandas) on the same sides", "datacompy")):
            print(f"  {what:<46} {f[key + '_seconds']:8.2f} s  {gb(f[key + '_rss'])} (process peak)")
        print(f"  engine / bare join = {f['engine_over_bare_join']:.1f}x (target <= {TARGET_OVER_JOIN}x): "
              f"{met(f['engine_over_bare_join'] <= TARGET_OVER_JOIN)}")
        print(f"  datacompy / engine = {f['datacompy_over_engine']:.2f}x (target >= {TARGET_SPEEDUP}x): "
              f"{met(f['datacompy_over_engine'] >= TARGET_SPEEDUP)}")
    elif figures.get("floors_error"):
        print(f"\nfloors not measured: {figures['floors_error']}")
    rf = figures.get("record_floor")
    if rf:
        total = sum(rf["seconds"].values())
        print()
        print(f"per-record floor in Python, the job's {rf['records']:,} records (its own process, no engine, "
              f"no entries): {total:.1f} s of the {TARGET_JOB_SECONDS} s target")
        for what, secs in rf["seconds"].items():
            print(f"  {what:<46} {secs:8.2f} s")
    elif figures.get("record_floor_error"):
        print(f"\nper-record floor not measured: {figures['record_floor_error']}")


def job_figures(child: dict) -> dict:
    rss: TreeRss = child["rss"]
    run = run_events(child.get("run_id"))
    steps = {}
    for name, s in sorted(run["steps"].items(), key=lambda kv: kv[1].get("start", float("inf"))):
        start, end = s.get("start"), s.get("end")
        steps[name] = {"seconds": (end - start) if start and end else None, "status": s.get("status"),
                       "error": s.get("error"),
                       "peak_rss": rss.peak_between(start or 0, end or time.time()) if start else 0}
    run_seconds = run["end"] - run["start"] if run.get("start") and run.get("end") else None
    out = {"run_id": run.get("run_id"), "status": run.get("status"), "run_seconds": run_seconds,
           "wall_seconds": child["wall_seconds"], "returncode": child["returncode"], "steps": steps,
           "checks": run.get("checks", []), "peak_rss": rss.peak, "peak_single": rss.peak_single,
           "ru_maxrss": child["ru_maxrss"]}
    ok = child["returncode"] == 0 and child.get("success") and run.get("status") == "RUN_SUCCESS"
    out["success"] = bool(ok)
    out["met_seconds"] = bool(ok and run_seconds is not None and run_seconds <= TARGET_JOB_SECONDS)
    out["met_rss"] = bool(ok and rss.peak <= TARGET_RSS_GB * 10**9)
    if rss.killed:
        at, total = rss.killed
        stage = next((n for n, s in run["steps"].items() if s.get("start", 0) <= at and s.get("end", at + 1) > at),
                     "before the first step")
        out["killed"] = {"rss": total, "stage": stage, "after_seconds": at - child["started"]}
    if child.get("log_tail") and not ok:
        out["log_tail"] = child["log_tail"]
    return out


def drop_index() -> None:
    """The statement index of the bench's files (a cache under LEDGER_STACK_DIR); other entries stay."""
    from ledger_pipelines.config import load_config
    from ledger_pipelines.statement_inbox import StatementInbox

    for lc in (x for x in load_config() if x.kind == "iso20022"):
        inbox = StatementInbox(lc)
        mine = {sha for _, sha in inbox.listing()}
        try:
            present = set(os.listdir(inbox.folder))
        except OSError:
            continue
        inbox.prune(present - mine, older_than=time.time() + 1)


def cleanup_topics(prefix: str) -> None:
    from ledger_pipelines.kafka.topics import admin
    from ledger_pipelines.settings import KafkaSettings

    client = admin(KafkaSettings.from_env())
    topics = [t for t in client.list_topics(timeout=15).topics if t.startswith(prefix)]
    if topics:
        for f in client.delete_topics(topics, operation_timeout=30).values():
            try:
                f.result()
            except Exception:
                pass


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=1.0, help="multiplies the three volumes (0.05: a quick check)")
    ap.add_argument("--keep", metavar="DIR", help="build the day in DIR and keep it (reused when run again)")
    ap.add_argument("--json", metavar="PATH", help="write the figures to PATH")
    ap.add_argument("--rss-limit-gb", type=float, default=14.0,
                    help="stop the job when its process tree passes this (a shared machine); 0: no limit")
    ap.add_argument("--phase", choices=sorted(PHASES), help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.phase:
        import warnings

        warnings.simplefilter("ignore")
        result = PHASES[args.phase](Path(args.work))
        Path(args.out).write_text(json.dumps(result))
        return 0
    if args.scale <= 0:
        ap.error("--scale must be > 0")

    import logging
    import warnings

    warnings.simplefilter("ignore")
    logging.getLogger().setLevel(logging.WARNING)
    for noisy in ("great_expectations", "alembic", "dagster"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from ledger_pipelines.local import demo
    from ledger_pipelines.local.stack import StackConfig

    cfg = StackConfig.from_env()
    work = Path(args.keep).resolve() if args.keep else Path(tempfile.mkdtemp(prefix="bench-nightly-", dir=cfg.root))
    marker = work / MARKER
    state = None
    if args.keep and marker.exists():
        state = json.loads(marker.read_text())
        try:
            rpc = demo.Rpc(cfg.anvil_url)
            chain = f"{rpc.call('eth_chainId', [])}:{rpc.call('eth_getBlockByNumber', ['0x0', False])['hash']}"
        except Exception:
            chain = None
        if not state.get("complete") or state.get("scale") != args.scale or chain != state.get("chain"):
            print(f"{work}: the kept day is incomplete, of another scale or its chain is gone: building it again")
            state = None
    elif args.keep and work.exists() and any(work.iterdir()):
        raise SystemExit(f"{work} is not empty and not a day this bench built: refusing to replace it")
    print(f"building one day at scale {args.scale} in {work} (setup, not counted)", flush=True)
    t_setup = time.monotonic()
    if state is None:
        state = setup(work, args.scale)
        marker.write_text(json.dumps(state, indent=2))
        print(f"setup done in {time.monotonic() - t_setup:.0f} s", flush=True)
        reused = False
    else:
        reused = True
    os.environ.update(demo.demo_env(work, state["prefix"]))
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    day = state["day"]
    figures = {"scale": args.scale, "day": day, "work": str(work), "cores": os.cpu_count(),
               "setup_seconds": {} if reused else state["setup_seconds"], "reused_day": reused,
               "volumes": volumes(day)}

    print(f"running {JOB} for {day} (timed) ...", flush=True)
    limit = int(args.rss_limit_gb * 2**30) if args.rss_limit_gb else None
    figures["job"] = job_figures(run_child("job", work, env, limit))
    if figures["job"]["success"]:
        try:
            print("the largest pair: engine, bare join, datacompy (each in its own process) ...", flush=True)
            engine = run_child("engine", work, env)
            bare = run_child("bare_join", work, env) if engine["returncode"] == 0 else engine
            base = run_child("datacompy", work, env) if bare["returncode"] == 0 else bare
            for c in (engine, bare, base):
                if c["returncode"] != 0:
                    raise RuntimeError(f"phase {c['phase']} failed: {c.get('log_tail', '')[-1500:]}")
            figures["floors"] = {
                "pair": engine["pair"], "left": engine["left"], "right": engine["right"], "sizes": engine["sizes"],
                "engine_seconds": engine["seconds"], "engine_rss": engine["peak_rss"],
                "engine_counts": engine["counts"],
                "bare_join_seconds": bare["seconds"], "bare_join_rss": bare["peak_rss"],
                "datacompy_seconds": base["seconds"], "datacompy_rss": base["peak_rss"],
                "engine_over_bare_join": engine["seconds"] / max(bare["seconds"], 1e-4),
                "datacompy_over_engine": base["seconds"] / max(engine["seconds"], 1e-4)}
        except Exception as exc:
            figures["floors_error"] = str(exc)
        recs = run_child("records", work, env)
        if recs["returncode"] == 0:
            figures["record_floor"] = {"records": recs["records"], "seconds": recs["seconds"]}
        else:
            figures["record_floor_error"] = recs.get("log_tail", "")[-1500:]
    else:
        figures["floors_error"] = "the job failed (the floors need its snapshots)"
    report(figures)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2, default=str))
    if not args.keep:
        for clean in (drop_index, lambda: cleanup_topics(state["prefix"])):
            try:
                clean()
            except Exception as exc:
                print(f"cleanup: {exc}")
        shutil.rmtree(work, ignore_errors=True)
    return 0 if figures["job"]["success"] else 1


if __name__ == "__main__":
    sys.exit(main())
