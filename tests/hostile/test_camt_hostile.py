"""The camt reader on hostile documents: every Ntry becomes an entry or a named rejection, ids never
collide, values off the calendar or out of range are per-entry rejections, cost stays linear, and
a document type declaration is refused in any encoding."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from lxml import etree

from conftest import OCA_STATEMENT, REALDATA, needs_shared, shared_bytes, shared_param
from ledger_pipelines.connectors import iso20022
from ledger_pipelines.connectors.iso20022 import flatten, safe_xml
from ledger_pipelines.connectors.iso20022 import CamtError, camt_to_entries

ISO = REALDATA / "iso20022"
OCA = shared_bytes(OCA_STATEMENT)  # camt.053.001.02, 3 entries, Stmt Id 1234Test/1 (b"" when absent)
needs_oca = needs_shared(OCA_STATEMENT)
V08 = "urn:iso:std:iso:20022:tech:xsd:camt.053.001.08"
V02 = "urn:iso:std:iso:20022:tech:xsd:camt.053.001.02"


def _ntry(amount="1.00", booking="<Dt>2026-11-24</Dt>", ref="", ccy="EUR", cd="CRDT", extra=""):
    return (f'<Ntry>{ref}<Amt Ccy="{ccy}">{amount}</Amt><CdtDbtInd>{cd}</CdtDbtInd><Sts><Cd>BOOK</Cd></Sts>'
            f"<BookgDt>{booking}</BookgDt>{extra}</Ntry>")


def _stmt(stmt_id="S-1", numbers="", entries=None, ns_attr=""):
    entries = [_ntry(), _ntry("2.00")] if entries is None else entries
    return (f"<Stmt{ns_attr}><Id>{stmt_id}</Id>{numbers}<Acct><Id><IBAN>CH9300762011623852957</IBAN></Id></Acct>"
            + "".join(entries) + "</Stmt>")


def _doc(*stmts, ns=V08, body_ns_attr="", grp=""):
    return (f'<?xml version="1.0" encoding="UTF-8"?><Document xmlns="{ns}"><BkToCstmrStmt{body_ns_attr}>'
            f"<GrpHdr><MsgId>M-1</MsgId><CreDtTm>2026-11-24T10:00:00Z</CreDtTm>{grp}</GrpHdr>"
            + "".join(stmts) + "</BkToCstmrStmt></Document>").encode()


def _ntry_count(data: bytes) -> int:
    return sum(1 for _ in etree.fromstring(data).iter("{*}Ntry"))


def _accounted(data: bytes):
    entries, errors, statements = camt_to_entries(data)
    assert _ntry_count(data) == len(entries) + len(errors)  # no balances in these documents
    return entries, errors, statements


# -- 1. another namespace -----------------------------------------------------------------------------

def test_a_statement_body_in_another_camt_version_is_rejected_entry_by_entry():
    doc = _doc(_stmt(), body_ns_attr=f' xmlns="{V02}"')
    entries, errors, _ = _accounted(doc)
    assert entries == [] and len(errors) == 2
    for err in errors:
        assert "camt.053.001.02" in err.reason and "camt.053.001.08" in err.reason and "line" in err.source


def test_an_ntry_of_another_namespace_inside_a_statement_is_rejected_at_its_position():
    doc = _doc(_stmt(entries=[_ntry("1.00"), _ntry("2.00").replace("<Ntry>", f'<Ntry xmlns="{V02}">'),
                              _ntry("3.00")]))
    entries, errors, _ = _accounted(doc)
    assert [(e.amount, e.position["entry_index"]) for e in entries] == [("1.00", 1), ("3.00", 3)]
    (err,) = errors
    assert "S-1 entry 2" in err.source and "camt.053.001.02" in err.reason


def test_an_ntry_outside_any_statement_is_rejected_with_its_line():
    nested = _ntry("2.00", extra="<NtryDtls>\n" + _ntry("9.00") + "</NtryDtls>")
    doc = _doc(_stmt(entries=[_ntry("1.00"), nested])).replace(b"</GrpHdr>", b"</GrpHdr>\n" + _ntry().encode())
    entries, errors, _ = _accounted(doc)
    assert sorted(e.amount for e in entries) == ["1.00", "2.00"]
    assert len(errors) == 2 and all("Ntry at line" in e.source for e in errors)
    assert {e.source.rsplit(" ", 1)[1] for e in errors} == {"2", "3"}
    assert any("<NtryDtls>" in e.reason for e in errors) and any("<BkToCstmrStmt>" in e.reason for e in errors)


def test_a_statement_without_account_rejects_each_of_its_entries():
    doc = _doc(_stmt().replace("<Acct><Id><IBAN>CH9300762011623852957</IBAN></Id></Acct>", ""), _stmt("S-2"))
    entries, errors, _ = _accounted(doc)
    assert len(entries) == 2 and len(errors) == 2
    assert all("S-1 entry" in e.source and "no account" in e.reason for e in errors)


# -- 2. ids -------------------------------------------------------------------------------------------

def _ids(entries):
    ids = [e.entry_id for e in entries]
    assert len(set(ids)) == len(ids)
    return ids


def test_pages_of_one_statement_id_get_distinct_ids():
    doc = _doc(_stmt(numbers="<StmtPgntn><PgNb>1</PgNb><LastPgInd>false</LastPgInd></StmtPgntn>"),
               _stmt(numbers="<StmtPgntn><PgNb>2</PgNb><LastPgInd>true</LastPgInd></StmtPgntn>"))
    entries, errors, _ = _accounted(doc)
    assert errors == [] and len(_ids(entries)) == 4
    assert [e.source_ref for e in entries] == ["S-1#p1#1", "S-1#p1#2", "S-1#p2#1", "S-1#p2#2"]


@pytest.mark.parametrize("numbers, marker", [
    ("<ElctrncSeqNb>{n}</ElctrncSeqNb>", "e"), ("<LglSeqNb>{n}</LglSeqNb>", "l"),
    ("<StmtPgntn><PgNb>{n}</PgNb><LastPgInd>true</LastPgInd></StmtPgntn>", "p"),
])
def test_each_sequence_or_page_number_tells_statements_apart(numbers, marker):
    doc = _doc(_stmt(numbers=numbers.format(n=7)), _stmt(numbers=numbers.format(n=8)))
    entries, errors, _ = _accounted(doc)
    assert errors == [] and len(_ids(entries)) == 4
    assert {e.source_ref.split("#")[1] for e in entries} == {f"{marker}7", f"{marker}8"}
    assert {e.position["statement_id"] for e in entries} == {"S-1"}


def test_message_pages_of_one_statement_in_two_files_get_distinct_ids():
    one = _doc(_stmt(), grp="<MsgPgntn><PgNb>1</PgNb><LastPgInd>false</LastPgInd></MsgPgntn>")
    two = _doc(_stmt(), grp="<MsgPgntn><PgNb>2</PgNb><LastPgInd>true</LastPgInd></MsgPgntn>")
    assert len(_ids(camt_to_entries(one)[0] + camt_to_entries(two)[0])) == 4


def test_statements_that_cannot_be_told_apart_reject_the_later_one_naming_both():
    doc = _doc(_stmt(numbers="<ElctrncSeqNb>5</ElctrncSeqNb>"), _stmt("S-2"),
               _stmt(numbers="<ElctrncSeqNb>5</ElctrncSeqNb>", entries=[_ntry("3.00"), _ntry("4.00")]))
    entries, errors, _ = _accounted(doc)
    assert sorted(e.amount for e in entries) == ["1.00", "1.00", "2.00", "2.00"]
    assert len(_ids(entries)) == 4 and len(errors) == 2
    for err in errors:
        assert "statement 3" in err.reason and "statement 1" in err.reason and "ElctrncSeqNb 5" in err.reason


def test_separators_inside_values_cannot_forge_another_statements_id():
    # without escaping, Id "A#e1" would give the ids of Id "A" with ElctrncSeqNb 1
    doc = _doc(_stmt("A#e1"), _stmt("A", numbers="<ElctrncSeqNb>1</ElctrncSeqNb>"),
               _stmt("B", entries=[_ntry(ref="<NtryRef>x#1</NtryRef>")]))
    entries, errors, _ = _accounted(doc)
    assert errors == [] and len(_ids(entries)) == 5
    assert entries[0].source_ref == "A%23e1#1" and entries[-1].source_ref == "B#1#x%231"


@pytest.mark.parametrize("path", [*(pytest.param(p, id=p.name[:40]) for p in sorted(ISO.glob("*.xml")) if "camt" in p.name),
                                  shared_param(OCA_STATEMENT, id="oca_test-camt053")])
def test_real_files_ids_follow_the_documented_rule(path):
    """Read back independently: Id, then e/l/p/m numbers the statement carries, then position and
    AcctSvcrRef (else NtryRef)."""
    data = path.read_bytes()
    root = etree.fromstring(data)
    q = lambda el, p: el.findtext("/".join("{*}" + s for s in p.split("/")))  # noqa: E731
    body = root[0]
    container = {"BkToCstmrStmt": "Stmt", "BkToCstmrDbtCdtNtfctn": "Ntfctn"}[etree.QName(body).localname]
    expected = []
    for stmt in body.findall("{*}" + container):
        key = q(stmt, "Id")
        for marker, value in (("e", q(stmt, "ElctrncSeqNb")), ("l", q(stmt, "LglSeqNb")),
                              ("p", q(stmt, f"{container}Pgntn/PgNb")), ("m", q(body, "GrpHdr/MsgPgntn/PgNb"))):
            if value:
                key += f"#{marker}{value.strip()}"
        for i, ntry in enumerate(stmt.findall("{*}Ntry"), start=1):
            ref = q(ntry, "AcctSvcrRef") or q(ntry, "NtryRef")
            expected.append(f"bank_statements:{key}#{i}" + (f"#{ref.strip()}" if ref else ""))
    assert [e.entry_id for e in camt_to_entries(data)[0]] == expected


# -- 3. calendar edges and amounts ----------------------------------------------------------------------

_FIRST_BOOKING = b"<BookgDt>\n                    <Dt>2014-01-05</Dt>\n                </BookgDt>"


@needs_oca
@pytest.mark.parametrize("booking", [
    "<DtTm>9999-12-31T23:59:59-01:00</DtTm>", "<DtTm>0001-01-01T00:00:00+01:00</DtTm>",
    "<DtTm>0000-01-01T00:00:00Z</DtTm>", "<DtTm>10000-01-01T00:00:00Z</DtTm>", "<DtTm>2026-02-30T10:00:00Z</DtTm>",
    "<DtTm>" + "9" * 100_000 + "</DtTm>", "<Dt>0000-01-01</Dt>", "<Dt>10000-01-01</Dt>", "<Dt>9999-12-32</Dt>",
    "<Dt>2026-11-24T10:00:00</Dt>", "<Dt>NaN</Dt>",
])
def test_a_booking_time_off_the_calendar_is_a_rejection_of_that_entry(booking):
    assert _FIRST_BOOKING in OCA
    doc = OCA.replace(_FIRST_BOOKING, f"<BookgDt>{booking}</BookgDt>".encode(), 1)
    entries, errors, _ = camt_to_entries(doc)
    assert len(entries) == 2 and len(errors) == 1
    assert "1234Test/1 entry 1" in errors[0].source and len(errors[0].reason) < 500


@pytest.mark.parametrize("created", ["9999-12-31T23:59:59-01:00", "0000-01-01T00:00:00", "x" * 10_000])
def test_a_creation_time_off_the_calendar_rejects_only_the_entries_that_need_it(created):
    no_dates = _ntry("5.00").replace("<BookgDt><Dt>2026-11-24</Dt></BookgDt>", "")
    doc = _doc(_stmt(entries=[_ntry(), no_dates]).replace("<Acct>", f"<CreDtTm>{created}</CreDtTm><Acct>"))
    entries, errors, _ = _accounted(doc)
    assert [e.amount for e in entries] == ["1.00"] and "S-1 entry 2" in errors[0].source


@pytest.mark.parametrize("where, value", [
    ("amount", "1e999999"), ("amount", "9" * 1_000_000), ("amount", "-1.00"), ("amount", "NaN"),
    ("amount", "Infinity"), ("amount", "1E+5"), ("amount", "0." + "1" * 40), ("amount", "１２"),
    ("ccy", "E" * 100_000), ("ccy", "eur"), ("cd", "C" * 100_000), ("value_date", "<Dt>10000-01-01</Dt>"),
    ("value_date", "<DtTm>9999-12-31T23:59:59-01:00</DtTm>"), ("batch", "9" * 5000),
    ("tx_amount", "1e999999"), ("charges", "-4.40"),
])
def test_hostile_values_are_rejections_of_their_entry(where, value):
    extra = {"value_date": f"<ValDt>{value}</ValDt>",
             "batch": f'<NtryDtls><Btch><NbOfTxs>{value}</NbOfTxs><TtlAmt Ccy="EUR">x</TtlAmt></Btch></NtryDtls>',
             "tx_amount": f'<NtryDtls><TxDtls><Amt Ccy="EUR">{value}</Amt></TxDtls></NtryDtls>',
             "charges": f'<Chrgs><TtlChrgsAndTaxAmt Ccy="EUR">{value}</TtlChrgsAndTaxAmt></Chrgs>'}.get(where, "")
    bad = _ntry(amount=value if where == "amount" else "1.00", ccy=value if where == "ccy" else "EUR",
                cd=value if where == "cd" else "CRDT", extra=extra)
    doc = _doc(_stmt(entries=[_ntry("7.00"), bad, _ntry("8.00")]))
    entries, errors, _ = _accounted(doc)
    assert [e.amount for e in entries] == ["7.00", "8.00"]
    (err,) = errors
    assert "S-1 entry 2" in err.source and len(err.reason) < 1000


def test_a_huge_batch_count_is_kept_as_text():
    doc = _doc(_stmt(entries=[_ntry(extra=f"<NtryDtls><Btch><NbOfTxs>{'9' * 5000}</NbOfTxs></Btch></NtryDtls>")]))
    (e,), errors, _ = _accounted(doc)
    assert errors == [] and e.attributes["batch"]["number_of_transactions"] == "9" * 5000


def test_a_statement_id_too_long_for_an_entry_id_rejects_its_entries_with_bounded_reasons():
    doc = _doc(_stmt("I" * 2_000_000, entries=[_ntry()] * 50))
    entries, errors, _ = _accounted(doc)
    assert entries == [] and len(errors) == 50
    assert all("2000000 characters" in e.source and len(e.reason) < 1000 for e in errors)


# -- 4. cost --------------------------------------------------------------------------------------------

def _remittance_doc(lines: int) -> bytes:
    ustrd = "".join(f"<Ustrd>remittance line {i:07d} of an invoice list, reference RF18539007547034, invoices "
                    f"2026-11-24/{i:08d} paid</Ustrd>" for i in range(lines))  # 120 bytes a line
    tx = f'<NtryDtls><TxDtls><Amt Ccy="EUR">1.00</Amt><RmtInf>{ustrd}</RmtInf></TxDtls></NtryDtls>'
    return _doc(_stmt(entries=[_ntry(extra=tx)]))


def _min_seconds(data: bytes, runs: int = 3) -> float:
    best = float("inf")
    for _ in range(runs):
        t0 = time.perf_counter()
        (e,), errors, _ = camt_to_entries(data)
        best = min(best, time.perf_counter() - t0)
    assert errors == []
    return best


def test_100k_remittance_lines_parse_in_seconds():
    data = _remittance_doc(100_000)
    t0 = time.perf_counter()
    (e,), errors, _ = camt_to_entries(data)
    assert time.perf_counter() - t0 < 30  # a guard against quadratic joining, not a speed target
    remittance = e.attributes["details"][0]["remittance"]
    assert remittance.count("remittance line") == 100_000 and remittance.endswith("2026-11-24/00099999 paid")


def test_remittance_cost_grows_linearly():
    # a shared machine's load can slow one measurement: three tries; a quadratic join is ~16x each time
    small, large = _remittance_doc(25_000), _remittance_doc(100_000)
    ratios = []
    for _ in range(3):
        ratios.append(_min_seconds(large) / _min_seconds(small))
        if ratios[-1] <= 5:
            break
    assert min(ratios) <= 5, ratios


def test_limits_are_checked_before_the_document_is_parsed(monkeypatch):
    parsed = []
    monkeypatch.setattr(safe_xml, "_safe_root", lambda *a: parsed.append(1) or 1 / 0)
    big = _doc(_stmt(entries=[_ntry()] * 40_000))
    monkeypatch.setattr(safe_xml, "MAX_DOCUMENT_BYTES", len(big) - 1)
    with pytest.raises(CamtError, match="exceeds the .*-byte limit"):
        camt_to_entries(big)
    assert parsed == []


def test_the_entry_limit_is_checked_before_any_entry_is_read(monkeypatch):
    read = []
    monkeypatch.setattr(flatten, "_entry", lambda *a: read.append(1) or 1 / 0)
    big = _doc(_stmt(entries=[_ntry()] * 40_000))
    monkeypatch.setattr(flatten, "MAX_ENTRIES", 39_999)
    with pytest.raises(CamtError, match="40000 Ntry elements exceeds the limit of 39999"):
        camt_to_entries(big)
    assert read == []


def test_the_entry_limit_counts_self_closed_and_prefixed_ntry_too(monkeypatch):
    monkeypatch.setattr(flatten, "MAX_ENTRIES", 3)
    doc = _doc(_stmt(entries=[_ntry(), "<Ntry/>", f'<x:Ntry xmlns:x="{V02}"/>', "<Ntry/>"]))
    with pytest.raises(CamtError, match="4 Ntry elements"):
        camt_to_entries(doc)


# -- 5. document type declarations in any encoding --------------------------------------------------------

_ENCODINGS = [("utf-8", "UTF-8", b""), ("utf-16-le", "UTF-16", b"\xff\xfe"), ("utf-16-be", "UTF-16", b"\xfe\xff"),
              ("utf-16-le", "UTF-16LE", b""), ("utf-16-be", "UTF-16BE", b""), ("utf-32-le", "UTF-32", b"\xff\xfe\0\0"),
              ("utf-32-be", "UTF-32BE", b""), ("utf-32-le", "UTF-32LE", b"")]
_DECLARATIONS = {
    "internal subset": '<!DOCTYPE Document [<!ENTITY e "forged">]>',
    "external SYSTEM id": '<!DOCTYPE Document SYSTEM "file:///etc/passwd">',
    "external PUBLIC id": '<!DOCTYPE Document PUBLIC "-//x//y" "http://127.0.0.1:9/x.dtd">',
    "entity reference": '<!DOCTYPE Document [<!ENTITY e SYSTEM "file:///etc/passwd">]>',
}


def _encoded(codec: str, label: str, bom: bytes, doctype: str = "", reference: bool = False) -> bytes:
    text = _doc(_stmt()).decode().replace('encoding="UTF-8"', f'encoding="{label}"')
    text = text.replace("?>", "?>" + doctype, 1)
    if reference:
        text = text.replace("<MsgId>M-1</MsgId>", "<MsgId>M-1&e;</MsgId>")
    return bom + text.encode(codec)


@pytest.mark.parametrize("codec, label, bom", _ENCODINGS, ids=lambda v: v if isinstance(v, str) else None)
@pytest.mark.parametrize("kind", list(_DECLARATIONS))
def test_a_document_type_declaration_is_refused_in_any_encoding(codec, label, bom, kind):
    entries, errors, _ = camt_to_entries(_encoded(codec, label, bom))
    assert len(entries) == 2 and errors == []  # the encoding itself is read
    doc = _encoded(codec, label, bom, _DECLARATIONS[kind], reference=kind in ("entity reference", "internal subset"))
    with pytest.raises(CamtError, match="document type declaration"):
        camt_to_entries(doc)


@pytest.mark.parametrize("codec, label, bom", _ENCODINGS[:3], ids=lambda v: v if isinstance(v, str) else None)
def test_an_undeclared_entity_reference_is_refused(codec, label, bom):
    with pytest.raises(CamtError, match="not well-formed.*Entity 'e' not defined"):
        camt_to_entries(_encoded(codec, label, bom, reference=True))


# -- 6. the command line ----------------------------------------------------------------------------------

def _normalize(*files: Path):
    run = subprocess.run([sys.executable, "-m", "ledger_pipelines.cli", "normalize", "--kind", "iso20022",
                          *map(str, files)], capture_output=True, timeout=120)
    out = run.stdout.decode()
    assert out == "" or out.endswith("\n")
    entries = [json.loads(line) for line in out.splitlines()]
    problems = [json.loads(line) for line in run.stderr.decode().splitlines()]
    return run.returncode, entries, problems


def test_the_command_line_reports_bad_records_and_keeps_the_rest(tmp_path):
    bad = tmp_path / "bad.xml"
    bad.write_bytes(_doc(_stmt(entries=[_ntry(booking="<DtTm>9999-12-31T23:59:59-01:00</DtTm>"), _ntry("2.00"),
                                        _ntry("1e999999")]), body_ns_attr="")
                    .replace(b"</GrpHdr>", b"</GrpHdr>" + _ntry("4.00").encode()))
    code, entries, problems = _normalize(bad)
    assert code == 0 and [e["amount"] for e in entries] == ["2.00"]
    assert len(problems) == 3 and all(p["source"].startswith(f"{bad}: ") for p in problems)
    assert {re.sub(r".* (entry \d+|Ntry at line \d+).*", r"\1", p["source"]) for p in problems} == {
        "entry 1", "entry 3", "Ntry at line 1"}


@needs_oca
@pytest.mark.parametrize("content", [
    OCA[: len(OCA) // 2],
    b'<!DOCTYPE Document SYSTEM "file:///etc/passwd">' + OCA,
    ('<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE Document SYSTEM "file:///etc/passwd">'
     + OCA.decode()).encode("utf-16-le"),
    b"\xff" * 100,
])
def test_the_command_line_refuses_an_unreadable_file_with_one_line(tmp_path, content):
    bad, good = tmp_path / "bad.xml", tmp_path / "good.xml"
    bad.write_bytes(content)
    good.write_bytes(OCA)
    code, entries, problems = _normalize(bad, good)
    assert code != 0 and len(entries) == 3  # the readable file is still read
    (problem,) = [p for p in problems if p["source"].startswith(str(bad))]
    assert problem["source"] == str(bad) and "\n" not in problem["source"]


def _sparse_gib(tmp_path) -> Path:
    big = tmp_path / "big.xml"
    with open(big, "wb") as f:  # sparse: 1 GiB on disk costs nothing, reading it whole would cost 1 GiB
        f.truncate(1 << 30)
    return big


def test_a_file_over_the_size_limit_is_refused_without_being_read_whole(tmp_path):
    import tracemalloc

    big = _sparse_gib(tmp_path)
    tracemalloc.start()
    with pytest.raises(CamtError, match="larger than"):
        iso20022.read_document(big)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 2 * iso20022.MAX_DOCUMENT_BYTES  # the limit plus a byte, never the file


@needs_oca
def test_the_command_line_refuses_a_file_over_the_size_limit_and_reads_the_next(tmp_path):
    big = _sparse_gib(tmp_path)
    good = tmp_path / "good.xml"
    good.write_bytes(OCA)
    code, entries, problems = _normalize(big, good)
    assert code != 0 and len(entries) == 3
    assert [p["error"] for p in problems if p["source"] == str(big)] == [
        f"document larger than the {iso20022.MAX_DOCUMENT_BYTES}-byte limit"]
