"""`python -m trainbench.summarize DIR`: summary.csv, the lab's tables (C2-C7, Q1-Q4), findings, plots, report.md.

Runs are found by their run.json anywhere under DIR (report/runs.py). Only runs whose status is `complete`
enter a table or an average; the others are listed with their status and error. The report is a list of parts
(PARTS): each is one function of the runs returning its markdown, tables, findings and plots, so adding a part
is one function plus one list entry. Every finding also goes to DIR/findings.json, with `significant` set from
the measured noise (see trainbench.report.stats).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .report.parts.compute import part_compute
from .report.parts.lab import _group_part, part_c2, part_c3, part_c4
from .report.parts.overview import part_all_runs, part_plots, part_status
from .report.parts.q import part_q
from .report.parts.scaling import part_scaling
from .report.render import FLOAT_FORMAT
from .report.runs import (
    Context,
    PartOutput,
    Run,
    busy_reasons,
    find_runs,
    model_label,
    refused_jobs,
    run_row,
    varying_keys,
)
from .report.stats import Finding


@dataclass
class Summary:
    runs: list[Run]
    varying: list[str]
    table: pd.DataFrame
    summary_path: Path
    report_path: Path
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    refused: list[dict] = field(default_factory=list)


PARTS: list[Callable[[Context], PartOutput]] = [
    part_status,
    part_all_runs,
    part_c3,
    part_c4,
    _group_part("device", "c5_device", "C5: average epoch time per device", accuracy=False),
    _group_part("optimizer", "c6_optimizer", "C6: per optimizer", accuracy=True),
    _group_part("norm", "c7_norm", "C7: BatchNorm against none", accuracy=True),
    _group_part("model", "model", "Models: per model (model= / model.name=)", accuracy=True),
    part_compute,
    part_scaling,
    part_c2,
    part_q,
    part_plots,
]


def summarize(root: Path, inspect_models: bool = True) -> Summary:
    """Write summary.csv, findings.json, tables/*.csv, plots/*.png and report.md under root."""
    root = Path(root)
    runs = find_runs(root)
    varying = varying_keys(runs)
    table = pd.DataFrame([run_row(r) for r in runs])
    labels = [model_label(r.info.get("config") or {}) for r in runs]
    if len(table) and "model" not in table and set(labels) != {"resnet18"}:
        # not the lab's model: every row names it (the lab's reports stay as they were)
        table.insert(0, "model", labels)
    if len(table):
        why = busy_reasons(table)
        table["busy"] = [bool(w) for w in why]
        table["busy_why"] = why
    summary_path, report_path = root / "summary.csv", root / "report.md"
    table.to_csv(summary_path, index=False, float_format=FLOAT_FORMAT)
    done = [r for r in runs if r.status == "complete" and len(r.epochs)]
    ctx = Context(root, runs, done, table, varying, inspect_models)
    outputs = [part(ctx) for part in PARTS]
    findings = [f for o in outputs for f in o.findings]
    busy = [r.name for r, b in zip(runs, table["busy"] if len(table) else []) if b and r in done]
    if busy:
        for f in findings:
            _distrust(f, busy)
    tables = {k: v for o in outputs for k, v in o.tables.items()}
    plots = [p for o in outputs for p in o.plots]
    md = [
        f"# trainbench report: {root}",
        "",
        f"{len(runs)} run(s), {len(done)} complete. Settings that vary: {', '.join(varying) or 'none'}.",
        "",
    ]
    if set(labels) - {"resnet18"}:
        md[0] += f" ({', '.join(dict.fromkeys(labels))})"
    if findings:
        md += ["## Findings", "", *[f"- {f.text}" for f in findings], ""]
    for o in outputs:
        md += o.md
    if plots:
        md += ["## Plots", "", *[f"![{p.stem}](plots/{p.name})" for p in plots], ""]
    if tables:
        (root / "tables").mkdir(exist_ok=True)
        for name, t in tables.items():
            t.to_csv(root / "tables" / f"{name}.csv", index=False, float_format=FLOAT_FORMAT)
    (root / "findings.json").write_text(json.dumps([f.as_dict() for f in findings], indent=2, default=str) + "\n")
    report_path.write_text("\n".join(md))
    return Summary(runs, varying, table, summary_path, report_path, tables, findings, refused_jobs(root))


def _distrust(f: Finding, busy: list[str]) -> None:
    """A timing finding built on runs measured on a busy machine: said, and never crowned."""
    if "time" not in f.metric and f.metric not in ("diagnosis", "explanation"):
        return  # accuracy and loss do not depend on the machine's load
    f.text += (
        f" **Busy machine:** run(s) {', '.join(busy[:8])} were measured while other processes used the "
        "CPU (`busy_why` in summary.csv), so these times are not a fair comparison: re-run them on a quiet "
        "machine."
    )
    f.significant, f.winner = False, None


def main(argv: list[str] | None = None) -> int:
    """CLI: summarize a sweep dir or any tree of run dirs."""
    p = argparse.ArgumentParser(prog="python -m trainbench.summarize", description=__doc__.splitlines()[0])
    p.add_argument("dir", type=Path, help="a sweep dir (multirun/...) or any dir of run dirs")
    p.add_argument("--no-inspect", action="store_true", help="leave out the Q1-Q4 model facts")
    a = p.parse_args(argv)
    if not a.dir.is_dir():
        p.error(f"{a.dir} is not a directory")
    s = summarize(a.dir, inspect_models=not a.no_inspect)
    if not s.runs:
        print(f"no runs (no run.json) under {a.dir}", file=sys.stderr)
        return 1
    print(s.report_path.read_text())
    print(f"\nwrote {s.summary_path}, {a.dir / 'findings.json'} and {s.report_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
