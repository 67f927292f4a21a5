"""Canonical entry, schema version 1 (ARCHITECTURE section 2).

Entries are immutable msgspec Structs. Amounts stay strings in canonical decimal form end to end
(``"1234.50"``, ``"109000000000000000000"``) and become ``Decimal`` or scaled integers only where
arithmetic happens; a float never touches them. Decoding validates in msgspec's C code (patterns,
enums, required fields), then :func:`check_entry` applies the rules a pattern cannot express.
"""

from __future__ import annotations

import re
from datetime import date, datetime, timezone
from decimal import Context, Decimal, InvalidOperation
from typing import Annotated, Any, Literal, NamedTuple

import msgspec

SCHEMA_VERSION = 1

LedgerKind = Literal["sql", "evm", "iso20022", "cdc"]
Direction = Literal["debit", "credit"]
Status = Literal["pending", "booked", "final", "reversed", "orphaned"]
STATUSES: tuple[str, ...] = ("pending", "booked", "final", "reversed", "orphaned")

# uint256 has 78 digits; leave headroom for a fractional part but refuse absurd lengths.
MAX_AMOUNT_DIGITS = 96
AMOUNT_PATTERN = r"^(0|[1-9][0-9]*)(\.[0-9]+)?\Z"
TIMESTAMP_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?Z\Z"
DATE_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}\Z"
NAME_PATTERN = r"^[a-z][a-z0-9_]{0,62}\Z"

NonEmpty = Annotated[str, msgspec.Meta(min_length=1, max_length=512)]
_TIMESTAMP = re.compile(TIMESTAMP_PATTERN)
_DATE = re.compile(DATE_PATTERN)
_NAME = re.compile(NAME_PATTERN)


class EntryError(ValueError):
    """A record that is not a valid canonical entry; the message names the field and the reason."""


class NotAnEntry(EntryError):
    """A well-formed record of something the ledger does not map (another event, another token)."""


class Rejection(NamedTuple):
    """A record set aside: where it sits in its input, why, and its position (from 0) among the records."""

    where: str
    reason: str
    index: int
    not_an_entry: bool = False  # see NotAnEntry: a reader of the source skips these, a file count names them


class Mapped(NamedTuple):
    """What a mapper made of one input: ``accepted`` records became ``entries`` (a Debezium update with its
    before image becomes two); every other record is one of ``rejections``."""

    entries: list
    rejections: list[Rejection]
    accepted: int


MAX_JSON_INT = 2**63 - 1  # block numbers, log indexes, LSNs, ts_ms: the warehouse stores them as BIGINT
# 9999-12-31T23:59:59Z: the last second an RFC 3339 timestamp can write
MAX_EPOCH_SECONDS = 253_402_300_799


# gc=False: entries are immutable records of JSON-like values and never part of a reference cycle,
# so the cyclic collector need not track them (a million entries are a million fewer objects for
# every collection to walk: measured a sixth of the time of a camt parse)
class _EntryFields(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    schema_version: Literal[1]
    entry_id: NonEmpty
    ledger: str
    ledger_kind: LedgerKind
    source_ref: NonEmpty
    correlation_id: str | None
    account: NonEmpty
    counterparty: str | None
    asset: NonEmpty
    amount: str
    direction: Direction
    booked_at: str
    value_date: str | None
    status: Status


class CanonicalEntry(_EntryFields, frozen=True, kw_only=True, gc=False):
    position: dict[str, Any] = msgspec.field(default_factory=dict)
    attributes: dict[str, Any] = msgspec.field(default_factory=dict)

    @property
    def amount_decimal(self) -> Decimal:
        return Decimal(self.amount)

    @property
    def booked_date(self) -> str:
        return self.booked_at[:10]


_encoder = msgspec.json.Encoder(order="sorted")
_ID_SEP = ":"


class WireEntry(_EntryFields, frozen=True, kw_only=True, gc=False):
    """The event log's view of an entry: ``position`` and ``attributes`` stay raw JSON.

    Same fields and rules as :class:`CanonicalEntry`; skipping the dicts saves decoding them only
    to encode them again for the warehouse.
    """

    position: msgspec.Raw = msgspec.Raw(b"{}")
    attributes: msgspec.Raw = msgspec.Raw(b"{}")


def amount_is_canonical(a: str) -> bool:
    """``AMOUNT_PATTERN`` without a regex (this runs once per ingested entry)."""
    if not a or len(a) > MAX_AMOUNT_DIGITS + 1 or not a.isascii():
        return False
    whole, dot, frac = a.partition(".")
    if not whole.isdigit() or (len(whole) > 1 and whole[0] == "0") or len(whole) + len(frac) > MAX_AMOUNT_DIGITS:
        return False
    return not dot or frac.isdigit()


def check_entry(e, amount_checked: bool = False, known_ledger: str | None = None):
    """Rules beyond the types: canonical amount, name, id derivation, real UTC timestamps.

    ``known_ledger`` is a ledger name already validated (the ingest's topic ledger): an entry
    naming it needs no pattern match.
    """
    if not amount_checked and not amount_is_canonical(e.amount):
        raise EntryError(
            f"amount: {e.amount[:120]!r} is not an exact non-negative decimal string without exponent"
        )
    if e.ledger != known_ledger and not _NAME.match(e.ledger):
        raise EntryError(f"ledger: {e.ledger!r} must match {NAME_PATTERN}")
    booked, value_date = e.booked_at, e.value_date
    # timestamps and dates repeat (many entries a second, one value date a day): each string is
    # checked once and remembered as valid (a bounded memo of pure checks; a third of this function)
    booked_ok = booked in _VALID_TIMES
    if not booked_ok and not _TIMESTAMP.match(booked):
        raise EntryError(f"booked_at: {booked!r} is not an RFC 3339 UTC timestamp ending in Z")
    date_ok = value_date is None or value_date in _VALID_DATES
    if not date_ok and not _DATE.match(value_date):
        raise EntryError(f"value_date: {value_date!r} is not an ISO date")
    if e.entry_id != f"{e.ledger}{_ID_SEP}{e.source_ref}":
        raise EntryError(f"entry_id: {e.entry_id!r} is not '<ledger>:<source_ref>' ({e.ledger}:{e.source_ref})")
    if "\x1e" in e.entry_id or "\x1f" in e.entry_id:
        # the separators of the id lists a match or break id is derived from: with them, two records
        # of different entries could get one id
        raise EntryError(f"entry_id: {e.entry_id!r} holds U+001E or U+001F (the separators match and break ids "
                         "are derived with)")
    if not booked_ok:
        _on_calendar(datetime.fromisoformat, booked, _VALID_TIMES, "booked_at", "a valid UTC timestamp")
    if not date_ok:
        _on_calendar(date.fromisoformat, value_date, _VALID_DATES, "value_date", "a valid date")
    return e


_VALID_TIMES: set[str] = set()
_VALID_DATES: set[str] = set()


def _on_calendar(parse, value: str, memo: set[str], field: str, what: str) -> None:
    """``value`` (already of the right shape) exists on the calendar; remembered as valid if so."""
    try:
        parse(value)
    except ValueError as exc:
        raise EntryError(f"{field}: {value!r} is not {what} ({exc})") from None
    if len(memo) >= 100_000:
        memo.clear()
    memo.add(value)


_decoder = msgspec.json.Decoder(CanonicalEntry)
_wire_decoder = msgspec.json.Decoder(WireEntry)


MAX_NESTING = 200


def json_nesting(raw: bytes) -> int:
    """How deep arrays and objects nest, outside strings."""
    depth = deepest = 0
    in_string = escaped = False
    for c in raw:
        if in_string:
            in_string = escaped or c != 0x22  # '"'
            escaped = not escaped and c == 0x5C  # backslash
        elif c == 0x22:
            in_string = True
        elif c in (0x5B, 0x7B):  # [ {
            depth += 1
            deepest = max(deepest, depth)
        elif c in (0x5D, 0x7D):
            depth -= 1
    return deepest


def refuse_deep_json(raw: bytes | str, limit: int = MAX_NESTING) -> None:
    """Raises :class:`EntryError` for JSON nested deeper than ``limit``, before any decoder sees it.

    JSON decoders (msgspec's, the standard library's) recurse in C once per level, up to the recursion
    limit, which py_ecc (imported with web3) raises to 100000: 100000 nested lists then overflow the C
    stack and kill the process instead of raising. The bracket count keeps this off the common path."""
    data = raw if isinstance(raw, bytes) else raw.encode("utf-8", "surrogatepass")
    if data.count(b"[") + data.count(b"{") > limit and json_nesting(data) > limit:
        raise EntryError(f"not valid JSON: nested deeper than {limit} levels")


def _decode(decoder: msgspec.json.Decoder, data: bytes | str, known_ledger: str | None = None):
    refuse_deep_json(data)
    try:
        entry = decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise EntryError(_explain(str(exc))) from None
    except msgspec.DecodeError as exc:
        raise EntryError(f"not valid JSON: {exc}") from None
    return check_entry(entry, known_ledger=known_ledger)


def decode_entry(data: bytes | str, known_ledger: str | None = None) -> CanonicalEntry:
    """Decode and validate one canonical entry (JSON); raises :class:`EntryError` with the reason."""
    return _decode(_decoder, data, known_ledger)


def decode_wire(data: bytes | str, known_ledger: str | None = None) -> WireEntry:
    return _decode(_wire_decoder, data, known_ledger)


def _explain(msg: str) -> str:
    """msgspec says 'Expected `str`, got `float` - at `$.amount`'; lead with the field's name."""
    m = re.search(r"at `\$\.(\w+)`", msg)
    field = m.group(1) if m else None
    if field == "amount":
        return f"amount: must be an exact decimal string, never a JSON number ({msg})"
    if field == "schema_version":
        return f"schema_version: only version {SCHEMA_VERSION} is understood ({msg})"
    if "missing required field" in msg:
        return msg.replace("Object missing required field", "missing required field")
    return f"{field}: {msg}" if field else msg


def encode_entry(e: CanonicalEntry) -> bytes:
    """Canonical JSON: field and attribute keys sorted, so equal entries encode to equal bytes."""
    return _encoder.encode(e)


def to_dict(e: CanonicalEntry) -> dict[str, Any]:
    return msgspec.to_builtins(e)


_KINDS = frozenset(("sql", "evm", "iso20022", "cdc"))
_DIRECTIONS = frozenset(("debit", "credit"))
_STATUS_SET = frozenset(STATUSES)
_REQUIRED_TEXT = ("source_ref", "account", "asset")


def make_entry(**fields: Any) -> CanonicalEntry:
    """Build and validate an entry from Python values (amount, timestamps and dates normalised).

    The same rules as :func:`decode_entry`, checked directly rather than through a JSON round trip:
    connectors build millions of these.
    """
    fields.setdefault("schema_version", SCHEMA_VERSION)
    eid = fields.get("entry_id")
    if eid is None:
        eid = fields["entry_id"] = f"{fields.get('ledger')}{_ID_SEP}{fields.get('source_ref')}"
    fields.setdefault("correlation_id", None)
    fields.setdefault("counterparty", None)
    amount = fields.get("amount")
    if not (isinstance(amount, str) and amount_is_canonical(amount)):
        fields["amount"] = format_amount(amount)
    booked = fields.get("booked_at")
    if isinstance(booked, datetime):
        fields["booked_at"] = format_timestamp(booked)
    vd = fields.setdefault("value_date", None)
    if vd is not None and type(vd) is not str and isinstance(vd, date):
        fields["value_date"] = vd.isoformat()
    if (fields.get("ledger_kind") not in _KINDS or fields.get("direction") not in _DIRECTIONS
            or fields.get("status") not in _STATUS_SET):
        for name, allowed in (("ledger_kind", _KINDS), ("direction", _DIRECTIONS), ("status", _STATUS_SET)):
            if fields.get(name) not in allowed:
                raise EntryError(f"{eid}: {name}: {fields.get(name)!r} is not one of {sorted(allowed)}")
    for name in _REQUIRED_TEXT:
        v = fields.get(name)
        if not isinstance(v, str) or not v or len(v) > 512:
            raise EntryError(f"{eid}: {name}: must be a non-empty string of at most 512 characters, got {v!r:.120}")
    if not isinstance(eid, str) or len(eid) > 512:
        # the event log decodes entry_id with the same bound: a longer id would be refused there, after publishing
        raise EntryError(f"entry_id: {str(eid)[:120]!r}...: longer than 512 characters")
    for name in ("correlation_id", "counterparty"):
        v = fields[name]
        if v is not None and not isinstance(v, str):
            raise EntryError(f"{eid}: {name}: must be a string or null, got {type(v).__name__}")
    if fields["schema_version"] != SCHEMA_VERSION:
        raise EntryError(f"{eid}: schema_version: only version {SCHEMA_VERSION} is understood")
    try:
        entry = CanonicalEntry(**fields)
    except TypeError as exc:
        raise EntryError(f"{eid}: {exc}") from None
    try:
        return check_entry(entry, amount_checked=True)  # normalised just above
    except EntryError as exc:
        raise EntryError(f"{eid}: {exc}") from None


def utc_from_epoch(seconds: Any, what: str = "timestamp") -> str:
    """Seconds since 1970 (an int, no bool or float) as a canonical UTC timestamp; EntryError otherwise."""
    if type(seconds) is not int or not 0 <= seconds <= MAX_EPOCH_SECONDS:
        raise EntryError(f"{what} {str(seconds)[:40]!r} is not a whole number of seconds in the years 1970-9999")
    return format_timestamp(datetime.fromtimestamp(seconds, tz=timezone.utc))


def scaled_decimal(value: int, scale: int, normalize: bool = False) -> Decimal:
    """``value`` × 10^-scale, exactly: the default decimal context (28 digits) would round uint256 values."""
    ctx = Context(prec=len(str(abs(value))) + 2)
    d = Decimal(value).scaleb(-scale, ctx)
    return d.normalize(ctx) if normalize else d


def amount_scale(amount: str) -> tuple[int, int]:
    """A canonical amount string as (integer value, scale): ``"1234.50"`` -> ``(123450, 2)``."""
    whole, _, frac = amount.partition(".")
    return int(whole + frac), len(frac)


def format_amount(value: Any) -> str:
    """Exact decimal string of an int, Decimal or decimal string; floats are refused."""
    if isinstance(value, bool) or isinstance(value, float):
        raise EntryError(f"amount: {value!r} is a {type(value).__name__}; amounts must be exact (int, Decimal or str)")
    if isinstance(value, int):
        if value < 0:
            raise EntryError(f"amount: {str(value)[:40]} is negative; direction carries the sign")
        if value.bit_length() > 4 * MAX_AMOUNT_DIGITS or len(str(value)) > MAX_AMOUNT_DIGITS:
            raise EntryError(f"amount: an integer of more than {MAX_AMOUNT_DIGITS} digits")
        return str(value)
    if isinstance(value, str):
        if amount_is_canonical(value):
            return value
        try:
            value = Decimal(value)
        except InvalidOperation:
            raise EntryError(f"amount: {value[:60]!r} is not a decimal number") from None
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise EntryError(f"amount: {value} is not finite")
        if value < 0:
            raise EntryError(f"amount: {value} is negative; direction carries the sign")
        # bounded before writing it out: 1E+999999999 in positional notation is a gigabyte of zeros
        if value.adjusted() > MAX_AMOUNT_DIGITS or value.as_tuple().exponent < -MAX_AMOUNT_DIGITS:
            raise EntryError(f"amount: {value:.20} cannot be represented exactly in {MAX_AMOUNT_DIGITS} digits")
        text = f"{value:f}"
        if not re.fullmatch(AMOUNT_PATTERN, text) or len(text) > MAX_AMOUNT_DIGITS + 1:
            raise EntryError(f"amount: {value} cannot be represented exactly as a canonical decimal")
        return text
    raise EntryError(f"amount: unsupported type {type(value).__name__}")


def format_timestamp(ts: datetime) -> str:
    if ts.tzinfo is None:
        raise EntryError(f"booked_at: {ts} has no time zone; canonical timestamps are UTC")
    try:
        ts = ts.astimezone(timezone.utc)
    except OverflowError:
        raise EntryError(f"booked_at: {ts.isoformat()} in UTC is outside the years 1-9999") from None
    # not strftime: its %Y writes year 999 as '999', which is no RFC 3339 year
    text = f"{ts.year:04d}-{ts.month:02d}-{ts.day:02d}T{ts.hour:02d}:{ts.minute:02d}:{ts.second:02d}"
    if ts.microsecond:
        text += f".{ts.microsecond:06d}".rstrip("0")
    return text + "Z"
