"""Writes a reconciliation to a folder (ARCHITECTURE section 4): matches.jsonl, breaks.jsonl,
summary.json, report.html (self-contained, inline SVG charts)."""

from __future__ import annotations

import html
import os
import shutil
import tempfile
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any, Iterator

from ..commitment import canonical, pretty, records_root
from ..model import CanonicalEntry
from .engine import Reconciliation
from .rules import Rules


def merkle_root(records: list[dict[str, Any]], day: str | None = None, name: str | None = None) -> str:
    """The root over a reconciliation's records (match records carry ``match_id``, breaks ``break_id``)."""
    return records_root(day, name, [canonical(r) for r in records if "match_id" in r],
                        [canonical(r) for r in records if "match_id" not in r])


def totals(entries: list[CanonicalEntry]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, Decimal]] = {}
    for e in entries:
        t = out.setdefault(e.asset, {"debit": Decimal(0), "credit": Decimal(0)})
        t[e.direction] += Decimal(e.amount)
    return {a: {k: str(v) for k, v in t.items()} for a, t in sorted(out.items())}


def summary(result: Reconciliation, left: list[CanonicalEntry], right: list[CanonicalEntry],
            rules: Rules, root: str) -> dict[str, Any]:
    counts = result.counts()
    return {
        "input_rows": {"left": result.left_count, "right": result.right_count},
        "match_type": counts["match_type"], "break_type": counts["break_type"],
        "matches": len(result.matches), "breaks": len(result.breaks),
        "totals": {"left": totals(left), "right": totals(right)},
        "rules": rules.describe(),
        "merkle_root": root,
    }


def _bars(title: str, data: dict[str, int]) -> str:
    if not data:
        return f"<h3>{html.escape(title)}</h3><p>none</p>"
    peak = max(data.values()) or 1
    rows = []
    for i, (name, n) in enumerate(sorted(data.items())):
        w = int(360 * n / peak)
        y = i * 26
        rows.append(f'<text x="0" y="{y + 16}" font-size="13">{html.escape(name)}</text>'
                    f'<rect x="150" y="{y + 4}" width="{w}" height="16" fill="#4f46e5"/>'
                    f'<text x="{156 + w}" y="{y + 16}" font-size="12">{n}</text>')
    return (f"<h3>{html.escape(title)}</h3><svg width='560' height='{26 * len(data) + 6}' "
            f"xmlns='http://www.w3.org/2000/svg'>{''.join(rows)}</svg>")


def render_html(s: dict[str, Any], result: Reconciliation, title: str = "Reconciliation") -> str:
    rows = "".join(
        f"<tr><td>{html.escape(b['break_type'])}</td><td>{html.escape(str(b['correlation_id'] or ''))}</td>"
        f"<td>{html.escape(str(b['asset']))}</td><td>{b['left_amount'] or ''}</td><td>{b['right_amount'] or ''}</td>"
        f"<td>{b['difference'] or ''}</td><td>{html.escape(b['reason'])}</td></tr>"
        for b in result.breaks[:2000])
    totals_rows = "".join(
        f"<tr><td>{side}</td><td>{html.escape(a)}</td><td>{t['debit']}</td><td>{t['credit']}</td></tr>"
        for side in ("left", "right") for a, t in s["totals"][side].items())
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em;color:#111}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 8px;font-size:13px}}th{{background:#eef}}</style></head><body>
<h1>{html.escape(title)}</h1>
<p>Left {s['input_rows']['left']} entries, right {s['input_rows']['right']} entries:
{s['matches']} matches, {s['breaks']} breaks. Merkle root <code>{s['merkle_root']}</code>.</p>
{_bars("Matches by type", s["match_type"])}{_bars("Breaks by type", s["break_type"])}
<h3>Totals per asset and side</h3><table><tr><th>side</th><th>asset</th><th>debit</th><th>credit</th></tr>
{totals_rows}</table>
<h3>Breaks{' (first 2000)' if len(result.breaks) > 2000 else ''}</h3>
<table><tr><th>type</th><th>correlation</th><th>asset</th><th>left</th><th>right</th><th>difference</th>
<th>reason</th></tr>{rows}</table></body></html>"""


def replace_file(path: Path, data: bytes) -> None:
    """Writes ``path`` whole or not at all, through a fresh temporary file beside it (never a fixed name
    that could be planted as a symlink)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


@contextmanager
def replacing(target: Path) -> Iterator[Path]:
    """A fresh sibling folder that replaces ``target`` whole when the block succeeds.

    Nothing of a previous result survives in the new one, nothing planted in the old one (a symlink
    named like a temporary file) is ever opened, and a failure removes the new folder and leaves the
    previous result as it was. The swap is two renames: a crash between them leaves the previous
    result whole under ``.<name>.old-*`` beside the target."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fresh = Path(tempfile.mkdtemp(prefix=f".{target.name}.new-", dir=target.parent))
    try:
        yield fresh
        fresh.chmod(0o755)
        old = None
        if target.exists() or target.is_symlink():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.rename(target, old / target.name)
        os.rename(fresh, target)
        if old is not None:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(fresh, ignore_errors=True)
        raise


def write_records(out_dir: Path, result: Reconciliation, left: list[CanonicalEntry], right: list[CanonicalEntry],
                  rules: Rules, day: str | None = None, name: str | None = None
                  ) -> tuple[dict[str, Any], list[bytes], list[bytes]]:
    """Writes a reconciliation into ``out_dir`` (a folder of its own, made by the caller);
    returns (summary, canonical match lines, canonical break lines)."""
    result.matches.sort(key=lambda m: m["match_id"])  # the order verify requires (and the engine's own)
    result.breaks.sort(key=lambda b: b["break_id"])
    match_lines = [canonical(m) for m in result.matches]
    break_lines = [canonical(b) for b in result.breaks]
    with open(out_dir / "matches.jsonl", "xb") as f:
        f.writelines(line + b"\n" for line in match_lines)
    with open(out_dir / "breaks.jsonl", "xb") as f:
        f.writelines(line + b"\n" for line in break_lines)
    s = summary(result, left, right, rules, records_root(day, name, match_lines, break_lines))
    with open(out_dir / "summary.json", "xb") as f:
        f.write(pretty(s))
    with open(out_dir / "report.html", "x", encoding="utf-8") as f:
        f.write(render_html(s, result))
    return s, match_lines, break_lines


def write(out_dir: Path, result: Reconciliation, left: list[CanonicalEntry], right: list[CanonicalEntry],
          rules: Rules) -> dict[str, Any]:
    """``reconcile --out DIR``: the four files of ARCHITECTURE section 4, replacing DIR whole."""
    with replacing(out_dir) as fresh:
        s, _, _ = write_records(fresh, result, left, right, rules)
    return s


def _anchor_line(anchor: dict[str, Any] | None) -> str:
    if not anchor:
        return "<p><b>Not anchored on chain.</b></p>"
    return (f"<p>Anchored on chain {anchor['chain_id']} by contract <code>{html.escape(anchor['contract'])}</code> in tx "
            f"<code>{html.escape(anchor['tx_hash'])}</code> (block {anchor['block_number']}, version {anchor['version']}). "
            "Check it with <code>ledger-pipelines verify --report DIR --rpc URL</code>.</p>")


def kinds_text(counts: dict[str, int]) -> str:
    """``{"amount_mismatch": 1, "missing_left": 4}`` as people read it: ``amount mismatch: 1, missing left: 4``."""
    return ", ".join(f"{kind.replace('_', ' ')}: {n}" for kind, n in sorted(counts.items())) or "none"


def render_index(audit: dict[str, Any]) -> str:
    """The day's index page over every reconciliation (self-contained), rendered from audit.json alone
    (``verify`` renders it again and compares)."""
    recs = audit["reconciliations"]
    data_docs = sorted(p for p in audit.get("files", {}) if p.startswith("data_docs/") and p.count("/") == 2
                       and p.endswith("/index.html"))
    rows = "".join(
        f"<tr><td><a href='{html.escape(name)}/report.html'>{html.escape(name)}</a></td><td>{r['matches']}</td>"
        f"<td>{r['breaks']}</td><td>{html.escape(kinds_text(r['break_type']))}</td></tr>"
        for name, r in sorted(recs.items()))
    breaks = {name: r["breaks"] for name, r in recs.items()}
    by_type: dict[str, int] = {}
    for r in recs.values():
        for kind, n in r["break_type"].items():
            by_type[kind] = by_type.get(kind, 0) + n
    amount_rows = "".join(
        f"<tr><td>{html.escape(ledger)}</td><td>{html.escape(asset)}</td><td>{total}</td></tr>"
        for ledger, assets in sorted(audit.get("amounts", {}).items()) for asset, total in assets.items())
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Audit {html.escape(audit['day'])}</title>
<style>body{{font-family:sans-serif;margin:2em}}td,th{{border:1px solid #ccc;padding:3px 8px}}
table{{border-collapse:collapse}}</style></head><body><h1>Audit report {html.escape(audit['day'])}</h1>
<p>Merkle root over everything this report states (every record, figure and file of the day): <code>{html.escape(audit['merkle_root'])}</code></p>
{_anchor_line(audit.get("anchor"))}
{_bars("Breaks by type", by_type)}{_bars("Breaks per reconciliation", breaks)}
{_bars("Open breaks by age", audit.get("open_breaks_by_age", {}))}
<table><tr><th>reconciliation</th><th>matches</th><th>breaks</th><th>break types</th></tr>{rows}</table>
<h3>Amounts per asset per ledger (snapshots of the day)</h3>
<table><tr><th>ledger</th><th>asset</th><th>total</th></tr>{amount_rows}</table>
{_docs_list(data_docs)}
</body></html>"""


def _docs_list(docs: list[str] | None) -> str:
    if not docs:
        return ""
    items = "".join(f"<li><a href='{html.escape(d)}'>{html.escape(d.split('/')[1])}</a></li>" for d in docs)
    return f"<h3>Data Docs (Great Expectations results of the day's snapshots)</h3><ul>{items}</ul>"
