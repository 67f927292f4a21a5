"""A cross-border payment corridor for the demo: three ledgers, a week of payments, every break type.

- ``sender_bank`` (SQL journal, EUR): per payment a debit of the customer account and a credit of the
  USDC settlement account, payment reference = EndToEndId.
- ``eth_usdc`` (a LedgerToken "USDC" with 6 decimals on anvil): the treasury pays the beneficiary bank's
  wallet with ``transferWithMemo(.., reference)``, EUR converted at 1.08.
- ``beneficiary_bank`` (camt.053 statements of its USD account, one camt.054 notification): a credit
  per payment, 1 USDC = 1 USD.

Injected per day (and remembered in ``expected``, so tests can check every one is reported):
bank_vs_chain: missing_right, missing_left, amount_mismatch (FX leg outside tolerance), tolerant (FX leg
inside tolerance), duplicate_left; one timing break (chain leg 3 days late) and one orphaned chain leg
(a reorg) in the week. beneficiary_vs_chain: missing_left, missing_right, asset_mismatch (credited in GBP),
amount_mismatch (fees deducted), duplicate_left (listed twice), one_to_many (a batch credit of 3).

Plain Python; the demo (``demo.py``) drives it against the real stack.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from ..money import computes_exactly

RATE = Decimal("1.08")  # USDC per EUR
CUSTOMERS = "GL-1100-CUSTOMERS"
SETTLEMENT = "GL-2100-USDC-SETTLEMENT"
BENEFICIARY_IBAN = "US64SVBKUS6S3300958879"


@dataclass
class Payment:
    ref: str
    at: datetime
    eur: Decimal
    bank: int = 1          # journal postings of the customer debit (2 = posted twice)
    chain: Decimal | None = None  # USDC sent (None: not sent)
    chain_at: datetime | None = None
    orphan: bool = False   # the first chain transfer is reorged out and sent again
    credit: Decimal | None = None  # USD credited by the beneficiary bank (None: not credited)
    credit_ccy: str = "USD"
    credit_day: date | None = None
    credit_times: int = 1
    batch: str | None = None


@dataclass
class Week:
    days: list[date]
    payments: dict[date, list[Payment]] = field(default_factory=dict)
    expected: list[dict[str, Any]] = field(default_factory=list)  # {day, reconciliation, type, correlation_id}

    def expect(self, day: date, rec: str, kind: str, ref: str, members: list[str] | None = None) -> None:
        """``members``: a batch, reported under the reference of one of its members."""
        self.expected.append({"day": day.isoformat(), "reconciliation": rec, "type": kind, "correlation_id": ref,
                              "members": members or [ref]})


@computes_exactly
def _cents(rng: random.Random, lo: int = 5_000, hi: int = 5_000_000) -> Decimal:
    return Decimal(rng.randrange(lo, hi)).scaleb(-2)


@computes_exactly
def usdc(eur: Decimal) -> Decimal:
    return (eur * RATE).quantize(Decimal("0.01"))


@computes_exactly
def generate(days: list[date], per_day: int, seed: int = 7) -> Week:
    week = Week(days)
    for n, day in enumerate(days):
        rng = random.Random(seed * 1000 + day.toordinal())
        start = datetime(day.year, day.month, day.day, 0, 10, tzinfo=timezone.utc)
        step = timedelta(hours=20) / per_day
        pays = []
        for i in range(per_day):
            eur = _cents(rng)
            p = Payment(ref=f"E2E-{day:%Y%m%d}-{i:05d}", at=start + step * i, eur=eur, chain=usdc(eur),
                        credit=usdc(eur), credit_day=day)
            pays.append(p)
        k = iter(range(0, per_day, max(1, per_day // 40)))  # spread the injected ones over the day
        bc, bf = "bank_vs_chain", "beneficiary_vs_chain"

        p = pays[next(k)]  # the bank booked it, nothing else happened
        p.chain = p.credit = None
        week.expect(day, bc, "missing_right", p.ref)
        p = pays[next(k)]  # on chain and credited, but the sender bank has no booking
        p.bank = 0
        week.expect(day, bc, "missing_left", p.ref)
        p = pays[next(k)]  # FX leg outside tolerance (5 % more USDC); the beneficiary got what was sent
        p.chain = p.credit = (p.chain * Decimal("1.05")).quantize(Decimal("0.01"))
        week.expect(day, bc, "amount_mismatch", p.ref)
        p = pays[next(k)]  # FX leg inside tolerance (0.1 %)
        p.chain = p.credit = (p.chain * Decimal("1.001")).quantize(Decimal("0.01"))
        week.expect(day, bc, "tolerant", p.ref)
        p = pays[next(k)]  # the sender bank posted the payment twice
        p.bank = 2
        week.expect(day, bc, "duplicate_left", p.ref)
        p = pays[next(k)]  # sent on chain, never credited by the beneficiary bank
        p.credit = None
        week.expect(day, bf, "missing_left", p.ref)
        p = pays[next(k)]  # credited in GBP: no rate between USDC and GBP
        p.credit_ccy = "GBP"
        week.expect(day, bf, "asset_mismatch", p.ref)
        p = pays[next(k)]  # the beneficiary bank deducted 5.00 of fees
        p.credit = p.credit - Decimal("5.00")
        week.expect(day, bf, "amount_mismatch", p.ref)
        p = pays[next(k)]  # listed twice on the statement
        p.credit_times = 2
        week.expect(day, bf, "duplicate_left", p.ref)
        batch = f"BATCH-{day:%Y%m%d}"
        members = [pays[next(k)] for _ in range(3)]  # three payments credited as one batch entry
        for p in members:
            p.batch = batch
        week.expect(day, bf, "one_to_many", members[0].ref, members=[p.ref for p in members])
        stray = Payment(ref=f"E2E-{day:%Y%m%d}-STRAY", at=start + timedelta(hours=12), eur=Decimal("0"), bank=0,
                        chain=None, credit=Decimal("250.00"), credit_day=day)
        pays.append(stray)  # a credit at the beneficiary that came through another channel
        week.expect(day, bf, "missing_right", stray.ref)
        if n == 1 and len(days) > 4:  # the chain leg settles 3 days late
            p = pays[next(k)]
            p.chain_at = p.at + timedelta(days=3)
            p.credit_day = (p.at + timedelta(days=3)).date()
            week.expect(days[n + 3], bc, "timing", p.ref)
        if n == 3:  # a reorg takes the chain leg away once; it is sent again
            p = pays[next(k)]
            p.orphan = True
            week.expect(day, bc, "orphaned", p.ref)
        week.payments[day] = pays
    return week


# -- ISO 20022 -------------------------------------------------------------------------------------
def _ntry(i: int, day: date, amount: Decimal, ccy: str, refs: list[tuple[str, Decimal]], acct_ref: str) -> str:
    details = "".join(
        f"<TxDtls><Refs><EndToEndId>{ref}</EndToEndId></Refs><Amt Ccy=\"{ccy}\">{amt}</Amt>"
        f"<CdtDbtInd>CRDT</CdtDbtInd><RltdPties><Dbtr><Pty><Nm>Sender Bank AG</Nm></Pty></Dbtr></RltdPties>"
        f"<RmtInf><Ustrd>{ref}</Ustrd></RmtInf></TxDtls>" for ref, amt in refs)
    return (f"<Ntry><NtryRef>{i}</NtryRef><Amt Ccy=\"{ccy}\">{amount}</Amt><CdtDbtInd>CRDT</CdtDbtInd>"
            f"<Sts><Cd>BOOK</Cd></Sts><BookgDt><Dt>{day}</Dt></BookgDt><ValDt><Dt>{day}</Dt></ValDt>"
            f"<AcctSvcrRef>{acct_ref}</AcctSvcrRef><BkTxCd><Domn><Cd>PMNT</Cd><Fmly><Cd>RCDT</Cd>"
            f"<SubFmlyCd>XBCT</SubFmlyCd></Fmly></Domn></BkTxCd><NtryDtls>{details}</NtryDtls></Ntry>")


def _bal(code: str, amount: Decimal, day: date) -> str:
    ind = "CRDT" if amount >= 0 else "DBIT"
    return (f"<Bal><Tp><CdOrPrtry><Cd>{code}</Cd></CdOrPrtry></Tp><Amt Ccy=\"USD\">{abs(amount)}</Amt>"
            f"<CdtDbtInd>{ind}</CdtDbtInd><Dt><Dt>{day}</Dt></Dt></Bal>")


@computes_exactly
def statements(week: Week) -> tuple[dict[str, bytes], dict[date, Decimal]]:
    """camt.053 per day (USD account of the beneficiary bank) and one camt.054 with the first batch."""
    credits: dict[date, list[Payment]] = {d: [] for d in week.days}
    for pays in week.payments.values():
        for p in pays:
            if p.credit is not None and p.credit_day in credits:
                credits[p.credit_day].append(p)
    files: dict[str, bytes] = {}
    balance = Decimal("1000000.00")
    closing: dict[date, Decimal] = {}
    for n, day in enumerate(week.days):
        entries, batches, moved = [], {}, Decimal(0)
        for p in credits[day]:
            if p.batch:
                batches.setdefault(p.batch, []).append(p)
                continue
            for t in range(p.credit_times):
                entries.append(_ntry(len(entries), day, p.credit, p.credit_ccy, [(p.ref, p.credit)],
                                     f"ASR-{p.ref}-{t}"))
                if p.credit_ccy == "USD":
                    moved += p.credit
        notif = []
        for batch, members in sorted(batches.items()):
            total = sum((m.credit for m in members), Decimal(0))
            xml = _ntry(0, day, total, "USD", [(m.ref, m.credit) for m in members], f"ASR-{batch}")
            if n == 0:  # the first day's batch arrives as a camt.054 notification instead
                notif.append(xml)
            else:
                entries.append(xml)
                moved += total
        opening, balance = balance, balance + moved
        closing[day] = balance
        files[f"camt053-{day}.xml"] = (
            '<?xml version="1.0" encoding="UTF-8"?><Document xmlns="urn:iso:std:iso:20022:tech:xsd:camt.053.001.08">'
            f"<BkToCstmrStmt><GrpHdr><MsgId>STMT-{day}</MsgId><CreDtTm>{day}T23:00:00Z</CreDtTm></GrpHdr><Stmt>"
            f"<Id>BEN-{day}</Id><Acct><Id><IBAN>{BENEFICIARY_IBAN}</IBAN></Id><Ccy>USD</Ccy></Acct>"
            f"{_bal('OPBD', opening, day)}{_bal('CLBD', balance, day)}{''.join(entries)}</Stmt></BkToCstmrStmt>"
            "</Document>").encode()
        if notif:
            files[f"camt054-{day}.xml"] = (
                '<?xml version="1.0" encoding="UTF-8"?><Document xmlns="urn:iso:std:iso:20022:tech:xsd:camt.054.001.08">'
                f"<BkToCstmrDbtCdtNtfctn><GrpHdr><MsgId>NTF-{day}</MsgId><CreDtTm>{day}T23:30:00Z</CreDtTm></GrpHdr>"
                f"<Ntfctn><Id>NTF-{day}</Id><Acct><Id><IBAN>{BENEFICIARY_IBAN}</IBAN></Id><Ccy>USD</Ccy></Acct>"
                f"{''.join(notif)}</Ntfctn></BkToCstmrDbtCdtNtfctn></Document>").encode()
    return files, closing


def journal_rows(week: Week) -> list[dict[str, str]]:
    rows = []
    for pays in week.payments.values():
        for p in pays:
            for copy in range(p.bank):
                txn = f"{p.ref}-T{copy}"
                posted = p.at.strftime("%Y-%m-%dT%H:%M:%SZ")
                for side, acct, cp in (("D", CUSTOMERS, SETTLEMENT), ("C", SETTLEMENT, CUSTOMERS)):
                    rows.append({"t": txn, "p": posted, "a": acct, "cp": cp, "c": "EUR", "m": str(p.eur), "s": side,
                                 "r": p.ref})
    return rows


def chain_transfers(week: Week) -> list[tuple[datetime, Payment]]:
    """(block time, payment) of every chain leg, in time order (late legs at their late time)."""
    out = []
    for pays in week.payments.values():
        for p in pays:
            if p.chain is not None:
                out.append((p.chain_at or p.at, p))
    return sorted(out, key=lambda x: (x[0], x[1].ref))
