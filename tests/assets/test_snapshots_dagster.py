"""Daily snapshot assets, a week one run per day, the statement inbox and the source sensors."""

from __future__ import annotations

import shutil
from datetime import date, timedelta

import pytest
import yaml
from dagster import DagsterInstance, SkipReason, build_sensor_context, materialize

from conftest import REALDATA, balanced, post_journal
from ledger_pipelines.config import LedgerConfig
from ledger_pipelines.connectors.sql.mapping import ColumnMapping
from ledger_pipelines.connectors.sql.journal import SqlLedger
from ledger_pipelines.publish import Publisher
from ledger_pipelines.resources import KafkaResource, WarehouseResource
from ledger_pipelines.warehouse import Warehouse

pytestmark = pytest.mark.services
WEEK = [date(2026, 11, 17) + timedelta(days=i) for i in range(7)]


def test_a_week_of_snapshots_one_run_per_day(tmp_path, monkeypatch, kafka):
    from dagster import AssetCheckSeverity

    from ledger_pipelines.config import ledger_by_name, load_config
    from ledger_pipelines.definitions import build_definitions

    defs = build_definitions()  # of the current LEDGER_CONFIG (the module's defs are of the first one imported)
    from ledger_pipelines.ingest import EventLogIngestor

    core = f"sqlite:///{tmp_path / 'core.db'}"
    monkeypatch.setenv("LEDGER_CORE_BANKING_URL", core)
    monkeypatch.setenv("LEDGER_WAREHOUSE_URL", f"sqlite:///{tmp_path / 'w.db'}")
    # day i has i+1 balanced transactions
    post_journal(core, [x for i, day in enumerate(WEEK) for n in range(i + 1)
                        for x in balanced(f"{day}-{n}", f"{day}T12:00:0{n % 10}Z")])
    wh = Warehouse(f"sqlite:///{tmp_path / 'w.db'}")
    core_lc = ledger_by_name(load_config(), "core_banking")
    Publisher(kafka, wh).publish(core_lc)  # the bridge delivers the week: control totals agree
    EventLogIngestor(kafka, wh).run()
    asset = defs.resolve_assets_def("core_banking_snapshot")
    assert asset.backfill_policy.max_partitions_per_run == 1  # a backfill launches one run per day
    instance = DagsterInstance.ephemeral()
    for i, day in enumerate(WEEK):
        result = materialize([asset], instance=instance, partition_key=str(day))
        assert result.success
        (mat,) = result.asset_materializations_for_node("core_banking_snapshot")
        # the day's own materialization, with that day's figures
        assert mat.partition == str(day) and mat.metadata["day"].value == str(day)
        assert mat.metadata["rows"].value == 2 * (i + 1)
        assert mat.metadata["counts"].value["read"] == 2 * (i + 1)
        assert {e.check_name: e.passed for e in result.get_asset_check_evaluations()} == {
            "expectations": True, "trial_balance": True, "control_totals": True}
    per_day = dict(wh.rows("SELECT snapshot_date, count(*) FROM ledger_snapshots GROUP BY snapshot_date"))
    assert per_day == {str(d): 2 * (i + 1) for i, d in enumerate(WEEK)}
    # re-running one partition replaces only that day
    again = materialize([asset], instance=instance,
                        partition_key=str(WEEK[2]))
    assert again.success
    assert dict(wh.rows("SELECT snapshot_date, count(*) FROM ledger_snapshots GROUP BY snapshot_date")) == per_day
    # a transaction the bridge has not delivered: that day's control totals fail and block downstream
    post_journal(core, balanced("LATE", f"{WEEK[3]}T18:00:00Z", amount="7.00"))
    late = materialize([asset], instance=instance, partition_key=str(WEEK[3]), raise_on_error=False)
    (ct,) = [e for e in late.get_asset_check_evaluations() if e.check_name == "control_totals"]
    assert not ct.passed and ct.severity == AssetCheckSeverity.ERROR
    assert "EUR:credit" in ct.metadata["offending_ids"].value
    per_day[str(WEEK[3])] += 2  # the day's own data is sound, so its snapshot is published
    assert dict(wh.rows("SELECT snapshot_date, count(*) FROM ledger_snapshots GROUP BY snapshot_date")) == per_day


def test_statement_inbox_publishes_each_file_once_and_sets_bad_files_aside(kafka, tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    lc = LedgerConfig(name="bank_statements", kind="iso20022", inbox=str(inbox))
    wh = Warehouse(f"sqlite:///{tmp_path / 'w.db'}")
    pub = Publisher(kafka, wh)
    src = REALDATA / "iso20022" / "fffs_FI_camt_053_sample.xml"
    shutil.copy(src, inbox / "a.xml")
    assert pub.publish(lc).published == 10
    shutil.copy(src, inbox / "same-content-again.xml")  # dropped twice
    (inbox / "broken.xml").write_bytes(src.read_bytes()[:500])
    second = pub.publish(lc)
    assert second.published == 0 and second.rejected == 1 and sorted(second.files) == ["broken.xml"]
    assert pub.publish(lc).files == []


def test_source_sensors_request_publish_runs(tmp_path, monkeypatch, kafka, stack_config):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    config = tmp_path / "ledgers.yaml"
    config.write_text(yaml.safe_dump({"ledgers": [
        {"name": "bank_statements", "kind": "iso20022", "inbox": str(inbox)},
        {"name": "core_banking", "kind": "sql", "connection_env": "LEDGER_CORE_BANKING_URL", "mapping": {}},
    ]}))
    core = f"sqlite:///{tmp_path / 'core.db'}"
    monkeypatch.setenv("LEDGER_CONFIG", str(config))
    monkeypatch.setenv("LEDGER_CORE_BANKING_URL", core)
    monkeypatch.setenv("LEDGER_WAREHOUSE_URL", f"sqlite:///{tmp_path / 'w.db'}")
    from ledger_pipelines.config import load_config
    from ledger_pipelines.sensors.source_sensors import build_source_sensors

    sensors = build_source_sensors(load_config())
    sql_rows_sensor, statement_inbox_sensor = sensors["sql_rows_sensor"], sensors["statement_inbox_sensor"]

    def tick(sensor):
        return sensor(build_sensor_context(instance=DagsterInstance.ephemeral(),
                                           resources={"warehouse": WarehouseResource(), "kafka": KafkaResource()}))

    assert isinstance(tick(statement_inbox_sensor), SkipReason)
    shutil.copy(REALDATA / "iso20022" / "fffs_FI_camt_053_sample.xml", inbox / "s.xml")
    (req,) = tick(statement_inbox_sensor)
    assert req.run_config["ops"]["publish_ledger"]["config"]["ledger"] == "bank_statements"
    ledger = SqlLedger(core, ColumnMapping(), "core_banking")
    ledger.create_journal()
    assert isinstance(tick(sql_rows_sensor), SkipReason)
    from sqlalchemy import text

    with ledger.engine.begin() as c:
        c.execute(text("INSERT INTO journal_lines (txn_id, posted_at, account, currency, amount, side) "
                       "VALUES ('T', '2026-11-24T10:00:00Z', 'GL', 'EUR', '1.00', 'D')"))
    (req,) = tick(sql_rows_sensor)
    monkeypatch.setenv("LEDGER_KAFKA_BOOTSTRAP", kafka.bootstrap_servers)
    monkeypatch.setenv("LEDGER_TOPIC_PREFIX", kafka.topic_prefix)
    from ledger_pipelines.definitions import build_definitions

    defs = build_definitions()  # of the current LEDGER_CONFIG (the module's defs are of the first one imported)

    run = defs.resolve_job_def("publish_job").execute_in_process(
        run_config=req.run_config, instance=DagsterInstance.ephemeral())
    assert run.success
    assert isinstance(tick(sql_rows_sensor), SkipReason)
    ledger.dispose()
