"""One training run, end to end: validate, load, train with clocks, write CSVs/run.json/checkpoints, resume."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import math
import os
import random
import signal
import threading
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from . import checkpoint as ckpt_mod
from . import distributed as D
from .config import ConfigError, validate, world_size
from .data import load_data
from .device import (
    check_device_options,
    environment,
    resolve_device,
    resolve_precision,
    set_precision_flags,
    synchronize,
)
from .engine import Diverged, EpochStats, Interrupted, StepContext, evaluate_sums, train_epoch
from .flops import device_peak, step_flops_per_image
from .loaders import DeviceLoader, make_loader, set_epoch
from .model import ResNet18, count_trainable
from .records import (
    BATCH_COLUMNS,
    EPOCH_COLUMNS,
    PHASE_COLUMNS,
    CsvLog,
    RunLock,
    keep_rows,
    read_json,
    read_rows,
    rows_as_floats,
    write_json,
)

log = logging.getLogger("trainbench")
# torch warns about a large worker count each time a DataLoader is made (train and test, every job): once is enough
warnings.filterwarnings("once", message=r"This DataLoader will create", category=UserWarning)

AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def build_optimizer(cfg_opt: DictConfig, params: Any) -> torch.optim.Optimizer:
    """optimizer._target_ (a torch.optim class) with the config's hyperparameters; null ones are left out."""
    kwargs = {k: v for k, v in cfg_opt.items() if k not in ("name", "_target_", "_partial_") and v is not None}
    return get_class(cfg_opt._target_)(params, **kwargs)


def build_model(cfg: DictConfig, classes: int, device: torch.device, sync_bn: bool = False) -> torch.nn.Module:
    """The configured ResNet-18 on device, in the configured memory format (SyncBatchNorm with sync_bn)."""
    model = ResNet18(cfg.norm.name, cfg.model.width, classes).to(device)
    if sync_bn:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def step_context(cfg: DictConfig, model: torch.nn.Module, device: torch.device) -> StepContext:
    """What a training step of model needs from the config: optimizer, fp16 grad scaler, autocast, layout."""
    return StepContext(
        model=model, optimizer=build_optimizer(cfg.optimizer, model.parameters()), device=device,
        autocast_dtype=AUTOCAST[cfg.precision], scaler=torch.amp.GradScaler("cuda") if cfg.precision == "fp16" else None,
        channels_last=cfg.channels_last, nan_at_step=cfg.faults.nan_at_step,
    )  # fmt: skip


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def hydra_info() -> dict:
    """Group choices and command-line overrides of the Hydra job, when there is one."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return {}
    hc = HydraConfig.get()
    choices = {k: v for k, v in hc.runtime.choices.items() if not k.startswith("hydra/") and v is not None}
    return {"choices": choices, "overrides": list(hc.overrides.task), "job_num": hc.job.get("num")}


def hydra_run_dir() -> Path:
    """The Hydra job's output dir."""
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


class _StopFlag:
    """SIGTERM/SIGINT ask the loop to stop at the next batch boundary; a second SIGINT stops at once."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        log.warning("received %s: stopping after the current batch", signal.Signals(signum).name)

    def __enter__(self) -> _StopFlag:
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGTERM, signal.SIGINT):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)

    def __call__(self) -> bool:
        return self.signum is not None


def totals(rows: list[dict[str, str]]) -> dict[str, float]:
    """The lab's cumulative figures over all epoch rows: total and average of each time, loss, accuracy."""
    out: dict[str, float] = {"epochs": len(rows)}
    if not rows:
        return out
    for key in ("epoch_time_s", "data_time_s", "compute_time_s", "other_time_s"):
        vals = rows_as_floats(rows, key)
        out[f"total_{key}"] = sum(vals)
        out[f"avg_{key}"] = sum(vals) / len(vals)
    for key in ("train_loss", "train_acc", "test_loss", "test_acc"):
        vals = [v for v in rows_as_floats(rows, key) if not math.isnan(v)]
        out[f"avg_{key}"] = sum(vals) / len(vals) if vals else math.nan
        out[f"final_{key}"] = vals[-1] if vals else math.nan
    samples = sum(rows_as_floats(rows, "samples"))
    out["samples_per_s"] = samples / out["total_epoch_time_s"] if out["total_epoch_time_s"] > 0 else math.nan
    return out


def batch_shapes(n_train: int, n_test: int, batch_size: int) -> tuple[list[int], list[int]]:
    """The batch sizes the epochs will see: the full batch and the short last one, for train and test."""

    def sizes(n: int) -> list[int]:
        if n <= 0:
            return []
        return sorted({min(batch_size, n), n % batch_size or min(batch_size, n)})

    return sizes(n_train), sizes(n_test)


def warm_up(ctx: StepContext, model: torch.nn.Module, gen: torch.Generator, train_sizes: list[int],
            test_sizes: list[int], image_size: int = 32, classes: int = 10, steps_per_shape: int = 1) -> float:  # fmt: skip
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
    rng, gen_state = ckpt_mod.rng_state(dev), gen.get_state()
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
    ckpt_mod.set_rng_state(rng, dev)
    gen.set_state(gen_state)
    return elapsed


def epoch_row(per_rank: list[dict[str, Any]], phases: bool = True) -> dict[str, Any]:
    """epochs.csv's figures of one epoch from every rank's EpochStats (as dicts; one entry without ranks).

    Losses and accuracies are sample-weighted over ranks; epoch_time_s is the slowest rank's (the run waits
    for it); data, compute, comm and the phases are the mean over ranks, with their max beside them; other is
    the slowest epoch minus the mean data and compute (so it includes the ranks' imbalance)."""
    n = len(per_rank)
    samples = sum(s["samples"] for s in per_rank)

    def mean(k: str) -> float:
        return sum(s[k] for s in per_rank) / n

    def most(k: str) -> float:
        return max(s[k] for s in per_rank)

    row: dict[str, Any] = {
        "batches": per_rank[0]["batches"], "samples": samples,
        "train_loss": sum(s["loss_sum"] for s in per_rank) / max(1, samples),
        "train_acc": sum(s["correct"] for s in per_rank) / max(1, samples),
        "data_time_s": mean("data_time_s"), "compute_time_s": mean("compute_time_s"),
        "epoch_time_s": most("epoch_time_s"), "epoch_time_mean_s": mean("epoch_time_s"),
        "data_time_max_s": most("data_time_s"), "compute_time_max_s": most("compute_time_s"),
        "comm_time_s": mean("comm_time_s"), "comm_time_max_s": most("comm_time_s"),
        "comm_exposed_s": mean("comm_exposed_s"),
        "comm_bytes": per_rank[0]["comm_bytes"], "skipped_steps": per_rank[0]["skipped_steps"],
        "profiled_steps": per_rank[0]["profiled_steps"],
    }  # fmt: skip
    row["other_time_s"] = max(0.0, row["epoch_time_s"] - row["data_time_s"] - row["compute_time_s"])
    row["samples_per_s"] = samples / row["epoch_time_s"] if row["epoch_time_s"] else math.nan
    for c in PHASE_COLUMNS:
        row[c] = mean(c) if phases else None
    return row


def _items(loader: Any) -> int:
    """Images one epoch of loader draws on this rank."""
    if loader is None:
        return 0
    return loader.items() if isinstance(loader, DeviceLoader) else len(loader.sampler)


def _batchnorm_note(cfg: DictConfig, r: D.Ranks) -> str:
    """Which BatchNorm the run trains with (with several ranks it matters: per-rank or synchronized statistics)."""
    if cfg.norm.name == "none":
        return "no BatchNorm (norm=none)"
    if not r.active:
        return "BatchNorm2d"
    if cfg.dist.sync_bn:
        return "SyncBatchNorm: batch statistics over all ranks (dist.sync_bn=true)"
    return "BatchNorm2d with each rank's own batch statistics (dist.sync_bn=false)"


@dataclasses.dataclass
class _Built:
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


class Trainer:
    """State of one run dir; `fit()` trains from scratch or from the last checkpoint."""

    def __init__(self, cfg: DictConfig, device: torch.device, run_dir: Path, ranks: D.Ranks = D.SINGLE,
                 meta: dict | None = None) -> None:  # fmt: skip
        self.cfg, self.device, self.run_dir, self.ranks = cfg, device, run_dir, ranks
        self.meta = meta if meta is not None else hydra_info()
        self.json_path = run_dir / "run.json"
        self.info: dict[str, Any] = read_json(self.json_path) or {}
        self.tb: Any | None = None  # logger=tensorboard
        self.main = ranks.main  # only rank 0 writes the run dir
        self._rank_rows: list[dict] = []  # several ranks: this epoch's batch rows, written by rank 0 after it

    @property
    def _bars_off(self) -> bool | None:
        """tqdm's disable for progress=null|true|false (None: tqdm turns the bar off when not on a terminal)."""
        return None if self.cfg.progress is None else not self.cfg.progress

    def _save_info(self, **updates: Any) -> None:
        self.info.update(updates, updated_at=_now())
        if self.main:
            write_json(self.json_path, self.info)

    def _check_existing(self, ckpt: dict | None, fp: str) -> None:
        """Refuse to mix a different config into, or write over, what the run dir already holds."""
        rows = read_rows(self.run_dir / "epochs.csv", EPOCH_COLUMNS)
        saved = ckpt or (
            {"fingerprint": self.info.get("fingerprint"), "train_config": self.info.get("train_config")}
            if rows
            else None
        )
        if saved and saved.get("fingerprint") and saved["fingerprint"] != fp:
            diff = ckpt_mod.config_diff(
                saved.get("train_config") or {}, ckpt_mod.training_config(self.cfg, self.device.type)
            )
            raise ckpt_mod.RunDirRefused(
                f"run dir {self.run_dir} holds a run of a different config ({'; '.join(diff) or 'fingerprint differs'}); "
                "refusing to resume it. Use the original settings, or another hydra.run.dir"
            )
        if rows and ckpt is None and not (self.cfg.resume.enabled and self.info.get("fingerprint") == fp):
            why = "resume.enabled=false" if not self.cfg.resume.enabled else "no checkpoint or record of its config"
            raise ckpt_mod.RunDirRefused(
                f"run dir {self.run_dir} already holds {len(rows)} epoch rows and {why}; nothing was overwritten. "
                "Choose another hydra.run.dir"
            )

    def fit(self) -> dict[str, Any]:
        """Train cfg.epochs epochs (continuing from a checkpoint), keeping run.json's status true throughout."""
        cfg, dev = self.cfg, self.device
        fp = ckpt_mod.fingerprint(cfg, dev.type)
        ckpt = ckpt_mod.load_latest(self.run_dir) if cfg.resume.enabled else None
        self._check_existing(ckpt, fp)
        start_epoch = ckpt["epoch"] + 1 if ckpt else 0
        done = len(read_rows(self.run_dir / "epochs.csv", EPOCH_COLUMNS))
        if self.info.get("status") == "complete" and self.info.get("fingerprint") == fp:
            if done >= cfg.epochs:
                log.info("run dir %s is already complete (%d epochs); nothing to do", self.run_dir, done)
                return self.info
            if ckpt is None:
                raise ckpt_mod.RunDirRefused(
                    f"run dir {self.run_dir} holds a complete run of {done} epochs whose checkpoints were removed "
                    "(checkpoint.keep_on_complete=false), so it cannot be extended to "
                    f"epochs={cfg.epochs}; nothing was changed. Train epochs={cfg.epochs} in another hydra.run.dir, "
                    "and set checkpoint.keep_on_complete=true for runs you want to extend later"
                )

        set_precision_flags(cfg, dev)  # before environment(): run.json records the TF32 flags in force
        timing = cfg.timing if dev.type == "cuda" else "sync"
        if timing != cfg.timing:
            log.warning("timing=%s needs CUDA; using timing=sync on %s", cfg.timing, dev)
        self.info.setdefault("started_at", _now())
        self._save_info(
            status="running", error=None, fingerprint=fp, config=OmegaConf.to_container(cfg, resolve=True),
            train_config=ckpt_mod.training_config(cfg, dev.type), environment=environment(dev), timing_mode=timing,
            run_dir=str(self.run_dir), resumed_from_epoch=start_epoch if ckpt else None, **self.meta,
            world_size=self.ranks.world, global_batch=cfg.batch_size * self.ranks.world,
            batchnorm=_batchnorm_note(cfg, self.ranks),
        )  # fmt: skip
        try:
            result = self._fit(ckpt, start_epoch, timing)
        except Diverged as e:
            self._finish("diverged", error=str(e), diverged={"epoch": e.epoch, "batch": e.batch, "step": e.step})
            raise
        except (Interrupted, KeyboardInterrupt) as e:
            self._finish("interrupted", error=str(e) or "interrupted")
            raise Interrupted(str(e) or "interrupted") from e
        except BaseException as e:
            self._finish("failed", error=f"{type(e).__name__}: {e}")
            raise
        return result

    def _finish(self, status: str, **extra: Any) -> None:
        rows = read_rows(self.run_dir / "epochs.csv", EPOCH_COLUMNS)
        try:
            self._save_info(status=status, finished_at=_now(), epochs_done=len(rows), totals=totals(rows), **extra)
        except OSError as e:  # the disk may be what failed; the status cannot be recorded then
            log.error("could not record status %s in %s: %s", status, self.json_path, e)

    def _fit(self, ckpt: dict | None, start_epoch: int, timing: str) -> dict[str, Any]:
        """build -> epoch loop (train, evaluate, record, checkpoint) -> finish."""
        b = self._build(ckpt, start_epoch, timing)
        epochs_log = CsvLog(self.run_dir / "epochs.csv", EPOCH_COLUMNS) if self.main else None
        batches_log = CsvLog(self.run_dir / "batches.csv", BATCH_COLUMNS) if self.main else None
        if self.cfg.logger == "tensorboard" and self.main:
            from .live import TensorBoardLog

            self.tb = TensorBoardLog(self.run_dir / "tb")
            log.info(
                "logger=tensorboard: live figures in %s (tensorboard --logdir %s)", self.run_dir / "tb", self.run_dir
            )
        try:
            with _StopFlag() as stop:
                for epoch in range(start_epoch, self.cfg.epochs):
                    stats = self._train_one_epoch(b, epoch, stop, batches_log)
                    row = self._evaluate_and_record(b, epoch, stats, epochs_log, batches_log)
                    self._checkpoint(b, epoch)
                    log.info(
                        "epoch %d/%d | train loss %.4f acc %.4f | test loss %.4f acc %.4f | data %.2fs compute %.2fs "
                        "other %.2fs epoch %.2fs | %.0f img/s%s",
                        epoch + 1, self.cfg.epochs, row["train_loss"], row["train_acc"], row["test_loss"],
                        row["test_acc"], row["data_time_s"], row["compute_time_s"], row["other_time_s"],
                        row["epoch_time_s"], row["samples_per_s"],
                        f" | comm {row['comm_time_s']:.2f}s ({self.ranks.world} ranks)" if self.ranks.active else "",
                    )  # fmt: skip
                    if stop():
                        raise Interrupted(f"stop requested; stopped after epoch {epoch}")
        finally:
            for lg in (epochs_log, batches_log):
                if lg is not None:
                    lg.close()
            if self.tb is not None:
                self.tb.close()
        return self._complete()

    def _build(self, ckpt: dict | None, start_epoch: int, timing: str) -> _Built:
        """Data, model, optimizer, scaler, loaders and generators from the config; restored from ckpt; warmed up."""
        cfg, dev = self.cfg, self.device
        seed_everything(cfg.seed)
        if dev.type == "cuda":
            torch.backends.cudnn.benchmark = bool(cfg.cudnn_benchmark)
        t = time.perf_counter()
        train_data, test_data = load_data(cfg.data, test_needed=cfg.test_eval)
        log.info(
            "data=%s: %d train / %s test images (data.train_size=%s, data.test_size=%s) in %.1fs",
            cfg.data.name, len(train_data), len(test_data) if test_data is not None else "no", cfg.data.train_size,
            cfg.data.test_size, time.perf_counter() - t,
        )  # fmt: skip
        r = self.ranks
        model = build_model(cfg, len(train_data.classes), dev, sync_bn=r.active and cfg.dist.sync_bn)
        ctx = step_context(cfg, model, dev)
        shuffle_gen = torch.Generator().manual_seed(cfg.seed)
        train_loader = make_loader(cfg, train_data, True, dev, shuffle_gen, r.rank, r.world)
        test_loader = make_loader(cfg, test_data, False, dev, None, r.rank, r.world) if test_data is not None else None
        loader_gen = train_loader.generator if isinstance(train_loader, DeviceLoader) else shuffle_gen
        log.info(
            "device=%s -> %s; loader=%s workers=%d; optimizer=%s lr=%g; norm=%s; precision=%s "
            "channels_last=%s compile=%s timing=%s; %d trainable parameters",
            cfg.device.name, dev, cfg.loader.name, cfg.workers, cfg.optimizer.name, cfg.optimizer.lr,
            cfg.norm.name, cfg.precision, cfg.channels_last, cfg.compile, timing, count_trainable(model),
        )  # fmt: skip
        if cfg.loader.name == "device" and cfg.workers:
            log.info("loader=device uses no worker processes; workers is ignored")
        b = _Built(ctx, model, train_loader, test_loader, loader_gen, timing, global_step=0)
        self._restore(b, ckpt, start_epoch)
        if r.active:
            from torch.nn.parallel import DistributedDataParallel as DDP

            # DDP broadcasts rank 0's parameters and buffers here, so every rank starts from the same model
            ctx.model = DDP(model, device_ids=[dev.index] if dev.type == "cuda" else None)
            ctx.comm = D.CommClock()
            ctx.model.register_comm_hook(None, ctx.comm.hook)
            log.info("dist: rank %d of %d, backend %s, %d torch threads per rank; batch_size=%d per rank, global "
                     "batch %d; %s", r.rank, r.world, torch.distributed.get_backend(), torch.get_num_threads(),
                     cfg.batch_size, cfg.batch_size * r.world, _batchnorm_note(cfg, r))  # fmt: skip
        if cfg.compile:
            ctx.model = torch.compile(model)
        shapes = batch_shapes(_items(train_loader), _items(test_loader), cfg.batch_size)  # this rank's share
        # DDP rebuilds its gradient buckets after its first step: with several ranks, two steps per shape
        warm_s = warm_up(ctx, model, loader_gen, *shapes, image_size=int(train_data.images.shape[1]),
                         classes=len(train_data.classes), steps_per_shape=2 if r.active else 1)  # fmt: skip
        self._save_info(warmup_time_s=warm_s, **({"compile_time_s": warm_s} if cfg.compile else {}))
        if self.main:
            self._count_flops(b, int(train_data.images.shape[1]), len(train_data.classes))
        if r.active:
            ctx.comm.take()  # the warm-up's all-reduces are in no epoch
            torch.distributed.barrier()  # every rank starts epoch 0 together (rank 0 counted FLOPs alone)
        log.info("warm-up (untimed, state restored): %.2fs for train batch sizes %s and test batch sizes %s%s", warm_s,
                 shapes[0], shapes[1], "; compile=true: compile time is this, reported as compile_time_s" if cfg.compile else "")  # fmt: skip
        return b

    def _count_flops(self, b: _Built, image_size: int, classes: int) -> None:
        """FLOPs per image of a training step (counted once, on a copy of the model) and the device's peak."""
        fresh = build_model(self.cfg, classes, self.device)  # the same FLOPs as b.model (which may be SyncBatchNorm)
        b.flops_per_image = step_flops_per_image(fresh, image_size, classes)
        peak = device_peak(self.device, self.cfg.precision, bool(self.cfg.tf32))
        b.peak_tflops = peak.tflops if peak else None
        self._save_info(flops_per_image=b.flops_per_image, peak_tflops=b.peak_tflops,
                        peak_source=peak.source if peak else "unknown device: no utilisation (mfu) reported")  # fmt: skip
        log.info("%.3g GFLOP per image per training step (forward + backward); peak %s", b.flops_per_image / 1e9,
                 f"{peak.tflops:.3g} TFLOP/s ({peak.source})" if peak else "unknown")  # fmt: skip

    def _restore(self, b: _Built, ckpt: dict | None, start_epoch: int) -> None:
        """Continue from ckpt (state, RNGs, sampler); drop CSV rows written after it."""
        if ckpt is not None:
            b.model.load_state_dict(ckpt["model"])
            b.ctx.optimizer.load_state_dict(ckpt["optimizer"])
            if b.ctx.scaler is not None and ckpt.get("scaler"):
                b.ctx.scaler.load_state_dict(ckpt["scaler"])
            if self.cfg.resume.restore_rng:
                b.loader_gen.set_state(ckpt["loader_generator"])
                ckpt_mod.set_rng_state(ckpt["rng"], self.device)
            else:
                log.warning("resume.restore_rng=false: RNG and sampler state NOT restored (results will differ)")
            b.global_step = ckpt["global_step"]
        # Rows written after the checkpoint (killed between an epoch row and its checkpoint) are redone.
        if not self.main:
            return
        dropped = keep_rows(self.run_dir / "epochs.csv", EPOCH_COLUMNS, lambda r: int(r["epoch"]) < start_epoch)
        dropped_b = keep_rows(self.run_dir / "batches.csv", BATCH_COLUMNS, lambda r: int(r["epoch"]) < start_epoch)
        if ckpt is not None or dropped or dropped_b:
            log.info(
                "resuming %s: epochs 0..%d done; dropped %d epoch and %d batch rows written after it",
                Path(ckpt["path"]).name if ckpt else "from scratch", start_epoch - 1, dropped, dropped_b,
            )  # fmt: skip

    def _train_one_epoch(self, b: _Built, epoch: int, stop: _StopFlag, batches_log: CsvLog | None) -> EpochStats:
        """The timed epoch, with a batch row and the progress bar per batch (rank 0; other ranks' rows after it)."""
        r = self.ranks
        set_epoch(b.train_loader, epoch)  # order and augmentation are functions of (seed, epoch, index)
        bar = tqdm(total=len(b.train_loader), desc=f"epoch {epoch + 1}/{self.cfg.epochs}",
                   disable=self._bars_off if self.main else True, leave=False, mininterval=0.5, unit="batch")  # fmt: skip
        prof = self._profiler(epoch)
        self._rank_rows = []
        faults = self.cfg.faults

        def on_batch(rec, stats: EpochStats) -> None:
            profiled = int(prof is not None and prof.profiled(rec.batch))
            stats.profiled_steps += profiled
            row = {**dataclasses.asdict(rec), "profiled": profiled, "rank": r.rank}
            if batches_log is not None and not r.active:
                batches_log.write(row)  # one process: live, flushed per row
            else:
                self._rank_rows.append(row)  # several ranks: rank 0 writes every rank's rows after the epoch
            if self.tb is not None:
                self.tb.batch(rec)
            if (
                faults.kill_at_step is not None
                and rec.step == faults.kill_at_step
                and r.rank == (faults.kill_rank or 0)
            ):
                os.kill(os.getpid(), signal.SIGKILL)  # injected fault: this rank dies mid-epoch
            bar.update(1)
            busy = stats.data_time_s + stats.compute_time_s
            bar.set_postfix(loss=f"{rec.loss:.3f}", acc=f"{stats.acc:.3f}",
                            img_s=f"{stats.samples / busy:.0f}" if busy else "-", refresh=False)  # fmt: skip

        # With several ranks, a stop must land at the same batch on all of them: a collective per batch (other time)
        stop_requested = (lambda: D.any_rank(stop(), self.device)) if r.active else stop
        try:
            with prof if prof is not None else contextlib.nullcontext():
                stats = train_epoch(b.ctx, b.train_loader, epoch, first_step=b.global_step, on_batch=on_batch,
                                    stop_requested=stop_requested, timing=b.timing, phases=self.cfg.phase_clocks,
                                    after_step=prof.step if prof is not None else None)  # fmt: skip
        finally:
            bar.close()
        b.global_step += stats.batches
        return stats

    def _profiler(self, epoch: int) -> Any | None:
        """profile=true: the profiler for profiler.epoch, else None."""
        pc = self.cfg.profiler
        if not self.cfg.profile or epoch != pc.epoch:
            return None
        from .profiling import EpochProfiler

        log.info("profile=true: profiling epoch %d (profiler.epoch=%d), steps %d..%d traced (profiler.wait=%d, "
                 "warmup=%d, active=%d); they run slower and are marked profiled in batches.csv", epoch + 1, pc.epoch,
                 pc.wait, pc.wait + pc.warmup + pc.active - 1, pc.wait, pc.warmup, pc.active)  # fmt: skip
        return EpochProfiler(self.run_dir / "profile", self.device, pc.wait, pc.warmup, pc.active, pc.record_shapes)

    def _evaluate_and_record(self, b: _Built, epoch: int, stats: EpochStats, epochs_log: CsvLog | None,
                             batches_log: CsvLog | None = None) -> dict[str, Any]:  # fmt: skip
        """Test loss/accuracy (after the epoch clock stopped: in no timed figure), then the epoch's row.

        With several ranks, every rank evaluates its share of the test split, and rank 0 writes one row over all
        ranks: losses and accuracies sample-weighted, epoch_time_s the slowest rank's, the other clocks the mean
        over ranks (with their max beside them), and every rank's batch rows."""
        t = time.perf_counter()
        sums = (0.0, 0, 0)
        if b.test_loader is not None:
            ebar = tqdm(b.test_loader, desc=f"test {epoch + 1}/{self.cfg.epochs}",
                        disable=self._bars_off if self.main else True, leave=False, mininterval=0.5, unit="batch")  # fmt: skip
            sums = evaluate_sums(b.ctx, ebar)
            ebar.close()
        synchronize(self.device)
        eval_s = time.perf_counter() - t if b.test_loader is not None else math.nan
        per_rank = [dataclasses.asdict(stats)]
        if self.ranks.active:
            got = D.gather((dataclasses.asdict(stats), sums, self._rank_rows))
            per_rank = [g[0] for g in got]
            sums = tuple(sum(g[1][i] for g in got) for i in range(3))  # type: ignore[assignment]
            if batches_log is not None:
                for g in got:
                    for row in g[2]:
                        batches_log.write(row)
        test_loss, test_acc = (sums[0] / sums[2], sums[1] / sums[2]) if sums[2] else (math.nan, math.nan)
        row = epoch_row(per_rank, self.cfg.phase_clocks)
        row.update(epoch=epoch, test_loss=test_loss, test_acc=test_acc, eval_time_s=eval_s,
                   lr=b.ctx.optimizer.param_groups[0]["lr"], timing_mode=b.timing, world_size=self.ranks.world)  # fmt: skip
        # achieved = counted FLOPs over compute time (the rate while computing); mfu against the devices' peak
        tflops = (b.flops_per_image * row["samples"] / row["compute_time_s"] / 1e12
                  if row["compute_time_s"] else math.nan)  # fmt: skip
        row["achieved_tflops"] = tflops
        row["mfu"] = tflops / (b.peak_tflops * self.ranks.world) if b.peak_tflops else None
        if epochs_log is not None:
            epochs_log.write(row)
        if self.tb is not None:
            self.tb.epoch(row)
        return row

    def _checkpoint(self, b: _Built, epoch: int) -> None:
        """The end-of-epoch checkpoint (atomic; rank 0 alone: the ranks' models are the same), then run.json's progress."""
        if self.cfg.checkpoint.enabled and self.main:
            state = {
                "model": b.model.state_dict(), "optimizer": b.ctx.optimizer.state_dict(),
                "scaler": b.ctx.scaler.state_dict() if b.ctx.scaler is not None else None,
                "rng": ckpt_mod.rng_state(self.device), "loader_generator": b.loader_gen.get_state(),
                "global_step": b.global_step, "fingerprint": self.info["fingerprint"],
                "train_config": self.info["train_config"],
            }  # fmt: skip
            ckpt_mod.save_checkpoint(self.run_dir, epoch, state, self.cfg.checkpoint.keep)
        self._save_info(epochs_done=epoch + 1)

    def _complete(self) -> dict[str, Any]:
        """Mark the run complete with its totals; drop its checkpoints unless checkpoint.keep_on_complete."""
        if not self.main:
            return self.info
        rows = read_rows(self.run_dir / "epochs.csv", EPOCH_COLUMNS)
        tot = totals(rows)
        self._save_info(status="complete", finished_at=_now(), epochs_done=len(rows), totals=tot)
        if not self.cfg.checkpoint.keep_on_complete:
            removed = ckpt_mod.remove_checkpoints(self.run_dir)
            if removed:
                log.info("removed %d checkpoint(s) of the complete run (checkpoint.keep_on_complete=false)", removed)
        log.info(
            "done: %d epochs | total epoch %.2fs (avg %.2fs) = data %.2fs + compute %.2fs + other %.2fs | run dir %s",
            len(rows), tot.get("total_epoch_time_s", 0), tot.get("avg_epoch_time_s", 0), tot.get("total_data_time_s", 0),
            tot.get("total_compute_time_s", 0), tot.get("total_other_time_s", 0), self.run_dir,
        )  # fmt: skip
        return self.info


@dataclasses.dataclass(frozen=True)
class Plan:
    """A checked config and the device it resolved to: what a run takes, produced once by make_plan()."""

    cfg: DictConfig
    device: torch.device
    precision: dict | None = None  # precision=auto: {"requested", "resolved", "why"} (run.json's precision_auto)


def make_plan(cfg: DictConfig) -> Plan:
    """Range-check cfg, resolve its device and precision=auto (ConfigError names the key, the value and the choices).

    precision=auto is replaced by what it resolved to, so that the run, its fingerprint and run.json's config
    say what really ran; run.json's precision_auto says why."""
    validate(cfg)
    device = resolve_device(cfg.device.name)
    D.check_dist(cfg, device)
    note = None
    if cfg.precision == "auto":
        resolved, why = resolve_precision("auto", device)
        cfg = copy.deepcopy(cfg)
        cfg.precision = resolved
        note = {"requested": "auto", "resolved": resolved, "why": why}
        log.info("precision=auto -> %s: %s", resolved, why)
    check_device_options(cfg, device)
    return Plan(cfg, device, note)


def run(cfg: DictConfig | Plan, run_dir: Path | None = None) -> dict[str, Any]:
    """Train in run_dir (default: the Hydra job's output dir); returns run.json's content.

    cfg is a Plan (checked once by the caller) or a config, which is then checked here. With dist.nproc > 1
    the ranks are started here (elastic launcher) or, when torchrun/SLURM started this process, joined."""
    plan = cfg if isinstance(cfg, Plan) else make_plan(cfg)
    run_dir = Path(run_dir) if run_dir is not None else hydra_run_dir()
    d = plan.cfg.dist
    if world_size(plan.cfg) > 1:
        ranks = D.env_ranks()
        if ranks is None:
            if d.nnodes > 1:
                raise ConfigError("dist.nnodes", d.nnodes, "1, or start the ranks with torchrun / SLURM",
                                  "trainbench starts the ranks of one node itself")  # fmt: skip
            run_dir.mkdir(parents=True, exist_ok=True)
            return D.launch(plan.cfg, run_dir, plan.precision, hydra_info())
        return run_rank(plan.cfg, str(run_dir), plan.precision, hydra_info(), ranks)
    run_dir.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    if d.threads:  # pinned like a rank's (a 1-rank baseline of a scaling sweep then does the same work per step)
        torch.set_num_threads(int(d.threads))
    try:
        with RunLock(run_dir):
            t = Trainer(plan.cfg, plan.device, run_dir)
            if plan.precision is not None:
                t.info["precision_auto"] = plan.precision
            return t.fit()
    finally:
        torch.set_num_threads(threads)  # the next job of a sweep in this process starts as this one did


def run_rank(cfg: DictConfig, run_dir: str, precision_note: dict | None, meta: dict,
             ranks: D.Ranks | None = None) -> dict[str, Any] | None:  # fmt: skip
    """One rank of a data-parallel run: join the process group, agree on rank 0's run dir, train.

    Returns run.json's content on rank 0 (None on the others)."""
    r = ranks or D.env_ranks() or D.SINGLE
    torch.set_num_threads(D.threads_per_rank(cfg, r.local_world))  # the node's cores shared among its ranks
    _rank_logging(r, Path(run_dir))
    device = D.rank_device(resolve_device(cfg.device.name), r)
    D.init(cfg, device, r)
    rd: Path | None = None
    try:
        rd = Path(D.broadcast(run_dir))  # torchrun: each process's Hydra made its own dir; rank 0's is the run's
        rd.mkdir(parents=True, exist_ok=True)
        with RunLock(rd) if r.main else contextlib.nullcontext():
            t = Trainer(cfg, device, rd, r, meta)
            if precision_note is not None:
                t.info["precision_auto"] = precision_note
            info = t.fit()
        return info if r.main else None
    finally:
        torch.distributed.destroy_process_group()
        if not r.main:
            _discard_own_hydra_dir(rd)


def _discard_own_hydra_dir(used: Path | None) -> None:
    """torchrun: a non-zero rank's own Hydra job dir (not the run's) is removed if it holds only Hydra's files."""
    from hydra.core.hydra_config import HydraConfig

    if used is None or not HydraConfig.initialized():
        return
    own = hydra_run_dir()
    if own.resolve() != used.resolve():
        from .cli import discard_if_untouched

        discard_if_untouched(own)


def _rank_logging(r: D.Ranks, run_dir: Path) -> None:
    """Rank 0 logs as a single run does (and into the run dir's train.log); the others warnings only."""
    lg = logging.getLogger("trainbench")
    if lg.handlers or logging.getLogger().handlers:
        if not r.main:
            lg.setLevel(logging.WARNING)
        return  # Hydra configured logging in this process (torchrun): keep it
    fmt = logging.Formatter(f"[%(asctime)s][trainbench][rank {r.rank}][%(levelname)s] - %(message)s")
    h = logging.StreamHandler()
    h.setFormatter(fmt)
    lg.addHandler(h)
    lg.setLevel(logging.INFO if r.main else logging.WARNING)
    if r.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(run_dir / "train.log")
        fh.setFormatter(fmt)
        lg.addHandler(fh)
