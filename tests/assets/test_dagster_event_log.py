"""The Dagster edge of the event log: sensor -> run -> rows, on the real broker and both databases."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from dagster import DagsterInstance, SensorResult, SkipReason, build_sensor_context

from ledger_pipelines.definitions import defs
from ledger_pipelines.generate import synthetic_entries
from ledger_pipelines.kafka import EntryProducer, ensure_topics
from ledger_pipelines.resources import KafkaResource, WarehouseResource
from ledger_pipelines.sensors.kafka_offsets_sensor import kafka_offsets_sensor
from ledger_pipelines.warehouse import Warehouse

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def env(kafka, warehouse_url, monkeypatch):
    monkeypatch.setenv("LEDGER_KAFKA_BOOTSTRAP", kafka.bootstrap_servers)
    monkeypatch.setenv("LEDGER_TOPIC_PREFIX", kafka.topic_prefix)
    monkeypatch.setenv("LEDGER_WAREHOUSE_URL", warehouse_url)
    return kafka, warehouse_url


def _tick(instance):
    ctx = build_sensor_context(instance=instance, resources={"kafka": KafkaResource(), "warehouse": WarehouseResource()})
    return kafka_offsets_sensor(ctx)


def _launch(instance, request):
    job = defs.resolve_job_def("event_log_job")
    return job.execute_in_process(run_config=request.run_config, instance=instance, tags=request.tags)


@pytest.mark.services
def test_sensor_requests_one_run_that_ingests_exactly_n(env):
    kafka, url = env
    instance = DagsterInstance.ephemeral()
    assert isinstance(_tick(instance), SkipReason)  # no topics yet
    ensure_topics(kafka, ["core_banking", "eth_usdc"])
    producer = EntryProducer(kafka, "test")
    producer.publish(synthetic_entries("core_banking", 7000))
    producer.publish(synthetic_entries("eth_usdc", 3000))
    tick = _tick(instance)
    assert isinstance(tick, SensorResult) and len(tick.run_requests) == 1
    request = tick.run_requests[0]
    targets = request.run_config["ops"]["ledger_event_log"]["config"]["targets"]
    assert sum(t["offset"] for t in targets) == 10_000 and len(targets) == 8
    assert request.run_key and request.tags["ledger_pipelines/lag"] == "10000"
    # new messages after the targets were fixed stay for the next run
    producer.publish(synthetic_entries("core_banking", 500, start=7000))
    result = _launch(instance, request)
    assert result.success
    mat = result.asset_materializations_for_node("ledger_event_log")[0]
    assert mat.metadata["rows"].value == 10_000
    assert mat.metadata["rejected"].value == 0 and mat.metadata["conflicts"].value == 0
    assert mat.metadata["lag"].value == 500
    # new entries only: no batch written again
    assert mat.metadata["writes_retried"].value == 0
    (check,) = result.get_asset_check_evaluations()
    assert check.passed and check.metadata["rows_checked"].value == 10_000
    wh = Warehouse(url)
    assert wh.event_counts()["events"] == 10_000
    # the same targets again (a re-execution from the UI): nothing changes
    again = _launch(instance, request)
    assert again.success
    assert again.asset_materializations_for_node("ledger_event_log")[0].metadata["rows"].value == 0
    assert wh.event_counts()["events"] == 10_000
    # the sensor now asks for the 500 newer messages, then skips once they are in
    tick = _tick(instance)
    assert isinstance(tick, SensorResult) and tick.run_requests[0].run_key != request.run_key
    assert _launch(instance, tick.run_requests[0]).success
    assert wh.event_counts()["events"] == 10_500
    skip = _tick(instance)
    assert isinstance(skip, SkipReason) and "lag 0" in skip.skip_message
    wh.dispose()


@pytest.mark.services
def test_secrets_never_reach_logs_or_metadata(kafka, pg_url, monkeypatch, capfd):
    secret = pg_url.split(":")[2].split("@")[0]
    assert len(secret) >= 8
    monkeypatch.setenv("LEDGER_KAFKA_BOOTSTRAP", kafka.bootstrap_servers)
    monkeypatch.setenv("LEDGER_TOPIC_PREFIX", kafka.topic_prefix)
    monkeypatch.setenv("LEDGER_WAREHOUSE_URL", pg_url)
    ensure_topics(kafka, ["core_banking"])
    EntryProducer(kafka, "test").publish(synthetic_entries("core_banking", 100))
    instance = DagsterInstance.ephemeral()
    tick = _tick(instance)
    result = _launch(instance, tick.run_requests[0])
    assert result.success
    records = instance.all_logs(result.run_id)
    text = "\n".join(str(r) for r in records)
    assert "ledger_event_log" in text and secret not in text
    mat = result.asset_materializations_for_node("ledger_event_log")[0]
    assert "***" in mat.metadata["warehouse"].value and secret not in str(mat.metadata)
    out, err = capfd.readouterr()
    assert secret not in out and secret not in err
    # the resource config the UI shows names the variable, never the value
    assert secret not in str(defs.resources)


def test_definitions_load():
    from dagster import Definitions

    Definitions.validate_loadable(defs)
    names = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert "ledger_event_log" in names
    assert defs.resolve_sensor_def("kafka_offsets_sensor")


def test_dagster_definitions_validate_cli(tmp_path):
    exe = Path(sys.executable).parent / "dagster"
    r = subprocess.run([str(exe), "definitions", "validate", "-w", "workspace.yaml"], cwd=REPO,
                       env={**__import__("os").environ, "DAGSTER_HOME": str(tmp_path)},
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "passed validation" in (r.stdout + r.stderr)
