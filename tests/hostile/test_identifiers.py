"""Every validator of names, identifiers and keys refuses a trailing newline.

Python's ``$`` also matches just before a final "\\n", so "name\\n" passed a ``^...$`` check and
reached SQL, topic names and file names. Each case below goes through the project's own
validator (not the regex alone), with the valid form beside it so the test cannot pass by
refusing everything.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
import pytest

from ledger_pipelines.config import ConfigError, _ledger
from ledger_pipelines.kafka.topics import entries_topic, ledger_of_topic
from ledger_pipelines.model import NAME_PATTERN, EntryError, decode_entry, decode_wire, encode_entry, make_entry
from ledger_pipelines.settings import KafkaSettings, SettingsError
from ledger_pipelines.triggers import load_rules
from ledger_pipelines.warehouse import validate_identifier

NL = "\n"


def _doc(**over) -> bytes:
    e = make_entry(ledger="core_banking", ledger_kind="sql", source_ref="42", account="GL-1", counterparty=None,
                   asset="EUR", amount="10.00", direction="debit", booked_at="2026-11-24T10:15:00Z",
                   value_date="2026-11-24", status="booked")
    doc = msgspec.json.decode(encode_entry(e))
    doc.update(over)
    return msgspec.json.encode(doc)


def test_warehouse_identifier():
    assert validate_identifier("journal_lines") == "journal_lines"
    for bad in ("journal_lines" + NL, "journal_lines\r\n", NL):
        with pytest.raises(ValueError, match="plain SQL identifier"):
            validate_identifier(bad, "table")


def test_ledger_name_and_environment_names_in_configuration():
    assert _ledger({"name": "core", "kind": "iso20022"}).name == "core"
    with pytest.raises(ConfigError, match="ledger name"):
        _ledger({"name": "core" + NL, "kind": "iso20022"})
    assert _ledger({"name": "core", "kind": "evm", "rpc_env": "CORE_RPC"}).rpc_env == "CORE_RPC"
    for key in ("connection_env", "rpc_env"):
        with pytest.raises(ConfigError, match=key):
            _ledger({"name": "core", "kind": "evm", key: "CORE_RPC" + NL})


def test_topic_prefix():
    assert KafkaSettings("h:1", topic_prefix="prod.ledger.").topic_prefix == "prod.ledger."
    with pytest.raises(SettingsError, match="topic prefix"):
        KafkaSettings("h:1", topic_prefix="prod.ledger." + NL)


def test_entry_topic_names():
    s = KafkaSettings("h:1", topic_prefix="ledger.")
    assert entries_topic(s, "core") == "ledger.core.entries"
    with pytest.raises(ValueError, match="ledger name"):
        entries_topic(s, "core" + NL)
    assert ledger_of_topic(s, "ledger.core.entries") == "core"
    assert ledger_of_topic(s, "ledger.core.entries" + NL) is None


def test_trigger_rule_name():
    ledgers = [_ledger({"name": "core", "kind": "sql"}), _ledger({"name": "chain", "kind": "evm"})]
    rule = {"name": "to_chain", "source": "core", "action": {"type": "bridge_record"}}
    assert load_rules({"triggers": [rule]}, ledgers)[0].name == "to_chain"
    with pytest.raises(ConfigError, match="trigger name"):
        load_rules({"triggers": [dict(rule, name="to_chain" + NL)]}, ledgers)


@pytest.mark.parametrize("decode", [decode_entry, decode_wire])
@pytest.mark.parametrize("field,value", [
    ("ledger", "core_banking" + NL),
    ("booked_at", "2026-11-24T10:15:00Z" + NL),
    ("value_date", "2026-11-24" + NL),
    ("amount", "10.00" + NL),
])
def test_canonical_entry_fields(decode, field, value):
    assert decode(_doc()).ledger == "core_banking"
    over = {field: value}
    if field == "ledger":  # keep the id derived from the ledger, so only the name is at fault
        over["entry_id"] = value + ":42"
    with pytest.raises(EntryError, match=field):
        decode(_doc(**over))


def test_name_pattern_under_msgspec_search_semantics():
    """msgspec's Meta(pattern=...) searches (re.search), so the pattern's own anchors decide."""
    Name = Annotated[str, msgspec.Meta(pattern=NAME_PATTERN)]
    assert msgspec.json.decode(b'"core"', type=Name) == "core"
    for bad in (b'"core\\n"', b'"xx core"'):
        with pytest.raises(msgspec.ValidationError):
            msgspec.json.decode(bad, type=Name)


@pytest.mark.services
def test_signing_key(anvil_service, stack_config, monkeypatch):
    from ledger_pipelines.chain import ANVIL_DEV_KEY, ChainError, Signer

    monkeypatch.setenv("HOSTILE_KEY", ANVIL_DEV_KEY)
    assert Signer.from_env(stack_config.anvil_url, "HOSTILE_KEY").address
    monkeypatch.setenv("HOSTILE_KEY", ANVIL_DEV_KEY + NL)
    with pytest.raises(ChainError, match="HOSTILE_KEY is not a 32-byte hex private key"):
        Signer.from_env(stack_config.anvil_url, "HOSTILE_KEY")
