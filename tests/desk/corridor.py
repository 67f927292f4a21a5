"""A small pair of ledgers for the desk's tests: three breaks on the first day, nothing new after it."""

from __future__ import annotations

from datetime import date, datetime, timezone
from pathlib import Path

from ledger_pipelines.audit import PairConfig, run_day
from ledger_pipelines.config import LedgerConfig
from ledger_pipelines.desk.store import Desk
from ledger_pipelines.model import make_entry
from ledger_pipelines.reconcile import Rules
from ledger_pipelines.warehouse import Warehouse
from ledger_pipelines.warehouse.state import replace_snapshot

D1, D2, D3, D4 = date(2026, 11, 20), date(2026, 11, 21), date(2026, 11, 22), date(2026, 11, 23)
PAIR = PairConfig("bank_vs_chain", "bank", "chain", Rules.from_dict({"time_window": "3d"}))
LEDGERS = [LedgerConfig(name="bank", kind="sql"), LedgerConfig(name="chain", kind="sql")]
PASSWORD = "correct horse battery staple"


def leg(ledger, ref, corr, amount, direction, hour=12, counterparty=None, day=D1):
    return make_entry(ledger=ledger, ledger_kind="sql", source_ref=ref, correlation_id=corr, account="A",
                      counterparty=counterparty, asset="EUR", amount=amount, direction=direction,
                      booked_at=datetime(day.year, day.month, day.day, hour, tzinfo=timezone.utc), status="booked")


class Corridor:
    """bank:1 (P1, 10.00) has its counterpart on chain under another key (chain:9, Q1, 9.95 after a fee): a missing right and a
    missing left break that a person matches; bank:2 (P2, 50.00) never settles: a break to accept."""

    def __init__(self, tmp: Path, url: str | None = None) -> None:
        self.wh = Warehouse(url or f"sqlite:///{tmp / 'w.db'}")
        self.wh.create_schema()
        self.reports = tmp / "reports"
        replace_snapshot(self.wh, "bank", str(D1), [leg("bank", "1", "P1", "10.00", "debit", counterparty="ACME GmbH"),
                                                   leg("bank", "2", "P2", "50.00", "debit", hour=9)])
        replace_snapshot(self.wh, "chain", str(D1), [leg("chain", "9", "Q1", "9.95", "credit", hour=13,
                                                         counterparty="ACME GMBH")])
        self.desk = Desk(self.wh)

    def run(self, day: date) -> dict:
        return run_day(self.wh, LEDGERS, [PAIR], day, self.reports)

    def users(self) -> None:
        for name, role in (("olga", "operator"), ("anna", "approver"), ("bert", "approver"), ("aud", "auditor")):
            self.desk.add_user(name, role, PASSWORD)

    def break_of(self, entry_id: str) -> str:
        rows, _ = self.desk.list_breaks({"reconciliation": PAIR.name})
        return next(r["break_id"] for r in rows
                    if entry_id in self.desk.detail(PAIR.name, r["break_id"])["record_obj"]["left_entry_ids"]
                    + self.desk.detail(PAIR.name, r["break_id"])["record_obj"]["right_entry_ids"])
