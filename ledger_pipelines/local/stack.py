"""The local stack: a real Kafka broker (KRaft), PostgreSQL and anvil, bound to 127.0.0.1.

Everything lives under a project-local folder (``LEDGER_STACK_DIR``, default ``.stack/`` at the
repository root). ``start`` is idempotent: a service whose pid file points at a live process that
answers is reused. Installation (jars, npm packages, Debian packages) is ``scripts/setup.sh``'s job;
this module only starts, checks and stops.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

from ..settings import (KAFKA_NODE_COUNTS, REPO_ROOT, StackConfig, kafka_nodes_file,  # noqa: F401
                        secret_once, write_secret)

KAFKA_VERSION = "4.4.0"
CONNECT_VERSION = "4.3.1"  # Debezium 3.6 runs on Connect 4.3 (kafka/connect/pom.xml); a 4.3 worker talks to 4.4 brokers
DEBEZIUM_VERSION = "3.6.1.Final"
CONNECT_GROUP = "ledger-pipelines-connect"


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
        self.launch()
        self.wait_ready(timeout)
        return True

    def launch(self) -> None:
        """Start the process unless one runs (ready or not); the ports must be free."""
        if self.pid() is not None:
            return
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

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ready():
                return
            if self.pid() is None:
                raise StackError(f"{self.name} exited during start-up; see {self.logfile}:\n{self.tail()}")
            time.sleep(0.3)
        raise StackError(f"{self.name} not ready after {timeout:.0f}s; see {self.logfile}:\n{self.tail()}")

    def kill(self) -> None:
        """SIGKILL, for fault tests: no clean shutdown, the pid file stays until the next start."""
        pid = self.pid()
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10.0
            while time.monotonic() < deadline and _pid_alive(pid):
                _reap(pid)
                time.sleep(0.05)

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


def _log4j2(folder: Path, loggers: str) -> None:
    """A JVM service's log4j2 configuration: INFO to standard output (the service's log file), plus ``loggers``."""
    (folder / "log4j2.properties").write_text(
        "rootLogger.level=INFO\nrootLogger.appenderRef.stdout.ref=STDOUT\n"
        "appender.stdout.type=Console\nappender.stdout.name=STDOUT\n"
        "appender.stdout.layout.type=PatternLayout\n"
        "appender.stdout.layout.pattern=[%d] %p %m (%c)%n\n" + loggers
    )


def jar_dir(cfg: StackConfig, *parts: str) -> Path:
    """Where scripts/setup.sh put a set of jars: under the stack's folder, or under the repository's
    ``.stack/`` when LEDGER_STACK_DIR points elsewhere (a second stack of the same checkout)."""
    own = cfg.root.joinpath(*parts)
    return own if own.is_dir() else (REPO_ROOT / ".stack").joinpath(*parts)


def kafka_cluster_id() -> str:
    """A random cluster id in Kafka's form (URL-safe base64 of 16 bytes), never starting with '-':
    the storage tool's argument parser would take such an id for an option (one format in 64 failed
    that way). Kafka's own Uuid.randomUuid() skips those for the same reason."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


class Kafka(Service):
    """The single-node Kafka of the stack (node 1, static quorum), and the base of a cluster's nodes."""

    name = "kafka"
    node_id = 1

    @property
    def broker_port(self) -> int:
        return self.cfg.kafka_port + self.node_id - 1

    @property
    def controller_port(self) -> int:
        return self.cfg.kafka_controller_port + self.node_id - 1

    def ports(self) -> list[int]:
        return [self.broker_port, self.controller_port]

    @property
    def libdir(self) -> Path:
        return jar_dir(self.cfg, "kafka", f"lib-{KAFKA_VERSION}")

    def quorum(self) -> list[str]:
        c = self.cfg
        return [
            f"controller.quorum.voters=1@{c.host}:{c.kafka_controller_port}",
            "offsets.topic.replication.factor=1",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "share.coordinator.state.topic.replication.factor=1",
            "share.coordinator.state.topic.min.isr=1",
        ]

    def format_args(self) -> list[str]:
        return ["-t", kafka_cluster_id()]

    def properties(self) -> str:
        c = self.cfg
        data = self.dir / "data"
        return "\n".join(
            [
                "process.roles=broker,controller",
                f"node.id={self.node_id}",
                *self.quorum(),
                f"listeners=PLAINTEXT://{c.host}:{self.broker_port},CONTROLLER://{c.host}:{self.controller_port}",
                f"advertised.listeners=PLAINTEXT://{c.host}:{self.broker_port}",
                "controller.listener.names=CONTROLLER",
                "inter.broker.listener.name=PLAINTEXT",
                "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
                f"log.dirs={data}",
                "num.partitions=1",
                "offsets.topic.num.partitions=1",
                "transaction.state.log.num.partitions=1",
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
        _log4j2(self.dir, "logger.kafka.name=kafka\nlogger.kafka.level=INFO\n"
                          "logger.state.name=state.change.logger\nlogger.state.level=WARN\n")
        cp = f"{self.libdir}/*"
        java_opts = ["-Xms256m", f"-Xmx{self.cfg.kafka_heap}", "-XX:+UseG1GC",
                     f"-Dlog4j2.configurationFile={self.dir / 'log4j2.properties'}",
                     "-Djava.awt.headless=true"]
        meta = self.dir / "data" / "meta.properties"
        if not meta.exists():
            fmt = subprocess.run(
                ["java", *java_opts, "-cp", cp, "kafka.tools.StorageTool", "format",
                 *self.format_args(), "-c", str(props), "--ignore-formatted"],
                capture_output=True, text=True, cwd=self.dir, env=service_env(),
            )
            if fmt.returncode != 0:
                raise StackError(f"kafka storage format failed:\n{fmt.stdout}\n{fmt.stderr}")
        return self._spawn(["java", *java_opts, "-cp", cp, "kafka.Kafka", str(props)])

    def ready(self) -> bool:
        """This node answers metadata requests and is a registered broker of its cluster."""
        if not _port_open(self.cfg.host, self.broker_port):
            return False
        from confluent_kafka.admin import AdminClient

        try:
            md = AdminClient({"bootstrap.servers": f"{self.cfg.host}:{self.broker_port}"}).list_topics(timeout=3)
        except Exception:
            return False
        return self.node_id in md.brokers


class KafkaNode(Kafka):
    """One of the three combined broker/controller nodes of a local cluster (KRaft, dynamic quorum: every
    node is formatted with the same initial controllers, each with its own metadata directory id)."""

    def __init__(self, cfg: StackConfig, node_id: int):
        self.node_id = node_id
        self.name = f"kafka-{node_id}"
        super().__init__(cfg)

    def _cluster(self) -> dict:
        return cluster_identity(self.cfg)

    def quorum(self) -> list[str]:
        c = self.cfg
        nodes = c.kafka_nodes
        return [
            "controller.quorum.bootstrap.servers="
            + ",".join(f"{c.host}:{p}" for p in c.kafka_controller_ports()),
            f"offsets.topic.replication.factor={nodes}",
            f"transaction.state.log.replication.factor={nodes}",
            f"transaction.state.log.min.isr={nodes - 1}",
            f"share.coordinator.state.topic.replication.factor={nodes}",
            f"share.coordinator.state.topic.min.isr={nodes - 1}",
            f"default.replication.factor={nodes}",
            f"min.insync.replicas={nodes - 1}",
            "unclean.leader.election.enable=false",
        ]

    def format_args(self) -> list[str]:
        ident = self._cluster()
        controllers = ",".join(f"{n}@{self.cfg.host}:{self.cfg.kafka_controller_port + n - 1}:{d}"
                               for n, d in enumerate(ident["directory_ids"], start=1))
        return ["-t", ident["cluster_id"], "--initial-controllers", controllers]


def cluster_identity(cfg: StackConfig) -> dict:
    """The cluster id and the nodes' metadata directory ids, drawn once per stack folder (every node is
    formatted with the same ones, also a node formatted again after its data was removed)."""
    path = cfg.root / "kafka-cluster" / "identity.json"
    secret_once(path, lambda: json.dumps({"cluster_id": kafka_cluster_id(),
                                          "directory_ids": [kafka_cluster_id() for _ in range(cfg.kafka_nodes)]}))
    ident = json.loads(path.read_text())
    if len(ident.get("directory_ids", [])) != cfg.kafka_nodes:
        raise StackError(f"{path} describes {len(ident.get('directory_ids', []))} nodes, not {cfg.kafka_nodes}")
    return ident


class KafkaCluster:
    """The local Kafka as one service of the stack: the single node, or the three nodes of a cluster,
    launched together (a node is ready only once a quorum of controllers is up) and stopped together."""

    name = "kafka"

    def __init__(self, cfg: StackConfig):
        self.cfg = cfg
        if cfg.kafka_nodes == 1:
            self.nodes: list[Kafka] = [Kafka(cfg)]
        else:
            brokers, controllers = set(cfg.kafka_broker_ports()), set(cfg.kafka_controller_ports())
            if brokers & controllers or max(brokers | controllers) > 65535:
                raise StackError(
                    f"the cluster's broker ports {sorted(brokers)} and controller ports {sorted(controllers)} overlap "
                    f"or run past 65535: set LEDGER_KAFKA_CONTROLLER_PORT to {cfg.kafka_port + cfg.kafka_nodes} or "
                    f"another free range")
            self.nodes = [KafkaNode(cfg, n) for n in range(1, cfg.kafka_nodes + 1)]

    @property
    def logfile(self) -> Path:
        return self.nodes[0].logfile

    @property
    def libdir(self) -> Path:
        return self.nodes[0].libdir

    def node(self, node_id: int) -> Kafka:
        return self.nodes[node_id - 1]

    def running(self) -> bool:
        return all(n.running() for n in self.nodes)

    def start(self, timeout: float = 120.0) -> bool:
        if self.running():
            return False
        for n in self.nodes:
            n.launch()
        deadline = time.monotonic() + timeout
        for n in self.nodes:
            n.wait_ready(max(1.0, deadline - time.monotonic()))
        return True

    def stop(self, timeout: float = 30.0) -> bool:
        """SIGTERM to every node at once, one deadline for all: a cluster stopping as a whole loses its
        quorum, so the last nodes cannot finish a controlled shutdown and would each wait out their own
        timeout; what still runs at the deadline is killed."""
        pids = {n.name: n.pid() for n in self.nodes}
        for pid in pids.values():
            if pid is not None:
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(p is not None and _pid_alive(p) for p in pids.values()):
            for p in pids.values():
                if p is not None:
                    _reap(p)
            time.sleep(0.2)
        for n in self.nodes:
            n.stop(1.0)  # SIGKILL for a node still up; pid files and ports cleaned up
        return any(p is not None for p in pids.values())

    def tail(self, lines: int = 25) -> str:
        return "\n".join(f"== {n.name}\n{n.tail(lines)}" for n in self.nodes)

    def status(self) -> str:
        if len(self.nodes) == 1:
            return self.nodes[0].status()
        return "; ".join(f"{n.name} :{n.broker_port} {n.status()}" for n in self.nodes)


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
        # logical decoding on, for the Debezium connectors of cdc ledgers (pgoutput, one slot each)
        return self._spawn([self._bin("postgres"), "-D", str(data), "-p", str(self.cfg.pg_port),
                            "-h", self.cfg.host, "-c", "wal_level=logical", "-c", "max_replication_slots=32",
                            "-c", "max_wal_senders=32"], user=user)

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


class Connect(Service):
    """A Kafka Connect worker in distributed mode with the Debezium PostgreSQL plugin: exactly-once source
    support, its internal topics replicated like the stack's Kafka, REST on 127.0.0.1 only, and the
    ``file`` config provider, so that a connector's database password is a reference to a file readable
    by its owner only (``secrets/``), never a value in the connector configuration topic."""

    name = "connect"

    def ports(self) -> list[int]:
        return [self.cfg.connect_port]

    @property
    def libdir(self) -> Path:
        return jar_dir(self.cfg, "connect", f"lib-{CONNECT_VERSION}")

    @property
    def plugins(self) -> Path:
        return jar_dir(self.cfg, "connect", "plugins")

    @property
    def secrets(self) -> Path:
        """Where the stack writes the connectors' database passwords (0600 files in a 0700 folder)."""
        return self.dir / "secrets"

    def properties(self) -> str:
        c = self.cfg
        rf = c.kafka_nodes
        return "\n".join([
            f"bootstrap.servers={c.kafka_bootstrap}",
            f"group.id={CONNECT_GROUP}",
            "key.converter=org.apache.kafka.connect.json.JsonConverter",
            "value.converter=org.apache.kafka.connect.json.JsonConverter",
            # schemaless JSON: the mapping reads the payload; decimals arrive as exact strings
            "key.converter.schemas.enable=false",
            "value.converter.schemas.enable=false",
            f"config.storage.topic={CONNECT_GROUP}.configs",
            f"config.storage.replication.factor={rf}",
            f"offset.storage.topic={CONNECT_GROUP}.offsets",
            f"offset.storage.replication.factor={rf}",
            "offset.storage.partitions=1",
            f"status.storage.topic={CONNECT_GROUP}.status",
            f"status.storage.replication.factor={rf}",
            "status.storage.partitions=1",
            "exactly.once.source.support=enabled",
            f"plugin.path={self.plugins}",
            "plugin.discovery=service_load",
            f"listeners=http://{c.host}:{c.connect_port}",
            f"rest.advertised.host.name={c.host}",
            f"rest.advertised.port={c.connect_port}",
            "config.providers=file",
            "config.providers.file.class=org.apache.kafka.common.config.provider.FileConfigProvider",
            # the provider reads the secrets folder only: a connector registered by anyone else cannot have
            # it read another file of this host into its configuration
            f"config.providers.file.param.allowed.paths={self.secrets}",
            "offset.flush.interval.ms=1000",
            "",
        ])

    def _launch(self) -> subprocess.Popen:
        if not any(self.libdir.glob("connect-runtime-*.jar")) or not self.plugins.is_dir():
            raise StackError(f"Kafka Connect jars missing in {self.libdir} or {self.plugins}: run scripts/setup.sh")
        if not KafkaCluster(self.cfg).running():
            raise StackError("connect: the stack's Kafka is not running (ledger-pipelines stack start kafka)")
        self.secrets.mkdir(mode=0o700, parents=True, exist_ok=True)
        props = self.dir / "worker.properties"
        props.write_text(self.properties())
        _log4j2(self.dir, "logger.reflections.name=org.reflections\nlogger.reflections.level=ERROR\n")
        return self._spawn(["java", "-Xms256m", "-Xmx768m", "-XX:+UseG1GC",
                            f"-Dlog4j2.configurationFile={self.dir / 'log4j2.properties'}", "-Djava.awt.headless=true",
                            "-cp", f"{self.libdir}/*", "org.apache.kafka.connect.cli.ConnectDistributed", str(props)])

    def ready(self) -> bool:
        import urllib.request

        if not _port_open(self.cfg.host, self.cfg.connect_port):
            return False
        try:
            with urllib.request.urlopen(f"{self.cfg.connect_url}/connectors", timeout=3) as resp:
                return resp.status == 200
        except Exception:
            return False

    def status(self) -> str:
        state = super().status()
        if not state.startswith("running"):
            return state
        from ..connectors.cdc.connect import describe_connectors

        return f"{state}; {describe_connectors(self.cfg.connect_url)}"


SERVICES = {"kafka": KafkaCluster, "postgres": Postgres, "anvil": Anvil, "connect": Connect}
DEFAULT_SERVICES = ["kafka", "postgres", "anvil"]


def services(cfg: StackConfig, only: list[str] | None = None) -> list:
    names = only or list(DEFAULT_SERVICES)
    unknown = set(names) - set(SERVICES)
    if unknown:
        raise StackError(f"unknown service(s) {sorted(unknown)}; known: {sorted(SERVICES)}")
    return [SERVICES[n](cfg) for n in names]


def _record_nodes(nodes: int | None) -> StackConfig:
    """The stack's configuration with the Kafka node count of ``--nodes`` (recorded for the later
    commands), or the recorded one. Changing it while the other layout runs is refused."""
    recorded = StackConfig.from_env()
    if nodes is None or nodes == recorded.kafka_nodes:
        return recorded
    if any(n.pid() is not None for n in KafkaCluster(recorded).nodes):
        raise StackError(f"a {recorded.kafka_nodes}-node Kafka runs in {recorded.root}: `ledger-pipelines stack stop "
                         f"kafka` before starting {nodes} node(s)")
    path = kafka_nodes_file(recorded.root)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{nodes}\n")
    return StackConfig.from_env()


def main(argv: list[str]) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="ledger-pipelines stack", description="Manage the local stack.")
    p.add_argument("action", choices=["start", "stop", "status"])
    p.add_argument("services", nargs="*", help=f"subset of {sorted(SERVICES)} (default: {', '.join(DEFAULT_SERVICES)})")
    p.add_argument("--nodes", type=int, choices=KAFKA_NODE_COUNTS,
                   help="start: Kafka as one node or a cluster of three (recorded for later commands)")
    args = p.parse_args(argv)
    try:
        cfg = _record_nodes(args.nodes) if args.action == "start" else StackConfig.from_env()
        names = args.services or (list(SERVICES) if args.action != "start" else None)
        for svc in services(cfg, names):
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
