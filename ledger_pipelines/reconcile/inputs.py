"""Reading a file of canonical entries (JSON Lines, Parquet or Arrow IPC) for a reconciliation.

A reconciliation of a file that is partly wrong would be a wrong reconciliation, so a file is all
or nothing: the first bad line (not JSON, not a canonical entry, nested deeper than ``model.MAX_NESTING``,
longer than :data:`MAX_LINE_BYTES` with its line end) or an ``entry_id`` given twice makes the whole file an
:class:`InputError` naming the file, the line(s) and the reason. Blank lines are skipped.

A file named ``*.parquet``, ``*.arrow`` or ``*.feather`` is a table with one column per entry field:
every row goes through the same decoder as a JSON line (rows are numbered from 1, and the first bad
row or a repeated ``entry_id`` refuses the file). ``position`` and ``attributes`` are JSON object text
or structs; ``amount`` a canonical decimal string or a decimal column (never a float); ``booked_at``
RFC 3339 text or a UTC timestamp column.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Iterator

import msgspec

from ..model import CanonicalEntry, EntryError, decode_entry, format_timestamp

MAX_LINE_BYTES = 1 << 20
_REASON_CHARS = 300


class InputError(ValueError):
    def __init__(self, source: str, reason: str):
        super().__init__(f"{source}: {reason}")
        self.source, self.reason = source, reason


def read_entries(path: str | Path, side: str) -> list[CanonicalEntry]:
    """The entries of ``path`` in file order; ``side`` (left / right) names the file in messages."""
    where = f"{side} file {path}"
    if str(path).lower().endswith(TABLE_SUFFIXES):
        return _read_table(path, where)
    entries: list[CanonicalEntry] = []
    line_of: dict[str, int] = {}
    try:
        f = open(path, "rb")
    except OSError as exc:
        raise InputError(where, f"cannot read it ({exc.strerror or exc})") from None
    with f:
        for n, line in _lines(f, where):
            if line and not line.isspace():
                _add_once(entries, line_of, _decode(line, where, "line", n), n, "line", where)
    return entries


_BLOCK = 1 << 22


def _lines(f, where: str) -> Iterator[tuple[int, bytes]]:
    """(number, line) of a file read in blocks, never more than a block and one line in memory; a line
    longer than :data:`MAX_LINE_BYTES` with its line end is refused."""
    n, rest = 0, b""
    while True:
        try:
            block = f.read(_BLOCK)
        except OSError as exc:
            raise InputError(where, f"cannot read it ({exc.strerror or exc})") from None
        if not block:
            break
        lines = (rest + block).split(b"\n")
        rest = lines.pop()
        for line in lines:
            n += 1
            if len(line) >= MAX_LINE_BYTES:
                raise InputError(f"{where}, line {n}", f"longer than {MAX_LINE_BYTES} bytes (with its line end)")
            yield n, line
        if len(rest) > MAX_LINE_BYTES:
            raise InputError(f"{where}, line {n + 1}", f"longer than {MAX_LINE_BYTES} bytes (with its line end)")
    if rest:
        yield n + 1, rest


def _add_once(entries: list[CanonicalEntry], first_of: dict[str, int], e: CanonicalEntry, n: int, unit: str,
              where: str) -> None:
    """Appends ``e`` (at line/row ``n``) unless its entry_id was seen: then the file is invalid, naming both."""
    first = first_of.setdefault(e.entry_id, n)
    if first != n:
        raise InputError(where, f"entry_id {e.entry_id!r} on {unit} {first} and again on {unit} {n} "
                                "(each entry must appear once)")
    entries.append(e)


def _decode(line: bytes, where: str, unit: str, n: int) -> CanonicalEntry:
    try:
        return decode_entry(line)
    except EntryError as exc:
        reason = str(exc)
    except RecursionError:
        reason = "nested too deeply (position / attributes)"
    if len(reason) > _REASON_CHARS:
        reason = reason[:_REASON_CHARS] + "..."
    raise InputError(f"{where}, {unit} {n}", reason)


TABLE_SUFFIXES = (".parquet", ".arrow", ".feather")
_JSON_FIELDS = ("position", "attributes")


def _open_table(path: str | Path, where: str):
    import pyarrow as pa
    import pyarrow.feather
    import pyarrow.parquet

    try:
        if str(path).lower().endswith(".parquet"):
            return pyarrow.parquet.ParquetFile(path).iter_batches(batch_size=65536)
        return pyarrow.feather.read_table(path).to_batches(max_chunksize=65536)
    except OSError as exc:
        raise InputError(where, f"cannot read it ({exc.strerror or exc})") from None
    except (pa.ArrowException, ValueError) as exc:
        raise InputError(where, f"not a readable table ({str(exc)[:_REASON_CHARS]})") from None


def _cell(name: str, value: Any) -> Any:
    """A table cell as the JSON value a JSON line would carry (exact: decimals as their digits)."""
    if name in _JSON_FIELDS and isinstance(value, str):
        return msgspec.Raw(value.encode())  # the decoder checks it is an object, and its nesting
    if isinstance(value, (bytes, bytearray)):  # JSON would carry it as base64 text: "EUR" would read "RVVS"
        raise TypeError(f"{name} is binary; entry fields are text")
    if isinstance(value, Decimal):
        return f"{value:f}"
    if isinstance(value, datetime):
        try:
            return format_timestamp(value)
        except EntryError as exc:
            return f"invalid: {exc}"
    return value


def _read_table(path: str | Path, where: str) -> list[CanonicalEntry]:
    import pyarrow as pa

    entries: list[CanonicalEntry] = []
    row_of: dict[str, int] = {}
    n = 0
    batches = _open_table(path, where)
    try:
        for batch in batches:
            try:
                rows = batch.to_pylist()
            except (OverflowError, ValueError) as exc:  # a time beyond what Python's datetime holds, say
                raise InputError(f"{where}, rows {n + 1}-{n + batch.num_rows}",
                                 f"a value that cannot be read ({str(exc)[:200]})") from None
            for row in rows:
                n += 1
                try:
                    line = msgspec.json.encode({k: _cell(k, v) for k, v in row.items()})
                except (TypeError, msgspec.EncodeError) as exc:
                    raise InputError(f"{where}, row {n}", f"a value is not JSON-like ({str(exc)[:200]})") from None
                _add_once(entries, row_of, _decode(line, where, "row", n), n, "row", where)
    except (pa.ArrowException, OSError) as exc:
        raise InputError(where, f"not a readable table ({str(exc)[:_REASON_CHARS]})") from None
    return entries
