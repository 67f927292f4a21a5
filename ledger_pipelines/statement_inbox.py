"""The statement inbox indexed by booking date: each file is parsed once, a day reads its own part.

A statement ledger's inbox is a folder of camt (or pain.001) files. Each file is indexed once per
content: its SHA-256 names an index entry holding the file's entries and rejections grouped by
day (UTC), and the balance equation of each of its statements. A day's snapshot hashes the
inbox's files and reads, for each, only that day's part of its entry; a file is parsed
(:func:`~ledger_pipelines.connectors.iso20022.camt_to_entries`) when its content is first seen, by
``statement_inbox_sensor`` when it arrives or by the first snapshot that needs it, and again only
when its content changes (a new digest).

Where the index lives: ``<inbox>/.state/statement-index/<ledger>/<code>/<sha256>/``, beside the
files it describes, not in the warehouse. The warehouse keeps what must agree with Kafka and with
the published days (cursors, processed files, snapshots) and its tables are the schema module's;
the index is a cache, a function of the files' bytes alone (deleting it costs one parse per file,
never a result), and it must be readable by every process that reads the inbox (the sensor, each
day's run), whichever warehouse the run writes to. ``<code>`` is a digest of the parsing code
(the camt connector, the canonical entry and this module): an index made by other code is not
read, and is removed a day after it last changed. An entry is written in a temporary folder and renamed
into place, so it appears whole or not at all; an inbox that cannot be written is still read
(parsed each time, with a warning).

Which day a record belongs to, so that each record of a file is counted once over all days and a
day's ``records read = entries + rejections`` holds:

- an entry: the UTC day of its ``booked_at`` (as the connector maps it);
- a rejected ``Ntry``: the UTC day of its booking date (``BookgDt/Dt`` or ``BookgDt/DtTm``, read as
  the connector reads it) when it has a readable one;
- any other rejection (an ``Ntry`` without a readable booking date, a bad balance, a bad pain.001
  transaction, a file that cannot be read at all) belongs to the day the file was received: the
  UTC day of the message's creation time (``GrpHdr/CreDtTm``), which is part of the file, so the
  same bytes always give the same day; a file without a readable one (or unreadable as a whole)
  is received on the UTC day of its modification time when it is indexed (kept in the index).

The booking dates of rejected ``Ntry`` elements are not part of the connector's answer: for a file
with rejections, the document is read a second time with lxml alone (no mapping), once, when it
is indexed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any

import msgspec

from .config import LedgerConfig
from .model import CanonicalEntry
from .publish import inbox_files
from .validation import record_counts

log = logging.getLogger(__name__)

INDEX_FORMAT = 1
STATE_FOLDER = ".state"
# an index made by other parsing code is removed once this old (a process still running the other
# code may be reading it)
OTHER_CODE_MAX_AGE_SECONDS = 86_400


class _DayPart(msgspec.Struct, frozen=True, gc=False):
    """One day of one file: its entries and its rejections ``(source in the file or None for the
    whole file, reason)``."""

    entries: list[CanonicalEntry]
    rejections: list[tuple[str | None, str]]


@dataclass
class IndexedFile:
    """A file's index entry: ``meta`` (JSON: counts per day, balances, received day) and the day
    parts held in memory when this process indexed it."""

    sha256: str
    meta: dict[str, Any]
    parts: dict[str, _DayPart] = field(default_factory=dict)
    parsed: bool = False  # indexed by this call (the file was parsed)


@lru_cache(maxsize=1)
def code_version() -> str:
    """A digest of the code whose output the index holds."""
    from .connectors import iso20022
    from . import model

    h = hashlib.sha256(f"statement-index/{INDEX_FORMAT}".encode())
    for module in (iso20022, model):
        h.update(Path(module.__file__).read_bytes())
    h.update(Path(__file__).read_bytes())
    return h.hexdigest()[:16]


def file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


class StatementInbox:
    """The index of one statement ledger's inbox (see the module's doc)."""

    def __init__(self, lc: LedgerConfig):
        self.lc = lc
        self.inbox = lc.inbox_path()
        self.ledger_folder = self.inbox / STATE_FOLDER / "statement-index" / lc.name
        self.folder = self.ledger_folder / code_version()

    # -- listing and lookup ------------------------------------------------------------------------

    def listing(self) -> list[tuple[Path, str]]:
        """The inbox's statement files and their content digests (a file gone meanwhile is left out)."""
        out = []
        for path in inbox_files(self.lc):
            try:
                out.append((path, file_sha256(path)))
            except FileNotFoundError:
                continue
        return out

    def lookup(self, sha256: str) -> IndexedFile | None:
        """The stored entry of this content, or None (not indexed, or not readable as this code's)."""
        try:
            meta = json.loads((self.folder / sha256 / "meta.json").read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(meta, dict) or meta.get("format") != INDEX_FORMAT or meta.get("sha256") != sha256 \
                or meta.get("ledger") != self.lc.name:
            return None
        return IndexedFile(sha256, meta)

    def get(self, path: Path, sha256: str) -> IndexedFile:
        """The file's entry, indexing it (one parse) when its content has none."""
        return self.lookup(sha256) or self.index(path, sha256)

    def part(self, indexed: IndexedFile, day: str, path: Path) -> _DayPart:
        """One day of a file (empty for a day it has nothing on); an entry whose part is missing or
        does not hold what its counts say is indexed again from ``path``."""
        counts = indexed.meta["days"].get(day)
        if not counts:
            return _DayPart([], [])
        if day in indexed.parts:
            return indexed.parts[day]
        try:
            part = msgspec.msgpack.decode((self.folder / indexed.sha256 / "days" / f"{day}.msgpack").read_bytes(),
                                          type=_DayPart)
            if (len(part.entries), len(part.rejections)) == (counts["entries"], counts["rejections"]):
                return part
            log.warning("%s: index of %s, day %s, does not hold its counts: indexed again", self.lc.name,
                        indexed.sha256, day)
        except (OSError, msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.warning("%s: index of %s, day %s, not readable (%s): indexed again", self.lc.name, indexed.sha256,
                        day, exc)
        again = self.index(path, indexed.sha256, replace=True)
        if again.sha256 != indexed.sha256:  # the file changed meanwhile: the content read is the one listed
            raise RuntimeError(f"{self.lc.name}: {path.name} changed while its day {day} was read; run the day again")
        return again.parts.get(day, _DayPart([], []))

    # -- indexing ----------------------------------------------------------------------------------

    def index(self, path: Path, sha256: str | None = None, replace: bool = False) -> IndexedFile:
        """Parse the file once and store its entry. The digest is of the bytes parsed (``sha256`` is
        the listing's: when the file changed since, the new content is indexed under its own)."""
        from .connectors import iso20022

        arrival = datetime.fromtimestamp(path.stat().st_mtime, timezone.utc).date().isoformat()
        try:
            data = iso20022.read_document(path)
        except iso20022.CamtError as exc:  # larger than the limit: the listing's digest names it
            return self._store(sha256 or file_sha256(path), [], [(None, str(exc))], [None], [], arrival, None,
                               replace)
        digest = hashlib.sha256(data).hexdigest()
        if sha256 is not None and digest != sha256:
            replace = False  # another content than the entry asked about
        try:
            entries, errors, statements = iso20022.camt_to_entries(data, self.lc.name)
        except iso20022.CamtError as exc:  # an unreadable document is one record, rejected whole
            return self._store(digest, [], [(None, str(exc))], [None], [], arrival, None, replace)
        bookings, created = rejection_bookings(data, errors, statements)
        rejections = [(e.source, e.reason) for e in errors]
        balances = [st.balance_check() for st in statements]
        return self._store(digest, entries, rejections, bookings, balances, arrival, created, replace)

    def _store(self, sha256: str, entries: list[CanonicalEntry], rejections: list[tuple[str | None, str]],
               bookings: list[str | None], balances: list[dict[str, Any]], arrival: str, created: str | None,
               replace: bool) -> IndexedFile:
        received = created or arrival
        by_day: dict[str, tuple[list, list]] = {}
        for e in entries:
            by_day.setdefault(e.booked_date, ([], []))[0].append(e)
        for rejection, booked in zip(rejections, bookings, strict=True):
            by_day.setdefault(booked or received, ([], []))[1].append(rejection)
        parts = {day: _DayPart(es, rs) for day, (es, rs) in sorted(by_day.items())}
        record_counts(f"statement index {self.lc.name} {sha256}", len(entries) + len(rejections),
                      sum(len(p.entries) for p in parts.values()), sum(len(p.rejections) for p in parts.values()))
        needs_received = any(b is None for b in bookings)
        meta = {
            "format": INDEX_FORMAT, "ledger": self.lc.name, "sha256": sha256,
            "records": len(entries) + len(rejections), "entries": len(entries), "rejections": len(rejections),
            "received_day": received if needs_received else None,
            "received_from": (("message creation time" if created else "file modification time")
                              if needs_received else None),
            "days": {day: {"entries": len(p.entries), "rejections": len(p.rejections)} for day, p in parts.items()},
            "balances": balances,
        }
        indexed = IndexedFile(sha256, meta, parts, parsed=True)
        try:
            self._write(indexed, replace)
        except OSError as exc:
            log.warning("%s: the statement index cannot be written under %s (%s): the file will be parsed again",
                        self.lc.name, self.folder, exc)
        return indexed

    def _write(self, indexed: IndexedFile, replace: bool) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{indexed.sha256[:16]}-", dir=self.folder))
        try:
            (tmp / "days").mkdir()
            for day, part in indexed.parts.items():
                (tmp / "days" / f"{day}.msgpack").write_bytes(msgspec.msgpack.encode(part))
            (tmp / "meta.json").write_text(json.dumps(indexed.meta, sort_keys=True, indent=1) + "\n")
            final = self.folder / indexed.sha256
            if replace and final.exists():
                shutil.rmtree(final, ignore_errors=True)
            try:
                os.rename(tmp, final)
            except OSError:
                if not final.is_dir():
                    raise
                # another process indexed the same content meanwhile: the same bytes, the same entry
            else:
                tmp = None
        finally:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)

    def index_new(self, listing: list[tuple[Path, str]], budget_seconds: float | None = None) -> list[str]:
        """Index the listed files that have no entry yet (those left when ``budget_seconds`` has
        passed wait for the next call, or the first day that needs them); their names."""
        started, done = time.monotonic(), []
        for path, sha in listing:
            if budget_seconds is not None and time.monotonic() - started > budget_seconds:
                break
            if self.lookup(sha) is None:
                try:
                    self.index(path, sha)
                except FileNotFoundError:
                    continue
                done.append(path.name)
        return done

    def prune(self, keep: set[str], older_than: float) -> int:
        """Remove entries of contents no longer in the inbox (``keep``: the digests listed) made before
        ``older_than`` (a Unix time: entries made since may be of files listed after), and indexes of
        other code once a day old; how many were removed."""
        removed = 0
        try:
            versions = list(self.ledger_folder.iterdir())
        except OSError:
            return 0
        for version in versions:
            try:
                if version.name != self.folder.name:
                    if version.stat().st_mtime < older_than - OTHER_CODE_MAX_AGE_SECONDS:
                        shutil.rmtree(version, ignore_errors=True)
                        removed += 1
                    continue
                for entry in version.iterdir():
                    stale = entry.name.startswith(".tmp-") and entry.stat().st_mtime < older_than - 3600
                    gone = not entry.name.startswith(".") and entry.name not in keep \
                        and entry.stat().st_mtime < older_than
                    if stale or gone:
                        shutil.rmtree(entry, ignore_errors=True)
                        removed += 1
            except OSError:
                continue
        return removed

    # -- a day -------------------------------------------------------------------------------------

    def read_day(self, day: date) -> tuple[list[CanonicalEntry], list[tuple[str, str]], list[dict[str, Any]]]:
        """The day's entries, its rejections ``(source, reason)`` (sources name the file) and the
        balance equation of every statement that booked entries on the day. A content found under
        several names is one file (the first name): its records are counted once, as published."""
        key = day.isoformat()
        entries: list[CanonicalEntry] = []
        errors: list[tuple[str, str]] = []
        balances: list[dict[str, Any]] = []
        seen: set[str] = set()
        for path, sha in self.listing():
            if sha in seen:
                continue
            seen.add(sha)
            try:
                indexed = self.get(path, sha)
            except FileNotFoundError:
                continue
            part = self.part(indexed, key, path)
            if not part.entries and not part.rejections:
                continue
            name = path.name
            entries += part.entries
            errors += [(f"file:{name}" if source is None else f"file:{name}: {source}", reason)
                       for source, reason in part.rejections]
            if part.entries:
                ids = {e.position.get("statement_id") for e in part.entries}
                balances += [dict(b, file=name) for b in indexed.meta["balances"] if b.get("statement_id") in ids]
        return entries, errors, balances


# -- booking dates of rejected records ---------------------------------------------------------------

def rejection_bookings(data: bytes, errors: list, statements: list) -> tuple[list[str | None], str | None]:
    """For each rejection of :func:`camt_to_entries`, the UTC day of its record's booking date when
    it names an ``Ntry`` with a readable one (else None); and the UTC day of the message's creation
    time (None when it has no readable one, or when no rejection needs it)."""
    if not errors:
        return [], None
    from lxml import etree

    from .connectors.iso20022 import _date_time  # the connector's own reading of a date choice

    # the same closed parser as the connector's; the bytes passed its checks already
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False,
                             remove_comments=True, remove_pis=True)
    root = etree.fromstring(data, parser)
    body = root[0] if _local(root.tag) == "Document" and len(root) else root
    created = None
    for group in _children(body, "GrpHdr")[:1]:
        text = _leaf(group, "CreDtTm")
        try:
            created = _date_time(None, text)[1] if text else None
        except ValueError:
            created = None
    container = {"BkToCstmrStmt": "Stmt", "BkToCstmrDbtCdtNtfctn": "Ntfctn", "BkToCstmrAcctRpt": "Rpt"}.get(
        _local(body.tag))
    out: list[str | None] = [None] * len(errors)
    if container is None:  # pain.001: its records have no booking date
        return out, created
    ns = root.tag[1:root.tag.index("}")] if root.tag[:1] == "{" else None
    tag = f"{{{ns}}}{container}" if ns else container
    elements = [c for c in body if c.tag == tag]  # the statements the connector read, in its order
    if len(elements) != len(statements):
        return out, created  # not the document the connector read: every rejection is the file's
    per_statement = [[_booking(n, _date_time) for n in el if type(n.tag) is str and _local(n.tag) == "Ntry"]
                     for el in elements]
    read = set(elements)
    strays = [_booking(n, _date_time) for n in root.iter("{*}Ntry") if n.getparent() not in read]
    owner = {id(e): i for i, st in enumerate(statements) for e in st.errors}
    stray_at = 0
    for j, err in enumerate(errors):
        i = owner.get(id(err))
        if i is not None:  # a rejection made while reading statement i
            number = _entry_number(statements[i], err.source)
            if number is not None and number <= len(per_statement[i]):
                out[j] = per_statement[i][number - 1]
            continue
        if " Ntry at line " in err.source:  # outside any statement read: in document order
            if stray_at < len(strays):
                out[j] = strays[stray_at]
            stray_at += 1
            continue
        for i, st in enumerate(statements):  # an entry that read but could not be mapped
            number = _entry_number(st, err.source)
            if number is not None and number <= len(per_statement[i]):
                out[j] = per_statement[i][number - 1]
                break
    if stray_at != len(strays):  # not the strays the connector found: none of them is placed by date
        for j, err in enumerate(errors):
            if owner.get(id(err)) is None and " Ntry at line " in err.source:
                out[j] = None
    return out, created


def _entry_number(st, source: str) -> int | None:
    """``k`` when ``source`` is ``st.where(f"entry {k}")``."""
    head, _, tail = st.where("entry \0").partition("\0")
    if len(source) <= len(head) + len(tail) or not source.startswith(head) or not source.endswith(tail):
        return None
    middle = source[len(head):len(source) - len(tail)]
    return int(middle) if middle.isascii() and middle.isdigit() and middle[0] != "0" else None


def _booking(ntry, date_time) -> str | None:
    """The UTC day of an ``Ntry``'s booking date, read as the connector reads it (the first ``Dt``,
    else the first ``DtTm``, of its ``BookgDt``); None when it has none or it is not readable."""
    d = dt = None
    for booking in _children(ntry, "BookgDt"):
        for c in booking:
            if type(c.tag) is not str or len(c):
                continue
            name = _local(c.tag)
            if name == "Dt" and d is None:
                d = (c.text or "").strip()
            elif name == "DtTm" and dt is None:
                dt = (c.text or "").strip()
    try:
        return date_time(d, dt)[1]
    except ValueError:
        return None


def _local(tag) -> str:
    if type(tag) is not str:
        return ""
    return tag[tag.index("}") + 1:] if tag[:1] == "{" else tag


def _children(el, name: str) -> list:
    return [c for c in el if _local(c.tag) == name]


def _leaf(el, name: str) -> str | None:
    for c in _children(el, name):
        if not len(c):
            return (c.text or "").strip()
    return None
