"""What the phase clocks cost: compute with the copy/forward/backward/optimizer split on against off.

    python benchmarks/phase_clocks.py [--batch-size 128] [--steps 6] [--rounds 3] [--width 64] [--device cpu]

Both sides run trainbench's own epoch loop (train_epoch) over the same in-memory batches with the same
model; they alternate, --rounds times, so that drift (thermal state, other load) hits both alike. The
figure is the median per-step compute time of each side and their ratio. On a CPU a mark is a clock
read (the device sync is a no-op); on a GPU with timing=sync each mark is a device sync.
"""

from __future__ import annotations

import argparse

import torch

from _common import machine, median, table, write_csv
from trainbench.models.resnet import ResNet18
from trainbench.timing.epoch import StepContext, train_epoch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=6, help="steps per epoch and side")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--timing", default="sync", choices=["sync", "events"])
    a = p.parse_args()
    dev = torch.device(a.device)
    torch.manual_seed(0)
    model = ResNet18(width=a.width).to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    ctx = StepContext(model=model, optimizer=opt, device=dev)
    batches = [(torch.randn(a.batch_size, 3, 32, 32), torch.randint(0, 10, (a.batch_size,))) for _ in range(a.steps)]
    train_epoch(ctx, batches[:2], 0)  # warm-up, untimed
    per_step: dict[bool, list[float]] = {True: [], False: []}
    for r in range(a.rounds):
        for phases in (True, False) if r % 2 == 0 else (False, True):
            recs = []
            train_epoch(
                ctx, batches, 0, phases=phases, timing=a.timing, on_batch=lambda rec, s, recs=recs: recs.append(rec)
            )
            per_step[phases] += [rec.compute_time_s for rec in recs]
            print(f"round {r + 1}/{a.rounds} phases={phases}: median step {median(per_step[phases]):.4f} s", flush=True)
    on, off = median(per_step[True]), median(per_step[False])
    rows = [
        {"phase_clocks": True, "median_step_compute_s": on, "steps": len(per_step[True]), "ratio_vs_off": on / off},
        {"phase_clocks": False, "median_step_compute_s": off, "steps": len(per_step[False]), "ratio_vs_off": 1.0},
    ]
    print(
        table(
            rows,
            f"Phase clocks, ResNet-18 width {a.width}, batch {a.batch_size}, timing={a.timing} — {machine(dev.type)}",
        )
    )
    print(f"\nwrote {write_csv('phase_clocks', rows, dev.type)}")


if __name__ == "__main__":
    main()
