"""Dagster resources: thin wrappers that hand plain-Python settings to the core.

Secrets never enter resource config (which the UI shows): the warehouse URL and Kafka SASL
password are read from the environment variables *named* here, when a run needs them.
"""


import os
from collections.abc import Iterator
from contextlib import contextmanager

from dagster import ConfigurableResource
from pydantic import Field

from .settings import KafkaSettings, redact_url
from .warehouse import Warehouse


class KafkaResource(ConfigurableResource):
    """Kafka connection; unset fields fall back to ``LEDGER_KAFKA_*`` variables, then the local stack."""

    bootstrap_servers: str | None = Field(default=None, description="host:port list; default LEDGER_KAFKA_BOOTSTRAP")
    topic_prefix: str | None = Field(default=None, description="default LEDGER_TOPIC_PREFIX or 'ledger.'")
    partitions: int | None = Field(default=None, description="partitions of created topics")

    def settings(self) -> KafkaSettings:
        base = KafkaSettings.from_env()
        return KafkaSettings(
            bootstrap_servers=self.bootstrap_servers or base.bootstrap_servers,
            topic_prefix=self.topic_prefix or base.topic_prefix,
            partitions=self.partitions or base.partitions,
            replication_factor=base.replication_factor,
            security_protocol=base.security_protocol,
            sasl_mechanism=base.sasl_mechanism,
            sasl_username=base.sasl_username,
            sasl_password=base.sasl_password,
        )


class WarehouseResource(ConfigurableResource):
    """The warehouse database, by the URL in the environment variable ``url_env`` (SQLite file if unset)."""

    url_env: str = Field(default="LEDGER_WAREHOUSE_URL", description="environment variable holding the URL")

    def url(self) -> str | None:
        return os.environ.get(self.url_env) or None

    def open(self) -> Warehouse:
        return Warehouse(self.url())

    @contextmanager
    def session(self) -> Iterator[Warehouse]:
        """The warehouse with its tables created, disposed of afterwards."""
        wh = self.open()
        try:
            wh.create_schema()
            yield wh
        finally:
            wh.dispose()

    def describe(self) -> str:
        from .settings import default_warehouse_url

        return redact_url(self.url() or default_warehouse_url())


class ExpectationsResource(ConfigurableResource):
    """Great Expectations suites of ``expectations/`` in an ephemeral context (imported lazily)."""

    suites_dir: str | None = Field(default=None, description="folder of suite JSON files (default expectations/)")

    def validator(self):
        from pathlib import Path

        from .validation import SUITES, Validator

        key = self.suites_dir or str(SUITES)
        cached = _VALIDATORS.get(key)
        if cached is None:
            cached = _VALIDATORS[key] = Validator(Path(key))
        return cached


_VALIDATORS: dict = {}  # one ephemeral context a process: building it costs about a second
