"""Input pipeline: images/s of the lab's torchvision DataLoader (0/1/2 workers) against loader=device.

    python benchmarks/input_pipeline.py [--images 50000] [--reps 5] [--device cpu|cuda]

One pass over a CIFAR-sized synthetic training epoch (augmentation included, no model); the median of
--reps passes. The device loader is also measured with one thread, to compare per core.
"""

from __future__ import annotations

import argparse
import time

import torch

from _common import machine, median, table, write_csv
from trainbench.data.loaders import DeviceLoader, torch_loader
from trainbench.data.sources import STD, make_synthetic
from trainbench.device import synchronize


def epoch_seconds(loader, device: torch.device) -> float:
    """Wall time of one full pass (iterator creation, i.e. worker start-up, included)."""
    synchronize(device)
    t = time.perf_counter()
    for _batch in loader:
        pass
    synchronize(device)  # note: the device loader's work is asynchronous on CUDA
    return time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=50_000)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = p.parse_args()
    dev = torch.device(a.device)
    data = make_synthetic(a.images, "train")
    rows = []
    for workers in (0, 1, 2):
        dl = torch_loader(
            data,
            train=True,
            batch_size=a.batch_size,
            num_workers=workers,
            std=STD["lab"],
            generator=torch.Generator().manual_seed(0),
            pin_memory=False,
        )
        secs = [epoch_seconds(dl, torch.device("cpu")) for _ in range(a.reps)]
        rows.append(
            {
                "pipeline": "torchvision DataLoader",
                "workers": workers,
                "threads": torch.get_num_threads(),
                "median_s": median(secs),
                "images_per_s": a.images / median(secs),
            }
        )
    threads = torch.get_num_threads()
    for n_threads in sorted({threads, 1}, reverse=True):
        torch.set_num_threads(n_threads)
        dl = DeviceLoader(data, train=True, batch_size=a.batch_size, device=dev, std=STD["lab"], seed=0)
        epoch_seconds(dl, dev)  # warm-up (allocator, kernels)
        secs = [epoch_seconds(dl, dev) for _ in range(a.reps)]
        rows.append(
            {
                "pipeline": f"loader=device ({dev.type})",
                "workers": 0,
                "threads": n_threads,
                "median_s": median(secs),
                "images_per_s": a.images / median(secs),
            }
        )
    torch.set_num_threads(threads)
    base = rows[0]["images_per_s"]
    for r in rows:
        r["vs_torchvision_0w"] = r["images_per_s"] / base
    print(
        table(
            rows, f"Input pipeline, {a.images} images, batch {a.batch_size}, median of {a.reps} — {machine(dev.type)}"
        )
    )
    print(f"\nwrote {write_csv('input_pipeline', rows)}")


if __name__ == "__main__":
    main()
