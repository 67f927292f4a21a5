"""Great Expectations suites as blocking checks: stage, check, then publish."""

from __future__ import annotations

import pytest
from dagster import AssetCheckSeverity, DagsterInstance, materialize
from conftest import balanced, post_journal
from ledger_pipelines.validation import Validator, snapshot_frame
from ledger_pipelines.warehouse import Warehouse

DAY = "2026-11-17"


@pytest.fixture(scope="module")
def validator():
    return Validator()


def _rows(**over):
    base = {"entry_id": "core_banking:1", "account": "GL", "asset": "EUR", "amount": "10.00", "direction": "debit",
            "status": "booked", "booked_at": f"{DAY}T12:00:00Z"}
    return [base | over]


@pytest.mark.parametrize("over, expectation", [
    ({"amount": "1e5"}, "expect_column_values_to_match_regex"),
    ({"direction": "up"}, "expect_column_values_to_be_in_set"),
    ({"booked_at": "2026-11-18T00:00:00Z"}, "expect_column_values_to_be_in_set"),
    ({"account": None}, "expect_column_values_to_not_be_null"),
])
def test_critical_expectations_fail_and_name_the_entry(validator, over, expectation):
    res = validator.run("ledger_snapshot", snapshot_frame(_rows(**over)), {"days": [DAY], "assets": ["EUR"]})
    assert not res.success
    assert [f["expectation"] for f in res.failures] == [expectation]
    assert res.failures[0]["entry_ids"] == ["core_banking:1"]


def test_a_repeated_entry_id_fails_uniqueness(validator):
    rows = _rows() + _rows(amount="11.00")
    res = validator.run("ledger_snapshot", snapshot_frame(rows), {"days": [DAY], "assets": ["EUR"]})
    assert [f["expectation"] for f in res.failures] == ["expect_column_values_to_be_unique"]
    assert res.failures[0]["entry_ids"] == ["core_banking:1", "core_banking:1"]


def test_an_unconfigured_asset_only_warns(validator):
    res = validator.run("ledger_snapshot", snapshot_frame(_rows(asset="XAU")), {"days": [DAY], "assets": ["EUR"]})
    assert res.success and res.warnings[0]["unexpected_values"] == ["XAU"]


def test_an_unbalanced_day_is_not_published_and_the_check_says_why(tmp_path, monkeypatch):
    from ledger_pipelines.definitions import build_definitions

    defs = build_definitions()  # of the current LEDGER_CONFIG (the module's defs are of the first one imported)

    core = f"sqlite:///{tmp_path / 'core.db'}"
    monkeypatch.setenv("LEDGER_CORE_BANKING_URL", core)
    monkeypatch.setenv("LEDGER_WAREHOUSE_URL", f"sqlite:///{tmp_path / 'w.db'}")
    post_journal(core, [*balanced("T1", f"{DAY}T12:00:00Z"),
                        {"txn": "T2", "posted_at": f"{DAY}T12:00:00Z", "side": "D", "amount": "5.00"},
                        {"txn": "T2", "posted_at": f"{DAY}T12:00:00Z", "side": "C", "amount": "4.99"}])
    asset = defs.resolve_assets_def("core_banking_snapshot")
    result = materialize([asset], instance=DagsterInstance.ephemeral(), partition_key=DAY, raise_on_error=False)
    evals = {e.check_name: e for e in result.get_asset_check_evaluations()}
    tb = evals["trial_balance"]
    assert not tb.passed and tb.severity == AssetCheckSeverity.ERROR
    assert "T2:EUR" in tb.metadata["offending_ids"].value
    assert evals["expectations"].passed
    mat = result.asset_materializations_for_node("core_banking_snapshot")[0]
    assert mat.metadata["published"].value is False
    wh = Warehouse(f"sqlite:///{tmp_path / 'w.db'}")
    wh.create_schema()
    assert wh.scalar("SELECT count(*) FROM ledger_snapshots") == 0  # nothing published for the day


def test_statement_balance_equation_is_a_blocking_check(validator, tmp_path):
    """opening + credits - debits = closing per statement of the day: an off closing balance blocks the
    day's snapshot (or only warns with options.balance_check: warn); the failure names the statement."""
    from datetime import date

    from ledger_pipelines.config import LedgerConfig
    from ledger_pipelines.local.corridor import generate, statements
    from ledger_pipelines.snapshots import snapshot_day

    day = date(2026, 11, 17)
    files, closing = statements(generate([day], 40))
    body = files[f"camt053-{day}.xml"]
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    wh = Warehouse(f"sqlite:///{tmp_path / 'w.db'}")
    wh.create_schema()
    lc = LedgerConfig(name="beneficiary_bank", kind="iso20022", inbox=str(inbox))
    (inbox / "s.xml").write_bytes(body)
    ok = snapshot_day(lc, day, wh, validator)
    assert ok["checks"]["statement_balance"].success and ok["published"] and ok["balances"][0]["balanced"]
    off = str(closing[day] + 1).encode()
    assert body.count(str(closing[day]).encode()) == 1
    (inbox / "s.xml").write_bytes(body.replace(str(closing[day]).encode(), off))
    bad = snapshot_day(lc, day, wh, validator)
    result = bad["checks"]["statement_balance"]
    assert not result.success and not bad["published"]
    assert result.failures[0]["entry_ids"] == [f"s.xml:BEN-{day}:USD"]
    assert bad["balances"][0]["difference"] == "1.00"
    lenient = LedgerConfig(name="beneficiary_bank", kind="iso20022", inbox=str(inbox),
                           options={"balance_check": "warn"})
    warned = snapshot_day(lenient, day, wh, validator)
    lenient_result = warned["checks"]["statement_balance"]
    assert warned["published"] and lenient_result.warnings and lenient_result.raw is not None  # Data Docs still


def test_data_docs_need_no_network_and_link_only_to_their_own_files(validator, tmp_path):
    import re

    from ledger_pipelines.validation import write_data_docs

    ok = validator.run("ledger_snapshot", snapshot_frame(_rows()), {"days": [DAY], "assets": ["EUR"]})
    bad = validator.run("ledger_snapshot", snapshot_frame(_rows(direction="up")), {"days": [DAY], "assets": ["EUR"]})
    index = write_data_docs({"expectations": ok, "failed_one": bad}, tmp_path / "docs", "core_banking")
    pages = sorted((tmp_path / "docs").glob("*.html"))
    assert [p.name for p in pages] == ["expectations.html", "failed_one.html", "index.html"] and index == pages[-1]
    for page in pages:
        html = page.read_text()
        assert not re.search(r"https?://", html), page.name  # no CDN, no site, no newsletter
        assert "<style>" in html
        for target in re.findall(r'(?:href|src)="([^"#]+)"', html) + re.findall(r"href='([^'#]+)'", html):
            assert (page.parent / target).is_file(), (page.name, target)
    assert "up" in (tmp_path / "docs" / "failed_one.html").read_text()  # the failed value is still shown


def test_data_docs_that_fail_to_render_leave_no_empty_folder(validator, tmp_path, monkeypatch):
    """The folder appears only with its pages: an empty one copied into a day report would make verify refuse it."""
    from great_expectations.render.renderer import ValidationResultsPageRenderer

    from ledger_pipelines.validation import write_data_docs

    ok = validator.run("ledger_snapshot", snapshot_frame(_rows()), {"days": [DAY], "assets": ["EUR"]})

    def broken(self, *a, **k):
        raise RuntimeError("renderer broke")

    monkeypatch.setattr(ValidationResultsPageRenderer, "render", broken)
    with pytest.raises(RuntimeError, match="renderer broke"):
        write_data_docs({"expectations": ok}, tmp_path / "docs", "core_banking")
    assert not (tmp_path / "docs").exists()
