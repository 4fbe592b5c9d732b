"""Your own model and data: images/s of a real `run(cfg)` for other models and datasets than the lab's.

    python benchmarks/own_model_data.py [--images 5000] [--epochs 2]

Each case is a real run (the same clocks, CSVs and report as train.py) of --epochs epochs on --images training
images; the figure is images/s over the epochs after the first (the first pays DataLoader start-up and caches).
CIFAR-100 and FashionMNIST cannot be downloaded on an offline machine, so this script writes them in
torchvision's own on-disk formats (CIFAR-100 pickles, MNIST-family idx files) with random pixels: their speed
is that of the real datasets (same shapes, same code path); their accuracy means nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import pickle
import struct
import tempfile
from pathlib import Path

import numpy as np

from _common import machine, table, write_csv
from trainbench.questions import compose
from trainbench.run import run

CASES = [
    ("lab ResNet-18, CIFAR-10 shape (synthetic)", ["data=synthetic"]),
    ("torchvision resnet18 (ImageNet stem)", ["data=synthetic", "model=torchvision", "model.name=resnet18"]),
    ("torchvision mobilenet_v3_small", ["data=synthetic", "model=torchvision", "model.name=mobilenet_v3_small"]),
    ("custom examples.mynets.SmallCNN", ["data=synthetic", "model=custom", "model._target_=examples.mynets.SmallCNN"]),
    ("lab ResNet-18, CIFAR-100 (real format, random pixels)", ["data=torchvision", "data.name=CIFAR100"]),
    ("lab ResNet-18, FashionMNIST 28x28 (real format, random pixels)", ["data=torchvision", "data.name=FashionMNIST"]),
]


def write_cifar100(root: Path, n_train: int, n_test: int) -> None:
    """cifar-100-python/{train,test,meta} as torchvision reads them; torchvision's md5 list is pointed at them."""
    from torchvision.datasets import CIFAR100

    d = root / "cifar-100-python"
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    md5 = {}
    for name, n in (("train", n_train), ("test", n_test)):
        rows = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        (d / name).write_bytes(pickle.dumps({"data": rows, "fine_labels": [i % 100 for i in range(n)]}))
        md5[name] = hashlib.md5((d / name).read_bytes()).hexdigest()
    (d / "meta").write_bytes(pickle.dumps({"fine_label_names": [f"c{i}" for i in range(100)]}))
    CIFAR100.train_list, CIFAR100.test_list = [["train", md5["train"]]], [["test", md5["test"]]]
    CIFAR100.meta = {**CIFAR100.meta, "md5": hashlib.md5((d / "meta").read_bytes()).hexdigest()}


def write_fashion(root: Path, n_train: int, n_test: int) -> None:
    """FashionMNIST/raw/*-ubyte idx files (magic, big-endian dims, uint8 data)."""
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        for kind, arr in (("images-idx3", rng.integers(0, 256, (n, 28, 28))), ("labels-idx1", np.arange(n) % 10)):
            head = struct.pack(">I", 0x0800 + arr.ndim) + b"".join(struct.pack(">I", s) for s in arr.shape)
            (raw / f"{prefix}-{kind}-ubyte").write_bytes(head + arr.astype(np.uint8).tobytes())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=2)
    a = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        write_cifar100(data, a.images, 1000)
        write_fashion(data, a.images, 1000)
        for name, overrides in CASES:
            cfg = compose(
                [
                    *overrides,
                    f"data.root={data}",
                    f"data.train_size={a.images}",
                    "data.test_size=1000",
                    f"epochs={a.epochs}",
                    "progress=false",
                    "data.download=false",
                ]
            )
            info = run(cfg, Path(tmp) / str(len(rows)))
            import pandas as pd

            e = pd.read_csv(Path(tmp) / str(len(rows)) / "epochs.csv").iloc[1:]
            rows.append(
                {
                    "case": name,
                    "img_per_s": float(e["samples"].sum() / e["epoch_time_s"].sum()),
                    "epoch_s": float(e["epoch_time_s"].mean()),
                    "gflop_per_img": info["flops_per_image"] / 1e9,
                    "classes": info["config"]["model"]["num_classes"],
                }
            )
            print(rows[-1], flush=True)
    print(table(rows, f"own model and data: {a.images} images, {a.epochs} epochs ({machine()})"))
    print(f"wrote {write_csv('own_model_data', rows)}")


if __name__ == "__main__":
    main()
