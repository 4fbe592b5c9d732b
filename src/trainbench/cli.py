"""What train.py's Hydra task does: run one job, keep a bad job from leaving debris or stopping a sweep."""

from __future__ import annotations

import logging
import os
import shlex
import sys
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from .config import ConfigError
from .console import exit_with
from .data.sources import DataError
from .parallel.ranks import RankFailed
from .plan import make_plan
from .run import hydra_info, run
from .store.checkpoint import CheckpointError, RunDirRefused
from .store.records import RunDirLocked, RunWriteError, read_json, write_json
from .store.runrecord import REFUSED_DIR, RunRecord, discard_if_untouched, now
from .timing.epoch import Diverged, Interrupted, LoaderDied

log = logging.getLogger("trainbench")

_sweep_interrupted = False  # set when a signal stopped a job: the sweep's remaining jobs do not start
# Errors a user can cause and fix: one clear message, no traceback (HYDRA_FULL_ERROR=1 shows it).
EXPECTED = (ConfigError, DataError, CheckpointError, RunDirLocked, RunWriteError, Diverged, LoaderDied, RankFailed)


def swept_in_one_process(key: str) -> bool:
    """True when this multirun sweeps `key` over several values and runs its jobs in this one process."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    hc = HydraConfig.get()
    if not str(hc.launcher.get("_target_", "")).endswith("BasicLauncher"):
        return False
    specs = [a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith(f"{key}=")]
    specs += [str(hc.sweeper.params[key])] if hc.sweeper.get("params") and key in hc.sweeper.params else []
    parser = OverridesParser.create()
    return any(parser.parse_override(f"{key}={v}").is_sweep_override() for v in specs)


def resume_command(run_dir: Path) -> str:
    """The command that continues this run: the same overrides, pinned to its run dir."""
    overrides = [o for o in HydraConfig.get().overrides.task if not o.startswith("hydra.run.dir=")]
    return shlex.join(["python", "train.py", *overrides, f"hydra.run.dir={run_dir}"])


def run_job(cfg: DictConfig) -> None:
    """Run one Hydra job; in a multirun a failing job is recorded and logged, and the sweep goes on."""
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    run_dir = Path(hc.runtime.output_dir)
    try:
        # Every check that needs no training runs here, before any trainbench file is written.
        plan = make_plan(cfg, overrides=tuple(hc.overrides.task))  # checked once; run() takes the plan as it is
    except (ConfigError, DataError) as e:
        if not multirun:
            discard_if_untouched(run_dir)
            exit_with(e)
        _record_failure(cfg, run_dir, e)
        log.error("job %s failed before training: %s", hc.job.num, e)
        return
    global _sweep_interrupted
    if multirun and not _may_start(cfg, run_dir, hc.job.num):
        return
    try:
        run(plan, run_dir)
    except RankFailed as e:
        e = _rank_failure(run_dir, e)  # a killed rank 0 cannot record it; the launcher's process does
        if not multirun:
            exit_with(e, f" (run dir: {run_dir})")
        log.error("job %s (%s) ended with %s: %s", hc.job.num, run_dir, type(e).__name__, e)
    except Exception as e:
        if not multirun:
            if isinstance(e, Interrupted):
                exit_with(
                    e,
                    f"\nrun dir {run_dir} keeps every finished epoch; resume with:\n  {resume_command(run_dir)}",
                    code=130,
                )
            if isinstance(e, EXPECTED):
                discard_if_untouched(run_dir)
                exit_with(e, f" (run dir: {run_dir})" if run_dir.is_dir() else "")
            raise
        if isinstance(e, Interrupted):
            _sweep_interrupted = True
        if isinstance(e, RunDirRefused):  # the old run stays as it was; the sweep's report must say so
            (run_dir.parent / REFUSED_DIR).mkdir(exist_ok=True)
            write_json(
                run_dir.parent / REFUSED_DIR / f"{hc.job.num}.json",
                {"job": hc.job.num, "run_dir": str(run_dir), "error": str(e), "overrides": list(hc.overrides.task)},
            )
        if read_json(run_dir / "run.json") is None:
            _record_failure(cfg, run_dir, e)
        # an error a user can cause (divergence, bad data, a locked dir) is one line; a bug keeps its traceback
        report = log.error if isinstance(e, EXPECTED) and os.environ.get("HYDRA_FULL_ERROR") != "1" else log.exception
        report("job %s (%s) ended with %s: %s", hc.job.num, run_dir, type(e).__name__, e)


def _may_start(cfg: DictConfig, run_dir: Path, job: int) -> bool:
    """A sweep's job starts unless it sweeps cudnn_benchmark in one process or an earlier job was interrupted."""
    if swept_in_one_process("cudnn_benchmark"):
        e = ConfigError(
            "cudnn_benchmark",
            cfg.cudnn_benchmark,
            "one value per process",
            "the jobs of this sweep share one process, so cuDNN's autotuning choice of the first job would time "
            "the others: sweep it with launcher=local (one process per job)",
        )
        _record_failure(cfg, run_dir, e)
        log.error("job %s refused: %s", job, e)
        return False
    if _sweep_interrupted:
        _record_failure(cfg, run_dir, Interrupted("not started: the sweep was interrupted"), status="interrupted")
        log.warning("job %s not started: the sweep was interrupted (re-run the sweep to continue it)", job)
        return False
    return True


class RankDiverged(Diverged):
    """A data-parallel run that diverged: the same status, message and exit code as one process's Diverged."""

    def __init__(self, message: str) -> None:
        RuntimeError.__init__(self, message)


RankDiverged.__name__ = "Diverged"  # the one-line message names it as a single process does


def _rank_failure(run_dir: Path, e: Exception) -> Exception:
    """run.json after a rank failed: `diverged` stays diverged (rank 0 recorded it: the loss is NaN on every rank),
    anything else is failed, naming the rank that failed (rank 0 may have recorded only what it saw: a peer
    gone). Returns the error to report."""
    record = RunRecord(run_dir)
    info = record.info
    if info.get("status") == "diverged":
        return RankDiverged(str(info.get("error") or e))
    extra = {"rank0_error": info["error"]} if info.get("error") else {}
    record.save(status="failed", error=f"{type(e).__name__}: {e}", finished_at=now(), **extra)
    return e


def _record_failure(cfg: DictConfig, run_dir: Path, e: Exception, status: str = "failed") -> None:
    """Leave a run.json with this status (failed, or interrupted) so that the sweep's summary lists the job."""
    try:
        config = OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # an unresolvable value may be the failure itself
        config = None
    error = f"{type(e).__name__}: {e}"
    RunRecord(run_dir).replace(status=status, error=error, config=config, finished_at=now(), **hydra_info())
