"""ISO 20022 bank statements: camt.053 (statement), camt.054 (debit/credit notification) and
camt.052 (account report), message versions 001.02 to 001.13, namespace-agnostic.

Reading: :func:`parse_camt` turns a document into :class:`Statement` records (safe XML: no DTD, no
entities, a size limit). Mapping: :func:`camt_entry_to_entry` turns one statement entry (``Ntry``)
into one canonical entry, its transaction details (``TxDtls``) listed in ``attributes.details``.
A bad entry is reported with the statement and position it came from; the others are kept.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from decimal import Decimal, InvalidOperation
from contextvars import ContextVar
from functools import lru_cache
from typing import Any
from xml.etree.ElementTree import Element

import xml.etree.ElementTree as ET

from ..model import CanonicalEntry, EntryError, format_amount, format_timestamp, make_entry

MAX_DOCUMENT_BYTES = 64 * 1024 * 1024
_CONTAINERS = {
    "BkToCstmrStmt": ("camt.053", "Stmt"),
    "BkToCstmrDbtCdtNtfctn": ("camt.054", "Ntfctn"),
    "BkToCstmrAcctRpt": ("camt.052", "Rpt"),
}
_VERSION = re.compile(r"camt\.(05[234])\.001\.(\d{2})")
_REF_FIELDS = ("MsgId", "AcctSvcrRef", "PmtInfId", "InstrId", "EndToEndId", "TxId", "UETR", "MndtId", "ChqNb",
               "ClrSysRef")
_NOT_PROVIDED = {"NOTPROVIDED", "NOT PROVIDED", ""}


class CamtError(ValueError):
    """The document as a whole cannot be read (not XML, unsafe, not camt, too large)."""


@dataclass(frozen=True)
class RecordError:
    source: str
    reason: str
    payload: str | None = None


@dataclass(frozen=True)
class Balance:
    type: str
    amount: Decimal
    currency: str
    credit: bool
    date: str | None

    @property
    def signed(self) -> Decimal:
        return self.amount if self.credit else -self.amount


@dataclass(frozen=True)
class CamtEntry:
    index: int
    amount: str
    currency: str
    credit: bool
    reversal: bool
    status: str
    booking: str | None  # RFC 3339 UTC timestamp
    value_date: str | None
    acct_svcr_ref: str | None
    ntry_ref: str | None
    attributes: dict[str, Any]
    details: list[dict[str, Any]]


@dataclass
class Statement:
    message_type: str
    version: str | None
    message_id: str | None
    statement_id: str
    account: str
    account_currency: str | None
    created_at: str | None
    balances: list[Balance] = field(default_factory=list)
    entries: list[CamtEntry] = field(default_factory=list)
    errors: list[RecordError] = field(default_factory=list)
    document_sha256: str = ""

    def balance_check(self) -> dict[str, Any]:
        """Opening + credits - debits = closing, per statement (reported, never raised)."""
        by_type = {b.type: b for b in self.balances}
        opening = by_type.get("OPBD") or by_type.get("PRCD")
        closing = by_type.get("CLBD")
        if opening is None or closing is None:
            return {"statement_id": self.statement_id, "checked": False,
                    "reason": "no opening (OPBD/PRCD) or closing (CLBD) balance"}
        movement = sum(((Decimal(e.amount) if e.credit else -Decimal(e.amount)) for e in self.entries
                        if e.currency == opening.currency), Decimal(0))
        computed = opening.signed + movement
        return {
            "statement_id": self.statement_id, "checked": True, "balanced": computed == closing.signed,
            "currency": opening.currency, "opening": str(opening.signed), "movement": str(movement),
            "computed_closing": str(computed), "closing": str(closing.signed),
            "difference": str(closing.signed - computed),
        }


_NS: ContextVar[str] = ContextVar("camt_namespace", default="")


@lru_cache(maxsize=1024)
def _qualified(ns: str, path: str) -> tuple[str, ...]:
    return tuple(f"{{{ns}}}{p}" if ns else p for p in path.split("/"))


def _find(el: Element | None, path: str) -> Element | None:
    """``el.find(path)`` in the document's namespace, one C-level step per tag."""
    for tag in _qualified(_NS.get(), path):
        if el is None:
            return None
        el = el.find(tag)
    return el


def _findall(el: Element | None, path: str) -> list[Element]:
    *parents, last = _qualified(_NS.get(), path)
    for tag in parents:
        if el is None:
            return []
        el = el.find(tag)
    return [] if el is None else el.findall(last)


def _local(tag: str) -> str:
    return tag[tag.index("}") + 1:] if tag[:1] == "{" else tag


def _text(el: Element | None, path: str) -> str | None:
    if el is None:
        return None
    found = _find(el, path)
    if found is None or found.text is None:
        return None
    return found.text.strip()


def _amount(el: Element | None, what: str) -> tuple[str, str]:
    if el is None or el.text is None:
        raise EntryError(f"{what}: missing amount")
    raw = el.text.strip()
    ccy = el.get("Ccy")
    if not ccy or not re.fullmatch(r"[A-Z]{3}", ccy):
        raise EntryError(f"{what}: currency {ccy!r} is not an ISO 4217 code")
    if not re.fullmatch(r"[0-9]{1,18}(\.[0-9]{1,18})?", raw):
        raise EntryError(f"{what}: amount {raw[:60]!r} is not a non-negative decimal (ISO 20022 amounts are unsigned)")
    try:
        Decimal(raw)
    except InvalidOperation:
        raise EntryError(f"{what}: amount {raw[:60]!r} is not a decimal") from None
    return raw, ccy


def _date_or_time(el: Element | None) -> tuple[str | None, str | None]:
    """(RFC 3339 UTC timestamp, ISO date) of a DateAndDateTimeChoice (``Dt`` or ``DtTm``)."""
    if el is None:
        return None, None
    d = _text(el, "Dt")
    if d:
        date.fromisoformat(d[:10])
        return f"{d[:10]}T00:00:00Z", d[:10]
    dt = _text(el, "DtTm")
    if dt:
        parsed = datetime.fromisoformat(dt.replace("Z", "+00:00"))
        if parsed.tzinfo is None:  # ISO 20022 local time without offset: taken as UTC
            parsed = parsed.replace(tzinfo=timezone.utc)
        return format_timestamp(parsed), parsed.astimezone(timezone.utc).date().isoformat()
    return None, None


def _account(acct: Element | None) -> str | None:
    if acct is None:
        return None
    return _text(acct, "Id/IBAN") or _text(acct, "Id/Othr/Id")


def _party(tx: Element, role: str) -> dict[str, Any]:
    rp = _find(tx, "RltdPties")
    if rp is None:
        return {}
    out = {}
    name = _text(rp, f"{role}/Nm") or _text(rp, f"{role}/Pty/Nm")
    acct = _account(_find(rp, f"{role}Acct"))
    if name:
        out["name"] = name
    if acct:
        out["account"] = acct
    return out


def _detail(tx: Element, entry_credit: bool, where: str) -> dict[str, Any]:
    refs = {}
    r = _find(tx, "Refs")
    if r is not None:
        for name in _REF_FIELDS:
            v = _text(r, name)
            if v and v.upper() not in _NOT_PROVIDED:
                refs[name] = v
    d: dict[str, Any] = {"refs": refs}
    amt_el = _find(tx, "Amt")
    if amt_el is None:
        amt_el = _find(tx, "AmtDtls/TxAmt/Amt")
    if amt_el is not None:
        d["amount"], d["currency"] = _amount(amt_el, where)
    for name, path in (("instructed_amount", "AmtDtls/InstdAmt/Amt"), ("counter_value", "AmtDtls/CntrValAmt/Amt")):
        el = _find(tx, path)
        if el is not None:
            amt, ccy = _amount(el, f"{where} {name}")
            d[name] = {"amount": amt, "currency": ccy}
    rate = _text(tx, "AmtDtls/InstdAmt/CcyXchg/XchgRate") or _text(tx, "AmtDtls/TxAmt/CcyXchg/XchgRate")
    if rate:
        d["exchange_rate"] = rate
    cd = _text(tx, "CdtDbtInd")
    credit = entry_credit if cd is None else cd == "CRDT"
    d["direction"] = "credit" if credit else "debit"
    # the other side: the debtor of a credit, the creditor of a debit
    cp = _party(tx, "Dbtr" if credit else "Cdtr")
    if cp:
        d["counterparty"] = cp
    ustrd = [e.text.strip() for e in _findall(tx, "RmtInf/Ustrd") if e.text and e.text.strip()]
    if ustrd:
        d["remittance"] = " ".join(ustrd)
    sref = _text(tx, "RmtInf/Strd/CdtrRefInf/Ref")
    if sref:
        d["creditor_reference"] = sref
    rtr = _text(tx, "RtrInf/Rsn/Cd")
    if rtr:
        d["return_reason"] = rtr
    return d


def _entry(ntry: Element, index: int, where: str) -> CamtEntry:
    amount, ccy = _amount(_find(ntry, "Amt"), where)
    cd = _text(ntry, "CdtDbtInd")
    if cd not in ("CRDT", "DBIT"):
        raise EntryError(f"{where}: CdtDbtInd {cd!r} is neither CRDT nor DBIT")
    credit = cd == "CRDT"
    rvsl = (_text(ntry, "RvslInd") or "false").lower() in ("true", "1")
    status = _text(ntry, "Sts/Cd") or _text(ntry, "Sts/Prtry") or _text(ntry, "Sts") or "BOOK"
    try:
        booking, _ = _date_or_time(_find(ntry, "BookgDt"))
        _, value_date = _date_or_time(_find(ntry, "ValDt"))
    except ValueError as exc:
        raise EntryError(f"{where}: bad date ({exc})") from None
    attrs: dict[str, Any] = {"cdt_dbt_ind": cd, "status_code": status}
    domn = _find(ntry, "BkTxCd/Domn")
    if domn is not None:
        attrs["bank_tx_code"] = "-".join(
            x for x in (_text(domn, "Cd"), _text(domn, "Fmly/Cd"), _text(domn, "Fmly/SubFmlyCd")) if x)
    prtry = _text(ntry, "BkTxCd/Prtry/Cd")
    if prtry:
        attrs["bank_tx_code_proprietary"] = prtry
    info = _text(ntry, "AddtlNtryInf")
    if info:
        attrs["additional_info"] = info
    btch = _find(ntry, "NtryDtls/Btch")
    if btch is not None:
        batch: dict[str, Any] = {}
        n = _text(btch, "NbOfTxs")
        if n:
            batch["number_of_transactions"] = int(n) if n.isdigit() else n
        ttl = _find(btch, "TtlAmt")
        if ttl is not None:
            batch["total"], batch["currency"] = _amount(ttl, f"{where} batch total")
        attrs["batch"] = batch
    charges = _find(ntry, "Chrgs/TtlChrgsAndTaxAmt")
    if charges is not None:
        attrs["charges"] = dict(zip(("amount", "currency"), _amount(charges, f"{where} charges")))
    details = [_detail(tx, credit, f"{where} TxDtls {i}")
               for i, tx in enumerate(_findall(ntry, "NtryDtls/TxDtls"), start=1)]
    return CamtEntry(
        index=index, amount=amount, currency=ccy, credit=credit, reversal=rvsl, status=status,
        booking=booking, value_date=value_date, acct_svcr_ref=_text(ntry, "AcctSvcrRef"),
        ntry_ref=_text(ntry, "NtryRef"), attributes=attrs, details=details,
    )


def _safe_root(data: bytes, max_bytes: int) -> tuple[Element, str | None]:
    """Parse with the C-accelerated expat parser after refusing any document type declaration.

    Entities can only be declared inside a DOCTYPE, so refusing it refuses internal and external
    entities and entity-expansion bombs; expat never fetches external resources by itself.
    """
    if len(data) > max_bytes:
        raise CamtError(f"document of {len(data)} bytes exceeds the {max_bytes}-byte limit")
    text: bytes | str = data
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):  # UTF-16: look for the declaration in the decoded text
        text = data.decode("utf-16")
        if "<!DOCTYPE" in text or "<!ENTITY" in text:
            raise CamtError("unsafe XML refused: document type declarations (and so entities) are not accepted")
        text = re.sub(r"^<\?xml[^>]*\?>", "", text.lstrip("\ufeff"))
    elif b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        raise CamtError("unsafe XML refused: document type declarations (and so entities) are not accepted")
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise CamtError(f"not well-formed XML: {exc}") from None
    tag = root.tag
    return root, tag[1:tag.index("}")] if tag[:1] == "{" else None


def parse_camt(data: bytes, max_bytes: int = MAX_DOCUMENT_BYTES) -> list[Statement]:
    """Every statement / notification / report of a camt document, entries with their errors."""
    root, ns = _safe_root(data, max_bytes)
    return _parse_camt_root(root, ns, data)


def _body(root: Element) -> Element:
    return root[0] if _local(root.tag) == "Document" and len(root) else root


def _parse_camt_root(root: Element, ns: str | None, data: bytes) -> list[Statement]:
    token = _NS.set(ns or "")
    try:
        return _parse_statements(root, ns, data)
    finally:
        _NS.reset(token)


def _parse_statements(root: Element, ns: str | None, data: bytes) -> list[Statement]:
    body = _body(root)
    kind = _CONTAINERS.get(_local(body.tag))
    if kind is None:
        raise CamtError(f"not a camt.052/053/054 document: found <{_local(root.tag)}>/<{_local(body.tag)}> "
                        f"(namespace {ns!r})")
    message_type, container = kind
    m = _VERSION.search(ns or "")
    version = f"camt.{m.group(1)}.001.{m.group(2)}" if m else None
    if version and not 2 <= int(m.group(2)) <= 13:
        raise CamtError(f"{version}: message versions 001.02 to 001.13 are understood")
    digest = hashlib.sha256(data).hexdigest()
    msg_id = _text(body, "GrpHdr/MsgId")
    out = []
    for s_index, stmt in enumerate(_findall(body, container), start=1):
        stmt_id = _text(stmt, "Id") or f"{msg_id or digest[:16]}/{s_index}"
        account = _account(_find(stmt, "Acct"))
        st = Statement(
            message_type=message_type, version=version, message_id=msg_id, statement_id=stmt_id,
            account=account or "", account_currency=_text(stmt, "Acct/Ccy"), created_at=_text(stmt, "CreDtTm"),
            document_sha256=digest,
        )
        if not account:
            st.errors.append(RecordError(f"{message_type} {stmt_id}", "statement has no account (Acct/Id)"))
            out.append(st)
            continue
        for bal in _findall(stmt, "Bal"):
            try:
                amt, ccy = _amount(_find(bal, "Amt"), f"{stmt_id} balance")
                st.balances.append(Balance(
                    type=_text(bal, "Tp/CdOrPrtry/Cd") or _text(bal, "Tp/CdOrPrtry/Prtry") or "?",
                    amount=Decimal(amt), currency=ccy, credit=_text(bal, "CdtDbtInd") != "DBIT",
                    date=_text(bal, "Dt/Dt") or (_text(bal, "Dt/DtTm") or "")[:10] or None,
                ))
            except EntryError as exc:
                st.errors.append(RecordError(f"{message_type} {stmt_id} balance", str(exc)))
        for index, ntry in enumerate(_findall(stmt, "Ntry"), start=1):
            where = f"{message_type} {stmt_id} entry {index}"
            try:
                st.entries.append(_entry(ntry, index, where))
            except (EntryError, ValueError) as exc:
                reason = str(exc) if str(exc).startswith(where) else f"{where}: {exc}"
                st.errors.append(RecordError(where, reason))
        out.append(st)
    return out


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
    # AcctSvcrRef alone is not unique in real files: statement id and position come first
    source_ref = f"{st.statement_id}#{e.index}" + (f"#{ref}" if ref else "")
    if e.reversal:
        status = "reversed"
    elif e.status in ("PDNG", "INFO", "FUTR"):
        status = "pending"
    else:
        status = "booked"
    booked_at = e.booking or (f"{e.value_date}T00:00:00Z" if e.value_date else None)
    if booked_at is None and st.created_at:
        booked_at = format_timestamp(datetime.fromisoformat(st.created_at.replace("Z", "+00:00"))
                                     if "+" in st.created_at or st.created_at.endswith("Z")
                                     else datetime.fromisoformat(st.created_at).replace(tzinfo=timezone.utc))
    if booked_at is None:
        raise EntryError(f"{st.message_type} {st.statement_id} entry {e.index}: no booking date, value date "
                         f"or creation time")
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
        account=st.account, counterparty=counterparty, asset=e.currency, amount=format_amount(e.amount),
        direction="credit" if e.credit else "debit", booked_at=booked_at, value_date=e.value_date,
        status=status,
        position={"statement_id": st.statement_id, "entry_index": e.index, "message_id": st.message_id,
                  "document_sha256": st.document_sha256},
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
                when = f"{exec_date[:10]}T00:00:00Z" if exec_date else (
                    format_timestamp(datetime.fromisoformat(created.replace("Z", "+00:00")).replace(
                        tzinfo=timezone.utc) if created and "+" not in created and not created.endswith("Z")
                        else datetime.fromisoformat(created.replace("Z", "+00:00"))) if created else None)
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
    entries, errors = [], []
    root, ns = _safe_root(data, MAX_DOCUMENT_BYTES)
    if _local(_body(root).tag) == "CstmrCdtTrfInitn":
        token = _NS.set(ns or "")
        try:
            entries, errors = pain001_to_entries(root, data, ledger)
        finally:
            _NS.reset(token)
        return entries, errors, []
    statements = _parse_camt_root(root, ns, data)
    for st in statements:
        errors.extend(st.errors)
        for e in st.entries:
            try:
                entries.append(camt_entry_to_entry(st, e, ledger))
            except EntryError as exc:
                errors.append(RecordError(f"{st.message_type} {st.statement_id} entry {e.index}", str(exc)))
    return entries, errors, statements
