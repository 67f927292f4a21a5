"""The local stack: a real Kafka broker (KRaft), PostgreSQL and anvil, bound to 127.0.0.1.

Everything lives under a project-local folder (``LEDGER_STACK_DIR``, default ``.stack/`` at the
repository root). ``start`` is idempotent: a service whose pid file points at a live process that
answers is reused. Installation (jars, npm packages, Debian packages) is ``scripts/setup.sh``'s job;
this module only starts, checks and stops.
"""

from __future__ import annotations

import base64
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

from ..settings import REPO_ROOT, StackConfig, write_secret  # noqa: F401 - part of this module's interface

KAFKA_VERSION = "4.4.0"


class StackError(RuntimeError):
    pass


# what a local service needs from this process's environment: search paths, locale, home. The
# pipelines' secrets (LEDGER_*_URL with passwords, LEDGER_*_KEY signing keys, *_PASSWORD) stay
# out: a service never uses them, and its /proc/<pid>/environ is readable by its own user
# (postgres runs as another user than this process)
SERVICE_ENV = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "JAVA_HOME", "LD_LIBRARY_PATH")


def service_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k in SERVICE_ENV or k.startswith("LC_")}
    env.update(extra or {})
    return env


def _port_open(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child still answers kill(0): dead. But the leader thread of a process whose other
    # threads still run (a JVM shutting down after its main thread returned) also shows "Z": the
    # process is alive, holds its ports and files, until its last thread has exited
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return True
    for task in tasks:
        try:
            state = (task / "stat").read_text().split(")")[-1].split()[0]
        except OSError:
            continue  # a thread that just exited
        if state != "Z":
            return True
    return False


class Service:
    name = "service"

    def __init__(self, cfg: StackConfig):
        self.cfg = cfg
        self.dir = cfg.root / self.name
        self.pidfile = cfg.root / "run" / f"{self.name}.pid"
        self.logfile = cfg.root / "logs" / f"{self.name}.log"

    # -- to implement
    def ready(self) -> bool:
        raise NotImplementedError

    def _launch(self) -> subprocess.Popen:
        raise NotImplementedError

    def ports(self) -> list[int]:
        raise NotImplementedError

    # -- shared lifecycle
    def pid(self) -> int | None:
        try:
            pid = int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if _pid_alive(pid) else None

    def running(self) -> bool:
        return self.pid() is not None and self.ready()

    def start(self, timeout: float = 90.0) -> bool:
        """Start the service unless it already runs; returns True when this call started it."""
        if self.running():
            return False
        if self.pid() is None:
            busy = [p for p in self.ports() if _port_open(self.cfg.host, p)]
            if busy:
                raise StackError(
                    f"{self.name}: port(s) {busy} on {self.cfg.host} are taken by another process; "
                    f"set the LEDGER_*_PORT variables to free ports"
                )
            for d in (self.pidfile.parent, self.logfile.parent, self.dir):
                d.mkdir(parents=True, exist_ok=True)
            proc = self._launch()
            self.pidfile.write_text(str(proc.pid))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ready():
                return True
            pid = self.pid()
            if pid is None:
                raise StackError(f"{self.name} exited during start-up; see {self.logfile}:\n{self.tail()}")
            time.sleep(0.3)
        raise StackError(f"{self.name} not ready after {timeout:.0f}s; see {self.logfile}:\n{self.tail()}")

    def stop(self, timeout: float = 30.0) -> bool:
        pid = self.pid()
        if pid is None:
            self.pidfile.unlink(missing_ok=True)
            return False
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _pid_alive(pid):
            time.sleep(0.2)
            _reap(pid)
        if _pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
            killed = time.monotonic() + 10.0
            while time.monotonic() < killed and _pid_alive(pid):
                time.sleep(0.1)
        # the loop ends as soon as the process is a zombie: when this process started it, reap it
        # here (no zombie left behind for as long as this process lives)
        _reap(pid)
        self.pidfile.unlink(missing_ok=True)
        # a launcher (npm's anvil wrapper) may exit before the server it started lets go of the port;
        # its own wait, so that a slow SIGTERM that ended in SIGKILL still waits for the ports
        released = time.monotonic() + 15.0
        while time.monotonic() < released and any(_port_open(self.cfg.host, p) for p in self.ports()):
            time.sleep(0.2)
        return True

    def tail(self, lines: int = 25) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def status(self) -> str:
        pid = self.pid()
        if pid is None:
            return "stopped"
        return f"running (pid {pid})" if self.ready() else f"starting or unhealthy (pid {pid})"

    def _spawn(self, argv: list[str], extra_env: dict | None = None, user: str | None = None) -> subprocess.Popen:
        log = open(self.logfile, "ab")
        kwargs = {}
        if user is not None:
            kwargs["user"] = user
        return subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=self.dir,
            env=service_env(extra_env),
            start_new_session=True,
            **kwargs,
        )


def _reap(pid: int) -> None:
    """Collect the exit status of a child of this process (no zombie left behind); a process that is not
    this process's child is someone else's to reap."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def kafka_cluster_id() -> str:
    """A random cluster id in Kafka's form (URL-safe base64 of 16 bytes), never starting with '-':
    the storage tool's argument parser would take such an id for an option (one format in 64 failed
    that way). Kafka's own Uuid.randomUuid() skips those for the same reason."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


class Kafka(Service):
    name = "kafka"

    def ports(self) -> list[int]:
        return [self.cfg.kafka_port, self.cfg.kafka_controller_port]

    @property
    def libdir(self) -> Path:
        return self.cfg.root / "kafka" / f"lib-{KAFKA_VERSION}"

    def properties(self) -> str:
        c = self.cfg
        data = self.dir / "data"
        return "\n".join(
            [
                "process.roles=broker,controller",
                "node.id=1",
                f"controller.quorum.voters=1@{c.host}:{c.kafka_controller_port}",
                f"listeners=PLAINTEXT://{c.host}:{c.kafka_port},CONTROLLER://{c.host}:{c.kafka_controller_port}",
                f"advertised.listeners=PLAINTEXT://{c.host}:{c.kafka_port}",
                "controller.listener.names=CONTROLLER",
                "inter.broker.listener.name=PLAINTEXT",
                "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
                f"log.dirs={data}",
                "num.partitions=1",
                "offsets.topic.replication.factor=1",
                "offsets.topic.num.partitions=1",
                "transaction.state.log.replication.factor=1",
                "transaction.state.log.min.isr=1",
                "transaction.state.log.num.partitions=1",
                "share.coordinator.state.topic.replication.factor=1",
                "share.coordinator.state.topic.min.isr=1",
                "group.initial.rebalance.delay.ms=0",
                "auto.create.topics.enable=false",
                # entry topics accept large values so that an oversized entry reaches the
                # event log's size check and the dead-letter queue instead of vanishing at produce
                "message.max.bytes=16777216",
                "replica.fetch.max.bytes=16777216",
                "log.retention.hours=-1",
                "",
            ]
        )

    def _launch(self) -> subprocess.Popen:
        if not self.libdir.is_dir() or not any(self.libdir.glob("kafka_2.13-*.jar")):
            raise StackError(f"Kafka jars missing in {self.libdir}: run scripts/setup.sh")
        if shutil.which("java") is None:
            raise StackError("java not found: install a JDK 17 (scripts/setup.sh)")
        props = self.dir / "server.properties"
        props.write_text(self.properties())
        (self.dir / "log4j2.properties").write_text(
            "rootLogger.level=INFO\nrootLogger.appenderRef.stdout.ref=STDOUT\n"
            "appender.stdout.type=Console\nappender.stdout.name=STDOUT\n"
            "appender.stdout.layout.type=PatternLayout\n"
            "appender.stdout.layout.pattern=[%d] %p %m (%c)%n\n"
            "logger.kafka.name=kafka\nlogger.kafka.level=INFO\n"
            "logger.state.name=state.change.logger\nlogger.state.level=WARN\n"
        )
        cp = f"{self.libdir}/*"
        java_opts = ["-Xms256m", f"-Xmx{self.cfg.kafka_heap}", "-XX:+UseG1GC",
                     f"-Dlog4j2.configurationFile={self.dir / 'log4j2.properties'}",
                     "-Djava.awt.headless=true"]
        meta = self.dir / "data" / "meta.properties"
        if not meta.exists():
            cluster_id = kafka_cluster_id()
            fmt = subprocess.run(
                ["java", *java_opts, "-cp", cp, "kafka.tools.StorageTool", "format",
                 "-t", cluster_id, "-c", str(props), "--ignore-formatted"],
                capture_output=True, text=True, cwd=self.dir, env=service_env(),
            )
            if fmt.returncode != 0:
                raise StackError(f"kafka storage format failed:\n{fmt.stdout}\n{fmt.stderr}")
        return self._spawn(["java", *java_opts, "-cp", cp, "kafka.Kafka", str(props)])

    def ready(self) -> bool:
        if not _port_open(self.cfg.host, self.cfg.kafka_port):
            return False
        from confluent_kafka.admin import AdminClient

        try:
            md = AdminClient({"bootstrap.servers": self.cfg.kafka_bootstrap}).list_topics(timeout=3)
        except Exception:
            return False
        return bool(md.brokers)


class Postgres(Service):
    """PostgreSQL from the Debian package, run as the unprivileged ``postgres`` user when root."""

    name = "postgres"

    def ports(self) -> list[int]:
        return [self.cfg.pg_port]

    def _bin(self, tool: str) -> str:
        found = shutil.which(tool)
        if found:
            return found
        for d in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
            if (d / tool).exists():
                return str(d / tool)
        raise StackError(f"{tool} not found: install PostgreSQL (scripts/setup.sh)")

    def _user(self) -> str | None:
        return "postgres" if os.geteuid() == 0 else None

    def _run(self, argv: list[str], **kw) -> subprocess.CompletedProcess:
        user = self._user()
        return subprocess.run(argv, capture_output=True, text=True, user=user, env=service_env(), **kw)

    def _launch(self) -> subprocess.Popen:
        data = self.dir / "data"
        user = self._user()
        if user:
            import pwd

            pw = pwd.getpwnam(user)
            for d in (self.dir, self.logfile.parent):
                os.chown(d, pw.pw_uid, pw.pw_gid)
            self.logfile.touch()
            os.chown(self.logfile, pw.pw_uid, pw.pw_gid)
        if not (data / "PG_VERSION").exists():
            pwfile = self.dir / "pwfile"
            pwfile.unlink(missing_ok=True)  # left by an interrupted start
            write_secret(pwfile, self.cfg.pg_password() + "\n", (pw.pw_uid, pw.pw_gid) if user else None)
            try:
                r = self._run([self._bin("initdb"), "-D", str(data), "-U", self.cfg.pg_user,
                               "--pwfile", str(pwfile), "-A", "scram-sha-256", "-E", "UTF8",
                               "--locale=C.UTF-8"], cwd=self.dir)
            finally:
                pwfile.unlink()
            if r.returncode != 0:
                raise StackError(f"initdb failed:\n{r.stdout}\n{r.stderr}")
            with open(data / "postgresql.conf", "a") as f:
                f.write(
                    f"\nlisten_addresses = '{self.cfg.host}'\nport = {self.cfg.pg_port}\n"
                    f"unix_socket_directories = '{self.dir}'\nmax_connections = 100\n"
                    "shared_buffers = 256MB\nsynchronous_commit = on\nfsync = on\n"
                    "max_wal_size = 2GB\nlog_min_messages = warning\n"
                )
        # postgres (not pg_ctl) so that the pid file holds the server's own pid; host and port on the
        # command line, so that the configured port is the one served, not the one of the first start
        return self._spawn([self._bin("postgres"), "-D", str(data), "-p", str(self.cfg.pg_port),
                            "-h", self.cfg.host], user=user)

    def ready(self) -> bool:
        if not _port_open(self.cfg.host, self.cfg.pg_port):
            return False
        import psycopg

        try:
            with psycopg.connect(**self.cfg.pg_admin_params(), connect_timeout=3) as conn:
                exists = conn.execute(
                    "SELECT 1 FROM pg_database WHERE datname = %s", (self.cfg.pg_database,)
                ).fetchone()
                if not exists:
                    conn.execute(f'CREATE DATABASE "{self.cfg.pg_database}"')
            return True
        except Exception:
            return False


class Anvil(Service):
    name = "anvil"

    def ports(self) -> list[int]:
        return [self.cfg.anvil_port]

    def _launch(self) -> subprocess.Popen:
        binary = REPO_ROOT / "node_modules" / ".bin" / "anvil"
        if not binary.exists():
            raise StackError("anvil missing: run scripts/setup.sh (npm package @foundry-rs/anvil)")
        argv = [str(binary), "--host", self.cfg.host, "--port", str(self.cfg.anvil_port),
                "--chain-id", str(self.cfg.anvil_chain_id), "--silent"]
        genesis = os.environ.get("LEDGER_ANVIL_GENESIS_TIMESTAMP")  # the demo replays a past week on chain
        if genesis:
            argv += ["--timestamp", str(int(genesis))]
        return self._spawn(argv)

    def ready(self) -> bool:
        if not _port_open(self.cfg.host, self.cfg.anvil_port):
            return False
        import json
        import urllib.request

        req = urllib.request.Request(
            self.cfg.anvil_url,
            data=json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []}).encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=3) as resp:
                return int(json.loads(resp.read())["result"], 16) == self.cfg.anvil_chain_id
        except Exception:
            return False


SERVICES = {"kafka": Kafka, "postgres": Postgres, "anvil": Anvil}


def services(cfg: StackConfig, only: list[str] | None = None) -> list[Service]:
    names = only or list(SERVICES)
    unknown = set(names) - set(SERVICES)
    if unknown:
        raise StackError(f"unknown service(s) {sorted(unknown)}; known: {sorted(SERVICES)}")
    return [SERVICES[n](cfg) for n in names]


def main(argv: list[str]) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="ledger-pipelines stack", description="Manage the local stack.")
    p.add_argument("action", choices=["start", "stop", "status"])
    p.add_argument("services", nargs="*", help=f"subset of {sorted(SERVICES)} (default: all)")
    args = p.parse_args(argv)
    cfg = StackConfig.from_env()
    try:
        for svc in services(cfg, args.services or None):
            if args.action == "start":
                t0 = time.monotonic()
                started = svc.start()
                how = f"started in {time.monotonic() - t0:.1f}s" if started else "already running"
                print(f"{svc.name}: {how} ({svc.status()})")
            elif args.action == "stop":
                print(f"{svc.name}: {'stopped' if svc.stop() else 'was not running'}")
            else:
                print(f"{svc.name}: {svc.status()}")
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
