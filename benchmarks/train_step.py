"""Training step: images/s and achieved FLOP/s for fp32, channels_last, bf16, both, and torch.compile.

    python benchmarks/train_step.py [--batch-size 32] [--reps 5] [--device cpu|cuda] [--no-compile]

FLOPs of one step (forward + backward) are counted with torch.utils.flop_counter. The peak is a credible
upper bound: the best large-matmul rate measured on this device in ANY precision (fp32 and bf16, several
sizes). A per-precision peak is not one: where bf16 is emulated, its matmul rate is far below what a bf16
training step reaches through fp32 kernels, and "% of peak" went above 1,000 %. So % of peak <= 100 % up
to measurement noise, and the script says so if a row exceeds it.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from _common import machine, median, table, write_csv
from trainbench.device import synchronize
from trainbench.models.resnet import ResNet18
from trainbench.timing.epoch import StepContext


def matmul_peak(dev: torch.device, dtype: torch.dtype, n: int = 2048, reps: int = 5) -> float:
    """Measured FLOP/s of an n x n matmul (median of reps)."""
    a, b = torch.randn(n, n, device=dev, dtype=dtype), torch.randn(n, n, device=dev, dtype=dtype)
    a @ b
    secs = []
    for _ in range(reps):
        synchronize(dev)
        t = time.perf_counter()
        a @ b
        synchronize(dev)
        secs.append(time.perf_counter() - t)
    return 2 * n**3 / median(secs)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=None, help="default: 32 on CPU, 512 on CUDA")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--no-compile", action="store_true")
    a = p.parse_args()
    dev = torch.device(a.device)
    bs = a.batch_size or (512 if dev.type == "cuda" else 32)
    peaks = {
        name: max(matmul_peak(dev, dt, n) for n in (1024, 2048, 4096))
        for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16))
    }
    peak = max(peaks.values())  # one bound for every row: the best this device was measured to do
    configs = [("fp32", False, False), ("fp32", True, False), ("bf16", False, False), ("bf16", True, False)]
    if not a.no_compile:
        configs.append(("fp32", False, True))
    rows = []
    for prec, cl, comp in configs:
        torch.manual_seed(0)
        model = ResNet18().to(dev)
        if cl:
            model = model.to(memory_format=torch.channels_last)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
        ctx = StepContext(
            model=torch.compile(model) if comp else model,
            optimizer=opt,
            device=dev,
            autocast_dtype=torch.bfloat16 if prec == "bf16" else None,
            channels_last=cl,
        )
        x, y = torch.randn(bs, 3, 32, 32), torch.randint(0, 10, (bs,))
        t = time.perf_counter()
        ctx.step(x, y, 0)  # warm-up (and compilation)
        synchronize(dev)
        warm = time.perf_counter() - t
        with FlopCounterMode(display=False) as fc:
            ctx.step(x, y, 0)
        flops = fc.get_total_flops()
        secs = []
        for _ in range(a.reps):
            synchronize(dev)
            t = time.perf_counter()
            ctx.step(x, y, 0)
            synchronize(dev)
            secs.append(time.perf_counter() - t)
        s = median(secs)
        rows.append(
            {
                "precision": prec,
                "channels_last": cl,
                "compile": comp,
                "step_s": s,
                "images_per_s": bs / s,
                "gflop_per_step": flops / 1e9,
                "achieved_tflops": flops / s / 1e12,
                "pct_of_peak": 100 * flops / s / peak,
                "first_step_s": warm,
            }
        )
        if rows[-1]["pct_of_peak"] > 100:
            print(
                f"note: {rows[-1]['pct_of_peak']:.0f} % of the measured peak: the peak measurement is too low "
                "(busy machine?); re-run on a quiet machine",
                flush=True,
            )
        print(rows[-1], flush=True)
    base = rows[0]["images_per_s"]
    for r in rows:
        r["vs_fp32"] = r["images_per_s"] / base
    print(table(rows, f"Training step, ResNet-18, batch {bs}, median of {a.reps} — {machine(dev.type)}"))
    print(
        f"measured matmul peak: fp32 {peaks['fp32'] / 1e12:.3f} TFLOP/s, bf16 {peaks['bf16'] / 1e12:.3f} TFLOP/s; "
        f"% of peak is against the larger, {peak / 1e12:.3f} TFLOP/s"
    )
    print(f"\nwrote {write_csv('train_step', rows, dev.type)}")


if __name__ == "__main__":
    main()
