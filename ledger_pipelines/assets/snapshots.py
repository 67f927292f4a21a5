"""``<ledger>_snapshot``: one daily-partitioned asset per configured ledger, read from the source."""

from datetime import date

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetsDefinition,
    BackfillPolicy,
    DailyPartitionsDefinition,
    MaterializeResult,
    MetadataValue,
    asset,
)

from ..config import LedgerConfig
from ..resources import ExpectationsResource, WarehouseResource
from ..snapshots import snapshot_day
from ..validation import write_data_docs
from .audit import reports_dir


EXPECTATIONS_CHECK = "expectations"
TRIAL_BALANCE_CHECK = "trial_balance"
CONTROL_TOTALS_CHECK = "control_totals"
STATEMENT_BALANCE_CHECK = "statement_balance"


def build_snapshot_asset(lc: LedgerConfig, partitions: DailyPartitionsDefinition) -> AssetsDefinition:
    name = f"{lc.name}_snapshot"
    checks = [AssetCheckSpec(EXPECTATIONS_CHECK, asset=name, blocking=True,
                             description="Great Expectations suite ledger_snapshot on the staged day")]
    if lc.kind == "sql":
        checks.append(AssetCheckSpec(TRIAL_BALANCE_CHECK, asset=name, blocking=True,
                                     description="debits = credits per transaction and currency (exact)"))
    if lc.kind == "iso20022":
        checks.append(AssetCheckSpec(STATEMENT_BALANCE_CHECK, asset=name, blocking=True,
                                     description="opening + credits - debits = closing for every statement of the "
                                     "day (exact); options.balance_check: warn makes it a warning"))
    checks.append(AssetCheckSpec(CONTROL_TOTALS_CHECK, asset=name, blocking=True,
                                 description="totals per asset and direction equal the event log's for the day "
                                 "(exact): the bridge delivered everything"))

    @asset(
        check_specs=checks,
        name=name,
        group_name="snapshots",
        partitions_def=partitions,
        backfill_policy=BackfillPolicy.single_run(),
        kinds={lc.kind if lc.kind != "iso20022" else "xml", "sql"},
        tags={"ledger": lc.name, "ledger_kind": lc.kind},
        description=f"Daily snapshot of ledger {lc.name} ({lc.kind}) read from its source of truth; "
        f"a run replaces exactly its day(s) in ledger_snapshots.",
    )
    def _snapshot(context: AssetExecutionContext, warehouse: WarehouseResource,
                  expectations: ExpectationsResource) -> MaterializeResult:
        days = {}
        validator = expectations.validator()
        with warehouse.session() as wh:
            for key in context.partition_keys:  # one run can cover a whole backfill range
                stats = snapshot_day(lc, date.fromisoformat(key), wh, validator)
                days[key] = stats
                # Data Docs next to the day's report: <reports>/<day>/data_docs/<ledger>/
                docs = write_data_docs(stats["checks"], reports_dir() / key / "data_docs" / lc.name,
                                       f"{lc.name} {key}: expectation results")
                stats["data_docs"] = str(docs) if docs else None
                context.log.info(f"{lc.name} {key}: {stats['counts']['read']} records read = {stats['rows']} rows "
                                 f"+ {stats['rejected']} rejected, totals {stats['totals']}, "
                                 f"published {stats['published']}")
        rows = sum(s["rows"] for s in days.values())
        last = days[max(days)] if days else {}
        md = "| day | rows | totals |\n|---|---|---|\n" + "\n".join(
            f"| {d} | {s['rows']} | " + ", ".join(f"{a}: D {t['debit']} / C {t['credit']}" for a, t in s["totals"].items())
            + " |" for d, s in sorted(days.items()))
        check_results = [_check_result(spec.name, days) for spec in checks]
        return MaterializeResult(check_results=check_results, metadata={
            "published": MetadataValue.bool(all(s["published"] for s in days.values())),
            "control_totals": MetadataValue.json(
                {d: s["checks"][CONTROL_TOTALS_CHECK].failures[:1] for d, s in days.items()
                 if s["checks"][CONTROL_TOTALS_CHECK].failures}),
            "rows": MetadataValue.int(rows),
            "days": MetadataValue.int(len(days)),
            "totals": MetadataValue.json(last.get("totals", {})),
            "statuses": MetadataValue.json(last.get("statuses", {})),
            "first_position": MetadataValue.json(last.get("first_position")),
            "last_position": MetadataValue.json(last.get("last_position")),
            "rejected": MetadataValue.int(sum(s["rejected"] for s in days.values())),
            # records read = rows + rejected, checked for every day by snapshot_day
            "records_read": MetadataValue.int(sum(s["counts"]["read"] for s in days.values())),
            "counts": MetadataValue.json({d: s["counts"] for d, s in sorted(days.items())}),
            "summary": MetadataValue.md(md),
            **({"data_docs": MetadataValue.path(last["data_docs"])} if last.get("data_docs") else {}),
        })

    return _snapshot


def _check_result(check: str, days: dict) -> AssetCheckResult:
    """One result over the run's days: failing critical expectations block, warnings only warn."""
    failures = {d: s["checks"][check].failures for d, s in days.items() if s["checks"][check].failures}
    warnings = {d: s["checks"][check].warnings for d, s in days.items() if s["checks"][check].warnings}
    passed = not failures and not warnings
    md = {"days_checked": MetadataValue.int(len(days)),
          "days_failed": MetadataValue.json(sorted(failures)),
          "failures": MetadataValue.json({d: f[:5] for d, f in sorted(failures.items())}),
          "warnings": MetadataValue.json({d: w[:5] for d, w in sorted(warnings.items())})}
    first = next(iter(failures.values()), None) or next(iter(warnings.values()), None)
    if first:
        ids = next((v for k, v in first[0].items() if k.endswith("_ids")), [])
        md["offending_ids"] = MetadataValue.text(", ".join(map(str, ids[:20])) or "-")
    return AssetCheckResult(check_name=check, passed=passed,
                            severity=AssetCheckSeverity.ERROR if failures else AssetCheckSeverity.WARN, metadata=md)
