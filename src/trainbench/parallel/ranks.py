"""This process's place in a data-parallel run, and the few collectives the trainer uses.

Ranks come from the environment (torchrun / the elastic launcher: RANK, WORLD_SIZE, LOCAL_RANK; or SLURM);
`check_dist` turns combinations that cannot run into one config error before any file is written.
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from ..config import ConfigError, world_size

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
        return Ranks(
            int(e["RANK"]),
            int(e["WORLD_SIZE"]),
            int(e.get("LOCAL_RANK", 0)),
            int(e.get("LOCAL_WORLD_SIZE", e["WORLD_SIZE"])),
        )
    if "SLURM_PROCID" in e and int(e.get("SLURM_NTASKS", "1")) > 1:
        return Ranks(
            int(e["SLURM_PROCID"]),
            int(e["SLURM_NTASKS"]),
            int(e.get("SLURM_LOCALID", 0)),
            int(e.get("SLURM_NTASKS_PER_NODE", e["SLURM_NTASKS"]).split("(")[0]),
        )
    return None


def resolve_backend(name: str, device: torch.device) -> str:
    """dist.backend=auto: nccl on CUDA, gloo elsewhere."""
    return ("nccl" if device.type == "cuda" else "gloo") if name == "auto" else name


def check_dist(cfg: Any, device: torch.device) -> None:
    """Combinations that cannot run, as one config error before any file is written."""
    d = cfg.dist
    if world_size(cfg) <= 1:
        return
    backend = resolve_backend(d.backend, device)
    if backend == "nccl" and device.type != "cuda":
        raise ConfigError("dist.backend", d.backend, f"gloo (or auto) on {device.type}", "nccl needs CUDA")
    if device.type == "cuda" and d.nproc > torch.cuda.device_count():
        raise ConfigError(
            "dist.nproc",
            d.nproc,
            f"at most {torch.cuda.device_count()} (GPUs visible on this node)",
            "one rank per GPU",
        )
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


def init_group(cfg: Any, device: torch.device, r: Ranks) -> None:
    """Join the process group (env:// rendezvous from the launcher)."""
    backend = resolve_backend(cfg.dist.backend, device)
    if device.type == "cuda":
        torch.cuda.set_device(r.local_rank)
    dist.init_process_group(
        backend, rank=r.rank, world_size=r.world, timeout=datetime.timedelta(seconds=int(cfg.dist.timeout_s))
    )
    global _CPU_GROUP
    # The stop check runs every batch: on nccl a CUDA tensor's all-reduce + .item() would drain the device each
    # step (a sync under timing=events). A gloo side group carries it on the CPU instead.
    _CPU_GROUP = dist.new_group(backend="gloo") if backend == "nccl" else None


_CPU_GROUP: Any = None  # gloo side group beside an nccl process group (host-side collectives)


def any_rank(flag: bool, device: torch.device | None = None) -> bool:
    """True on every rank when flag is true on any (a collective: every rank must call it at the same point).

    Always on a CPU tensor: the default group when it is gloo, the gloo side group beside nccl; no device sync."""
    t = torch.tensor([1 if flag else 0])
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=_CPU_GROUP)
    return bool(t.item())


def barrier() -> None:
    """Every rank waits for the others here (on the CPU side group beside nccl: no device sync)."""
    dist.barrier(group=_CPU_GROUP)


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
