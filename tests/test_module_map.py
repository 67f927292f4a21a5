"""docs/development.md's module map lists exactly the modules of the package."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_the_module_map_matches_the_tree():
    text = (REPO / "docs" / "development.md").read_text()
    section = text.split("## Module map", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"^\| `([\w/]+\.py)` \|", section, re.MULTILINE))
    tree = {p.relative_to(REPO / "ledger_pipelines").as_posix() for p in (REPO / "ledger_pipelines").rglob("*.py")}
    assert listed == tree, {"listed, not in the tree": sorted(listed - tree), "in the tree, not listed": sorted(tree - listed)}
