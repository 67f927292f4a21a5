"""``<ledger>_snapshot``: one daily-partitioned asset per configured ledger, read from the source."""

from datetime import date

from dagster import (
    AssetExecutionContext,
    AssetsDefinition,
    BackfillPolicy,
    DailyPartitionsDefinition,
    MaterializeResult,
    MetadataValue,
    asset,
)

from ..config import LedgerConfig
from ..resources import WarehouseResource
from ..snapshots import snapshot_day


def build_snapshot_asset(lc: LedgerConfig, partitions: DailyPartitionsDefinition) -> AssetsDefinition:
    @asset(
        name=f"{lc.name}_snapshot",
        group_name="snapshots",
        partitions_def=partitions,
        backfill_policy=BackfillPolicy.single_run(),
        kinds={lc.kind if lc.kind != "iso20022" else "xml", "sql"},
        tags={"ledger": lc.name, "ledger_kind": lc.kind},
        description=f"Daily snapshot of ledger {lc.name} ({lc.kind}) read from its source of truth; "
        f"a run replaces exactly its day(s) in ledger_snapshots.",
    )
    def _snapshot(context: AssetExecutionContext, warehouse: WarehouseResource) -> MaterializeResult:
        days = {}
        with warehouse.session() as wh:
            for key in context.partition_keys:  # one run can cover a whole backfill range
                stats = snapshot_day(lc, date.fromisoformat(key), wh)
                days[key] = stats
                context.log.info(f"{lc.name} {key}: {stats['rows']} rows, totals {stats['totals']}, "
                                 f"{stats['rejected']} rejected")
        rows = sum(s["rows"] for s in days.values())
        last = days[max(days)] if days else {}
        md = "| day | rows | totals |\n|---|---|---|\n" + "\n".join(
            f"| {d} | {s['rows']} | " + ", ".join(f"{a}: D {t['debit']} / C {t['credit']}" for a, t in s["totals"].items())
            + " |" for d, s in sorted(days.items()))
        return MaterializeResult(metadata={
            "rows": MetadataValue.int(rows),
            "days": MetadataValue.int(len(days)),
            "totals": MetadataValue.json(last.get("totals", {})),
            "statuses": MetadataValue.json(last.get("statuses", {})),
            "first_position": MetadataValue.json(last.get("first_position")),
            "last_position": MetadataValue.json(last.get("last_position")),
            "rejected": MetadataValue.int(sum(s["rejected"] for s in days.values())),
            "summary": MetadataValue.md(md),
        })

    return _snapshot
