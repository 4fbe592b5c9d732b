"""The epoch loop of one run dir: train an epoch (timed), evaluate and record it (untimed), checkpoint, complete.

Ranks are a parameter: with several, every rank trains its shard and rank 0 alone writes the run dir (one
epoch row over all ranks, every rank's batch rows after the epoch). What is built (model, loaders, warm-up)
comes from recipe.py; what the run dir already holds is decided in store/runrecord.py.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from . import profiling
from .data.loaders import set_epoch
from .device import environment, set_precision_flags, synchronize
from .figures import EpochStats, Record, batch_columns, epoch_columns, log_line, tally
from .parallel.ranks import SINGLE, Ranks, any_rank, barrier, gather
from .recipe import Built, attach_ranks, batchnorm_note, build, compile_and_warm_up, count_flops, restore, timing_mode
from .stopflag import StopFlag
from .store import checkpoint
from .store.records import CsvLog
from .store.runrecord import RunRecord, drop_rows_after, now, start_epoch
from .timing.epoch import Diverged, Interrupted, evaluate_sums, train_epoch
from .timing.machine import LoadMeter

log = logging.getLogger("trainbench")


class Trainer:
    """State of one run dir; `fit()` trains from scratch or from the last checkpoint."""

    def __init__(
        self, cfg: DictConfig, device: torch.device, run_dir: Path, ranks: Ranks = SINGLE, meta: dict | None = None
    ) -> None:
        self.cfg, self.device, self.run_dir, self.ranks = cfg, device, run_dir, ranks
        self.meta = meta or {}
        self.record = RunRecord(run_dir, main=ranks.main)  # only rank 0 writes the run dir
        self.main = ranks.main
        self.tb: Any | None = None  # logger=tensorboard
        self.bars_off = None if cfg.progress is None else not cfg.progress  # None: tqdm decides (a terminal or not)

    info = property(lambda self: self.record.info, doc="run.json's content as this process knows it.")

    def fit(self) -> dict[str, Any]:
        """Train cfg.epochs epochs (continuing from a checkpoint), keeping run.json's status true throughout."""
        cfg, dev = self.cfg, self.device
        fp = checkpoint.fingerprint(cfg, dev.type)
        ckpt = checkpoint.load_latest(self.run_dir) if cfg.resume.enabled else None
        start = start_epoch(self.record, ckpt, fp, cfg, dev.type)
        if start is None:
            return self.info
        set_precision_flags(cfg, dev)  # before environment(): run.json records the TF32 flags in force
        timing = timing_mode(cfg, dev)
        if timing != cfg.timing:
            log.warning("timing=%s needs CUDA; using timing=sync on %s", cfg.timing, dev)
        self.info.setdefault("started_at", now())
        self.record.save(
            **_running(cfg, dev, fp, timing, self.ranks),
            run_dir=str(self.run_dir),
            resumed_from_epoch=start if ckpt else None,
            **self.meta,
        )
        try:
            return self._fit(ckpt, start)
        except Diverged as e:
            self.record.finish("diverged", error=str(e), diverged={"epoch": e.epoch, "batch": e.batch, "step": e.step})
            raise
        except (Interrupted, KeyboardInterrupt) as e:
            self.record.finish("interrupted", error=str(e) or "interrupted")
            raise Interrupted(str(e) or "interrupted") from e
        except BaseException as e:
            self.record.finish("failed", error=f"{type(e).__name__}: {e}")
            raise

    def _build(self, ckpt: dict | None, start: int) -> Built:
        """Build, restore from ckpt, drop rows written after it, wrap for ranks, compile and warm up, count FLOPs."""
        cfg, r = self.cfg, self.ranks
        b = build(cfg, self.device, r)
        if ckpt is not None:
            restore(b, ckpt, bool(cfg.resume.restore_rng), self.device)
        if self.main:
            drop_rows_after(self.run_dir, start, ckpt)
        attach_ranks(b, cfg, r)
        warm_s = compile_and_warm_up(b, cfg, r)
        self.record.save(warmup_time_s=warm_s, **({"compile_time_s": warm_s} if cfg.compile else {}))
        if self.main:
            self.record.save(**count_flops(b, cfg))
        if r.active:
            b.ctx.comm.take()  # the warm-up's all-reduces are in no epoch
            torch.distributed.barrier()  # every rank starts epoch 0 together (rank 0 counted FLOPs alone)
        return b

    def _fit(self, ckpt: dict | None, start: int) -> dict[str, Any]:
        """build -> epoch loop (train, evaluate and record, checkpoint) -> complete."""
        b = self._build(ckpt, start)
        epochs_log = CsvLog(self.run_dir / "epochs.csv", epoch_columns()) if self.main else None
        batches_log = CsvLog(self.run_dir / "batches.csv", batch_columns()) if self.main else None
        self.tb = _tensorboard(self.run_dir) if self.cfg.logger == "tensorboard" and self.main else None
        try:
            with StopFlag() as stop:
                for epoch in range(start, self.cfg.epochs):
                    stats, rank_rows = self._train_one_epoch(b, epoch, stop, batches_log)
                    row = self._evaluate_and_record(b, epoch, stats, rank_rows, epochs_log, batches_log)
                    self._checkpoint(b, epoch)
                    _log_epoch(row, self.cfg, self.ranks)  # (and a warning when the remainder was clamped)
                    if stop():
                        raise Interrupted(f"stop requested; stopped after epoch {epoch}")
        finally:
            for lg in (epochs_log, batches_log, self.tb):
                if lg is not None:
                    lg.close()
        return self._complete()

    def _train_one_epoch(
        self, b: Built, epoch: int, stop: StopFlag, batches_log: CsvLog | None
    ) -> tuple[EpochStats, list[dict]]:
        """The timed epoch; returns its stats and (with several ranks) this rank's batch rows, written after it."""
        r = self.ranks
        set_epoch(b.train_loader, epoch)  # order and augmentation are functions of (seed, epoch, index)
        bar = tqdm(
            total=len(b.train_loader),
            desc=f"epoch {epoch + 1}/{self.cfg.epochs}",
            disable=self.bars_off if self.main else True,
            leave=False,
            mininterval=0.5,
            unit="batch",
        )
        prof = profiling.for_epoch(self.cfg, epoch, self.run_dir, self.device, r.rank if r.active else None)
        sink = _BatchSink(r, None if r.active else batches_log, self.tb, bar, prof, self.cfg.faults)
        # With several ranks, a stop must land at the same batch on all of them: a collective per batch (other time)
        stop_requested = (lambda: any_rank(stop())) if r.active else stop  # a CPU collective: no device sync
        try:  # the load meter brackets the epoch outside its clock: cpu_util, others_cpu, load_avg
            with LoadMeter(whole_run_root=r.active) as meter, prof if prof is not None else contextlib.nullcontext():
                stats = train_epoch(
                    b.ctx,
                    b.train_loader,
                    epoch,
                    first_step=b.global_step,
                    on_batch=sink,
                    stop_requested=stop_requested,
                    timing=b.timing,
                    phases=self.cfg.phase_clocks,
                    after_step=prof.step if prof is not None else None,
                )
        finally:
            bar.close()
        stats.update(meter.figures)  # the catalogue's SET figures of the epoch
        b.global_step += stats.batches
        return stats, sink.kept

    def _evaluate_and_record(
        self,
        b: Built,
        epoch: int,
        stats: EpochStats,
        rank_rows: list[dict],
        epochs_log: CsvLog | None,
        batches_log: CsvLog | None,
    ) -> dict[str, Any]:
        """Test loss/accuracy (after the epoch clock stopped: in no timed figure), then the epoch's row.

        With several ranks, every rank evaluates its share of the test split, and rank 0 writes one row over all
        ranks (figures.tally) and every rank's batch rows."""
        sums, eval_s = _test_sums(b, epoch, self.cfg.epochs, self.bars_off if self.main else True)
        per_rank = [dict(stats)]
        if self.ranks.active:
            got = gather((dict(stats), sums, rank_rows))
            per_rank = [g[0] for g in got]
            sums = tuple(sum(g[1][i] for g in got) for i in range(3))  # type: ignore[assignment]
            for row in (row for g in got for row in g[2]) if batches_log is not None else ():
                batches_log.write(row)
        test_loss, test_acc = (sums[0] / sums[2], sums[1] / sums[2]) if sums[2] else (math.nan, math.nan)
        row = tally(per_rank)  # every figure combined across ranks by its catalogue rule
        row.update(
            epoch=epoch,
            test_loss=test_loss,
            test_acc=test_acc,
            eval_time_s=eval_s,
            lr=b.ctx.optimizer.param_groups[0]["lr"],
            timing_mode=b.timing,
            world_size=self.ranks.world,
            **_rates(b, row, self.ranks.world),
        )
        if epochs_log is not None:
            epochs_log.write(row)
        if self.tb is not None:
            self.tb.epoch(row)
        return row

    def _checkpoint(self, b: Built, epoch: int) -> None:
        """The end-of-epoch checkpoint (atomic; rank 0 alone: the ranks' models are the same), run.json's progress,
        and with several ranks a barrier: rank 0's bookkeeping ends before any rank's next epoch clock starts."""
        _save(b, epoch, self.cfg, self.record, self.main)
        if self.ranks.active:
            barrier()

    def _complete(self) -> dict[str, Any]:
        """Mark the run complete with its totals; drop its checkpoints unless checkpoint.keep_on_complete."""
        if not self.main:
            return self.info
        self.record.finish("complete")
        tot, rows = self.record.info["totals"], self.record.info["epochs_done"]
        if not self.cfg.checkpoint.keep_on_complete:
            removed = checkpoint.remove_checkpoints(self.run_dir)
            if removed:
                log.info("removed %d checkpoint(s) of the complete run (checkpoint.keep_on_complete=false)", removed)
        log.info(
            "done: %d epochs | total epoch %.2fs (avg %.2fs) = data %.2fs + compute %.2fs + other %.2fs | run dir %s",
            rows,
            *(
                tot.get(f"{k}_time_s", 0)
                for k in ("total_epoch", "avg_epoch", "total_data", "total_compute", "total_other")
            ),
            self.run_dir,
        )
        return self.info


class _BatchSink:
    """After each training batch (bookkeeping: other time): its row, TensorBoard, the progress bar, faults."""

    def __init__(self, ranks: Ranks, live_log: CsvLog | None, tb: Any, bar: Any, prof: Any, faults: Any) -> None:
        self.ranks, self.live_log, self.tb, self.bar, self.prof, self.faults = ranks, live_log, tb, bar, prof, faults
        self.kept: list[dict] = []  # several ranks: rank 0 writes every rank's rows after the epoch

    def __call__(self, rec: Record, stats: EpochStats) -> None:
        # two batch figures only the run knows: whether the profiler traced this step, and the rank
        rec.profiled, rec.rank = int(self.prof is not None and self.prof.profiled(rec.batch)), self.ranks.rank
        stats.profiled_steps += rec.profiled  # (the epoch added the batch up before this sink saw it)
        row = dict(rec)
        if self.live_log is not None:
            self.live_log.write(row)  # one process: live, flushed per row
        elif self.ranks.active:
            self.kept.append(row)
        if self.tb is not None:
            self.tb.batch(rec)
        f = self.faults
        if f.kill_at_step is not None and rec.step == f.kill_at_step and self.ranks.rank == (f.kill_rank or 0):
            os.kill(os.getpid(), signal.SIGKILL)  # injected fault: this rank dies mid-epoch
        self.bar.update(1)
        busy = stats.data_time_s + stats.compute_time_s
        self.bar.set_postfix(
            loss=f"{rec.loss:.3f}",
            acc=f"{stats.acc:.3f}",
            img_s=f"{stats.samples / busy:.0f}" if busy else "-",
            refresh=False,
        )


def _test_sums(b: Built, epoch: int, epochs: int, bar_off: bool | None) -> tuple[tuple[float, int, int], float]:
    """(loss sum, correct, samples) over this rank's test share, and the seconds it took (NaN without a test set)."""
    t = time.perf_counter()
    sums = (0.0, 0, 0)
    if b.test_loader is not None:
        ebar = tqdm(
            b.test_loader,
            desc=f"test {epoch + 1}/{epochs}",
            disable=bar_off,
            leave=False,
            mininterval=0.5,
            unit="batch",
        )
        sums = evaluate_sums(b.ctx, ebar)
        ebar.close()
    synchronize(b.ctx.device)  # note: sync point; the test pass's queued kernels end here, before the next epoch
    return sums, (time.perf_counter() - t if b.test_loader is not None else math.nan)


def _log_epoch(row: dict[str, Any], cfg: DictConfig, ranks: Ranks) -> None:
    """The epoch's one line on the console and in train.log."""
    comm = (
        f" | comm exposed {row['comm_exposed_s']:.2f}s (all-reduce span {row['comm_time_s']:.2f}s, inside compute; "
        f"{ranks.world} ranks)"
    )
    log.info("%s%s", log_line(row, cfg.epochs), comm if ranks.active else "")  # the catalogue's log figures
    if row.get("clamped_s", 0) > 0:
        log.warning(
            "epoch %d: data + compute exceeded the epoch by %.3gs (clocks that overlap); other_time_s was "
            "clamped to 0 and clamped_s records it",
            row["epoch"] + 1,
            row["clamped_s"],
        )


def _running(cfg: DictConfig, dev: torch.device, fp: str, timing: str, ranks: Ranks) -> dict[str, Any]:
    """run.json's keys as a run starts (or resumes): status, config, environment, clock, ranks."""
    return {
        "status": "running",
        "error": None,
        "fingerprint": fp,
        "config": OmegaConf.to_container(cfg, resolve=True),
        "train_config": checkpoint.training_config(cfg, dev.type),
        "environment": environment(dev),
        "timing_mode": timing,
        "world_size": ranks.world,
        "global_batch": cfg.batch_size * ranks.world,
        "batchnorm": batchnorm_note(cfg, ranks),
    }


def _tensorboard(run_dir: Path) -> Any:
    """logger=tensorboard: live per-batch and per-epoch scalars in run_dir/tb."""
    from .live import TensorBoardLog

    log.info("logger=tensorboard: live figures in %s (tensorboard --logdir %s)", run_dir / "tb", run_dir)
    return TensorBoardLog(run_dir / "tb")


def _state(b: Built, info: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's content: model, optimizer, scaler, RNGs, the sampler's generator, the step, the config."""
    return {
        "model": b.model.state_dict(),
        "optimizer": b.ctx.optimizer.state_dict(),
        "scaler": b.ctx.scaler.state_dict() if b.ctx.scaler is not None else None,
        "rng": checkpoint.rng_state(b.ctx.device),
        "loader_generator": b.loader_gen.get_state(),
        "global_step": b.global_step,
        "fingerprint": info["fingerprint"],
        "train_config": info["train_config"],
    }


def _rates(b: Built, row: dict[str, Any], world: int) -> dict[str, Any]:
    """achieved = counted FLOPs over compute time (the rate while computing); mfu against the devices' peak."""
    tflops = b.flops_per_image * row["samples"] / row["compute_time_s"] / 1e12 if row["compute_time_s"] else math.nan
    own = b.peak_precision_tflops
    return {
        "achieved_tflops": tflops,
        "mfu": tflops / (b.peak_tflops * world) if b.peak_tflops else None,
        "mfu_precision": tflops / (own * world) if own else None,
    }


def _save(b: Built, epoch: int, cfg: DictConfig, record: RunRecord, main: bool) -> None:
    """Rank 0's checkpoint of this epoch, then run.json's progress."""
    if cfg.checkpoint.enabled and main:
        time.sleep(cfg.faults.checkpoint_delay_s)  # injected fault: a slow disk (tests)
        checkpoint.save_checkpoint(record.run_dir, epoch, _state(b, record.info), cfg.checkpoint.keep)
    record.save(epochs_done=epoch + 1)
