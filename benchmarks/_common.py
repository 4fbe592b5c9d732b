"""Shared helpers for the benchmarks: medians, a plain-text table, CSV output, the machine's name."""

from __future__ import annotations

import csv
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from trainbench.device import cpu_model  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def machine(device: str = "cpu") -> str:
    """A one-line description of where the numbers come from."""
    import os

    import torch

    if device == "cuda":
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__})"
    return f"{cpu_model()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads (torch {torch.__version__})"


def median(xs: list[float]) -> float:
    """Median of repeated measurements."""
    return statistics.median(xs)


def table(rows: list[dict], title: str) -> str:
    """Rows as an aligned markdown table."""
    cols = list(rows[0])

    def fmt(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    widths = {c: max(len(c), *(len(fmt(r[c])) for r in rows)) for c in cols}
    lines = [f"### {title}", "", "| " + " | ".join(c.ljust(widths[c]) for c in cols) + " |",
             "|" + "|".join("-" * (widths[c] + 2) for c in cols) + "|"]  # fmt: skip
    lines += ["| " + " | ".join(fmt(r[c]).ljust(widths[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def write_csv(name: str, rows: list[dict]) -> Path:
    """Write rows to benchmarks/results/NAME.csv."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path
