"""Deterministic synthetic canonical entries for the demo stream, tests and benchmarks."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import date, datetime, timedelta, timezone

from .model import SCHEMA_VERSION, CanonicalEntry

_ASSETS = ("EUR", "USD", "CHF", "GBP")


def synthetic_entries(
    ledger: str = "core_banking",
    count: int = 1000,
    day: date | None = None,
    seed: int = 7,
    start: int = 0,
    compact: bool = False,
) -> Iterator[CanonicalEntry]:
    """``count`` valid journal-line entries booked on ``day`` (UTC), ids ``start`` .. ``start+count-1``.

    ``compact`` leaves out position and attributes and uses short references (about 330 bytes of JSON an entry).
    """
    rng = random.Random(seed * 1_000_003 + start)
    day = day or datetime.now(timezone.utc).date()
    midnight = datetime(day.year, day.month, day.day, tzinfo=timezone.utc)
    for i in range(start, start + count):
        cents = rng.randrange(1, 5_000_000_00)
        ts = midnight + timedelta(seconds=rng.randrange(86_400))
        ref = f"{i}" if compact else f"jl-{i:010d}"
        yield CanonicalEntry(
            schema_version=SCHEMA_VERSION,
            entry_id=f"{ledger}:{ref}",
            ledger=ledger,
            ledger_kind="sql",
            source_ref=ref,
            correlation_id=f"E{i // 2}" if compact else f"E2E-{i // 2:010d}",
            account=f"GL{rng.randrange(10**5)}" if compact else f"DE{rng.randrange(10**19, 10**20)}",
            counterparty=None if compact else f"CH{rng.randrange(10**18, 10**19)}",
            asset=_ASSETS[i % len(_ASSETS)],
            amount=f"{cents // 100}.{cents % 100:02d}",
            direction="debit" if i % 2 == 0 else "credit",
            booked_at=ts.strftime("%Y-%m-%dT%H:%M:%SZ"),
            value_date=day.isoformat(),
            status="booked",
            position={} if compact else {"journal_line_id": i},
            attributes={} if compact else {"bank_tx_code": "PMNT-ICDT-ESCT"},
        )


def synthetic_camt053(n: int, details: bool = True, day: date | None = None, seed: int = 2) -> bytes:
    """A camt.053.001.08 statement of ``n`` EUR entries booked on ``day`` (benchmarks, demo)."""
    rng = random.Random(seed)
    d = (day or date(2026, 11, 24)).isoformat()
    parts = ['<?xml version="1.0" encoding="UTF-8"?><Document xmlns="urn:iso:std:iso:20022:tech:xsd:camt.053.001.08">'
             "<BkToCstmrStmt><GrpHdr><MsgId>BENCH</MsgId><CreDtTm>2026-11-24T18:00:00Z</CreDtTm></GrpHdr><Stmt>"
             f"<Id>STMT-{d}-{seed}</Id><Acct><Id><IBAN>CH9300762011623852957</IBAN></Id><Ccy>EUR</Ccy></Acct>"]
    for i in range(n):
        cents = rng.randrange(1, 10**9)
        cd = "CRDT" if i % 3 else "DBIT"
        parts.append(
            f"<Ntry><NtryRef>{i}</NtryRef><Amt Ccy=\"EUR\">{cents // 100}.{cents % 100:02d}</Amt><CdtDbtInd>{cd}</CdtDbtInd>"
            f"<Sts><Cd>BOOK</Cd></Sts><BookgDt><Dt>{d}</Dt></BookgDt><ValDt><Dt>{d}</Dt></ValDt>"
            f"<AcctSvcrRef>ASR{i:09d}</AcctSvcrRef><BkTxCd><Domn><Cd>PMNT</Cd><Fmly><Cd>RCDT</Cd>"
            f"<SubFmlyCd>ESCT</SubFmlyCd></Fmly></Domn></BkTxCd>" + (
                f"<NtryDtls><TxDtls><Refs>"
                f"<EndToEndId>E2E-{i:010d}</EndToEndId></Refs><Amt Ccy=\"EUR\">{cents // 100}.{cents % 100:02d}</Amt>"
                f"<CdtDbtInd>{cd}</CdtDbtInd><RltdPties><Dbtr><Pty><Nm>Debtor {i}</Nm></Pty></Dbtr><DbtrAcct><Id>"
                f"<IBAN>DE89370400440532013{i % 1000:03d}</IBAN></Id></DbtrAcct></RltdPties>"
                f"<RmtInf><Ustrd>Invoice {i}</Ustrd></RmtInf></TxDtls></NtryDtls>" if details else "") + "</Ntry>")
    parts.append("</Stmt></BkToCstmrStmt></Document>")
    return "".join(parts).encode()
