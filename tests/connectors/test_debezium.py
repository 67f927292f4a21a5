"""Debezium change events (tests/data/cdc) and Connect Decimal decoding."""

from __future__ import annotations

import base64
import json
from decimal import Decimal

import pytest

from conftest import REALDATA
from ledger_pipelines.config import ledger_by_name, load_config
from ledger_pipelines.connectors.cdc.debezium import debezium_file_to_entries, event_to_entries
from ledger_pipelines.connectors.sql.mapping import ColumnMapping
from ledger_pipelines.model import EntryError

CDC = REALDATA / "cdc"
MAPPING = ledger_by_name(load_config(), "products_cdc").mapping


def test_schema_envelope_events_all_decode_with_reversals_for_updates_and_delete():
    entries, errors = debezium_file_to_entries((CDC / "flink_debezium-postgres-data-schema-include.txt").read_bytes(),
                                               MAPPING, "products_cdc")
    assert errors == []
    ops = [e.position["op"] for e in entries]
    # 9 r + 2 c + 4 u (new version + reversal of the before image) + 1 d (reversal)
    assert ops.count("r") == 9 and ops.count("c") == 2 and ops.count("u") == 8 and ops.count("d") == 1
    assert len({e.entry_id for e in entries}) == len(entries) == 20
    first = entries[0]
    assert first.amount == "3.14" and first.account == "scooter" and first.asset == "KG"
    assert first.booked_at == "2020-07-29T05:38:19.434Z"
    reversed_ = [e for e in entries if e.status == "reversed"]
    assert len(reversed_) == 5


def test_default_replica_identity_delete_is_a_bad_record_naming_the_event():
    entries, errors = debezium_file_to_entries(
        (CDC / "flink_debezium-postgres-data-replica-identity.txt").read_bytes(), MAPPING, "products_cdc")
    assert len(entries) == 15  # updates carry no before image here: only their new versions
    assert len(errors) == 1 and "before image" in errors[0][1] and errors[0][0] == "line 16"


def _event(after, schema=None, op="c"):
    payload = {"before": None, "after": after, "op": op, "ts_ms": 1_700_000_000_000,
               "source": {"schema": "public", "table": "journal_lines", "lsn": 42, "ts_ms": 1_700_000_000_000}}
    return json.dumps({"schema": schema, "payload": payload} if schema else payload)


JOURNAL = ColumnMapping(table="journal_lines")
ROW = {"id": 7, "txn_id": "T1", "posted_at": "2026-11-24T10:15:00Z", "account": "GL-1", "counterparty": "GL-2",
       "currency": "EUR", "side": "D", "payment_ref": "E2E-1"}


def test_connect_decimal_with_its_schema_scale():
    unscaled = 123450  # 1234.50 at scale 2
    raw = base64.b64encode(unscaled.to_bytes(4, "big", signed=True)).decode()
    schema = {"fields": [{"field": "after", "fields": [
        {"field": "amount", "name": "org.apache.kafka.connect.data.Decimal", "parameters": {"scale": "2"}}]}]}
    (e,) = event_to_entries(_event(ROW | {"amount": raw}, schema), JOURNAL, "core_cdc")
    assert e.amount == "1234.50" and e.correlation_id == "E2E-1" and e.direction == "debit"


def test_big_decimal_values_and_string_decimals_stay_exact():
    # a JSON number beyond double precision, as Debezium writes NUMERIC with decimal.handling.mode=double
    event = _event(ROW | {"amount": "PLACEHOLDER"}).replace('"PLACEHOLDER"', "123456789012345678901234567890.12")
    (e,) = event_to_entries(event, JOURNAL, "core_cdc")
    assert Decimal(e.amount) == Decimal("123456789012345678901234567890.12")
    (s,) = event_to_entries(_event(ROW | {"amount": "0.000000000000000001"}), JOURNAL, "core_cdc")
    assert s.amount == "0.000000000000000001"


@pytest.mark.parametrize("event, reason", [
    (json.dumps({"before": None, "after": None, "op": "c", "source": {"table": "journal_lines"}}), "without 'after'"),
    (_event(ROW | {"amount": "-5"}), "negative"),
    (_event(ROW | {"amount": "NaN"}), "not finite"),
    (_event(ROW | {"amount": "12", "side": "X"}), "side"),
    ("{not json", "not valid JSON"),
])
def test_bad_events_are_refused_with_the_reason(event, reason):
    with pytest.raises(EntryError, match=reason):
        event_to_entries(event, JOURNAL, "core_cdc")
