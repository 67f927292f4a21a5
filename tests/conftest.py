"""Fixtures on the real local stack: Kafka (KRaft), PostgreSQL and anvil, started once per session.

A service this session started is stopped at the end; one that was already running is reused
and left as it was. Every test gets its own topic prefix and its own database, so tests never see
each other's data.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest

from ledger_pipelines.settings import KafkaSettings
from ledger_pipelines.local.stack import Anvil, KafkaCluster, Postgres, StackConfig
from ledger_pipelines.warehouse import Warehouse

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
# third-party test files committed with the repository (provenance and licences: tests/data/PROVENANCE.md)
REALDATA = Path(__file__).resolve().parent / "data"
# the full collection beside the clone, for the files whose licence keeps them out of the repository
SHARED_REALDATA = Path(os.environ.get("LEDGER_REALDATA", Path(__file__).resolve().parents[2] / "shared" / "realdata"))
OCA_STATEMENT = "iso20022/oca_test-camt053.xml"
NOT_COMMITTED = {
    OCA_STATEMENT: "the AGPL-3.0 OCA statement is not committed; put ../shared/realdata beside the clone to run this test",
}


def shared_file(name: str) -> Path | None:
    """``SHARED_REALDATA / name`` (a file of ``NOT_COMMITTED``), or None when it is not there."""
    path = SHARED_REALDATA / name
    return path if path.is_file() else None


def shared_bytes(name: str) -> bytes:
    """The file's bytes, or b"" when it is absent (tests that read them carry :func:`needs_shared`)."""
    path = shared_file(name)
    return path.read_bytes() if path else b""


def needs_shared(name: str) -> pytest.MarkDecorator:
    """Skip, saying why, when the non-committed file ``name`` is not in ``SHARED_REALDATA``."""
    return pytest.mark.skipif(shared_file(name) is None, reason=NOT_COMMITTED[name])


def shared_param(name: str, id: str | None = None):
    """``SHARED_REALDATA / name`` as a test parameter that skips (with the reason) when the file is absent."""
    path = SHARED_REALDATA / name
    return pytest.param(path, marks=needs_shared(name), id=id or path.name)


@pytest.fixture(scope="session")
def stack_config() -> StackConfig:
    return StackConfig.from_env()


def _service_fixture(cls):
    @pytest.fixture(scope="session")
    def fixture(stack_config):
        svc = cls(stack_config)
        started = svc.start(timeout=120)
        yield svc
        if started:
            svc.stop()

    return fixture


kafka_service = _service_fixture(KafkaCluster)
postgres_service = _service_fixture(Postgres)
anvil_service = _service_fixture(Anvil)


@pytest.fixture
def chain(anvil_service, stack_config):
    """web3 on the local anvil; whatever a test mines is reverted afterwards (evm_snapshot/evm_revert)."""
    from ledger_pipelines.contracts import web3_for

    w3 = web3_for(stack_config.anvil_url)
    snap = w3.provider.make_request("evm_snapshot", [])["result"]
    yield w3
    w3.provider.make_request("evm_revert", [snap])


@pytest.fixture
def kafka(kafka_service, stack_config) -> KafkaSettings:
    """Kafka settings with a topic prefix of this test's own. A session broker found down is started
    again (so one crash fails one test, not every test after it) and this test fails with the tail of
    the broker's log, which says why it went down."""
    if not kafka_service.running():
        tail = kafka_service.tail(60)
        kafka_service.start(timeout=180)
        pytest.fail(f"the session's Kafka broker was down before this test (started again); its log:\n{tail}")
    return KafkaSettings(
        bootstrap_servers=stack_config.kafka_bootstrap, topic_prefix=f"t{uuid.uuid4().hex[:10]}.", partitions=4
    )


@pytest.fixture
def pg_url(postgres_service, stack_config):
    """A fresh PostgreSQL database for this test, dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = stack_config.pg_admin_params()
    with psycopg.connect(**admin) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = stack_config.pg_url().rsplit("/", 1)[0] + f"/{name}"
    yield url
    with psycopg.connect(**admin) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def warehouse_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'warehouse.db'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def warehouse(warehouse_url):
    wh = Warehouse(warehouse_url)
    wh.create_schema()
    yield wh
    wh.dispose()


@pytest.fixture
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@contextmanager
def logged(name: str) -> Iterator[list[str]]:
    """The warnings (and worse) logger ``name`` emits inside the block, as their messages. The handler sits
    on that logger itself: a suite's earlier CLI runs may stop propagation to the root."""
    messages: list[str] = []

    class Kept(logging.Handler):
        def emit(self, record) -> None:
            messages.append(record.getMessage())

    log, kept = logging.getLogger(name), Kept(logging.WARNING)
    log.addHandler(kept)
    try:
        yield messages
    finally:
        log.removeHandler(kept)


def post_journal(url: str, lines: list[dict]) -> None:
    """Journal lines into the documented default journal schema at ``url`` (created if missing).

    A line: ``txn``, ``posted_at`` (RFC 3339), ``side`` (D/C), ``amount``; optional ``account``,
    ``counterparty``, ``currency`` (EUR), ``ref`` (payment reference).
    """
    from sqlalchemy import text

    from ledger_pipelines.connectors.sql.mapping import ColumnMapping
    from ledger_pipelines.connectors.sql.journal import SqlLedger

    ledger = SqlLedger(url, ColumnMapping(), "core_banking")
    ledger.create_journal()
    rows = [{"t": x["txn"], "p": x["posted_at"], "a": x.get("account", f"GL-{x['side']}"),
             "cp": x.get("counterparty"), "c": x.get("currency", "EUR"), "m": x["amount"], "s": x["side"],
             "r": x.get("ref")} for x in lines]
    with ledger.engine.begin() as c:
        c.execute(text("INSERT INTO journal_lines (txn_id, posted_at, account, counterparty, currency, amount, side, "
                       "payment_ref) VALUES (:t, :p, :a, :cp, :c, :m, :s, :r)"), rows)
    ledger.dispose()


def balanced(txn: str, posted_at: str, amount: str = "10.00", **extra) -> list[dict]:
    """The two lines of one balanced transaction."""
    return [{"txn": txn, "posted_at": posted_at, "side": s, "amount": amount, **extra} for s in ("D", "C")]
