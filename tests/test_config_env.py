"""Connecting a ledger without reading the code: a missing connection variable is an error naming it,
and ``ledger-pipelines stack env`` prints the variables that reach the local stack and the demo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest
import yaml

from ledger_pipelines.config import MissingConnection, load_config
from ledger_pipelines.local.stack import REPO_ROOT

CLI = str(Path(sys.executable).parent / "ledger-pipelines")
PORTS = {name: os.environ.get(name, default) for name, default in (
    ("LEDGER_KAFKA_PORT", "19092"), ("LEDGER_KAFKA_CONTROLLER_PORT", "19093"), ("LEDGER_PG_PORT", "55432"),
    ("LEDGER_ANVIL_PORT", "8545"))}
SECRET = "Sup3r-S3cret-pw"


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """This process's environment without any ledger-pipelines or Dagster setting, the stack's ports, a
    stack folder of this test's own (no demo, no deployment record, no PostgreSQL pid file)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LEDGER_", "DAGSTER_", "PG"))}
    env.update(PORTS, LEDGER_STACK_DIR=str(tmp_path / "stack"), LEDGER_DEMO_DIR=str(tmp_path / "no-demo"))
    env.update(extra)
    return env


def _config(tmp_path: Path, ledgers: list[dict]) -> Path:
    path = tmp_path / "ledgers.yaml"
    path.write_text(yaml.safe_dump({"ledgers": ledgers}))
    return path


ERP = {"name": "erp", "kind": "sql", "connection_env": "LEDGER_ERP_URL", "mapping": {}}


# --- a missing connection variable -------------------------------------------------------------------

@pytest.mark.parametrize("ledger, value, says", [
    (ERP, None, "ledger erp: LEDGER_ERP_URL is not set (its connection URL, e.g. sqlite:///path/erp.db or "
                "postgresql+psycopg://user@host/db)"),
    (ERP, "", "ledger erp: LEDGER_ERP_URL is empty (its connection URL"),
    (ERP, "  ", "ledger erp: LEDGER_ERP_URL is empty (its connection URL"),
    ({"name": "erp", "kind": "sql", "mapping": {}}, None,
     "ledger erp: no connection_env configured (the name of the environment variable that holds its connection "
     "URL, e.g. connection_env: LEDGER_ERP_URL)"),
], ids=["unset", "empty", "blank", "no-connection_env"])
def test_publish_with_a_missing_connection_variable_is_one_line_naming_it(tmp_path, ledger, value, says):
    config = _config(tmp_path, [ledger, {"name": "other", "kind": "sql", "connection_env": "LEDGER_OTHER_URL"}])
    env = _env(tmp_path, LEDGER_WAREHOUSE_URL=f"postgresql+psycopg://ledger:{SECRET}@127.0.0.1:9/w",
               LEDGER_OTHER_URL=f"postgresql+psycopg://bob:{SECRET}@127.0.0.1:9/other")
    if value is not None:
        env["LEDGER_ERP_URL"] = value
    done = subprocess.run([CLI, "publish", "erp", "--config", str(config)], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    doc = json.loads(lines[0])
    assert doc["source"] == "config" and doc["error"].startswith(says), doc
    assert SECRET not in done.stderr
    # nothing was read or created in place of the ledger's own database
    assert not (tmp_path / "stack" / "erp.db").exists()


def test_the_sql_rows_sensor_names_the_missing_variable(tmp_path, monkeypatch):
    from dagster import DagsterInstance, build_sensor_context

    from ledger_pipelines.resources import KafkaResource, WarehouseResource
    from ledger_pipelines.sensors.source_sensors import build_source_sensors

    for k, v in _env(tmp_path, LEDGER_CONFIG=str(_config(tmp_path, [ERP])),
                     LEDGER_WAREHOUSE_URL=f"sqlite:///{tmp_path / 'w.db'}").items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("LEDGER_ERP_URL", raising=False)
    context = build_sensor_context(instance=DagsterInstance.ephemeral(),
                                   resources={"warehouse": WarehouseResource(), "kafka": KafkaResource()})
    sql_rows_sensor = build_source_sensors(load_config())["sql_rows_sensor"]
    with pytest.raises(Exception, match="erp: MissingConnection: ledger erp: LEDGER_ERP_URL is not set"):
        sql_rows_sensor(context)
    assert not (tmp_path / "stack" / "erp.db").exists()


def test_a_snapshot_of_a_ledger_without_its_variable_names_it(tmp_path, monkeypatch):
    from ledger_pipelines.connectors.kinds import connector_for

    monkeypatch.setenv("LEDGER_STACK_DIR", str(tmp_path / "stack"))
    monkeypatch.setenv("LEDGER_ERP_URL", "")
    (lc,) = load_config(_config(tmp_path, [ERP]))
    with pytest.raises(MissingConnection, match="ledger erp: LEDGER_ERP_URL is empty"):
        connector_for(lc).read_day(date(2026, 11, 24), None)
    assert not (tmp_path / "stack" / "erp.db").exists()


# --- stack env ---------------------------------------------------------------------------------------

def _evaluated(env: dict[str, str], *args: str, environ: dict[str, str] | None = None) -> tuple[str, dict[str, str]]:
    """(what `stack env ARGS` printed, the environment of a shell that evaluated it), the command run with
    ``env`` and the shell started with ``environ`` (default ``env``)."""
    printed = subprocess.run([CLI, "stack", "env", *args], env=env, capture_output=True, text=True, timeout=120)
    assert printed.returncode == 0, printed.stderr
    shell = subprocess.run(["bash", "-c", 'eval "$1" && env -0', "bash", printed.stdout],
                           env=environ if environ is not None else env, capture_output=True, timeout=60)
    assert shell.returncode == 0, shell.stderr
    return printed.stdout, dict(item.split("=", 1) for item in shell.stdout.decode().split("\0") if item)


def _fake_demo(demo: Path, prefix: str) -> list[date]:
    """A demo folder as `ledger-pipelines demo` leaves it: its configuration and manifest."""
    from ledger_pipelines.local.demo import demo_config

    days = [date(2026, 11, 23), date(2026, 11, 24)]
    demo.mkdir(parents=True)
    conf = demo_config(demo, "0x" + "11" * 20, "0x" + "22" * 20, days)
    (demo / "corridor.yaml").write_text(yaml.safe_dump(conf, sort_keys=False))
    (demo / "manifest.json").write_text(json.dumps({"prefix": prefix, "days": [d.isoformat() for d in days],
                                                    "complete": True}))
    return days


def test_stack_env_evaluated_gives_the_values_the_demo_uses(tmp_path, monkeypatch):
    from ledger_pipelines.local.demo import demo_env

    demo = tmp_path / "my demo's $HOME `dir`"  # spaces, a quote, a dollar and backquotes: the quoting is tested
    prefix = "demo1764547200."
    _fake_demo(demo, prefix)
    # values of the shell that the demo overrides when it runs
    env = _env(tmp_path, LEDGER_DEMO_DIR=str(demo), LEDGER_TOPIC_PREFIX="mine.",
               LEDGER_WAREHOUSE_URL=f"sqlite:///{tmp_path / 'mine.db'}", LEDGER_SENDER_BANK_URL="sqlite:///x.db")
    printed, got = _evaluated(env)
    anvil = f"http://127.0.0.1:{PORTS['LEDGER_ANVIL_PORT']}"
    expected = {
        "LEDGER_CONFIG": str(demo / "corridor.yaml"),
        "LEDGER_WAREHOUSE_URL": f"sqlite:///{demo / 'warehouse.db'}",
        "LEDGER_SENDER_BANK_URL": f"sqlite:///{demo / 'sender_bank.db'}",
        "LEDGER_EVM_RPC_URL": anvil,
        "LEDGER_REPORTS_DIR": str(demo / "reports"),
        "LEDGER_TOPIC_PREFIX": prefix,
        "DAGSTER_HOME": str(demo / "dagster_home"),
        "LEDGER_KAFKA_BOOTSTRAP": f"127.0.0.1:{PORTS['LEDGER_KAFKA_PORT']}",
        "LEDGER_ANCHOR_RPC_URL": anvil,
        "LEDGER_BRIDGE_RPC_URL": anvil,
        "LEDGER_STACK_DIR": str((tmp_path / "stack").resolve()),
        "LEDGER_DEMO_DIR": str(demo),
        **PORTS,
    }
    assert {k: got.get(k) for k in expected} == expected
    # exactly what the demo sets for itself (demo_env, with this environment)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert {k: got.get(k) for k in demo_env(demo, prefix)} == demo_env(demo, prefix)
    # every connection variable of the demo's ledgers
    for lc in load_config(demo / "corridor.yaml"):
        var = lc.connection_env or lc.rpc_env
        assert var is None or got.get(var), (lc.name, var, printed)

    # what the code reads in a shell that evaluated it
    shell_env = {**got, "PYTHONPATH": str(REPO_ROOT)}
    seen = subprocess.run([sys.executable, "-c", (
        "import json; from ledger_pipelines.config import load_config; "
        "from ledger_pipelines.connectors.kinds import source_url; "
        "from ledger_pipelines.settings import KafkaSettings, default_warehouse_url; k = KafkaSettings.from_env(); "
        "print(json.dumps({'kafka': k.bootstrap_servers, 'prefix': k.topic_prefix, "
        "'warehouse': default_warehouse_url(), "
        "'ledgers': {lc.name: source_url(lc) for lc in load_config() if lc.kind in ('sql', 'evm')}}))")],
        env=shell_env, capture_output=True, text=True, timeout=120)
    assert seen.returncode == 0, seen.stderr
    assert json.loads(seen.stdout) == {
        "kafka": expected["LEDGER_KAFKA_BOOTSTRAP"], "prefix": prefix, "warehouse": expected["LEDGER_WAREHOUSE_URL"],
        "ledgers": {"sender_bank": expected["LEDGER_SENDER_BANK_URL"], "eth_usdc": anvil}}


def test_stack_env_without_a_demo_names_a_ledger_variable_that_is_not_set(tmp_path):
    config = _config(tmp_path, [ERP, {"name": "chain", "kind": "evm", "rpc_env": "LEDGER_CHAIN_RPC_URL"}])
    env = _env(tmp_path, LEDGER_CONFIG=str(config))
    printed, got = _evaluated(env)
    assert "# ledger erp: LEDGER_ERP_URL is not set (its connection URL" in printed
    assert "LEDGER_ERP_URL" not in got
    assert got["LEDGER_CHAIN_RPC_URL"] == f"http://127.0.0.1:{PORTS['LEDGER_ANVIL_PORT']}"  # what publish reads
    assert got["LEDGER_CONFIG"] == str(config)
    assert got["LEDGER_WAREHOUSE_URL"] == f"sqlite:///{(tmp_path / 'stack').resolve() / 'warehouse.db'}"
    assert got["LEDGER_TOPIC_PREFIX"] == "ledger."


def test_stack_env_gives_each_kind_the_variable_its_connector_reads(tmp_path):
    """A chain ledger named by connection_env is read through it (EvmConnector.source_url), so that is the
    variable exported; a statement ledger and a Debezium-fed one say where their records come from."""
    config = _config(tmp_path, [{"name": "chain", "kind": "evm", "connection_env": "LEDGER_CHAIN_URL"},
                                {"name": "stmts", "kind": "iso20022"},
                                {"name": "orders", "kind": "cdc", "options": {"debezium_topic": "erp.public.orders"}}])
    env = _env(tmp_path, LEDGER_CONFIG=str(config), LEDGER_CHAIN_URL="http://node.example:8545")
    printed, got = _evaluated(env)
    assert got["LEDGER_CHAIN_URL"] == "http://node.example:8545"
    assert "no rpc_env configured" not in printed
    assert "# ledger stmts (iso20022): statements are read from the inbox " in printed
    assert "# ledger orders (cdc): Debezium topic erp.public.orders on the Kafka above" in printed


def test_stack_env_masks_secrets_unless_asked(tmp_path):
    stack = tmp_path / "stack"
    stack.mkdir()
    local_pw = "lOcal-Pw_0123456789"
    (stack / "postgres.secret").write_text(local_pw + "\n")
    pg = PORTS["LEDGER_PG_PORT"]
    secrets = {
        "LEDGER_ERP_URL": f"postgresql+psycopg://bob:{SECRET}@db.example:5432/erp",
        "LEDGER_OTHER_URL": f"postgresql://bob@db.example/other?sslmode=require&password={SECRET}2",
        "LEDGER_ANCHOR_KEY": "0x" + "ab" * 32,
    }
    config = _config(tmp_path, [ERP, {"name": "other", "kind": "sql", "connection_env": "LEDGER_OTHER_URL"}])
    local = f"postgresql+psycopg://ledger:{local_pw}@127.0.0.1:{pg}/ledger"
    env = _env(tmp_path, LEDGER_CONFIG=str(config), LEDGER_WAREHOUSE_URL=local, **secrets)
    # evaluated where none of them is set yet: a masked value must not become the variable's value
    bare = {k: v for k, v in env.items() if k not in secrets and k != "LEDGER_WAREHOUSE_URL"}

    printed, got = _evaluated(env, environ=bare)
    for secret in (SECRET, local_pw, secrets["LEDGER_ANCHOR_KEY"][2:]):
        assert secret not in printed
    for var in ("LEDGER_ERP_URL", "LEDGER_OTHER_URL", "LEDGER_ANCHOR_KEY"):
        (line,) = [line for line in printed.splitlines() if var in line and "not set" not in line]
        assert line.startswith(f"# {var}") and "--show-secrets" in line, line
        assert var not in got
    assert "postgresql+psycopg://bob:***@db.example:5432/erp" in printed
    # the local PostgreSQL's URL is exported with the shell reading the password from the secret file
    assert got["LEDGER_WAREHOUSE_URL"] == local

    printed, got = _evaluated(env, "--show-secrets", environ=bare)
    assert SECRET in printed
    assert {k: got.get(k) for k in secrets} == secrets
    assert got["LEDGER_WAREHOUSE_URL"] == local


def test_stack_env_refuses_what_it_does_not_take(tmp_path):
    env = _env(tmp_path)
    for argv, says in ((["stack", "env", "kafka"], "takes no service names"),
                       (["stack", "status", "--show-secrets"], "--show-secrets is an option of `stack env` only")):
        done = subprocess.run([CLI, *argv], env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and says in done.stderr and len(done.stderr.splitlines()) == 1, done.stderr


_CHATTER = """
import logging, sys
from ledger_pipelines.settings import libraries_to_log_file
from ledger_pipelines.kafka.topics import admin
from ledger_pipelines.settings import KafkaSettings
logging.basicConfig(level=logging.INFO)
if sys.argv[1] == "quiet":
    libraries_to_log_file()
client = admin(KafkaSettings(bootstrap_servers=sys.argv[2]))
try:
    client.list_topics(timeout=2)
except Exception as exc:
    print("refused:", type(exc).__name__)
client.poll(1)  # serves the client's queued log lines
"""


def test_librdkafka_chatter_goes_to_the_log_file_not_the_terminal(tmp_path):
    """'Connect to ... failed' lines of an unreachable broker: in the log file, not on stderr; -v (no
    redirection) keeps them on the terminal."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{s.getsockname()[1]}"  # nothing listens once the socket is closed
    log = tmp_path / "cli.log"
    env = {**os.environ, "LEDGER_LOG_FILE": str(log)}
    quiet = subprocess.run([sys.executable, "-c", _CHATTER, "quiet", closed], capture_output=True, text=True,
                           env=env, cwd=REPO_ROOT, timeout=60)
    assert "refused: KafkaException" in quiet.stdout, quiet
    assert "Connect to" not in quiet.stderr and "%3|" not in quiet.stderr, quiet.stderr
    assert "Connect to" in log.read_text()
    loud = subprocess.run([sys.executable, "-c", _CHATTER, "verbose", closed], capture_output=True, text=True,
                          env=env, cwd=REPO_ROOT, timeout=60)
    assert "Connect to" in loud.stderr, loud.stderr


_COUNT_READS = """
from ledger_pipelines import config
reads = []
real = config._document
config._document = lambda path: reads.append(str(path)) or real(path)
from ledger_pipelines.definitions import defs
assert defs.resolve_job_def("nightly_audit_job") is not None
print(len(reads))
"""


def test_the_dagster_definitions_read_the_configuration_once():
    out = subprocess.run([sys.executable, "-c", _COUNT_READS], capture_output=True, text=True, cwd=REPO_ROOT,
                         timeout=180, env={k: v for k, v in os.environ.items() if k != "LEDGER_CONFIG"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "1"


def test_a_source_sensor_tick_does_not_read_the_configuration_again(tmp_path, monkeypatch):
    """The sensors are built over the ledgers the definitions were built from; a tick never re-reads
    the file (a configuration edited under a running code location would disagree with its assets)."""
    from dagster import DagsterInstance, SkipReason, build_sensor_context

    from ledger_pipelines.resources import KafkaResource, WarehouseResource
    from ledger_pipelines.sensors.source_sensors import build_source_sensors

    sensor = build_source_sensors(load_config(_config(tmp_path, [])))["sql_rows_sensor"]
    monkeypatch.setenv("LEDGER_CONFIG", str(tmp_path / "gone.yaml"))
    monkeypatch.setenv("LEDGER_WAREHOUSE_URL", f"sqlite:///{tmp_path / 'w.db'}")
    context = build_sensor_context(instance=DagsterInstance.ephemeral(),
                                   resources={"warehouse": WarehouseResource(), "kafka": KafkaResource()})
    assert isinstance(sensor(context), SkipReason)


def test_stack_env_stays_one_command_a_line_under_eval(tmp_path):
    """A configuration value quoted in a comment (an inbox path with a newline) cannot end the comment and
    run the rest under eval; a hosted node's URL with an API key in its path is not exported."""
    marker = tmp_path / "PWNED"
    config = _config(tmp_path, [{"name": "statements", "kind": "iso20022", "inbox": f"/x\ntouch {marker} #"},
                                {"name": "chain", "kind": "evm", "rpc_env": "LEDGER_T_CHAIN_RPC"}])
    env = _env(tmp_path, LEDGER_CONFIG=str(config), LEDGER_T_CHAIN_RPC="https://mainnet.example/v3/abcdef0123456789")
    out = subprocess.run([CLI, "stack", "env"], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "abcdef0123456789" not in out.stdout
    assert "# LEDGER_T_CHAIN_RPC=" in out.stdout
    shell = subprocess.run(["bash", "-c", f'eval "$({CLI} stack env)" && env'], capture_output=True, text=True,
                           env=env, timeout=120)
    assert shell.returncode == 0, shell.stderr
    assert not marker.exists()


def test_an_unquoted_token_address_is_refused_not_read_as_a_number(tmp_path):
    """YAML 1.1 reads ``0xA0b8…`` as an integer: str() of it was taken for the address, a decimal string that
    matched no log. The configuration is refused, saying to quote it."""
    from ledger_pipelines.config import ConfigError, load_config

    path = tmp_path / "ledgers.yaml"
    path.write_text("ledgers:\n  - name: eth_usdc\n    kind: evm\n    rpc_env: LEDGER_ETH_RPC\n"
                    "    tokens: [{address: 0xA0b86991c6218b36c1d19D4a2e9Eb0cE3606eB48, symbol: USDC, decimals: 6}]\n")
    with pytest.raises(ConfigError, match="is read by YAML as the number .*: quote it if it is text"):
        load_config(path)
    path.write_text(path.read_text().replace("address: 0xA0b86991c6218b36c1d19D4a2e9Eb0cE3606eB48",
                                             "address: '0xA0b86991c6218b36c1d19D4a2e9Eb0cE3606eB48'"))
    (lc,) = [lc for lc in load_config(path) if lc.name == "eth_usdc"]
    assert lc.tokens[0].address == "0xa0b86991c6218b36c1d19d4a2e9eb0ce3606eb48"


@pytest.mark.parametrize("minute", ["05", "08"])
def test_digits_with_a_leading_zero_are_refused_whether_yaml_would_read_a_number_or_text(tmp_path, minute):
    """YAML 1.1 reads 05 as the number 5 and 08 as the text "08": both are refused alike, saying to quote text."""
    from ledger_pipelines.config import ConfigError, load_project

    path = tmp_path / "ledgers.yaml"
    path.write_text(f"audit_schedule: {{hour: 2, minute: {minute}}}\nledgers: []\n")
    with pytest.raises(ConfigError, match=rf"'{minute}' has a leading zero, .*: quote it if it is text"):
        load_project(path)


_EVM = "{name: e, kind: evm, rpc_env: LEDGER_E_RPC"
_SQL = "{name: s, kind: sql, connection_env: LEDGER_S_URL"


@pytest.mark.parametrize("text, says", [
    (f"ledgers: [{_EVM}, confirmations: -3}}]", "ledger e: confirmations must be an integer from 0 to 100000, got '-3'"),
    (f"ledgers: [{_EVM}, confirmations: true}}]", "ledger e: confirmations must be an integer from 0 to 100000, got 'True'"),
    (f"ledgers: [{_EVM}, max_block_range: 0}}]", "ledger e: max_block_range must be an integer from 1 to"),
    (f"ledgers: [{_EVM}, start_block: '12'}}]", "ledger e: start_block must be an integer from 0 to"),
    (f"ledgers: [{_EVM}, tokens: [{{address: xyz, symbol: U, decimals: 6}}]}}]",
     "ledger e: tokens[0]: address 'xyz' is not a 0x-prefixed 20-byte hex address"),
    (f"ledgers: [{_EVM}, tokens: [{{address: '0x{'ab' * 20}', symbol: U, decimals: -2}}]}}]",
     "ledger e: tokens[0]: decimals must be an integer from 0 to 255, got '-2'"),
    (f"ledgers: [{_EVM}, tokens: [{{address: '0x{'ab' * 20}', symbol: 'U S'}}]}}]",
     "ledger e: tokens[0]: symbol 'U S' must be 1 to 64 characters without spaces"),
    (f"ledgers: [{_EVM}, tokens: [{{address: '0x{'ab' * 20}', decimal: 6}}]}}]",
     "ledger e: tokens[0]: unknown keys ['decimal']"),
    (f"ledgers: [{_EVM}, tokens: '0x{'ab' * 20}'}}]", "ledger e: tokens must be a list, got str"),
    (f"ledgers: [{_EVM}, watched_address: '0x12'}}]", "ledger e: watched_address '0x12' is not a 0x-prefixed"),
    (f"ledgers: [{_SQL}, assets: EUR}}]", "ledger s: assets must be a list, got str"),
    (f"ledgers: [{_SQL}, options: 5}}]", "ledger s: options must be a mapping"),
    ("audit_schedule: {hour: 25, minute: 0}\nledgers: []", "audit_schedule: hour must be an integer from 0 to 23"),
    ("audit_schedule: {hour: 2.5}\nledgers: []", "audit_schedule: hour must be an integer from 0 to 23, got '2.5'"),
    ("audit_schedule: {hour: 2, minte: 5}\nledgers: []", "audit_schedule must be a mapping of hour and minute"),
    ("audit_schedule: 3\nledgers: []", "audit_schedule must be a mapping of hour and minute"),
    ("partitions_start: hello\nledgers: []", "partitions_start 'hello' is not a day (YYYY-MM-DD)"),
    ("partitions_start: '2026-02-30'\nledgers: []", "partitions_start '2026-02-30' is not a day"),
    ("partitions_start: 2026-13-01\nledgers: []", "'2026-13-01' is not a date or time on the calendar (month must be in "
                                                  "1..12) at line 1, column 19"),
    (f"ledgers: [{_SQL}}}]\nreconciliations: 3", "reconciliations must be a list of ledger pairs"),
    (f"ledgers: [{_SQL}}}]\nreconciliations: [3]", "reconciliations[0] must be a mapping"),
    (f"ledgers: [{_SQL}}}]\nreconciliations: [{{name: ../x, left: s, right: s}}]",
     "reconciliations[0]: name '../x' must match"),
    (f"ledgers: [{_SQL}}}]\nreconciliations: [{{name: p, left: s, right: s}}, {{name: p, left: s, right: s}}]",
     "reconciliation p: the name is given twice"),
    (f"ledgers: [{_SQL}}}]\nreconciliations: [{{name: bridge_s, left: s, right: s}}]",
     "reconciliation bridge_s: the name of another folder of each day's report"),
    (f"ledgers: [{_SQL}}}]\nreconciliations: [{{name: data_docs, left: s, right: s}}]",
     "reconciliation data_docs: the name of another folder"),
    (f"ledgers: [{_SQL}}}]\nreconciliations: [{{name: p, left: s, right: s, rule: {{}}}}]",
     "reconciliation p: unknown keys ['rule']"),
])
def test_settings_of_the_configuration_are_checked_and_refused_by_name(tmp_path, text, says):
    """Each would have been taken as something else: -3 confirmations (every block final), a string of assets
    as its letters, a pair's name as a path out of the day's report folder, 25 o'clock as a schedule Dagster
    refuses at load, a day not on the calendar as an uncaught ValueError."""
    from ledger_pipelines.config import ConfigError, load_project

    path = tmp_path / "ledgers.yaml"
    path.write_text(text + "\n")
    with pytest.raises(ConfigError) as exc:
        load_project(path)
    assert says in str(exc.value), str(exc.value)


def test_settings_of_the_configuration_read_as_written(tmp_path):
    from ledger_pipelines.config import load_project

    path = tmp_path / "ledgers.yaml"
    path.write_text(f"partitions_start: 2026-10-01\naudit_schedule: {{hour: 0, minute: 59}}\n"
                    f"ledgers: [{_EVM}, confirmations: 0, tokens: [{{address: '0x{'AB' * 20}', symbol: USDC, "
                    f"decimals: 6}}]}}, {_SQL}, assets: [EUR]}}]\n"
                    f"reconciliations: [{{name: s_vs_e, left: s, right: e}}]\n")
    project = load_project(path)
    assert project.partitions_start == "2026-10-01" and project.audit_schedule == {"hour": 0, "minute": 59}
    evm, sql = project.ledgers
    assert evm.confirmations == 0 and evm.tokens[0].address == "0x" + "ab" * 20 and evm.tokens[0].decimals == 6
    assert sql.assets == ("EUR",) and project.pairs[0]["name"] == "s_vs_e"
