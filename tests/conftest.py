"""Shared helpers: real Hydra composition, tiny fast configs, subprocess runs of train.py."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
# Tests never read or write the user's tuned presets (~/.cache/trainbench): a cache of their own, for this process
# and every subprocess it starts.
os.environ["TRAINBENCH_CACHE"] = tempfile.mkdtemp(prefix="trainbench-test-cache-")

# Small enough to train in a second on 2 CPU cores, real in every other respect.
TINY = [
    "data=synthetic",
    "data.train_size=64",
    "data.test_size=32",
    "batch_size=32",
    "model.width=8",
    "workers=0",
    "epochs=1",
    "progress=false",
]

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs the tests that time nothing on 2 xdist workers: one torch thread each (and in the train.py
    # subprocesses they start), so that 2 workers x 2 OpenMP threads do not oversubscribe a 2-core machine.
    # The timing tests (marker `timing`) run afterwards in one serial pass with the machine's own thread count.
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"


def compose(overrides: list[str] | None = None):
    """Compose the config exactly as train.py does."""
    from trainbench.questions import compose as _compose

    return _compose(list(overrides or []))


def train_cli(
    args: list[str], cwd: Path, timeout: float = 240, check: bool = False, **kw
) -> subprocess.CompletedProcess:
    """Run `python train.py ARGS` in a subprocess (cwd: a temp dir so outputs/ and multirun/ land there)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "0"}
    env.pop("TRAINBENCH_DATA", None)
    p = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        **kw,
    )
    if check and p.returncode != 0:
        raise AssertionError(f"train.py {' '.join(args)} exited {p.returncode}\n{p.stdout}\n{p.stderr}")
    return p


def popen_cli(args: list[str], cwd: Path) -> subprocess.Popen:
    """Start `python train.py ARGS` without waiting."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def pytest_collection_modifyitems(config, items):
    """Mark every test that starts a subprocess (train.py, python -m ...) as `cli`.

    mutmut's mutants live in its own copy of src/ and only reach in-process tests, so `make mutation`
    deselects these (-m "not cli"); the normal suite runs them all."""
    import inspect

    for item in items:
        fn = getattr(item, "function", None)
        try:
            src = inspect.getsource(fn) if fn is not None else ""
        except (OSError, TypeError):
            src = ""
        if any(s in src for s in ("train_cli(", "popen_cli(", "subprocess.")) or "reference" in item.fixturenames:
            item.add_marker(pytest.mark.cli)
