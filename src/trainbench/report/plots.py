"""The report's plots, each a function of aggregated figures: stacked time splits, C3's curves, training curves."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..figures import phase_columns
from .runs import Run

PHASE_NAMES = [c.removesuffix("_time_s") for c in phase_columns()]


def stacked_bars(
    path: Path,
    labels: list[str],
    parts: dict[str, list[float]],
    title: str,
    ylabel: str = "seconds per epoch (mean)",
    xlabel: str | None = None,
    slanted: bool = True,
) -> Path:
    """One bar per label, stacked from parts ({legend entry: a value per label}); saved to path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(exist_ok=True)
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(labels)), 4))
    bottom = [0.0] * len(labels)
    for lab, vals in parts.items():
        ax.bar(range(len(labels)), list(vals), bottom=bottom, label=lab)
        bottom = [b + v for b, v in zip(bottom, vals)]
    if slanted:
        ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
    else:
        ax.set_xticks(range(len(labels)), labels)
    ax.set(ylabel=ylabel, title=title, **({"xlabel": xlabel} if xlabel else {}))
    ax.legend(**({} if slanted else {"fontsize": 8}))
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_phases(t: pd.DataFrame, labels: list[str], out: Path) -> Path:
    parts = {ph: list(t[f"avg_{ph}_time_s"]) for ph in PHASE_NAMES}
    return stacked_bars(out / "compute_phases.png", labels, parts, "Where compute goes")


def plot_scaling(ok: pd.DataFrame, out: Path) -> Path:
    """Per world size: data, compute, the exposed communication (what backward waited for) and other. The
    all-reduce span runs inside backward, so it is in compute already and is not drawn apart."""
    g = (
        ok.groupby(["world_size", "batch_size"])[
            ["avg_data_time_s", "avg_compute_time_s", "avg_comm_exposed_s", "avg_other_time_s"]
        ]
        .mean()
        .reset_index()
    )
    labels = [f"{int(w)} x {int(b)}" for w, b in zip(g["world_size"], g["batch_size"])]
    parts = {
        "data": g["avg_data_time_s"],
        "compute (without exposed comm)": g["avg_compute_time_s"] - g["avg_comm_exposed_s"],
        "exposed communication": g["avg_comm_exposed_s"],
        "other": g["avg_other_time_s"],
    }
    return stacked_bars(
        out / "scaling.png",
        labels,
        parts,
        "Scaling: where the epoch goes",
        ylabel="seconds per epoch (mean over ranks)",
        xlabel="ranks x batch per rank",
        slanted=False,
    )


def plot_c3(agg: pd.DataFrame, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(exist_ok=True)
    a = agg.sort_values("workers")
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(a["workers"], a["total_data_time_s"], marker="o", color="tab:blue")
    left.set(xlabel="DataLoader workers", ylabel="data-loading time, s (sum over epochs)", title="C3: data loading")
    left.set_ylim(bottom=0)
    for c, lab in (
        ("total_compute_time_s", "compute"),
        ("total_other_time_s", "other"),
        ("total_epoch_time_s", "epoch"),
    ):
        right.plot(a["workers"], a[c], marker="o", label=lab)
    right.set(xlabel="DataLoader workers", ylabel="seconds (sum over epochs)", title="C3: the whole epoch")
    right.set_ylim(bottom=0)
    right.legend()
    path = out / "c3_workers.png"
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_epochs(done: list[Run], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(exist_ok=True)
    parts = {
        lab: [r.epochs[c].mean() for r in done]
        for c, lab in (("data_time_s", "data"), ("compute_time_s", "compute"), ("other_time_s", "other"))
    }
    paths = [stacked_bars(out / "time_split.png", [r.label() for r in done], parts, "Where the epoch goes")]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    per_batch = all(len(r.epochs) <= 1 for r in done)  # one epoch: a curve needs the batches
    for r in done:
        if per_batch and len(r.batches):
            x, loss, acc = r.batches["step"], r.batches["loss"], r.batches["acc"]
        else:
            x, loss, acc = r.epochs["epoch"] + 1, r.epochs["train_loss"], r.epochs["train_acc"]
        a1.plot(x, loss, marker="." if per_batch else "o", label=r.label())
        a2.plot(x, acc, marker="." if per_batch else "o", label=r.label())
    xlabel = "step (batch)" if per_batch else "epoch"
    a1.set(xlabel=xlabel, ylabel="train loss")
    a2.set(xlabel=xlabel, ylabel="train top-1")
    a2.legend(fontsize=7)
    paths.append(out / "curves.png")
    fig.savefig(paths[-1], dpi=100, bbox_inches="tight")
    plt.close(fig)
    return paths
