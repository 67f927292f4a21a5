"""camt records to canonical entries and rejections; pain.001 payments to pending entries; the
whole document read by :func:`camt_to_entries`."""

from __future__ import annotations

import hashlib
from typing import Any

from lxml.etree import _Element as Element

from ...model import CanonicalEntry, EntryError, format_amount, make_entry
from .flatten import (_NOT_PROVIDED, _NS, CamtEntry, Statement, _account, _amount, _date_time, _escape, _find,
                      _findall, _parse_camt_root, _text)
from . import safe_xml
from .safe_xml import CamtError, RecordError, _body, _local

def _correlation(details: list[dict[str, Any]]) -> str | None:
    if len(details) != 1:
        return None
    refs = details[0]["refs"]
    for name in ("EndToEndId", "InstrId", "TxId", "UETR"):
        if refs.get(name):
            return refs[name]
    return None


def camt_entry_to_entry(st: Statement, e: CamtEntry, ledger: str = "bank_statements") -> CanonicalEntry:
    """One canonical entry per ``Ntry``; raises EntryError naming the entry when it cannot be mapped."""
    ref = e.acct_svcr_ref or e.ntry_ref
    # AcctSvcrRef alone is not unique in real files: statement id, numbers and position come first
    source_ref = f"{st.key}#{e.index}" + (f"#{_escape(ref)}" if ref else "")
    if e.reversal:
        status = "reversed"
    elif e.status in ("PDNG", "INFO", "FUTR"):
        status = "pending"
    else:
        status = "booked"
    booked_at = e.booking or (f"{e.value_date}T00:00:00Z" if e.value_date else None)
    if booked_at is None and st.created_at:
        try:
            booked_at = _date_time(None, st.created_at)[0]
        except ValueError:
            booked_at = None  # reported below with the entry named
    if booked_at is None:
        raise EntryError(f"{st.where(f'entry {e.index}')}: no booking date, value date or creation time")
    counterparty = None
    if len(e.details) == 1:
        cp = e.details[0].get("counterparty") or {}
        counterparty = cp.get("account") or cp.get("name")
    attrs = dict(e.attributes)
    attrs.update(message_type=st.message_type, statement_id=st.statement_id, details=e.details)
    if st.version:
        attrs["version"] = st.version
    for name, value in (("acct_svcr_ref", e.acct_svcr_ref), ("ntry_ref", e.ntry_ref)):
        if value:
            attrs[name] = value
    return make_entry(
        ledger=ledger, ledger_kind="iso20022", source_ref=source_ref, correlation_id=_correlation(e.details),
        account=st.account, counterparty=counterparty, asset=e.currency, amount=e.amount,
        direction="credit" if e.credit else "debit", booked_at=booked_at, value_date=e.value_date,
        status=status,
        position={"statement_id": st.statement_id, **st.numbers, "entry_index": e.index,
                  "message_id": st.message_id, "document_sha256": st.document_sha256},
        attributes=attrs,
    )


def pain001_to_entries(root: Element, data: bytes, ledger: str) -> tuple[list[CanonicalEntry], list[RecordError]]:
    """pain.001 (customer credit transfer initiation): one pending debit of the debtor's account per
    ``CdtTrfTxInf``, correlated by its EndToEndId: the ordering leg of a payment, before any booking."""
    body = _body(root)
    msg_id = _text(body, "GrpHdr/MsgId") or hashlib.sha256(data).hexdigest()[:16]
    created = _text(body, "GrpHdr/CreDtTm")
    entries, errors = [], []
    for p_index, pmt in enumerate(_findall(body, "PmtInf"), start=1):
        pmt_id = _text(pmt, "PmtInfId") or str(p_index)
        debtor = _account(_find(pmt, "DbtrAcct"))
        exec_date = _text(pmt, "ReqdExctnDt/Dt") or _text(pmt, "ReqdExctnDt")
        for t_index, tx in enumerate(_findall(pmt, "CdtTrfTxInf"), start=1):
            where = f"pain.001 {msg_id} payment {pmt_id} transaction {t_index}"
            try:
                amt_el = _find(tx, "Amt/InstdAmt")
                if amt_el is None:
                    amt_el = _find(tx, "Amt/EqvtAmt/Amt")
                amount, ccy = _amount(amt_el, where)
                if not debtor:
                    raise EntryError(f"{where}: no debtor account (PmtInf/DbtrAcct)")
                when = f"{exec_date[:10]}T00:00:00Z" if exec_date else _date_time(None, created)[0]
                if when is None:
                    raise EntryError(f"{where}: no requested execution date or creation time")
                e2e = _text(tx, "PmtId/EndToEndId")
                e2e = None if e2e is None or e2e.upper() in _NOT_PROVIDED else e2e
                entries.append(make_entry(
                    ledger=ledger, ledger_kind="iso20022", source_ref=f"{msg_id}#{pmt_id}#{t_index}",
                    correlation_id=e2e or _text(tx, "PmtId/InstrId"), account=debtor,
                    counterparty=_account(_find(tx, "CdtrAcct")) or _text(tx, "Cdtr/Nm"), asset=ccy,
                    amount=format_amount(amount), direction="debit", booked_at=when,
                    value_date=exec_date[:10] if exec_date else None, status="pending",
                    position={"message_id": msg_id, "payment_information_id": pmt_id, "transaction_index": t_index},
                    attributes={"message_type": "pain.001", "instruction_id": _text(tx, "PmtId/InstrId"),
                                "creditor": _text(tx, "Cdtr/Nm"),
                                "remittance": _text(tx, "RmtInf/Ustrd")},
                ))
            except (EntryError, ValueError) as exc:
                errors.append(RecordError(where, str(exc) if str(exc).startswith(where) else f"{where}: {exc}"))
    return entries, errors


def camt_to_entries(data: bytes, ledger: str = "bank_statements") -> tuple[list[CanonicalEntry], list[RecordError],
                                                                             list[Statement]]:
    """Parse and map a whole document (camt.052/053/054, or pain.001): (entries, bad records, statements)."""
    limit = safe_xml.MAX_DOCUMENT_BYTES
    if len(data) > limit:
        raise CamtError(f"document of {len(data)} bytes exceeds the {limit}-byte limit")
    entries, errors = [], []
    root, ns = safe_xml._safe_root(data, limit)
    if _local(_body(root).tag) == "CstmrCdtTrfInitn":
        token = _NS.set(ns or "")
        try:
            entries, errors = pain001_to_entries(root, data, ledger)
        finally:
            _NS.reset(token)
        return entries, errors, []
    statements, strays = _parse_camt_root(root, ns, data)
    for st in statements:
        errors.extend(st.errors)
        for e in st.entries:
            try:
                entries.append(camt_entry_to_entry(st, e, ledger))
            except EntryError as exc:
                errors.append(RecordError(st.where(f"entry {e.index}"), str(exc)))
    return entries, errors + strays, statements
