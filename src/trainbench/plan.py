"""Every check that needs no training, in the order a user reads the errors: the result is a Plan.

make_plan(cfg) range-checks the config, resolves the device, checks the data-parallel keys, resolves
precision=auto, checks the options that need a particular device, and checks that the data can be read
(downloading CIFAR-10 when asked). Each failure is one ConfigError or DataError naming the key, the value and
the way out, raised before any run file is written. No Hydra import: tests and tools call it with any config.
"""

from __future__ import annotations

import copy
import dataclasses
import logging

import torch
from omegaconf import DictConfig, open_dict

from .config import ConfigError, validate, world_size
from .data.sources import check_available
from .device import check_device_options, resolve_device, resolve_precision
from .models import check_config
from .parallel.ranks import check_dist, env_ranks
from .presets import apply_fastest

log = logging.getLogger("trainbench")


@dataclasses.dataclass(frozen=True)
class Plan:
    """A checked config and the device it resolved to: what a run takes, produced once by make_plan()."""

    cfg: DictConfig
    device: torch.device
    precision: dict | None = None  # precision=auto: {"requested", "resolved", "why"} (run.json's precision_auto)
    tuned: dict | None = None  # experiment=fastest: which preset was applied, or the fallback (run.json's tuned_preset)


@dataclasses.dataclass
class _Draft:
    """A plan being made: each step reads and may replace cfg (a resolution), or raises (a check)."""

    cfg: DictConfig
    overrides: tuple[str, ...]
    check_data: bool
    device: torch.device | None = None
    precision: dict | None = None
    tuned: dict | None = None


def _sections(d: _Draft) -> None:
    validate(d.cfg)  # each config section's own check, in config/schema.SECTIONS' order


def _model_keys(d: _Draft) -> None:
    check_config(d.cfg.model)  # keys, model.name, model._target_ importable: before the data, which may download


def _device(d: _Draft) -> None:
    d.device = resolve_device(d.cfg.device.name)


def _ranks(d: _Draft) -> None:
    cfg = d.cfg
    check_dist(cfg, d.device)
    _check_launcher_env(cfg)
    if world_size(cfg) > 1 and cfg.dist.nnodes > 1 and env_ranks() is None:
        raise ConfigError(
            "dist.nnodes",
            cfg.dist.nnodes,
            "1, or start the ranks with torchrun / SLURM",
            "trainbench starts the ranks of one node itself",
        )


def _preset(d: _Draft) -> None:
    if d.cfg.tuned_preset == "auto":  # experiment=fastest: this machine's tuned preset, the command line winning
        d.cfg, d.tuned = apply_fastest(d.cfg, d.device, d.overrides)


def _precision(d: _Draft) -> None:
    if d.cfg.precision == "auto":
        resolved, why = resolve_precision("auto", d.device)
        d.cfg = copy.deepcopy(d.cfg)
        d.cfg.precision = resolved
        d.precision = {"requested": "auto", "resolved": resolved, "why": why}
        log.info("precision=auto -> %s: %s", resolved, why)


def _device_options(d: _Draft) -> None:
    check_device_options(d.cfg, d.device)


def _data(d: _Draft) -> None:
    if d.check_data:
        check_available(d.cfg.data)


def _model(d: _Draft) -> None:
    d.cfg = resolve_model(d.cfg)


# make_plan's steps in the order a user reads the errors: the config's own checks, the device, the ranks, the
# resolutions (preset, precision) and the checks that depend on them, the data, then the model on the data's shape.
STEPS = (_sections, _model_keys, _device, _ranks, _preset, _precision, _device_options, _data, _model)


def make_plan(cfg: DictConfig, check_data: bool = True, overrides: tuple[str, ...] = ()) -> Plan:
    """Check cfg (ConfigError/DataError name the key, the value and the choices) and resolve device and precision.

    precision=auto is replaced by what it resolved to, so that the run, its fingerprint and run.json's config
    say what really ran; run.json's precision_auto says why. tuned_preset=auto (experiment=fastest) applies this
    machine's tuned preset, except the keys in `overrides` (the command line's). check_data=False leaves the data
    alone (the tuner and inspect read it themselves)."""
    d = _Draft(cfg, tuple(overrides), check_data)
    for step in STEPS:
        step(d)
    return Plan(d.cfg, d.device, d.precision, d.tuned)


def resolve_model(cfg: DictConfig) -> DictConfig:
    """The data's class count and image side written into model.num_classes and data.image_size (where null), so
    that run.json, the fingerprint, inspect and the report state what trained; then the model is built once and
    fed one batch (models.check_model; its keys and name were checked by make_plan's models.check_config). An
    explicit model.num_classes that differs from the data's is an error."""
    from .data.sources import class_count, image_side
    from .models import check_model

    classes, size = class_count(cfg.data), image_side(cfg.data)
    given = cfg.model.get("num_classes")
    if given is not None and int(given) != classes:
        raise ConfigError(
            "model.num_classes",
            given,
            f"null (the data's class count) or {classes}",
            f"data.name={cfg.data.name} has {classes} classes",
        )
    if cfg.norm.name != "batchnorm" and "_target_" in cfg.model:
        raise ConfigError(
            "norm.name",
            cfg.norm.name,
            "batchnorm (the model's own layers) unless model=resnet18",
            "norm=none removes BatchNorm from the lab's ResNet-18 only",
        )
    cfg = copy.deepcopy(cfg)
    with open_dict(cfg):
        cfg.model.num_classes, cfg.data.image_size = classes, size
    check_model(cfg.model, cfg.norm.name, classes, size, str(cfg.data.name))
    return cfg


def _check_launcher_env(cfg: DictConfig) -> None:
    """torchrun or SLURM started this process as one of N ranks: N must be dist.nproc x dist.nnodes (else run.json
    would record one world size and the report group by another, or N independent runs would share Hydra dirs)."""
    r = env_ranks()
    if r is None or r.world == world_size(cfg):
        return
    raise ConfigError(
        "dist.nproc",
        cfg.dist.nproc,
        f"dist.nproc x dist.nnodes = {r.world} (the launcher's WORLD_SIZE/SLURM_NTASKS)",
        f"the launcher started {r.world} ranks but dist.nproc={cfg.dist.nproc} x dist.nnodes={cfg.dist.nnodes} = "
        f"{world_size(cfg)}: set dist.nproc (and dist.nnodes) to match",
    )
