"""Data-parallel on this machine: 1 against 2 ranks (gloo), measured communication against the lab's subtraction.

    python benchmarks/ddp.py [--images 512] [--batch-sizes 32 128] [--epochs 2] [--threads 1]

Full-width ResNet-18, synthetic data, loader=device (no worker processes competing for the cores), every
rank pinned to --threads torch threads, the 1-rank run too, so that a step's compute is the same work on the
same cores in both (with 2 ranks on 2 cores they still share memory bandwidth and caches: contention is part
of what is measured). Figures from the last epoch, per step:
  compute    = compute_time_s / steps (1 rank; N ranks: mean over ranks, communication inside backward)
  comm       = comm_time_s / steps (DDP communication hook: first all-reduce launch to last completion)
  exposed    = comm_exposed_s / steps (last bucket's launch to last completion: what backward waited for)
  estimate   = N-rank compute per step - 1-rank compute per step (the lab's subtraction; it sees only the
               exposed part, since the rest of the all-reduce runs while backward still computes)
  contended  = the same subtraction against two independent 1-rank runs at the same time (no communication,
               the same sharing of cores, caches and memory bandwidth as the 2 ranks): what is left is
               communication alone
  busy       = comm_busy_s / steps (each bucket's own launch to completion, overlapping buckets counted once)
  bandwidth  = 2(N-1)/N x gradient bytes per step / busy per step
The per-step phases show where the extra time of 2 ranks lands: on a CPU, gloo's all-reduce (copies and
sums) runs on the same cores as the backward pass it overlaps, so the "hidden" communication still slows
backward; the subtraction sees that slowdown plus the exposed wait, the hook's exposed part only the wait.
Then trainbench's overhead: the 2-rank epoch time against a bare DDP loop (the same model, optimizer, batches
and steps, no clocks, default all-reduce), run alternately.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from _common import machine, median, table, write_csv
from trainbench.figures import epoch_columns
from trainbench.questions import compose
from trainbench.run import run
from trainbench.store.records import read_rows


def last_epoch(overrides: list[str], d: Path) -> dict:
    run(compose(overrides), d)
    return {k: float(v) for k, v in read_rows(d / "epochs.csv", epoch_columns())[-1].items() if v not in ("", "sync")}


def contended(overrides: list[str], tmp: Path) -> float:
    """Compute per step of two independent 1-rank runs started together (the contention 2 ranks have, no comm)."""
    import subprocess
    import sys

    train = Path(__file__).resolve().parents[1] / "train.py"
    procs = [
        subprocess.Popen(
            [sys.executable, str(train), *overrides, f"hydra.run.dir={tmp / f'c{i}'}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for i in range(2)
    ]
    for p in procs:
        if p.wait() != 0:
            raise SystemExit("a contended baseline run failed")
    per_step = []
    for i in range(2):
        e = read_rows(tmp / f"c{i}" / "epochs.csv", epoch_columns())[-1]
        per_step.append(float(e["compute_time_s"]) / float(e["batches"]))
    return sum(per_step) / 2


def _bare(rank: int, world: int, port: int, batch: int, steps: int, threads: int, out: str) -> None:
    """A bare DDP loop: random in-memory batches, SGD, no clocks; rank 0 writes its median step time."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    from trainbench.models.resnet import ResNet18

    torch.set_num_threads(threads)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = DDP(ResNet18())
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    xs = [torch.randn(batch, 3, 32, 32) for _ in range(steps + 2)]
    ys = [torch.randint(0, 10, (batch,)) for _ in range(steps + 2)]
    times = []
    for i, (x, y) in enumerate(zip(xs, ys)):
        t = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= 2:  # two warm-up steps (DDP rebuilds its buckets after the first)
            times.append(time.perf_counter() - t)
    if rank == 0:
        Path(out).write_text(str(sum(times)))
    dist.destroy_process_group()


def bare_ddp(world: int, batch: int, steps: int, threads: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "t")
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        mp.spawn(_bare, args=(world, port, batch, steps, threads, out), nprocs=world)
        return float(Path(out).read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=1024)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 128])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--reps", type=int, default=3, help="overhead: alternating repeats")
    a = p.parse_args()
    base = [
        "data=synthetic",
        f"data.train_size={a.images}",
        "data.test_size=64",
        "loader=device",
        "progress=false",
        f"epochs={a.epochs}",
        "test_eval=false",
        f"dist.threads={a.threads}",
    ]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for bs in a.batch_sizes:
            one = last_epoch([*base, f"batch_size={bs}"], Path(tmp) / f"1x{bs}")
            two = last_epoch([*base, f"batch_size={bs}", "dist.nproc=2"], Path(tmp) / f"2x{bs}")
            c1, c2 = one["compute_time_s"] / one["batches"], two["compute_time_s"] / two["batches"]
            c1x = contended([*base, f"batch_size={bs}"], Path(tmp) / f"contended{bs}")
            comm = two["comm_time_s"] / two["batches"]
            exposed = two["comm_exposed_s"] / two["batches"]
            busy = (two.get("comm_busy_s") or 0.0) / two["batches"]  # the buckets' own all-reduce times
            grad_bytes = two["comm_bytes"] / two["batches"]
            for n, e, c in ((1, one, c1), (2, two, c2)):
                rows.append(
                    {
                        "ranks": n,
                        "batch_per_rank": bs,
                        "steps": int(e["batches"]),
                        "epoch_s": e["epoch_time_s"],
                        "speedup": one["epoch_time_s"] / e["epoch_time_s"],
                        "compute_per_step_s": c,
                        "comm_per_step_s": comm if n == 2 else 0.0,
                        "exposed_per_step_s": exposed if n == 2 else 0.0,
                        "bucket_busy_per_step_s": busy if n == 2 else 0.0,
                        "estimate_per_step_s": c2 - c1 if n == 2 else 0.0,
                        "estimate_vs_exposed": (c2 - c1) / exposed if n == 2 and exposed else float("nan"),
                        "estimate_vs_span": (c2 - c1) / comm if n == 2 and comm else float("nan"),
                        "contended_1rank_step_s": c1x if n == 2 else float("nan"),
                        "contended_estimate_s": c2 - c1x if n == 2 else float("nan"),
                        "contended_vs_exposed": (c2 - c1x) / exposed if n == 2 and exposed else float("nan"),
                        # where the extra time goes: per-step phases (communication overlaps backward)
                        "forward_per_step_s": e["forward_time_s"] / e["batches"],
                        "backward_per_step_s": e["backward_time_s"] / e["batches"],
                        "optimizer_per_step_s": e["optimizer_time_s"] / e["batches"],
                        "bandwidth_gb_s": (grad_bytes * 2 * (n - 1) / n / busy / 1e9)
                        if n == 2 and busy
                        else float("nan"),
                    }
                )
                print(rows[-1], flush=True)
        # overhead: trainbench's 2-rank epoch (its own epoch clock) against the bare loop over the same steps
        bs = a.batch_sizes[0]
        steps = a.images // (2 * bs)
        tb, bare = [], []
        for r in range(a.reps):
            e = last_epoch(
                [*base, f"batch_size={bs}", "dist.nproc=2", "epochs=1", "phase_clocks=false"], Path(tmp) / f"ovh{r}"
            )
            tb.append(e["epoch_time_s"])
            bare.append(bare_ddp(2, bs, steps, a.threads))
            print(f"overhead rep {r + 1}: trainbench {tb[-1]:.3f} s, bare DDP {bare[-1]:.3f} s", flush=True)
    title = (
        f"Data-parallel, ResNet-18, {a.images} images, gloo, {a.threads} torch thread(s) per rank, last of "
        f"{a.epochs} epochs — {machine()}"
    )
    print(table(rows, title))
    ovh = [
        {"loop": "bare DDP", "median_epoch_s": median(bare), "ratio_vs_bare": 1.0},
        {"loop": "trainbench dist.nproc=2", "median_epoch_s": median(tb), "ratio_vs_bare": median(tb) / median(bare)},
    ]
    print(table(ovh, f"Overhead, 2 ranks, batch {bs} per rank, {steps} steps, median of {a.reps}"))
    print(f"wrote {write_csv('ddp', rows)} and {write_csv('ddp_overhead', ovh)}")


if __name__ == "__main__":
    main()
