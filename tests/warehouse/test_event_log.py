"""The event log on the real broker, into SQLite and PostgreSQL: exactly once, through crashes."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time

import msgspec
import psutil
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from ledger_pipelines.generate import synthetic_entries
from ledger_pipelines.ingest import DEFAULT_CONSUMER, WORKER_STOP_GRACE, EventLogIngestor
from ledger_pipelines.kafka import EntryProducer, end_offsets, ensure_topics, entries_topic
from ledger_pipelines.kafka.topics import dlq_topic
from ledger_pipelines.model import encode_entry, make_entry, to_dict
from ledger_pipelines.warehouse import ConcurrentIngestError, Warehouse

pytestmark = pytest.mark.services
LEDGER = "core_banking"


def _publish(kafka, count, start=0):
    ensure_topics(kafka, [LEDGER])
    return EntryProducer(kafka, "test").publish(synthetic_entries(LEDGER, count, start=start))


def _offsets_consistent(wh: Warehouse, kafka) -> None:
    """Stored offsets equal the end offsets, and every offset below them is a row or a set-aside record."""
    stored = wh.stored_offsets(DEFAULT_CONSUMER)
    ends = end_offsets(kafka)
    assert stored == ends
    accounted = wh.scalar("SELECT count(*) FROM ledger_event_log") + wh.scalar(
        "SELECT count(*) FROM ledger_rejected_events") + wh.scalar("SELECT count(*) FROM ledger_entry_conflicts")
    assert accounted <= sum(ends.values())


def test_n_entries_exactly_n_rows(kafka, warehouse):
    n = 12_345
    assert _publish(kafka, n) == n
    ends = end_offsets(kafka)
    assert len(ends) == 4 and all(v > 0 for v in ends.values()), ends
    result = EventLogIngestor(kafka, warehouse, batch_size=1000).run(ends)
    assert result.counts.inserted == n and result.consumed == n
    assert warehouse.event_counts() == {"events": n, "distinct_entries": n, "rejected": 0, "conflicts": 0}
    assert sum(result.lag.values()) == 0
    _offsets_consistent(warehouse, kafka)
    # amounts come back exact, to the cent
    expected = {e.entry_id: e.amount for e in synthetic_entries(LEDGER, n)}
    stored = dict(warehouse.rows("SELECT entry_id, amount FROM ledger_event_log"))
    assert {k: f"{v}" for k, v in stored.items()} == expected
    # the same targets again: nothing to do, nothing changes
    again = EventLogIngestor(kafka, warehouse).run(ends)
    assert again.consumed == 0 and again.counts.inserted == 0
    assert warehouse.event_counts()["events"] == n


def test_republished_entries_count_once_and_conflicts_are_kept_apart(kafka, warehouse):
    entries = list(synthetic_entries(LEDGER, 100))
    ensure_topics(kafka, [LEDGER])
    producer = EntryProducer(kafka, "test")
    producer.publish(entries)
    EventLogIngestor(kafka, warehouse).run()
    # identical re-publication (a publisher that crashed before saving its cursor)
    producer.publish(entries[:40])
    # a new version: same economics, new lifecycle status
    d = to_dict(entries[50]) | {"status": "reversed"}
    producer.publish([make_entry(**d)])
    # a conflict: same id, different amount and account; also repeated inside one batch
    bad = to_dict(entries[60]) | {"amount": "1.00", "account": "DE00000000000000000000"}
    producer.publish([make_entry(**bad), make_entry(**bad)])
    result = EventLogIngestor(kafka, warehouse).run()
    assert result.counts.duplicates == 40
    assert result.counts.inserted == 1
    assert result.counts.conflicts == 2
    counts = warehouse.event_counts()
    assert counts == {"events": 101, "distinct_entries": 100, "rejected": 0, "conflicts": 2}
    fields = warehouse.rows("SELECT DISTINCT differing_fields FROM ledger_entry_conflicts")
    assert fields == [("account,amount",)]
    # the stored amount of the conflicting entry is the original one
    amount = warehouse.scalar("SELECT amount FROM ledger_event_log WHERE entry_id = :e", e=entries[60].entry_id)
    assert f"{amount}" == entries[60].amount
    statuses = warehouse.rows(
        "SELECT status FROM ledger_event_log WHERE entry_id = :e ORDER BY kafka_offset", e=entries[50].entry_id)
    assert statuses == [("booked",), ("reversed",)]
    _offsets_consistent(warehouse, kafka)


def _dlq_records(kafka, expected: int, timeout: float = 30.0) -> list[dict]:
    c = Consumer({"bootstrap.servers": kafka.bootstrap_servers, "group.id": "t", "enable.auto.commit": False})
    parts = end_offsets(kafka, {dlq_topic(kafka): kafka.partitions})
    c.assign([TopicPartition(t, p, 0) for t, p in parts])
    out, deadline = [], time.monotonic() + timeout
    while len(out) < expected and time.monotonic() < deadline:
        for m in c.consume(100, timeout=0.5):
            if not m.error():
                out.append(msgspec.json.decode(m.value()) | {"_key": m.key().decode()})
    c.close()
    return out


def test_malformed_messages_go_to_the_dlq_with_reasons(kafka, warehouse):
    ensure_topics(kafka, [LEDGER])
    good = list(synthetic_entries(LEDGER, 6))
    template = to_dict(good[0])
    bad_payloads = {
        "not-json": b"{this is not json",
        "schema": msgspec.json.encode(template | {"schema_version": 2, "entry_id": f"{LEDGER}:x1", "source_ref": "x1"}),
        "float": msgspec.json.encode(template | {"amount": 12.5, "entry_id": f"{LEDGER}:x2", "source_ref": "x2"}),
        "negative": msgspec.json.encode(template | {"amount": "-5.00", "entry_id": f"{LEDGER}:x3", "source_ref": "x3"}),
        "missing": msgspec.json.encode({k: v for k, v in template.items() if k != "direction"}
                                       | {"entry_id": f"{LEDGER}:x4", "source_ref": "x4"}),
        "huge": b'{"pad":"' + b"x" * (10 * 1024 * 1024) + b'"}',
        "nul": msgspec.json.encode(template | {"account": "DE\x0012", "entry_id": f"{LEDGER}:x5", "source_ref": "x5"}),
        "wrong-ledger": msgspec.json.encode(template | {"ledger": "other", "entry_id": "other:" + template["source_ref"]}),
    }
    p = Producer({"bootstrap.servers": kafka.bootstrap_servers, "message.max.bytes": 16 * 1024 * 1024})
    topic = entries_topic(kafka, LEDGER)
    # interleave: good, bad, good, bad ... all to one partition so the order is known
    for i, (name, payload) in enumerate(bad_payloads.items()):
        if i < len(good):
            p.produce(topic, encode_entry(good[i]), good[i].entry_id.encode(), partition=0)
        p.produce(topic, payload, name.encode(), partition=0)
    p.produce(topic, None, b"tombstone", partition=0)
    assert p.flush(30) == 0
    result = EventLogIngestor(kafka, warehouse).run()
    assert result.counts.inserted == len(good)
    assert result.counts.rejected == len(bad_payloads) + 1
    reasons = dict(warehouse.rows("SELECT message_key, error FROM ledger_rejected_events"))
    assert "not valid JSON" in reasons["not-json"]
    assert "schema_version" in reasons["schema"]
    assert "amount" in reasons["float"] and "JSON number" in reasons["float"]
    assert "amount" in reasons["negative"]
    assert "direction" in reasons["missing"]
    assert "exceeds" in reasons["huge"] and str(10 * 1024 * 1024 + 10) in reasons["huge"]
    assert "does not belong" in reasons["wrong-ledger"]
    assert "NUL" in reasons["nul"]
    assert "tombstone" in reasons["tombstone"]
    sizes = dict(warehouse.rows("SELECT message_key, payload_size FROM ledger_rejected_events"))
    assert sizes["huge"] == 10 * 1024 * 1024 + 10
    dlq = _dlq_records(kafka, len(bad_payloads) + 1)
    assert len(dlq) == len(bad_payloads) + 1
    assert all(r["error"] and r["ledger"] == LEDGER and r["source"].startswith("kafka:") for r in dlq)
    huge = [r for r in dlq if r["payload_size"] == 10 * 1024 * 1024 + 10]
    assert huge and huge[0]["payload_truncated"] is True
    _offsets_consistent(warehouse, kafka)


def test_transaction_markers_do_not_stall_ingest(kafka, warehouse):
    ensure_topics(kafka, [LEDGER])
    topic = entries_topic(kafka, LEDGER)
    p = Producer({"bootstrap.servers": kafka.bootstrap_servers, "transactional.id": f"tx-{kafka.topic_prefix}"})
    p.init_transactions(30)
    entries = list(synthetic_entries(LEDGER, 30))
    for chunk in (entries[:10], entries[10:20]):
        p.begin_transaction()
        for e in chunk:
            p.produce(topic, encode_entry(e), e.entry_id.encode())
        p.commit_transaction(30)
    p.begin_transaction()  # aborted: must never reach the event log
    for e in entries[20:]:
        p.produce(topic, encode_entry(e), e.entry_id.encode())
    p.abort_transaction(30)
    ends = end_offsets(kafka)
    assert sum(ends.values()) > 20  # markers take offsets of their own
    result = EventLogIngestor(kafka, warehouse, stall_timeout=20).run(ends)
    assert result.counts.inserted == 20
    assert warehouse.stored_offsets(DEFAULT_CONSUMER) == ends


def _ingest_cmd(kafka, url, batch=2000, processes=1):
    env = {**os.environ, "LEDGER_KAFKA_BOOTSTRAP": kafka.bootstrap_servers, "LEDGER_TOPIC_PREFIX": kafka.topic_prefix,
           "LEDGER_WAREHOUSE_URL": url}
    cmd = [sys.executable, "-m", "ledger_pipelines.cli", "ingest", "--batch-size", str(batch),
           "--processes", str(processes)]
    return cmd, env


def _wait_for_rows(wh: Warehouse, proc: subprocess.Popen, rows: int) -> int:
    deadline = time.monotonic() + 120
    seen = 0
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            seen = wh.scalar("SELECT count(*) FROM ledger_event_log")
        except Exception:
            seen = 0  # schema not created yet
        if seen >= rows:
            break
        time.sleep(0.05)
    assert proc.poll() is None, f"ingest finished before it could be killed ({seen} rows): {proc.stderr.read()!r}"
    return seen


def _committed_then_rerun(wh: Warehouse, kafka, warehouse_url: str, cmd, env, n: int) -> None:
    """After a kill: every stored offset is backed by exactly its rows; a re-run takes exactly the rest."""
    if warehouse_url.startswith("postgresql"):
        _wait_for_other_sessions_to_end(wh)
    partial = wh.scalar("SELECT count(*) FROM ledger_event_log")
    assert 0 < partial < n, partial
    _offsets_backed_by_rows(wh)
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    out = msgspec.json.decode(rerun.stdout.strip().splitlines()[-1])
    assert out["rows"] == n - partial and out["duplicates"] == 0
    assert wh.event_counts() == {"events": n, "distinct_entries": n, "rejected": 0, "conflicts": 0}
    _offsets_consistent(wh, kafka)


def _offsets_backed_by_rows(wh: Warehouse) -> None:
    """Each partition's stored offset (all published from offset 0, no rejects) is exactly its rows."""
    stored = wh.stored_offsets(DEFAULT_CONSUMER)
    rows = {(t, p): n for t, p, n in wh.rows("SELECT topic, kafka_partition, count(*) FROM ledger_event_log "
                                             "GROUP BY topic, kafka_partition")}
    assert {tp: off for tp, off in stored.items() if off} == rows, (stored, rows)


def _wait_for_other_sessions_to_end(wh: Warehouse, timeout: float = 60.0) -> None:
    """A killed client's server session can still be finishing its last statement (under load)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        others = wh.scalar("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                           "AND pid <> pg_backend_pid()")
        if others == 0:
            return
        time.sleep(0.2)
    raise AssertionError("sessions of the killed ingest did not end")


@pytest.mark.parametrize("processes", [1, 2])
def test_sigkill_mid_run_then_rerun_is_exactly_once(kafka, warehouse_url, processes):
    n = 150_000
    _publish(kafka, n)
    cmd, env = _ingest_cmd(kafka, warehouse_url, processes=processes)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wh = Warehouse(warehouse_url)
    _wait_for_rows(wh, proc, 10_000)
    workers = psutil.Process(proc.pid).children(recursive=True)
    # one process: nothing of the run besides it; two: its two workers, which leave when it dies
    assert len(workers) == (0 if processes == 1 else 2), workers
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    _, alive = psutil.wait_procs(workers, timeout=WORKER_STOP_GRACE + 10)
    assert not alive, f"workers outlived the killed run: {alive}"
    _committed_then_rerun(wh, kafka, warehouse_url, cmd, env, n)
    wh.dispose()


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_a_killed_or_stopped_worker_fails_the_run_and_a_rerun_is_exactly_once(kafka, warehouse_url, sig):
    """A worker killed (SIGKILL) or stopped on its own (SIGTERM: it commits its batch in flight and
    ends) before its share is read fails the run by name; the other worker is stopped after its batch
    in flight, and a rerun takes exactly the rest."""
    n = 150_000
    _publish(kafka, n)
    cmd, env = _ingest_cmd(kafka, warehouse_url, processes=2)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wh = Warehouse(warehouse_url)
    _wait_for_rows(wh, proc, 10_000)
    workers = psutil.Process(proc.pid).children(recursive=True)
    assert len(workers) == 2, workers
    os.kill(workers[0].pid, sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    # the run names the worker, its partitions and how it ended; the other worker is stopped too
    how = "exited with status -9" if sig == signal.SIGKILL else "stopped by a signal before its share was read"
    assert "ingest worker" in err and how in err and f"{kafka.topic_prefix}" in err, err[-2000:]
    # the other worker was asked to stop and did, after its batch in flight (status 0, not killed)
    if sig == signal.SIGKILL:
        assert ("exit statuses [-9, 0]" in err) != ("exit statuses [0, -9]" in err), err[-2000:]
    else:
        assert "exit statuses [0, 0]" in err, err[-2000:]
    assert err.count("ingest stopped on request") == (1 if sig == signal.SIGKILL else 2), err[-2000:]
    _, alive = psutil.wait_procs(workers, timeout=WORKER_STOP_GRACE + 10)
    assert not alive, alive
    _committed_then_rerun(wh, kafka, warehouse_url, cmd, env, n)
    wh.dispose()


def test_ctrl_c_stops_the_workers_after_their_batch_in_flight(kafka, warehouse_url):
    """Ctrl-C reaches the run's whole process group: the workers (sessions of their own) are not cut
    off mid-batch by it but asked by the run to stop, and end on their own after committing."""
    n = 150_000
    _publish(kafka, n)
    cmd, env = _ingest_cmd(kafka, warehouse_url, processes=2)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # a process group of its own, as a terminal gives
    wh = Warehouse(warehouse_url)
    _wait_for_rows(wh, proc, 10_000)
    workers = psutil.Process(proc.pid).children(recursive=True)
    assert len(workers) == 2, workers
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert "exit statuses [0, 0]" in err and err.count("ingest stopped on request") == 2, err[-2000:]
    _committed_then_rerun(wh, kafka, warehouse_url, cmd, env, n)
    wh.dispose()


def test_two_processes_ingest_exactly_what_one_would(kafka, warehouse):
    n = 12_345
    _publish(kafka, n)
    ends = end_offsets(kafka)
    progress = []
    result = EventLogIngestor(kafka, warehouse, batch_size=1000, processes=2, records_per_process=1000,
                              progress=lambda r: progress.append(r.consumed)).run(ends)
    assert result.counts.inserted == n and result.consumed == n
    # two workers ran, each committed batches of its own, and every batch came back to the run
    assert len(result.worker_batches) == 2 and all(b > 0 for b in result.worker_batches), result.worker_batches
    assert sum(result.worker_batches) == result.batches == len(progress) and progress[-1] == n
    assert warehouse.event_counts() == {"events": n, "distinct_entries": n, "rejected": 0, "conflicts": 0}
    _offsets_consistent(warehouse, kafka)
    expected = {e.entry_id: e.amount for e in synthetic_entries(LEDGER, n)}
    stored = dict(warehouse.rows("SELECT entry_id, amount FROM ledger_event_log"))
    assert {k: f"{v}" for k, v in stored.items()} == expected
    again = EventLogIngestor(kafka, warehouse, processes=2).run(ends)
    assert again.consumed == 0 and again.counts.inserted == 0


def test_a_failing_run_stops_its_workers_after_their_batch_in_flight(kafka, warehouse, caplog):
    """The run fails while its workers ingest (here: its progress callback raises after the first
    batch): each worker is asked to stop, commits the batch it is writing and ends on its own (no kill);
    every stored offset is backed by exactly its rows, and a rerun takes exactly the rest."""
    from ledger_pipelines.ingest import IngestOptions, _shares, consume_in_processes

    n = 60_000
    _publish(kafka, n)
    ends = end_offsets(kafka)
    warehouse.create_schema()
    warehouse.init_offsets(DEFAULT_CONSUMER, ends)
    todo = {tp: (0, off) for tp, off in ends.items()}

    class Boom(Exception):
        pass

    def fail(counts, read):
        raise Boom()

    t0 = time.monotonic()
    with pytest.raises(Boom), caplog.at_level("INFO", logger="ledger_pipelines.ingest"):
        consume_in_processes(kafka, warehouse.url, _shares(todo, 2), IngestOptions(batch_size=500), fail)
    # both stopped on request (status 0: neither exited at the end of its grace, status 3, nor was killed)
    assert time.monotonic() - t0 < WORKER_STOP_GRACE
    assert "ingest workers stopped: exit statuses [0, 0]" in caplog.text, caplog.text
    partial = warehouse.scalar("SELECT count(*) FROM ledger_event_log")
    assert 0 < partial < n, partial
    _offsets_backed_by_rows(warehouse)
    rest = EventLogIngestor(kafka, warehouse, processes=2).run(ends)
    assert rest.counts.inserted == n - partial and rest.counts.duplicates == 0
    assert warehouse.event_counts() == {"events": n, "distinct_entries": n, "rejected": 0, "conflicts": 0}


def test_a_worker_s_own_error_fails_the_run_by_name(kafka):
    """A worker that cannot reach the warehouse: the run fails with that worker's error, not a bare
    exit status, and the URL's password is not in it."""
    from ledger_pipelines.ingest import IngestOptions, IngestWorkerFailed, consume_in_processes

    _publish(kafka, 10)
    ends = end_offsets(kafka)
    todo = {tp: (0, off) for tp, off in ends.items()}
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens there once the socket is closed
    url = f"postgresql://ledger:s3cret-pw@127.0.0.1:{port}/nowhere"
    shares = [dict(list(todo.items())[:2]), dict(list(todo.items())[2:])]
    with pytest.raises(IngestWorkerFailed) as failed:
        consume_in_processes(kafka, url, shares, IngestOptions(), lambda c, r: None)
    text = str(failed.value)
    # both workers fail alike; the run names the first one it saw end
    assert re.search(r"ingest worker [12] of 2 \(partitions ", text), text
    assert "OperationalError" in text and str(port) in text, text
    assert "s3cret-pw" not in text


def test_a_worker_s_error_text_masks_the_spec_s_credentials():
    """Whatever a driver puts in its error (the URL, the password as given or percent-encoded), the
    worker's error line and logged traceback carry no credential of its spec."""
    from ledger_pipelines.ingest_worker import error_text

    spec = {"warehouse_url": "postgresql://ledger:p%40ss%2Fw0rd@db.internal:5432/ledger?sslpassword=k3y-pass",
            "kafka": {"sasl_password": "sasl-s3cret"}}
    raw = ("OperationalError: cannot connect to postgresql://ledger:p%40ss%2Fw0rd@db.internal:5432/ledger"
           "?sslpassword=k3y-pass as ledger/p@ss/w0rd; SASL sasl-s3cret refused; p%40ss%2Fw0rd again")
    text = error_text(raw, spec)
    for secret in ("p@ss/w0rd", "p%40ss%2Fw0rd", "k3y-pass", "sasl-s3cret"):
        assert secret not in text, text
    assert "db.internal:5432/ledger" in text and "***" in text
    assert len(error_text("x" * 10_000, spec)) == 2003 and len(error_text("x" * 10_000, spec, None)) == 10_000


def test_a_small_run_reads_in_its_own_process(kafka, warehouse):
    """A sensor's run of a few thousand entries starts no worker (a worker costs about a second)."""
    n = 5_000
    _publish(kafka, n)
    result = EventLogIngestor(kafka, warehouse, processes=2).run(end_offsets(kafka))
    assert result.counts.inserted == n and result.worker_batches == [result.batches]


def test_ingest_processes_are_validated():
    from ledger_pipelines.ingest import IngestOptions

    for bad in (0, 17, -1, "2", 1.5):
        with pytest.raises(ValueError, match="ingest processes"):
            IngestOptions(processes=bad)
    for bad in (0, -5, 2.5, "1000"):
        with pytest.raises(ValueError, match="records_per_process"):
            IngestOptions(records_per_process=bad)
    # a process per 50,000 records to read, at least one, at most the processes asked for
    four = IngestOptions(processes=4)
    assert [four.processes_for(n) for n in (0, 49_999, 50_000, 99_999, 100_000, 149_999, 150_000, 10**7)] == [
        1, 1, 1, 1, 2, 2, 3, 4]
    assert IngestOptions(processes=1).processes_for(10**7) == 1


@pytest.fixture
def own_kafka(kafka_service, stack_config, tmp_path):
    """A broker of this test's own (own folder, own ports, the installed jars): stopping it can never
    take the session's broker, and every test after this one, down with it."""
    import dataclasses
    import socket

    from ledger_pipelines.settings import KafkaSettings
    from ledger_pipelines.local.stack import Kafka

    def free_port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    root = tmp_path / "stack"
    cfg = dataclasses.replace(stack_config, root=root, kafka_port=free_port(), kafka_controller_port=free_port())
    svc = Kafka(cfg)  # the jars of the repository's stack (stack.jar_dir)
    assert svc.libdir == kafka_service.libdir
    svc.start(timeout=180)
    try:
        yield svc, KafkaSettings(bootstrap_servers=cfg.kafka_bootstrap, topic_prefix="restart.", partitions=4)
    finally:
        svc.stop(timeout=5)  # a throwaway broker: no need to wait out its orderly shutdown


def test_broker_restart_between_runs(own_kafka, tmp_path):
    svc, kafka = own_kafka
    wh = Warehouse(f"sqlite:///{tmp_path / 'w.db'}")
    _publish(kafka, 5000)
    assert EventLogIngestor(kafka, wh).run().counts.inserted == 5000
    broker_pid = svc.pid()
    svc.stop()
    assert not svc.running()
    # stopped and reaped: no zombie child left to this process (which started the broker)
    assert broker_pid not in {c.pid for c in psutil.Process().children()}
    svc.start(timeout=180)
    _publish(kafka, 3000, start=5000)
    result = EventLogIngestor(kafka, wh).run()
    assert result.counts.inserted == 3000 and result.counts.duplicates == 0
    assert wh.event_counts()["events"] == 8000
    _offsets_consistent(wh, kafka)


def test_concurrent_runs_never_write_an_offset_twice(kafka, warehouse_url):
    n = 40_000
    _publish(kafka, n)
    ends = end_offsets(kafka)
    lost_race, unexpected, results = [], [], []

    def run():
        wh = Warehouse(warehouse_url)
        try:
            results.append(EventLogIngestor(kafka, wh, batch_size=500).run(ends))
        except ConcurrentIngestError as exc:
            lost_race.append(exc)
        except Exception as exc:  # anything else is a defect
            unexpected.append(exc)
        finally:
            wh.dispose()

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not unexpected, unexpected
    wh = Warehouse(warehouse_url)
    # a loser (if the two overlapped) stopped at its first stale batch; a re-run finishes the rest
    EventLogIngestor(kafka, wh).run(ends)
    assert wh.event_counts() == {"events": n, "distinct_entries": n, "rejected": 0, "conflicts": 0}
    assert sum(r.counts.inserted for r in results) <= n
    _offsets_consistent(wh, kafka)
    wh.dispose()


def test_daily_reads_select_exactly_the_ledger_day(kafka, warehouse):
    """Days and ledgers interleaved in the log (PostgreSQL reads them through a BRIN index, SQLite
    through a B-tree): a (ledger, day) read returns exactly its entries, each at its latest version."""
    from datetime import date

    from ledger_pipelines.warehouse.state import event_log_day

    days = [date(2026, 11, d) for d in (20, 21, 22)]
    ledgers = [LEDGER, "erp"]
    ensure_topics(kafka, ledgers)
    expected = {}
    for round_ in range(3):  # each round books a slice of every day: the days' rows are interleaved
        for ledger in ledgers:
            batch = [e for day in days for e in synthetic_entries(ledger, 400, day=day, start=round_ * 10_000 + day.day * 1000)]
            EntryProducer(kafka, "test").publish(batch)
            expected.update({(ledger, e.booked_date, e.entry_id): e for e in batch})
    # a later version of one entry (status change): the read takes it
    first = next(iter(expected.values()))
    later = make_entry(**{**to_dict(first), "status": "reversed"})
    EntryProducer(kafka, "test").publish([later])
    expected[(first.ledger, first.booked_date, first.entry_id)] = later
    EventLogIngestor(kafka, warehouse).run()
    for ledger in ledgers:
        for day in days:
            got = {e.entry_id: e for e in event_log_day(warehouse, ledger, day)}
            want = {k[2]: e for k, e in expected.items() if k[0] == ledger and k[1] == day.isoformat()}
            assert len(want) == 1200
            assert got == want


def test_id_array_literal_round_trips_through_postgresql(pg_url):
    """The existing-version lookup sends the batch's ids as one text[] literal: plain ids take the
    fast path, ids with quotes or backslashes are escaped."""
    import psycopg

    from ledger_pipelines.warehouse.writer import _pg_text_array

    with psycopg.connect(pg_url.replace("postgresql+psycopg", "postgresql")) as conn:
        for ids in (["core_banking:1", "core_banking:2"], ['q"uote', "back\\slash", "plain", ""], ['a","b'],
                    ["{brace}", "comma,id", "NULL"], []):
            assert conn.execute("SELECT %s::text[]", (_pg_text_array(ids),)).fetchone()[0] == ids


def test_a_second_stop_signal_during_the_first_never_blocks(monkeypatch):
    """A worker's stop runs in a signal handler: a second signal arriving while the first is handled (same
    thread) returns at once, and one grace timer is started."""
    from ledger_pipelines import ingest_worker

    timers = []
    monkeypatch.setattr(ingest_worker._Stop, "_exit_after_grace", staticmethod(lambda: timers.append(1)))
    stop = ingest_worker._Stop()
    real_set = stop.event.set

    def set_then_signal_again():
        real_set()
        stop()  # the second signal, inside the first handler

    stop.event.set = set_then_signal_again
    done = threading.Event()
    worker = threading.Thread(target=lambda: (stop(), done.set()), daemon=True)
    worker.start()
    assert done.wait(5), "the second stop blocked inside the first"
    worker.join(5)
    time.sleep(0.1)
    assert stop.event.is_set() and timers == [1]
