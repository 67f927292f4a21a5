"""The source sensors: a late row that fills a gap on a quiet ledger is published; a broken source is an error."""

from __future__ import annotations

import pytest
import yaml
from dagster import DagsterInstance, SkipReason, build_sensor_context
from sqlalchemy import text

from ledger_pipelines.connectors.sql.mapping import ColumnMapping
from ledger_pipelines.connectors.sql.journal import SqlLedger
from ledger_pipelines.resources import KafkaResource, WarehouseResource
from ledger_pipelines.config import load_config
from ledger_pipelines.sensors.source_sensors import build_source_sensors


def _tick(name, instance):
    """One tick of the named source sensor, built over the configuration the test set (LEDGER_CONFIG)."""
    sensor = build_source_sensors(load_config())[name]
    return sensor(build_sensor_context(instance=instance,
                                       resources={"warehouse": WarehouseResource(), "kafka": KafkaResource()}))


def _line(c, line_id: int) -> None:
    c.execute(text("INSERT INTO journal_lines (id, txn_id, posted_at, account, currency, amount, side) "
                   "VALUES (:i, :t, '2026-11-24T10:00:00Z', 'GL', 'EUR', '1.00', 'D')"), {"i": line_id, "t": f"T{line_id}"})


@pytest.fixture
def ledger_env(tmp_path, monkeypatch, kafka):
    config = tmp_path / "ledgers.yaml"
    config.write_text(yaml.safe_dump({"ledgers": [
        {"name": "core_banking", "kind": "sql", "connection_env": "LEDGER_CORE_BANKING_URL", "mapping": {}}]}))
    core = f"sqlite:///{tmp_path / 'core.db'}"
    for k, v in {"LEDGER_CONFIG": str(config), "LEDGER_CORE_BANKING_URL": core,
                 "LEDGER_WAREHOUSE_URL": f"sqlite:///{tmp_path / 'w.db'}",
                 "LEDGER_KAFKA_BOOTSTRAP": kafka.bootstrap_servers, "LEDGER_TOPIC_PREFIX": kafka.topic_prefix}.items():
        monkeypatch.setenv(k, v)
    ledger = SqlLedger(core, ColumnMapping(), "core_banking")
    ledger.create_journal()
    yield ledger
    ledger.dispose()


@pytest.mark.services
def test_a_late_row_filling_a_gap_on_a_quiet_ledger_is_published(ledger_env):
    from ledger_pipelines.definitions import build_definitions

    defs = build_definitions()  # of the current LEDGER_CONFIG (the module's defs are of the first one imported)

    instance = DagsterInstance.ephemeral()
    with ledger_env.engine.begin() as c:  # line 2 took its id but commits later
        _line(c, 1)
        _line(c, 3)

    def run(req):
        assert defs.resolve_job_def("publish_job").execute_in_process(
            run_config=req.run_config, instance=instance).success
        return req.run_key

    (first,) = _tick("sql_rows_sensor", instance)
    keys = {run(first)}
    assert isinstance(_tick("sql_rows_sensor", instance), SkipReason)  # the gap is open, nothing new to read
    with ledger_env.engine.begin() as c:
        _line(c, 2)  # the late commit: the top id and the gap set are as before
    (late,) = _tick("sql_rows_sensor", instance)
    assert late.run_key not in keys  # a key already used would never run again
    run(late)
    assert isinstance(_tick("sql_rows_sensor", instance), SkipReason)
    from ledger_pipelines.warehouse import Warehouse
    from ledger_pipelines.warehouse.state import get_cursor

    wh = Warehouse(WarehouseResource().url())
    assert get_cursor(wh, "core_banking")["gaps"] == {}  # line 2 was read
    wh.dispose()


@pytest.mark.services
def test_a_source_that_cannot_be_read_fails_the_tick_with_the_reason(ledger_env, monkeypatch, tmp_path):
    monkeypatch.setenv("LEDGER_CORE_BANKING_URL", f"sqlite:///{tmp_path / 'nowhere' / 'core.db'}")
    with pytest.raises(Exception, match="core_banking: OperationalError"):
        _tick("sql_rows_sensor", DagsterInstance.ephemeral())


def test_an_unreachable_chain_fails_the_tick_with_the_reason(tmp_path, monkeypatch):
    config = tmp_path / "ledgers.yaml"
    config.write_text(yaml.safe_dump({"ledgers": [
        {"name": "eth_usdc", "kind": "evm", "rpc_env": "LEDGER_EVM_RPC_URL"}]}))
    monkeypatch.setenv("LEDGER_CONFIG", str(config))
    monkeypatch.setenv("LEDGER_EVM_RPC_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("LEDGER_WAREHOUSE_URL", f"sqlite:///{tmp_path / 'w.db'}")
    with pytest.raises(Exception, match="eth_usdc: "):
        _tick("evm_blocks_sensor", DagsterInstance.ephemeral())


def test_a_change_whose_run_failed_is_asked_for_again_and_a_running_publish_is_left_alone(tmp_path, monkeypatch):
    """Same change, same slot: the same key (no run per tick). A later slot: a new key, so a change whose run
    failed is published after all. While a publish run of the ledger is queued or running, no request."""
    import time as real_time
    from types import SimpleNamespace

    from dagster import DagsterRunStatus

    from ledger_pipelines.jobs import PUBLISH_JOB
    from ledger_pipelines.sensors import source_sensors

    config = tmp_path / "ledgers.yaml"
    config.write_text(yaml.safe_dump({"ledgers": [
        {"name": "core_banking", "kind": "sql", "connection_env": "LEDGER_CORE_BANKING_URL", "mapping": {}}]}))
    core = f"sqlite:///{tmp_path / 'core.db'}"
    for k, v in {"LEDGER_CONFIG": str(config), "LEDGER_CORE_BANKING_URL": core,
                 "LEDGER_WAREHOUSE_URL": f"sqlite:///{tmp_path / 'w.db'}"}.items():
        monkeypatch.setenv(k, v)
    ledger = SqlLedger(core, ColumnMapping(), "core_banking")
    ledger.create_journal()
    with ledger.engine.begin() as c:
        _line(c, 1)
    ledger.dispose()
    now = [1_800_000_000.0]
    monkeypatch.setattr(source_sensors, "time", SimpleNamespace(time=lambda: now[0], monotonic=real_time.monotonic))
    instance = DagsterInstance.ephemeral()
    (first,) = _tick("sql_rows_sensor", instance)
    now[0] += 60
    (same,) = _tick("sql_rows_sensor", instance)
    assert same.run_key == first.run_key
    now[0] += source_sensors.RETRY_SECONDS
    (later,) = _tick("sql_rows_sensor", instance)
    assert later.run_key != first.run_key
    from ledger_pipelines.definitions import build_definitions

    defs = build_definitions()  # of the current LEDGER_CONFIG (the module's defs are of the first one imported)

    run = instance.create_run_for_job(defs.resolve_job_def(PUBLISH_JOB), run_config=later.run_config,
                                      tags={"ledger": "core_banking"}, status=DagsterRunStatus.STARTED)
    assert run.status == DagsterRunStatus.STARTED
    assert isinstance(_tick("sql_rows_sensor", instance), SkipReason)


def test_a_failed_debezium_connector_fails_the_cdc_tick_and_a_removed_one_is_registered_again(tmp_path, monkeypatch):
    """A FAILED connector writes nothing more to its topics: the tick must say so, not "no new change
    events". The states are the ones Kafka Connect's status endpoint reports (``connect.status``)."""
    from ledger_pipelines.connectors.cdc import connect
    from ledger_pipelines.warehouse import Warehouse
    from ledger_pipelines.warehouse.state import set_cursor

    config = tmp_path / "ledgers.yaml"
    config.write_text(yaml.safe_dump({"ledgers": [
        {"name": "orders", "kind": "cdc", "source": "debezium-postgres", "connection_env": "LEDGER_ORDERS_URL"}]}))
    for k, v in {"LEDGER_CONFIG": str(config), "LEDGER_ORDERS_URL": "postgresql+psycopg://u:p@127.0.0.1:9/x",
                 "LEDGER_WAREHOUSE_URL": f"sqlite:///{tmp_path / 'w.db'}",
                 "LEDGER_KAFKA_BOOTSTRAP": "127.0.0.1:9"}.items():
        monkeypatch.setenv(k, v)
    wh = Warehouse(f"sqlite:///{tmp_path / 'w.db'}")
    wh.create_schema()
    set_cursor(wh, "orders", {"offsets": {"0": 10}})  # it has published before
    wh.dispose()
    trace = ("org.apache.kafka.connect.errors.ConnectException: An exception occurred in the change event producer. "
             "This connector will be stopped.\n\tat io.debezium.pipeline.ErrorHandler.setProducerThrowable(ErrorHandler.java:67)\n"
             + "\tat io.debezium.x.y(Z.java:1)\n" * 40
             + "Caused by: io.debezium.DebeziumException: Couldn't obtain encoding for database x\n\tat io.debezium.a(B.java:2)\n"
             "Caused by: org.postgresql.util.PSQLException: FATAL: password authentication failed for user \"u\"\n"
             "\tat org.postgresql.core.v3.ConnectionFactoryImpl.doAuthentication(ConnectionFactoryImpl.java:693)\n")
    states = {"failed task": {"connector": "RUNNING", "tasks": [{"state": "FAILED", "reason": connect._reason(trace),
                                                                "trace": trace[:500]}]},
              "failed connector": {"connector": "FAILED", "tasks": []}}
    for what, state in states.items():
        monkeypatch.setattr(connect, "status", lambda ledger, url=None, timeout=0, state=state: state)
        with pytest.raises(Exception, match="orders: ConnectError: connector ledger-pipelines.orders is FAILED") as err:
            _tick("cdc_changes_sensor", DagsterInstance.ephemeral())
        if what == "failed task":  # the innermost cause, not Connect's generic first line
            assert "PSQLException: FATAL: password authentication failed" in str(err.value)
            assert "at io.debezium" not in str(err.value) and "change event producer" not in str(err.value)
    monkeypatch.setattr(connect, "status", lambda ledger, url=None, timeout=0: {"connector": "absent", "tasks": []})
    monkeypatch.setattr(connect, "slot_lag", lambda lc: {"slot": "s", "active": False, "lag_bytes": 0})
    requests = _tick("cdc_changes_sensor", DagsterInstance.ephemeral())  # removed by hand, slot kept: registered
    assert [r.run_config["ops"]["publish_ledger"]["config"]["ledger"] for r in requests] == ["orders"]
    monkeypatch.setattr(connect, "slot_lag", lambda lc: None)  # removed on purpose (`cdc sync`): not brought back
    with pytest.raises(Exception, match="and its replication slot are gone"):
        _tick("cdc_changes_sensor", DagsterInstance.ephemeral())
