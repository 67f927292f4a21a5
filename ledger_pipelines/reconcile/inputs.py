"""Reading a file of canonical entries (JSON Lines) for a reconciliation.

A reconciliation of a file that is partly wrong would be a wrong reconciliation, so a file is all
or nothing: the first bad line (not JSON, not a canonical entry, nested deeper than ``model.MAX_NESTING``,
longer than :data:`MAX_LINE_BYTES` with its line end) or an ``entry_id`` given twice makes the whole file an
:class:`InputError` naming the file, the line(s) and the reason. Blank lines are skipped.
"""

from __future__ import annotations

from pathlib import Path

from ..model import CanonicalEntry, EntryError, decode_entry

MAX_LINE_BYTES = 1 << 20
_REASON_CHARS = 300


class InputError(ValueError):
    def __init__(self, source: str, reason: str):
        super().__init__(f"{source}: {reason}")
        self.source, self.reason = source, reason


def read_entries(path: str | Path, side: str) -> list[CanonicalEntry]:
    """The entries of ``path`` in file order; ``side`` (left / right) names the file in messages."""
    where = f"{side} file {path}"
    entries: list[CanonicalEntry] = []
    line_of: dict[str, int] = {}
    try:
        f = open(path, "rb")
    except OSError as exc:
        raise InputError(where, f"cannot read it ({exc.strerror or exc})") from None
    with f:
        n = 0
        while True:
            try:
                line = f.readline(MAX_LINE_BYTES + 1)  # never more than the limit in memory
            except OSError as exc:
                raise InputError(where, f"cannot read it ({exc.strerror or exc})") from None
            if not line:
                break
            n += 1
            if len(line) > MAX_LINE_BYTES:
                raise InputError(f"{where}, line {n}", f"longer than {MAX_LINE_BYTES} bytes (with its line end)")
            if not line.strip():
                continue
            e = _decode(line, f"{where}, line {n}")
            first = line_of.setdefault(e.entry_id, n)
            if first != n:
                raise InputError(where, f"entry_id {e.entry_id!r} on line {first} and again on line {n} "
                                        "(each entry must appear once)")
            entries.append(e)
    return entries


def _decode(line: bytes, where: str) -> CanonicalEntry:
    try:
        return decode_entry(line)
    except EntryError as exc:
        reason = str(exc)
    except RecursionError:
        reason = "nested too deeply (position / attributes)"
    if len(reason) > _REASON_CHARS:
        reason = reason[:_REASON_CHARS] + "..."
    raise InputError(where, reason)
