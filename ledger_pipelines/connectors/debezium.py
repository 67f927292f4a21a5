"""Debezium change events of a ledger table to canonical entries.

Accepted: the Kafka Connect JSON envelope (``{"schema": ..., "payload": ...}``) or the bare payload;
ops ``r`` (snapshot), ``c``, ``u``, ``d``. Numbers are decoded exactly: JSON numbers keep their text
(never a float), Connect ``Decimal`` values (base64 big-endian two's complement + ``scale``) are
decoded with the scale of the event's schema or the mapping's ``decimal_scale``, string decimals
as they are.

The rule for changes (one entry per row version):
- ``r`` / ``c``: the row as a ``booked`` entry, ``source_ref`` = ``<schema>.<table>:<pk>@<lsn or ts>``.
- ``u``: the new row version as a ``booked`` entry (its own source_ref); when the event carries the
  before image, the old version is also emitted as a ``reversed`` entry
  (``…@<lsn>:reversal``), so the pair nets the change.
- ``d``: the before image as a ``reversed`` entry. A delete without a before image (REPLICA IDENTITY
  DEFAULT) cannot be mapped and is reported as a bad record naming the event.
"""

from __future__ import annotations

import base64
import json
from decimal import Decimal

from ..model import CanonicalEntry, EntryError, scaled_decimal
from .mapping import ColumnMapping, row_to_entry, utc_timestamp


def _decimal_fields(schema: dict | None) -> dict[str, int]:
    """column -> scale for Connect Decimal fields of the row schema (``after``/``before``)."""
    out: dict[str, int] = {}
    if not schema:
        return out
    for part in schema.get("fields", []):
        if part.get("field") in ("before", "after"):
            for f in part.get("fields", []):
                if f.get("name") == "org.apache.kafka.connect.data.Decimal":
                    out[f["field"]] = int((f.get("parameters") or {}).get("scale", 0))
    return out


def _connect_decimal(value: str, scale: int) -> Decimal:
    raw = base64.b64decode(value, validate=True)
    return scaled_decimal(int.from_bytes(raw, "big", signed=True), scale)


def decode_event(line: bytes | str) -> tuple[dict, dict[str, int]]:
    """(payload, decimal scales) of one event; numbers stay exact (Decimal)."""
    try:
        doc = json.loads(line, parse_float=Decimal)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EntryError(f"not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise EntryError("a change event is a JSON object")
    if "payload" in doc and "schema" in doc:
        return doc["payload"] or {}, _decimal_fields(doc.get("schema"))
    return doc, {}


def _row(image: dict, m: ColumnMapping, scales: dict[str, int], where: str) -> dict:
    row = dict(image)
    amount = row.get(m.amount)
    if isinstance(amount, str) and (m.amount in scales or (m.decimal_scale is not None and not _is_decimal(amount))):
        scale = scales.get(m.amount, m.decimal_scale)
        try:
            row[m.amount] = _connect_decimal(amount, scale)
        except (ValueError, TypeError):
            raise EntryError(f"{where}: amount {amount!r} is not a Connect Decimal") from None
    return row


def _is_decimal(text: str) -> bool:
    try:
        Decimal(text)
        return True
    except Exception:
        return False


def event_to_entries(line: bytes | str, m: ColumnMapping, ledger: str) -> list[CanonicalEntry]:
    payload, scales = decode_event(line)
    op = payload.get("op")
    source = payload.get("source") or {}
    table = f"{source.get('schema') or source.get('db') or ''}.{source.get('table') or m.table}".lstrip(".")
    version = source.get("lsn") or source.get("pos") or payload.get("ts_ms")
    ts = source.get("ts_ms") or payload.get("ts_ms")
    before, after = payload.get("before"), payload.get("after")
    image = after if after is not None else before
    pk = (image or {}).get(m.id)
    where = f"debezium {table} op={op!r} {m.id}={pk!r} ({'lsn' if source.get('lsn') else 'ts_ms'} {version})"
    if op not in ("r", "c", "u", "d"):
        raise EntryError(f"{where}: unknown op (expected r, c, u or d)")
    if op in ("r", "c", "u") and after is None:
        raise EntryError(f"{where}: {op!r} event without 'after' row image")
    if op == "d" and before is None:
        raise EntryError(f"{where}: delete without a before image (REPLICA IDENTITY DEFAULT); "
                         f"the key is only in the Kafka record key")
    booked_at = None if m.posted_at and (image or {}).get(m.posted_at) is not None else (
        utc_timestamp(int(ts), where) if ts is not None else None)
    position = {"table": table, "op": op, "lsn": source.get("lsn"), "tx_id": source.get("txId"), "ts_ms": ts}
    base = f"{table}:{pk}@{version}"
    out = []
    if op in ("r", "c", "u"):
        out.append(row_to_entry(_row(after, m, scales, where), m, ledger, "cdc", source_ref=base,
                                position=position, booked_at=booked_at))
    if before is not None and op in ("u", "d"):
        suffix = "reversal" if op == "u" else "delete"
        out.append(row_to_entry(_row(before, m, scales, where), m, ledger, "cdc", source_ref=f"{base}:{suffix}",
                                status="reversed", position=position, booked_at=booked_at))
    return out


def debezium_file_to_entries(data: bytes, m: ColumnMapping, ledger: str) -> tuple[list[CanonicalEntry], list[tuple[str, str]]]:
    """Every line of a JSON-lines file: (entries, [(source, reason)])."""
    entries, errors = [], []
    for n, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entries.extend(event_to_entries(line, m, ledger))
        except EntryError as exc:
            errors.append((f"line {n}", str(exc)))
    return entries, errors
