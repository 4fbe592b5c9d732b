"""Tuned presets: where the tuner's result lives and when `experiment=fastest` may use it.

A preset is written outside the source tree, in the user's cache (`$TRAINBENCH_CACHE`, else
`$XDG_CACHE_HOME/trainbench`, else `~/.cache/trainbench`) under `tuned/<key>.yaml`, and beside the tuner's
own output. Its key names what it was measured on: the machine (CPU model and the flags that decide speed, or
the GPU's name), the torch version, the model, the batch size and the data. `experiment=fastest` applies a
preset only when every part of the key matches this run, and says which file it applied; otherwise it falls
back to `precision=auto loader=device` with a one-line warning. A shared checkout on a cluster therefore never
applies a CPU login node's result on a GPU node.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
import yaml

log = logging.getLogger("trainbench")
SPEED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_vnni")


def cache_dir() -> Path:
    """Where presets are kept (never inside the source tree)."""
    if os.environ.get("TRAINBENCH_CACHE"):
        return Path(os.environ["TRAINBENCH_CACHE"]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "trainbench"


def machine(device: torch.device) -> str:
    """The machine part of the key: the GPU's name, or the CPU's model and its speed-deciding flags."""
    from .device import cpu_flags, cpu_model, device_name

    if device.type != "cpu":
        return device_name(device)
    flags = sorted(f for f in cpu_flags() if f in SPEED_FLAGS)
    return f"{cpu_model()} [{' '.join(flags)}] {os.cpu_count()} cores"


def key_of(cfg: Any, device: torch.device) -> dict[str, Any]:
    """What a preset is valid for: machine, torch version, model, batch size, data."""
    from .data.sources import image_side
    from .models import label

    d = cfg.data
    model = (
        {"width": int(cfg.model.width), "norm": str(cfg.norm.name)}
        if label(cfg.model) == "resnet18"
        else {"model": label(cfg.model), "args": {k: str(v) for k, v in cfg.model.items() if k != "num_classes"}}
    )
    return {
        "machine": machine(device),
        "torch": str(torch.__version__),
        "model": model,
        "batch_size": int(cfg.batch_size),
        "data": {
            "name": str(d.name),
            "train_size": None if d.train_size is None else int(d.train_size),
            "image_size": image_side(d),
        },
    }


def path_for(key: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / "tuned" / f"{digest}.yaml"


def write(settings: dict[str, Any], key: dict[str, Any], note: str, out_dir: Path, to_cache: bool = True) -> list[Path]:
    """The preset in the tune output dir and (to_cache) in the user's cache, under its key; returns the paths."""
    text = (
        "# " + note.replace("\n", "\n# ") + "\n" + yaml.safe_dump({"key": key, "settings": settings}, sort_keys=False)
    )
    paths = [out_dir / "preset.yaml"] + ([path_for(key)] if to_cache else [])
    for p in paths:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return paths


def apply_fastest(cfg: Any, device: torch.device, explicit: tuple[str, ...] = ()) -> tuple[Any, dict[str, Any]]:
    """experiment=fastest: this machine's preset for this model, batch size and data, else the fallback.

    Keys set on the command line (explicit, as `key=value` overrides) win over the preset. Returns the config to
    run and run.json's `tuned_preset` record (what was applied, and why)."""
    given = {o.split("=", 1)[0].lstrip("+~") for o in explicit}
    from omegaconf import OmegaConf

    key = key_of(cfg, device)
    path = path_for(key)
    found = yaml.safe_load(path.read_text()) if path.is_file() else None
    if not found or found.get("key") != key:
        log.warning(
            "experiment=fastest: no tuned preset for this machine, torch, model, batch size and data "
            "(looked for %s; run python -m trainbench.tune with the same settings to make one): using "
            "precision=auto loader=device",
            path,
        )
        return cfg, {"applied": None, "looked_for": str(path), "fallback": "precision=auto loader=device"}
    cfg = cfg.copy()
    applied = {k: v for k, v in found["settings"].items() if k not in given and k.split(".")[0] not in given}
    for k, v in applied.items():
        OmegaConf.update(cfg, k, v)
    log.info("experiment=fastest: applied tuned preset %s (%s)", path, " ".join(f"{k}={v}" for k, v in applied.items()))
    return cfg, {"applied": str(path), "settings": applied}
