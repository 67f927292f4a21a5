"""camt statements, entries and transaction details read from the parsed XML into plain records
(:class:`Statement`, :class:`CamtEntry`, detail dicts): values checked, amounts kept as their text."""

from __future__ import annotations

import hashlib
import re
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from decimal import Decimal
from functools import lru_cache
from typing import Any

import msgspec
from lxml.etree import _Element as Element

from ...model import EntryError, format_timestamp
from ...money import EXACT, computes_exactly
from .safe_xml import CamtError, RecordError, _body, _local, _namespace, _short

# a bound on the work and memory of one document (every Ntry costs an entry or a rejection): far
# above any real statement that fits in the byte limit (~600k entries of the smallest useful form)
MAX_ENTRIES = 1_000_000
# source_ref is at most 512 characters: the statement's part leaves room for position and reference
MAX_STATEMENT_KEY = 400
_CONTAINERS = {
    "BkToCstmrStmt": ("camt.053", "Stmt"),
    "BkToCstmrDbtCdtNtfctn": ("camt.054", "Ntfctn"),
    "BkToCstmrAcctRpt": ("camt.052", "Rpt"),
}
_VERSION = re.compile(r"camt\.(05[234])\.001\.(\d{2})")
_REF_FIELDS = ("MsgId", "AcctSvcrRef", "PmtInfId", "InstrId", "EndToEndId", "TxId", "UETR", "MndtId", "ChqNb",
               "ClrSysRef")
_NOT_PROVIDED = {"NOTPROVIDED", "NOT PROVIDED", ""}


@dataclass(frozen=True)
class Balance:
    type: str
    amount: Decimal
    currency: str
    credit: bool
    date: str | None

    @property
    def signed(self) -> Decimal:
        return self.amount if self.credit else EXACT.minus(self.amount)


class CamtEntry(msgspec.Struct, frozen=True, gc=False):  # never in a cycle (see model._EntryFields)
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
    key: str = ""  # the statement's part of its entries' source_ref (see the module's doc)
    numbers: dict[str, str] = field(default_factory=dict)  # sequence and page numbers it carries

    def where(self, what: str = "") -> str:
        """This statement, or a record of it, as named in a rejection: ``camt.053 S-1 entry 3 (statement
        StmtPgntn/PgNb 2)``."""
        numbers = ", ".join(f"{name} {_short(value)}" for name, value in self.numbers.items())
        text = f"{self.message_type} {_short(self.statement_id)}" + (f" {what}" if what else "")
        return text + (f" (statement {numbers})" if numbers else "")

    @computes_exactly
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


def _text(el: Element | None, path: str) -> str | None:
    if el is None:
        return None
    found = _find(el, path)
    if found is None or found.text is None:
        return None
    return found.text.strip()


_AMOUNT_TEXT = re.compile(r"[0-9]{1,18}(\.[0-9]{1,18})?")
_COUNT = re.compile(r"[0-9]{1,18}")
_CCY = re.compile(r"[A-Z]{3}")
_CODES: set[str | None] = set()  # currency codes seen to match _CCY


def _amount_of(raw: str | None, ccy: str | None, what: str) -> tuple[str, str]:
    if raw is None or raw == "":
        raise EntryError(f"{what}: missing amount")
    if ccy not in _CODES:
        if not ccy or not _CCY.fullmatch(ccy):
            raise EntryError(f"{what}: currency {_short(ccy)!r} is not an ISO 4217 code")
        _CODES.add(ccy)  # three capital letters: at most 17,576 of them
    if not _AMOUNT_TEXT.fullmatch(raw):
        raise EntryError(f"{what}: amount {raw[:60]!r} is not a non-negative decimal (ISO 20022 amounts are unsigned)")
    return raw, ccy


def _amount(el: Element | None, what: str) -> tuple[str, str]:
    return _amount_of(None if el is None or el.text is None else el.text.strip(), None if el is None else el.get("Ccy"),
                      what)


def _flatten(el: Element, prefix: str, out: dict[str, str], subs: list | None = None) -> dict[str, str]:
    """One pass over a subtree: ``{"BookgDt/Dt": "2026-11-24", "Amt": "1.00", "Amt@Ccy": "EUR", ...}``.

    The first occurrence of a path wins, except ``Ustrd`` lines, which are joined: collected as
    they come and joined once at the end (joining as they come copies the text so far per line).
    ``TxDtls`` subtrees are handed back in ``subs`` to be flattened on their own.
    """
    more: dict[str, list[str]] = {}
    _walk(el, prefix, out, subs, more)
    for path, lines in more.items():
        out[path] = " ".join((out[path], *lines))
    return out


def _walk(el: Element, prefix: str, out: dict[str, str], subs: list | None, more: dict[str, list[str]]) -> None:
    """:func:`_flatten`'s pass; paths are cached per parent path and qualified tag (nested dicts: no
    key tuple built per element)."""
    global _PATH_COUNT
    table = _PATHS.get(prefix)
    if table is None:
        table = _PATHS[prefix] = {}
    for c in el:
        tag = c.tag
        step = table.get(tag)
        if step is None:
            if type(tag) is not str:
                continue  # comments, processing instructions
            _PATH_COUNT += 1
            if _PATH_COUNT > 50_000:  # a hostile document of made-up tags must not grow it forever
                _PATHS.clear()
                _PATH_COUNT = 0
                table = _PATHS[prefix] = {}
            name = _local(tag)
            step = table[tag] = (name, f"{prefix}/{name}" if prefix else name, name[-3:] == "Amt",
                                 name == "TxDtls")
        name, path, is_amount, is_details = step
        if is_details and subs is not None:
            subs.append(c)
            continue
        if len(c):
            _walk(c, path, out, subs, more)
            continue
        value = (c.text or "").strip()
        if path in out:
            if name == "Ustrd" and value:
                lines = more.get(path)
                if lines is None:
                    more[path] = [value]
                else:
                    lines.append(value)
            continue
        out[path] = value
        if is_amount:  # only amounts carry an attribute we read
            ccy = c.get("Ccy")
            if ccy is not None:
                out[path + "@Ccy"] = ccy


# parent path -> qualified tag -> (local name, path, is an amount, is TxDtls); real documents use a
# few hundred paths
_PATHS: dict[str, dict[str, tuple[str, str, bool, bool]]] = {}
_PATH_COUNT = 0


def _date_time(d: str | None, dt: str | None) -> tuple[str | None, str | None]:
    """(RFC 3339 UTC timestamp, ISO date) of a DateAndDateTimeChoice (``Dt`` or ``DtTm``); ValueError
    for a value off the calendar, also one that leaves years 1 to 9999 once moved to UTC."""
    if d:
        return _on_day(d)
    if dt:
        try:
            parsed = datetime.fromisoformat(dt.replace("Z", "+00:00"))
            if parsed.tzinfo is None:  # ISO 20022 local time without offset: taken as UTC
                parsed = parsed.replace(tzinfo=timezone.utc)
            utc = parsed.astimezone(timezone.utc)
        except (ValueError, OverflowError) as exc:
            raise ValueError(f"date-time {_short(dt)!r}: {exc}") from None
        return format_timestamp(utc), utc.date().isoformat()
    return None, None


# ISODate, with the time zone xs:date allows (a calendar day whatever the zone)
_ISO_DATE = re.compile(r"([0-9]{4}-[0-9]{2}-[0-9]{2})(?:Z|[+-][0-9]{2}:[0-9]{2})?")


@lru_cache(maxsize=4096)
def _on_day(d: str) -> tuple[str, str]:
    """A booking or value date (``Dt``): a statement has a handful, repeated on every entry. Raises
    ValueError for a date not on the calendar (not cached)."""
    m = _ISO_DATE.fullmatch(d)
    if m is None:
        raise ValueError(f"date {_short(d)!r} is not an ISO date (YYYY-MM-DD)")
    day = m.group(1)
    try:
        date.fromisoformat(day)
    except ValueError as exc:
        raise ValueError(f"date {day!r}: {exc}") from None
    return f"{day}T00:00:00Z", day


def _account(acct: Element | None) -> str | None:
    if acct is None:
        return None
    return _text(acct, "Id/IBAN") or _text(acct, "Id/Othr/Id")


_REF_PATHS = tuple((name, "Refs/" + name) for name in _REF_FIELDS)
# the other side's name and account paths: the debtor of a credit, the creditor of a debit
_PARTY_PATHS = {credit: (f"RltdPties/{role}/Nm", f"RltdPties/{role}/Pty/Nm", f"RltdPties/{role}Acct/Id/IBAN",
                         f"RltdPties/{role}Acct/Id/Othr/Id")
                for credit, role in ((True, "Dbtr"), (False, "Cdtr"))}


def _detail(f: dict[str, str], entry_credit: bool, where: str) -> dict[str, Any]:
    refs = {}
    get = f.get
    for name, path in _REF_PATHS:
        v = get(path)
        if v and v.upper() not in _NOT_PROVIDED:
            refs[name] = v
    d: dict[str, Any] = {"refs": refs}
    if "Amt" in f:
        d["amount"], d["currency"] = _amount_of(f["Amt"], f.get("Amt@Ccy"), where)
    elif "AmtDtls/TxAmt/Amt" in f:
        d["amount"], d["currency"] = _amount_of(f["AmtDtls/TxAmt/Amt"], f.get("AmtDtls/TxAmt/Amt@Ccy"), where)
    for name, path in (("instructed_amount", "AmtDtls/InstdAmt/Amt"), ("counter_value", "AmtDtls/CntrValAmt/Amt")):
        if path in f:
            amt, ccy = _amount_of(f[path], f.get(path + "@Ccy"), f"{where} {name}")
            d[name] = {"amount": amt, "currency": ccy}
    rate = get("AmtDtls/InstdAmt/CcyXchg/XchgRate") or get("AmtDtls/TxAmt/CcyXchg/XchgRate")
    if rate:
        d["exchange_rate"] = rate
    cd = get("CdtDbtInd")
    credit = entry_credit if not cd else cd == "CRDT"
    d["direction"] = "credit" if credit else "debit"
    cp = {}
    name_path, party_name_path, iban_path, other_path = _PARTY_PATHS[credit]
    name = get(name_path) or get(party_name_path)
    acct = get(iban_path) or get(other_path)
    if name:
        cp["name"] = name
    if acct:
        cp["account"] = acct
    if cp:
        d["counterparty"] = cp
    for key, path in _DETAIL_TEXTS:
        v = get(path)
        if v:
            d[key] = v
    return d


_DETAIL_TEXTS = (("remittance", "RmtInf/Ustrd"), ("creditor_reference", "RmtInf/Strd/CdtrRefInf/Ref"),
                 ("return_reason", "RtrInf/Rsn/Cd"))


def _entry(ntry: Element, index: int, where: str) -> CamtEntry:
    subs: list = []
    f = _flatten(ntry, "", {}, subs)
    get = f.get
    amount, ccy = _amount_of(get("Amt"), get("Amt@Ccy"), where)
    cd = get("CdtDbtInd")
    if cd not in ("CRDT", "DBIT"):
        raise EntryError(f"{where}: CdtDbtInd {_short(cd)!r} is neither CRDT nor DBIT")
    credit = cd == "CRDT"
    rvsl = (get("RvslInd") or "false").lower() in ("true", "1")
    status = get("Sts/Cd") or get("Sts/Prtry") or get("Sts") or "BOOK"
    try:
        booking, _ = _date_time(get("BookgDt/Dt"), get("BookgDt/DtTm"))
        _, value_date = _date_time(get("ValDt/Dt"), get("ValDt/DtTm"))
    except ValueError as exc:
        raise EntryError(f"{where}: bad date ({exc})") from None
    attrs: dict[str, Any] = {"cdt_dbt_ind": cd, "status_code": status}
    domain, family, sub_family = get("BkTxCd/Domn/Cd"), get("BkTxCd/Domn/Fmly/Cd"), get("BkTxCd/Domn/Fmly/SubFmlyCd")
    if domain and family and sub_family:
        attrs["bank_tx_code"] = f"{domain}-{family}-{sub_family}"
    elif domain or family or sub_family:
        attrs["bank_tx_code"] = "-".join(x for x in (domain, family, sub_family) if x)
    v = get("BkTxCd/Prtry/Cd")
    if v:
        attrs["bank_tx_code_proprietary"] = v
    v = get("AddtlNtryInf")
    if v:
        attrs["additional_info"] = v
    if "NtryDtls/Btch/NbOfTxs" in f or "NtryDtls/Btch/TtlAmt" in f:
        batch: dict[str, Any] = {}
        n = f.get("NtryDtls/Btch/NbOfTxs")
        if n:
            batch["number_of_transactions"] = int(n) if _COUNT.fullmatch(n) else n
        if "NtryDtls/Btch/TtlAmt" in f:
            batch["total"], batch["currency"] = _amount_of(
                f["NtryDtls/Btch/TtlAmt"], f.get("NtryDtls/Btch/TtlAmt@Ccy"), f"{where} batch total")
        attrs["batch"] = batch
    if "Chrgs/TtlChrgsAndTaxAmt" in f:
        attrs["charges"] = dict(zip(("amount", "currency"), _amount_of(
            f["Chrgs/TtlChrgsAndTaxAmt"], f.get("Chrgs/TtlChrgsAndTaxAmt@Ccy"), f"{where} charges")))
    details = [_detail(_flatten(tx, "", {}), credit, f"{where} TxDtls {i}") for i, tx in enumerate(subs, start=1)]
    return CamtEntry(
        index=index, amount=amount, currency=ccy, credit=credit, reversal=rvsl, status=status,
        booking=booking, value_date=value_date, acct_svcr_ref=get("AcctSvcrRef") or None,
        ntry_ref=get("NtryRef") or None, attributes=attrs, details=details,
    )


def _parse_camt_root(root: Element, ns: str | None, data: bytes) -> tuple[list[Statement], list[RecordError]]:
    token = _NS.set(ns or "")
    try:
        return _parse_statements(root, ns, data)
    finally:
        _NS.reset(token)


def _escape(text: str) -> str:
    """A value as a part of a ``#``-separated id."""
    return text.replace("%", "%25").replace("#", "%23")


_STRAY = " Ntry at line "  # in the source of an Ntry outside any statement read


def _parse_statements(root: Element, ns: str | None, data: bytes) -> tuple[list[Statement], list[RecordError]]:
    """The document's statements, and the rejections of the Ntry elements found outside them."""
    body = _body(root)
    kind = _CONTAINERS.get(_local(body.tag))
    if kind is None:
        raise CamtError(f"not a camt.052/053/054 document: found <{_short(_local(root.tag))}>/"
                        f"<{_short(_local(body.tag))}> (namespace {_short(ns)!r})")
    message_type, container = kind
    m = _VERSION.search(ns or "")
    version = f"camt.{m.group(1)}.001.{m.group(2)}" if m else None
    if version and not 2 <= int(m.group(2)) <= 13:
        raise CamtError(f"{version}: message versions 001.02 to 001.13 are understood")
    # a tree walk in C: the bound holds before any entry is read
    n_ntry = sum(1 for _ in root.iter("{*}Ntry"))
    if n_ntry > MAX_ENTRIES:
        raise CamtError(f"document of {n_ntry} Ntry elements exceeds the limit of {MAX_ENTRIES}")
    digest = hashlib.sha256(data).hexdigest()
    msg_id = _text(body, "GrpHdr/MsgId")
    msg_page = _text(body, "GrpHdr/MsgPgntn/PgNb")
    ntry_tag = _qualified(ns or "", "Ntry")[0]
    first_with: dict[str, int] = {}  # statement id key -> the statement that has it
    statements = _findall(body, container)
    out = []
    n_read = 0  # Ntry children of the statements read
    for s_index, stmt in enumerate(statements, start=1):
        stmt_id = _text(stmt, "Id") or f"{msg_id or digest[:16]}/{s_index}"
        # what tells the pages and sequels of one statement Id apart: (id marker, name, value)
        numbers = [n for n in (("e", "ElctrncSeqNb", _text(stmt, "ElctrncSeqNb")),
                               ("l", "LglSeqNb", _text(stmt, "LglSeqNb")),
                               ("p", f"{container}Pgntn/PgNb", _text(stmt, f"{container}Pgntn/PgNb")),
                               ("m", "MsgPgntn/PgNb", msg_page)) if n[2]]
        key = _escape(stmt_id) + "".join(f"#{marker}{_escape(value)}" for marker, _, value in numbers)
        account = _account(_find(stmt, "Acct"))
        st = Statement(
            message_type=message_type, version=version, message_id=msg_id, statement_id=stmt_id,
            account=account or "", account_currency=_text(stmt, "Acct/Ccy"), created_at=_text(stmt, "CreDtTm"),
            document_sha256=digest, key=key, numbers={name: value for _, name, value in numbers},
        )
        out.append(st)
        # a statement that cannot be read as a whole: each of its entries is rejected with the reason
        if key in first_with:
            problem = (f"statement {s_index} of the document has the same Id and sequence/page numbers as "
                       f"statement {first_with[key]}, {st.where()}: their entries could not be told apart, so the "
                       f"later statement is rejected")
        elif not account:
            problem = "statement has no account (Acct/Id)"
        elif len(account) > 512:
            problem = f"statement account of {len(account)} characters (at most 512)"
        elif len(key) > MAX_STATEMENT_KEY:
            problem = (f"statement Id and sequence/page numbers of {len(key)} characters: entry ids would exceed "
                       f"their 512 characters")
        else:
            problem = None
        first_with.setdefault(key, s_index)
        if problem is None:
            for bal in _findall(stmt, "Bal"):
                try:
                    amt, ccy = _amount(_find(bal, "Amt"), f"{_short(stmt_id)} balance")
                    st.balances.append(Balance(
                        type=_text(bal, "Tp/CdOrPrtry/Cd") or _text(bal, "Tp/CdOrPrtry/Prtry") or "?",
                        amount=Decimal(amt), currency=ccy, credit=_text(bal, "CdtDbtInd") != "DBIT",
                        date=_text(bal, "Dt/Dt") or (_text(bal, "Dt/DtTm") or "")[:10] or None,
                    ))
                except EntryError as exc:
                    st.errors.append(RecordError(st.where("balance"), str(exc)))
        head, tail = st.where("\0").split("\0")  # the statement's part of each entry's name, built once
        index = 0
        for child in stmt:
            tag = child.tag
            if tag != ntry_tag and (type(tag) is not str or _local(tag) != "Ntry"):
                continue
            index += 1
            where = f"{head}entry {index}{tail}"
            if problem is None and tag != ntry_tag:
                problem_here = (f"Ntry in namespace {_short(_namespace(child))!r}, not the document's "
                                f"{_short(ns)!r}")
            else:
                problem_here = problem
            if problem_here is not None:
                st.errors.append(RecordError(where, f"{where}: {problem_here}"))
                continue
            try:
                st.entries.append(_entry(child, index, where))
            except (EntryError, ValueError) as exc:
                reason = str(exc) if str(exc).startswith(where) else f"{where}: {exc}"
                st.errors.append(RecordError(where, reason))
        n_read += index
    # an Ntry anywhere else (another namespace's statement, nested in another element) is no entry
    # of any statement read: rejected with its line, never dropped
    strays: list[RecordError] = []
    if n_read == n_ntry:
        return out, strays
    read = set(statements)
    for ntry in root.iter("{*}Ntry"):
        parent = ntry.getparent()
        if parent in read:
            continue
        source = f"{message_type} {_short(msg_id) or digest[:16]}{_STRAY}{ntry.sourceline}"
        where = "not inside a statement" if parent is None else (
            f"inside <{_short(_local(parent.tag))}> of namespace {_short(_namespace(parent))!r}")
        strays.append(RecordError(source, f"{source}: {where}, not directly inside a <{container}> of the "
                                          f"document's namespace {_short(ns)!r}: not read as an entry"))
    return out, strays
