"""Run dirs as the summarizer sees them: found by their run.json, their settings that vary, summary.csv's row.

Only runs whose status is `complete` enter a table or an average; the others are listed with their status.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ..figures import batch_columns, epoch_columns, in_summary_order, summary_figures
from ..store.records import read_json, read_rows
from .stats import Finding, cell_key

SHORT = {
    "device.name": "device",
    "optimizer.name": "optimizer",
    "norm.name": "norm",
    "data.name": "data",
    "loader.name": "loader",
    "model.label": "model",
}


IGNORED = ("faults.", "progress", "resume.", "checkpoint.", "tune.")


TIME_COLS = ["epoch_time_s", "data_time_s", "compute_time_s", "other_time_s"]


TEXT_COLUMNS = ["timing_mode"]  # epochs.csv's non-numeric columns


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
    _batches: pd.DataFrame | None = None

    @property
    def batches(self) -> pd.DataFrame:
        """batches.csv as numbers (read on first use)."""
        if self._batches is None:
            cols = batch_columns()
            rows = read_rows(self.path / "batches.csv", cols)
            self._batches = pd.DataFrame(rows, columns=cols).apply(pd.to_numeric, errors="coerce")
        return self._batches

    def label(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.settings.items() if k != "seed") or self.name


@dataclass
class Context:
    """What every part sees: the runs, the summary table, and where plots go."""

    root: Path
    runs: list[Run]
    done: list[Run]  # complete runs with at least one epoch row
    table: pd.DataFrame  # one row per run (summary.csv)
    varying: list[str]
    inspect_models: bool = True
    confounded: list[tuple[str, ...]] = field(default_factory=list)  # keys that always vary together
    plots: bool = True  # false: findings and tables only (the simulations of the report's error rate)

    def free(self, key: str) -> bool:
        """key can be compared on its own: it does not always vary together with another key."""
        return not any(key in g for g in self.confounded)

    @property
    def by(self) -> list[str]:
        """Varying settings other than the seed (repeats)."""
        return [v for v in self.varying if v != "seed"]

    def others(self, key: str) -> list[str]:
        """The varying settings a comparison over key must match on (every one but key and the seed)."""
        return [v for v in self.by if v != key]

    @property
    def ok(self) -> pd.DataFrame:
        return self.table[self.table["status"] == "complete"] if len(self.table) else self.table

    def order(self, key: str) -> list[Any]:
        """The values of key among complete runs, in sweep (job) order."""
        return list(dict.fromkeys(r.settings.get(key) for r in self.done))

    def groups(self, key: str) -> list[tuple[Any, list[tuple[dict, pd.DataFrame, pd.DataFrame]]]]:
        """Per value of key (sweep order): (summary row, epochs, batches) of its complete runs."""
        rows = {r.name: row for r, row in zip(self.runs, self.table.to_dict("records"))}
        return [
            (v, [(rows[r.name], r.epochs, r.batches) for r in self.done if r.settings.get(key) == v])
            for v in self.order(key)
        ]

    def missing(self, key: str) -> list[str]:
        """Values of key that were asked for but did not complete, with their status."""
        have = set(self.order(key))
        out = []
        for r in self.runs:
            v = r.settings.get(key)
            if r not in self.done and v is not None and v not in have:
                out.append(f"{key}={v} ({r.status}{': ' + r.error if r.error else ''})")
        return out

    def classes(self) -> int:
        for r in self.done:
            n = ((r.info.get("config") or {}).get("model") or {}).get("num_classes")
            if n:
                return int(n)
        return 10


@dataclass
class PartOutput:
    md: list[str] = field(default_factory=list)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    plots: list[Path] = field(default_factory=list)


def confounded_groups(runs: list[Run], keys: list[str]) -> list[tuple[str, ...]]:
    """Groups of keys (2 or more) whose values determine each other across the complete runs: they always vary
    together (workers=0 with precision=fp32, workers=4 with precision=bf16), so no comparison can tell them apart."""
    rows = [[repr(r.settings.get(k)) for k in keys] for r in runs]
    groups: list[list[str]] = []
    for i, k in enumerate(keys):
        for g in groups:
            j = keys.index(g[0])
            n_i, n_j = len({row[i] for row in rows}), len({row[j] for row in rows})
            if n_i > 1 and len({(row[i], row[j]) for row in rows}) == n_i == n_j:
                g.append(k)
                break
        else:
            groups.append([k])
    return [tuple(g) for g in groups if len(g) > 1]


def in_cells(table: pd.DataFrame, match: list[str], cells: set) -> pd.DataFrame:
    """The rows of table whose values of the `match` keys form one of `cells` (stats.estimates' cell keys)."""
    if not len(table) or not match:
        return table
    keys = [cell_key(row, match) for row in table.to_dict("records")]
    return table[[k in cells for k in keys]]


def refused_jobs(root: Path) -> list[dict]:
    """Jobs of the latest sweep invocation that were refused (their run dir held other settings)."""
    out = [read_json(p) for p in sorted((root / ".refused").glob("*.json"))]
    return sorted((r for r in out if r), key=lambda r: int(r.get("job", 0)))


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {}
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = tuple(v) if isinstance(v, list) else v
    return out


def _run_files(root: Path) -> list[Path]:
    """Every run.json under root, symlinked folders followed (each real folder once, so a link loop ends)."""
    seen, out = set(), []
    for here, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(here)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        if "run.json" in files:
            out.append(Path(here) / "run.json")
        dirs[:] = [d for d in dirs if not d.startswith(".")]  # .submitit, .refused: no runs
    return out


def read_run(run_dir: Path, name: str) -> Run:
    """One run dir as the summarizer sees it (run.json and epochs.csv; batches.csv on first use)."""
    info = read_json(run_dir / "run.json") or {"status": "unreadable", "error": "run.json could not be parsed"}
    cols = epoch_columns()
    rows = read_rows(run_dir / "epochs.csv", cols)  # tolerates a truncated last line
    df = pd.DataFrame(rows, columns=cols)
    text = df[TEXT_COLUMNS].replace("", None)
    df = df.apply(pd.to_numeric, errors="coerce")
    df[TEXT_COLUMNS] = text
    return Run(run_dir, name, str(info.get("status", "unknown")), info.get("error"), info, df)


def find_runs(root: Path, prefix: str = "") -> list[Run]:
    """Every run dir under root (a dir holding run.json; symlinks followed), in natural order of their paths (= job
    order); names are paths relative to root, after `prefix` (the runs of several roots)."""

    def key(p: Path) -> list:
        return [(0, int(s), "") if s.isdigit() else (1, 0, s) for s in p.relative_to(root).parts]

    runs = []
    for rj in sorted(_run_files(root), key=lambda p: key(p.parent)):
        name = str(rj.parent.relative_to(root)) if rj.parent != root else rj.parent.name
        runs.append(read_run(rj.parent, f"{prefix}{name}" if prefix and rj.parent != root else prefix or name))
    return runs


def model_label(config: dict) -> str:
    """The run's model as the report names it (resnet18, torchvision/resnet50, timm/..., pkg.module.Class)."""
    from ..models import label

    m = config.get("model")
    return label(m) if isinstance(m, dict) else "resnet18"


def _flat(r: Run) -> dict[str, Any]:
    """A run's config flattened, plus model.label: one setting for the model, whatever keys its choice has."""
    c = r.info.get("config") or {}
    return {**flatten(c), "model.label": model_label(c)} if c else {}


# Keys a run resolves before it trains (from the data): null in the run.json of a job that failed before that, which
# is "not known", not another value.
RESOLVED_BY_THE_PLAN = ("model.num_classes", "data.image_size")


def _ignored(key: str, flat: list[dict[str, Any]]) -> bool:
    """Keys that never make a setting; data.root is one except where it names the dataset (data=imagefolder)."""
    if key == "data.root":
        return not any(f.get("data.name") == "imagefolder" for f in flat)
    return key.startswith(IGNORED)


def _values(key: str, runs: list[Run], flat: list[dict[str, Any]]) -> set[str]:
    known = [f[key] for r, f in zip(runs, flat) if key in f]
    if key in RESOLVED_BY_THE_PLAN:  # a failed job's unresolved null is unknown
        known = [
            v for (r, f) in zip(runs, flat) if key in f for v in [f[key]] if v is not None or r.status == "complete"
        ]
    return {repr(v) for v in known}


# Keys a choice is made of (model.label is built from model._target_ and model.name): never settings of their own.
CHOICE_IDENTITY = {"model.label": ("model._target_", "model.name")}


def _explained_by_choice(key: str, choice: str, flat: list[dict[str, Any]], runs: list[Run]) -> bool:
    """True when key inside a group takes one value per choice of the group and no run set it on the command line
    (optimizer.momentum per optimizer YAML): the choice explains it. A key that differs within one choice
    (optimizer.lr=0.1,0.01 with sgd), or that the command line set, is a setting (tied one-to-one to the choice, it is
    then reported as confounded with it)."""
    if key in CHOICE_IDENTITY.get(choice, ()):
        return True  # model.name is what model.label names: the choice itself
    if any(o.lstrip("+").startswith(f"{key}=") for r in runs for o in r.info.get("overrides") or []):
        return False
    per_choice: dict[str, set[str]] = {}
    for f in flat:
        if key in f:
            per_choice.setdefault(repr(f.get(choice)), set()).add(repr(f[key]))
    return all(len(v) == 1 for v in per_choice.values())


def varying_keys(runs: list[Run]) -> list[str]:
    """Every key whose value differs among the runs (a failed job's run.json may record less: the runs that record a
    key decide), as summary.csv's setting columns; keys inside a group whose choice varies are settings of their own
    unless the choice explains them."""
    flat = [_flat(r) for r in runs]
    keys = list(dict.fromkeys(k for f in flat for k in f))
    vary = [k for k in keys if len(_values(k, runs, flat)) > 1 and not _ignored(k, flat)]
    choice_of = {k.split(".")[0]: k for k in vary if k in SHORT}  # group -> its varying choice key
    group = lambda k: k.split(".")[0]  # noqa: E731
    vary = [
        k
        for k in vary
        if k in SHORT or group(k) not in choice_of or not _explained_by_choice(k, choice_of[group(k)], flat, runs)
    ]
    for r, f in zip(runs, flat):
        r.settings = {SHORT.get(k, k): f.get(k) for k in vary}
    return [SHORT.get(k, k) for k in vary]


def run_row(r: Run) -> dict[str, Any]:
    """summary.csv's figures for one run: the catalogue's (figures.summary_figures) and the run's own facts."""
    e, env = r.epochs, r.info.get("environment") or {}
    row: dict[str, Any] = {
        **r.settings,
        "run": r.name,
        "status": r.status,
        "device_name": env.get("device_name"),
        "epochs": len(e),
        **summary_figures(e),
    }
    total = e["epoch_time_s"].sum() if len(e) else 0
    row["data_share"] = e["data_time_s"].sum() / total if total else math.nan
    row["samples_per_s"] = e["samples"].sum() / total if total else math.nan  # the run's, over all its epochs
    row["flops_per_image"] = r.info.get("flops_per_image")
    row["world_size"] = int(r.info.get("world_size") or 1)
    row["batch_size"] = (r.info.get("config") or {}).get("batch_size")
    steps = e["batches"].sum() if len(e) else 0
    row["comm_bytes_per_step"] = e["comm_bytes"].fillna(0).sum() / steps if steps else math.nan
    row["steps_per_epoch"] = e["batches"].mean() if len(e) else math.nan
    row["timing_mode"] = "+".join(timing_modes(r)) or r.info.get("timing_mode")
    row["torch_threads"] = env.get("torch_threads")
    row["error"] = r.error
    return in_summary_order(row, first=r.settings)


BUSY_OTHERS = 0.25  # other processes used more than a quarter of the machine's CPU while an epoch ran
BUSY_UTIL_RATIO = 0.6  # the run's CPU utilisation below 0.6x the best of runs with the same threads and ranks


def busy_reasons(table: pd.DataFrame) -> list[str]:
    """Per summary row: why its run was measured on a busy machine ('' when it was not).

    Two signs, from each run's epoch rows (timing/machine.py): other processes' CPU use during the epochs (immediate),
    and CPU utilisation far below what runs of the same threads and world size got elsewhere in the sweep. The
    1-minute load average is recorded but not used: it lags by about a minute, so it would blame a run for the
    previous job of its own sweep."""
    out = []
    peers = table.groupby(["torch_threads", "world_size"], dropna=False)["mean_cpu_util"].transform("max")
    for (_, r), best in zip(table.iterrows(), peers):
        why = []
        if r.get("max_others_cpu", math.nan) > BUSY_OTHERS:
            why.append(f"other processes used {r['max_others_cpu']:.0%} of the machine's CPU during an epoch")
        if best > 0 and r.get("mean_cpu_util", math.nan) < BUSY_UTIL_RATIO * best:
            why.append(
                f"its CPU utilisation {r['mean_cpu_util']:.2f} was below {BUSY_UTIL_RATIO}x the "
                f"{best:.2f} of runs with the same threads and ranks"
            )
        out.append("; ".join(why))
    return out


def timing_modes(run: Run) -> list[str]:
    """The clocks a run's epochs were timed with (per epoch row; run.json's for rows written before that column)."""
    fallback = run.info.get("timing_mode")
    modes = [m if isinstance(m, str) else fallback for m in run.epochs["timing_mode"]] if len(run.epochs) else []
    return sorted({m for m in modes if m})


def core_count(ctx: Context) -> int | None:
    for r in ctx.done:
        n = (r.info.get("environment") or {}).get("cpu_count")
        if n:
            return int(n)
    return None
