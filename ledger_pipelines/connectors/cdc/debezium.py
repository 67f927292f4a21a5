"""Debezium change events of a ledger table to canonical entries.

Accepted: the Kafka Connect JSON envelope (``{"schema": ..., "payload": ...}``) or the bare payload;
ops ``r`` (snapshot), ``c``, ``u``, ``d``. Numbers are decoded exactly: JSON numbers keep their text
(never a float), Connect ``Decimal`` values (base64 big-endian two's complement + ``scale``) are
decoded with the scale of the event's schema or the mapping's ``decimal_scale``, string decimals
as they are.

The rule for changes (one entry per row version):
- ``r`` / ``c``: the row as a ``booked`` entry, ``source_ref`` = ``<schema>.<table>:<pk>@<lsn>``.
- ``u``: the new row version as a ``booked`` entry (its own source_ref); when the event carries the
  before image, the old version is also emitted as a ``reversed`` entry
  (``…@<lsn>:reversal``), so the pair nets the change.
- ``d``: the before image as a ``reversed`` entry (``…@<lsn>:delete``). A delete without a before image
  (REPLICA IDENTITY DEFAULT) cannot be mapped and is reported as a bad record naming the event.

The LSN (``source.lsn``) is what tells two versions of a row apart: an event without one is refused
rather than given an id another version of the row could share. An event is mapped whole or refused
whole (an update is never half published).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from decimal import Decimal
from typing import Any

from ...model import MAX_AMOUNT_DIGITS, CanonicalEntry, EntryError, Mapped, Rejection, refuse_deep_json, scaled_decimal
from ..sql.mapping import ColumnMapping, row_to_entry, scalar_text, utc_from_millis

CONNECT_DECIMAL = "org.apache.kafka.connect.data.Decimal"
MAX_LSN = 2**64 - 1  # PostgreSQL's pg_lsn is an unsigned 64-bit position
# 40 bytes of two's complement hold 96 decimal digits, the longest canonical amount
MAX_DECIMAL_BYTES = 40


def _decimal_fields(schema: Any) -> dict[str, Any]:
    """column -> the ``scale`` parameter (unchecked) of Connect Decimal fields of the row schema."""
    out: dict[str, Any] = {}
    if schema is None:
        return out
    if not isinstance(schema, dict) or not isinstance(schema.get("fields", []), list):
        raise EntryError("schema: not a Connect struct schema (an object with a list of fields)")
    for part in schema.get("fields", []):
        if not isinstance(part, dict):
            raise EntryError(f"schema: field {str(part)[:60]!r} is not an object")
        if part.get("field") in ("before", "after"):
            columns = part.get("fields", [])
            if not isinstance(columns, list) or not all(isinstance(f, dict) for f in columns):
                raise EntryError(f"schema: the fields of {part['field']!r} are not a list of objects")
            for f in columns:
                if f.get("name") == CONNECT_DECIMAL and isinstance(f.get("field"), str):
                    params = f.get("parameters") or {}
                    if not isinstance(params, dict):
                        raise EntryError(f"schema: parameters of Decimal {f['field']!r} are not an object")
                    out[f["field"]] = params.get("scale", 0)
    return out


def _scale(raw: Any, where: str) -> int:
    """A Connect Decimal scale: an int32 in the schema, written as a number or as digits in a string."""
    if type(raw) is int:
        scale = raw
    elif isinstance(raw, str) and re.fullmatch(r"-?[0-9]{1,9}", raw):
        scale = int(raw)
    else:
        raise EntryError(f"{where}: Decimal scale {str(raw)[:40]!r} is not an integer")
    if abs(scale) > MAX_AMOUNT_DIGITS:
        raise EntryError(f"{where}: Decimal scale {scale} is beyond the {MAX_AMOUNT_DIGITS} digits of an amount")
    return scale


def _connect_decimal(value: str, scale: int) -> Decimal:
    raw = base64.b64decode(value, validate=True)
    if not raw or len(raw) > MAX_DECIMAL_BYTES:
        raise ValueError(f"{len(raw)} bytes")
    return scaled_decimal(int.from_bytes(raw, "big", signed=True), scale)


MAX_NESTING = 1000  # Debezium envelopes with their schema nest deeper than entries do


def decode_event(line: bytes | str) -> tuple[dict, dict[str, Any]]:
    """(payload, Decimal scale parameters) of one event; numbers stay exact (Decimal)."""
    refuse_deep_json(line, MAX_NESTING)
    try:
        doc = json.loads(line, parse_float=Decimal, parse_constant=Decimal)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, bad UTF-8, an int too long, nesting too deep
        raise EntryError(f"not valid JSON: {str(exc)[:200]}") from None
    if not isinstance(doc, dict):
        raise EntryError("a change event is a JSON object")
    if "payload" in doc and "schema" in doc:
        if not isinstance(doc["payload"], dict):
            raise EntryError(f"payload is {type(doc['payload']).__name__}, not an object")
        return doc["payload"], _decimal_fields(doc.get("schema"))
    return doc, {}


def _row(image: dict, m: ColumnMapping, scales: dict[str, Any], where: str) -> dict:
    row = dict(image)
    amount = row.get(m.amount)
    if isinstance(amount, str) and (m.amount in scales or (m.decimal_scale is not None and not _is_decimal(amount))):
        scale = _scale(scales[m.amount], where) if m.amount in scales else m.decimal_scale
        try:
            row[m.amount] = _connect_decimal(amount, scale)
        except (ValueError, TypeError, binascii.Error):
            raise EntryError(f"{where}: amount {amount[:60]!r} is not a Connect Decimal "
                             f"(base64 of 1 to {MAX_DECIMAL_BYTES} bytes)") from None
    return row


def _is_decimal(text: str) -> bool:
    try:
        Decimal(text)
        return True
    except Exception:
        return False


def _object(value: Any, name: str, where: str, required: bool = False) -> dict | None:
    if value is None and not required:
        return None
    if not isinstance(value, dict):
        raise EntryError(f"{where}: {name} is {type(value).__name__}, not an object")
    return value


def event_to_entries(line: bytes | str, m: ColumnMapping, ledger: str) -> list[CanonicalEntry]:
    """The entries of one change event; EntryError (and nothing else) when it cannot be mapped."""
    payload, scales = decode_event(line)
    op = payload.get("op")
    source = _object(payload.get("source"), "source", f"debezium op={str(op)[:20]!r}", required=True)
    schema, tbl = source.get("schema") or source.get("db") or "", source.get("table") or m.table
    if not isinstance(schema, str) or not isinstance(tbl, str):
        raise EntryError(f"debezium op={str(op)[:20]!r}: source schema/table {str(schema)[:40]!r}.{str(tbl)[:40]!r} "
                         f"are not names")
    table = f"{schema}.{tbl}".lstrip(".")
    before = _object(payload.get("before"), "before", f"debezium {table}")
    after = _object(payload.get("after"), "after", f"debezium {table}")
    image = after if after is not None else before
    pk = (image or {}).get(m.id)
    lsn = source.get("lsn")
    where = f"debezium {table} op={str(op)[:20]!r} {m.id}={str(pk)[:60]!r} (lsn {str(lsn)[:40]})"
    if op not in ("r", "c", "u", "d"):
        raise EntryError(f"{where}: unknown op (expected r, c, u or d)")
    if op in ("r", "c", "u") and after is None:
        raise EntryError(f"{where}: {op!r} event without 'after' row image")
    if op == "d" and before is None:
        raise EntryError(f"{where}: delete without a before image (REPLICA IDENTITY DEFAULT); "
                         f"the key is only in the Kafka record key")
    if lsn is None:
        raise EntryError(f"{where}: no source.lsn: without the change's log position two versions of the row "
                         f"would get the same entry id")
    if type(lsn) is not int or not 0 <= lsn <= MAX_LSN:
        raise EntryError(f"{where}: source.lsn is not a log position (an integer from 0 to 2^64-1)")
    if scalar_text(pk, where, m.id) is None:
        raise EntryError(f"{where}: the row image has no {m.id}")
    tx_id = source.get("txId")
    if tx_id is not None and (type(tx_id) is not int or tx_id < 0):
        raise EntryError(f"{where}: source.txId {str(tx_id)[:40]!r} is not a transaction number")
    ts = source.get("ts_ms") if source.get("ts_ms") is not None else payload.get("ts_ms")
    booked_at = utc_from_millis(ts, where) if ts is not None else None
    if m.posted_at and image.get(m.posted_at) is not None:
        booked_at = None  # the row's own posting time
    position = {"table": table, "op": op, "lsn": lsn, "tx_id": tx_id, "ts_ms": ts}
    base = f"{table}:{pk}@{lsn}"
    out = []
    if op in ("r", "c", "u"):
        out.append(row_to_entry(_row(after, m, scales, where), m, ledger, "cdc", source_ref=base,
                                position=position, booked_at=booked_at))
    if before is not None and op in ("u", "d"):
        suffix = "reversal" if op == "u" else "delete"
        out.append(row_to_entry(_row(before, m, scales, where), m, ledger, "cdc", source_ref=f"{base}:{suffix}",
                                status="reversed", position=position, booked_at=booked_at))
    return out


def debezium_events_to_entries(data: bytes, m: ColumnMapping, ledger: str, source: str | None = None,
                               seen: dict[str, str] | None = None) -> Mapped:
    """Every change event of a JSON-lines input (one event a non-blank line is one record).

    ``seen`` (entry id -> where it was produced) spans several inputs when the caller passes the same
    dict: an event whose entry repeats one already produced is refused as a duplicate naming both lines.
    """
    entries: list[CanonicalEntry] = []
    rejections: list[Rejection] = []
    seen = {} if seen is None else seen
    index = accepted = 0
    for n, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{source}: line {n}" if source else f"line {n}"
        try:
            mapped = event_to_entries(line, m, ledger)
            for e in mapped:
                if e.entry_id in seen:
                    raise EntryError(f"duplicate: entry {e.entry_id} is also the entry of {seen[e.entry_id]}")
        except EntryError as exc:
            rejections.append(Rejection(where, str(exc), index))
        else:
            for e in mapped:
                seen[e.entry_id] = where
            entries.extend(mapped)
            accepted += 1
        index += 1
    return Mapped(entries, rejections, accepted)


def debezium_file_to_entries(data: bytes, m: ColumnMapping, ledger: str) -> tuple[list[CanonicalEntry], list[tuple[str, str]]]:
    """Every line of a JSON-lines file: (entries, [(source, reason)])."""
    entries, rejections, _ = debezium_events_to_entries(data, m, ledger)
    return entries, [(r.where, r.reason) for r in rejections]
