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
from ..resources import WarehouseResource
from ..stack import StackConfig


def reports_dir() -> Path:
    import os

    return Path(os.environ.get("LEDGER_REPORTS_DIR") or StackConfig.from_env().root / "reports")


def build_audit_assets(ledgers: list[LedgerConfig], pairs: list[dict], partitions: DailyPartitionsDefinition):
    pair_configs = pairs_from({"reconciliations": pairs})

    @asset(
        name="reconciliation",
        group_name="audit",
        partitions_def=partitions,
        backfill_policy=BackfillPolicy.single_run(),
        deps=[AssetKey("ledger_event_log"), *(AssetKey(f"{lc.name}_snapshot") for lc in ledgers)],
        kinds={"duckdb"},
        description="Each ledger's snapshot against the event log (did the bridge deliver everything, "
        "unchanged?), then every configured ledger pair by its rules; results replace the day.",
    )
    def reconciliation(context: AssetExecutionContext, warehouse: WarehouseResource) -> MaterializeResult:
        out = {}
        with warehouse.session() as wh:
            for key in context.partition_keys:
                out[key] = run_day(wh, ledgers, pair_configs, date.fromisoformat(key), reports_dir())
        last = out[max(out)]
        breaks = {name: r["breaks"] for name, r in last["reconciliations"].items()}
        md = "| reconciliation | matches | breaks | break types |\n|---|---|---|---|\n" + "\n".join(
            f"| {name} | {r['matches']} | {r['breaks']} | {r['break_type']} |"
            for name, r in sorted(last["reconciliations"].items()))
        return MaterializeResult(metadata={
            "days": MetadataValue.int(len(out)),
            "breaks": MetadataValue.json(breaks),
            "merkle_root": MetadataValue.text(last["merkle_root"]),
            "summary": MetadataValue.md(md),
            "reports": MetadataValue.path(str(reports_dir() / max(out))),
        })

    return [reconciliation]


def build_audit_report_asset(partitions: DailyPartitionsDefinition):
    @asset(
        name="audit_report",
        group_name="audit",
        partitions_def=partitions,
        backfill_policy=BackfillPolicy.single_run(),
        deps=[AssetKey("reconciliation")],
        kinds={"html"},
        description="The day's audit report: index.html (self-contained) over every reconciliation's report "
        "folder (matches.jsonl, breaks.jsonl, summary.json, report.html) and audit.json with the Merkle root.",
    )
    def audit_report(context: AssetExecutionContext) -> MaterializeResult:
        from ..anchor import enabled
        from ..audit import finish_report

        last = None
        for key in context.partition_keys:
            folder = reports_dir() / key
            audit = finish_report(folder, anchor=enabled())
            if audit.get("anchor"):
                context.log.info(f"{key}: root {audit['merkle_root'][:16]}… anchored in tx "
                                 f"{audit['anchor']['tx_hash']} (version {audit['anchor']['version']})")
            last = (key, audit, folder)
        key, audit, folder = last
        anchor = audit.get("anchor")
        recs = audit["reconciliations"]
        md = (f"**{key}** — Merkle root `{audit['merkle_root']}`"
              + (f", anchored in tx `{anchor['tx_hash']}` (v{anchor['version']})" if anchor else ", not anchored")
              + "\n\n") + "\n".join(
            f"- **{name}**: {r['matches']} matches, {r['breaks']} breaks {r['break_type'] or ''}"
            for name, r in sorted(recs.items()))
        return MaterializeResult(metadata={
            "summary": MetadataValue.md(md),
            "matches": MetadataValue.int(sum(r["matches"] for r in recs.values())),
            "breaks": MetadataValue.int(sum(r["breaks"] for r in recs.values())),
            "merkle_root": MetadataValue.text(audit["merkle_root"]),
            "report": MetadataValue.path(str(folder / "index.html")),
            **({"data_docs": MetadataValue.path(str(folder / "data_docs"))} if (folder / "data_docs").exists()
               else {}),
            "anchor_tx": MetadataValue.text(anchor["tx_hash"] if anchor else "not anchored (LEDGER_ANCHOR=off)"),
            **({"anchor": MetadataValue.json(anchor)} if anchor else {}),
        })

    return audit_report
