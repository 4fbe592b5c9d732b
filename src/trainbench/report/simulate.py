"""Simulated sweeps in memory (no files, no plots): the report's error rate and power, and the findings' invariants.

A run's epochs are drawn around a setting's means with a run-to-run spread (each run one replicate) and a smaller
epoch-to-epoch spread; `effect` moves one setting's compute (and so its epoch time) by a number of standard errors
of a difference between two settings' means. Everything goes through the real summarizer (trainbench.summarize.
analyze): every part, the comparison engine and the report's correction. benchmarks/report_error_rate.py prints
the rates; the tests assert them."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from ..figures import epoch_columns
from .runs import Run

SPREAD = 0.05  # run-to-run standard deviation of a run's mean epoch time (s); compute 3 s, data 1 s a epoch
# The sweeps of the lab's parts: key -> (its values, fixed settings, where an effect lands: the part of the epoch the
# key can move)
TV = {"model._target_": "trainbench.models.torchvision_model"}
KINDS = {
    "c3": ("workers", [0, 1, 2, 4], {}, "data"),
    "c6": ("optimizer.name", ["sgd", "nesterov", "adagrad", "adadelta", "adam"], {}, "optimizer"),
    "c7": ("norm.name", ["batchnorm", "none"], {}, "compute"),
    "model": ("model.name", ["resnet18", "resnet34"], TV, "compute"),
    "scaling": ("dist.nproc", [1, 2], {}, "compute"),
}
CLI_KEYS = ("optimizer.lr", "data.train_size", "loader.pin_memory")  # keys inside a group a sweep sets itself
SHARES = {"copy": 0.02, "forward": 0.35, "backward": 0.55, "optimizer": 0.08}


def epochs(rng: np.random.Generator, n: int, shift: float, where: str = "compute") -> pd.DataFrame:
    """n epoch rows: a run-to-run offset (`shift`: noise plus any effect, in seconds) on `where` (data, compute, or
    one phase), and small epoch-to-epoch noise."""
    rows = []
    for i in range(n):
        jitter = rng.normal(0, SPREAD / 5)
        phases = {ph: 3.0 * share * (1 + jitter / 3.0) for ph, share in SHARES.items()}
        if where in phases or where == "compute":
            for ph in phases if where == "compute" else [where]:
                phases[ph] += shift * (SHARES[ph] if where == "compute" else 1.0)
        c = sum(phases.values())
        d = 1.0 + rng.normal(0, SPREAD / 5) + (shift if where == "data" else 0.0)
        o = 0.05 + abs(rng.normal(0, 0.002))
        rows.append(
            {
                "epoch": i,
                "batches": 8,
                "samples": 256,
                "train_loss": 2.0 + rng.normal(0, 0.01),
                "train_acc": 0.3 + rng.normal(0, 0.01),
                "test_loss": 2.0,
                "test_acc": 0.3,
                "data_time_s": d,
                "compute_time_s": c,
                "other_time_s": o,
                "epoch_time_s": d + c + o,
                "samples_per_s": 256 / (d + c + o),
                "timing_mode": "sync",
                "world_size": 1,
                "comm_time_s": 0.0,
                "comm_exposed_s": 0.0,
                "comm_bytes": 0,
                "profiled_steps": 0,
                "clamped_s": 0.0,
                **{f"{ph}_time_s": v for ph, v in phases.items()},
            }
        )
    return pd.DataFrame(rows).reindex(columns=epoch_columns())


def config(settings: dict) -> dict:
    c = {
        "epochs": 3,
        "batch_size": 32,
        "seed": 0,
        "workers": 2,
        "precision": "fp32",
        "timing": "sync",
        "device": {"name": "cpu"},
        "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9},
        "norm": {"name": "batchnorm"},
        "model": {"width": 8, "num_classes": 10},
        "data": {"name": "synthetic", "root": "data", "train_size": 256},
        "loader": {"name": "torch"},
        "dist": {"nproc": 1, "nnodes": 1, "backend": "auto"},
    }
    for k, v in settings.items():
        node = c
        *path, last = k.split(".")
        for p in path:
            node = node.setdefault(p, {})
        node[last] = v
    return c


def run(name: str, settings: dict, ep: pd.DataFrame, status: str = "complete") -> Run:
    """A run as the summarizer sees it, in memory (its path does not exist: no batches, no profile)."""
    info = {
        "status": status,
        "config": config(settings),
        "environment": {"device_name": "sim", "cpu_count": 2},
        "world_size": int(settings.get("dist.nproc", 1)),
        "error": None if status == "complete" else "boom",
        "overrides": [f"{k}={v}" for k, v in settings.items() if k in CLI_KEYS],
    }
    r = Run(Path("/nonexistent") / name, name, status, info["error"], info, ep if status == "complete" else ep[:0])
    r._batches = pd.DataFrame()  # no batches.csv to read
    return r


def sweep(rng: np.random.Generator, kind: str, repeats: int, n_epochs: int = 3, effect: float = 0.0) -> list[Run]:
    """One sweep of `kind` with `repeats` seeds per setting (in the interleaved order a sweep runs them); effect (in
    standard errors of a difference of two settings' means) makes the last setting faster where the key acts."""
    key, values, fixed, where = KINDS[kind]
    se_diff = SPREAD * math.sqrt(2 / repeats)
    runs = []
    for seed in range(repeats):
        for j, v in enumerate(values):
            shift = rng.normal(0, SPREAD) - (effect * se_diff if j == len(values) - 1 else 0.0)
            runs.append(run(str(len(runs)), {**fixed, key: v, "seed": seed}, epochs(rng, n_epochs, shift, where)))
    return runs


def report(runs: list[Run]):
    """The real summarizer's findings for runs (every part, the engine, the report's correction), in memory."""
    from ..summarize import analyze

    return analyze(Path("/nonexistent"), runs, inspect_models=False, plots=False)
