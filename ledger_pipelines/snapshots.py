"""Daily ledger snapshots read directly from each source of truth (not from Kafka)."""

from __future__ import annotations

from dataclasses import replace
from datetime import date
from decimal import Decimal
from typing import Any

from .config import LedgerConfig
from .model import CanonicalEntry
from .money import exact
from .publish import source_url
from .validation import record_counts
from .warehouse import Warehouse
from .warehouse.state import replace_snapshot


def read_day(lc: LedgerConfig, day: date, warehouse: Warehouse) -> tuple[list[CanonicalEntry], list[tuple[str, str]]]:
    if lc.kind == "sql" or (lc.kind == "cdc" and lc.connection_env):
        from .connectors.sql import SqlLedger

        ledger = SqlLedger(source_url(lc), lc.mapping, lc.name)
        try:
            return ledger.read_day(day)
        finally:
            ledger.dispose()
    if lc.kind == "iso20022":
        entries, errors, _ = read_statements_day(lc, day)
        return entries, errors
    if lc.kind == "evm":
        from .connectors.evm_reader import EvmReader

        return EvmReader(lc, source_url(lc)).read_day(day)
    # a CDC ledger without a source connection: what the stream delivered for that day
    return event_log_day(warehouse, lc.name, day), []


def read_statements_day(lc: LedgerConfig, day: date):
    """The day's statement entries, its bad records, and the balance equation of every statement that
    booked entries on the day (opening + credits - debits = closing), read from the inbox's index:
    each file is parsed once per content, and each of its records belongs to one day (see
    :mod:`ledger_pipelines.statement_inbox`)."""
    from .statement_inbox import StatementInbox

    return StatementInbox(lc).read_day(day)


def event_log_day(wh: Warehouse, ledger: str, day: date) -> list[CanonicalEntry]:
    """The latest version (the last by partition and offset) of every entry of ``ledger`` the event
    log holds for ``day``, ordered by entry_id."""
    from .warehouse.state import ENTRY_COLUMNS, entry_select, stored_entry

    return [stored_entry(ledger, r) for r in _latest_versions(wh, ledger, day, entry_select(wh, ENTRY_COLUMNS))]


def _latest_versions(wh: Warehouse, ledger: str, day: date, select: str):
    """The event log's rows of (ledger, day), the latest version of each entry (its first column is
    entry_id; the versions of an entry come together, in partition and offset order)."""
    from .warehouse.state import stored_rows

    sql = (f"SELECT {select} FROM ledger_event_log WHERE ledger = ? AND booked_date = ? "
           "ORDER BY entry_id, kafka_partition, kafka_offset")
    last = None
    for r in stored_rows(wh, sql, (ledger, day.isoformat())):
        if last is not None and r[0] != last[0]:
            yield last
        last = r
    if last is not None:
        yield last


def event_log_totals(wh: Warehouse, ledger: str, day: date) -> dict[tuple[str, str], Decimal]:
    """Exact totals per (asset, direction) of what :func:`event_log_day` returns, orphaned legs left
    out, read without building the entries."""
    from .warehouse.state import entry_select

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
    with exact():
        return {k: sum(map(Decimal, v), Decimal(0)) for k, v in amounts.items()}


def snapshot_day(lc: LedgerConfig, day: date, warehouse: Warehouse, validator=None) -> dict[str, Any]:
    """Read the day, validate it (when a validator is given), and publish it only if it passed.

    Stage, check, then publish: a day that fails a critical expectation leaves the previously
    published snapshot of that day untouched.
    """
    from .warehouse.state import entry_stats

    balances: list[dict[str, Any]] = []
    if lc.kind == "iso20022":
        entries, errors, balances = read_statements_day(lc, day)
    else:
        entries, errors = read_day(lc, day, warehouse)
    checks: dict[str, Any] = {}
    if validator is not None:
        from .validation import entries_frame

        assets = list(lc.assets) or sorted({e.asset for e in entries})
        checks["expectations"] = validator.run("ledger_snapshot", entries_frame(entries),
                                               {"days": [day.isoformat()], "assets": assets})
        if lc.kind == "sql":
            checks["trial_balance"] = validator.run("control_totals", _trial_balance_frame(entries))
        if lc.kind == "iso20022":
            result = validator.run("control_totals", _statement_balance_frame(balances))
            if lc.options.get("balance_check", "error") == "warn":  # banks whose files are known not to balance
                result = replace(result, success=True, warnings=result.warnings + result.failures, failures=[])
            checks["statement_balance"] = result
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
