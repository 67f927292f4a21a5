"""``reconcile --out DIR`` replaces DIR whole when it is new, empty or an earlier output: nothing of a previous run
survives, a folder holding anything else (an input, a planted symlink, a user's files) is refused and left as it
was, and a failure leaves the previous result as it was."""

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


def test_an_earlier_output_is_replaced_and_nothing_of_it_survives(inputs, tmp_path, capsys):
    out = tmp_path / "out"
    assert _run(*inputs, out) == 0
    (out / "summary.json").write_text("an older run's\n")
    (out / "report.html").unlink()
    assert _run(*inputs, out) == 0
    assert sorted(_snapshot(out)) == ["breaks.jsonl", "matches.jsonl", "report.html", "summary.json"]
    assert json.loads((out / "summary.json").read_text())["break_type"] == {"missing_right": 1}
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no work folder left behind


def test_a_folder_holding_anything_else_is_refused_and_left_as_it_was(inputs, tmp_path, capsys):
    out = tmp_path / "out"
    assert _run(*inputs, out) == 0
    (out / "stale.jsonl").write_text("a user's file\n")
    (out / "notes").mkdir()
    before = _snapshot(out)
    assert _run(*inputs, out) == 2
    err = capsys.readouterr().err
    assert "holds notes, stale.jsonl, not only an earlier output" in err and "give a new or empty folder" in err, err
    assert _snapshot(out) == before and (out / "notes").is_dir()


def test_a_planted_symlink_is_never_followed(inputs, tmp_path, capsys):
    out = tmp_path / "out"
    assert _run(*inputs, out) == 0
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    for name in (".matches.jsonl.tmp", "matches.jsonl"):
        target = out / name
        if target.exists():
            target.unlink()
        target.symlink_to(victim)
    assert _run(*inputs, out) == 2
    assert ".matches.jsonl.tmp, matches.jsonl" in capsys.readouterr().err
    assert victim.read_text() == "precious" and (out / "matches.jsonl").is_symlink()
    # --out itself a symlink: the link is replaced, its target left alone
    link = tmp_path / "link"
    link.symlink_to(victim)
    assert _run(*inputs, link) == 0
    assert victim.read_text() == "precious" and link.is_dir() and not link.is_symlink()


@pytest.mark.parametrize("where", ["inputs' folder", "an input", "above the inputs", "a file", "root"])
def test_an_out_that_would_destroy_an_input_or_a_file_is_refused(inputs, tmp_path, capsys, where):
    left, right = inputs
    out = {"inputs' folder": tmp_path, "an input": left, "above the inputs": tmp_path.parent,
           "a file": tmp_path / "notes.txt", "root": Path("/")}[where]
    (tmp_path / "notes.txt").write_text("precious")
    before = _snapshot(tmp_path)
    assert _run(left, right, out) == 2
    err = capsys.readouterr().err
    reason = {"a file": "a file, not a folder", "root": "the file system's root"}.get(where, "which writing the output "
                                                                                         "would remove")
    assert err.startswith(f"reconcile: --out {out}: ") and reason in err, err
    assert _snapshot(tmp_path) == before


def test_an_out_that_cannot_be_written_is_a_reason_not_a_traceback(inputs, tmp_path, capsys):
    blocker = tmp_path / "plain-file"
    blocker.write_text("x")
    assert _run(*inputs, blocker / "out") == 1
    err = capsys.readouterr().err
    assert err.startswith(f"reconcile: cannot write --out {blocker / 'out'}: ") and "Traceback" not in err, err


def test_a_failure_leaves_the_previous_result_whole(inputs, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    assert _run(*inputs, out) == 0
    before = _snapshot(out)
    from ledger_pipelines.reconcile import output

    def broken(*_a, **_k):
        raise OSError("disk full")

    monkeypatch.setattr(output, "render_html", broken)
    assert _run(*inputs, out) == 1
    assert "cannot write --out" in capsys.readouterr().err
    assert _snapshot(out) == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
