"""Fixtures on the real local stack: Kafka (KRaft), PostgreSQL and anvil, started once per session.

A service this session started is stopped at the end; one that was already running is reused
and left as it was. Every test gets its own topic prefix and its own database, so tests never see
each other's data.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import psycopg
import pytest

from ledger_pipelines.settings import KafkaSettings
from ledger_pipelines.stack import Anvil, Kafka, Postgres, StackConfig
from ledger_pipelines.warehouse import Warehouse

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
REALDATA = Path(os.environ.get("LEDGER_REALDATA", Path(__file__).resolve().parents[2] / "shared" / "realdata"))


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


kafka_service = _service_fixture(Kafka)
postgres_service = _service_fixture(Postgres)
anvil_service = _service_fixture(Anvil)


@pytest.fixture
def kafka(kafka_service, stack_config) -> KafkaSettings:
    """Kafka settings with a topic prefix of this test's own."""
    return KafkaSettings(
        bootstrap_servers=stack_config.kafka_bootstrap, topic_prefix=f"t{uuid.uuid4().hex[:10]}.", partitions=4
    )


@pytest.fixture
def pg_url(postgres_service, stack_config):
    """A fresh PostgreSQL database for this test, dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = dict(host=stack_config.host, port=stack_config.pg_port, user=stack_config.pg_user,
                 password=stack_config.pg_password(), dbname="postgres", autocommit=True)
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
