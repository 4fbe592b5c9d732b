"""Overhead: a trainbench epoch against a minimal hand-written PyTorch loop, same model, data and batch.

    python benchmarks/overhead.py [--images 512] [--reps 5] [--width 64] [-- extra trainbench overrides]

Both sides iterate the same DataLoader (the lab's pipeline, workers=0 unless overridden), build the same
seeded model and optimizer, and run one epoch, alternating, --reps times. trainbench's side is a real
`run(cfg)` (CSV rows, progress, metrics, syncs); its time is the epoch_time_s it reports, which the
bare loop's own clock mirrors (start before iter(), end after the last step).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from _common import machine, median, table, write_csv
from trainbench.data.loaders import make_loader
from trainbench.data.sources import load_data
from trainbench.figures import epoch_columns
from trainbench.models.resnet import ResNet18
from trainbench.questions import compose
from trainbench.recipe import build_optimizer
from trainbench.run import run
from trainbench.store.records import read_rows


def bare_epoch(cfg) -> float:
    """The minimal loop: next batch, copy, forward, loss, backward, step; nothing else."""
    torch.manual_seed(cfg.seed)
    train, _ = load_data(cfg.data, test_needed=False)
    dev = torch.device("cpu")
    model = ResNet18(cfg.norm.name, cfg.model.width)
    opt = build_optimizer(cfg.optimizer, model.parameters())
    loader = make_loader(cfg, train, True, dev, torch.Generator().manual_seed(cfg.seed))
    loss_fn = torch.nn.CrossEntropyLoss()
    t = time.perf_counter()
    for x, y in loader:
        loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=512)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("overrides", nargs="*")
    a = p.parse_args()
    overrides = [
        "data=synthetic",
        f"data.train_size={a.images}",
        "data.test_size=128",
        "epochs=1",
        "workers=0",
        f"model.width={a.width}",
        "device=cpu",
        "progress=false",
        *a.overrides,
    ]
    cfg = compose(overrides)
    tb, bare = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(a.reps):
            bare.append(bare_epoch(cfg))
            d = Path(tmp) / f"r{i}"
            run(cfg, d)
            tb.append(float(read_rows(d / "epochs.csv", epoch_columns())[0]["epoch_time_s"]))
            print(f"rep {i}: bare {bare[-1]:.3f}s trainbench {tb[-1]:.3f}s", flush=True)
    rows = [
        {"loop": "bare PyTorch", "median_epoch_s": median(bare), "images_per_s": a.images / median(bare)},
        {"loop": "trainbench", "median_epoch_s": median(tb), "images_per_s": a.images / median(tb)},
    ]
    for r in rows:
        r["ratio_vs_bare"] = r["median_epoch_s"] / rows[0]["median_epoch_s"]
    print(table(rows, f"Overhead, {a.images} images, model.width={a.width}, median of {a.reps} — {machine()}"))
    print(f"overrides: {' '.join(overrides)}")
    print(f"\nwrote {write_csv('overhead', rows)}")


if __name__ == "__main__":
    main()
