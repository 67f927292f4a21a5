"""Daily ledger snapshots read directly from each source of truth (not from Kafka)."""

from __future__ import annotations

from dataclasses import replace
from datetime import date
from decimal import Decimal
from typing import Any

from .config import LedgerConfig
from .connectors.kinds import STATEMENT_BALANCE, TRIAL_BALANCE, connector_for
from .model import CanonicalEntry
from .money import exact, total
from .validation import record_counts
from .warehouse import Warehouse
from .warehouse.state import replace_snapshot


def event_log_totals(wh: Warehouse, ledger: str, day: date) -> dict[tuple[str, str], Decimal]:
    """Exact totals per (asset, direction) of what :func:`event_log_day` returns, orphaned legs left
    out, read without building the entries."""
    from .warehouse.state import _latest_versions, entry_select

    amounts: dict[tuple[str, str], list[str]] = {}
    for _eid, asset, direction, amount, status in _latest_versions(
            wh, ledger, day, entry_select(wh, ("entry_id", "asset", "direction", "amount", "status"))):
        if status != "orphaned":
            key = (asset, direction)
            group = amounts.get(key)
            if group is None:
                group = amounts[key] = []
            group.append(amount)
    return _summed(amounts)


def entry_totals(entries: list[CanonicalEntry]) -> dict[tuple[str, str], Decimal]:
    """Exact totals per (asset, direction), orphaned chain legs left out."""
    amounts: dict[tuple[str, str], list[str]] = {}
    for e in entries:
        if e.status != "orphaned":
            key = (e.asset, e.direction)
            group = amounts.get(key)
            if group is None:
                group = amounts[key] = []
            group.append(e.amount)
    return _summed(amounts)


def _summed(amounts: dict[tuple[str, str], list[str]]) -> dict[tuple[str, str], Decimal]:
    return {k: total(v) for k, v in amounts.items()}


def snapshot_day(lc: LedgerConfig, day: date, warehouse: Warehouse, validator=None) -> dict[str, Any]:
    """Read the day, validate it (when a validator is given), and publish it only if it passed.

    Stage, check, then publish: a day that fails a critical expectation leaves the previously
    published snapshot of that day untouched.
    """
    from .warehouse.state import entry_stats

    connector = connector_for(lc)
    entries, errors, balances = connector.read_day(day, warehouse)
    checks: dict[str, Any] = {}
    if validator is not None:
        from .validation import entries_frame

        assets = list(lc.assets) or sorted({e.asset for e in entries})
        checks["expectations"] = validator.run("ledger_snapshot", entries_frame(entries),
                                               {"days": [day.isoformat()], "assets": assets})
        if TRIAL_BALANCE in connector.checks:
            checks[TRIAL_BALANCE] = validator.run("control_totals", _trial_balance_frame(entries))
        if STATEMENT_BALANCE in connector.checks:
            result = validator.run("control_totals", _statement_balance_frame(balances))
            if lc.options.get("balance_check", "error") == "warn":  # banks whose files are known not to balance
                result = replace(result, success=True, warnings=result.warnings + result.failures, failures=[])
            checks[STATEMENT_BALANCE] = result
        checks["control_totals"] = validator.run(
            "control_totals", _control_totals_frame(entry_totals(entries), event_log_totals(warehouse, lc.name, day)))
    # the day is published when its own data is sound; whether the bridge delivered it all is the
    # control totals' question, which blocks reconciliation and report but not the snapshot
    passed = all(c.success for name, c in checks.items() if name != "control_totals")
    if passed:
        stats = replace_snapshot(warehouse, lc.name, day.isoformat(), entries)
    else:
        stats = entry_stats(entries)
    stats.update(published=passed, checks=checks, rejected=len(errors), balances=balances,
                 errors=[{"source": s, "error": r} for s, r, *_ in errors[:50]])
    # records read for the day (as the reader split them) against the rows the snapshot holds
    stats["counts"] = record_counts(f"snapshot {lc.name} {day.isoformat()}", len(entries) + len(errors),
                                    stats["rows"], len(errors))
    return stats


def _control_totals_frame(snapshot: dict[tuple[str, str], Decimal], delivered: dict[tuple[str, str], Decimal]):
    """Snapshot against event log totals per asset and direction (see :func:`entry_totals`), exact."""
    import pandas as pd

    a, b = snapshot, delivered
    keys = sorted(set(a) | set(b))
    with exact():
        diffs = [b.get(k, Decimal(0)) - a.get(k, Decimal(0)) for k in keys]
    return pd.DataFrame({"entry_id": [f"{asset}:{direction}" for asset, direction in keys],
                         "difference": ["0" if d == 0 else f"{d:f}" for d in diffs]}, dtype=object)


def _statement_balance_frame(balances: list[dict[str, Any]]):
    """One row per statement with balances: closing minus (opening + movement), exact."""
    import pandas as pd

    checked = [b for b in balances if b.get("checked")]
    return pd.DataFrame({"entry_id": [f"{b['file']}:{b['statement_id']}:{b['currency']}" for b in checked],
                         "difference": [b["difference"] if Decimal(b["difference"]) != 0 else "0" for b in checked]},
                        dtype=object)


def _trial_balance_frame(entries: list[CanonicalEntry]):
    """Debits minus credits per transaction and currency, exact, as rows for the control_totals suite."""
    import pandas as pd
    from decimal import Decimal

    sums: dict[tuple[str, str], Decimal] = {}
    with exact():
        for e in entries:
            key = (str(e.attributes.get("transaction_id") or e.source_ref), e.asset)
            sums[key] = sums.get(key, Decimal(0)) + (Decimal(e.amount) if e.direction == "debit" else -Decimal(e.amount))
    return pd.DataFrame({"entry_id": [f"{t}:{c}" for t, c in sums],
                         "difference": ["0" if v == 0 else f"{v:f}" for v in sums.values()]}, dtype=object)
