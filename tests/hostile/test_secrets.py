"""Secrets stay secret: masked wherever a URL is rendered, files private from their first byte,
never on a child's command line, never in the environment of a service that does not need them."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from ledger_pipelines.local import stack
from ledger_pipelines.resources import WarehouseResource
from ledger_pipelines.settings import KafkaSettings, redact_url
from ledger_pipelines.warehouse import Warehouse

SECRET = "s3cret-Zq9"
REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("url", [
    f"postgresql://ledger@db.internal:5432/ledger?password={SECRET}",
    f"postgresql://ledger@db.internal/ledger?sslmode=require&PASSWORD={SECRET}",
    f"postgresql+psycopg://ledger:{SECRET}@db.internal/ledger",
    f"postgresql://ledger:{SECRET}@db.internal/ledger?password={SECRET}&sslpassword={SECRET}",
    # an unescaped "@" in the password: parsers split there and take the rest for the host
    "postgresql://ledger:s3cret@Zq9@db.internal/ledger",
])
def test_warehouse_describe_masks_every_password(url, monkeypatch):
    wh = Warehouse(url)  # no connection is opened
    try:
        shown = [wh.describe(), repr(wh)]
        monkeypatch.setenv("HOSTILE_WAREHOUSE_URL", url)
        shown.append(WarehouseResource(url_env="HOSTILE_WAREHOUSE_URL").describe())  # Dagster metadata
        for text in shown:
            assert "Zq9" not in text and "s3cret" not in text, text
            assert "db.internal" in text and "***" in text
    finally:
        wh.dispose()


def test_redaction_keeps_what_is_not_a_password():
    assert redact_url("sqlite:////data/a@b/warehouse.db") == "sqlite:////data/a@b/warehouse.db"
    assert redact_url("http://127.0.0.1:8545") == "http://127.0.0.1:8545"
    shown = redact_url("postgresql://ledger@h/db?sslmode=require&application_name=ingest")
    assert "sslmode=require" in shown and "application_name=ingest" in shown
    assert redact_url(f"host=h password={SECRET} dbname=ledger") == "host=h password=*** dbname=ledger"


# Runs in a child under umask 0 (a plain create would then be world-readable). An audit hook
# looks at the secret files at every file operation of the child, so a file that ever had group
# or world permissions (created, then chmod-ed) is seen with them.
_WATCH = r"""
import json, os, stat, sys
from pathlib import Path
root = Path(sys.argv[1]); names = ("postgres.secret", "pwfile")
seen, busy = [], [False]
def look(event, args):
    if busy[0]:
        return
    busy[0] = True
    try:
        for d in (root, root / "postgres"):
            for name in (os.listdir(d) if d.is_dir() else ()):
                if name.startswith(names):
                    try:
                        seen.append([name, stat.S_IMODE(os.stat(d / name).st_mode), event])
                    except FileNotFoundError:
                        pass
    finally:
        busy[0] = False
sys.addaudithook(look)
os.umask(0)
from ledger_pipelines.local import stack
cfg = stack.StackConfig.from_env()
out = {"password": cfg.pg_password()}
if len(sys.argv) > 2:
    svc = stack.Postgres(cfg)
    svc.start(timeout=120)
    try:
        env = Path(f"/proc/{svc.pid()}/environ").read_bytes().split(b"\0")
        out["env"] = sorted(e.decode("utf-8", "replace") for e in env if e)
    finally:
        svc.stop()
out["seen"] = seen
print(json.dumps(out))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _watch(root: Path, *extra: str, env: dict | None = None) -> dict:
    env = {**os.environ, "LEDGER_STACK_DIR": str(root), **(env or {})}
    env.pop("LEDGER_PG_PASSWORD", None)
    r = subprocess.run([sys.executable, "-c", _WATCH, str(root), *extra], capture_output=True, text=True,
                       env=env, cwd=REPO, timeout=180)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_generated_pg_password_file_is_private_from_its_first_byte(tmp_path):
    out = _watch(tmp_path)
    assert len(out["password"]) >= 20
    assert (tmp_path / "postgres.secret").read_text().strip() == out["password"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["postgres.secret"]  # no draft left behind
    assert out["seen"], "the audit hook saw no secret file"
    assert all(mode == 0o600 for _, mode, _ in out["seen"]), out["seen"]
    assert _watch(tmp_path)["password"] == out["password"]  # kept, not drawn again


def test_write_secret_refuses_an_existing_file(tmp_path):
    target = tmp_path / "token"
    stack.write_secret(target, "one")
    with pytest.raises(FileExistsError):
        stack.write_secret(target, "two")
    assert target.read_text() == "one"


def test_service_env_keeps_secrets_out(monkeypatch):
    monkeypatch.setenv("LEDGER_WAREHOUSE_URL", f"postgresql://u:{SECRET}@h/db")
    monkeypatch.setenv("LEDGER_ANCHOR_KEY", "0x" + "1" * 64)
    monkeypatch.setenv("LEDGER_PG_PASSWORD", SECRET)
    monkeypatch.setenv("LEDGER_KAFKA_SASL_PASSWORD", SECRET)
    monkeypatch.setenv("LC_ALL", "C.UTF-8")
    env = stack.service_env({"EXTRA": "1"})
    assert env["PATH"] == os.environ["PATH"] and env["LC_ALL"] == "C.UTF-8" and env["EXTRA"] == "1"
    assert not [k for k in env if k.startswith("LEDGER_")]
    assert SECRET not in json.dumps(env)


def _environ(pid: int) -> list[str]:
    return [e.decode("utf-8", "replace") for e in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if e]


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


@pytest.mark.services
def test_started_anvil_does_not_see_secrets(tmp_path, monkeypatch):
    """A second, short-lived anvil on a free port, started by the stack helpers with secrets set."""
    monkeypatch.setenv("LEDGER_ANCHOR_KEY", "0x" + "2" * 64)
    monkeypatch.setenv("LEDGER_WAREHOUSE_URL", f"postgresql://u:{SECRET}@h/db")
    monkeypatch.setenv("LEDGER_PG_PASSWORD", SECRET)
    cfg = stack.StackConfig(root=tmp_path, anvil_port=_free_port())
    svc = stack.Anvil(cfg)
    assert svc.start(timeout=60)
    try:
        pids = [svc.pid()]
        pids += _children(pids[0])  # the npm wrapper and the anvil binary it runs
        for pid in pids:
            env = _environ(pid)
            assert any(e.startswith("PATH=") for e in env)
            assert not [e for e in env if e.startswith("LEDGER_") or SECRET in e], (pid, env)
    finally:
        svc.stop()


@pytest.mark.services
def test_first_postgres_start_keeps_password_files_private_and_env_clean(postgres_service):
    """A second PostgreSQL (initdb with a password file, then the server), in a child under umask 0."""
    # the server runs as the postgres user, which must be able to enter the folder
    root = Path(tempfile.mkdtemp(prefix="hostile-pg-"))
    root.chmod(0o755)
    try:
        out = _watch(root, "postgres", env={"LEDGER_PG_PORT": str(_free_port()),
                                            "LEDGER_WAREHOUSE_URL": f"postgresql://u:{SECRET}@h/db",
                                            "LEDGER_ANCHOR_KEY": "0x" + "3" * 64})
        pwfile = [s for s in out["seen"] if s[0] == "pwfile"]
        assert pwfile, "the audit hook never saw the initdb password file"
        assert all(mode == 0o600 for _, mode, _ in out["seen"]), out["seen"]
        assert not (root / "postgres" / "pwfile").exists()
        assert any(e.startswith("PATH=") for e in out["env"])
        assert not [e for e in out["env"] if e.startswith("LEDGER_") or SECRET in e or out["password"] in e]
    finally:
        subprocess.run(["rm", "-rf", str(root)], check=False)


def _bench_module():
    spec = importlib.util.spec_from_file_location("bench_event_log", REPO / "bench" / "bench_event_log.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_phase_child_gets_no_secret_on_its_command_line(monkeypatch):
    """The event-log bench runs each phase in a child; its spec holds the database URL and Kafka
    password, which must not be in argv (``ps`` shows argv to every user)."""
    import psutil

    bench = _bench_module()
    sampled = {}
    real = bench.tree_peak_rss

    def sample(proc):
        p = psutil.Process(proc.pid)
        sampled["cmdline"] = p.cmdline()
        sampled["environ"] = p.environ()
        return real(proc)

    monkeypatch.setattr(bench, "tree_peak_rss", sample)
    kafka = KafkaSettings("127.0.0.1:1", sasl_password=SECRET)
    out = bench.run_phase("baseline", kafka, {}, url=f"postgresql://u:{SECRET}@h/db")
    assert "per_second" in out  # the child read its spec and ran
    assert sampled["cmdline"][-1] == "--phase"
    assert not [a for a in sampled["cmdline"] if SECRET in a], sampled["cmdline"]
    assert SECRET in sampled["environ"][bench.PHASE_ENV]
