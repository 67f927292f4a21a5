"""``reconciliation`` and ``audit_report``: daily, downstream of every ledger snapshot."""

from datetime import date
from pathlib import Path

from dagster import (
    AssetExecutionContext,
    AssetKey,
    BackfillPolicy,
    DailyPartitionsDefinition,
    MaterializeResult,
    MetadataValue,
    asset,
)

from ..audit import pairs_from, run_day
from ..config import LedgerConfig
from ..desk.policy import DeskSettings
from ..reconcile.output import kinds_text
from ..resources import WarehouseResource
from ..settings import StackConfig


def reports_dir() -> Path:
    import os

    return Path(os.environ.get("LEDGER_REPORTS_DIR") or StackConfig.from_env().root / "reports")


def desk_url(path: str) -> MetadataValue:
    """A clickable link to the breaks desk (``LEDGER_DESK_URL``, default the local desk on port 8600)."""
    from ..desk.policy import desk_base_url

    return MetadataValue.url(desk_base_url() + path)


# Reconciliation carries the breaks still open from the days before (open_breaks), so the days of a
# backfill must reconcile one after the other, in day order: the runs that reconcile or anchor share
# this pool (limit 1, run granularity: a run waits in the queue, first in first out, until the pool is
# free). Anchoring from one signer also needs one transaction at a time.
DAY_REPORT_POOL = "ledger_day_report"


def build_audit_assets(ledgers: list[LedgerConfig], pairs: list[dict], partitions: DailyPartitionsDefinition,
                       desk: DeskSettings | None = None):
    pair_configs = pairs_from({"reconciliations": pairs})

    @asset(
        name="reconciliation",
        group_name="audit",
        partitions_def=partitions,
        backfill_policy=BackfillPolicy.multi_run(1),
        pool=DAY_REPORT_POOL,
        deps=[AssetKey("ledger_event_log"), *(AssetKey(f"{lc.name}_snapshot") for lc in ledgers)],
        kinds={"duckdb"},
        description="Each ledger's snapshot against the event log (did the bridge deliver everything, "
        "unchanged?), then every configured ledger pair by its rules; results replace the day.",
    )
    def reconciliation(context: AssetExecutionContext, warehouse: WarehouseResource) -> MaterializeResult:
        day = context.partition_key
        with warehouse.session() as wh:
            audit = run_day(wh, ledgers, pair_configs, date.fromisoformat(day), reports_dir(), desk)
        recs = audit["reconciliations"]
        md = f"**{day}** — Merkle root `{audit['merkle_root']}`\n\n" + (
            "| reconciliation | matches | breaks | break types |\n|---|---|---|---|\n" + "\n".join(
                f"| {name} | {r['matches']} | {r['breaks']} | {kinds_text(r['break_type'])} |"
                for name, r in sorted(recs.items())))
        return MaterializeResult(metadata={
            "day": MetadataValue.text(day),
            "breaks": MetadataValue.json({name: r["breaks"] for name, r in recs.items()}),
            "merkle_root": MetadataValue.text(audit["merkle_root"]),
            "summary": MetadataValue.md(md),
            "reports": MetadataValue.path(str(reports_dir() / day)),
            "desk": desk_url(f"/breaks?day={day}&state=unresolved"),
            "desk_changes": MetadataValue.text(", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in audit["desk"].items())),
        })

    return [reconciliation]


def build_audit_report_asset(partitions: DailyPartitionsDefinition):
    @asset(
        name="audit_report",
        group_name="audit",
        partitions_def=partitions,
        backfill_policy=BackfillPolicy.multi_run(1),
        pool=DAY_REPORT_POOL,
        deps=[AssetKey("reconciliation")],
        kinds={"html"},
        description="The day's audit report: index.html (self-contained) over every reconciliation's report "
        "folder (matches.jsonl, breaks.jsonl, summary.json, report.html) and audit.json with the Merkle root.",
    )
    def audit_report(context: AssetExecutionContext) -> MaterializeResult:
        from ..anchor import enabled
        from ..audit import finish_report

        day = context.partition_key
        folder = reports_dir() / day
        audit = finish_report(folder, anchor=enabled())
        anchor = audit.get("anchor")
        if anchor:
            context.log.info(f"{day}: root {audit['merkle_root'][:16]}… anchored in tx {anchor['tx_hash']} "
                             f"(version {anchor['version']})")
        recs = audit["reconciliations"]
        md = (f"**{day}** — Merkle root `{audit['merkle_root']}`"
              + (f", anchored in tx `{anchor['tx_hash']}` (v{anchor['version']})" if anchor else ", not anchored")
              + "\n\n") + "\n".join(
            f"- **{name}**: {r['matches']} matches, {r['breaks']} breaks ({kinds_text(r['break_type'])})"
            for name, r in sorted(recs.items()))
        return MaterializeResult(metadata={
            "day": MetadataValue.text(day),
            "summary": MetadataValue.md(md),
            "matches": MetadataValue.int(sum(r["matches"] for r in recs.values())),
            "breaks": MetadataValue.int(sum(r["breaks"] for r in recs.values())),
            "merkle_root": MetadataValue.text(audit["merkle_root"]),
            "report": desk_url(f"/reports/{day}/index.html"),
            "desk": desk_url(f"/day/{day}"),
            **({"data_docs": MetadataValue.path(str(folder / "data_docs"))} if (folder / "data_docs").exists()
               else {}),
            "anchor_tx": MetadataValue.text(anchor["tx_hash"] if anchor else "not anchored (LEDGER_ANCHOR=off)"),
            **({"anchor": MetadataValue.json(anchor)} if anchor else {}),
        })

    return audit_report
