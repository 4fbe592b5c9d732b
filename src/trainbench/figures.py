"""The catalogue of figures: every number a run records, named once, with its unit, how it adds up over an epoch's
batches, how it combines across ranks, and which outputs carry it.

Batch records, epoch stats, the CSV columns (batches.csv, epochs.csv), the rank tally (one epochs.csv row from every
rank), the epoch log line, TensorBoard's batch scalars and summary.csv's per-run figures all derive from FIGURES. A
new figure is one `Figure(...)` entry: a measured one names its batch record key (the epoch loop fills it), a
derived one gives `derive` (computed from the batch record, or from the epoch row after the tally). Figures of your
own: a module that calls `register(Figure(...))`, named in the environment variable TRAINBENCH_FIGURES (comma-
separated modules, imported by every process of a run, DataLoader workers and ranks included).
"""

from __future__ import annotations

import importlib
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

# How an epoch adds up its batches (per rank).
SUM, WEIGHTED, COUNT, KEY, NONE, SET = "sum", "weighted", "count", "key", "none", "set"
# weighted: the mean over the epoch's images (a batch's value weighted by its size); count: the number of batches;
# key: the same in every batch (the epoch's number); none: a batch figure only; set: measured once per epoch
# (the epoch clock, the load meter), not from the batches.
# How ranks combine (the tally): mean, max, sum, first (the same on every rank), weighted (by images), RUN (set
# by the run on the tallied row: test figures, the learning rate, rates), DERIVED (computed from the tallied row).
MEAN, MAX, FIRST, RUN, DERIVED = "mean", "max", "first", "run", "derived"
# Outputs: batches.csv, epochs.csv (and so the rank tally and run.json's totals), TensorBoard's per-batch scalars.
BATCHES, EPOCHS, TB = "batches", "epochs", "tensorboard"


@dataclass(frozen=True)
class Figure:
    """One recorded number (or label)."""

    name: str  # the epoch row's key and epochs.csv's column (summary.csv's columns are built from it)
    unit: str  # s, images, batches, bytes, 1/s, TFLOP/s, 1 (a ratio or fraction), text
    doc: str
    batch: str | None = None  # its key in a batch record and batches.csv; None: an epoch figure only
    epoch: str = SUM  # how an epoch adds up its batches (SUM, WEIGHTED, COUNT, KEY, NONE, SET)
    ranks: str = MEAN  # how ranks combine (MEAN, MAX, SUM, FIRST, WEIGHTED, RUN, DERIVED)
    of: str | None = None  # a rank combination of another figure's per-rank values (data_time_max_s: max of data)
    derive: Callable[[dict], Any] | None = None  # batch figure: from the batch record; else from the tallied row
    default: Any = 0.0  # a batch figure's value when the step did not measure it (NaN: "not measured")
    outputs: tuple[str, ...] = (BATCHES, EPOCHS)
    summary: tuple[str, ...] = ()  # summary.csv: total, avg, avg0 (empty = 0), final, sum0, count, mean, max
    log: tuple[int, str] | None = None  # (group, format) in the epoch log line; groups are joined by " | "


def _other(r: dict) -> float:
    return max(0.0, r["epoch_time_s"] - r["data_time_s"] - r["compute_time_s"])


def _clamped(r: dict) -> float:
    # overlapping clocks: recorded (and logged, flagged), never silent
    return max(0.0, r["data_time_s"] + r["compute_time_s"] - r["epoch_time_s"])


def _rate(r: dict) -> float:
    return r["samples"] / r["epoch_time_s"] if r["epoch_time_s"] else math.nan


NAN = math.nan
PHASE_DOC = "compute's {} phase (phase_clocks=true; the four phases add up to compute_time_s)"

# The catalogue is a table, one figure per entry read as a row: the formatter leaves its layout alone.
# fmt: off
FIGURES: list[Figure] = [
    Figure("epoch", "", "the epoch, 0-based", batch="epoch", epoch=KEY, ranks=FIRST),
    Figure("batch", "", "the batch within the epoch, 0-based", batch="batch", epoch=NONE, outputs=(BATCHES,)),
    Figure("step", "", "the global optimizer step", batch="step", epoch=NONE, outputs=(BATCHES,)),
    Figure("batches", "batches", "batches trained this epoch (per rank)", epoch=COUNT, ranks=FIRST),
    Figure("samples", "images", "images trained (all ranks)", batch="size", ranks=SUM, default=0),
    Figure("train_loss", "1", "training loss, mean over the epoch's images", batch="loss", epoch=WEIGHTED,
           ranks=WEIGHTED, outputs=(BATCHES, EPOCHS, TB), summary=("avg", "final"), log=(1, "train loss {:.4f}")),
    Figure("train_acc", "1", "training top-1 accuracy", batch="acc", epoch=WEIGHTED, ranks=WEIGHTED,
           outputs=(BATCHES, EPOCHS, TB), summary=("avg", "final"), log=(1, "acc {:.4f}")),
    Figure("test_loss", "1", "test loss after the epoch (untimed)", ranks=RUN, log=(2, "test loss {:.4f}")),
    Figure("test_acc", "1", "test top-1 accuracy after the epoch", ranks=RUN, summary=("final",),
           log=(2, "acc {:.4f}")),
    Figure("data_time_s", "s", "waiting for the next batch (mean over ranks)", batch="data_time_s",
           outputs=(BATCHES, EPOCHS, TB), summary=("total", "avg"), log=(3, "data {:.2f}s")),
    Figure("compute_time_s", "s", "copy + forward + loss + backward + optimizer step, device synchronized",
           batch="compute_time_s", outputs=(BATCHES, EPOCHS, TB), summary=("total", "avg"), log=(3, "compute {:.2f}s")),
    Figure("other_time_s", "s", "epoch - data - compute (the slowest rank's epoch against the mean), floored at 0",
           ranks=DERIVED, derive=_other, summary=("total", "avg"), log=(3, "other {:.2f}s")),
    Figure("epoch_time_s", "s", "the whole epoch on its own clock (the slowest rank's)", epoch=SET, ranks=MAX,
           summary=("total", "avg"), log=(3, "epoch {:.2f}s")),
    Figure("samples_per_s", "1/s", "images per second of the epoch", ranks=DERIVED, derive=_rate,
           log=(4, "{:.0f} img/s")),
    Figure("eval_time_s", "s", "the test pass (outside every clock)", ranks=RUN),
    Figure("lr", "1", "the learning rate at the epoch's end", ranks=RUN),
    *(Figure(f"{p}_time_s", "s", PHASE_DOC.format(p), batch=f"{p}_time_s", default=NAN,
             outputs=(BATCHES, EPOCHS, TB), summary=("avg",)) for p in ("copy", "forward", "backward", "optimizer")),
    Figure("skipped_steps", "steps", "fp16: optimizer steps the grad scaler skipped", batch="skipped", ranks=FIRST,
           default=0),
    Figure("timing_mode", "text", "the clock: sync or events", ranks=RUN),
    Figure("achieved_tflops", "TFLOP/s", "counted FLOPs over compute time", ranks=RUN, summary=("avg",)),
    Figure("mfu", "1", "achieved over the devices' peak", ranks=RUN, summary=("avg",)),
    Figure("profiled_steps", "steps", "steps run under torch.profiler (profile=true)", batch="profiled", ranks=FIRST,
           default=0, summary=("count",)),
    Figure("rank", "", "the rank that trained the batch", batch="rank", epoch=NONE, default=0, outputs=(BATCHES,)),
    Figure("world_size", "ranks", "ranks of the run", ranks=RUN),
    Figure("comm_time_s", "s", "span of the steps' gradient all-reduces (inside backward)", batch="comm_time_s",
           summary=("avg0",)),
    Figure("comm_exposed_s", "s", "the part of it backward waited for", batch="comm_exposed_s", summary=("avg0",)),
    Figure("comm_bytes", "bytes", "gradient bytes all-reduced", batch="comm_bytes", ranks=FIRST, default=0,
           outputs=(EPOCHS,)),
    Figure("epoch_time_mean_s", "s", "the ranks' mean epoch time", of="epoch_time_s"),
    Figure("data_time_max_s", "s", "the slowest rank's data wait", of="data_time_s", ranks=MAX),
    Figure("compute_time_max_s", "s", "the slowest rank's compute", of="compute_time_s", ranks=MAX),
    Figure("comm_time_max_s", "s", "the longest rank's all-reduce span", of="comm_time_s", ranks=MAX),
    Figure("cpu_util", "1", "CPU seconds of the run's processes / (wall s x torch threads)", epoch=SET, default=NAN,
           summary=("mean",)),
    Figure("others_cpu", "1", "other processes' share of the machine's CPU", epoch=SET, ranks=MAX, default=NAN,
           summary=("max",)),
    Figure("load_avg", "1", "1-minute load average per core", epoch=SET, ranks=MAX, default=NAN, summary=("max",)),
    Figure("clamped_s", "s", "how far data + compute exceeded the epoch (overlapping clocks)", ranks=DERIVED,
           derive=_clamped, summary=("sum0",)),
    Figure("mfu_precision", "1", "achieved over the peak of the run's own precision", ranks=RUN),
    Figure("comm_busy_s", "s", "the all-reduce buckets' own times, overlaps counted once", batch="comm_busy_s",
           outputs=(EPOCHS,), summary=("avg0",)),
]
# fmt: on


def register(fig: Figure) -> None:
    """Add a figure to the catalogue (every output derives from it); a name already taken is an error."""
    if any(f.name == fig.name or (fig.batch and f.batch == fig.batch) for f in FIGURES):
        raise ValueError(f"figure {fig.name!r} (batch key {fig.batch!r}) is already in the catalogue")
    FIGURES.append(fig)


def _load_plugins() -> None:
    for mod in filter(None, (m.strip() for m in os.environ.get("TRAINBENCH_FIGURES", "").split(","))):
        importlib.import_module(mod)


def by_name(name: str) -> Figure:
    """The figure called name."""
    return next(f for f in FIGURES if f.name == name)


def batch_columns() -> list[str]:
    """batches.csv's columns."""
    return [f.batch for f in FIGURES if f.batch and BATCHES in f.outputs]


def epoch_columns() -> list[str]:
    """epochs.csv's columns."""
    return [f.name for f in FIGURES if EPOCHS in f.outputs]


def phase_columns() -> list[str]:
    """compute's phases (sum = compute_time_s)."""
    return [
        f.name for f in FIGURES if f.name in ("copy_time_s", "forward_time_s", "backward_time_s", "optimizer_time_s")
    ]


def tensorboard_batch_keys() -> list[str]:
    """The batch record keys TensorBoard plots per step."""
    return [f.batch for f in FIGURES if f.batch and TB in f.outputs]


class Record(dict):
    """A batch record or an epoch's stats: a dict whose figures read and write as attributes too."""

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None

    def __setattr__(self, key: str, value: Any) -> None:
        self[key] = value


def batch_record(**measured: Any) -> Record:
    """One batch's figures: what the step measured, the defaults of what it did not, then the derived ones."""
    rec = Record((f.batch, f.default) for f in FIGURES if f.batch and f.derive is None)
    rec.update(measured)
    for f in FIGURES:
        if f.batch and f.derive is not None:
            rec[f.batch] = f.derive(rec)
    return rec


class EpochStats(Record):
    """One rank's epoch: its batches added up per the catalogue, plus what is measured once per epoch (SET)."""

    def __init__(self, epoch: int) -> None:
        super().__init__()
        for f in FIGURES:
            if f.epoch in (SUM, WEIGHTED, COUNT) and (f.batch or f.epoch == COUNT):
                self[f.name] = 0 if f.epoch == COUNT or isinstance(f.default, int) else 0.0  # NaN defaults: added
            elif f.epoch == SET:
                self[f.name] = f.default
        self["epoch"] = epoch

    def add(self, rec: Record) -> None:
        """Count one finished batch into the epoch's figures."""
        size = rec["size"]
        for f in FIGURES:
            if f.epoch == COUNT:
                self[f.name] += 1
            elif f.batch is None or f.epoch not in (SUM, WEIGHTED):
                continue
            elif f.epoch == SUM:
                self[f.name] += rec[f.batch]
            else:  # a running mean over the epoch's images
                seen = self["samples"]  # samples is counted before the weighted figures (catalogue order)
                self[f.name] += (rec[f.batch] - self[f.name]) * size / seen if seen else 0.0

    @property
    def loss(self) -> float:
        return self["train_loss"]

    @property
    def acc(self) -> float:
        return self["train_acc"]


def tally(per_rank: list[dict[str, Any]]) -> dict[str, Any]:
    """One epochs.csv row from every rank's EpochStats (one entry without ranks), per each figure's rank rule;
    the RUN figures are left to the run, the DERIVED ones are computed last."""
    n, samples = len(per_rank), sum(s["samples"] for s in per_rank)
    combine: dict[str, Callable[[list], Any]] = {
        MEAN: lambda v: sum(v) / n,
        MAX: max,
        SUM: sum,
        FIRST: lambda v: v[0],
        WEIGHTED: lambda v: sum(x * s["samples"] for x, s in zip(v, per_rank)) / max(1, samples),
    }
    row: dict[str, Any] = {}
    for f in FIGURES:
        src = f.of or f.name
        if f.ranks in combine and src in per_rank[0]:
            row[f.name] = combine[f.ranks]([s[src] for s in per_rank])
    for f in FIGURES:
        if f.ranks == DERIVED and f.derive is not None:
            row[f.name] = f.derive(row)
    return row


def log_line(row: dict[str, Any], epochs: int) -> str:
    """The epoch's one line: 'epoch i/n' and each log group of the catalogue, joined by ' | '."""
    groups: dict[int, list[str]] = {}
    for f in sorted((f for f in FIGURES if f.log), key=lambda f: f.log[0]):
        groups.setdefault(f.log[0], []).append(f.log[1].format(row.get(f.name, math.nan)))
    return " | ".join([f"epoch {row['epoch'] + 1}/{epochs}", *(" ".join(g) for g in groups.values())])


def _summary_value(kind: str, v: Any) -> Any:
    """One summary.csv figure of a run from its epochs' column v (a float array; empty: the run has no epochs)."""
    if not len(v):
        return {"sum0": 0.0, "count": 0}.get(kind, math.nan)
    if kind == "final":
        return float(v[-1])
    if kind == "avg0":
        filled = v.copy()
        filled[v != v] = 0.0  # empty cells count as 0 (a run without ranks has no communication)
        return float(filled.mean())
    real = v[v == v]  # NaN (empty cells) left out, as pandas' skipna
    if kind in ("total", "sum0", "count"):
        return float(real.sum())
    if not len(real):
        return math.nan
    return float({"avg": real.mean, "mean": real.mean, "max": real.max}[kind]())


SUMMARY_NAME = {
    "total": "total_{}",
    "avg": "avg_{}",
    "avg0": "avg_{}",
    "final": "final_{}",
    "sum0": "{}",
    "count": "{}",
    "mean": "mean_{}",
    "max": "max_{}",
}


def summary_figures(epochs: Any) -> dict[str, Any]:
    """summary.csv's per-run figures from a run's epochs (a DataFrame of epochs.csv), per each figure's summary."""
    out: dict[str, Any] = {}
    for f in FIGURES:
        if f.summary:
            v = epochs[f.name].to_numpy(dtype=float)  # one conversion per column (the report's hot path)
            for kind in f.summary:
                out[SUMMARY_NAME[kind].format(f.name)] = _summary_value(kind, v)
    return out


# summary.csv's column order: the settings that vary come first; then these (the catalogue's figures and the run's
# own facts); then any catalogue figure not named here, in catalogue order.
SUMMARY_ORDER = (
    "run",
    "status",
    "device_name",
    "epochs",
    "total_epoch_time_s",
    "avg_epoch_time_s",
    "total_data_time_s",
    "avg_data_time_s",
    "total_compute_time_s",
    "avg_compute_time_s",
    "total_other_time_s",
    "avg_other_time_s",
    "avg_train_loss",
    "final_train_loss",
    "avg_train_acc",
    "final_train_acc",
    "final_test_acc",
    "data_share",
    "samples_per_s",
    "avg_copy_time_s",
    "avg_forward_time_s",
    "avg_backward_time_s",
    "avg_optimizer_time_s",
    "avg_achieved_tflops",
    "avg_mfu",
    "flops_per_image",
    "world_size",
    "batch_size",
    "avg_comm_time_s",
    "avg_comm_exposed_s",
    "avg_comm_busy_s",
    "comm_bytes_per_step",
    "steps_per_epoch",
    "profiled_steps",
    "timing_mode",
    "torch_threads",
    "clamped_s",
    "mean_cpu_util",
    "max_others_cpu",
    "max_load_avg",
    "error",
)


def in_summary_order(row: dict[str, Any], first: Iterable[str] = ()) -> dict[str, Any]:
    """row with the keys `first` (the settings), then SUMMARY_ORDER's, then the rest in their order."""
    keys = dict.fromkeys([*first, *(k for k in SUMMARY_ORDER if k in row), *row])
    return {k: row[k] for k in keys}


def totals(rows: list[dict[str, str]]) -> dict[str, float]:
    """run.json's totals over a run's epochs.csv rows (as read): total and average of each time, loss, accuracy."""
    out: dict[str, float] = {"epochs": len(rows)}
    if not rows:
        return out

    def floats(key: str) -> list[float]:
        return [float(r[key]) if r[key] != "" else math.nan for r in rows]

    for key in ("epoch_time_s", "data_time_s", "compute_time_s", "other_time_s"):
        vals = floats(key)
        out[f"total_{key}"] = sum(vals)
        out[f"avg_{key}"] = sum(vals) / len(vals)
    for key in ("train_loss", "train_acc", "test_loss", "test_acc"):
        vals = [v for v in floats(key) if not math.isnan(v)]
        out[f"avg_{key}"] = sum(vals) / len(vals) if vals else math.nan
        out[f"final_{key}"] = vals[-1] if vals else math.nan
    samples = sum(floats("samples"))
    out["samples_per_s"] = samples / out["total_epoch_time_s"] if out["total_epoch_time_s"] > 0 else math.nan
    return out


_load_plugins()
