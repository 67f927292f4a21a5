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

    @classmethod
    def from_env(cls) -> "StackConfig":
        env = os.environ
        return cls(
            root=Path(env.get("LEDGER_STACK_DIR", REPO_ROOT / ".stack")).resolve(),
            host=_loopback(env.get("LEDGER_STACK_HOST", "127.0.0.1")),
            kafka_port=_port(env, "LEDGER_KAFKA_PORT", 19092),
            kafka_controller_port=_port(env, "LEDGER_KAFKA_CONTROLLER_PORT", 19093),
            kafka_heap=_heap(env.get("LEDGER_KAFKA_HEAP", "768m")),
            pg_port=_port(env, "LEDGER_PG_PORT", 55432),
            anvil_port=_port(env, "LEDGER_ANVIL_PORT", 8545),
        )

    @property
    def kafka_bootstrap(self) -> str:
        return f"{self.host}:{self.kafka_port}"

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
    security_protocol: str | None = None
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)

    def __post_init__(self):
        if not TOPIC_PREFIX_PATTERN.match(self.topic_prefix):
            raise SettingsError(
                f"topic prefix {self.topic_prefix!r} must be dot-separated [A-Za-z0-9_-] words ending in '.'"
            )

    @classmethod
    def from_env(cls) -> "KafkaSettings":
        env = os.environ
        return cls(
            bootstrap_servers=env.get("LEDGER_KAFKA_BOOTSTRAP") or StackConfig.from_env().kafka_bootstrap,
            topic_prefix=env.get("LEDGER_TOPIC_PREFIX", "ledger."),
            partitions=int(env.get("LEDGER_KAFKA_PARTITIONS", 4)),
            replication_factor=int(env.get("LEDGER_KAFKA_REPLICATION", 1)),
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
