"""Fixed fake sweeps (run dirs with known times) for the summarizer's golden test.

Each sweep is written by `write_sweep(kind, root)`: run.json + epochs.csv (+ batches.csv) with every column the
trainer writes, values from a fixed formula (no randomness, no clock), so that the report built from them is a
pure function of the summarizer's code."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from trainbench.figures import batch_columns, epoch_columns
from trainbench.report.simulate import config as _config  # one fake config for the golden and simulated sweeps

SWEEPS = ("workers_seeds", "optimizer_norm", "scaling", "c4_pair")


def _epoch_rows(n: int, data: float, compute: float, acc0: float, ws: int = 1, comm: float = 0.0) -> list[dict]:
    rows = []
    for i in range(n):
        jitter = 0.01 * ((i * 7 + int(data * 100)) % 5 - 2)  # fixed, small, different per epoch
        d, c, o = data + jitter, compute - jitter / 2, 0.05 + 0.001 * i
        ep = d + c + o
        fwd, bwd, opt, cp = 0.35 * c, 0.55 * c, 0.08 * c, 0.02 * c
        rows.append(
            {
                "epoch": i,
                "batches": 8,
                "samples": 256,
                "train_loss": 2.3 - 0.3 * i - acc0,
                "train_acc": acc0 + 0.1 * i,
                "test_loss": 2.2 - 0.25 * i,
                "test_acc": acc0 + 0.08 * i,
                "data_time_s": d,
                "compute_time_s": c,
                "other_time_s": o,
                "epoch_time_s": ep,
                "samples_per_s": 256 / ep,
                "eval_time_s": 0.3,
                "lr": 0.1,
                "copy_time_s": cp,
                "forward_time_s": fwd,
                "backward_time_s": bwd,
                "optimizer_time_s": opt,
                "skipped_steps": 0,
                "timing_mode": "sync",
                "achieved_tflops": 0.001 / c,
                "mfu": 0.01 / c,
                "profiled_steps": 0,
                "world_size": ws,
                "comm_time_s": comm if ws > 1 else "",
                "comm_exposed_s": comm / 4 if ws > 1 else "",
                "comm_bytes": 8 * 700000 if ws > 1 else "",
                "epoch_time_mean_s": ep,
                "data_time_max_s": d,
                "compute_time_max_s": c,
                "comm_time_max_s": comm if ws > 1 else "",
            }
        )
    return rows


def _write_run(d: Path, job: int, settings: dict, rows: list[dict], status: str = "complete") -> None:
    d.mkdir(parents=True)
    cfg = _config(settings)
    info = {
        "status": status,
        "error": None if status == "complete" else "RuntimeError: boom",
        "config": cfg,
        "environment": {"device_name": "CPU: golden", "hostname": "golden", "cpu_count": 2},
        "started_at": f"2026-01-01T00:{job:02d}:00",
        "finished_at": f"2026-01-01T00:{job:02d}:30",
        "timing_mode": "sync",
        "world_size": settings.get("dist.nproc", 1),
        "flops_per_image": 1.5e7,
    }
    (d / "run.json").write_text(json.dumps(info))
    with open(d / "epochs.csv", "w", newline="") as f:
        w = csv.DictWriter(f, epoch_columns())
        w.writeheader()
        for r in rows:
            w.writerow({c: r.get(c, "") for c in epoch_columns()})
    with open(d / "batches.csv", "w", newline="") as f:
        w = csv.DictWriter(f, batch_columns())
        w.writeheader()
        for r in rows:
            for b in range(8):
                w.writerow(
                    {
                        "epoch": r["epoch"],
                        "batch": b,
                        "step": r["epoch"] * 8 + b,
                        "size": 32,
                        "loss": r["train_loss"] + 0.01 * b,
                        "acc": r["train_acc"],
                        "data_time_s": r["data_time_s"] / 8,
                        "compute_time_s": r["compute_time_s"] / 8,
                        "skipped": 0,
                        "profiled": 0,
                        "rank": 0,
                    }
                )


def write_sweep(kind: str, root: Path) -> None:
    """One of SWEEPS as numbered job dirs under root."""
    job = 0

    def add(settings: dict, rows: list[dict], status: str = "complete") -> None:
        nonlocal job
        _write_run(root / str(job), job, settings, rows, status)
        job += 1

    if kind == "workers_seeds":  # C3 + C4 + C2 + compute, repeats over seeds
        for w, data in ((0, 4.0), (1, 2.5), (2, 1.2), (4, 1.3)):
            for seed in (0, 1, 2):
                add({"workers": w, "seed": seed}, _epoch_rows(3, data + 0.05 * seed, 3.0 + 0.1 * w, 0.2))
        add({"workers": 8, "seed": 0}, _epoch_rows(1, 1.0, 3.0, 0.2), status="failed")
    elif kind == "optimizer_norm":  # C6 + C7, one run each, two keys varying
        for opt, t, acc in (("sgd", 3.0, 0.30), ("adam", 3.4, 0.40), ("adagrad", 3.2, 0.35)):
            for norm, extra in (("batchnorm", 0.0), ("none", -0.4)):
                add({"optimizer.name": opt, "norm.name": norm}, _epoch_rows(3, 0.5, t + extra, acc - extra / 4))
    elif kind == "scaling":
        for nproc in (1, 2):
            for seed in (0, 1):
                add(
                    {"dist.nproc": nproc, "seed": seed},
                    _epoch_rows(
                        3, 0.2, 2.0 / nproc + 0.2 * (nproc - 1) + 0.02 * seed, 0.2, ws=nproc, comm=0.3 * (nproc - 1)
                    ),
                )
    elif kind == "c4_pair":
        for w, data in ((1, 3.0), (4, 0.8)):
            add({"workers": w}, _epoch_rows(3, data, 3.0 + 0.2 * w, 0.2))
    else:
        raise ValueError(kind)


def outputs(root: Path) -> dict[str, str]:
    """The files the golden test compares, as text with the sweep's own path replaced by <ROOT>."""
    files = [root / "summary.csv", root / "findings.json", root / "report.md", *sorted((root / "tables").glob("*.csv"))]
    return {str(p.relative_to(root)): p.read_text().replace(str(root), "<ROOT>") for p in files if p.is_file()}
