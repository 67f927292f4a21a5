"""The day report at volume: a reconciliation with 50,000 breaks stays a set of bounded pages plus CSV
exports from which every break is reachable with its exact amounts; the index names the largest and
oldest open breaks and links to their rows; amounts per asset are per direction; in a real browser
(headless Debian chromium) every table sorts (exactly, amounts beyond a float's precision included)
and filters."""

from __future__ import annotations

import csv
import random
import re
import shutil
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest

from ledger_pipelines.money import totals_by_asset
from ledger_pipelines.model import make_entry
from ledger_pipelines.reconcile import Rules
from ledger_pipelines.reconcile.engine import Match, Reconciliation
from ledger_pipelines.reconcile.output import open_breaks, render_index, write_records

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
DAY = "2026-11-24"
NAME = "bank_vs_chain"
BREAKS = 50_000
HUGE = "115792089237316195423570985008687907853269984665640564039457.584007913129639935"  # (2^256 - 1) / 10^18
MAX_PAGE = 5 * 1024 * 1024
HUGE_AT = 1234  # on the first page, where the browser test sorts


def _breaks(n: int) -> list[dict]:
    """Breaks of every shape the engine writes, some carried in from earlier days (first_seen, age_days)."""
    rng = random.Random(12)
    kinds = ["missing_left", "missing_right", "amount_mismatch", "asset_mismatch", "duplicate_left", "timing"]
    day = date.fromisoformat(DAY)
    out = []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        amount = f"{Decimal(rng.randrange(1, 10**9)).scaleb(-2):f}"
        other = f"{Decimal(amount) + Decimal(rng.randrange(1, 10**4)).scaleb(-2):f}"
        b = {"break_id": f"b{i:06d}-{rng.getrandbits(32):08x}", "break_type": kind, "correlation_id": f"E2E-{i:06d}",
             "asset": "USDC" if i % 3 else "EUR", "left_entry_ids": [] if kind == "missing_left" else [f"L-{i}"],
             "right_entry_ids": [] if kind == "missing_right" else [f"R-{i}"], "reason": f"case {i}",
             "left_amount": None if kind == "missing_left" else amount,
             "right_amount": None if kind == "missing_right" else other if kind == "amount_mismatch" else amount,
             "difference": f"{Decimal(other) - Decimal(amount):f}" if kind == "amount_mismatch" else None}
        if i % 7 == 0:
            age = 1 + i % 40
            b["first_seen"], b["age_days"] = (day - timedelta(days=age)).isoformat(), age
        out.append(b)
    out[HUGE_AT].update(break_type="amount_mismatch", left_amount="1", right_amount=HUGE,
                     difference=f"{Decimal(HUGE) - 1:f}", right_entry_ids=[f"R-{HUGE_AT}"], asset="USDC")
    return out


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[Path, list[dict], dict]:
    folder = tmp_path_factory.mktemp("report") / DAY
    (folder / NAME).mkdir(parents=True)
    breaks = _breaks(BREAKS)
    matches = [Match(f"M-{i}", (f"LM-{i}",), f"m{i:06d}", "exact", (f"RM-{i}",), "key") for i in range(3000)]
    result = Reconciliation(matches=matches, breaks=[dict(b) for b in breaks], left_count=BREAKS, right_count=BREAKS)
    s = write_records(folder / NAME, result, [], [], Rules.from_dict({}), DAY, NAME).summary
    audit = {"format": "test", "day": DAY, "merkle_root": "00" * 32, "records": BREAKS + len(matches),
             "reconciliations": {NAME: s}, "open_breaks_by_age": {},
             "amounts": {"sender_bank": {"EUR": {"debit": "12.50", "credit": "0.25"}}},
             "open_breaks": open_breaks({NAME: result.breaks}, DAY), "files": {}}
    (folder / "index.html").write_text(render_index(audit))
    return folder, breaks, audit


def _ids_in(page: str) -> list[str]:
    return re.findall(r"<tr id='([^']+)'>", page)


def test_pages_are_bounded_and_every_break_is_reachable_from_them(report):
    folder, breaks, _ = report
    pages = sorted((folder / NAME).glob("*.html"))
    assert len(pages) > 10  # the breaks are spread over pages, not one page
    for page in [*pages, folder / "index.html"]:
        assert page.stat().st_size < MAX_PAGE, page
    seen = [i for page in pages for i in _ids_in(page.read_text())]
    assert sorted(seen) == sorted(b["break_id"] for b in breaks)  # each on exactly one page


def test_the_csv_exports_parse_and_hold_exact_amounts(report):
    folder, breaks, _ = report
    with open(folder / NAME / "breaks.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == BREAKS
    by_id = {r["break_id"]: r for r in rows}
    for b in breaks:
        r = by_id[b["break_id"]]
        for k in ("break_type", "correlation_id", "asset", "left_amount", "right_amount", "difference"):
            assert r[k] == (b[k] or ""), (k, b, r)
        assert r["first_seen"] == b.get("first_seen", DAY) and int(r["age_days"]) == b.get("age_days", 0)
        assert r["left_entry_ids"].split() == b["left_entry_ids"]
    assert by_id[breaks[HUGE_AT]["break_id"]]["right_amount"] == HUGE
    with open(folder / NAME / "matches.csv", newline="") as f:
        matches = list(csv.DictReader(f))
    assert [m["match_id"] for m in matches] == [f"m{i:06d}" for i in range(3000)]


def test_the_report_page_names_its_reconciliation_and_day_and_reads_like_prose(report):
    folder, breaks, _ = report
    page = (folder / NAME / "report.html").read_text()
    assert f"{NAME} &middot; {DAY}" in page and "href='../index.html'" in page
    assert "first seen" in page and "age (days)" in page
    assert re.search(r"amount mismatch: \d+, asset mismatch: \d+, duplicate left: \d+, missing left: \d+", page)
    assert "<td>missing_left</td>" not in page and "<td>missing left</td>" in page
    carried = next(b for b in breaks[:2000] if "first_seen" in b)
    row = re.search(rf"<tr id='{carried['break_id']}'>(.*?)</tr>", page).group(1)
    assert f"<td>{carried['first_seen']}</td>" in row and f"<td class='num'>{carried['age_days']}</td>" in row


def test_the_index_shows_the_largest_and_oldest_open_breaks(report):
    folder, breaks, audit = report
    index = (folder / "index.html").read_text()
    largest, oldest = index.split("Largest open breaks")[1].split("Oldest open breaks")

    def at_stake(b):
        if b["difference"]:
            return abs(Decimal(b["difference"]))
        return max(abs(Decimal(b[k])) for k in ("left_amount", "right_amount") if b[k])

    for asset in ("EUR", "USDC"):
        mine = sorted((b for b in breaks if b["asset"] == asset), key=lambda b: (-at_stake(b), b["break_id"]))
        for b in mine[:10]:
            assert b["break_id"] in largest
        assert mine[10]["break_id"] not in largest
    assert breaks[HUGE_AT]["break_id"] in largest and HUGE[:20] in largest
    first = sorted(breaks, key=lambda b: (b.get("first_seen", DAY), b["break_id"]))
    assert all(b["break_id"] in oldest for b in first[:10]) and first[10]["break_id"] not in oldest
    assert all(b["age_days"] == 40 for b in first[:10])
    # amounts per direction, never a sum of both
    amounts = index.split("Amounts per asset per ledger")[1]
    assert "<th>debit</th><th>credit</th>" in amounts and "12.50" in amounts and "0.25" in amounts
    assert "12.75" not in amounts


def test_every_link_resolves_to_a_file_and_row_that_exist(report):
    folder, _, _ = report
    pages = [folder / "index.html", *sorted((folder / NAME).glob("*.html"))]
    checked = desk = 0
    for page in pages:
        text = page.read_text()
        for row_id, href in re.findall(r"<tr id='([^']+)'><td><a href='(\.\./\.\./\.\./breaks/[^']+)'", text):
            assert href == f"../../../breaks/{NAME}/{row_id}"  # the break on the desk, where the desk serves reports
            desk += 1
        for href in re.findall(r"href='([^']+)'", text):
            if href.startswith("../../../breaks/"):
                continue
            path, _, anchor = href.partition("#")
            target = (page.parent / path).resolve()
            assert target.is_file(), (page, href)
            if anchor:
                assert anchor in _ids_in(target.read_text()), (page, href)
            checked += 1
    assert checked > 100
    assert desk == BREAKS  # every break row of every page


def test_amounts_per_asset_are_per_direction():
    def entry(ref, amount, direction, asset="EUR"):
        return make_entry(ledger="bank", ledger_kind="sql", source_ref=ref, account="A", asset=asset, amount=amount,
                          direction=direction, booked_at=datetime(2026, 11, 24, tzinfo=timezone.utc), status="booked")

    got = totals_by_asset([entry("1", "10.00", "debit"), entry("2", "2.50", "credit"), entry("3", "1.25", "debit"),
                   entry("4", HUGE, "credit", "WEI")])
    assert got == {"EUR": {"debit": "11.25", "credit": "2.50"}, "WEI": {"debit": "0", "credit": HUGE}}


@pytest.mark.ui
def test_tables_sort_and_filter_in_a_real_browser(report):
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(chromium).exists():
        pytest.fail("Debian chromium is not installed: run scripts/setup.sh")
    folder, breaks, _ = report
    ARTIFACTS.mkdir(exist_ok=True)
    first_page = {b["break_id"]: b for b in sorted(breaks, key=lambda b: b["break_id"])[:2000]}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.route("**/*", lambda route: route.continue_() if route.request.url.startswith("file:")
                       else route.abort())  # self-contained: nothing but the file itself may load
            page.goto((folder / NAME / "report.html").as_uri())
            table = page.locator("table.data").nth(1)  # the breaks (after the totals)

            def column(i):
                return table.locator("tbody tr:not([hidden])").evaluate_all(
                    f"rows => rows.map(r => r.cells[{i}].textContent)")

            header = table.locator("th", has_text="difference")
            header.click()
            diffs = [d for d in column(6) if d]
            want = sorted((b["difference"] for b in first_page.values() if b["difference"]), key=Decimal)
            assert diffs == want  # exact order, the 2^256-scale amount last
            header.click()
            assert [d for d in column(6) if d] == want[::-1] and column(6)[0] == f"{Decimal(HUGE) - 1:f}"
            table.locator("th", has_text="type").click()
            types = column(1)
            assert types == sorted(types)
            page.locator("input.filter").nth(1).fill("amount mismatch")
            shown = column(1)
            assert shown and set(shown) == {"amount mismatch"}
            assert len(shown) == sum(b["break_type"] == "amount_mismatch" for b in first_page.values())
            page.screenshot(path=str(ARTIFACTS / "report-pages-breaks-filtered.png"))

            page.goto((folder / "index.html").as_uri())
            largest = page.locator("table.data").nth(1)
            largest.locator("th", has_text="amount at stake").click()
            amounts = largest.locator("tbody tr").evaluate_all("rows => rows.map(r => r.cells[4].textContent)")
            assert amounts == sorted(amounts, key=Decimal)
            page.locator("input.filter").nth(1).fill("EUR")
            assert set(largest.locator("tbody tr:not([hidden])").evaluate_all(
                "rows => rows.map(r => r.cells[3].textContent)")) == {"EUR"}
            page.screenshot(path=str(ARTIFACTS / "report-pages-index.png"), full_page=True)
        finally:
            browser.close()
