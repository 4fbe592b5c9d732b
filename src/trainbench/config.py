"""Typed config schema (registered in Hydra's ConfigStore) and the range checks run before any work."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from .data.torchvision_data import (  # no torch import: train.py checks the command line first
    DATA_NAMES,
    NORMALIZE_ALIASES,
)


class ConfigError(ValueError):
    """A config value is out of range; the message names the key, the value and what is allowed."""

    def __init__(self, key: str, value: Any, allowed: str, hint: str = "") -> None:
        self.key, self.value, self.allowed = key, value, allowed
        msg = f"invalid config: {key}={value!r}; allowed: {allowed}"
        if hint:
            msg += f". {hint}"
        super().__init__(msg)


@dataclass
class DeviceConfig:
    name: str = "auto"  # auto | cpu | cuda | mps


@dataclass
class LoaderConfig:
    name: str = "torch"  # torch: the lab's DataLoader; device: dataset on the device, batch augmentation
    pin_memory: bool | None = None  # null: on when the device is CUDA
    persistent_workers: bool = False
    prefetch_factor: int | None = None  # null: PyTorch's default (2) when workers > 0


@dataclass
class DataConfig:
    name: str = "cifar10"  # cifar10 | synthetic | imagefolder | a torchvision dataset class (data=torchvision)
    root: str = "${oc.env:TRAINBENCH_DATA,data}"
    download: bool = True
    train_size: int | None = None  # null = all; N = fixed class-balanced subset
    test_size: int | None = None
    normalize: str = "lab"  # CIFAR-10 only: lab: std (0.2023, 0.1994, 0.2010) as the lab; cifar10: its real std
    image_size: int | None = None  # null: the dataset's own side (imagefolder: 32); N: images resized to N x N
    augment: str = "lab"  # lab: random crop (padding = side / 8) + horizontal flip (not for digits); none


@dataclass
class NormConfig:
    name: str = "batchnorm"  # batchnorm | none


@dataclass
class ResNet18Model:
    """model=resnet18: the lab's CIFAR ResNet-18 (it has no _target_; trainbench.models.resnet.ResNet18)."""

    width: int = 64  # channels of the first stage; 64 is ResNet-18 (11,173,962 parameters)
    num_classes: int | None = None  # null: the data's class count (run.json records the number that trained)


@dataclass
class TorchvisionModel:
    """model=torchvision: any name torchvision.models.list_models() gives, built with random weights by default."""

    _target_: str = "trainbench.models.torchvision_model"
    name: str = "resnet18"  # torchvision's ImageNet ResNet-18 (7x7 stride-2 stem + max-pool), not the lab's
    weights: str | None = None  # null: random init, no download; e.g. DEFAULT (needs 1000 classes and a network)
    num_classes: int | None = None


@dataclass
class TimmModel:
    """model=timm: any name timm.list_models() gives (pip install 'trainbench[timm]')."""

    _target_: str = "trainbench.models.timm_model"
    name: str = "resnet18"
    pretrained: bool = False
    num_classes: int | None = None


# The keys each model choice takes (model=custom takes _target_ plus any keyword arguments of the user's class).
MODEL_SCHEMAS: dict[str, type] = {"resnet18": ResNet18Model, "torchvision": TorchvisionModel, "timm": TimmModel}
MODEL_TARGETS = {TorchvisionModel._target_: "torchvision", TimmModel._target_: "timm"}


@dataclass
class OptimizerConfig:
    name: str = "sgd"
    _target_: str = "torch.optim.SGD"
    lr: float = 0.1
    weight_decay: float = 5e-4
    momentum: float | None = 0.9  # null where the optimizer has none
    nesterov: bool | None = None


@dataclass
class CheckpointConfig:
    enabled: bool = True
    keep: int = 1  # how many epoch checkpoints to keep (the newest)
    keep_on_complete: bool = False  # false: a complete run's checkpoints are removed (a full model's is 89 MB)


@dataclass
class ResumeConfig:
    enabled: bool = True  # continue a run dir from its last checkpoint
    restore_rng: bool = True  # false exists only for the negative-control test


@dataclass
class FaultsConfig:
    nan_at_step: int | None = None  # inject a NaN loss at this global step (tests)
    kill_rank: int | None = None  # with kill_at_step: this rank SIGKILLs itself (tests)
    kill_at_step: int | None = None
    checkpoint_delay_s: float = 0.0  # rank 0's end-of-epoch checkpoint takes this much longer (tests)


@dataclass
class ProfilerConfig:
    """profile=true: torch.profiler over a few steps of one epoch (a wait / warm-up / active schedule)."""

    epoch: int = 0  # which epoch (0-based, as epochs.csv counts)
    wait: int = 1  # steps run unprofiled first
    warmup: int = 1  # steps traced and discarded (the profiler's own start-up cost)
    active: int = 3  # steps recorded into profile/trace.json and profile/ops.csv
    record_shapes: bool = False


@dataclass
class DistConfig:
    """Data-parallel training on torch.distributed (DistributedDataParallel)."""

    nproc: int = 1  # processes (ranks) per node; 1 = no process group
    nnodes: int = 1  # nodes (torchrun / SLURM start the ranks of nnodes > 1 themselves)
    backend: str = "auto"  # auto: nccl on CUDA, gloo on CPU
    sync_bn: bool = False  # SyncBatchNorm: batch statistics over all ranks (default: each rank's own)
    timeout_s: int = 120  # a collective that waits longer fails the run (a rank that died or hangs)
    threads: int | None = None  # torch threads per rank; null: the cores divided among the node's ranks


@dataclass
class TuneConfig:
    """python -m trainbench.tune: what to measure and for how long (not used by train.py)."""

    budget_s: float = 300.0  # no new candidate starts after this many seconds
    steps: int = 4  # timed steps per measurement (worker start-up included, projected over an epoch)
    repeats: int = 3  # interleaved measurements per candidate: their spread is the noise that decides ties
    precisions: list[str] | None = None  # null: fp32, bf16 where native, fp16 on CUDA
    channels_last: list[bool] = field(default_factory=lambda: [False, True])
    workers: list[int] | None = None  # null: 0, 2, half and all of the cores
    compile: bool = True  # try compile=true on the best, when half the budget is left
    out: str | None = None  # null: outputs/tune/<date>_<time>
    write_preset: bool = True  # also write the preset to the user's cache (what experiment=fastest uses)


@dataclass
class TrainConfig:
    device: DeviceConfig = field(default_factory=DeviceConfig)
    loader: LoaderConfig = field(default_factory=LoaderConfig)
    data: DataConfig = field(default_factory=DataConfig)
    norm: NormConfig = field(default_factory=NormConfig)
    model: Any = MISSING  # a choice of conf/model/ (resnet18 by default), typed by MODEL_SCHEMAS
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    resume: ResumeConfig = field(default_factory=ResumeConfig)
    faults: FaultsConfig = field(default_factory=FaultsConfig)
    profiler: ProfilerConfig = field(default_factory=ProfilerConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    epochs: int = 5
    # DataLoader worker processes (loader=torch). A typed key, not a config group: Hydra cannot take an
    # integer group choice from the command line ("Config group override must be a string"), and any count works.
    workers: int = 2
    batch_size: int = 128
    seed: int = 0
    test_eval: bool = True  # test loss/accuracy after each epoch, outside the timed region
    precision: str = "fp32"  # fp32 | bf16 | fp16 | auto (bf16 where the hardware runs it natively, else fp32)
    channels_last: bool = False
    compile: bool = False
    timing: str = "sync"  # sync: exact per-step split; events: CUDA events read once per epoch
    # split compute into copy/forward/backward/optimizer; with timing=sync on a GPU that is 3 more syncs a step
    phase_clocks: bool = True
    profile: bool = False  # torch.profiler over profiler.* steps: profile/trace.json, profile/ops.csv
    logger: str = "none"  # none | tensorboard (per-batch and per-epoch figures in tb/; CSVs stay the record)
    cudnn_benchmark: bool = True
    tf32: bool = False  # false: fp32 really is fp32 on Ampere+ GPUs (cuDNN/cuBLAS TF32 off); true allows TF32
    progress: bool | None = None  # null: a progress bar on a terminal only; true/false: always/never
    tuned_preset: str = "none"  # none | auto (experiment=fastest: this machine's tuned preset, else the fallback)


CHOICES = {
    "device.name": ("auto", "cpu", "cuda", "mps"),
    "loader.name": ("torch", "device"),
    "data.augment": ("lab", "none"),
    "data.normalize": ("lab", "cifar10"),
    "norm.name": ("batchnorm", "none"),
    "optimizer.name": ("sgd", "nesterov", "adagrad", "adadelta", "adam"),
    "precision": ("fp32", "bf16", "fp16", "auto"),
    "timing": ("sync", "events"),
    "logger": ("none", "tensorboard"),
    "dist.backend": ("auto", "gloo", "nccl"),
    "tuned_preset": ("none", "auto"),
}


def _visible_gpus(nproc: Any = 1) -> int:
    """GPUs a launcher=local job gets: one per rank (dist.nproc) where a GPU is visible, else 0."""
    import torch

    return int(nproc) if torch.cuda.device_count() > 0 else 0


def _tasks_per_node(nnodes: Any, nproc: Any) -> int:
    """SLURM tasks per node: 1 on one node (trainbench starts the ranks), one per rank across nodes."""
    return 1 if int(nnodes) <= 1 else int(nproc)


def cpus_for_workers(workers: Any, nproc: Any = 1, nnodes: Any = 1) -> int:
    """CPU cores a task needs: per rank it runs, one per DataLoader worker plus the training process (at least 2)."""
    ranks_in_task = int(nproc) if int(nnodes) <= 1 else 1
    return max(2, int(workers) + 1) * ranks_in_task


def register_configs() -> None:
    """Register the schema (config.yaml names it in its defaults list) and the launchers' resolvers."""
    cs = ConfigStore.instance()
    cs.store(name="trainbench_schema", node=TrainConfig)
    for name, schema in MODEL_SCHEMAS.items():  # conf/model/<name>.yaml inherits /model_schema/<name>
        cs.store(group="model_schema", name=name, node=schema)
    # launcher=local: give each job the GPU it needs (0 makes submitit hide every GPU); launcher=slurm:
    # cpus_per_task from the job's worker count (a fixed 8 would cap a C3 sweep that goes to 16 workers).
    OmegaConf.register_new_resolver("tb.gpus", _visible_gpus, replace=True)
    OmegaConf.register_new_resolver("tb.cpus", cpus_for_workers, replace=True)
    OmegaConf.register_new_resolver("tb.tasks", _tasks_per_node, replace=True)


def check_group_choices(overrides: list[str], conf_dir: Path) -> None:
    """Command-line mistakes Hydra would report in many lines, as one ConfigError naming the key, the value and the
    choices, before Hydra composes anything: a group choice that names no YAML file (`optimizer=sgdd`), and a
    value of the wrong type for a typed key (`batch_size=abc`).

    Only plain values and comma-separated sweeps are checked; Hydra's sweep functions (`choice(...)`, `glob(...)`),
    `+`/`~` overrides and unknown keys are left to Hydra."""
    import yaml
    from omegaconf.errors import OmegaConfBaseException

    schema = OmegaConf.structured(TrainConfig)
    _check_model_keys(overrides)
    for o in overrides:
        key, eq, value = o.partition("=")
        if not eq or key.startswith(("+", "~", "hydra")) or "(" in value or "[" in value:
            continue
        values = [v.strip() for v in value.split(",")]
        group = conf_dir / key
        if group.is_dir():
            choices = sorted(p.stem for p in group.glob("*.yaml"))
            for v in values:
                if v and v not in choices:
                    raise ConfigError(key, v, ", ".join(choices), f"{key}= names a file in conf/{key}/")
            continue
        node = OmegaConf.select(schema, key, throw_on_missing=False, default=KeyError)
        if node is KeyError or OmegaConf.is_config(node):
            continue  # not a typed leaf of the schema: Hydra decides
        for v in values:
            try:
                OmegaConf.update(OmegaConf.structured(TrainConfig), key, yaml.safe_load(v), merge=True)
            except (OmegaConfBaseException, yaml.YAMLError, ValueError):
                kind = type(node).__name__ if node is not None else "a value of this key's type"
                raise ConfigError(key, v, f"a value of type {kind}" if node is not None else kind) from None


def _check_model_keys(overrides: list[str]) -> None:
    """model.<key>=... on the command line: a key the chosen model (every choice of a model= sweep) does not take is
    refused here, in one line; model=custom takes extra keys as its class's keyword arguments (+model.key=v)."""
    choices = ["resnet18"]
    for o in overrides:
        if o.startswith("model="):
            choices = [v.strip() for v in o.partition("=")[2].split(",")]
    for o in overrides:
        key, eq, value = o.partition("=")
        plus = key.startswith("+")
        if not eq or not key.lstrip("+").startswith("model.") or "." in key.lstrip("+")[6:]:
            continue
        sub = key.lstrip("+")[6:]
        for c in choices:
            if c == "custom":
                if not plus and sub not in ("_target_", "num_classes"):
                    raise ConfigError(key, value, "_target_, num_classes, or +model.<key>=<value> for a keyword "
                                      "argument of your class", f"write +{key}={value}")  # fmt: skip
                continue
            fields = list(MODEL_SCHEMAS[c].__dataclass_fields__) if c in MODEL_SCHEMAS else None
            if fields is not None and sub not in fields:
                hint = (f"for torchvision's {value}: model=torchvision model.name={value}"
                        if c == "resnet18" and sub == "name" else "")  # fmt: skip
                if len(choices) > 1:
                    hint += (
                        f"{'; ' if hint else ''}this sweep also runs model={c}, which has no {sub}: compare "
                        f"models with -m model=torchvision model.name=a,b or -m model={','.join(choices)}"
                    )
                raise ConfigError(key.lstrip("+"), value, f"the keys of model={c}: {', '.join(fields)}", hint)


def world_size(cfg: DictConfig) -> int:
    """Ranks of the run: dist.nproc per node times dist.nnodes (1: no process group)."""
    return int(cfg.dist.nproc) * int(cfg.dist.nnodes)


def _check(cond: bool, key: str, value: Any, allowed: str) -> None:
    if not cond:
        raise ConfigError(key, value, allowed)


def close_matches(word: str, choices: list[str] | tuple[str, ...], n: int = 5, cutoff: float = 0.6) -> str:
    """'did you mean: a, b' for the choices closest to word (a different capitalisation too), '' when none is."""
    import difflib

    hits = difflib.get_close_matches(word, choices, n=n, cutoff=cutoff)
    hits += [c for c in choices if c.lower() == word.lower() and c not in hits]
    return f"did you mean: {', '.join(dict.fromkeys(hits))}" if hits else ""


def _check_data_name(cfg: DictConfig) -> None:
    allowed = "one of " + ", ".join(DATA_NAMES)
    if OmegaConf.is_missing(cfg.data, "name"):
        raise ConfigError("data.name", "???", allowed, "data=torchvision needs data.name=, e.g. data.name=CIFAR100")
    name = cfg.data.name
    if name not in DATA_NAMES:
        raise ConfigError("data.name", name, allowed, close_matches(str(name), DATA_NAMES, n=3, cutoff=0.5))


def validate(cfg: DictConfig) -> None:
    """Range-check a composed config; raises ConfigError before any data is touched."""
    for key, allowed in CHOICES.items():
        value = OmegaConf.select(cfg, key)
        if key == "optimizer.name" and value not in allowed:
            continue  # custom optimizers via optimizer._target_ are allowed
        if key == "data.normalize" and value in NORMALIZE_ALIASES:
            continue  # the old spelling data.normalize=true (read by Hydra as a boolean)
        _check(value in allowed, key, value, "one of " + ", ".join(allowed))
    _check(cfg.epochs >= 1, "epochs", cfg.epochs, "an integer >= 1")
    _check(cfg.batch_size >= 1, "batch_size", cfg.batch_size, "an integer >= 1")
    _check(cfg.workers >= 0, "workers", cfg.workers, ">= 0")
    pf = cfg.loader.prefetch_factor
    _check(pf is None or pf >= 1, "loader.prefetch_factor", pf, "null or an integer >= 1")
    lr = cfg.optimizer.lr
    _check(math.isfinite(lr) and lr > 0, "optimizer.lr", lr, "a finite number > 0")
    wd = cfg.optimizer.weight_decay
    _check(math.isfinite(wd) and wd >= 0, "optimizer.weight_decay", wd, "a finite number >= 0")
    mom = cfg.optimizer.momentum
    _check(mom is None or 0 <= mom < 1, "optimizer.momentum", mom, "null or 0 <= momentum < 1")
    for key in ("data.train_size", "data.test_size"):
        v = OmegaConf.select(cfg, key)
        _check(v is None or v >= 1, key, v, "null (all images) or an integer >= 1")
    _check_data_name(cfg)
    size = cfg.data.image_size
    _check(size is None or size >= 8, "data.image_size", size, "null (the dataset's own side) or an integer >= 8")
    width = cfg.model.get("width", 1)
    _check(width >= 1, "model.width", width, "an integer >= 1")
    nc = cfg.model.get("num_classes")
    _check(nc is None or nc >= 1, "model.num_classes", nc, "null (the data's class count) or an integer >= 1")
    _check(cfg.checkpoint.keep >= 1, "checkpoint.keep", cfg.checkpoint.keep, "an integer >= 1")
    pr = cfg.profiler
    _check(
        not cfg.profile or 0 <= pr.epoch < cfg.epochs,
        "profiler.epoch",
        pr.epoch,
        f"0 <= epoch < epochs ({cfg.epochs}), 0-based",
    )
    _check(pr.wait >= 0, "profiler.wait", pr.wait, "an integer >= 0")
    _check(pr.warmup >= 0, "profiler.warmup", pr.warmup, "an integer >= 0")
    _check(pr.active >= 1, "profiler.active", pr.active, "an integer >= 1")
    if cfg.logger == "tensorboard":
        import importlib.util

        _check(importlib.util.find_spec("tensorboard") is not None, "logger", "tensorboard",
               "none, or install the tensorboard extra: pip install 'trainbench[tensorboard]'")  # fmt: skip
    d = cfg.dist
    _check(d.nproc >= 1, "dist.nproc", d.nproc, "an integer >= 1 (processes per node)")
    _check(d.nnodes >= 1, "dist.nnodes", d.nnodes, "an integer >= 1")
    _check(d.timeout_s >= 1, "dist.timeout_s", d.timeout_s, "an integer >= 1 (seconds)")
    _check(d.threads is None or d.threads >= 1, "dist.threads", d.threads, "null or an integer >= 1")
    if world_size(cfg) > 1:
        _check(
            not cfg.compile, "compile", cfg.compile, "false with dist.nproc > 1 (compile + DDP is not supported yet)"
        )
    nan = cfg.faults.nan_at_step
    _check(nan is None or nan >= 0, "faults.nan_at_step", nan, "null or an integer >= 0")
