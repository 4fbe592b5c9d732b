"""The one recipe that run, tune and inspect share: seeding, data, model, optimizer, grad scaler, step context,
loaders, batch shapes, the untimed warm-up, and restoring a checkpoint's state."""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import random
import time
from typing import Any

import numpy as np
import torch
from hydra.utils import get_class
from omegaconf import DictConfig

from . import models
from .data.loaders import DeviceLoader, make_loader
from .data.sources import load_data
from .data.torchvision_data import TORCHVISION, describe
from .device import set_precision_flags, synchronize
from .flops import device_peak, precision_peak, step_flops_per_image
from .models.resnet import count_trainable
from .parallel.ranks import SINGLE, Ranks
from .store import checkpoint
from .timing.epoch import StepContext

log = logging.getLogger("trainbench")

AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def build_optimizer(cfg_opt: DictConfig, params: Any) -> torch.optim.Optimizer:
    """optimizer._target_ (a torch.optim class) with the config's hyperparameters; null ones are left out."""
    kwargs = {k: v for k, v in cfg_opt.items() if k not in ("name", "_target_", "_partial_") and v is not None}
    return get_class(cfg_opt._target_)(params, **kwargs)


def build_model(cfg: DictConfig, classes: int, device: torch.device, sync_bn: bool = False) -> torch.nn.Module:
    """The configured model (model=) on device, in the configured memory format (SyncBatchNorm with sync_bn)."""
    model = models.create(cfg.model, cfg.norm.name, classes).to(device)
    if sync_bn:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def step_context(cfg: DictConfig, model: torch.nn.Module, device: torch.device) -> StepContext:
    """What a training step of model needs from the config: optimizer, fp16 grad scaler, autocast, layout."""
    return StepContext(
        model=model,
        optimizer=build_optimizer(cfg.optimizer, model.parameters()),
        device=device,
        autocast_dtype=AUTOCAST[cfg.precision],
        scaler=torch.amp.GradScaler("cuda") if cfg.precision == "fp16" else None,
        channels_last=cfg.channels_last,
        nan_at_step=cfg.faults.nan_at_step,
    )


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def batch_shapes(n_train: int, n_test: int, batch_size: int) -> tuple[list[int], list[int]]:
    """The batch sizes the epochs will see: the full batch and the short last one, for train and test."""

    def sizes(n: int) -> list[int]:
        if n <= 0:
            return []
        return sorted({min(batch_size, n), n % batch_size or min(batch_size, n)})

    return sizes(n_train), sizes(n_test)


def warm_up(
    ctx: StepContext,
    model: torch.nn.Module,
    gen: torch.Generator,
    train_sizes: list[int],
    test_sizes: list[int],
    image_size: int = 32,
    classes: int = 10,
    steps_per_shape: int = 1,
) -> float:
    """Untimed warm-up before epoch 0: one training step per batch shape the epochs will see, one eval pass per
    test shape; returns its seconds.

    It pays lazy initialisation, cuDNN autotuning and torch.compile's (re)compilation for every shape
    (the short last batch included) outside every timed epoch, so that epoch 0 is comparable with the
    others and job 0 of a sweep with the later jobs. Model (BatchNorm statistics included), optimizer,
    grad scaler and every RNG are restored afterwards: the run trains exactly as without it. Inputs are
    random tensors, so no DataLoader worker is started and no batch is drawn here."""
    dev = ctx.device
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    opt_state = copy.deepcopy(ctx.optimizer.state_dict())
    scaler_state = copy.deepcopy(ctx.scaler.state_dict()) if ctx.scaler is not None else None
    rng, gen_state = checkpoint.rng_state(dev), gen.get_state()
    synchronize(dev)
    t = time.perf_counter()
    for b in train_sizes:
        x, y = torch.randn(b, 3, image_size, image_size), torch.randint(0, classes, (b,))
        for _ in range(steps_per_shape):
            ctx.step(x, y, global_step=-1)
    ctx.eval_model.eval()
    with torch.no_grad(), ctx.autocast():
        for b in test_sizes:
            ctx.eval_model(
                ctx.to_device(torch.randn(b, 3, image_size, image_size), torch.zeros(b, dtype=torch.long))[0]
            )
    ctx.model.train()
    synchronize(dev)  # note: sync point; the warm-up's queued kernels belong to it, not to epoch 0
    elapsed = time.perf_counter() - t
    model.load_state_dict(saved)
    ctx.optimizer.load_state_dict(opt_state)
    ctx.optimizer.zero_grad(set_to_none=True)
    if scaler_state is not None:
        ctx.scaler.load_state_dict(scaler_state)
    checkpoint.set_rng_state(rng, dev)
    gen.set_state(gen_state)
    return elapsed


def items(loader: Any) -> int:
    """Images one epoch of loader draws on this rank."""
    if loader is None:
        return 0
    return loader.items() if isinstance(loader, DeviceLoader) else len(loader.sampler)


def batchnorm_note(cfg: DictConfig, r: Ranks) -> str:
    """Which BatchNorm the run trains with (with several ranks it matters: per-rank or synchronized statistics)."""
    if cfg.norm.name == "none":
        return "no BatchNorm (norm=none)"
    if "_target_" in cfg.model:
        return f"{models.label(cfg.model)}'s own normalization layers" + (
            " (synchronized: dist.sync_bn=true)" if r.active and cfg.dist.sync_bn else ""
        )
    if not r.active:
        return "BatchNorm2d"
    if cfg.dist.sync_bn:
        return "SyncBatchNorm: batch statistics over all ranks (dist.sync_bn=true)"
    return "BatchNorm2d with each rank's own batch statistics (dist.sync_bn=false)"


@dataclasses.dataclass
class Built:
    """What the epoch loop needs, built from the config (and a checkpoint)."""

    ctx: StepContext
    model: torch.nn.Module  # the uncompiled module (state dicts, checkpoints)
    train_loader: Any
    test_loader: Any
    loader_gen: torch.Generator
    timing: str
    global_step: int = 0
    flops_per_image: float = math.nan
    peak_tflops: float | None = None
    peak_precision_tflops: float | None = None
    image_size: int = 32
    classes: int = 10


def timing_mode(cfg: DictConfig, device: torch.device) -> str:
    """The clock the run uses: timing=events needs CUDA, so anywhere else it is sync."""
    return cfg.timing if device.type == "cuda" else "sync"


def build(cfg: DictConfig, device: torch.device, ranks: Ranks = SINGLE, data: tuple | None = None) -> Built:
    """Precision flags, seed, data, model, optimizer, scaler, loaders and the loader's generator for one rank.

    data=(train, test) uses data already loaded (the tuner measures many candidates on one copy); test may be None.
    The run and the tuner both build here, so a candidate is measured with exactly the run's recipe."""
    set_precision_flags(cfg, device)  # TF32 off unless tf32=true (the trainer sets it earlier too, for run.json)
    seed_everything(cfg.seed)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = bool(cfg.cudnn_benchmark)
    if data is not None:
        return _assemble(cfg, device, ranks, *data)
    t = time.perf_counter()
    train_data, test_data = load_data(cfg.data, test_needed=cfg.test_eval)
    log.info(
        "data=%s: %d train / %s test images (data.train_size=%s, data.test_size=%s) in %.1fs",
        cfg.data.name,
        len(train_data),
        len(test_data) if test_data is not None else "no",
        cfg.data.train_size,
        cfg.data.test_size,
        time.perf_counter() - t,
    )
    b = _assemble(cfg, device, ranks, train_data, test_data)
    log.info(
        "model=%s; device=%s -> %s; loader=%s workers=%d; optimizer=%s lr=%g; norm=%s; precision=%s "
        "channels_last=%s compile=%s timing=%s; %d trainable parameters",
        models.label(cfg.model),
        cfg.device.name,
        device,
        cfg.loader.name,
        cfg.workers,
        cfg.optimizer.name,
        cfg.optimizer.lr,
        cfg.norm.name,
        cfg.precision,
        cfg.channels_last,
        cfg.compile,
        b.timing,
        count_trainable(b.model),
    )
    if cfg.data.name in TORCHVISION:
        log.info("data.name=%s", describe(cfg.data.name))
    if cfg.loader.name == "device" and cfg.workers:
        log.info("loader=device uses no worker processes; workers is ignored")
    return b


def _assemble(cfg: DictConfig, device: torch.device, ranks: Ranks, train_data: Any, test_data: Any) -> Built:
    """Model, step context, loaders and generator on loaded data (seeded by build)."""
    model = build_model(cfg, len(train_data.classes), device, sync_bn=ranks.active and cfg.dist.sync_bn)
    ctx = step_context(cfg, model, device)
    shuffle_gen = torch.Generator().manual_seed(cfg.seed)
    train_loader = make_loader(cfg, train_data, True, device, shuffle_gen, ranks.rank, ranks.world)
    test_loader = (
        make_loader(cfg, test_data, False, device, None, ranks.rank, ranks.world) if test_data is not None else None
    )
    loader_gen = train_loader.generator if isinstance(train_loader, DeviceLoader) else shuffle_gen
    b = Built(ctx, model, train_loader, test_loader, loader_gen, timing_mode(cfg, device), global_step=0)
    b.image_size, b.classes = int(train_data.images.shape[1]), len(train_data.classes)
    return b


def restore(b: Built, ckpt: dict, restore_rng: bool, device: torch.device) -> None:
    """Continue from ckpt: model, optimizer, scaler, step count, and (restore_rng) the RNGs and sampler."""
    b.model.load_state_dict(ckpt["model"])
    b.ctx.optimizer.load_state_dict(ckpt["optimizer"])
    if b.ctx.scaler is not None and ckpt.get("scaler"):
        b.ctx.scaler.load_state_dict(ckpt["scaler"])
    if restore_rng:
        b.loader_gen.set_state(ckpt["loader_generator"])
        checkpoint.set_rng_state(ckpt["rng"], device)
    else:
        log.warning("resume.restore_rng=false: RNG and sampler state NOT restored (results will differ)")
    b.global_step = ckpt["global_step"]


def attach_ranks(b: Built, cfg: DictConfig, ranks: Ranks) -> None:
    """With several ranks: wrap the model in DDP with the communication clock's hook."""
    if not ranks.active:
        return
    from torch.nn.parallel import DistributedDataParallel as DDP

    from .parallel.commclock import CommClock

    dev = b.ctx.device
    # DDP broadcasts rank 0's parameters and buffers here, so every rank starts from the same model
    b.ctx.model = DDP(b.model, device_ids=[dev.index] if dev.type == "cuda" else None)
    nccl = torch.distributed.get_backend() == "nccl"  # nccl: completion is only visible on the device timeline
    b.ctx.comm = CommClock(make_event=(lambda: torch.cuda.Event(enable_timing=True)) if nccl else None)
    b.ctx.model.register_comm_hook(None, b.ctx.comm.hook)
    log.info(
        "dist: rank %d of %d, backend %s, %d torch threads per rank; batch_size=%d per rank, global batch %d; %s",
        ranks.rank,
        ranks.world,
        torch.distributed.get_backend(),
        torch.get_num_threads(),
        cfg.batch_size,
        cfg.batch_size * ranks.world,
        batchnorm_note(cfg, ranks),
    )


def compile_and_warm_up(b: Built, cfg: DictConfig, ranks: Ranks = SINGLE) -> float:
    """compile=true: compile the model; then the untimed warm-up of every batch shape (returns its seconds)."""
    if cfg.compile:
        b.ctx.model = torch.compile(b.model)
    shapes = batch_shapes(items(b.train_loader), items(b.test_loader), cfg.batch_size)  # this rank's share
    # DDP rebuilds its gradient buckets after its first step: with several ranks, two steps per shape
    warm_s = warm_up(
        b.ctx,
        b.model,
        b.loader_gen,
        *shapes,
        image_size=b.image_size,
        classes=b.classes,
        steps_per_shape=2 if ranks.active else 1,
    )
    log.info(
        "warm-up (untimed, state restored): %.2fs for train batch sizes %s and test batch sizes %s%s",
        warm_s,
        shapes[0],
        shapes[1],
        "; compile=true: compile time is this, reported as compile_time_s" if cfg.compile else "",
    )
    return warm_s


def count_flops(b: Built, cfg: DictConfig) -> dict[str, Any]:
    """FLOPs per image of a training step (counted once, on a fresh copy of the model) and the device's peak;
    sets b.flops_per_image and b.peak_tflops and returns run.json's keys for them."""
    fresh = build_model(cfg, b.classes, b.ctx.device)  # the same FLOPs as b.model (which may be SyncBatchNorm)
    b.flops_per_image = step_flops_per_image(fresh, b.image_size, b.classes)
    peak = device_peak(b.ctx.device, cfg.precision, bool(cfg.tf32))
    b.peak_tflops = peak.tflops if peak else None
    own = precision_peak(b.ctx.device, cfg.precision, bool(cfg.tf32))
    b.peak_precision_tflops = own.tflops if own else None
    log.info(
        "%.3g GFLOP per image per training step (forward + backward); peak %s",
        b.flops_per_image / 1e9,
        f"{peak.tflops:.3g} TFLOP/s ({peak.source})" if peak else "unknown",
    )
    return {
        "flops_per_image": b.flops_per_image,
        "peak_tflops": b.peak_tflops,
        "peak_source": peak.source if peak else "unknown device: no utilisation (mfu) reported",
        "peak_precision_tflops": b.peak_precision_tflops,
        "peak_precision_source": own.source if own else None,
    }
