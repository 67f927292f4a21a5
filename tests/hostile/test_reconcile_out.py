"""``reconcile --out DIR`` replaces DIR whole: nothing of a previous run survives, nothing planted in DIR is
followed, and a failure leaves the previous result as it was."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest

from ledger_pipelines import cli
from ledger_pipelines.model import encode_entry, make_entry


def _entries(path: Path, ledger: str, amounts: list[str], direction: str) -> Path:
    rows = [make_entry(ledger=ledger, ledger_kind="sql", source_ref=str(i), correlation_id=f"P{i}", account="A",
                       asset="EUR", amount=a, direction=direction,
                       booked_at=datetime(2026, 11, 20, 12, tzinfo=timezone.utc), status="booked")
            for i, a in enumerate(amounts)]
    path.write_bytes(b"".join(encode_entry(e) + b"\n" for e in rows))
    return path


@pytest.fixture
def inputs(tmp_path):
    left = _entries(tmp_path / "left.jsonl", "bank", ["10.00", "20.00", "30.00"], "debit")
    right = _entries(tmp_path / "right.jsonl", "chain", ["10.00", "20.00"], "credit")
    return left, right


def _run(left, right, out) -> int:
    return cli.main(["reconcile", "--left", str(left), "--right", str(right), "--out", str(out)])


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_nothing_of_a_previous_result_survives(inputs, tmp_path, capsys):
    out = tmp_path / "out"
    assert _run(*inputs, out) == 0
    (out / "stale.jsonl").write_text("from an older run\n")
    (out / "notes").mkdir()
    assert _run(*inputs, out) == 0
    assert sorted(_snapshot(out)) == ["breaks.jsonl", "matches.jsonl", "report.html", "summary.json"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no work folder left behind


def test_a_planted_symlink_is_never_followed(inputs, tmp_path, capsys):
    out = tmp_path / "out"
    assert _run(*inputs, out) == 0
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    for name in (".matches.jsonl.tmp", ".breaks.jsonl.tmp", ".summary.json.tmp", ".report.html.tmp", "matches.jsonl"):
        target = out / name
        if target.exists():
            target.unlink()
        target.symlink_to(victim)
    assert _run(*inputs, out) == 0
    assert victim.read_text() == "precious"
    assert not any(p.is_symlink() for p in out.iterdir())
    assert json.loads((out / "summary.json").read_text())["break_type"] == {"missing_right": 1}  # the left-only entry


def test_a_failure_leaves_the_previous_result_whole(inputs, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    assert _run(*inputs, out) == 0
    before = _snapshot(out)
    from ledger_pipelines.reconcile import output

    def broken(*_a, **_k):
        raise OSError("disk full")

    monkeypatch.setattr(output, "render_html", broken)
    with pytest.raises(OSError, match="disk full"):
        _run(*inputs, out)
    assert _snapshot(out) == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
