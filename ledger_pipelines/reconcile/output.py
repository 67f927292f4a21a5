"""Writes a reconciliation to a folder (ARCHITECTURE section 4): matches.jsonl, breaks.jsonl,
summary.json, report.html (self-contained: inline SVG charts, inline script for sorting and filtering).

A day report's reconciliation folder also holds breaks.csv and matches.csv (every record, exact amounts)
and the breaks beyond report.html's first page as breaks-NNNN.html, so no page grows with the day."""

from __future__ import annotations

import csv
import html
import io
import os
import shutil
import tempfile
from contextlib import contextmanager
from decimal import Decimal
from operator import attrgetter
from pathlib import Path
from typing import Any, Iterator, NamedTuple
from urllib.parse import quote

from ..commitment import canonical, pretty, record_hashes, records_root
from .. import merkle
from ..model import CanonicalEntry
from ..money import EXACT, totals_by_asset
from .engine import Reconciliation
from .rules import Rules


def merkle_root(result: Reconciliation, day: str | None = None, name: str | None = None) -> str:
    """The root over a reconciliation's records (its summary's ``merkle_root``)."""
    return records_root(day, name, [canonical(m) for m in sorted(result.matches, key=attrgetter("match_id"))],
                        [canonical(b) for b in sorted(result.breaks, key=lambda b: b["break_id"])])


def summary(result: Reconciliation, left: list[CanonicalEntry], right: list[CanonicalEntry],
            rules: Rules, root: str) -> dict[str, Any]:
    counts = result.counts()
    return {
        "input_rows": {"left": result.left_count, "right": result.right_count},
        "match_type": counts["match_type"], "break_type": counts["break_type"],
        "matches": len(result.matches), "breaks": len(result.breaks),
        "totals": {"left": totals_by_asset(left), "right": totals_by_asset(right)},
        "rules": rules.describe(),
        "merkle_root": root,
    }


PAGE_ROWS = 2000  # breaks per HTML page (about 1 MB): the rest are on further pages and in breaks.csv
TOP_BREAKS = 10  # the largest open breaks per asset, and the oldest, listed on the index page

_STYLE = ("<style>body{font-family:sans-serif;margin:2em;color:#111}table{border-collapse:collapse}"
          "td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}th{background:#eef;cursor:pointer}"
          "th[data-dir=asc]::after{content:' \\25b2'}th[data-dir=desc]::after{content:' \\25bc'}"
          "input.filter{margin:6px 0;padding:3px;width:24em}td.num{text-align:right;font-variant-numeric:tabular-nums}"
          "nav a{margin-right:6px}</style>")

# Sorting compares decimal strings exactly (amounts exceed what a JavaScript number holds), empty cells last;
# filtering keeps the rows whose text contains the query. Inline, so a page works without network.
_SCRIPT = r"""<script>
(function(){
var DEC=/^-?\d+(\.\d+)?$/;
function abs(a,b){var x=a.split('.'),y=b.split('.'),ai=x[0].replace(/^0+(?=\d)/,''),bi=y[0].replace(/^0+(?=\d)/,'');
 if(ai.length!==bi.length)return ai.length<bi.length?-1:1;if(ai!==bi)return ai<bi?-1:1;
 var af=x[1]||'',bf=y[1]||'',n=Math.max(af.length,bf.length);af=af.padEnd(n,'0');bf=bf.padEnd(n,'0');
 return af<bf?-1:af>bf?1:0;}
function cmp(a,b){if(DEC.test(a)&&DEC.test(b)){var na=a[0]==='-',nb=b[0]==='-';if(na!==nb)return na?-1:1;
 var r=abs(na?a.slice(1):a,nb?b.slice(1):b);return na?-r:r;}return a<b?-1:a>b?1:0;}
document.querySelectorAll('table.data').forEach(function(t){
 var head=t.tHead.rows[0],body=t.tBodies[0],f=document.createElement('input'),shown=document.createElement('span');
 f.type='search';f.className='filter';f.placeholder='filter rows';t.parentNode.insertBefore(f,t);
 t.parentNode.insertBefore(shown,t);
 function count(){var n=0;for(var i=0;i<body.rows.length;i++)if(!body.rows[i].hidden)n++;
  shown.textContent=' '+n+' of '+body.rows.length+' rows';}
 f.addEventListener('input',function(){var q=f.value.toLowerCase();
  for(var i=0;i<body.rows.length;i++){var r=body.rows[i];r.hidden=q!==''&&r.textContent.toLowerCase().indexOf(q)<0;}
  count();});
 Array.prototype.forEach.call(head.cells,function(th,i){th.addEventListener('click',function(){
  var asc=th.dataset.dir!=='asc';Array.prototype.forEach.call(head.cells,function(c){delete c.dataset.dir;});
  th.dataset.dir=asc?'asc':'desc';var rows=Array.prototype.slice.call(body.rows);
  rows.sort(function(x,y){var a=x.cells[i].textContent,b=y.cells[i].textContent;
   if(a===''||b==='')return a===b?0:a===''?1:-1;var r=cmp(a,b);return asc?r:-r;});
  rows.forEach(function(r){body.appendChild(r);});});});
 count();});
})();
</script>"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _readable(kind: str) -> str:
    return kind.replace("_", " ")


def _table(headers: list[str], rows: list[str]) -> str:
    """A sortable, filterable table (``rows`` are ``<tr>`` strings already rendered)."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    return f"<table class='data'><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _tds(cells: list[Any], numeric: set[int] = frozenset()) -> str:
    return "".join(f"<td class='num'>{_e(c)}</td>" if i in numeric else f"<td>{_e(c)}</td>" for i, c in enumerate(cells))


def _row(cells: list[Any], numeric: set[int] = frozenset(), row_id: str | None = None) -> str:
    tds = _tds(cells, numeric)
    return f"<tr id='{_e(row_id)}'>{tds}</tr>" if row_id else f"<tr>{tds}</tr>"


def _page(title: str, body: str) -> str:
    return (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>{_STYLE}</head>"
            f"<body>{body}{_SCRIPT}</body></html>")


def _bars(title: str, data: dict[str, int]) -> str:
    if not data:
        return f"<h3>{html.escape(title)}</h3><p>none</p>"
    peak = max(data.values()) or 1
    rows = []
    for i, (name, n) in enumerate(sorted(data.items())):
        w = int(360 * n / peak)
        y = i * 26
        rows.append(f'<text x="0" y="{y + 16}" font-size="13">{html.escape(_readable(name))}</text>'
                    f'<rect x="150" y="{y + 4}" width="{w}" height="16" fill="#4f46e5"/>'
                    f'<text x="{156 + w}" y="{y + 16}" font-size="12">{n}</text>')
    return (f"<h3>{html.escape(title)}</h3><svg width='560' height='{26 * len(data) + 6}' "
            f"xmlns='http://www.w3.org/2000/svg'>{''.join(rows)}</svg>")


BREAK_COLUMNS = ["break_id", "break_type", "correlation_id", "asset", "left_amount", "right_amount", "difference",
                 "first_seen", "age_days", "left_entry_ids", "right_entry_ids", "reason"]
MATCH_COLUMNS = ["match_id", "match_type", "correlation_id", "rule", "left_entry_ids", "right_entry_ids",
                 "decision_id"]


def _break_cells(b: dict[str, Any], day: str | None) -> list[Any]:
    """A break as the pages and breaks.csv show it; a break first seen today has no ``first_seen`` of its own."""
    return [b["break_id"], _readable(b["break_type"]), b.get("correlation_id"), b.get("asset"), b.get("left_amount"),
            b.get("right_amount"), b.get("difference"), b.get("first_seen") or day,
            b.get("age_days", 0) if day else None, " ".join(b["left_entry_ids"]), " ".join(b["right_entry_ids"]),
            _with_acceptance(b)]


def _with_acceptance(b: dict[str, Any]) -> str | None:
    """The break's reason, and (accepted in the breaks desk) its acceptance: who, why, until when."""
    acc = b.get("acceptance")
    if not acc:
        return b.get("reason")
    return (f"{b.get('reason')}; accepted until {acc['expires']} ({acc['reason']}; proposed by {acc['proposed_by']}, "
            f"approved by {acc['approved_by']}, decision {acc['decision_id']})")


def page_name(n: int) -> str:
    """The file of breaks page ``n`` (1-based): the first page is report.html itself."""
    return "report.html" if n == 1 else f"breaks-{n:04d}.html"


def _breaks_table(breaks: list[dict[str, Any]], day: str | None, name: str | None = None) -> str:
    """The breaks as table rows; on a day report (``name`` and ``day``) each break id links to the break's page
    on the breaks desk, relative to where the desk serves the report (``/reports/<day>/<name>/``)."""
    headers = ["break id", "type", "correlation", "asset", "left", "right", "difference", "first seen", "age (days)",
               "left entries", "right entries", "reason"]
    if not (name and day):
        return _table(headers, [_row(_break_cells(b, day), {4, 5, 6, 8}, b["break_id"]) for b in breaks])
    desk = f"../../../breaks/{_e(quote(name, safe=''))}/"
    return _table(headers, [
        f"<tr id='{_e(b['break_id'])}'><td><a href='{desk}{_e(quote(b['break_id'], safe=''))}' title='on the breaks "
        f"desk'>{_e(b['break_id'])}</a></td>{_tds(_break_cells(b, day)[1:], {3, 4, 5, 7})}</tr>" for b in breaks])


DESK_LINKS = ("<p>Each break id opens the break on the breaks desk when this page is read there "
              "(<code>ledger-pipelines desk</code>, under <code>/reports/</code>).</p>")


def _breaks_part(breaks: list[dict[str, Any]], pages: int, n: int, name: str | None, day: str | None) -> str:
    """Page ``n``'s breaks between its pagers; on a day report (``name`` and ``day``) with desk links."""
    note = DESK_LINKS if name and day else ""
    return f"{note}{_pager(pages, n)}{_breaks_table(breaks, day, name)}{_pager(pages, n)}"


def _pager(pages: int, current: int) -> str:
    if pages <= 1:
        return ""
    links = "".join(f"<b>{n}</b> " if n == current else f"<a href='{page_name(n)}'>{n}</a>"
                    for n in range(1, pages + 1))
    return f"<nav>Breaks pages: {links}</nav>"


def _heading(title: str, name: str | None, day: str | None) -> str:
    back = ("<p><a href='../index.html'>&larr; the day's index</a> &middot; "
            "<a href='report.html'>summary</a></p>") if day else ""
    where = f" &middot; {html.escape(name)} &middot; {html.escape(day)}" if name and day else ""
    return f"{back}<h1>{html.escape(title)}{where}</h1>"


def render_html(s: dict[str, Any], result: Reconciliation, title: str = "Reconciliation", name: str | None = None,
                day: str | None = None, exports: bool = False) -> str:
    """report.html: the figures, the totals per asset and side (debits and credits apart) and the first
    page of breaks; with ``exports`` (a day report) links to the further pages and the CSV files."""
    totals_rows = [_row([side, a, t["debit"], t["credit"]], {2, 3})
                   for side in ("left", "right") for a, t in s["totals"][side].items()]
    breaks = result.breaks
    pages = max(1, -(-len(breaks) // PAGE_ROWS)) if exports else 1
    if exports:
        where = ("<p>Every record: <a href='breaks.csv'>breaks.csv</a>, <a href='matches.csv'>matches.csv</a> "
                 "(exact amounts), and <code>breaks.jsonl</code> / <code>matches.jsonl</code>.</p>")
        caption = f"Breaks {1 if breaks else 0}-{min(PAGE_ROWS, len(breaks))} of {len(breaks)}"
    else:
        where = ""
        caption = f"Breaks (first {PAGE_ROWS} of {len(breaks)}; all in breaks.jsonl)" if len(breaks) > PAGE_ROWS \
            else "Breaks"
    body = f"""{_heading(title, name, day)}
<p>Left {s['input_rows']['left']} entries, right {s['input_rows']['right']} entries:
{s['matches']} matches, {s['breaks']} breaks ({html.escape(kinds_text(s['break_type']))}).
Merkle root <code>{s['merkle_root']}</code>.</p>{where}
{_bars("Matches by type", s["match_type"])}{_bars("Breaks by type", s["break_type"])}
<h3>Totals per asset and side</h3>{_table(["side", "asset", "debit", "credit"], totals_rows)}
<h3>{caption}</h3>{_breaks_part(breaks[:PAGE_ROWS], pages, 1, name if exports else None, day)}"""
    return _page(f"{title} {name or ''} {day or ''}".strip(), body)


def render_breaks_page(breaks: list[dict[str, Any]], n: int, pages: int, name: str | None, day: str | None,
                       title: str = "Reconciliation") -> str:
    first = (n - 1) * PAGE_ROWS
    chunk = breaks[first:first + PAGE_ROWS]
    body = (f"{_heading(title, name, day)}<h3>Breaks {first + 1}-{first + len(chunk)} of {len(breaks)}</h3>"
            f"{_breaks_part(chunk, pages, n, name, day)}")
    return _page(f"{title} {name or ''} {day or ''} breaks page {n}".strip(), body)


def _csv(columns: list[str], rows) -> bytes:
    buf = io.StringIO(newline="")
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    w.writerows(rows)
    return buf.getvalue().encode()


def _write_exports(out_dir: Path, result: Reconciliation, name: str | None, day: str | None) -> None:
    """breaks.csv, matches.csv and the breaks pages after the first."""
    with open(out_dir / "breaks.csv", "xb") as f:
        f.write(_csv(BREAK_COLUMNS, ([("" if c is None else c) for c in
                                      [b["break_id"], b["break_type"], *_break_cells(b, day)[2:]]]
                                     for b in result.breaks)))
    with open(out_dir / "matches.csv", "xb") as f:
        f.write(_csv(MATCH_COLUMNS, ([m.match_id, m.match_type, m.correlation_id or "", m.rule,
                                      " ".join(m.left_entry_ids), " ".join(m.right_entry_ids),
                                      getattr(m, "decision_id", "")]
                                     for m in result.matches)))
    pages = max(1, -(-len(result.breaks) // PAGE_ROWS))
    for n in range(2, pages + 1):
        with open(out_dir / page_name(n), "x", encoding="utf-8") as f:
            f.write(render_breaks_page(result.breaks, n, pages, name, day))


def at_stake(b: dict[str, Any]) -> Decimal:
    """The amount a break puts in question: the difference of a pair, else the amount of the side present."""
    if b.get("difference") not in (None, ""):
        return EXACT.abs(Decimal(b["difference"]))
    return max((EXACT.abs(Decimal(b[k])) for k in ("left_amount", "right_amount") if b.get(k) not in (None, "")),
               default=Decimal(0))


def open_breaks(breaks: dict[str, list[dict[str, Any]]], day: str) -> dict[str, Any]:
    """For the index page (it is rendered from audit.json alone): the largest open breaks per asset (by the
    amount at stake) and the oldest (by first_seen), each with where its row is."""
    rows = []
    for name, recs in breaks.items():
        for i, b in enumerate(recs):
            rows.append({"reconciliation": name, "break_id": b["break_id"], "break_type": b["break_type"],
                         "correlation_id": b.get("correlation_id"), "asset": b.get("asset"),
                         "amount": f"{at_stake(b):f}", "first_seen": b.get("first_seen") or day,
                         "age_days": b.get("age_days", 0), "page": f"{name}/{page_name(i // PAGE_ROWS + 1)}"})
    by_asset: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_asset.setdefault(str(r["asset"]), []).append(r)
    largest = [r for asset in sorted(by_asset) for r in
               sorted(by_asset[asset], key=lambda r: (EXACT.minus(Decimal(r["amount"])), r["reconciliation"],
                                                   r["break_id"]))
               [:TOP_BREAKS]]
    oldest = sorted(rows, key=lambda r: (r["first_seen"], r["reconciliation"], r["break_id"]))[:TOP_BREAKS]
    return {"largest": largest, "oldest": oldest}


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


class Written(NamedTuple):
    summary: dict[str, Any]
    leaf_hashes: list[bytes]  # the records' Merkle leaf hashes (commitment.record_hashes), sorted


def _lines_written(path: Path, records: list) -> Iterator[bytes]:
    """Each record's canonical line, written to ``path`` (a new file) as it is handed on: a day's million
    lines are hashed as they are written, never held together."""
    with open(path, "xb") as f:
        for rec in records:
            line = canonical(rec)
            f.write(line + b"\n")
            yield line


def write_records(out_dir: Path, result: Reconciliation, left: list[CanonicalEntry], right: list[CanonicalEntry],
                  rules: Rules, day: str | None = None, name: str | None = None) -> Written:
    """Writes a reconciliation into ``out_dir`` (a folder of its own, made by the caller)."""
    result.matches.sort(key=attrgetter("match_id"))  # the order verify requires (and the engine's own)
    result.breaks.sort(key=lambda b: b["break_id"])
    hashes = record_hashes(day, name, _lines_written(out_dir / "matches.jsonl", result.matches),
                           _lines_written(out_dir / "breaks.jsonl", result.breaks))
    s = summary(result, left, right, rules, merkle.root(hashes).hex())
    with open(out_dir / "summary.json", "xb") as f:
        f.write(pretty(s))
    exports = name is not None  # a day report's reconciliation (``reconcile --out`` keeps section 4's files)
    with open(out_dir / "report.html", "x", encoding="utf-8") as f:
        f.write(render_html(s, result, name=name, day=day, exports=exports))
    if exports:
        _write_exports(out_dir, result, name, day)
    return Written(s, hashes)


OUT_FILES = frozenset({"matches.jsonl", "breaks.jsonl", "summary.json", "report.html"})


class OutError(ValueError):
    """``reconcile --out``: a folder that may not be replaced by a reconciliation's output."""


def check_out(out_dir: Path, inputs: list[Path]) -> Path:
    """The absolute path of ``--out`` once it is known that replacing it destroys nothing but an earlier
    reconciliation's output: it is new, an empty folder, a folder of the four output files, or a
    symlink (replaced, its target left alone); never a file, another folder, nor one holding an input."""
    out = Path(os.path.abspath(out_dir))
    if out.parent == out:
        raise OutError(f"--out {out_dir}: the file system's root cannot be replaced")
    for given in inputs:
        for where in {Path(os.path.abspath(given)), Path(given).resolve()}:
            if where == out or out in where.parents:
                raise OutError(f"--out {out_dir}: it holds the input {given}, which writing the output would remove")
    if out.is_symlink() or not out.exists():
        return out
    if not out.is_dir():
        raise OutError(f"--out {out_dir}: a file, not a folder; give a new folder (or one of an earlier output)")
    try:
        others = sorted(p.name for p in out.iterdir() if p.name not in OUT_FILES or not p.is_file()
                        or p.is_symlink())
    except OSError as exc:
        raise OutError(f"--out {out_dir}: cannot be read ({exc.strerror or exc})") from None
    if others:
        shown = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
        raise OutError(f"--out {out_dir}: holds {shown}, not only an earlier output ({', '.join(sorted(OUT_FILES))}); "
                       "writing would remove it: give a new or empty folder")
    return out


def write(out_dir: Path, result: Reconciliation, left: list[CanonicalEntry], right: list[CanonicalEntry],
          rules: Rules) -> dict[str, Any]:
    """``reconcile --out DIR``: the four files of ARCHITECTURE section 4, replacing DIR whole."""
    with replacing(out_dir) as fresh:
        return write_records(fresh, result, left, right, rules).summary


def _anchor_line(anchor: dict[str, Any] | None) -> str:
    if not anchor:
        return "<p><b>Not anchored on chain.</b></p>"
    return (f"<p>Anchored on chain {_e(anchor['chain_id'])} by contract <code>{_e(anchor['contract'])}</code> in tx "
            f"<code>{_e(anchor['tx_hash'])}</code> (block {_e(anchor['block_number'])}, version {_e(anchor['version'])}). "
            "Check it with <code>ledger-pipelines verify --report DIR --rpc URL</code>.</p>")


def kinds_text(counts: dict[str, int]) -> str:
    """``{"amount_mismatch": 1, "missing_left": 4}`` as people read it: ``amount mismatch: 1, missing left: 4``."""
    return ", ".join(f"{kind.replace('_', ' ')}: {n}" for kind, n in sorted(counts.items())) or "none"


def _notable_rows(rows: list[dict[str, Any]]) -> list[str]:
    return [f"<tr><td><a href='{_e(r['page'])}#{_e(r['break_id'])}'>{_e(r['reconciliation'])}</a></td>"
            f"<td>{_e(_readable(r['break_type']))}</td><td>{_e(r['correlation_id'])}</td><td>{_e(r['asset'])}</td>"
            f"<td class='num'>{_e(r['amount'])}</td><td>{_e(r['first_seen'])}</td><td class='num'>{_e(r['age_days'])}</td>"
            f"<td>{_e(r['break_id'])}</td></tr>" for r in rows]


def render_index(audit: dict[str, Any]) -> str:
    """The day's index page over every reconciliation (self-contained), rendered from audit.json alone
    (``verify`` renders it again and compares)."""
    recs = audit["reconciliations"]
    day = audit["day"]
    data_docs = sorted(p for p in audit.get("files", {}) if p.startswith("data_docs/") and p.count("/") == 2
                       and p.endswith("/index.html"))
    rows = [f"<tr><td><a href='{_e(name)}/report.html'>{_e(name)}</a></td><td class='num'>{r['matches']}</td>"
            f"<td class='num'>{r['breaks']}</td><td>{_e(kinds_text(r['break_type']))}</td></tr>"
            for name, r in sorted(recs.items())]
    breaks = {name: r["breaks"] for name, r in recs.items()}
    by_type: dict[str, int] = {}
    for r in recs.values():
        for kind, n in r["break_type"].items():
            by_type[kind] = by_type.get(kind, 0) + n
    amount_rows = [_row([ledger, asset, *((t.get("debit"), t.get("credit")) if isinstance(t, dict) else (t, t))], {2, 3})
                   for ledger, assets in sorted(audit.get("amounts", {}).items()) for asset, t in sorted(assets.items())]
    notable = audit.get("open_breaks", {})
    heads = ["reconciliation", "type", "correlation", "asset", "amount at stake", "first seen", "age (days)", "break id"]
    body = f"""<h1>Audit report {html.escape(day)}</h1>
<p>Merkle root over everything this report states (every record, figure and file of the day): <code>{html.escape(audit['merkle_root'])}</code></p>
{_anchor_line(audit.get("anchor"))}
{_bars("Breaks by type", by_type)}{_bars("Breaks per reconciliation", breaks)}
{_bars("Open breaks by age", audit.get("open_breaks_by_age", {}))}
<h3>Reconciliations</h3>{_table(["reconciliation", "matches", "breaks", "break types"], rows)}
{_decisions_line(audit.get("decisions"))}
<h3>Largest open breaks (per asset, by the amount at stake)</h3>{_table(heads, _notable_rows(notable.get("largest", [])))}
<h3>Oldest open breaks</h3>{_table(heads, _notable_rows(notable.get("oldest", [])))}
<h3>Amounts per asset per ledger (snapshots of the day)</h3>{_table(["ledger", "asset", "debit", "credit"], amount_rows)}
{_docs_list(data_docs)}"""
    return _page(f"Audit {day}", body)


def _decisions_line(decisions: dict[str, int] | None) -> str:
    if decisions is None:
        return ""
    return (f"<p>Breaks desk decisions honoured by this report: {decisions.get('manual_match', 0)} manual matches, "
            f"{decisions.get('acceptance', 0)} acceptances, each with who proposed and who approved it, in "
            "<code>decisions.jsonl</code> (covered by the Merkle root).</p>")


def _docs_list(docs: list[str] | None) -> str:
    if not docs:
        return ""
    items = "".join(f"<li><a href='{html.escape(d)}'>{html.escape(d.split('/')[1])}</a></li>" for d in docs)
    return f"<h3>Data Docs (Great Expectations results of the day's snapshots)</h3><ul>{items}</ul>"
