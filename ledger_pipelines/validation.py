"""Great Expectations suites (expectations/*.json) run on frames the core builds.

Great Expectations is imported here, lazily, inside :class:`Validator` (it costs ~2 s and ~220 MB
a process). Money is never summed by Great Expectations (it sums decimals as floats): exact sums
(the trial balance) are computed with ``Decimal`` by the caller and the ``control_totals`` suite
checks the differences.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .settings import REPO_ROOT

SUITES = REPO_ROOT / "expectations"


class CountMismatch(RuntimeError):
    """Records read differ from the entries and rejections they became: a record was lost or
    counted twice on the way (always a bug, never bad input)."""


def record_counts(stage: str, read: int, entries: int, rejected: int, **other: int) -> dict[str, int]:
    """The counts of a run, checked: ``read = entries + rejected (+ other)``, where ``other`` names
    the remaining outcomes of a stage (duplicates, tombstones, ...). Returns them for the run's
    result and metadata; raises :class:`CountMismatch` when they do not add up."""
    counts = {"read": read, "entries": entries, "rejected": rejected, **other}
    total = entries + rejected + sum(other.values())
    if read != total:
        terms = " + ".join(f"{n} {k}" for k, n in counts.items() if k != "read")
        raise CountMismatch(f"{stage}: {read} records read, but {terms} = {total}: "
                            f"{'a record is missing' if read > total else 'a record was counted twice'}")
    return counts


@dataclass
class SuiteResult:
    suite: str
    success: bool  # no critical expectation failed
    warnings: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)
    evaluated: int = 0
    raw: Any = field(default=None, repr=False, compare=False)  # GE's validation result, for Data Docs

    def metadata(self) -> dict[str, Any]:
        return {"suite": self.suite, "evaluated_expectations": self.evaluated,
                "failed_critical": len(self.failures), "failed_warning": len(self.warnings),
                "failures": self.failures[:20], "warnings": self.warnings[:20]}


class Validator:
    """An ephemeral Great Expectations context with the suites of ``expectations/``."""

    def __init__(self, suites_dir: Path = SUITES):
        os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")  # no network calls
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        from great_expectations.execution_engine import pandas_execution_engine

        # GE fingerprints every in-memory frame under HASH_THRESHOLD bytes (counted without the
        # strings) with an md5 over pandas.util.hash_pandas_object: a batch marker nothing here reads,
        # and half of the validation time of a million rows. Frames are never fingerprinted.
        if hasattr(pandas_execution_engine, "HASH_THRESHOLD"):
            pandas_execution_engine.HASH_THRESHOLD = 0
        self._gx = gx
        self.ctx = gx.get_context(mode="ephemeral")
        self.ctx.variables.progress_bars = ProgressBarsConfig(globally=False)  # no tqdm bars in run logs
        self._asset = self.ctx.data_sources.add_pandas("frames").add_dataframe_asset(name="frame")
        self._batch = self._asset.add_batch_definition_whole_dataframe("whole")
        self._definitions: dict[str, Any] = {}
        self.suites_dir = suites_dir

    def _definition(self, name: str):
        if name not in self._definitions:
            doc = json.loads((self.suites_dir / f"{name}.json").read_text())
            suite = self.ctx.suites.add(self._gx.ExpectationSuite(**doc))
            self._definitions[name] = self.ctx.validation_definitions.add(
                self._gx.ValidationDefinition(name=f"{name}_validation", data=self._batch, suite=suite))
        return self._definitions[name]

    def run(self, suite: str, frame, parameters: dict[str, Any] | None = None, id_column: str = "entry_id") -> SuiteResult:
        # SUMMARY names up to 20 offending rows an expectation, all the metadata shows; COMPLETE
        # would collect every index and costs a third more on a million rows
        result_format: dict[str, Any] = {"result_format": "SUMMARY"}
        if id_column in frame.columns:
            result_format["unexpected_index_column_names"] = [id_column]
        res = self._definition(suite).run(batch_parameters={"dataframe": frame},
                                          expectation_parameters=parameters or {}, result_format=result_format)
        out = SuiteResult(suite=suite, success=True, evaluated=len(res.results), raw=res)
        for r in res.results:
            if r.success:
                continue
            cfg = r.expectation_config
            listed = r.result.get("unexpected_index_list") or r.result.get("partial_unexpected_index_list") or []
            ids = [x.get(id_column) if isinstance(x, dict) else x for x in listed]
            item = {"expectation": cfg.type, "column": cfg.kwargs.get("column"),
                    "unexpected_count": r.result.get("unexpected_count"),
                    "unexpected_values": [str(v) for v in (r.result.get("partial_unexpected_list") or [])[:10]],
                    id_column + "s": [str(i) for i in ids[:50]]}
            if str(cfg.severity).lower().endswith("warning"):
                out.warnings.append(item)
            else:
                out.failures.append(item)
                out.success = False
        return out


def write_data_docs(results: dict[str, SuiteResult], folder: Path, title: str) -> Path | None:
    """Great Expectations Data Docs pages (its own renderers) for the given results, plus an index."""
    from great_expectations.render.renderer import ValidationResultsPageRenderer
    from great_expectations.render.view import DefaultJinjaPageView

    pages, texts = [], []
    for name, result in sorted(results.items()):
        if result.raw is None:
            continue
        doc = ValidationResultsPageRenderer().render(result.raw)
        texts.append((f"{name}.html", offline_page(DefaultJinjaPageView().render(doc))))
        pages.append((name, f"{name}.html", result.success, len(result.failures), len(result.warnings)))
    if not pages:
        return None
    # made only once every page rendered: a report holds no empty folder (verify refuses one)
    folder.mkdir(parents=True, exist_ok=True)
    for file_name, text in texts:
        (folder / file_name).write_text(text)
    rows = "".join(f"<li><a href='{f}'>{n}</a>: {'passed' if ok else 'FAILED'} ({nf} failed, {nw} warnings)</li>"
                   for n, f, ok, nf, nw in pages)
    index = folder / "index.html"
    index.write_text(f"<!doctype html><meta charset='utf-8'><title>{title}</title>{DOCS_STYLE}"
                     f"<div class='container-fluid'><h1>{title}</h1><ul>{rows}</ul></div>")
    return index


# Great Expectations' pages load Bootstrap, jQuery, Vega and Font Awesome from CDNs, link a favicon and a site
# index that a day report does not hold, and end with a newsletter link. A report is read offline and years
# later: the pages keep their content (tables, badges, the failed values) under this inline stylesheet.
DOCS_STYLE = """<style>
body{font-family:system-ui,sans-serif;margin:0;color:#212529;background:#fff;font-size:14px;line-height:1.4}
.container-fluid{padding:16px 24px}.row{display:flex;flex-wrap:wrap}.col-12{width:100%}
.col-md-10,.col-lg-10{flex:1 1 0;min-width:0}.col-lg-2,.col-md-2{flex:0 0 220px}.col-6{width:50%}
.navbar{display:flex;align-items:center;padding:6px 16px;background:#17324d;color:#fff}
.navbar a,.navbar-brand{color:#fff;text-decoration:none}.bg-light{background:#f4f6f8}
.ge-navigation-sidebar-container{padding:8px;border-radius:4px}.nav{list-style:none;padding:0;margin:0}
.nav-link{display:block;padding:3px 6px;color:#17324d}.breadcrumb{display:flex;gap:8px;list-style:none;padding:0}
.card,.ge-section{border:1px solid #dee2e6;border-radius:4px;margin:8px 0;padding:8px;background:#fff}
.card-header{background:#eef;margin:-8px -8px 8px;padding:6px 8px;font-weight:600}
.alert{padding:6px 10px;border-radius:4px;background:#eef0f3;margin:6px 0}
.table{border-collapse:collapse;width:100%;margin:6px 0}.table td,.table th{border:1px solid #dee2e6;padding:4px 8px;
text-align:left;vertical-align:top}.table th{background:#eef}.table-sm td,.table-sm th{padding:2px 6px}
.badge{display:inline-block;padding:1px 6px;border-radius:8px;font-size:12px;background:#6c757d;color:#fff}
.badge-secondary{background:#6c757d}.text-success{color:#198754}.text-danger{color:#dc3545}
.fas.fa-check-circle::before{content:"\\2714\\FE0E "}.fas.fa-times::before{content:"\\2716\\FE0E "}
.d-none{display:none}.d-md-inline-flex{display:inline-flex!important}.breadcrumb a{color:#fff}
.breadcrumb{background:none!important}code,pre{font-size:12px}footer{display:none}
</style>"""


def offline_page(html: str) -> str:
    """A Data Docs page that needs no network and links only to files a day report holds: external stylesheets,
    scripts and the favicon removed, the inline stylesheet added, links to the GX site's index and suite pages
    pointed at this folder's index, and the external newsletter link dropped."""
    import re

    html = re.sub(r"<link\b[^>]*>", "", html)
    html = re.sub(r"<script\b[^>]*\bsrc=\"https?://[^\"]*\"[^>]*>\s*</script>", "", html)
    html = re.sub(r"<footer>.*?</footer>", "", html, flags=re.S)
    html = re.sub(r'href="(?:\.\./)+(?:index\.html|expectations/[^"]*)"', 'href="index.html"', html)
    html = re.sub(r'<img\b[^>]*\bsrc="(?!data:)[^"]*"[^>]*>', "", html)
    html = re.sub(r"url\(\s*['\"]?https?://[^)]*\)", "none", html)
    return html.replace("</head>", DOCS_STYLE + "</head>", 1)


def snapshot_frame(rows: list[dict[str, Any]]):
    """The frame a snapshot suite sees: text columns, ``booked_date`` derived from ``booked_at``."""
    cols = ["entry_id", "account", "asset", "amount", "direction", "status", "booked_at"]
    data = {c: [str(r[c]) if r[c] is not None else None for r in rows] for c in cols}
    data["booked_date"] = [str(r["booked_at"])[:10] for r in rows]
    return text_frame(data)


def entries_frame(entries: list):
    """:func:`snapshot_frame` of canonical entries, built a column at a time from their fields."""
    from operator import attrgetter

    cols = ["entry_id", "account", "asset", "amount", "direction", "status", "booked_at"]
    data = {c: list(map(attrgetter(c), entries)) for c in cols}
    data["booked_date"] = [b[:10] for b in data["booked_at"]]
    return text_frame(data)


def text_frame(data: dict[str, list]):
    """A frame of Arrow-backed strings: the regex and set expectations run in Arrow's C++ kernels
    rather than a Python loop over objects (a third of the validation time of a million rows)."""
    import pandas as pd
    import pyarrow as pa

    return pd.DataFrame({c: pd.arrays.ArrowStringArray(pa.array(v, type=pa.string())) for c, v in data.items()})


@dataclass
class PublishResult:
    """``read`` records from the source became ``published`` entries (acknowledged by Kafka) and
    ``rejected`` rejections (acknowledged by the DLQ); ``counts`` is that identity, checked."""

    ledger: str
    published: int = 0
    rejected: int = 0
    read: int = 0
    files: list[str] = field(default_factory=list)
    details: dict = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def check(self, **other: int) -> dict[str, int]:
        self.counts = record_counts(f"publish {self.ledger}", self.read, self.published, self.rejected, **other)
        return self.counts
