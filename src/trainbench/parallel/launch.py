"""Start the ranks of one run on this node through torch.distributed's elastic launcher (what torchrun uses).

`python train.py dist.nproc=N` runs N ranks of one run inside the one Hydra job, so a sweep over dist.nproc
works like any other and each run keeps one run dir (passed to every rank; rank 0 writes the files). The
launcher takes the function each rank runs (a module-level function, picklable for spawn), so this module
imports nothing above it.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from typing import Any

import torch

from ..timing.epoch import Interrupted
from .ranks import RankFailed, resolve_backend

log = logging.getLogger("trainbench")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(entry: Callable[..., Any], cfg: Any, *args: Any) -> Any:
    """Run entry(cfg as a dict, *args) on cfg.dist.nproc ranks of this node (torch.distributed's elastic
    launcher); returns rank 0's result.

    entry must be a module-level function (the ranks are spawned). A rank that dies or raises ends the run (the
    launcher stops the others) with RankFailed naming it; SIGTERM/SIGINT stop every rank (Interrupted)."""
    from omegaconf import OmegaConf
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    n = int(cfg.dist.nproc)
    if os.environ.get("HYDRA_FULL_ERROR") != "1":
        # the launcher logs every rank's traceback at ERROR; the run ends with one clear line instead
        logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    lc = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=n,
        run_id=f"trainbench-{os.getpid()}-{time.time_ns()}",
        rdzv_backend="c10d",
        rdzv_endpoint=f"127.0.0.1:{_free_port()}",
        max_restarts=0,
        monitor_interval=0.1,
        start_method="spawn",
    )
    cfg_dict = OmegaConf.to_container(cfg, resolve=True)
    log.info(
        "dist.nproc=%d: starting %d ranks (torch.distributed elastic launcher, backend %s)",
        n,
        n,
        resolve_backend(cfg.dist.backend, torch.device("cuda" if cfg.device.name == "cuda" else "cpu")),
    )
    from torch.distributed.elastic.multiprocessing.api import SignalException

    # the launcher installs its own handlers for these and leaves them in place: put ours back afterwards
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)}
    try:
        results = elastic_launch(lc, entry)(cfg_dict, *args)
    except ChildFailedError as e:
        raise RankFailed(_describe(e)) from None
    except SignalException as e:  # SIGTERM/SIGINT to this process: the ranks were asked to stop (batch boundary)
        raise Interrupted(f"stopped by {e.sigval.name}; every rank stopped at a batch boundary") from None
    finally:
        for s, h in saved.items():
            if h is not None:
                signal.signal(s, h)
    return results[0]


def _describe(e: Any) -> str:
    """'rank 1 was killed by SIGKILL; ...' from the launcher's failures."""
    parts = []
    for rank, f in sorted(e.failures.items()):
        if f.signal_name() and f.exitcode < 0:
            what = f"was killed by {f.signal_name()}"
        else:
            msg = f.message if isinstance(f.message, str) else (f.message or {}).get("message", "")
            first = str(msg).strip().splitlines()[0] if msg else ""
            what = f"exited with code {f.exitcode}" + (f": {first[:300]}" if first else "")
        parts.append(f"rank {rank} {what}")
    return "; ".join(parts) + "; the other ranks were stopped"
