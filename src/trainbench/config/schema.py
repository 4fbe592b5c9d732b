"""The typed config schema (registered in Hydra's ConfigStore): each section owns its fields, its allowed values and
its check (`check(cfg)`, a static method), and `validate` runs them in SECTIONS' order before any work.

Group choices (device, loader, norm, ...) are the files of conf/<group>/ (group_choices); values fixed in code
(precision, timing, ...) are the section's CHOICES beside its fields. str fields, not Enums: run.json, the
fingerprint and every report keep the plain strings they have always had."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from ..data.torchvision_data import DATA_NAMES, NORMALIZE_ALIASES  # no torch import: train.py checks first


class ConfigError(ValueError):
    """A config value is out of range; the message names the key, the value and what is allowed."""

    def __init__(self, key: str, value: Any, allowed: str, hint: str = "") -> None:
        self.key, self.value, self.allowed = key, value, allowed
        msg = f"invalid config: {key}={value!r}; allowed: {allowed}"
        if hint:
            msg += f". {hint}"
        super().__init__(msg)


CONF_DIR = Path(__file__).resolve().parents[3] / "conf"


def group_choices(group: str, conf_dir: Path = CONF_DIR) -> list[str]:
    """The choices of a config group: the YAML files of conf/<group>/ (the one source of a group's choices)."""
    return sorted(p.stem for p in (conf_dir / group).glob("*.yaml"))


def _check(cond: bool, key: str, value: Any, allowed: str) -> None:
    if not cond:
        raise ConfigError(key, value, allowed)


def _one_of(cfg: DictConfig, key: str, allowed: list[str] | tuple[str, ...]) -> None:
    value = OmegaConf.select(cfg, key)
    _check(value in allowed, key, value, "one of " + ", ".join(allowed))


def close_matches(word: str, choices: list[str] | tuple[str, ...], n: int = 5, cutoff: float = 0.6) -> str:
    """'did you mean: a, b' for the choices closest to word (a different capitalisation too), '' when none is."""
    import difflib

    hits = difflib.get_close_matches(word, choices, n=n, cutoff=cutoff)
    hits += [c for c in choices if c.lower() == word.lower() and c not in hits]
    return f"did you mean: {', '.join(dict.fromkeys(hits))}" if hits else ""


@dataclass
class DeviceConfig:
    name: str = "auto"  # a file of conf/device/

    @staticmethod
    def check(cfg: DictConfig) -> None:
        """device.name is a choice of conf/device/ (whether this machine has it is the plan's device check)."""
        _one_of(cfg, "device.name", group_choices("device"))


@dataclass
class LoaderConfig:
    name: str = "torch"  # a file of conf/loader/ (torch: the lab's DataLoader; device: batches on the device)
    pin_memory: bool | None = None  # null: on when the device is CUDA
    persistent_workers: bool = False
    prefetch_factor: int | None = None  # null: PyTorch's default (2) when workers > 0

    @staticmethod
    def check(cfg: DictConfig) -> None:
        """loader.name a choice of conf/loader/, prefetch_factor null or >= 1."""
        _one_of(cfg, "loader.name", group_choices("loader"))
        pf = cfg.loader.prefetch_factor
        _check(pf is None or pf >= 1, "loader.prefetch_factor", pf, "null or an integer >= 1")


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
    CHOICES: ClassVar[dict] = {"data.augment": ("lab", "none"), "data.normalize": ("lab", "cifar10")}

    @staticmethod
    def check(cfg: DictConfig) -> None:
        """data.name known, augment and normalize among their values, subset sizes and image side in range."""
        for key, allowed in DataConfig.CHOICES.items():
            if not (key == "data.normalize" and OmegaConf.select(cfg, key) in NORMALIZE_ALIASES):  # old spelling
                _one_of(cfg, key, allowed)
        for key in ("data.train_size", "data.test_size"):
            v = OmegaConf.select(cfg, key)
            _check(v is None or v >= 1, key, v, "null (all images) or an integer >= 1")
        _check_data_name(cfg)
        size = cfg.data.image_size
        _check(size is None or size >= 8, "data.image_size", size, "null (the dataset's own side) or an integer >= 8")


@dataclass
class NormConfig:
    name: str = "batchnorm"  # a file of conf/norm/

    @staticmethod
    def check(cfg: DictConfig) -> None:
        """norm.name is a choice of conf/norm/."""
        _one_of(cfg, "norm.name", group_choices("norm"))


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

    @staticmethod
    def check(cfg: DictConfig) -> None:
        """lr > 0, weight decay >= 0, momentum in [0, 1); optimizer.name is free (optimizer._target_ decides)."""
        o = cfg.optimizer
        _check(math.isfinite(o.lr) and o.lr > 0, "optimizer.lr", o.lr, "a finite number > 0")
        wd = o.weight_decay
        _check(math.isfinite(wd) and wd >= 0, "optimizer.weight_decay", wd, "a finite number >= 0")
        _check(o.momentum is None or 0 <= o.momentum < 1, "optimizer.momentum", o.momentum, "null or 0 <= momentum < 1")


@dataclass
class CheckpointConfig:
    enabled: bool = True
    keep: int = 1  # how many epoch checkpoints to keep (the newest)
    keep_on_complete: bool = False  # false: a complete run's checkpoints are removed (a full model's is 89 MB)

    @staticmethod
    def check(cfg: DictConfig) -> None:
        """checkpoint.keep >= 1."""
        _check(cfg.checkpoint.keep >= 1, "checkpoint.keep", cfg.checkpoint.keep, "an integer >= 1")


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

    @staticmethod
    def check(cfg: DictConfig) -> None:
        """faults.nan_at_step null or a step."""
        nan = cfg.faults.nan_at_step
        _check(nan is None or nan >= 0, "faults.nan_at_step", nan, "null or an integer >= 0")


@dataclass
class ProfilerConfig:
    """profile=true: torch.profiler over a few steps of one epoch (a wait / warm-up / active schedule)."""

    epoch: int = 0  # which epoch (0-based, as epochs.csv counts)
    wait: int = 1  # steps run unprofiled first
    warmup: int = 1  # steps traced and discarded (the profiler's own start-up cost)
    active: int = 3  # steps recorded into profile/trace.json and profile/ops.csv
    record_shapes: bool = False

    @staticmethod
    def check(cfg: DictConfig) -> None:
        """The schedule's steps in range, and (profile=true) the epoch one the run has."""
        pr = cfg.profiler
        ok = not cfg.profile or 0 <= pr.epoch < cfg.epochs
        _check(ok, "profiler.epoch", pr.epoch, f"0 <= epoch < epochs ({cfg.epochs}), 0-based")
        _check(pr.wait >= 0, "profiler.wait", pr.wait, "an integer >= 0")
        _check(pr.warmup >= 0, "profiler.warmup", pr.warmup, "an integer >= 0")
        _check(pr.active >= 1, "profiler.active", pr.active, "an integer >= 1")


@dataclass
class DistConfig:
    """Data-parallel training on torch.distributed (DistributedDataParallel)."""

    nproc: int = 1  # processes (ranks) per node; 1 = no process group
    nnodes: int = 1  # nodes (torchrun / SLURM start the ranks of nnodes > 1 themselves)
    backend: str = "auto"  # auto: nccl on CUDA, gloo on CPU
    sync_bn: bool = False  # SyncBatchNorm: batch statistics over all ranks (default: each rank's own)
    timeout_s: int = 120  # a collective that waits longer fails the run (a rank that died or hangs)
    threads: int | None = None  # torch threads per rank; null: the cores divided among the node's ranks
    CHOICES: ClassVar[dict] = {"dist.backend": ("auto", "gloo", "nccl")}

    @staticmethod
    def check(cfg: DictConfig) -> None:
        """Counts and timeout in range, the backend known; compile with several ranks refused (not supported)."""
        d = cfg.dist
        _one_of(cfg, "dist.backend", DistConfig.CHOICES["dist.backend"])
        _check(d.nproc >= 1, "dist.nproc", d.nproc, "an integer >= 1 (processes per node)")
        _check(d.nnodes >= 1, "dist.nnodes", d.nnodes, "an integer >= 1")
        _check(d.timeout_s >= 1, "dist.timeout_s", d.timeout_s, "an integer >= 1 (seconds)")
        _check(d.threads is None or d.threads >= 1, "dist.threads", d.threads, "null or an integer >= 1")
        if world_size(cfg) > 1:
            allowed = "false with dist.nproc > 1 (compile + DDP is not supported yet)"
            _check(not cfg.compile, "compile", cfg.compile, allowed)


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
    CHOICES: ClassVar[dict] = {
        "precision": ("fp32", "bf16", "fp16", "auto"),
        "timing": ("sync", "events"),
        "logger": ("none", "tensorboard"),
        "tuned_preset": ("none", "auto"),
    }

    @staticmethod
    def check(cfg: DictConfig) -> None:
        """The top-level keys: fixed values among their choices, counts in range, tensorboard installed if asked."""
        for key, allowed in TrainConfig.CHOICES.items():
            _one_of(cfg, key, allowed)
        _check(cfg.epochs >= 1, "epochs", cfg.epochs, "an integer >= 1")
        _check(cfg.batch_size >= 1, "batch_size", cfg.batch_size, "an integer >= 1")
        _check(cfg.workers >= 0, "workers", cfg.workers, ">= 0")
        if cfg.logger == "tensorboard":
            import importlib.util

            hint = "none, or install the tensorboard extra: pip install 'trainbench[tensorboard]'"
            _check(importlib.util.find_spec("tensorboard") is not None, "logger", "tensorboard", hint)


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


def world_size(cfg: DictConfig) -> int:
    """Ranks of the run: dist.nproc per node times dist.nnodes (1: no process group)."""
    return int(cfg.dist.nproc) * int(cfg.dist.nnodes)


def _check_data_name(cfg: DictConfig) -> None:
    allowed = "one of " + ", ".join(DATA_NAMES)
    if OmegaConf.is_missing(cfg.data, "name"):
        raise ConfigError("data.name", "???", allowed, "data=torchvision needs data.name=, e.g. data.name=CIFAR100")
    name = cfg.data.name
    if name not in DATA_NAMES:
        raise ConfigError("data.name", name, allowed, close_matches(str(name), DATA_NAMES, n=3, cutoff=0.5))


def _check_model_ranges(cfg: DictConfig) -> None:
    """The lab model's width and any model's class count in range (its keys and name: models.check_config)."""
    width = cfg.model.get("width", 1)
    _check(width >= 1, "model.width", width, "an integer >= 1")
    nc = cfg.model.get("num_classes")
    _check(nc is None or nc >= 1, "model.num_classes", nc, "null (the data's class count) or an integer >= 1")


# The section checks in the order a user reads errors: the top-level keys, then each section as config.yaml lists it.
SECTIONS = (
    TrainConfig.check,
    DeviceConfig.check,
    LoaderConfig.check,
    NormConfig.check,
    OptimizerConfig.check,
    DataConfig.check,
    _check_model_ranges,
    CheckpointConfig.check,
    ProfilerConfig.check,
    DistConfig.check,
    FaultsConfig.check,
)


def validate(cfg: DictConfig) -> None:
    """Range-check a composed config, section by section; raises ConfigError before any data is touched."""
    for check in SECTIONS:
        check(cfg)
