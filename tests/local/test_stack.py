"""The local stack's own helpers (the services themselves are exercised by every integration test)."""

from __future__ import annotations

import uuid

import pytest

from ledger_pipelines.local import stack


def test_kafka_cluster_ids_never_start_with_a_dash(monkeypatch):
    """The storage tool takes an id starting with '-' for an option; such ids are drawn again."""
    dashed = uuid.UUID(bytes=b"\xf8" + bytes(15))  # URL-safe base64 '-...'
    plain = uuid.UUID(bytes=b"\x00" + bytes(15))
    draws = iter([dashed, dashed, plain])
    monkeypatch.setattr(stack.uuid, "uuid4", lambda: next(draws))
    cluster_id = stack.kafka_cluster_id()
    assert cluster_id == "AAAAAAAAAAAAAAAAAAAAAA" and len(cluster_id) == 22
    monkeypatch.undo()
    assert all(not stack.kafka_cluster_id().startswith("-") for _ in range(2000))


_LEADER_EXITS_FIRST = """
import ctypes, sys, threading, time
threading.Thread(target=time.sleep, args=(float(sys.argv[1]),)).start()
print("ready", flush=True)
ctypes.CDLL(None).pthread_exit(None)  # the leader thread ends; the process lives on in the other one
"""


def test_a_process_whose_leader_thread_exited_is_alive_until_its_last_thread_ends():
    """A JVM shutting down shows its leader thread as a zombie while its other threads still hold the
    ports: that process is alive, and only a process whose every thread has exited is dead."""
    import subprocess
    import sys
    import time
    from pathlib import Path

    proc = subprocess.Popen([sys.executable, "-c", _LEADER_EXITS_FIRST, "3"], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    deadline = time.monotonic() + 5
    while Path(f"/proc/{proc.pid}/stat").read_text().split(")")[-1].split()[0] != "Z":
        assert time.monotonic() < deadline, "the leader thread did not exit"
        time.sleep(0.02)
    assert stack._pid_alive(proc.pid)  # leader is "Z", the sleeping thread runs
    deadline = time.monotonic() + 10
    while stack._pid_alive(proc.pid):
        assert time.monotonic() < deadline, "the process did not end"
        time.sleep(0.05)
    assert proc.wait(timeout=5) == 0  # a zombie now, reaped here


@pytest.mark.parametrize("name, value, reason", [
    ("LEDGER_STACK_HOST", "0.0.0.0", "not a loopback address"),
    ("LEDGER_STACK_HOST", "10.0.0.5", "not a loopback address"),
    ("LEDGER_STACK_HOST", "::1", "not a loopback address"),
    ("LEDGER_STACK_HOST", "127.0.0.1,0.0.0.0", "not an IP address"),
    ("LEDGER_STACK_HOST", "127.0.0.1\nauto.create.topics.enable=true", "not an IP address"),
    ("LEDGER_KAFKA_PORT", "19092\nlisteners=PLAINTEXT://0.0.0.0:9", "not a port number"),
    ("LEDGER_PG_PORT", "70000", "not a port number"),
    ("LEDGER_KAFKA_HEAP", "768m -Dx=y", "not a heap size"),
])
def test_the_stack_settings_refuse_what_would_expose_or_rewrite_a_service(monkeypatch, name, value, reason):
    from ledger_pipelines.settings import SettingsError

    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=reason):
        stack.StackConfig.from_env()


def test_loopback_hosts_are_accepted(monkeypatch):
    for host in ("127.0.0.1", "127.0.0.2"):
        monkeypatch.setenv("LEDGER_STACK_HOST", host)
        assert stack.StackConfig.from_env().host == host
