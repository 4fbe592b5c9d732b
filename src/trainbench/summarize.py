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
import time
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
    confounded_groups,
    find_runs,
    model_label,
    refused_jobs,
    run_row,
    varying_keys,
)
from .report.stats import ALPHA, Finding, holm


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


@dataclass
class Analysis:
    """What a report says, before any file is written: the runs, summary table, context, parts and findings."""

    runs: list[Run]
    varying: list[str]
    table: pd.DataFrame
    ctx: Context
    outputs: list[PartOutput]
    findings: list[Finding]
    caveats: list[str]  # said once, above the findings
    tests: int  # the report's tests corrected together (Holm)
    labels: list[str]  # each run's model, as the report names it


def analyze(root: Path, runs: list[Run], inspect_models: bool = True, plots: bool = True) -> Analysis:
    """The report's content from runs (in memory: the simulations of its error rate call this without files)."""
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
    done = [r for r in runs if r.status == "complete" and len(r.epochs)]
    keys = [k for k in varying if k != "seed"]
    confounded = confounded_groups(done, keys) if done else []
    ctx = Context(root, runs, done, table, varying, inspect_models, confounded, plots)
    outputs = [part(ctx) for part in PARTS]
    findings = [f for o in outputs for f in o.findings]
    busy = [r.name for r, b in zip(runs, table["busy"] if len(table) else []) if b and r in done]
    caveats = []
    if busy and any([_distrust(f) for f in findings]):
        caveats.append(
            f"**Busy machine:** run(s) {', '.join(busy[:8])} were measured while other processes used the CPU "
            "(`busy_why` in summary.csv), so no timing finding below is a verdict (each is marked *busy*): re-run "
            "them on a quiet machine."
        )
    for g in confounded:
        caveats.append(
            f"**Confounded:** {', '.join(g)} always vary together in these runs, so no finding can tell their "
            "effects apart and none names a winner for any of them: vary one key at a time (the others fixed)."
        )
    tests = holm(findings)  # one error rate for the whole report
    if tests:
        caveats.append(
            f"Significance: Welch's t at {ALPHA:g}, two-sided, Holm-corrected over this report's {tests} test(s) "
            "together, so that with no real difference anywhere at most 5 % of reports name any winner. `winner` "
            "(findings.json) is set only for a significant finding; `leading` is the better-looking setting either way."
        )
    return Analysis(runs, varying, table, ctx, outputs, findings, caveats, tests, labels)


def summarize(root: Path, inspect_models: bool = True, sources: list[Path] | None = None) -> Summary:
    """Write summary.csv, findings.json, tables/*.csv, plots/*.png and report.md under root, for the runs under root
    (or, with sources, the runs under each of those dirs: existing runs compared without copying them)."""
    root = Path(root)
    if sources:
        root.mkdir(parents=True, exist_ok=True)
        runs = [r for src in sources for r in find_runs(Path(src), prefix=f"{Path(src)}/")]
    else:
        runs = find_runs(root)
    a = analyze(root, runs, inspect_models)
    runs, varying, table, findings, outputs = a.runs, a.varying, a.table, a.findings, a.outputs
    summary_path, report_path = root / "summary.csv", root / "report.md"
    table.to_csv(summary_path, index=False, float_format=FLOAT_FORMAT)
    done, labels = a.ctx.done, a.labels
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
        md += ["## Findings", "", *[f"{c}\n" for c in a.caveats], *[f"- {f.text}" for f in findings], ""]
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


def _distrust(f: Finding) -> bool:
    """A timing finding built on runs measured on a busy machine: marked (the caveat is said once, above the
    findings), and never crowned. Returns whether f is a timing finding."""
    if "time" not in f.metric and f.metric not in ("diagnosis", "explanation"):
        return False  # accuracy and loss do not depend on the machine's load
    f.text += " *(busy: see above)*"
    f.significant, f.winner, f.demoted = False, None, None
    return True


def main(argv: list[str] | None = None) -> int:
    """CLI: summarize a sweep dir or any tree of run dirs; several dirs are compared into --out."""
    p = argparse.ArgumentParser(prog="python -m trainbench.summarize", description=__doc__.splitlines()[0])
    p.add_argument("dirs", type=Path, nargs="+", help="a sweep dir (multirun/...), any dir of run dirs, or several")
    where = "where the report of several dirs goes (default: outputs/compare/<date>/<time>)"
    p.add_argument("--out", type=Path, default=None, help=where)
    p.add_argument("--no-inspect", action="store_true", help="leave out the Q1-Q4 model facts")
    a = p.parse_args(argv)
    for d in a.dirs:
        if not d.is_dir():
            p.error(f"{d} is not a directory")
    if len(a.dirs) == 1 and a.out is None:
        root, sources = a.dirs[0], None
    else:
        root = a.out or Path("outputs/compare") / time.strftime("%Y-%m-%d/%H-%M-%S")
        if root.is_dir() and any(root.rglob("run.json")):
            p.error(f"--out {root} holds runs of its own: choose an empty or new folder")
        sources = a.dirs
    s = summarize(root, inspect_models=not a.no_inspect, sources=sources)
    if not s.runs:
        print(f"no runs (no run.json) under {', '.join(map(str, a.dirs))}", file=sys.stderr)
        return 1
    print(s.report_path.read_text())
    print(f"\nwrote {s.summary_path}, {root / 'findings.json'} and {s.report_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
