"""ISO 20022 bank statements: camt.053 (statement), camt.054 (debit/credit notification) and
camt.052 (account report), message versions 001.02 to 001.13, namespace-agnostic.

:func:`camt_to_entries` reads a document (safe XML: no DTD, no entities, size, depth and entry
limits checked before any entry is read) into :class:`Statement` records and maps each statement
entry (``Ntry``) to one canonical entry, its transaction details (``TxDtls``) listed in
``attributes.details``. Every ``Ntry`` of the document becomes an entry or a rejection naming its
statement and position (or its line, for one outside any statement); the others are kept.

Entry ids (``source_ref``): the statement's ``Id``, then ``#e<ElctrncSeqNb>``, ``#l<LglSeqNb>``,
``#p<statement page>`` and ``#m<message page>`` for those it carries, then ``#<position of the Ntry
in the statement>``, then ``#<AcctSvcrRef or NtryRef>`` when there is one; ``%`` and ``#`` inside
these values are written ``%25`` and ``%23``. Two statements of one document with the same Id and
numbers cannot be told apart: the later one's entries are rejected.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from decimal import Decimal
from contextvars import ContextVar
from functools import lru_cache
from typing import Any
from lxml.etree import _Element as Element

import msgspec
from lxml import etree

from ..model import CanonicalEntry, EntryError, format_amount, format_timestamp, make_entry

MAX_DOCUMENT_BYTES = 64 * 1024 * 1024
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


# libxml2 with every way out closed: no DTD loading, no entity substitution, no network, no huge trees
_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False,
                          remove_comments=True, remove_pis=True)


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


_AMOUNT_TEXT = re.compile(r"[0-9]{1,18}(\.[0-9]{1,18})?")
_COUNT = re.compile(r"[0-9]{1,18}")
_CCY = re.compile(r"[A-Z]{3}")


def _amount_of(raw: str | None, ccy: str | None, what: str) -> tuple[str, str]:
    if raw is None or raw == "":
        raise EntryError(f"{what}: missing amount")
    if not ccy or not _CCY.fullmatch(ccy):
        raise EntryError(f"{what}: currency {_short(ccy)!r} is not an ISO 4217 code")
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


def _short(text: str | None, limit: int = 80) -> str | None:
    """A value as quoted in a reason: hostile text can be megabytes, repeated on every entry."""
    if text is None or len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


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
    for name, path in _REF_PATHS:
        v = f.get(path)
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
    rate = f.get("AmtDtls/InstdAmt/CcyXchg/XchgRate") or f.get("AmtDtls/TxAmt/CcyXchg/XchgRate")
    if rate:
        d["exchange_rate"] = rate
    cd = f.get("CdtDbtInd")
    credit = entry_credit if not cd else cd == "CRDT"
    d["direction"] = "credit" if credit else "debit"
    cp = {}
    name_path, party_name_path, iban_path, other_path = _PARTY_PATHS[credit]
    name = f.get(name_path) or f.get(party_name_path)
    acct = f.get(iban_path) or f.get(other_path)
    if name:
        cp["name"] = name
    if acct:
        cp["account"] = acct
    if cp:
        d["counterparty"] = cp
    for key, path in (("remittance", "RmtInf/Ustrd"), ("creditor_reference", "RmtInf/Strd/CdtrRefInf/Ref"),
                      ("return_reason", "RtrInf/Rsn/Cd")):
        if f.get(path):
            d[key] = f[path]
    return d


def _entry(ntry: Element, index: int, where: str) -> CamtEntry:
    subs: list = []
    f = _flatten(ntry, "", {}, subs)
    amount, ccy = _amount_of(f.get("Amt"), f.get("Amt@Ccy"), where)
    cd = f.get("CdtDbtInd")
    if cd not in ("CRDT", "DBIT"):
        raise EntryError(f"{where}: CdtDbtInd {_short(cd)!r} is neither CRDT nor DBIT")
    credit = cd == "CRDT"
    rvsl = (f.get("RvslInd") or "false").lower() in ("true", "1")
    status = f.get("Sts/Cd") or f.get("Sts/Prtry") or f.get("Sts") or "BOOK"
    try:
        booking, _ = _date_time(f.get("BookgDt/Dt"), f.get("BookgDt/DtTm"))
        _, value_date = _date_time(f.get("ValDt/Dt"), f.get("ValDt/DtTm"))
    except ValueError as exc:
        raise EntryError(f"{where}: bad date ({exc})") from None
    attrs: dict[str, Any] = {"cdt_dbt_ind": cd, "status_code": status}
    code = "-".join(x for x in (f.get("BkTxCd/Domn/Cd"), f.get("BkTxCd/Domn/Fmly/Cd"),
                                f.get("BkTxCd/Domn/Fmly/SubFmlyCd")) if x)
    if code:
        attrs["bank_tx_code"] = code
    if f.get("BkTxCd/Prtry/Cd"):
        attrs["bank_tx_code_proprietary"] = f["BkTxCd/Prtry/Cd"]
    if f.get("AddtlNtryInf"):
        attrs["additional_info"] = f["AddtlNtryInf"]
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
        booking=booking, value_date=value_date, acct_svcr_ref=f.get("AcctSvcrRef") or None,
        ntry_ref=f.get("NtryRef") or None, attributes=attrs, details=details,
    )


def _safe_root(data: bytes, max_bytes: int) -> tuple[Element, str | None]:
    """Parse with every way out closed, then refuse any document type declaration.

    Entities can only be declared inside a DOCTYPE, so refusing it refuses internal and external
    entities; an undeclared entity reference is not well-formed. The parsed document is checked,
    not the bytes: a declaration can be written in any encoding libxml2 reads (UTF-16 or UTF-32,
    with or without a byte order mark). Parsing one is harmless (no entity is substituted, no DTD
    loaded, entity amplification is capped); reading on would drop the entities' text silently.
    libxml2 refuses nesting deeper than 256 elements (huge_tree off).
    """
    if len(data) > max_bytes:
        raise CamtError(f"document of {len(data)} bytes exceeds the {max_bytes}-byte limit")
    try:
        root = etree.fromstring(data, _PARSER)
    except etree.XMLSyntaxError as exc:
        raise CamtError(f"not well-formed XML: {exc}") from None
    if root is None:
        raise CamtError("not well-formed XML: empty document")
    info = root.getroottree().docinfo
    if info.doctype or info.internalDTD is not None or info.externalDTD is not None:
        raise CamtError("unsafe XML refused: a document type declaration (DOCTYPE, and with it any entity) "
                        "is not accepted")
    tag = root.tag
    return root, tag[1:tag.index("}")] if tag[:1] == "{" else None


def _body(root: Element) -> Element:
    return root[0] if _local(root.tag) == "Document" and len(root) else root


def _namespace(el: Element) -> str | None:
    tag = el.tag
    return tag[1:tag.index("}")] if tag[:1] == "{" else None


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
        index = 0
        for child in stmt:
            tag = child.tag
            if tag != ntry_tag and (type(tag) is not str or _local(tag) != "Ntry"):
                continue
            index += 1
            where = st.where(f"entry {index}")
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


def read_document(path) -> bytes:
    """A statement file's bytes, reading no more than the size limit allows (a larger file is refused
    before it is held in memory)."""
    with open(path, "rb") as f:
        data = f.read(MAX_DOCUMENT_BYTES + 1)
    if len(data) > MAX_DOCUMENT_BYTES:
        raise CamtError(f"document larger than the {MAX_DOCUMENT_BYTES}-byte limit")
    return data


def camt_to_entries(data: bytes, ledger: str = "bank_statements") -> tuple[list[CanonicalEntry], list[RecordError],
                                                                             list[Statement]]:
    """Parse and map a whole document (camt.052/053/054, or pain.001): (entries, bad records, statements)."""
    if len(data) > MAX_DOCUMENT_BYTES:
        raise CamtError(f"document of {len(data)} bytes exceeds the {MAX_DOCUMENT_BYTES}-byte limit")
    entries, errors = [], []
    root, ns = _safe_root(data, MAX_DOCUMENT_BYTES)
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
