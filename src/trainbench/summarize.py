"""`python -m trainbench.summarize DIR`: summary.csv, the lab's tables (C2-C7, Q1-Q4), plots and report.md.

Runs are found by their run.json anywhere under DIR. Only runs whose status is `complete` enter a table or
an average; the others are listed with their status and error.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

from .records import EPOCH_COLUMNS, read_json, read_rows

log = logging.getLogger("trainbench")

# Flattened config keys shown under a short name when they vary across runs.
SHORT = {"device.name": "device", "optimizer.name": "optimizer", "norm.name": "norm", "data.name": "data",
         "loader.name": "loader"}  # fmt: skip
GROUPS = ("device", "optimizer", "norm", "data", "loader")
IGNORED = ("faults.", "progress", "resume.", "checkpoint.", "data.root")
TIME_COLS = ["epoch_time_s", "data_time_s", "compute_time_s", "other_time_s"]


@dataclass
class Run:
    """One run dir as the summarizer sees it."""

    path: Path
    name: str
    status: str
    error: str | None
    info: dict
    epochs: pd.DataFrame
    settings: dict = field(default_factory=dict)


@dataclass
class Summary:
    runs: list[Run]
    varying: list[str]
    table: pd.DataFrame
    summary_path: Path
    report_path: Path
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {}
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = tuple(v) if isinstance(v, list) else v
    return out


def find_runs(root: Path) -> list[Run]:
    """Every run dir under root (a dir holding run.json), in natural order of their paths."""

    def key(p: Path) -> list:
        return [int(s) if s.isdigit() else s for s in p.relative_to(root).parts]

    runs = []
    for rj in sorted(root.rglob("run.json"), key=lambda p: key(p.parent)):
        info = read_json(rj) or {"status": "unreadable", "error": "run.json could not be parsed"}
        rows = read_rows(rj.parent / "epochs.csv", EPOCH_COLUMNS)  # tolerates a truncated last line
        df = pd.DataFrame(rows, columns=EPOCH_COLUMNS).apply(pd.to_numeric, errors="coerce")
        name = str(rj.parent.relative_to(root)) if rj.parent != root else rj.parent.name
        runs.append(Run(rj.parent, name, str(info.get("status", "unknown")), info.get("error"), info, df))
    return runs


def _varying(runs: list[Run]) -> list[str]:
    flat = [_flatten(r.info.get("config") or {}) for r in runs]
    keys = sorted({k for f in flat for k in f})
    # a key varies when the runs that record it disagree (a failed job's run.json may record less)
    vary = [k for k in keys if len({repr(f[k]) for f in flat if k in f}) > 1 and not k.startswith(IGNORED)]
    groups_varying = {k.split(".")[0] for k in vary if k in SHORT}
    # keys inside a group whose choice varies are explained by the choice (e.g. optimizer.momentum)
    vary = [k for k in vary if k in SHORT or k.split(".")[0] not in groups_varying]
    for r, f in zip(runs, flat):
        r.settings = {SHORT.get(k, k): f.get(k) for k in vary}
    return [SHORT.get(k, k) for k in vary]


def run_row(r: Run) -> dict[str, Any]:
    """summary.csv's figures for one run."""
    e, env = r.epochs, r.info.get("environment") or {}
    row: dict[str, Any] = {**r.settings, "run": r.name, "status": r.status,
                           "device_name": env.get("device_name"), "epochs": len(e)}  # fmt: skip
    for c in TIME_COLS:
        row[f"total_{c}"] = e[c].sum() if len(e) else math.nan
        row[f"avg_{c}"] = e[c].mean() if len(e) else math.nan
    for c in ("train_loss", "train_acc"):
        row[f"avg_{c}"] = e[c].mean() if len(e) else math.nan
        row[f"final_{c}"] = e[c].iloc[-1] if len(e) else math.nan
    row["final_test_acc"] = e["test_acc"].iloc[-1] if len(e) else math.nan
    row["samples_per_s"] = (
        e["samples"].sum() / e["epoch_time_s"].sum() if len(e) and e["epoch_time_s"].sum() else math.nan
    )
    row["timing_mode"] = r.info.get("timing_mode")
    row["error"] = r.error
    return row


def best_workers(counts: list[int], data_times: list[float]) -> tuple[int, bool]:
    """The lab's rule: the worker count after which data-loading time stops decreasing.

    Returns (best, still_decreasing); still_decreasing means the largest count was still the fastest,
    so more workers should be tried.
    """
    pairs = sorted(zip(counts, data_times))
    for (c, t), (_, t_next) in zip(pairs, pairs[1:]):
        if t_next >= t:
            return c, False
    return pairs[-1][0], True


def _agg(df: pd.DataFrame, by: list[str], cols: list[str]) -> pd.DataFrame:
    """Mean (and std, when settings repeat over seeds) of cols per group."""
    g = df.groupby(by, sort=True, dropna=False)[cols]
    out = g.mean()
    n = g.size()
    if (n > 1).any():
        std = g.std().add_suffix("_std")
        out = out.join(std)
    out["runs"] = n
    return out.reset_index()


def _pm(df: pd.DataFrame, floatfmt: str = ".4g") -> pd.DataFrame:
    """Merge each column c with its c_std partner (settings repeated over seeds) into 'mean ± std' text."""
    out = df.copy()
    for c in [c for c in df.columns if f"{c}_std" in df.columns]:
        out[c] = [
            format(m, floatfmt) if pd.isna(sd) else f"{format(m, floatfmt)} ± {format(sd, floatfmt)}"
            for m, sd in zip(df[c], df[f"{c}_std"])
        ]
        out = out.drop(columns=f"{c}_std")
    return out


def _md(df: pd.DataFrame, floatfmt: str = ".4g") -> str:
    """A pandas frame as a markdown table (no tabulate dependency); mean ± std where seeds repeat."""
    df = _pm(df, floatfmt)
    cols = list(df.columns)

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "" if math.isnan(v) else format(v, floatfmt)
        return str(v)

    lines = ["| " + " | ".join(map(str, cols)) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def _c2(run: Run) -> pd.DataFrame:
    cols = [
        "epoch",
        "train_loss",
        "train_acc",
        *[c for c in ("data_time_s", "compute_time_s", "other_time_s", "epoch_time_s")],
    ]
    t = run.epochs[cols].copy()
    total = {"epoch": "Total", **{c: t[c].sum() for c in cols[3:]}, "train_loss": math.nan, "train_acc": math.nan}
    avg = {"epoch": "Avg", **{c: t[c].mean() for c in cols[1:]}}
    t["epoch"] = t["epoch"].astype(int).astype(str)
    return pd.concat([t, pd.DataFrame([total, avg])], ignore_index=True)


def _concurrency_warning(runs: list[Run]) -> str | None:
    spans = []
    for r in runs:
        try:
            a = datetime.fromisoformat(r.info["started_at"])
            b = datetime.fromisoformat(r.info.get("finished_at") or r.info["updated_at"])
        except (KeyError, TypeError, ValueError):
            continue
        spans.append((a, b, (r.info.get("environment") or {}).get("hostname"), r.name))
    overlaps = {
        (x[3], y[3])
        for i, x in enumerate(spans)
        for y in spans[i + 1 :]
        if x[2] == y[2] and x[0] < y[1] and y[0] < x[1]
    }
    if not overlaps:
        return None
    pairs = ", ".join(f"{a}/{b}" for a, b in sorted(overlaps)[:5])
    return (f"**Warning:** {len(overlaps)} pair(s) of runs ran at the same time on one machine ({pairs}); "
            "they competed for cores/GPU, so their times are not comparable.")  # fmt: skip


def summarize(root: Path, inspect_models: bool = True) -> Summary:
    """Write summary.csv, tables/*.csv, plots/*.png and report.md under root; return what was written."""
    root = Path(root)
    runs = find_runs(root)
    varying = _varying(runs)
    table = pd.DataFrame([run_row(r) for r in runs])
    summary_path, report_path = root / "summary.csv", root / "report.md"
    table.to_csv(summary_path, index=False)
    done = [r for r in runs if r.status == "complete" and len(r.epochs)]
    ok = table[table["status"] == "complete"] if len(table) else table
    by = [v for v in varying if v != "seed"]
    tables: dict[str, pd.DataFrame] = {}
    findings: list[str] = []
    md = [f"# trainbench report: {root}", "", f"{len(runs)} run(s), {len(done)} complete. Settings that vary: "
          f"{', '.join(varying) or 'none'}.", ""]  # fmt: skip

    if len(done) < len(runs):
        md += ["## Runs left out of every table (not complete)", ""]
        md += [_md(table[table["status"] != "complete"][["run", "status", "epochs", "error"]]), ""]
    warn = _concurrency_warning(done)
    if warn:
        md += [warn, ""]

    avg_cols = ["avg_epoch_time_s", "avg_data_time_s", "avg_compute_time_s", "avg_other_time_s",
                "total_data_time_s", "total_compute_time_s", "total_epoch_time_s", "avg_train_loss", "avg_train_acc",
                "final_train_acc", "final_test_acc", "samples_per_s"]  # fmt: skip
    if len(ok):
        md += ["## All runs", "", _md(ok[[*varying, "run", "epochs", *avg_cols[:4], "avg_train_loss", "avg_train_acc",
                                          "samples_per_s"]]), ""]  # fmt: skip

    if "workers" in by and len(ok):
        agg = _agg(
            ok, ["workers"], ["total_data_time_s", "total_compute_time_s", "total_epoch_time_s", "avg_epoch_time_s"]
        )
        best, more = best_workers(agg["workers"].tolist(), agg["total_data_time_s"].tolist())
        tables["c3_workers"] = agg
        md += ["## C3: data-loading time per worker count (summed over epochs)", "", _md(agg), ""]
        fastest = agg.loc[agg["total_data_time_s"].idxmin()]
        findings.append(
            f"Best worker count by the lab's rule (data-loading time stops decreasing after it): **{best}**"
            + (" (still decreasing at the largest count tried: try more workers)" if more else "")
            + f"; lowest data-loading time {fastest['total_data_time_s']:.3g} s with {int(fastest['workers'])} workers."
        )
        one = [r for r in done if r.settings.get("workers") == 1]
        bst = [r for r in done if r.settings.get("workers") == best]
        if one and bst and best != 1:
            a, b = one[0].epochs, bst[0].epochs
            t = pd.DataFrame({"epoch": a["epoch"].astype(int).astype(str)})
            for tag, e in (("1w", a), (f"{best}w", b)):
                for c in ("data_time_s", "compute_time_s", "epoch_time_s"):
                    t[f"{c}_{tag}"] = e[c].values[: len(t)]
            t = pd.concat(
                [t, pd.DataFrame([{"epoch": "Total", **t.iloc[:, 1:].sum()}, {"epoch": "Avg", **t.iloc[:, 1:].mean()}])]
            )
            tables["c4_profile"] = t
            md += [f"## C4: 1 worker against {best} workers, per epoch", "", _md(t), ""]
            findings.append(
                f"C4: with 1 worker data-loading took {a['data_time_s'].sum():.3g} s and compute "
                f"{a['compute_time_s'].sum():.3g} s; with {best} workers {b['data_time_s'].sum():.3g} s and "
                f"{b['compute_time_s'].sum():.3g} s."
            )
    if len(ok):
        for key, part, title in (("device", "c5_device", "C5: average epoch time per device"),
                                 ("optimizer", "c6_optimizer", "C6: per optimizer"),
                                 ("norm", "c7_norm", "C7: BatchNorm against none")):  # fmt: skip
            if key not in by:
                continue
            agg = _agg(ok, [key], ["avg_epoch_time_s", "avg_data_time_s", "avg_compute_time_s", "avg_train_loss",
                                   "avg_train_acc", "final_train_acc", "final_test_acc"])  # fmt: skip
            tables[part] = agg
            md += [f"## {title}", "", _md(agg), ""]
            fast, acc = agg.loc[agg["avg_epoch_time_s"].idxmin()], agg.loc[agg["avg_train_acc"].idxmax()]
            findings.append(
                f"{part[:2].upper()}: fastest {key} is **{fast[key]}** ({fast['avg_epoch_time_s']:.3g} s per epoch); "
                f"highest average training top-1 is **{acc[key]}** ({acc['avg_train_acc']:.3f})."
            )
            if key == "norm":
                # runs may differ in length (one stopped early): align on the epoch number, gaps stay empty
                per_epoch = pd.DataFrame(
                    {r.settings["norm"]: r.epochs.set_index("epoch")["train_acc"] for r in done[:4]}
                ).T
                per_epoch.columns = [f"epoch {int(c)}" for c in per_epoch.columns]
                md += ["Per-epoch training top-1:", "", _md(per_epoch.reset_index(names="norm")), ""]
            if key == "device" and len(agg) > 1:
                slow, quick = agg["avg_epoch_time_s"].max(), agg["avg_epoch_time_s"].min()
                findings.append(f"C5: the slowest device takes {slow / quick:.3g}x as long per epoch as the fastest.")
    # C2: per epoch, Total and Avg rows, for each complete run (at most 6 shown in the report)
    for i, r in enumerate(done):
        t = _c2(r)
        tables[f"c2_{r.name.replace('/', '_')}"] = t
        if i < 6:
            md += [f"## C2: time per epoch, run {r.name} {r.settings or ''}", "", _md(t), ""]

    if inspect_models and done:
        from .inspect import model_facts

        seen, facts = set(), []
        for r in done:
            c = r.info.get("config") or {}
            k = (c.get("norm", {}).get("name"), c.get("optimizer", {}).get("name"))
            if k in seen or len(seen) >= 5:
                continue
            seen.add(k)
            facts.append(model_facts(c))
        q = pd.DataFrame([{k: f[k] for k in ("norm", "optimizer", "conv_layers", "conv_layers_without_shortcut",
                                               "linear_in_features", "trainable_parameters", "gradients",
                                               "optimizer_state_tensors", "optimizer_state_elements")} for f in facts])  # fmt: skip
        tables["q1_q4"] = q
        (root / "inspect.json").write_text(json.dumps(facts, indent=2) + "\n")  # full facts, optimizer state included
        md += ["## Q1-Q4: the model", "", _md(q), ""]
    if findings:
        md[4:4] = ["## Findings", "", *[f"- {f}" for f in findings], ""]
    tables_dir, plots_dir = root / "tables", root / "plots"
    if tables:
        tables_dir.mkdir(exist_ok=True)
        for name, t in tables.items():
            t.to_csv(tables_dir / f"{name}.csv", index=False)
    plots = _plots(done, ok, varying, plots_dir) if done else []
    if plots:
        md += ["## Plots", "", *[f"![{p.stem}](plots/{p.name})" for p in plots], ""]
    report_path.write_text("\n".join(md))
    return Summary(runs, varying, table, summary_path, report_path, tables)


def _plots(done: list[Run], ok: pd.DataFrame, varying: list[str], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(exist_ok=True)
    paths = []

    def label(r: Run) -> str:
        return ", ".join(f"{k}={v}" for k, v in r.settings.items()) or r.name

    if "workers" in varying:
        agg = ok.groupby("workers")[["total_data_time_s", "total_compute_time_s", "total_epoch_time_s"]].mean()
        fig, ax = plt.subplots(figsize=(6, 4))
        for c, lab in (("total_data_time_s", "data loading"), ("total_compute_time_s", "compute"),
                       ("total_epoch_time_s", "epoch")):  # fmt: skip
            ax.plot(agg.index, agg[c], marker="o", label=lab)
        ax.set(xlabel="DataLoader workers", ylabel="seconds (sum over epochs)", title="C3: time against workers")
        ax.legend()
        paths.append(out / "c3_workers.png")
        fig.savefig(paths[-1], dpi=100, bbox_inches="tight")
        plt.close(fig)
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(done)), 4))
    names = [label(r) for r in done]
    bottom = [0.0] * len(done)
    for c, lab in (("data_time_s", "data"), ("compute_time_s", "compute"), ("other_time_s", "other")):
        vals = [r.epochs[c].mean() for r in done]
        ax.bar(range(len(done)), vals, bottom=bottom, label=lab)
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax.set_xticks(range(len(done)), names, rotation=30, ha="right", fontsize=8)
    ax.set(ylabel="seconds per epoch (mean)", title="Where the epoch goes")
    ax.legend()
    paths.append(out / "time_split.png")
    fig.savefig(paths[-1], dpi=100, bbox_inches="tight")
    plt.close(fig)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    for r in done:
        a1.plot(r.epochs["epoch"], r.epochs["train_loss"], marker="o", label=label(r))
        a2.plot(r.epochs["epoch"], r.epochs["train_acc"], marker="o", label=label(r))
    a1.set(xlabel="epoch", ylabel="train loss")
    a2.set(xlabel="epoch", ylabel="train top-1")
    a2.legend(fontsize=7)
    paths.append(out / "curves.png")
    fig.savefig(paths[-1], dpi=100, bbox_inches="tight")
    plt.close(fig)
    return paths


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
    print(f"\nwrote {s.summary_path} and {s.report_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
