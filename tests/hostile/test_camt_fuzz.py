"""Structured mutations of the real camt files (tests/data, and the OCA statement when it is there): no
exception but CamtError leaves the reader, and in a readable document every Ntry (counted here with
lxml, independently) is an entry or a rejection."""

from __future__ import annotations

import copy
import re

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from lxml import etree

from conftest import OCA_STATEMENT, REALDATA, shared_file
from ledger_pipelines.connectors.iso20022 import CamtError, camt_to_entries

FILES = {p.name: p.read_bytes() for p in sorted((REALDATA / "iso20022").glob("*.xml")) if "camt" in p.name}
if (_oca := shared_file(OCA_STATEMENT)) is not None:
    FILES[_oca.name] = _oca.read_bytes()
TREES = {name: etree.fromstring(data) for name, data in FILES.items()}
TARGETS = {"Amt", "TtlAmt", "TtlChrgsAndTaxAmt", "Dt", "DtTm", "CreDtTm", "Ccy", "CdtDbtInd", "Id", "IBAN",
           "ElctrncSeqNb", "LglSeqNb", "PgNb", "MsgId", "AcctSvcrRef", "NtryRef", "NbOfTxs", "RvslInd", "Cd",
           "EndToEndId", "Ustrd"}
HOSTILE = ["", " ", "-1.00", "NaN", "Infinity", "1e999999", "9" * 10_000, "0." + "1" * 30, "1,00", "+1", "１２",
           "9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00+01:00", "0000-01-01", "10000-01-01", "2026-02-30",
           "2026-11-24T25:00:00Z", "XXX", "eur", "CRDT ", "DBIT\n", "#", "%23", "a#1#b", "\u202e",
           "x" * 5000, "true", "1", "BOOK", "PDNG", "0"]
NAMESPACES = ["urn:iso:std:iso:20022:tech:xsd:camt.053.001.02", "urn:iso:std:iso:20022:tech:xsd:camt.054.001.08",
              "urn:iso:std:iso:20022:tech:xsd:camt.053.001.99", "urn:example:other", ""]
# what may make a whole document unreadable; anything else must be a per-record rejection
DOCUMENT_REASONS = re.compile(r"not well-formed XML|not a camt\.052/053/054 document|message versions 001\.02 to "
                              r"001\.13|unsafe XML refused|exceeds the")

mutation = st.tuples(st.sampled_from(["delete", "duplicate", "swap", "text", "attribute", "namespace"]),
                     st.integers(0, 10**6), st.integers(0, 10**6), st.sampled_from(HOSTILE),
                     st.sampled_from(NAMESPACES))


def _mutate(root, ops) -> None:
    for op, a, b, value, ns in ops:
        elements = [el for el in root.iter() if isinstance(el.tag, str) and el is not root]
        if not elements:
            return
        el = elements[a % len(elements)]
        parent = el.getparent()
        local = etree.QName(el).localname
        if op == "delete":
            parent.remove(el)
        elif op == "duplicate":
            el.addnext(copy.deepcopy(el))
        elif op == "swap":
            other = elements[b % len(elements)]
            if other is el or other in el.iterancestors() or el in other.iterancestors():
                continue
            here, there = etree.Element("here"), etree.Element("there")
            el.addprevious(here)
            other.addprevious(there)
            here.addprevious(other)
            there.addprevious(el)
            here.getparent().remove(here)
            there.getparent().remove(there)
        elif op in ("text", "attribute"):
            targets = [x for x in elements if etree.QName(x).localname in TARGETS] or elements
            target = targets[b % len(targets)]
            if op == "text" and len(target) == 0:
                target.text = value
            elif op == "attribute":
                target.set("Ccy", value.replace("\x00", ""))
        elif op == "namespace":
            el.tag = f"{{{ns}}}{local}" if ns else local


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(sorted(FILES)), ops=st.lists(mutation, max_size=6), cut=st.none() | st.floats(0, 1),
       utf16=st.booleans())
def test_mutated_real_files_are_read_record_by_record(name, ops, cut, utf16):
    root = copy.deepcopy(TREES[name])
    _mutate(root, ops)
    data = etree.tostring(root, xml_declaration=True, encoding="UTF-16" if utf16 else "UTF-8")
    if cut is not None:
        data = data[: int(len(data) * cut)]
    try:
        entries, errors, statements = camt_to_entries(data)
    except CamtError as exc:
        assert DOCUMENT_REASONS.search(str(exc)), exc
        event("document refused")
        return
    event("read, with rejections" if errors else "read, no rejection")
    parsed = etree.fromstring(data)  # what the reader accepted is well-formed
    n_ntry = sum(1 for _ in parsed.iter("{*}Ntry"))
    balance_rejections = [e for e in errors if " balance" in e.source and " entry " not in e.source]
    assert len(balance_rejections) <= sum(1 for _ in parsed.iter("{*}Bal"))
    assert n_ntry == len(entries) + len(errors) - len(balance_rejections)
    ids = [e.entry_id for e in entries]
    assert len(set(ids)) == len(ids)
    for err in errors:
        assert err.source and err.reason and len(err.reason) < 20_000
