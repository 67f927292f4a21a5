"""Settings from the environment, read when asked for (never at import time).

Secrets (database URLs with passwords, SASL passwords) come only from the environment and are
rendered with :func:`redact_url` wherever they could reach a log or Dagster metadata.
"""

from __future__ import annotations

import base64
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path


# the repository: the example configuration, the expectation suites, the compiled contracts
REPO_ROOT = Path(__file__).resolve().parent.parent
KAFKA_CLIENT_LOGGER = "ledger_pipelines.kafka.client"
TOPIC_PREFIX_PATTERN = re.compile(r"^[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*\.\Z")


class SettingsError(ValueError):
    pass


def _loopback(host: str) -> str:
    """The local services bind to this address: an IPv4 loopback literal only (127.0.0.0/8). ``0.0.0.0``
    would expose Kafka (PLAINTEXT), anvil and PostgreSQL on every interface, and a comma or newline would
    add listeners or properties to the services' configuration files."""
    import ipaddress

    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise SettingsError(f"LEDGER_STACK_HOST={host!r} is not an IP address (the local services bind to a "
                            "loopback address, e.g. 127.0.0.1)") from None
    if ip.version != 4 or not ip.is_loopback:
        raise SettingsError(f"LEDGER_STACK_HOST={host!r} is not a loopback address: the local services bind to "
                            "127.0.0.0/8 only")
    return str(ip)


def _port(env, name: str, default: int) -> int:
    raw = env.get(name, str(default))
    if not re.fullmatch(r"[0-9]{1,5}", raw) or not 1 <= int(raw) <= 65535:
        raise SettingsError(f"{name}={raw!r} is not a port number (1-65535)")
    return int(raw)


def _count(env, name: str, default: int | None) -> int | None:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    if not re.fullmatch(r"[0-9]{1,6}", raw) or int(raw) < 1:
        raise SettingsError(f"{name}={raw!r} is not a positive whole number")
    return int(raw)


def _heap(raw: str) -> str:
    if not re.fullmatch(r"[0-9]{1,6}[mMgG]", raw):
        raise SettingsError(f"LEDGER_KAFKA_HEAP={raw!r} is not a heap size such as 768m or 2g")
    return raw


@dataclass(frozen=True)
class StackConfig:
    root: Path
    host: str = "127.0.0.1"
    kafka_port: int = 19092
    kafka_controller_port: int = 19093
    kafka_heap: str = "768m"
    pg_port: int = 55432
    pg_user: str = "ledger"
    pg_database: str = "ledger"
    anvil_port: int = 8545
    anvil_chain_id: int = 31337
    connect_port: int = 18083
    # combined broker/controller nodes of the local Kafka: 1, or a cluster of 3 (``stack start kafka
    # --nodes 3`` records the count under the stack's folder, read here)
    kafka_nodes: int = 1

    @classmethod
    def from_env(cls, kafka_nodes: int | None = None) -> "StackConfig":
        env = os.environ
        root = Path(env.get("LEDGER_STACK_DIR", REPO_ROOT / ".stack")).resolve()
        nodes = recorded_kafka_nodes(root) if kafka_nodes is None else kafka_nodes
        kafka_port = _port(env, "LEDGER_KAFKA_PORT", 19092)
        # a cluster's broker ports are consecutive from LEDGER_KAFKA_PORT: the default controller ports
        # follow them instead of overlapping (an explicit LEDGER_KAFKA_CONTROLLER_PORT is checked at start)
        return cls(
            root=root,
            host=_loopback(env.get("LEDGER_STACK_HOST", "127.0.0.1")),
            kafka_port=kafka_port,
            kafka_controller_port=_port(env, "LEDGER_KAFKA_CONTROLLER_PORT",
                                        19093 if nodes == 1 else min(kafka_port + nodes, 65535)),
            kafka_heap=_heap(env.get("LEDGER_KAFKA_HEAP", "768m" if nodes == 1 else "384m")),
            pg_port=_port(env, "LEDGER_PG_PORT", 55432),
            anvil_port=_port(env, "LEDGER_ANVIL_PORT", 8545),
            connect_port=_port(env, "LEDGER_CONNECT_PORT", 18083),
            kafka_nodes=nodes,
        )

    def kafka_broker_ports(self) -> list[int]:
        return [self.kafka_port + i for i in range(self.kafka_nodes)]

    def kafka_controller_ports(self) -> list[int]:
        return [self.kafka_controller_port + i for i in range(self.kafka_nodes)]

    @property
    def kafka_bootstrap(self) -> str:
        return ",".join(f"{self.host}:{p}" for p in self.kafka_broker_ports())

    @property
    def connect_url(self) -> str:
        return f"http://{self.host}:{self.connect_port}"

    @property
    def anvil_url(self) -> str:
        return f"http://{self.host}:{self.anvil_port}"

    def pg_password(self) -> str:
        """The local PostgreSQL password: from the environment, else a random one kept on disk."""
        if os.environ.get("LEDGER_PG_PASSWORD"):
            return os.environ["LEDGER_PG_PASSWORD"]
        secret = self.root / "postgres.secret"
        secret_once(secret, lambda: base64.urlsafe_b64encode(os.urandom(18)).decode())
        return secret.read_text().strip()

    def pg_admin_params(self) -> dict:
        """psycopg.connect() arguments for the maintenance database (creating and dropping databases)."""
        return dict(host=self.host, port=self.pg_port, user=self.pg_user, password=self.pg_password(),
                    dbname="postgres", autocommit=True)

    def pg_url(self, driver: str = "postgresql+psycopg") -> str:
        return (
            f"{driver}://{self.pg_user}:{self.pg_password()}@{self.host}:{self.pg_port}/{self.pg_database}"
        )


KAFKA_NODE_COUNTS = (1, 3)


def kafka_nodes_file(root: Path) -> Path:
    return root / "run" / "kafka.nodes"


def recorded_kafka_nodes(root: Path) -> int:
    """The node count ``stack start kafka --nodes N`` recorded under ``root`` (1 when none was)."""
    try:
        raw = kafka_nodes_file(root).read_text().strip()
    except OSError:
        return 1
    if raw not in {str(n) for n in KAFKA_NODE_COUNTS}:
        raise SettingsError(f"{kafka_nodes_file(root)} holds {raw[:20]!r}, not a node count of {KAFKA_NODE_COUNTS}")
    return int(raw)


def secret_once(path: Path, make) -> None:
    """Creates ``path`` with ``make()``'s text, readable by its owner only, unless it exists: written whole
    to a draft and linked into place (atomic, never replaces), so concurrent first starts keep one secret."""
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    draft = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    write_secret(draft, make())
    try:
        os.link(draft, path)
    except FileExistsError:
        pass
    finally:
        draft.unlink()


def write_secret(path: Path, text: str, owner: tuple[int, int] | None = None) -> None:
    """A new file readable by its owner only from its first byte (never chmod-ed after writing,
    which leaves a window where it is world-readable); an existing file is an error."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        if owner is not None:
            os.fchown(fd, *owner)
        f.write(text)


@dataclass(frozen=True)
class KafkaSettings:
    bootstrap_servers: str
    topic_prefix: str = "ledger."
    partitions: int = 4
    replication_factor: int = 1
    # None: RF - 1 when RF >= 3 (a write survives one broker down), else 1
    min_insync_replicas: int | None = None
    # how long the producer retries a message (leader elections, too few in-sync replicas) before the
    # publish fails and says so; librdkafka's message.timeout.ms
    delivery_timeout_s: float = 120.0
    security_protocol: str | None = None
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)

    def __post_init__(self):
        if self.replication_factor < 1 or self.partitions < 1:
            raise SettingsError("Kafka partitions and replication factor are at least 1")
        if self.min_insync_replicas is not None and not 1 <= self.min_insync_replicas <= self.replication_factor:
            raise SettingsError(f"min.insync.replicas {self.min_insync_replicas} must be from 1 to the replication "
                                f"factor {self.replication_factor}")
        if not TOPIC_PREFIX_PATTERN.match(self.topic_prefix):
            raise SettingsError(
                f"topic prefix {self.topic_prefix!r} must be dot-separated [A-Za-z0-9_-] words ending in '.'"
            )

    @property
    def min_isr(self) -> int:
        if self.min_insync_replicas is not None:
            return self.min_insync_replicas
        return self.replication_factor - 1 if self.replication_factor >= 3 else 1

    @classmethod
    def from_env(cls) -> "KafkaSettings":
        env = os.environ
        local = None if env.get("LEDGER_KAFKA_BOOTSTRAP") else StackConfig.from_env()
        # on the local stack the replication factor defaults to its node count (1 or 3)
        rf = _count(env, "LEDGER_KAFKA_REPLICATION", local.kafka_nodes if local else 1)
        return cls(
            bootstrap_servers=env.get("LEDGER_KAFKA_BOOTSTRAP") or local.kafka_bootstrap,
            topic_prefix=env.get("LEDGER_TOPIC_PREFIX", "ledger."),
            partitions=_count(env, "LEDGER_KAFKA_PARTITIONS", 4),
            replication_factor=rf,
            min_insync_replicas=_count(env, "LEDGER_KAFKA_MIN_ISR", None),
            delivery_timeout_s=float(_count(env, "LEDGER_KAFKA_DELIVERY_TIMEOUT", 120)),
            security_protocol=env.get("LEDGER_KAFKA_SECURITY_PROTOCOL"),
            sasl_mechanism=env.get("LEDGER_KAFKA_SASL_MECHANISM"),
            sasl_username=env.get("LEDGER_KAFKA_SASL_USERNAME"),
            sasl_password=env.get("LEDGER_KAFKA_SASL_PASSWORD"),
        )

    def client_config(self) -> dict:
        # librdkafka's own log lines (connection retries, "Connect to ... failed") go to a Python logger
        # instead of straight to stderr: the CLI writes them to its log file, Dagster to the run's logs
        conf = {"bootstrap.servers": self.bootstrap_servers, "logger": logging.getLogger(KAFKA_CLIENT_LOGGER)}
        if self.security_protocol:
            conf["security.protocol"] = self.security_protocol
        if self.sasl_mechanism:
            conf["sasl.mechanism"] = self.sasl_mechanism
        if self.sasl_username:
            conf["sasl.username"] = self.sasl_username
        if self.sasl_password:
            conf["sasl.password"] = self.sasl_password
        return conf


def default_warehouse_url() -> str:
    return os.environ.get("LEDGER_WAREHOUSE_URL") or f"sqlite:///{StackConfig.from_env().root / 'warehouse.db'}"


# up to the last "@" before the path: an unescaped "@" in a password makes URL parsers split the
# password there and take its tail for the host
_USERINFO_PASSWORD = re.compile(r"(//[^:/?#@\s]*:)[^/?\s]*@")
# libpq and most drivers also take the password as a parameter (?password=, sslpassword=, PWD=),
# ODBC inside a percent-encoded odbc_connect= too
_PARAM_PASSWORD = re.compile(r"((?:^|[?&;\s]|%3B)[^=&;\s%]*(?:password|passwd|pwd)(?:=|%3D))(?:(?!%3B)[^&;\s])*",
                             re.IGNORECASE)


def redact_url(url: str) -> str:
    """A database URL with every password replaced (in the user info and in the parameters), for
    logs, errors and metadata."""
    from sqlalchemy.engine import make_url

    try:
        url = make_url(url).render_as_string(hide_password=True)
    except Exception:
        pass  # not a URL SQLAlchemy parses: masked as text below
    url = _USERINFO_PASSWORD.sub(r"\1***@", url, count=1)
    return _PARAM_PASSWORD.sub(r"\1***", url)


def url_secrets(url: str) -> list[str]:
    """The credentials a database URL carries (its password, the values of its password parameters), in
    each form they may take in an error's text: as written and percent-quoted."""
    from urllib.parse import quote, quote_plus

    found: list[str] = []
    try:
        from sqlalchemy.engine import make_url

        parsed = make_url(url)
        found.append(parsed.password or "")
        for key, value in parsed.query.items():  # a value is a string, or a tuple when the key repeats
            if "pass" in key.lower() or "pwd" in key.lower():
                found += [value] if isinstance(value, str) else list(value)
    except Exception:
        pass  # not a URL SQLAlchemy reads: mask_secrets masks the whole URL
    return [form for s in found if s for form in {s, quote(s, safe=""), quote_plus(s)}]


def mask_secrets(text: str, url: str | None, others: list[str] | tuple[str, ...] = ()) -> str:
    """``text`` (an error, a traceback) with ``url`` shown redacted and every credential of it, and ``others``,
    masked wherever they appear."""
    if url:
        text = text.replace(url, redact_url(url))
    for secret in sorted([*(url_secrets(url) if url else []), *(o for o in others if o)], key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def libraries_to_log_file(path: Path | None = None) -> None:
    """librdkafka's and Great Expectations' chatter (connection retries, progress bars' notices) goes to
    ``path``, by default ``LEDGER_LOG_FILE`` (else ``.stack/logs/ledger-pipelines.log``), not to the
    terminal; ``-v`` keeps everything on the terminal. The CLI routes them so, and each worker process of
    a multi-process ingest routes them as its run does (:func:`library_log_file`)."""
    if path is None:
        path = Path(os.environ.get("LEDGER_LOG_FILE") or StackConfig.from_env().root / "logs" / "ledger-pipelines.log")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(path, delay=True)
    except OSError:
        return  # an unwritable log folder leaves the chatter on the terminal
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in (KAFKA_CLIENT_LOGGER, "great_expectations"):
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        logger.propagate = False


def library_log_file() -> str | None:
    """The file :func:`libraries_to_log_file` routes this process's librdkafka lines to, if it does."""
    for handler in logging.getLogger(KAFKA_CLIENT_LOGGER).handlers:
        if isinstance(handler, logging.FileHandler):
            return handler.baseFilename
    return None
