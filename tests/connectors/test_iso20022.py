"""ISO 20022 connector against every real file in tests/data/iso20022 (and the OCA statement of
../shared/realdata when it is there), and hostile input."""

from __future__ import annotations

import json
import re
from decimal import Decimal

import pytest

from conftest import OCA_STATEMENT, REALDATA, needs_shared, shared_bytes, shared_file, shared_param
from ledger_pipelines.connectors.iso20022 import CamtError, camt_to_entries

ISO = REALDATA / "iso20022"
CAMT_FILES = sorted(p for p in ISO.glob("*.xml") if "camt" in p.name)  # committed
CAMT_PARAMS = [*(pytest.param(p, id=p.name[:40]) for p in CAMT_FILES), shared_param(OCA_STATEMENT, id="oca_test-camt053")]
needs_oca = needs_shared(OCA_STATEMENT)
OCA_SHA256 = "8b4959d587ee701be0315eff082c77848a313ea44596fefbcc359858d6143630"  # tests/data/PROVENANCE.md


def test_the_real_files_are_there():
    assert len(CAMT_FILES) == 10 and len(list(ISO.glob("*.xml"))) == 12
    assert not (ISO / "oca_test-camt053.xml").exists()  # AGPL-3.0: never committed


@needs_oca
def test_the_shared_oca_statement_is_the_provenance_copy():
    import hashlib

    assert hashlib.sha256(shared_bytes(OCA_STATEMENT)).hexdigest() == OCA_SHA256, shared_file(OCA_STATEMENT)


@pytest.mark.parametrize("path", CAMT_PARAMS)
def test_every_entry_of_every_camt_file_is_accounted_for(path):
    data = path.read_bytes()
    entries, errors, statements = camt_to_entries(data)
    assert errors == []
    assert len(entries) == len(re.findall(rb"<(?:\w+:)?Ntry>", data)) > 0
    ids = [e.entry_id for e in entries]
    assert len(set(ids)) == len(ids)
    # deterministic: the same file gives the same ids
    assert [e.entry_id for e in camt_to_entries(data)[0]] == ids
    for e in entries:
        assert Decimal(e.amount) >= 0 and e.booked_at.endswith("Z")
        assert e.attributes["message_type"] in ("camt.053", "camt.054")


def _by_file(name):
    if name == "oca_test-camt053.xml":
        return camt_to_entries(shared_bytes(OCA_STATEMENT))
    return camt_to_entries((ISO / name).read_bytes())


def test_balance_checks_match_what_the_banks_sent():
    results = {p.name: [s.balance_check() for s in camt_to_entries(p.read_bytes())[2]] for p in CAMT_FILES}
    assert results["fffs_FI_camt_053_sample.xml"][0]["balanced"] is True
    assert results["fffs_FI_camt_053_sample.xml"][0]["closing"] == "23644.83"
    pf = results["postfinance_camt.053_P_CH2909000000250094239_1110092698_0_2020112503071366.xml"][0]
    assert pf["balanced"] is False and pf["difference"] == "-1537.00"  # the next-day 1537.00 entry
    assert results["genkgo_camt054.v8.xml"][0]["checked"] is False  # camt.054 carries no balances


@needs_oca
def test_balance_check_of_the_oca_statement_fails_as_the_bank_sent_it():
    assert [s.balance_check()["balanced"] for s in _by_file("oca_test-camt053.xml")[2]] == [False]


@needs_oca
def test_reversal_batch_and_references_oca():
    entries, _, _ = _by_file("oca_test-camt053.xml")
    assert [(e.direction, e.amount, e.status) for e in entries] == [
        ("debit", "754.25", "booked"), ("debit", "664.05", "reversed"), ("credit", "1405.31", "booked")]
    assert entries[0].correlation_id == "435005714488-ABNO33052620"
    batch = entries[1]
    assert batch.correlation_id is None  # two details: a batch has no single correlation
    assert [d["amount"] for d in batch.attributes["details"]] == ["564.05", "100.00"]
    assert batch.attributes["batch"] == {"number_of_transactions": 2, "total": "664.05", "currency": "EUR"}
    assert {d["return_reason"] for d in batch.attributes["details"]} == {"AC06"}


def test_scales_dates_and_status_forms_across_versions():
    five, _, _ = _by_file("genkgo_camt053.v2.five.decimals.xml")
    assert five[0].amount == "8.850" and five[0].attributes["bank_tx_code_proprietary"] == "544"
    v8, _, st = _by_file("genkgo_camt053.v8.xml")
    assert st[0].version == "camt.053.001.08"
    assert v8[0].amount == "8.85" and v8[0].correlation_id == "MUELL/FINP/RA12345" and v8[0].status == "booked"
    fi54, _, _ = _by_file("fffs_FI_camt_054_sample.xml")
    info = [e for e in fi54 if e.attributes.get("status_code") == "INFO"]
    assert len(info) == 1 and info[0].status == "reversed" and info[0].amount == "100.00"
    rates = [d.get("exchange_rate") for e in fi54 for d in e.attributes["details"] if d.get("exchange_rate")]
    assert "0.00630875" in rates


def test_genkgo_camt054_matches_genkgos_own_parse():
    expected = json.loads((ISO / "genkgo_camt054.v8.expected.json").read_text())
    exp_entry = expected["getEntries"][0]
    entries, _, _ = _by_file("genkgo_camt054.v8.xml")
    (e,) = entries
    # genkgo reports signed minor units: SEK 200000 DBIT -> -20000000
    assert -Decimal(e.amount) * 100 == Decimal(exp_entry["getAmount"]["getAmount"])
    assert e.attributes["acct_svcr_ref"] == exp_entry["getAccountServicerReference"]
    details = [exp_entry["getTransactionDetail"], *exp_entry["getTransactionDetails"][1:]]
    assert [Decimal(d["amount"]) * 100 for d in e.attributes["details"]] == [
        abs(Decimal(x["getAmount"]["getAmount"])) for x in details]
    assert [d["refs"].get("EndToEndId") for d in e.attributes["details"]] == [
        x["getReference"]["getEndToEndId"] for x in details]


def test_camt053_and_camt054_pair_by_reference_postfinance():
    stmt, _, _ = _by_file("postfinance_camt.053_P_CH2909000000250094239_1110092698_0_2020112503071366.xml")
    note, _, _ = _by_file("postfinance_camt054-chdd_p_ch2909000000250094239_1110097484_0_20190520700381159.xml")
    by_ref = {e.attributes.get("acct_svcr_ref"): e for e in stmt}
    (n,) = note
    assert by_ref[n.attributes["acct_svcr_ref"]].amount == n.amount == "4.50"
    assert [d["refs"]["EndToEndId"] for d in n.attributes["details"]] == ["E2EId-CHDD-1", "E2EId-CHDD-2"]


def test_pain001_payment_initiations_become_pending_debits():
    entries, errors, _ = camt_to_entries((ISO / "six_musterfile_pain.001_Nov2020.xml").read_bytes())
    assert errors == [] and len(entries) == 8
    assert {e.status for e in entries} == {"pending"} and {e.direction for e in entries} == {"debit"}
    assert sum(Decimal(e.amount) for e in entries) == Decimal("38.00")  # CtrlSum


GOOD = shared_bytes(OCA_STATEMENT)


@pytest.mark.parametrize("doc, reason", [
    pytest.param(GOOD[: len(GOOD) // 2], "not well-formed", marks=needs_oca, id="oca-cut-in-half"),
    (b'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/passwd">]><Document>&x;</Document>', "unsafe"),
    (b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">'
     b'<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">]><Document>&c;</Document>', "unsafe"),
    (b'<Document xmlns="urn:iso:std:iso:20022:tech:xsd:pacs.008.001.08"><FIToFICstmrCdtTrf/></Document>', "not a camt"),
    (b"this is not xml", "not well-formed"),
])
def test_unreadable_documents_are_refused_with_the_reason(doc, reason):
    with pytest.raises(CamtError, match=reason):
        camt_to_entries(doc)


@needs_oca
@pytest.mark.parametrize("bad", ["-754.25", "NaN", "1e400", "7,54", "abc"])
def test_a_bad_amount_names_the_entry_and_the_rest_is_kept(bad):
    doc = GOOD.replace(b'<Amt Ccy="EUR">754.25</Amt>', f'<Amt Ccy="EUR">{bad}</Amt>'.encode(), 1)
    entries, errors, _ = camt_to_entries(doc)
    assert len(entries) == 2
    assert len(errors) == 1 and "1234Test/1 entry 1" in errors[0].source and bad[:5] in errors[0].reason


def test_every_xml_file_in_realdata_parses():
    counts = {p.name: len(camt_to_entries(p.read_bytes())[0]) for p in ISO.glob("*.xml")}
    assert sum(counts.values()) == 40 and all(counts.values())  # 43 with the OCA statement's 3 entries


def test_the_path_cache_stays_bounded_on_made_up_tags():
    from lxml import etree

    from ledger_pipelines.connectors import iso20022

    root = etree.fromstring(("<Ntry>" + "".join(f"<T{i}>x</T{i}>" for i in range(60_000)) + "</Ntry>").encode())
    flat = iso20022._flatten(root, "", {})
    assert len(flat) == 60_000 and flat["T59999"] == "x"  # every value read, cache or not
    assert sum(len(t) for t in iso20022._PATHS.values()) <= 50_000


_PACKAGE_DOC = """<Document xmlns="urn:iso:std:iso:20022:tech:xsd:camt.053.001.08"><BkToCstmrStmt><GrpHdr>
<MsgId>M</MsgId></GrpHdr><Stmt><Id>S-9</Id><ElctrncSeqNb>7</ElctrncSeqNb><Acct><Id><IBAN>CH93</IBAN></Id></Acct>{}
</Stmt></BkToCstmrStmt></Document>"""


def _package_ntry(ccy="EUR", code=""):
    return (f'<Ntry><Amt Ccy="{ccy}">1.00</Amt><CdtDbtInd>CRDT</CdtDbtInd><BookgDt><Dt>2026-11-24</Dt></BookgDt>'
            f"{code}</Ntry>")


def test_bank_codes_currencies_and_entry_names_of_the_record_reading():
    codes = ["<BkTxCd><Domn><Cd>PMNT</Cd><Fmly><Cd>RCDT</Cd><SubFmlyCd>ESCT</SubFmlyCd></Fmly></Domn></BkTxCd>",
             "<BkTxCd><Domn><Cd>PMNT</Cd></Domn></BkTxCd>", "<BkTxCd><Domn><Fmly><SubFmlyCd>X</SubFmlyCd></Fmly></Domn>"
             "</BkTxCd>", ""]
    ntrys = [_package_ntry(code=c) for c in codes] + [_package_ntry(ccy="eur"), _package_ntry(ccy="EURO")]
    entries, errors, _ = camt_to_entries(_PACKAGE_DOC.format("".join(ntrys)).encode())
    assert [e.attributes.get("bank_tx_code") for e in entries] == ["PMNT-RCDT-ESCT", "PMNT", "X", None]
    # a code already seen valid does not let a look-alike through; the name carries the statement's numbers
    assert [(x.source, x.reason) for x in errors] == [
        (f"camt.053 S-9 entry {i} (statement ElctrncSeqNb 7)",
         f"camt.053 S-9 entry {i} (statement ElctrncSeqNb 7): currency {ccy!r} is not an ISO 4217 code")
        for i, ccy in ((5, "eur"), (6, "EURO"))]
