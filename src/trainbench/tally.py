"""Per-epoch figures: one epochs.csv row from every rank's epoch stats, and the lab's totals over a run's rows."""

from __future__ import annotations

import math
from typing import Any

from .records import PHASE_COLUMNS, rows_as_floats


def epoch_row(per_rank: list[dict[str, Any]], phases: bool = True) -> dict[str, Any]:
    """epochs.csv's figures of one epoch from every rank's EpochStats (as dicts; one entry without ranks).

    Losses and accuracies are sample-weighted over ranks; epoch_time_s is the slowest rank's (the run waits
    for it); data, compute, comm and the phases are the mean over ranks, with their max beside them; other is
    the slowest epoch minus the mean data and compute (so it includes the ranks' imbalance)."""
    n = len(per_rank)
    samples = sum(s["samples"] for s in per_rank)

    def mean(k: str) -> float:
        return sum(s[k] for s in per_rank) / n

    def most(k: str) -> float:
        return max(s[k] for s in per_rank)

    row: dict[str, Any] = {
        "batches": per_rank[0]["batches"], "samples": samples,
        "train_loss": sum(s["loss_sum"] for s in per_rank) / max(1, samples),
        "train_acc": sum(s["correct"] for s in per_rank) / max(1, samples),
        "data_time_s": mean("data_time_s"), "compute_time_s": mean("compute_time_s"),
        "epoch_time_s": most("epoch_time_s"), "epoch_time_mean_s": mean("epoch_time_s"),
        "data_time_max_s": most("data_time_s"), "compute_time_max_s": most("compute_time_s"),
        "comm_time_s": mean("comm_time_s"), "comm_time_max_s": most("comm_time_s"),
        "comm_exposed_s": mean("comm_exposed_s"), "comm_busy_s": mean("comm_busy_s"),
        "comm_bytes": per_rank[0]["comm_bytes"], "skipped_steps": per_rank[0]["skipped_steps"],
        "profiled_steps": per_rank[0]["profiled_steps"],
        "cpu_util": mean("cpu_util"), "others_cpu": most("others_cpu"), "load_avg": most("load_avg"),
    }  # fmt: skip
    rest = row["epoch_time_s"] - row["data_time_s"] - row["compute_time_s"]
    row["other_time_s"] = max(0.0, rest)
    row["clamped_s"] = max(0.0, -rest)  # overlapping clocks: recorded (and logged, flagged), never silent
    row["samples_per_s"] = samples / row["epoch_time_s"] if row["epoch_time_s"] else math.nan
    for c in PHASE_COLUMNS:
        row[c] = mean(c) if phases else None
    return row


def totals(rows: list[dict[str, str]]) -> dict[str, float]:
    """The lab's cumulative figures over all epoch rows: total and average of each time, loss, accuracy."""
    out: dict[str, float] = {"epochs": len(rows)}
    if not rows:
        return out
    for key in ("epoch_time_s", "data_time_s", "compute_time_s", "other_time_s"):
        vals = rows_as_floats(rows, key)
        out[f"total_{key}"] = sum(vals)
        out[f"avg_{key}"] = sum(vals) / len(vals)
    for key in ("train_loss", "train_acc", "test_loss", "test_acc"):
        vals = [v for v in rows_as_floats(rows, key) if not math.isnan(v)]
        out[f"avg_{key}"] = sum(vals) / len(vals) if vals else math.nan
        out[f"final_{key}"] = vals[-1] if vals else math.nan
    samples = sum(rows_as_floats(rows, "samples"))
    out["samples_per_s"] = samples / out["total_epoch_time_s"] if out["total_epoch_time_s"] > 0 else math.nan
    return out
