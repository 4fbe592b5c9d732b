"""Data-parallel training on torch.distributed: ranks, the launcher, the communication clock, collectives.

`python train.py dist.nproc=N` runs N ranks of one run through torch.distributed's elastic launcher (what
torchrun uses) inside the one Hydra job, so a sweep over dist.nproc works like any other and each run keeps
one run dir (passed to every rank; rank 0 writes the files). Started by torchrun or SLURM instead, the ranks
come from the environment and agree on rank 0's run dir.

The communication clock is a DDP communication hook: each gradient bucket's all-reduce is timed from launch
to completion on the host, with its bytes. The all-reduce runs during backward (DDP launches a bucket as soon
as its gradients are ready), so comm_time_s overlaps backward_time_s: it is the span of the step's
all-reduces (first launch to last completion), waiting for the slowest rank included. comm_exposed_s is
the part backward waits for: from the last bucket's launch (its gradients, the last ones, are ready:
backward's compute is done) to the last completion. That is what the lab's subtraction estimates.
"""

from __future__ import annotations

import datetime
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

log = logging.getLogger("trainbench")


class RankFailed(RuntimeError):
    """A rank of a data-parallel run died or raised; the whole run was stopped."""


@dataclass(frozen=True)
class Ranks:
    """This process's place in the run: rank, world size, rank on its node."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


SINGLE = Ranks()


def env_ranks() -> Ranks | None:
    """Ranks from the environment: torchrun / elastic (RANK, WORLD_SIZE, LOCAL_RANK) or SLURM; None if absent."""
    e = os.environ
    if "RANK" in e and "WORLD_SIZE" in e and int(e["WORLD_SIZE"]) > 1:
        return Ranks(int(e["RANK"]), int(e["WORLD_SIZE"]), int(e.get("LOCAL_RANK", 0)),
                     int(e.get("LOCAL_WORLD_SIZE", e["WORLD_SIZE"])))  # fmt: skip
    if "SLURM_PROCID" in e and int(e.get("SLURM_NTASKS", "1")) > 1:
        return Ranks(int(e["SLURM_PROCID"]), int(e["SLURM_NTASKS"]), int(e.get("SLURM_LOCALID", 0)),
                     int(e.get("SLURM_NTASKS_PER_NODE", e["SLURM_NTASKS"]).split("(")[0]))  # fmt: skip
    return None


def resolve_backend(name: str, device: torch.device) -> str:
    """dist.backend=auto: nccl on CUDA, gloo elsewhere."""
    return ("nccl" if device.type == "cuda" else "gloo") if name == "auto" else name


def check_dist(cfg: Any, device: torch.device) -> None:
    """Combinations that cannot run, as one config error before any file is written."""
    from .config import ConfigError, world_size

    d = cfg.dist
    if world_size(cfg) <= 1:
        return
    backend = resolve_backend(d.backend, device)
    if backend == "nccl" and device.type != "cuda":
        raise ConfigError("dist.backend", d.backend, f"gloo (or auto) on {device.type}", "nccl needs CUDA")
    if device.type == "cuda" and d.nproc > torch.cuda.device_count():
        raise ConfigError("dist.nproc", d.nproc, f"at most {torch.cuda.device_count()} (GPUs visible on this node)",
                          "one rank per GPU")  # fmt: skip
    if d.sync_bn and device.type != "cuda":
        raise ConfigError("dist.sync_bn", True, f"false on {device.type}", "SyncBatchNorm needs CUDA in torch")
    if device.type == "mps":
        raise ConfigError("dist.nproc", d.nproc, "1 on mps", "torch.distributed does not train on MPS")


def threads_per_rank(cfg: Any, local_world: int) -> int:
    """Torch threads for each rank: dist.threads, or the node's cores divided among its ranks."""
    return int(cfg.dist.threads or max(1, (os.cpu_count() or 1) // max(1, local_world)))


def rank_device(device: torch.device, r: Ranks) -> torch.device:
    """The device of this rank: its own GPU on CUDA (local rank), the CPU otherwise."""
    return torch.device("cuda", r.local_rank) if device.type == "cuda" else device


def init(cfg: Any, device: torch.device, r: Ranks) -> None:
    """Join the process group (env:// rendezvous from the launcher)."""
    backend = resolve_backend(cfg.dist.backend, device)
    if device.type == "cuda":
        torch.cuda.set_device(r.local_rank)
    dist.init_process_group(backend, rank=r.rank, world_size=r.world,
                            timeout=datetime.timedelta(seconds=int(cfg.dist.timeout_s)))  # fmt: skip


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when flag is true on any (a collective: every rank must call it at the same point)."""
    t = torch.tensor([1 if flag else 0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def gather(obj: Any) -> list[Any]:
    """Every rank's obj, on every rank, in rank order."""
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast(obj: Any) -> Any:
    """Rank 0's obj on every rank."""
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class CommClock:
    """Times each gradient bucket's all-reduce (launch to completion, host clock) and counts its bytes.

    take() returns (span of the all-reduces since the last take, the exposed part after the last launch, bytes)
    and starts over: the engine calls it once per step, after the step's clock stopped (DDP waits for every
    bucket before backward returns)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._first: float | None = None
        self._last: float | None = None
        self._last_launch: float | None = None
        self._bytes = 0
        self.buckets = 0

    def hook(self, state, bucket):  # noqa: ANN001, ANN201 -- DDP checks these annotations: none is accepted
        """DDP communication hook: the default all-reduce (average), timed."""
        buf = bucket.buffer()
        t0 = time.perf_counter()
        with self._lock:
            self._last_launch = t0 if self._last_launch is None else max(self._last_launch, t0)
        buf.div_(dist.get_world_size())
        fut = dist.all_reduce(buf, async_op=True).get_future()

        def done(f):  # noqa: ANN001, ANN202
            t1 = time.perf_counter()  # gloo: called when the all-reduce completed
            with self._lock:
                self._first = t0 if self._first is None else min(self._first, t0)
                self._last = t1 if self._last is None else max(self._last, t1)
                self._bytes += buf.numel() * buf.element_size()
                self.buckets += 1
            return f.value()[0]

        return fut.then(done)

    def take(self) -> tuple[float, float, int]:
        with self._lock:
            done = self._first is not None and self._last is not None
            span = (self._last - self._first) if done else 0.0
            exposed = max(0.0, self._last - self._last_launch) if done and self._last_launch is not None else 0.0
            out = (span, exposed, self._bytes)
            self._first = self._last = self._last_launch = None
            self._bytes = 0
        return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(cfg_dict: dict, run_dir: str, precision_note: dict | None, meta: dict) -> dict | None:
    """One rank, started by the elastic launcher: join the group, train, return run.json's content (rank 0)."""
    import multiprocessing
    import sys

    from omegaconf import OmegaConf

    from .run import run_rank

    if sys.platform.startswith("linux"):
        # A spawned process inherits "spawn" as its start method, so DataLoader workers would re-import torch
        # (measured: 6 s of first-batch data time per epoch with workers=2). Linux's usual fork, as under torchrun.
        multiprocessing.set_start_method("fork", force=True)
    cfg = OmegaConf.create(cfg_dict)
    return run_rank(cfg, run_dir, precision_note, meta)


def launch(cfg: Any, run_dir: Any, precision_note: dict | None, meta: dict) -> dict:
    """Run cfg.dist.nproc ranks on this node through torch.distributed's elastic launcher; rank 0's result.

    A rank that dies or raises ends the run (the launcher stops the others) with RankFailed naming it."""
    from omegaconf import OmegaConf
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    n = int(cfg.dist.nproc)
    if os.environ.get("HYDRA_FULL_ERROR") != "1":
        # the launcher logs every rank's traceback at ERROR; the run ends with one clear line instead
        logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    lc = LaunchConfig(
        min_nodes=1, max_nodes=1, nproc_per_node=n, run_id=f"trainbench-{os.getpid()}-{time.time_ns()}",
        rdzv_backend="c10d", rdzv_endpoint=f"127.0.0.1:{_free_port()}", max_restarts=0, monitor_interval=0.1,
        start_method="spawn",
    )  # fmt: skip
    cfg_dict = OmegaConf.to_container(cfg, resolve=True)
    log.info("dist.nproc=%d: starting %d ranks (torch.distributed elastic launcher, backend %s)", n, n,
             resolve_backend(cfg.dist.backend, torch.device("cuda" if cfg.device.name == "cuda" else "cpu")))  # fmt: skip
    import signal

    from torch.distributed.elastic.multiprocessing.api import SignalException

    from .engine import Interrupted

    # the launcher installs its own handlers for these and leaves them in place: put ours back afterwards
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)}
    try:
        results = elastic_launch(lc, _rank_main)(cfg_dict, str(run_dir), precision_note, meta)
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
