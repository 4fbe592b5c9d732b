"""Shared helpers for the benchmarks: medians, a plain-text table, CSV output, the machine's name."""

from __future__ import annotations

import csv
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from trainbench.device import cpu_flags, cpu_model  # noqa: E402

KEY_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile")


def flags() -> str:
    """The CPU flags that decide bf16 and channels_last speed (avx2, avx512*, amx*), or 'flags unknown'."""
    have = [f for f in KEY_FLAGS if f in cpu_flags()]
    return "flags " + (" ".join(have) if have else "unknown")


RESULTS = Path(__file__).resolve().parent / "results"


def machine(device: str = "cpu") -> str:
    """A one-line description of where the numbers come from."""
    import os

    import torch

    if device == "cuda":
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__})"
    return (
        f"{cpu_model()}, {os.cpu_count()} cores, {flags()}, {torch.get_num_threads()} torch threads "
        f"(torch {torch.__version__})"
    )


def median(xs: list[float]) -> float:
    """Median of repeated measurements."""
    return statistics.median(xs)


def table(rows: list[dict], title: str) -> str:
    """Rows as an aligned markdown table."""
    cols = list(rows[0])

    def fmt(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    widths = {c: max(len(c), *(len(fmt(r[c])) for r in rows)) for c in cols}
    lines = [
        f"### {title}",
        "",
        "| " + " | ".join(c.ljust(widths[c]) for c in cols) + " |",
        "|" + "|".join("-" * (widths[c] + 2) for c in cols) + "|",
    ]
    lines += ["| " + " | ".join(fmt(r[c]).ljust(widths[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def write_csv(name: str, rows: list[dict], device: str = "cpu") -> Path:
    """Write rows to benchmarks/results/NAME.csv, each with the machine it was measured on (CPU flags included)."""
    RESULTS.mkdir(exist_ok=True)
    rows = [{**r, "machine": machine(device)} for r in rows]
    path = RESULTS / f"{name}.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path
