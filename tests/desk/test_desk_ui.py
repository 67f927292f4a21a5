"""The breaks desk in headless Debian Chromium: an operator and an approver work the breaks, the next day's
report honours their decisions and verifies. Screenshots go to test-artifacts/."""

from __future__ import annotations

import json

import pytest

from corridor import D1, D2, PAIR, PASSWORD, Corridor
from desk_server import serving
from test_ui import browser  # noqa: F401 (a fixture)
from ledger_pipelines.audit import finish_report
from ledger_pipelines.verify import verify_report

pytestmark = pytest.mark.ui


def _data_docs(folder):
    """Data Docs of a snapshot check, as the snapshot step writes them (Great Expectations' own renderer)."""
    from ledger_pipelines.validation import Validator, snapshot_frame, write_data_docs

    rows = [{"entry_id": "bank:1", "account": "A", "asset": "EUR", "amount": "10.00", "direction": "debit",
             "status": "booked", "booked_at": f"{D2}T12:00:00Z"}]
    result = Validator().run("ledger_snapshot", snapshot_frame(rows), {"days": [str(D2)], "assets": ["EUR"]})
    write_data_docs({"ledger_snapshot": result}, folder, f"bank, {D2}")


def _login(ctx, base, name):
    page = ctx.new_page()
    page.goto(base + "/breaks")
    page.fill("input[name=name]", name)
    page.fill("input[name=password]", PASSWORD)
    page.click("button:has-text('Log in')")
    page.wait_for_url("**/breaks*")
    return page


def test_operator_and_approver_work_the_breaks_and_the_next_report_proves_it(tmp_path, browser, artifacts):  # noqa: F811
    c = Corridor(tmp_path)
    c.run(D1)
    finish_report(c.reports / str(D1), anchor=False)
    c.users()
    a, b, keep = c.break_of("bank:1"), c.break_of("chain:9"), c.break_of("bank:2")
    with serving(c.desk, c.reports) as base:
        op_ctx, ap_ctx = browser.new_context(), browser.new_context()
        op = _login(op_ctx, base, "olga")
        # filter: one reconciliation, one break type
        op.select_option("select[name=reconciliation]", PAIR.name)
        op.select_option("select[name=type]", "missing_right")
        op.click("button:has-text('Filter')")
        op.wait_for_url("**type=missing_right**")
        assert op.locator("tbody tr").count() == 2
        op.screenshot(path=str(artifacts / "desk-list-filtered.png"), full_page=True)
        # open a break: both legs, the suggestion with its explanation
        op.click(f"a:has-text('{a}')")
        op.wait_for_url(f"**/{a}")
        assert "bank:1" in op.locator("table.entry").first.inner_text()
        sugg = op.locator("h2:has-text('Suggested matches') + table")
        assert b in sugg.inner_text() and "amount 40/40" in sugg.inner_text()
        # propose the suggested match; it waits for an approver
        sugg.locator("input[name=reason]").fill("fee taken on chain")
        sugg.locator("button:has-text('Propose this match')").click()
        op.wait_for_selector("text=waiting for approval")
        op.screenshot(path=str(artifacts / "desk-match-proposed.png"), full_page=True)
        # accept the other break with a reason
        op.goto(f"{base}/breaks/{PAIR.name}/{keep}")
        op.fill("form[action$='propose-accept'] input[name=reason]", "below threshold, written off")
        op.fill("form[action$='propose-accept'] input[name=expires]", "2026-12-31")
        op.click("button:has-text('Propose acceptance')")
        op.wait_for_selector("text=waiting for approval")
        assert op.locator("button:has-text('Approve')").count() == 0  # an operator cannot approve
        # a second user, an approver, approves both
        ap = _login(ap_ctx, base, "anna")
        ap.goto(base + "/decisions?state=proposed")
        assert ap.locator("button:has-text('Approve')").count() == 2
        ap.screenshot(path=str(artifacts / "desk-decisions-waiting.png"), full_page=True)
        for _ in range(2):
            ap.locator("button:has-text('Approve')").first.click()
            ap.wait_for_url("**/decisions?done=*")
        ap.goto(f"{base}/breaks/{PAIR.name}/{keep}")
        assert ap.locator("#state").inner_text().startswith("accepted")
        history = ap.locator("h2:has-text('History') + table").inner_text()
        assert "olga" in history and "anna" in history and "approve" in history
        # the next day honours both decisions; its report says so and verifies
        _data_docs(c.reports / str(D2) / "data_docs" / "bank")
        audit = c.run(D2)
        finish_report(c.reports / str(D2), anchor=False)
        assert audit["reconciliations"][PAIR.name]["match_type"] == {"manual": 1}
        ap.goto(f"{base}/day/{D2}")
        assert "1 manual matches, 1 acceptances" in ap.inner_text("main")
        ap.click(f"a:has-text('{PAIR.name}')")
        assert "manual" in ap.inner_text("body")
        ap.screenshot(path=str(artifacts / "desk-next-day-report.png"), full_page=True)
        ap.goto(f"{base}/breaks/{PAIR.name}/{a}")
        assert ap.locator("#state").inner_text().startswith("matched")
        # the day's Data Docs, linked from the desk, render styled with nothing fetched from elsewhere
        outside = []
        ap_ctx.route("**/*", lambda route: (route.continue_() if route.request.url.startswith(base)
                                            else (outside.append(route.request.url), route.abort())))
        ap.goto(f"{base}/day/{D2}")
        ap.click("a[href$='/data_docs/bank/index.html']")
        ap.click("a:has-text('ledger_snapshot')")
        assert "Expectation Validation Result" in ap.inner_text("body")
        border = ap.eval_on_selector("table.table td", "e => getComputedStyle(e).borderTopStyle")
        assert border == "solid"
        ap.screenshot(path=str(artifacts / "desk-data-docs-offline.png"), full_page=False)
        ap.click("a:has-text('Home')")
        assert ap.url.endswith("/data_docs/bank/index.html") and "ledger_snapshot" in ap.inner_text("body")
        assert outside == []
        op_ctx.close()
        ap_ctx.close()
    decisions = [json.loads(x) for x in (c.reports / str(D2) / "decisions.jsonl").read_text().splitlines()]
    assert {(d["kind"], d["proposed_by"], d["approved_by"]) for d in decisions} == {
        ("manual_match", "olga", "anna"), ("acceptance", "olga", "anna")}
    assert verify_report(c.reports / str(D2))["verified"] is True
