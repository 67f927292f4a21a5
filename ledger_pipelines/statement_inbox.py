"""The statement inbox indexed by booking date: each file is parsed once, a day reads its own part.

A statement ledger's inbox is a folder of camt (or pain.001) files. Each file is indexed once per
content: its SHA-256 names an index entry holding the file's entries and rejections grouped by
day (UTC), and the balance equation of each of its statements. A day's snapshot hashes the
inbox's files and reads, for each, only that day's part of its entry; a file is parsed
(:func:`~ledger_pipelines.connectors.iso20022.camt_to_entries`) when its content is first seen, by
``statement_inbox_sensor`` when it arrives or by the first snapshot that needs it, and again only
when its content changes (a new digest).

Where the index lives: ``<state>/statement-index/<ledger>/<code>/<sha256>/``, in the pipeline's
own state folder (``<state>``: ``LEDGER_STACK_DIR``, default ``.stack/``, the folder of the default
warehouse and reports), never in the inbox. An inbox is written by whoever drops statements there
(an SFTP drop, say); nothing in it but the statement files is read, and nothing in it is written or
removed. The warehouse keeps what must agree with Kafka and with the published days (cursors,
processed files, snapshots) and its tables are the schema module's; the index is a cache, a
function of the files' bytes alone (deleting it costs one parse per file, never a result), and it
must be readable by every process that reads the inbox (the sensor, each day's run), whichever
warehouse the run writes to. ``<code>`` is a digest of the parsing code (the camt connector, the
canonical entry and this module): an index made by other code is not read, and is removed a day
after it last changed.

Every folder and file below the state folder is opened without following a symbolic link: a link
there is refused with :class:`StatementIndexError` naming it (a day that would read through it
fails, named; ``prune`` leaves it alone), never read through or deleted through. ``prune`` removes
only the names the index makes (64-hex content digests, 16-hex code digests, its own
``.tmp-<16 hex>-<16 hex>`` temporary folders); anything else there is left alone. An entry is
written in a temporary folder, each file and the folders synced, and renamed into place, so it
appears whole or not at all; an entry found there but not readable (a missing or truncated
``meta.json``) is replaced by the next read that parses its file. A state folder that cannot be
written is still read (each file parsed each time, with a warning).

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

import errno
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any

import msgspec

from .commitment import file_sha256
from .config import LedgerConfig
from .model import CanonicalEntry
from .settings import StackConfig
from .validation import record_counts

log = logging.getLogger(__name__)

INDEX_FORMAT = 1
INDEX_FOLDER = "statement-index"  # in the state folder: <root>/statement-index/<ledger>/<code>/<sha256>/
# the only names the index makes, and so the only ones it removes
_DIGEST = re.compile(r"[0-9a-f]{64}\Z")  # an entry: the content's SHA-256
_CODE = re.compile(r"[0-9a-f]{16}\Z")  # a version: the parsing code's digest
_TEMP = re.compile(r"\.tmp-[0-9a-f]{16}-[0-9a-f]{16}\Z")  # an entry being written, or set aside
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
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
    for path in (*sorted(Path(iso20022.__file__).parent.glob("*.py")), Path(model.__file__)):  # the whole package
        h.update(path.read_bytes())
    h.update(Path(__file__).read_bytes())
    return h.hexdigest()[:16]


class StatementIndexError(RuntimeError):
    """A path of the statement index that the index did not make there (a symbolic link, or not a
    folder where the index keeps one): refused, never followed."""


def state_root() -> Path:
    """The pipeline's own state folder (``LEDGER_STACK_DIR``), where the index lives."""
    return StackConfig.from_env().root


def _write_file(dir_fd: int, name: str, data: bytes) -> None:
    """A new file in the folder ``dir_fd``, its bytes on disk before this returns."""
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666, dir_fd=dir_fd)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _temp_name(sha256: str) -> str:
    return f".tmp-{sha256[:16]}-{secrets.token_hex(8)}"


class StatementInbox:
    """The index of one statement ledger's inbox (see the module's doc). ``root``: the state folder
    (default :func:`state_root`)."""

    def __init__(self, lc: LedgerConfig, root: Path | None = None):
        if lc.name in ("", ".", "..") or "/" in lc.name or "\\" in lc.name or "\0" in lc.name:
            raise ValueError(f"ledger name {lc.name!r} cannot name a folder of the statement index")
        self.lc = lc
        self.inbox = lc.inbox_path()
        self.root = Path(root) if root is not None else state_root()
        self.ledger_folder = self.root / INDEX_FOLDER / lc.name
        self.folder = self.ledger_folder / code_version()

    # -- the folders, never through a link ----------------------------------------------------------

    def _refused(self, path: Path, what: str) -> StatementIndexError:
        return StatementIndexError(f"{self.lc.name}: {path} {what}: refused (the statement index follows no link; "
                                   "remove it, the index is rebuilt from the inbox's files)")

    def _open(self, dir_fd: int, name: str, path: Path, flags: int = _DIR_FLAGS) -> int:
        """``name`` in the folder ``dir_fd`` (``path`` names it in errors), opened without following a link."""
        try:
            return os.open(name, flags, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
                raise
            try:
                mode = os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode
            except OSError:
                raise exc from None
            if stat.S_ISLNK(mode):
                raise self._refused(path, "is a symbolic link") from None
            if flags & os.O_DIRECTORY and not stat.S_ISDIR(mode):
                raise self._refused(path, "is not a folder") from None
            raise

    @contextmanager
    def _folder(self, *names: str, create: bool = False, code: bool = True) -> Iterator[int]:
        """A descriptor of ``<root>/statement-index/<ledger>[/<code>]/<names...>``: each folder below
        the state root opened without following a link (made when ``create``)."""
        if create:
            self.root.mkdir(parents=True, exist_ok=True)
        path = self.root
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for name in (INDEX_FOLDER, self.lc.name, *((self.folder.name,) if code else ()), *names):
                path = path / name
                if create:
                    try:
                        os.mkdir(name, dir_fd=fd)
                    except FileExistsError:
                        pass
                child = self._open(fd, name, path)
                os.close(fd)
                fd = child
            yield fd
        finally:
            os.close(fd)

    def _read(self, dir_fd: int, name: str, path: Path) -> bytes:
        with os.fdopen(self._open(dir_fd, name, path, _FILE_FLAGS), "rb") as f:
            return f.read()

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

    def _lookup(self, sha256: str) -> tuple[IndexedFile | None, bool]:
        """The stored entry of this content or None (not indexed, or not readable as this code's),
        and whether a folder of this content exists (one not readable is replaced when indexed)."""
        if not _DIGEST.match(sha256):
            raise ValueError(f"{self.lc.name}: {sha256!r} is not a SHA-256 digest")
        try:
            with self._folder(sha256) as entry:
                raw = self._read(entry, "meta.json", self.folder / sha256 / "meta.json")
        except OSError:
            return None, self._exists(sha256)
        try:
            meta = json.loads(raw)
        except ValueError:
            return None, True
        if not isinstance(meta, dict) or meta.get("format") != INDEX_FORMAT or meta.get("sha256") != sha256 \
                or meta.get("ledger") != self.lc.name or not isinstance(meta.get("days"), dict):
            return None, True
        return IndexedFile(sha256, meta), True

    def _exists(self, sha256: str) -> bool:
        try:
            with self._folder() as code:
                os.stat(sha256, dir_fd=code, follow_symlinks=False)
        except OSError:
            return False
        return True

    def lookup(self, sha256: str) -> IndexedFile | None:
        """The stored entry of this content, or None (not indexed, or not readable as this code's)."""
        return self._lookup(sha256)[0]

    def get(self, path: Path, sha256: str) -> IndexedFile:
        """The file's entry, indexing it (one parse) when its content has none; an entry that is
        there but not readable is replaced."""
        indexed, exists = self._lookup(sha256)
        return indexed or self.index(path, sha256, replace=exists)

    def part(self, indexed: IndexedFile, day: str, path: Path) -> _DayPart:
        """One day of a file (empty for a day it has nothing on); an entry whose part is missing or
        does not hold what its counts say is indexed again from ``path``."""
        counts = indexed.meta["days"].get(day)
        if not counts:
            return _DayPart([], [])
        if day in indexed.parts:
            return indexed.parts[day]
        name = f"{date.fromisoformat(day).isoformat()}.msgpack"
        try:
            with self._folder(indexed.sha256, "days") as days:
                raw = self._read(days, name, self.folder / indexed.sha256 / "days" / name)
            part = msgspec.msgpack.decode(raw, type=_DayPart)
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
        """The entry written whole in a temporary folder (each file and folder synced), then renamed
        into place; ``replace``: an entry there already is set aside first."""
        sha = indexed.sha256
        with self._folder(create=True) as code:
            tmp, aside = _temp_name(sha), None
            os.mkdir(tmp, dir_fd=code)
            try:
                entry = self._open(code, tmp, self.folder / tmp)
                try:
                    os.mkdir("days", dir_fd=entry)
                    days = self._open(entry, "days", self.folder / tmp / "days")
                    try:
                        for day, part in indexed.parts.items():
                            _write_file(days, f"{day}.msgpack", msgspec.msgpack.encode(part))
                        os.fsync(days)
                    finally:
                        os.close(days)
                    meta = json.dumps(indexed.meta, sort_keys=True, indent=1) + "\n"
                    _write_file(entry, "meta.json", meta.encode())
                    os.fsync(entry)
                finally:
                    os.close(entry)
                if replace:
                    aside = self._set_aside(code, sha)
                try:
                    os.rename(tmp, sha, src_dir_fd=code, dst_dir_fd=code)
                except OSError:
                    try:
                        there = os.stat(sha, dir_fd=code, follow_symlinks=False).st_mode
                    except OSError:
                        there = 0
                    if not stat.S_ISDIR(there):
                        raise
                    # another process indexed the same content meanwhile: the same bytes, the same entry
                else:
                    tmp = None
                os.fsync(code)
            finally:
                for name in (tmp, aside):
                    if name is not None:
                        self._remove(code, name)

    def _set_aside(self, code: int, sha: str) -> str | None:
        """Rename the entry of ``sha`` to a temporary name (removed by the caller); None when there is none."""
        try:
            mode = os.stat(sha, dir_fd=code, follow_symlinks=False).st_mode
        except FileNotFoundError:
            return None
        if stat.S_ISLNK(mode):
            raise self._refused(self.folder / sha, "is a symbolic link")
        aside = _temp_name(sha)
        try:
            os.rename(sha, aside, src_dir_fd=code, dst_dir_fd=code)
        except FileNotFoundError:  # removed meanwhile
            return None
        return aside

    def _remove(self, dir_fd: int, name: str) -> bool:
        """Remove a folder (or file) the index made; a symbolic link is left alone. Whether it was removed."""
        try:
            mode = os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode
            if stat.S_ISLNK(mode):
                log.warning("%s: %s in the statement index is a symbolic link: left alone", self.lc.name, name)
                return False
            if stat.S_ISDIR(mode):
                shutil.rmtree(name, dir_fd=dir_fd, ignore_errors=True)  # never follows a link inside
            else:
                os.unlink(name, dir_fd=dir_fd)
        except OSError:
            return False
        return True

    def index_new(self, listing: list[tuple[Path, str]], budget_seconds: float | None = None) -> list[str]:
        """Index the listed files that have no readable entry yet (those left when ``budget_seconds``
        has passed wait for the next call, or the first day that needs them); their names."""
        started, done = time.monotonic(), []
        for path, sha in listing:
            if budget_seconds is not None and time.monotonic() - started > budget_seconds:
                break
            indexed, exists = self._lookup(sha)
            if indexed is None:
                try:
                    self.index(path, sha, replace=exists)
                except FileNotFoundError:
                    continue
                done.append(path.name)
        return done

    def prune(self, keep: set[str], older_than: float) -> int:
        """Remove entries of contents no longer in the inbox (``keep``: the digests listed) made before
        ``older_than`` (a Unix time: entries made since may be of files listed after), temporary
        folders an hour older, and indexes of other code once a day old; how many were removed.
        Only names the index makes are removed (content digests, its temporary names, code digests),
        and no link is followed: anything else is left alone."""
        removed = 0
        try:
            with self._folder(code=False) as ledger:
                for version in sorted(os.listdir(ledger)):
                    if not _CODE.match(version):
                        continue
                    try:
                        st = os.stat(version, dir_fd=ledger, follow_symlinks=False)
                        if not stat.S_ISDIR(st.st_mode):
                            log.warning("%s: %s is not a folder of the statement index: left alone", self.lc.name,
                                        self.ledger_folder / version)
                            continue
                        if version != self.folder.name:
                            if st.st_mtime < older_than - OTHER_CODE_MAX_AGE_SECONDS and self._remove(ledger, version):
                                removed += 1
                            continue
                        with self._folder() as code:
                            for entry in sorted(os.listdir(code)):
                                mtime = os.stat(entry, dir_fd=code, follow_symlinks=False).st_mtime
                                stale = _TEMP.match(entry) is not None and mtime < older_than - 3600
                                gone = _DIGEST.match(entry) is not None and entry not in keep and mtime < older_than
                                if (stale or gone) and self._remove(code, entry):
                                    removed += 1
                    except OSError:
                        continue
        except StatementIndexError as exc:
            log.warning("%s: statement index not pruned: %s", self.lc.name, exc)
        except OSError:
            pass
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


def inbox_files(lc: LedgerConfig) -> list[Path]:
    """The statement files (``*.xml``) directly in the ledger's inbox, by name; none when it does not exist."""
    inbox = lc.inbox_path()
    return sorted(p for p in inbox.iterdir() if p.is_file() and p.suffix.lower() == ".xml") if inbox.is_dir() else []
