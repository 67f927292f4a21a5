"""The statement inbox indexed by booking date: each file parsed once per content, each record of a
file counted on exactly one day (entries and rejected Ntry by booking date, the rest on the day the
file was received), the index kept on disk across processes."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import date, datetime, timezone
from pathlib import Path

import msgspec
import pytest
import yaml

import ledger_pipelines.connectors.iso20022 as iso20022
from ledger_pipelines.config import LedgerConfig
from ledger_pipelines.connectors.kinds import connector_for
from ledger_pipelines.snapshots import snapshot_day
from ledger_pipelines.statement_inbox import StatementIndexError, StatementInbox, code_version
from ledger_pipelines.warehouse import Warehouse


def read_statements_day(lc, day):
    """The day of a statement ledger as its snapshot reads it (entries, rejections, balances)."""
    return connector_for(lc).read_day(day, None)

D1, D2, D3 = date(2026, 11, 17), date(2026, 11, 18), date(2026, 11, 19)
CREATED = date(2026, 11, 20)  # the message's creation day: a record without a booking date belongs to it
IBAN = "DE89370400440532013000"


def ntry(ref: str, booked: str | None, amount: str = "10.00", booked_as: str = "Dt") -> str:
    booking = f"<BookgDt><{booked_as}>{booked}</{booked_as}></BookgDt>" if booked is not None else ""
    return (f"<Ntry><Amt Ccy=\"EUR\">{amount}</Amt><CdtDbtInd>CRDT</CdtDbtInd><Sts><Cd>BOOK</Cd></Sts>"
            f"{booking}<AcctSvcrRef>{ref}</AcctSvcrRef></Ntry>")


def camt(statement_id: str, entries: list[str], created: str | None = f"{CREATED}T06:00:00Z") -> bytes:
    header = f"<MsgId>M-{statement_id}</MsgId>" + (f"<CreDtTm>{created}</CreDtTm>" if created else "")
    return ('<?xml version="1.0" encoding="UTF-8"?><Document xmlns="urn:iso:std:iso:20022:tech:xsd:camt.053.001.08">'
            f"<BkToCstmrStmt><GrpHdr>{header}</GrpHdr><Stmt><Id>{statement_id}</Id>"
            f"<Acct><Id><IBAN>{IBAN}</IBAN></Id><Ccy>EUR</Ccy></Acct>{''.join(entries)}</Stmt>"
            "</BkToCstmrStmt></Document>").encode()


# three booking days (one entry with a date-time that is the next UTC day's), and one Ntry whose
# amount is bad, booked on D2: 7 records
THREE_DAYS = {
    D1: ["A1", "A2"],
    D2: ["B1"],
    D3: ["C1", "C2", "C3"],
}


def three_days() -> bytes:
    return camt("S-1", [ntry("A1", str(D1)), ntry("A2", f"{D1}T23:30:00+00:00", booked_as="DtTm"),
                        ntry("B1", str(D2)), ntry("BAD", str(D2), amount="-5.00"),
                        ntry("C1", str(D3)), ntry("C2", f"{D2}T23:30:00-02:00", booked_as="DtTm"),
                        ntry("C3", str(D3))])


@pytest.fixture(autouse=True)
def state(tmp_path, monkeypatch) -> Path:
    """The pipeline's state folder (``LEDGER_STACK_DIR``), where the index lives: one per test."""
    folder = tmp_path / "state"
    monkeypatch.setenv("LEDGER_STACK_DIR", str(folder))
    return folder


@pytest.fixture
def inbox(tmp_path) -> Path:
    folder = tmp_path / "inbox"
    folder.mkdir()
    return folder


@pytest.fixture
def lc(inbox) -> LedgerConfig:
    return LedgerConfig(name="bank_statements", kind="iso20022", inbox=str(inbox))


@pytest.fixture
def wh(tmp_path):
    w = Warehouse(f"sqlite:///{tmp_path / 'w.db'}")
    w.create_schema()
    yield w
    w.dispose()


@pytest.fixture
def parses(monkeypatch) -> list[int]:
    """Calls of the connector's parse, counted (one element per call: the document's size)."""
    calls: list[int] = []
    real = iso20022.camt_to_entries

    def counted(data, *args, **kwargs):
        calls.append(len(data))
        return real(data, *args, **kwargs)

    monkeypatch.setattr(iso20022, "camt_to_entries", counted)
    return calls


def refs(stats_or_entries) -> list[str]:
    return sorted(e.source_ref.rsplit("#", 1)[1] for e in stats_or_entries)


def test_each_day_has_exactly_its_entries_and_the_bad_record_counts_on_its_booking_day(lc, inbox, wh):
    (inbox / "week.xml").write_bytes(three_days())
    days = [D1, D2, D3, CREATED, date(2026, 11, 21)]
    stats = {d: snapshot_day(lc, d, wh) for d in days}
    for d, expected in THREE_DAYS.items():
        assert refs(StatementInbox(lc).read_day(d)[0]) == sorted(expected)
        assert stats[d]["rows"] == len(expected)
    assert stats[D2]["rejected"] == 1 and stats[D2]["counts"] == {"read": 2, "entries": 1, "rejected": 1}
    (bad,) = stats[D2]["errors"]
    assert bad["source"] == "file:week.xml: camt.053 S-1 entry 4" and "-5.00" in bad["error"]
    for d in (D1, D3, CREATED, date(2026, 11, 21)):
        assert stats[d]["rejected"] == 0 and stats[d]["errors"] == []
        assert stats[d]["counts"]["read"] == stats[d]["counts"]["entries"]
    # summed over the days, each of the file's 7 Ntry is read exactly once
    assert sum(s["counts"]["read"] for s in stats.values()) == 7
    assert sum(s["rejected"] for s in stats.values()) == 1
    per_day = dict(wh.rows("SELECT snapshot_date, count(*) FROM ledger_snapshots GROUP BY snapshot_date"))
    assert per_day == {str(d): len(r) for d, r in THREE_DAYS.items()}


def test_records_without_a_booking_date_count_once_on_the_day_the_file_was_received(lc, inbox, wh):
    """No readable booking date: the message's creation day (GrpHdr/CreDtTm); a file without one,
    or unreadable as a whole, on the UTC day of its modification time."""
    (inbox / "a.xml").write_bytes(camt("S-1", [ntry("A1", str(D1)),
                                               ntry("NODATE", None, amount="abc"),  # neither date nor amount
                                               ntry("BADDATE", "2026-13-45", amount="1.00")]))
    (inbox / "b.xml").write_bytes(camt("S-2", [ntry("B1", str(D2)), ntry("NODATE", None, amount="abc")],
                                       created=None))
    (inbox / "broken.xml").write_bytes(b"<Document><not-closed>")
    arrival = date(2026, 11, 22)
    at = datetime(2026, 11, 22, 23, 59, tzinfo=timezone.utc).timestamp()
    for name in ("b.xml", "broken.xml"):
        os.utime(inbox / name, (at, at))
    rejected = {d: snapshot_day(lc, d, wh)["errors"] for d in (D1, D2, D3, CREATED, date(2026, 11, 21), arrival)}
    assert {d: len(e) for d, e in rejected.items() if e} == {CREATED: 2, arrival: 2}
    assert sorted(e["source"] for e in rejected[CREATED]) == ["file:a.xml: camt.053 S-1 entry 2",
                                                               "file:a.xml: camt.053 S-1 entry 3"]
    assert sorted(e["source"] for e in rejected[arrival]) == ["file:b.xml: camt.053 S-2 entry 2", "file:broken.xml"]
    assert "not well-formed" in next(e["error"] for e in rejected[arrival] if e["source"] == "file:broken.xml")


def test_a_file_is_parsed_once_however_many_days_are_read(lc, inbox, wh, parses):
    (inbox / "week.xml").write_bytes(three_days())
    (inbox / "other.xml").write_bytes(camt("S-9", [ntry("Z1", str(D2))]))
    (inbox / "same-content.xml").write_bytes((inbox / "other.xml").read_bytes())  # one content, two names
    for _ in range(2):
        for d in (D1, D2, D3, CREATED):
            snapshot_day(lc, d, wh)
    assert sorted(parses) == sorted([len(three_days()), len(camt("S-9", [ntry("Z1", str(D2))]))])
    # the content dropped twice is one file's records, counted once (as publishing counts it)
    assert refs(StatementInbox(lc).read_day(D2)[0]) == ["B1", "Z1"]
    assert len(parses) == 2


def test_a_changed_file_is_indexed_again(lc, inbox, wh, parses):
    path = inbox / "week.xml"
    path.write_bytes(three_days())
    assert snapshot_day(lc, D1, wh)["rows"] == 2
    assert refs(StatementInbox(lc).read_day(D1)[0]) == ["A1", "A2"]
    assert len(parses) == 1
    path.write_bytes(camt("S-1", [ntry("N1", str(D1)), ntry("N2", str(D3))]))  # same name, new content
    assert refs(StatementInbox(lc).read_day(D1)[0]) == ["N1"]
    assert refs(StatementInbox(lc).read_day(D3)[0]) == ["N2"]
    assert StatementInbox(lc).read_day(D2) == ([], [], [])  # the old content's day and rejection are gone
    assert snapshot_day(lc, D1, wh)["rows"] == 1
    assert len(parses) == 2


_CHILD = r"""
import json, sys
from datetime import date
import ledger_pipelines.connectors.iso20022 as iso20022
from ledger_pipelines.config import LedgerConfig
from ledger_pipelines.connectors.kinds import connector_for

def refused(*args, **kwargs):
    raise AssertionError("parsed again")

iso20022.camt_to_entries = refused
lc = LedgerConfig(name="bank_statements", kind="iso20022", inbox=sys.argv[1])
out = {}
for day in sys.argv[2:]:
    entries, errors, balances = connector_for(lc).read_day(date.fromisoformat(day), None)
    out[day] = [sorted(e.entry_id for e in entries), errors]
print(json.dumps(out))
"""


def test_the_index_survives_a_restart(lc, inbox, parses):
    (inbox / "week.xml").write_bytes(three_days())
    days = [str(d) for d in (D1, D2, D3, CREATED)]
    here = {d: read_statements_day(lc, date.fromisoformat(d)) for d in days}
    assert len(parses) == 1
    # another process, with a parse that refuses to run, reads the same days from the index
    child = subprocess.run([sys.executable, "-c", _CHILD, str(inbox), *days], capture_output=True, text=True,
                           timeout=120, cwd=Path(__file__).resolve().parents[1])
    assert child.returncode == 0, child.stderr[-2000:]
    there = json.loads(child.stdout)
    assert there == {d: [sorted(e.entry_id for e in entries), [list(x) for x in errors]]
                     for d, (entries, errors, _) in here.items()}
    assert [len(there[str(d)][0]) for d in (D1, D2, D3)] == [2, 1, 3] and len(there[str(D2)][1]) == 1


def test_a_damaged_index_entry_is_rebuilt_from_the_file(lc, inbox, parses):
    (inbox / "week.xml").write_bytes(three_days())
    first = read_statements_day(lc, D3)
    (part,) = list(StatementInbox(lc).folder.glob(f"*/days/{D3}.msgpack"))
    part.write_bytes(b"\x00not msgpack")
    assert read_statements_day(lc, D3) == first
    assert len(parses) == 2
    assert read_statements_day(lc, D3) == first and len(parses) == 2  # rebuilt on disk


def test_the_sensor_indexes_new_files_so_the_days_do_not_parse(tmp_path, inbox, monkeypatch, wh):
    from dagster import DagsterInstance, build_sensor_context

    from ledger_pipelines.resources import KafkaResource, WarehouseResource
    from ledger_pipelines.config import load_config
    from ledger_pipelines.sensors.source_sensors import build_source_sensors

    config = tmp_path / "ledgers.yaml"
    config.write_text(yaml.safe_dump({"ledgers": [{"name": "bank_statements", "kind": "iso20022",
                                                   "inbox": str(inbox)}]}))
    monkeypatch.setenv("LEDGER_CONFIG", str(config))
    monkeypatch.setenv("LEDGER_WAREHOUSE_URL", f"sqlite:///{tmp_path / 'w.db'}")
    (inbox / "week.xml").write_bytes(three_days())
    calls: list[int] = []
    real = iso20022.camt_to_entries
    monkeypatch.setattr(iso20022, "camt_to_entries", lambda data, *a, **k: calls.append(1) or real(data, *a, **k))

    def tick():
        resources = {"warehouse": WarehouseResource(), "kafka": KafkaResource()}
        statement_inbox_sensor = build_source_sensors(load_config())["statement_inbox_sensor"]
        return statement_inbox_sensor(build_sensor_context(instance=DagsterInstance.ephemeral(), resources=resources))

    (request,) = tick()
    assert request.run_config["ops"]["publish_ledger"]["config"]["ledger"] == "bank_statements"
    assert len(calls) == 1  # indexed on arrival
    lc = LedgerConfig(name="bank_statements", kind="iso20022", inbox=str(inbox))
    assert [snapshot_day(lc, d, wh)["rows"] for d in (D1, D2, D3)] == [2, 1, 3]
    assert len(calls) == 1
    tick()
    assert len(calls) == 1  # an indexed content is not parsed again
    # a content that left the inbox: its index entry is removed by a later tick
    (inbox / "week.xml").unlink()
    index = StatementInbox(lc)
    assert len([p for p in index.folder.iterdir() if not p.name.startswith(".")]) == 1
    tick()
    assert [p for p in index.folder.iterdir() if not p.name.startswith(".")] == []


# -- the index is the pipeline's own: nothing in the inbox is trusted ----------------------------------

LONG_AGO = time.time() - 30 * 86_400


def planted_index(inbox: Path) -> Path:
    """Where an index inside the inbox would sit: ``<inbox>/.state/statement-index/<ledger>/``."""
    return inbox / ".state" / "statement-index" / "bank_statements"


def victim_folder(tmp_path: Path) -> Path:
    """A folder outside the state folder with old subfolders: a foreign name and a content digest's."""
    victim = tmp_path / "victim"
    for name in ("payroll", "ab" * 32):
        (victim / name).mkdir(parents=True)
        (victim / name / "data.txt").write_text("keep me\n")
        os.utime(victim / name, (LONG_AGO, LONG_AGO))
    return victim


def test_the_index_lives_in_the_state_folder_and_a_link_planted_in_the_inbox_is_never_followed(
        lc, inbox, state, tmp_path):
    victim = victim_folder(tmp_path)
    planted_index(inbox).mkdir(parents=True)
    (planted_index(inbox) / code_version()).symlink_to(victim, target_is_directory=True)
    (inbox / "week.xml").write_bytes(three_days())
    index = StatementInbox(lc)
    listing = index.listing()
    assert index.index_new(listing) == ["week.xml"]
    assert refs(index.read_day(D1)[0]) == ["A1", "A2"]
    index.prune({sha for _, sha in listing}, older_than=time.time() + 7200)
    assert sorted(p.name for p in victim.iterdir()) == sorted(["payroll", "ab" * 32])
    assert all((victim / name / "data.txt").read_text() == "keep me\n" for name in ("payroll", "ab" * 32))
    # the entry is under the state folder; nothing was written into the inbox
    assert index.folder == state.resolve() / "statement-index" / "bank_statements" / code_version()
    assert [p.name for p in index.folder.iterdir()] == [file_sha(inbox / "week.xml")]
    assert sorted(str(p.relative_to(inbox)) for p in inbox.rglob("*")) == sorted(
        [".state", ".state/statement-index", ".state/statement-index/bank_statements",
         f".state/statement-index/bank_statements/{code_version()}", "week.xml"])


def file_sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def forged_entry(folder: Path, sha: str, day: date, entries: list) -> None:
    """An index entry claiming that the content ``sha`` holds ``entries`` on ``day``."""
    (folder / sha / "days").mkdir(parents=True)
    (folder / sha / "days" / f"{day}.msgpack").write_bytes(
        msgspec.msgpack.encode({"entries": entries, "rejections": []}))
    (folder / sha / "meta.json").write_text(json.dumps({
        "format": 1, "ledger": "bank_statements", "sha256": sha, "records": len(entries), "entries": len(entries),
        "rejections": 0, "received_day": None, "received_from": None, "balances": [],
        "days": {str(day): {"entries": len(entries), "rejections": 0}}}))


def test_a_meta_and_day_file_planted_in_the_inbox_do_not_change_what_a_day_reads(lc, inbox, wh, parses):
    (inbox / "week.xml").write_bytes(three_days())
    sha = file_sha(inbox / "week.xml")
    forged, _, _ = iso20022.camt_to_entries(camt("S-666", [ntry("EVIL", str(D1), amount="999999.00")]),
                                            "bank_statements")
    forged_entry(planted_index(inbox) / code_version(), sha, D1, forged)
    parses.clear()
    assert refs(read_statements_day(lc, D1)[0]) == ["A1", "A2"]
    assert len(parses) == 1  # the file itself was parsed, the planted entry not read
    stats = snapshot_day(lc, D1, wh)
    assert stats["rows"] == 2 and stats["counts"] == {"read": 2, "entries": 2, "rejected": 0}


@pytest.mark.parametrize("where", ["code folder", "entry folder", "meta.json", "day file"])
def test_a_link_inside_the_state_folder_is_refused_with_an_error_naming_it(lc, inbox, tmp_path, where):
    """The index follows no link below the state folder: a read through one fails, naming the path."""
    (inbox / "week.xml").write_bytes(three_days())
    sha = file_sha(inbox / "week.xml")
    index = StatementInbox(lc)
    index.index(inbox / "week.xml", sha)
    forged, _, _ = iso20022.camt_to_entries(camt("S-666", [ntry("EVIL", str(D1))]), "bank_statements")
    elsewhere = tmp_path / "elsewhere"
    forged_entry(elsewhere, sha, D1, forged)
    link, target = {
        "code folder": (index.folder, elsewhere),
        "entry folder": (index.folder / sha, elsewhere / sha),
        "meta.json": (index.folder / sha / "meta.json", elsewhere / sha / "meta.json"),
        "day file": (index.folder / sha / "days" / f"{D1}.msgpack", elsewhere / sha / "days" / f"{D1}.msgpack"),
    }[where]
    if where == "day file":  # the entry's own meta, so that only the day file is read through the link
        meta = json.loads((index.folder / sha / "meta.json").read_text())
        meta["days"][str(D1)] = {"entries": len(forged), "rejections": 0}
        (index.folder / sha / "meta.json").write_text(json.dumps(meta))
    if link.is_dir():
        shutil.rmtree(link)
    else:
        link.unlink()
    link.symlink_to(target)
    with pytest.raises(StatementIndexError, match="is a symbolic link") as refused:
        StatementInbox(lc).read_day(D1)
    assert str(link) in str(refused.value) and "bank_statements" in str(refused.value)
    assert (elsewhere / sha / "meta.json").is_file()  # nothing removed through the link
    assert link.is_symlink()


def test_prune_never_follows_a_link_in_the_state_folder(lc, inbox, tmp_path):
    victim = victim_folder(tmp_path)
    index = StatementInbox(lc)
    index.folder.parent.mkdir(parents=True)
    index.folder.symlink_to(victim, target_is_directory=True)
    other_code = index.ledger_folder / ("0" * 16)
    other_code.symlink_to(victim, target_is_directory=True)
    os.utime(other_code, (LONG_AGO, LONG_AGO), follow_symlinks=False)
    assert index.prune(set(), older_than=time.time() + 7200) == 0
    assert sorted(p.name for p in victim.iterdir()) == sorted(["payroll", "ab" * 32])
    assert index.folder.is_symlink() and other_code.is_symlink()


def test_prune_removes_only_the_names_the_index_makes(lc, inbox):
    (inbox / "week.xml").write_bytes(three_days())
    index = StatementInbox(lc)
    listing = index.listing()
    index.index_new(listing)
    (kept,) = [sha for _, sha in listing]
    gone = "cd" * 32
    made = {gone: "dir", f".tmp-{'e' * 16}-{'f' * 16}": "dir", "0" * 16: "version"}
    foreign = {"notes": "dir", "deadbeef": "dir", "README": "file", ".tmp-foo": "dir", gone.upper(): "dir",
               f"{gone}.bak": "dir", "backup": "version", "0" * 15: "version", "x" * 16: "version"}
    for name, kind in {**made, **foreign}.items():
        path = (index.ledger_folder if kind == "version" else index.folder) / name
        if kind == "file":
            path.write_text("an operator's note\n")
        else:
            (path / "inside").mkdir(parents=True)
        os.utime(path, (LONG_AGO, LONG_AGO))
    assert index.prune({kept}, older_than=time.time()) == len(made)
    assert sorted(p.name for p in index.folder.iterdir()) == sorted(
        [kept, *(n for n, k in foreign.items() if k != "version")])
    assert sorted(p.name for p in index.ledger_folder.iterdir()) == sorted(
        [code_version(), *(n for n, k in foreign.items() if k == "version")])
    assert (index.folder / "README").read_text() == "an operator's note\n"


@pytest.mark.parametrize("damage", ["truncated", "empty", "missing"])
def test_a_broken_meta_json_is_repaired_by_the_next_read(lc, inbox, parses, damage):
    (inbox / "week.xml").write_bytes(three_days())
    first = read_statements_day(lc, D1)
    assert len(parses) == 1
    meta = StatementInbox(lc).folder / file_sha(inbox / "week.xml") / "meta.json"
    whole = meta.read_bytes()
    if damage == "missing":
        meta.unlink()
    else:
        meta.write_bytes(whole[:len(whole) // 2] if damage == "truncated" else b"")
    assert read_statements_day(lc, D1) == first
    assert len(parses) == 2  # parsed again, once
    assert json.loads(meta.read_text()) == json.loads(whole)  # the entry was replaced on disk
    assert read_statements_day(lc, D1) == first and read_statements_day(lc, D2)[0]
    assert len(parses) == 2


def test_the_sensor_repairs_a_broken_entry_too(lc, inbox, parses):
    (inbox / "week.xml").write_bytes(three_days())
    index = StatementInbox(lc)
    listing = index.listing()
    assert index.index_new(listing) == ["week.xml"]
    (index.folder / listing[0][1] / "meta.json").write_bytes(b"{")
    assert index.index_new(listing) == ["week.xml"]
    assert index.index_new(listing) == []
    assert len(parses) == 2


def test_an_entry_is_on_disk_before_it_is_renamed_into_place(lc, inbox, monkeypatch):
    """Each file, the days folder and the entry folder are synced before the rename that publishes
    the entry, and the folder holding it after."""
    (inbox / "week.xml").write_bytes(three_days())
    events: list[tuple[str, str]] = []
    real_fsync, real_rename = os.fsync, os.rename

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def rename(src, dst, *args, **kwargs):
        events.append(("rename", str(dst)))
        return real_rename(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    index = StatementInbox(lc)
    sha = file_sha(inbox / "week.xml")
    index.index(inbox / "week.xml", sha)
    monkeypatch.setattr(os, "fsync", real_fsync)
    monkeypatch.setattr(os, "rename", real_rename)
    (at,) = [i for i, (what, name) in enumerate(events) if what == "rename" and name.endswith(sha)]
    before = {Path(name).relative_to(index.folder).parts[1:] for what, name in events[:at] if what == "fsync"}
    days = {("days", p.name) for p in (index.folder / sha / "days").iterdir()}
    assert days and before == {("meta.json",), ("days",), ()} | days
    assert ("fsync", str(index.folder)) in events[at + 1:]
