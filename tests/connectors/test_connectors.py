"""Every ledger kind behind the one connector protocol (ledger_pipelines/connectors/kinds.py)."""

from datetime import date

import pytest

from ledger_pipelines.config import KINDS, LedgerConfig, MissingConnection
from ledger_pipelines.connectors.kinds import (CONNECTORS, STATEMENT_BALANCE, TRIAL_BALANCE, CdcConnector,
                                               Connector, connector_for)
from ledger_pipelines.sensors.source_sensors import SOURCES


def test_every_configured_kind_has_its_connector_and_each_named_sensor_exists():
    assert set(CONNECTORS) == set(KINDS)
    sensors = {name for name, *_ in SOURCES}
    for kind, cls in CONNECTORS.items():
        assert issubclass(cls, Connector) and cls.kind == kind
        if kind != "cdc":
            assert cls.sensor is None or cls.sensor in sensors
        assert set(cls.checks) <= {TRIAL_BALANCE, STATEMENT_BALANCE}
    # a cdc ledger has a sensor when it reads Debezium topics (its own connector's, or another's), else none
    from ledger_pipelines.config import LedgerConfig

    cdc = CONNECTORS["cdc"]
    assert cdc(LedgerConfig(name="a", kind="cdc", source="debezium-postgres", connection_env="X")).sensor in sensors
    assert cdc(LedgerConfig(name="a", kind="cdc", options={"debezium_topic": "t"})).sensor in sensors
    assert cdc(LedgerConfig(name="a", kind="cdc", connection_env="X")).sensor is None
    assert CONNECTORS["sql"].checks == (TRIAL_BALANCE,) and CONNECTORS["iso20022"].checks == (STATEMENT_BALANCE,)


def test_a_cdc_ledger_without_a_source_reads_its_day_from_the_event_log_and_one_with_a_source_needs_its_variable(
        monkeypatch, tmp_path):
    from ledger_pipelines.warehouse import Warehouse

    wh = Warehouse(f"sqlite:///{tmp_path / 'wh.db'}")
    wh.create_schema()
    stream = CdcConnector(LedgerConfig(name="orders", kind="cdc"))
    assert stream.read_day(date(2026, 11, 30), wh) == ([], [], [])
    monkeypatch.delenv("LEDGER_ORDERS_URL", raising=False)
    sourced = connector_for(LedgerConfig(name="orders", kind="cdc", connection_env="LEDGER_ORDERS_URL"))
    with pytest.raises(MissingConnection, match="LEDGER_ORDERS_URL"):
        sourced.read_day(date(2026, 11, 30), wh)
    with pytest.raises(MissingConnection, match="LEDGER_ORDERS_URL"):
        sourced.check_source()
    debezium = connector_for(LedgerConfig(name="orders", kind="cdc", connection_env="LEDGER_ORDERS_URL",
                                          options={"debezium_topic": "pg.public.orders"}))
    debezium.check_source()  # its records come from Kafka: no source connection needed to publish


@pytest.mark.parametrize("ledger, reason", [
    ({"name": "x", "kind": "sql", "source": "debezium-postgres", "connection_env": "X"}, "for kind cdc only"),
    ({"name": "x", "kind": "cdc", "source": "debezium-mysql", "connection_env": "X"}, "for kind cdc only"),
    ({"name": "x", "kind": "cdc", "source": "debezium-postgres"}, "none is configured"),
    ({"name": "x" * 47, "kind": "cdc", "source": "debezium-postgres", "connection_env": "X"}, "at most 46"),
    ({"name": "x", "kind": "cdc", "source": "debezium-postgres", "connection_env": "X",
      "options": {"debezium_topic": "t"}}, "names its own topics"),
])
def test_a_debezium_source_is_checked_when_the_configuration_is_read(tmp_path, ledger, reason):
    import yaml

    from ledger_pipelines.config import ConfigError, load_config

    path = tmp_path / "ledgers.yaml"
    path.write_text(yaml.safe_dump({"ledgers": [ledger]}))
    with pytest.raises(ConfigError, match=reason):
        load_config(path)


def test_the_source_urls_tls_parameters_reach_the_connector_and_others_are_refused():
    from ledger_pipelines.connectors.cdc import connect
    from ledger_pipelines.settings import KafkaSettings

    from ledger_pipelines.connectors.sql.mapping import ColumnMapping

    lc = LedgerConfig(name="orders", kind="cdc", source="debezium-postgres", connection_env="X",
                      mapping=ColumnMapping())
    url = ("postgresql+psycopg://app:s3cret@db.internal:6432/ledger?sslmode=verify-full"
           "&sslrootcert=/etc/ssl/ca.pem&sslcert=/etc/ssl/app.crt&sslkey=/etc/ssl/app.key&connect_timeout=5")
    config = connect.connector_config(lc, KafkaSettings(bootstrap_servers="127.0.0.1:9092"), url, "${file:/p:password}")
    assert {k: v for k, v in config.items() if k.startswith("database.ssl")} == {
        "database.sslmode": "verify-full", "database.sslrootcert": "/etc/ssl/ca.pem",
        "database.sslcert": "/etc/ssl/app.crt", "database.sslkey": "/etc/ssl/app.key"}
    assert config["database.hostname"] == "db.internal" and config["database.port"] == "6432"
    assert "s3cret" not in str(config)
    plain = connect.connector_config(lc, KafkaSettings(bootstrap_servers="127.0.0.1:9092"),
                                     "postgresql+psycopg://app:pw@db/ledger", "${file:/p:password}")
    assert not any(k.startswith("database.ssl") for k in plain)
    for query, reason in (("sslpassword=x", "not sslpassword"), ("options=-c%20search_path%3Dx", "not options"),
                          ("sslmode=sometimes", "is not one of"), ("sslmode=require&sslmode=disable", "more than once")):
        with pytest.raises(connect.ConnectError, match=reason):
            connect.connector_config(lc, KafkaSettings(bootstrap_servers="127.0.0.1:9092"),
                                     f"postgresql+psycopg://app:pw@db/ledger?{query}", "${file:/p:password}")
