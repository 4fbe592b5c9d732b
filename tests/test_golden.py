"""Golden test: fixed fake sweeps summarized give byte-identical summary.csv, findings.json, report.md and tables.

Written before the restructure, so that moving the report's code cannot change what it writes. When a change
means to alter the report, regenerate with `TRAINBENCH_REGEN_GOLDEN=1 pytest tests/test_golden.py` and say why in
the commit."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from golden_sweeps import SWEEPS, outputs, write_sweep
from trainbench.summarize import summarize

GOLDEN = Path(__file__).parent / "golden"


@pytest.mark.parametrize("kind", SWEEPS)
def test_summary_matches_golden(kind, tmp_path):
    root = tmp_path / kind
    write_sweep(kind, root)
    summarize(root, inspect_models=False)
    got = outputs(root)
    path = GOLDEN / f"{kind}.json"
    if os.environ.get("TRAINBENCH_REGEN_GOLDEN") == "1":
        path.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
    want = json.loads(path.read_text())
    assert sorted(got) == sorted(want), "a file is missing or new"
    for name in want:
        assert got[name] == want[name], f"{kind}/{name} differs from the golden copy"
