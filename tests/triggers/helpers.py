"""Source entries for the trigger tests."""

from __future__ import annotations

from ledger_pipelines.model import make_entry

DAY = "2026-11-18"


def source_entry(status="booked", amount="10.00", account="GL-D", direction="debit", ledger="core_banking",
                 position=None, **kw):
    return make_entry(ledger=ledger, ledger_kind="sql", source_ref=kw.pop("ref", "1"), account=account,
                      counterparty=None, asset="EUR", amount=amount, direction=direction,
                      booked_at=f"{DAY}T10:00:00Z", status=status, position=position or {},
                      correlation_id=kw.pop("corr", "E2E-1"), attributes=kw)
