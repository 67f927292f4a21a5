"""The desk's lifecycle on real day reports: stable ids, four-eyes decisions, the next day honouring them,
and the report proving who decided what (plain Python: the same code the desk's pages call)."""

from __future__ import annotations

import json

import pytest

from corridor import D1, D2, D3, PAIR, PASSWORD, Corridor
from ledger_pipelines.audit import finish_report
from ledger_pipelines.desk.store import DeskError, Forbidden, NotFound
from ledger_pipelines.verify import prove, verify_report


@pytest.fixture
def corridor(tmp_path):
    c = Corridor(tmp_path)
    c.run(D1)
    c.users()
    return c


@pytest.fixture
def any_corridor(tmp_path, warehouse_url):
    """The corridor on SQLite and on PostgreSQL."""
    c = Corridor(tmp_path, warehouse_url)
    c.run(D1)
    c.users()
    yield c
    c.wh.dispose()


def _report(c, day):
    folder = c.reports / str(day)
    finish_report(folder, anchor=False)
    return folder


def _lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_a_day_opens_its_breaks_with_suggestions_explained(any_corridor):
    c = any_corridor
    a, b = c.break_of("bank:1"), c.break_of("chain:9")
    rows, total = c.desk.list_breaks({"reconciliation": PAIR.name})
    assert total == 3 and {r["shown_state"] for r in rows} == {"new"}
    sug = c.desk.detail(PAIR.name, a)["suggestions"]
    assert [s["candidate_id"] for s in sug] == [b]
    explain = sug[0]["explain"]
    assert explain["amount"]["this"] == "10.00" and explain["amount"]["candidate"] == "9.95"
    assert explain["time"]["hours_apart"] == 1.0 and explain["counterparty"]["points"] == 15
    assert sug[0]["score"] == sum(part["points"] for part in explain.values())
    # the same break keeps its id on the next day, a day older
    c.run(D2)
    rows2, _ = c.desk.list_breaks({"reconciliation": PAIR.name})
    assert {r["break_id"] for r in rows2} == {r["break_id"] for r in rows}
    assert {r["shown_state"] for r in rows2} == {"open"} and {r["last_seen"] for r in rows2} == {str(D2)}


def test_four_eyes_and_roles_are_enforced(corridor):
    c = corridor
    a, b, keep = c.break_of("bank:1"), c.break_of("chain:9"), c.break_of("bank:2")
    with pytest.raises(Forbidden):
        c.desk.propose_match("aud", PAIR.name, [a, b], "auditors read only")
    d = c.desk.propose_match("anna", PAIR.name, [a, b], "fee taken on chain")
    with pytest.raises(Forbidden, match="four-eyes"):
        c.desk.approve("anna", d)
    with pytest.raises(Forbidden):
        c.desk.approve("olga", d)  # an operator proposes, an approver decides
    with pytest.raises(DeskError, match="already has a proposal"):
        c.desk.propose_acceptance("olga", PAIR.name, a, "twice", D3)
    with pytest.raises(DeskError, match="both sides"):
        c.desk.propose_match("olga", PAIR.name, [keep], "one side only")
    with pytest.raises(NotFound):
        c.desk.detail(PAIR.name, "b-00000000000000000000")
    c.desk.approve("bert", d)
    with pytest.raises(DeskError, match="approved, not waiting"):
        c.desk.approve("bert", d)
    trail = c.desk.events()
    assert [(e["actor"], e["action"]) for e in trail if e["decision_id"] == d] == [
        ("anna", "propose"), ("anna", "propose"), ("bert", "approve"), ("bert", "approve")]
    after = json.loads(trail[-1]["after"])
    assert after["state"] == "matched" and json.loads(trail[-1]["before"])["pending"] == d


def test_the_next_day_honours_the_decisions_and_verify_proves_who_decided(any_corridor):
    c = any_corridor
    a, b, keep = c.break_of("bank:1"), c.break_of("chain:9"), c.break_of("bank:2")
    root1 = json.loads((c.reports / str(D1) / "audit.json").read_text())["merkle_root"]
    m = c.desk.propose_match("olga", PAIR.name, [a, b], "fee taken on chain")
    c.desk.approve("anna", m)
    acc = c.desk.propose_acceptance("olga", PAIR.name, keep, "written off, see ticket 7", D2)
    c.desk.approve("bert", acc)
    c.desk.assign("olga", PAIR.name, keep, "olga")
    # the day the breaks were reported on stays as it was anchored
    c.run(D1)
    assert json.loads((c.reports / str(D1) / "audit.json").read_text())["merkle_root"] == root1
    audit = c.run(D2)
    folder = _report(c, D2)
    rec = audit["reconciliations"][PAIR.name]
    assert rec["match_type"] == {"manual": 1} and rec["break_type"] == {"missing_right": 1}
    (match,) = _lines(folder / PAIR.name / "matches.jsonl")
    assert match["match_type"] == "manual" and match["decision_id"] == m
    assert match["left_entry_ids"] == ["bank:1"] and match["right_entry_ids"] == ["chain:9"]
    (brk,) = _lines(folder / PAIR.name / "breaks.jsonl")
    assert brk["acceptance"] == {"decision_id": acc, "reason": "written off, see ticket 7", "expires": str(D2),
                                 "proposed_by": "olga", "approved_by": "bert"}
    decisions = _lines(folder / "decisions.jsonl")
    assert [(d["decision_id"], d["proposed_by"], d["approved_by"]) for d in decisions] == sorted(
        [(m, "olga", "anna"), (acc, "olga", "bert")])
    assert audit["decisions"] == {"manual_match": 1, "acceptance": 1}
    ok = verify_report(folder)
    assert ok["verified"] is True, ok
    proof = prove(folder, decision=acc)
    assert proof["leaf"]["decision"]["approved_by"] == "bert"
    # the desk follows: the matched pair is done, the accepted break is accepted
    assert c.desk.detail(PAIR.name, a)["state"] == "matched" and c.desk.detail(PAIR.name, a)["resolved_on"] == str(D2)
    assert c.desk.detail(PAIR.name, keep)["state"] == "accepted"
    # past its expiry the acceptance no longer holds, and the desk reopens the break (assigned: it has an owner)
    audit3 = c.run(D3)
    assert audit3["decisions"] == {"manual_match": 0, "acceptance": 0}
    assert "acceptance" not in _lines(c.reports / str(D3) / PAIR.name / "breaks.jsonl")[0]
    detail = c.desk.detail(PAIR.name, keep)
    assert detail["state"] == "assigned" and detail["history"][-1]["action"] == "reopen"
    assert verify_report(_report(c, D3))["verified"] is True


@pytest.mark.parametrize("tamper", ["approver", "self_approved", "drop_acceptance", "drop_decision", "extra_decision"])
def test_a_report_whose_decisions_were_altered_does_not_verify(corridor, tamper):
    from ledger_pipelines.audit import committed_files
    from ledger_pipelines.commitment import canonical, pretty

    c = corridor
    a, b, keep = c.break_of("bank:1"), c.break_of("chain:9"), c.break_of("bank:2")
    m = c.desk.propose_match("olga", PAIR.name, [a, b], "fee taken on chain")
    c.desk.approve("anna", m)
    acc = c.desk.propose_acceptance("olga", PAIR.name, keep, "written off", D3)
    c.desk.approve("bert", acc)
    c.run(D2)
    folder = _report(c, D2)
    dec = folder / "decisions.jsonl"
    lines = _lines(dec)
    if tamper == "approver":
        lines[0]["approved_by"] = "mallory"
    elif tamper == "self_approved":
        lines[0]["approved_by"] = lines[0]["proposed_by"]
    elif tamper == "extra_decision":
        lines.append({**lines[-1], "decision_id": "d-ffffffffffffffffffff"})
    elif tamper == "drop_decision":
        lines = [d for d in lines if d["kind"] != "manual_match"]
    if tamper == "drop_acceptance":
        path = folder / PAIR.name / "breaks.jsonl"
        recs = _lines(path)
        recs[0].pop("acceptance")
        path.write_bytes(b"".join(canonical(r) + b"\n" for r in recs))
    else:
        dec.write_bytes(b"".join(canonical(d) + b"\n" for d in lines))
    # an adversary who also rewrites the digests of audit.json still fails on the root, and on the decision rules
    audit = json.loads((folder / "audit.json").read_text())
    audit["files"] = committed_files(folder)
    (folder / "audit.json").write_bytes(pretty(audit))
    out = verify_report(folder)
    assert out["verified"] is False
    assert "merkle_root" in out["reason"] or "decision" in out["reason"] or "acceptance" in out["reason"]
    if tamper == "self_approved":
        assert "approved their own proposal" in out["reason"]
    if tamper in ("drop_acceptance", "drop_decision", "extra_decision"):
        assert any(k in out["reason"] for k in ("without its decision", "honoured by no record", "decisions is"))


def test_users_are_checked_and_passwords_are_hashed(corridor):
    c = corridor
    with pytest.raises(DeskError, match="exists"):
        c.desk.add_user("olga", "operator", PASSWORD)
    with pytest.raises(DeskError, match="role"):
        c.desk.add_user("zed", "admin", PASSWORD)
    with pytest.raises(DeskError, match="user name"):
        c.desk.add_user("Robert'); DROP TABLE x;--", "operator", PASSWORD)
    with pytest.raises(DeskError, match="shorter"):
        c.desk.add_user("zed", "operator", "short")
    assert c.desk.authenticate("olga", PASSWORD)[0] == "operator"
    assert c.desk.authenticate("olga", PASSWORD + "x") is None and c.desk.authenticate("nobody", PASSWORD) is None
    from sqlalchemy import text

    with c.wh.engine.connect() as conn:
        stored = conn.execute(text("SELECT password_hash FROM desk_users WHERE name = 'olga'")).scalar()
    assert stored.startswith("scrypt$") and PASSWORD not in stored
    c.desk.remove_user("olga")
    assert c.desk.role_of("olga") is None


def test_priorities_and_auto_confirm_follow_the_configuration(tmp_path):
    from datetime import date

    from ledger_pipelines.config import ConfigError
    from ledger_pipelines.desk.policy import DeskSettings, amount_key

    keys = ["0", "0.5", "9.95", "10", "10.00001", "100", "99999999999999999999999.1"]
    assert sorted(keys, key=amount_key) == keys and amount_key("1.50") == amount_key("1.5")
    s = DeskSettings.from_document({"desk": {"priorities": [{"tier": "urgent", "min_amount": "10", "due_hours": 4},
                                                            {"tier": "later", "due_hours": 48}],
                                             "auto_confirm": {"enabled": True, "min_score": 80}}})
    with pytest.raises(ConfigError, match="last tier"):
        DeskSettings.from_document({"desk": {"priorities": [{"tier": "x", "min_amount": "1", "due_hours": 1}]}})
    with pytest.raises(ConfigError, match="min_amount"):
        DeskSettings.from_document({"desk": {"priorities": [{"tier": "x", "min_amount": 1.5, "due_hours": 1},
                                                            {"tier": "y", "due_hours": 2}]}})
    c = Corridor(tmp_path)
    c.desk.settings = s
    from ledger_pipelines.audit import run_day
    from corridor import LEDGERS

    audit = run_day(c.wh, LEDGERS, [PAIR], D1, c.reports, s)
    assert audit["desk"]["auto_confirmed"] == 1  # bank:1 and chain:9 score 87, each the other's best
    (d,) = c.desk.decisions()
    assert d["proposed_by"] == d["decided_by"] == "system" and d["score"] == 87
    urgent, _ = c.desk.list_breaks({"priority": "urgent"}, today=date(2026, 11, 20))
    later, _ = c.desk.list_breaks({"priority": "later"}, today=date(2026, 11, 20))
    assert {r["amount"] for r in urgent} == {"10.00", "50.00"} and {r["amount"] for r in later} == {"9.95"}
    assert {r["priority"] for r in urgent} == {"urgent"} and {r["due"] for r in later} == {"2026-11-23T00:00:00Z"}
    ranged, n = c.desk.list_breaks({"min": "9.99", "max": "10"}, today=date(2026, 11, 20))
    assert n == 2 and {r["amount"] for r in ranged} == {"10.00"}
    audit2 = run_day(c.wh, LEDGERS, [PAIR], D2, c.reports, s)
    assert audit2["reconciliations"][PAIR.name]["match_type"] == {"manual": 1}
    _report(c, D2)
    assert verify_report(c.reports / str(D2))["verified"] is True  # a system decision carries its score


def test_every_sort_and_filter_pages_through_the_same_breaks(warehouse):
    """Paged lists (the index walk, and the filtered read that sorts) give every matching break once, in order."""
    import random
    from decimal import Decimal

    from ledger_pipelines.desk.store import SORTS, Desk

    rng = random.Random(7)
    desk = Desk(warehouse)
    days = ["2026-11-18", "2026-11-19", "2026-11-20"]
    recs = []
    for i in range(240):
        amount = f"{rng.choice([0, 1, 9, 10, 99, 12345, 10**30])}.{rng.randrange(100):02d}"
        kind = rng.choice(["missing_left", "missing_right", "amount_mismatch"])
        recs.append({"break_id": f"b-{i:020x}", "break_type": kind, "left_entry_ids": [f"l:{i}"],
                     "right_entry_ids": [f"r:{i}"] if kind == "amount_mismatch" else [], "correlation_id": None,
                     "asset": rng.choice(["EUR", "USD"]), "left_amount": amount, "right_amount": None,
                     "difference": amount if kind == "amount_mismatch" else None, "reason": "x",
                     "first_seen": rng.choice(days)})
    desk.sync("2026-11-20", {"pair_a": recs[:150], "pair_b": recs[150:]}, carried=["pair_a", "pair_b"])
    for f in ({}, {"type": "missing_left"}, {"asset": "USD", "min": "10"}, {"reconciliation": "pair_b"}):
        everything, total = desk.list_breaks(f, "break_id", "asc", 1, 10_000)
        assert total == len(everything) > 0
        for sort in SORTS:
            for order in ("asc", "desc"):
                paged = []
                for page in range(1, total // 37 + 2):
                    rows, n = desk.list_breaks(f, sort, order, page, 37)
                    assert n == total
                    paged += rows
                ids = [(r["reconciliation"], r["break_id"]) for r in paged]
                assert sorted(ids) == sorted((r["reconciliation"], r["break_id"]) for r in everything), (f, sort)
                if sort in ("amount", "first_seen", "break_id", "type", "asset"):
                    field = {"amount": "amount", "type": "break_type"}.get(sort, sort)
                    key = (lambda r: Decimal(r[field])) if sort == "amount" else (lambda r: r[field])
                    want = sorted(paged, key=lambda r: (key(r), r["reconciliation"], r["break_id"]),
                                  reverse=order == "desc")
                    assert paged == want, (f, sort, order)


def _breaks_of(c, day):
    return {json.loads(x)["break_id"]: json.loads(x) for x in
            (c.reports / str(day) / PAIR.name / "breaks.jsonl").read_text().splitlines()}


def test_an_approved_match_the_day_cannot_apply_lapses_and_its_breaks_reopen(corridor):
    from corridor import leg
    from ledger_pipelines.warehouse.state import replace_snapshot

    c = corridor
    a, b = c.break_of("bank:1"), c.break_of("chain:9")
    d = c.desk.propose_match("olga", PAIR.name, [a, b], "fee taken on chain")
    c.desk.approve("anna", d)
    # bank:1's real counterpart arrives before the next run: the engine matches it, chain:9 stays missing
    replace_snapshot(c.wh, "chain", str(D2), [leg("chain", "10", "P1", "10.00", "credit", day=D2, hour=1)])
    audit = c.run(D2)
    assert audit["decisions"] == {"manual_match": 0, "acceptance": 0} and audit["desk"]["lapsed"] == 1
    assert _breaks_of(c, D2)[b]["break_type"] == "missing_left"
    assert c.desk.detail(PAIR.name, b)["shown_state"] == "open"  # on the desk again, not hidden as matched
    assert c.desk.detail(PAIR.name, a)["resolution"] == f"matched on {D2}"
    (dec,) = c.desk.decisions()
    assert dec["state"] == "lapsed" and dec["ended_on"] == str(D2)
    assert b in {r["break_id"] for r in c.desk.list_breaks({"state": "unresolved"})[0]}
    c.run(D3)  # and it does not come back later
    assert c.run(D3)["decisions"] == {"manual_match": 0, "acceptance": 0}
    assert verify_report(_report(c, D3))["verified"] is True


def test_a_proposal_cannot_be_approved_once_its_break_is_resolved(corridor):
    from corridor import leg
    from ledger_pipelines.warehouse.state import replace_snapshot

    c = corridor
    a, b = c.break_of("bank:1"), c.break_of("chain:9")
    d = c.desk.propose_match("olga", PAIR.name, [a, b], "fee taken on chain")
    replace_snapshot(c.wh, "chain", str(D2), [leg("chain", "10", "P1", "10.00", "credit", day=D2, hour=1)])
    c.run(D2)  # bank:1 is matched by the engine: the proposal is withdrawn
    assert {x["decision_id"]: x["state"] for x in c.desk.decisions()} == {d: "withdrawn"}
    with pytest.raises(DeskError, match="withdrawn, not waiting"):
        c.desk.approve("anna", d)
    assert c.desk.detail(PAIR.name, b)["state"] == "open" and c.desk.detail(PAIR.name, b)["pending"] is None
    # two proposals on one break cannot both stand, nor can a decision be approved twice at once
    d2 = c.desk.propose_acceptance("olga", PAIR.name, b, "fee", D3)
    with pytest.raises(DeskError):
        c.desk.propose_match("anna", PAIR.name, [b], "again")
    c.desk.approve("anna", d2)
    with pytest.raises(DeskError):
        c.desk.reject("bert", d2, "too late")


def test_a_rerun_of_an_older_day_keeps_what_later_days_matched(corridor):
    from corridor import leg
    from ledger_pipelines.warehouse.state import replace_snapshot

    c = corridor
    a = c.break_of("bank:1")
    replace_snapshot(c.wh, "chain", str(D2), [leg("chain", "10", "P1", "10.00", "credit", day=D2, hour=1)])
    c.run(D2)
    c.run(D1)  # a backfill of the older day
    assert c.desk.detail(PAIR.name, a)["state"] == "resolved"  # reported on D1 again, but matched on D2 since
    c.run(D3)
    assert a not in _breaks_of(c, D3)  # bank:1 is not carried again into D3
    assert c.desk.detail(PAIR.name, a)["resolution"] == f"matched on {D2}"


def test_breaks_later_data_cannot_close_are_not_carried_and_stay_open_on_the_desk(tmp_path):
    from corridor import leg
    from ledger_pipelines.warehouse.state import replace_snapshot

    c = Corridor(tmp_path)
    # a duplicate: two bank legs with the same key and amount
    replace_snapshot(c.wh, "bank", str(D1), [leg("bank", "4", "P4", "7.00", "debit"), leg("bank", "5", "P4", "7.00", "debit"),
                                            leg("bank", "1", "P1", "10.00", "debit")])
    replace_snapshot(c.wh, "chain", str(D1), [])
    c.run(D1)
    dup = next(b for b in _breaks_of(c, D1).values() if b["break_type"] == "duplicate_left")
    assert dup["left_entry_ids"] == ["bank:5"]
    c.run(D2)
    carried = {b["left_entry_ids"][0] for b in _breaks_of(c, D2).values()}
    assert carried == {"bank:1", "bank:4"}  # the missing counterparts are carried; the duplicate is that day's
    detail = c.desk.detail(PAIR.name, dup["break_id"])
    assert detail["shown_state"] in ("new", "open") and detail["last_seen"] == str(D1) and not detail["carried"]


def test_an_acceptance_and_a_match_of_one_break_give_a_report_that_verifies(tmp_path):
    """honour() takes manual matches first; an acceptance of a break they took is not listed."""
    from types import SimpleNamespace

    from ledger_pipelines.desk import decisions as dec
    from ledger_pipelines.reconcile.engine import Reconciliation

    brk = {"break_id": "b-1", "break_type": "amount_mismatch", "left_entry_ids": ["l:1"], "right_entry_ids": ["r:1"],
           "correlation_id": "P", "asset": "EUR", "left_amount": "1", "right_amount": "2", "difference": "1",
           "reason": "x"}
    common = dict(reconciliation="r", break_ids=json.dumps(["b-1"]), left_entry_ids=json.dumps(["l:1"]),
                  right_entry_ids=json.dumps(["r:1"]), reason="x", effective_from="2026-11-20", state="approved",
                  proposed_by="a", proposed_at="t", decided_by="b", decided_at="t", score=None, ended_on=None,
                  ended_by=None)
    acc = SimpleNamespace(decision_id="d-0", kind="acceptance", expires="2026-12-31", **common)
    match = SimpleNamespace(decision_id="d-1", kind="manual_match", expires=None, **common)
    r = Reconciliation(matches=[], breaks=[dict(brk)])
    original = dec.approved
    try:
        dec.approved = lambda wh, name, day: [acc, match]  # the acceptance sorts first
        used = dec.honour(None, "r", "2026-11-21", r)
    finally:
        dec.approved = original
    assert [u["decision_id"] for u in used] == ["d-1"] and r.breaks == [] and r.matches[0].decision_id == "d-1"


def test_a_report_of_the_format_before_the_desk_still_verifies(corridor):
    """A day-report/2 folder (no decisions.jsonl) verifies as it did; /2 with decisions in it does not."""
    from ledger_pipelines import merkle
    from ledger_pipelines.audit import committed_files
    from ledger_pipelines.commitment import pretty
    from ledger_pipelines.reconcile.output import render_index
    from ledger_pipelines.verify import FORMAT_2, _Check, _check_contents

    c = corridor
    folder = _report(c, D1)
    audit = json.loads((folder / "audit.json").read_text())
    (folder / "decisions.jsonl").unlink()
    audit.pop("decisions")
    audit["format"] = FORMAT_2
    audit["files"] = committed_files(folder)
    (folder / "audit.json").write_bytes(pretty(audit))
    _, leaves = _check_contents(_Check(folder))
    audit["merkle_root"] = merkle.root(sorted(h for h, _ in leaves.values())).hex()
    (folder / "audit.json").write_bytes(pretty(audit))
    (folder / "index.html").write_text(render_index(audit))
    assert verify_report(folder)["verified"] is True
    (folder / "decisions.jsonl").write_text("")
    assert verify_report(folder)["verified"] is False


def test_a_decision_on_a_break_of_its_own_day_takes_effect_when_that_day_is_run_again(tmp_path):
    from corridor import leg
    from ledger_pipelines.warehouse.state import replace_snapshot

    c = Corridor(tmp_path)
    replace_snapshot(c.wh, "bank", str(D1), [leg("bank", "4", "P4", "7.00", "debit"), leg("bank", "5", "P4", "7.00", "debit")])
    replace_snapshot(c.wh, "chain", str(D1), [])
    c.run(D1)
    c.users()
    dup = next(b for b in _breaks_of(c, D1).values() if b["break_type"] == "duplicate_left")
    d = c.desk.propose_acceptance("olga", PAIR.name, dup["break_id"], "a known double posting, reversed in Q4", D1)
    c.desk.approve("anna", d)
    assert "acceptance" not in _breaks_of(c, D1)[dup["break_id"]]  # the anchored report of D1 is as it was
    audit = c.run(D1)
    assert audit["decisions"] == {"manual_match": 0, "acceptance": 1}
    assert _breaks_of(c, D1)[dup["break_id"]]["acceptance"]["decision_id"] == d
    assert verify_report(_report(c, D1))["verified"] is True
    assert c.desk.detail(PAIR.name, dup["break_id"])["state"] == "accepted"
