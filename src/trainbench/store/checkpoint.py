"""End-of-epoch checkpoints: atomic writes, RNG capture/restore, and a config fingerprint to refuse mismatches."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from .records import atomic_write_bytes

log = logging.getLogger(__name__)

# Keys that may change between a run and its resumption without changing what is computed.
RESUMABLE_KEYS = (
    "epochs",
    "progress",
    "resume",
    "checkpoint",
    "faults",
    "timing",
    "test_eval",
    "phase_clocks",
    "profile",
    "profiler",
    "logger",
    "tune",
)
_NAME = re.compile(r"^checkpoint_epoch(\d+)\.pt$")


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used (unreadable, or from a different config)."""


class RunDirRefused(CheckpointError):
    """The run dir holds a run that this config may not continue or overwrite; nothing was changed."""


def training_config(cfg: DictConfig, device_type: str | None = None) -> dict:
    """The resolved config minus the keys that may change on resume, plus the resolved device type.

    device=auto resolves per machine: a run started on a GPU must not be continued on a CPU (one CSV would
    mix CPU and GPU epochs), so the device it resolved to is part of what a resume must match."""
    c = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(c, dict)
    for k in RESUMABLE_KEYS:
        c.pop(k, None)
    if c.get("data", {}).get("name") != "imagefolder":
        c.get("data", {}).pop("root", None)  # the same data may be moved (an image folder's root is its dataset)
    if c.get("data", {}).get("augment") == "lab":
        c["data"].pop("augment")  # the default, as before data.augment existed (older run dirs keep their fingerprint)
    dist = c.get("dist")
    if isinstance(dist, dict):
        for k in ("timeout_s", "threads"):  # how, not what, is computed
            dist.pop(k, None)
        if dist == {"nproc": 1, "nnodes": 1, "backend": "auto", "sync_bn": False}:
            c.pop("dist")  # one process: as before dist existed (older run dirs keep their fingerprint)
    if device_type is not None:
        c["resolved_device"] = device_type
    return c


def fingerprint(cfg: DictConfig, device_type: str | None = None) -> str:
    """A short hash of training_config(cfg, device_type)."""
    tc = training_config(cfg, device_type)
    return hashlib.sha256(json.dumps(tc, sort_keys=True, default=str).encode()).hexdigest()[:16]


def rng_state(device: torch.device | None = None) -> dict:
    """Every global RNG that training draws from; of the GPUs, only the training device's (CUDA only)."""
    on_cuda = device is not None and device.type == "cuda"
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if on_cuda else None,
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }


def set_rng_state(state: dict, device: torch.device | None = None) -> None:
    """Restore what rng_state() captured (the CUDA state only onto a CUDA training device)."""
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if isinstance(cuda, list):  # checkpoints before 0.2 saved every visible GPU's state: take the device's own
        cuda = cuda[device.index or 0] if device is not None and device.type == "cuda" and cuda else None
    if cuda is not None and device is not None and device.type == "cuda":
        torch.cuda.set_rng_state(cuda, device)
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(epoch, path) of the checkpoints in run_dir, newest first."""
    found = [(int(m.group(1)), p) for p in run_dir.glob("checkpoint_epoch*.pt") if (m := _NAME.match(p.name))]
    return sorted(found, reverse=True)


def save_checkpoint(run_dir: Path, epoch: int, state: dict[str, Any], keep: int) -> Path:
    """Atomically write the checkpoint of finished epoch `epoch`; prune to the newest `keep`."""
    buf = io.BytesIO()
    torch.save({**state, "epoch": epoch}, buf)
    path = run_dir / f"checkpoint_epoch{epoch}.pt"
    atomic_write_bytes(path, buf.getvalue())
    for _, old in list_checkpoints(run_dir)[keep:]:
        old.unlink(missing_ok=True)
    return path


def remove_checkpoints(run_dir: Path) -> int:
    """Delete every checkpoint of run_dir; returns how many were removed."""
    found = list_checkpoints(run_dir)
    for _, p in found:
        p.unlink(missing_ok=True)
    return len(found)


def load_latest(run_dir: Path) -> dict | None:
    """The newest readable checkpoint; an unreadable one is skipped with a warning, never loaded silently."""
    bad = []
    for epoch, path in list_checkpoints(run_dir):
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
            if not isinstance(state, dict) or state.get("epoch") != epoch or "model" not in state:
                raise ValueError("contents do not match a trainbench checkpoint")
        except Exception as e:  # truncated zip, bad pickle, wrong content: all unusable
            log.warning("checkpoint %s is unreadable (%s: %s); trying an older one", path.name, type(e).__name__, e)
            bad.append(path)
            continue
        state["path"] = str(path)
        return state
    if bad:
        raise CheckpointError(
            f"no readable checkpoint in {run_dir} ({', '.join(p.name for p in bad)} unreadable, "
            "probably truncated); nothing was loaded. Move the run dir away to start again, or resume.enabled=false "
            "with a new hydra.run.dir"
        )
    return None


def config_diff(saved: dict, current: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested dicts."""
    out = []
    for k in sorted(set(saved) | set(current)):
        a, b = saved.get(k), current.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_diff(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return out
