"""One training run: a single process, or the ranks of a data-parallel run (started here or by torchrun/SLURM).

run(plan, run_dir) takes a checked Plan (plan.py) and trains in run_dir through the Trainer (trainer.py), under
the run dir's lock. With dist.nproc > 1 it starts the ranks through the elastic launcher (parallel/launch.py), or,
when torchrun/SLURM started this process, joins them.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from .config import world_size
from .device import resolve_device
from .parallel.launch import launch
from .parallel.ranks import SINGLE, Ranks, broadcast, env_ranks, init_group, rank_device, threads_per_rank
from .plan import Plan, make_plan
from .store.runrecord import RunLock, discard_if_untouched
from .trainer import Trainer

log = logging.getLogger("trainbench")
# torch warns about a large worker count each time a DataLoader is made (train and test, every job): once is enough
warnings.filterwarnings("once", message=r"This DataLoader will create", category=UserWarning)


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


def _meta(plan: Plan) -> dict:
    """hydra_info() as the run used it: with a tuned preset applied, `choices` names the loader that ran."""
    meta = hydra_info()
    if plan.tuned is not None:
        meta["tuned_preset"] = plan.tuned
        if "choices" in meta and "loader" in meta["choices"]:
            meta["choices"] = {**meta["choices"], "loader": plan.cfg.loader.name}
    return meta


def run(cfg: DictConfig | Plan, run_dir: Path | None = None) -> dict[str, Any]:
    """Train in run_dir (default: the Hydra job's output dir); returns run.json's content.

    cfg is a Plan (checked once by the caller) or a config, which is then checked here. With dist.nproc > 1
    the ranks are started here (elastic launcher) or, when torchrun/SLURM started this process, joined."""
    plan = cfg if isinstance(cfg, Plan) else make_plan(cfg)
    run_dir = Path(run_dir) if run_dir is not None else hydra_run_dir()
    if world_size(plan.cfg) > 1:
        ranks = env_ranks()
        if ranks is None:
            run_dir.mkdir(parents=True, exist_ok=True)
            return launch(_rank_entry, plan.cfg, str(run_dir), plan.precision, _meta(plan))
        return run_rank(plan.cfg, str(run_dir), plan.precision, _meta(plan), ranks)
    run_dir.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    if plan.cfg.dist.threads:  # pinned like a rank's (a 1-rank baseline of a scaling sweep then does the same work)
        torch.set_num_threads(int(plan.cfg.dist.threads))
    try:
        with RunLock(run_dir):
            t = Trainer(plan.cfg, plan.device, run_dir, meta=_meta(plan))
            if plan.precision is not None:
                t.info["precision_auto"] = plan.precision
            return t.fit()
    finally:
        torch.set_num_threads(threads)  # the next job of a sweep in this process starts as this one did


def _rank_entry(cfg_dict: dict, run_dir: str, precision_note: dict | None, meta: dict) -> dict | None:
    """One rank, started by the elastic launcher: join the group, train, return run.json's content (rank 0)."""
    if sys.platform.startswith("linux"):
        # A spawned process inherits "spawn" as its start method, so DataLoader workers would re-import torch
        # (measured: 6 s of first-batch data time per epoch with workers=2). Linux's usual fork, as under torchrun.
        multiprocessing.set_start_method("fork", force=True)
    return run_rank(OmegaConf.create(cfg_dict), run_dir, precision_note, meta)


def run_rank(
    cfg: DictConfig, run_dir: str, precision_note: dict | None, meta: dict, ranks: Ranks | None = None
) -> dict[str, Any] | None:
    """One rank of a data-parallel run: join the process group, agree on rank 0's run dir, train.

    Returns run.json's content on rank 0 (None on the others)."""
    r = ranks or env_ranks() or SINGLE
    torch.set_num_threads(threads_per_rank(cfg, r.local_world))  # the node's cores shared among its ranks
    _rank_logging(r, Path(run_dir))
    device = rank_device(resolve_device(cfg.device.name), r)
    init_group(cfg, device, r)
    rd: Path | None = None
    try:
        rd = Path(broadcast(run_dir))  # torchrun: each process's Hydra made its own dir; rank 0's is the run's
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
        discard_if_untouched(own)


def _rank_logging(r: Ranks, run_dir: Path) -> None:
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
