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
from ..connectors.kinds import STATEMENT_BALANCE as STATEMENT_BALANCE_CHECK
from ..connectors.kinds import TRIAL_BALANCE as TRIAL_BALANCE_CHECK
from ..connectors.kinds import connector_for
from ..resources import ExpectationsResource, WarehouseResource
from ..snapshots import snapshot_day
from ..validation import write_data_docs
from .audit import reports_dir


EXPECTATIONS_CHECK = "expectations"
CONTROL_TOTALS_CHECK = "control_totals"


def build_snapshot_asset(lc: LedgerConfig, partitions: DailyPartitionsDefinition) -> AssetsDefinition:
    name = f"{lc.name}_snapshot"
    checks = [AssetCheckSpec(EXPECTATIONS_CHECK, asset=name, blocking=True,
                             description="Great Expectations suite ledger_snapshot on the staged day")]
    kind_checks = connector_for(lc).checks
    if TRIAL_BALANCE_CHECK in kind_checks:
        checks.append(AssetCheckSpec(TRIAL_BALANCE_CHECK, asset=name, blocking=True,
                                     description="debits = credits per transaction and currency (exact)"))
    if STATEMENT_BALANCE_CHECK in kind_checks:
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
        # one run per day: a range run records one materialization and one check result for all
        # of its days, so one bad day would fail (and block) every day of the range
        backfill_policy=BackfillPolicy.multi_run(1),
        kinds={lc.kind if lc.kind != "iso20022" else "xml", "sql"},
        tags={"ledger": lc.name, "ledger_kind": lc.kind},
        description=f"Daily snapshot of ledger {lc.name} ({lc.kind}) read from its source of truth; "
        f"a run replaces exactly its day in ledger_snapshots.",
    )
    def _snapshot(context: AssetExecutionContext, warehouse: WarehouseResource,
                  expectations: ExpectationsResource) -> MaterializeResult:
        day = context.partition_key
        with warehouse.session() as wh:
            stats = snapshot_day(lc, date.fromisoformat(day), wh, expectations.validator())
        # Data Docs next to the day's report: <reports>/<day>/data_docs/<ledger>/
        docs = write_data_docs(stats["checks"], reports_dir() / day / "data_docs" / lc.name,
                               f"{lc.name} {day}: expectation results")
        context.log.info(f"{lc.name} {day}: {stats['counts']['read']} records read = {stats['rows']} rows "
                         f"+ {stats['rejected']} rejected, totals {stats['totals']}, published {stats['published']}")
        totals = ", ".join(f"{a}: D {t['debit']} / C {t['credit']}" for a, t in stats["totals"].items()) or "-"
        md = (f"**{day}** — {stats['rows']} rows, {stats['rejected']} rejected, "
              f"{'published' if stats['published'] else 'not published'}\n\ntotals: {totals}")
        ct = stats["checks"][CONTROL_TOTALS_CHECK].failures
        return MaterializeResult(check_results=[_check_result(spec.name, day, stats) for spec in checks], metadata={
            "day": MetadataValue.text(day),
            "published": MetadataValue.bool(stats["published"]),
            "control_totals": MetadataValue.json(ct[:1]),
            "rows": MetadataValue.int(stats["rows"]),
            "totals": MetadataValue.json(stats["totals"]),
            "statuses": MetadataValue.json(stats.get("statuses", {})),
            "first_position": MetadataValue.json(stats.get("first_position")),
            "last_position": MetadataValue.json(stats.get("last_position")),
            "rejected": MetadataValue.int(stats["rejected"]),
            # records read = rows + rejected, checked by snapshot_day
            "records_read": MetadataValue.int(stats["counts"]["read"]),
            "counts": MetadataValue.json(stats["counts"]),
            "summary": MetadataValue.md(md),
            **({"data_docs": MetadataValue.path(str(docs))} if docs else {}),
        })

    return _snapshot


def _check_result(check: str, day: str, stats: dict) -> AssetCheckResult:
    """The day's result: failing critical expectations block, warnings only warn."""
    failures, warnings = stats["checks"][check].failures, stats["checks"][check].warnings
    md = {"day": MetadataValue.text(day),
          "failures": MetadataValue.json(failures[:5]),
          "warnings": MetadataValue.json(warnings[:5])}
    first = failures or warnings
    if first:
        ids = next((v for k, v in first[0].items() if k.endswith("_ids")), [])
        md["offending_ids"] = MetadataValue.text(", ".join(map(str, ids[:20])) or "-")
    return AssetCheckResult(check_name=check, passed=not failures and not warnings,
                            severity=AssetCheckSeverity.ERROR if failures else AssetCheckSeverity.WARN, metadata=md)
