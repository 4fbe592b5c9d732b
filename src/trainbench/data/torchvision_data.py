"""data=torchvision: torchvision's dataset classes by name (data.name), as uint8 arrays with their own facts.

Each name's facts (side, channels, classes, normalisation, whether a horizontal flip fits) are fixed here, so a
run can be planned (class count, input size) before any image is read. Grayscale datasets are expanded to 3
channels at load time (the models take RGB; the run log says so), with their one-channel constants repeated.
Downloads go to a temporary folder under data.root and are moved into place only when complete, so a failed
download leaves no half-written files behind.
"""

from __future__ import annotations

import shutil
import urllib.error
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Spec:
    """One torchvision dataset as trainbench uses it."""

    size: int  # image side in pixels
    channels: int  # 1: grayscale (expanded to 3 at load time)
    classes: int
    mean: tuple[float, ...]  # the commonly used per-channel constants of the training split
    std: tuple[float, ...]
    flip: bool  # data.augment=lab flips horizontally (not for digits and characters: a flipped 3 is no 3)
    split_kw: str  # "train": the class takes train=True/False; "split": split="train"/"test"
    needs: tuple[str, ...]  # what must be under data.root for the class to load without a download
    sizes: tuple[int, int]  # train and test images


TORCHVISION: dict[str, Spec] = {
    "CIFAR10": Spec(
        32,
        3,
        10,
        (0.4914, 0.4822, 0.4465),
        (0.2023, 0.1994, 0.2010),
        True,
        "train",
        ("cifar-10-batches-py",),
        (50_000, 10_000),
    ),
    "CIFAR100": Spec(
        32,
        3,
        100,
        (0.5071, 0.4865, 0.4409),
        (0.2673, 0.2564, 0.2762),
        True,
        "train",
        ("cifar-100-python",),
        (50_000, 10_000),
    ),
    "MNIST": Spec(28, 1, 10, (0.1307,), (0.3081,), False, "train", ("MNIST/raw",), (60_000, 10_000)),
    "FashionMNIST": Spec(28, 1, 10, (0.2860,), (0.3530,), True, "train", ("FashionMNIST/raw",), (60_000, 10_000)),
    "KMNIST": Spec(28, 1, 10, (0.1918,), (0.3483,), False, "train", ("KMNIST/raw",), (60_000, 10_000)),
    "SVHN": Spec(
        32,
        3,
        10,
        (0.4377, 0.4438, 0.4728),
        (0.1980, 0.2010, 0.1970),
        False,
        "split",
        ("train_32x32.mat", "test_32x32.mat"),
        (73_257, 26_032),
    ),
    "STL10": Spec(
        96, 3, 10, (0.4467, 0.4398, 0.4066), (0.2603, 0.2566, 0.2713), True, "split", ("stl10_binary",), (5_000, 8_000)
    ),
}


# every value data.name takes: trainbench's own sources, then the torchvision classes above
DATA_NAMES = ("cifar10", "synthetic", "imagefolder", *TORCHVISION)
# data.normalize=true was the old spelling of cifar10; Hydra reads it as a boolean, stored as "True".
NORMALIZE_ALIASES = {"true": "cifar10", "True": "cifar10"}


def present(name: str, root: Path) -> bool:
    """Whether root holds what data.name=name needs (without reading it)."""
    return all((root / p).exists() for p in TORCHVISION[name].needs)


def _construct(name: str, root: Path, train: bool, download: bool):
    import torchvision.datasets as tvd

    spec, cls = TORCHVISION[name], getattr(tvd, name)
    split = {"train": train} if spec.split_kw == "train" else {"split": "train" if train else "test"}
    return cls(str(root), download=download, **split)


def fetch(name: str, root: Path, missing) -> None:
    """Download data.name=name into root through a temporary folder: moved into place only when complete.

    `missing(why)` makes the DataError raised on failure (its message lists the ways out)."""
    tmp = root / f".download-{name}"
    shutil.rmtree(tmp, ignore_errors=True)  # a previous attempt that died (the lock says nobody else is at it)
    tmp.mkdir(parents=True)
    try:
        for train in (True, False):
            _construct(name, tmp, train, download=True)
        for entry in tmp.iterdir():  # the dataset's folders and files (archives too: torchvision md5-checks them)
            target = root / entry.name
            if not target.exists():
                entry.rename(target)
    except (urllib.error.URLError, OSError, RuntimeError) as e:
        raise missing(f"download failed: {e}") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _to_hwc(data) -> np.ndarray:
    """A torchvision dataset's .data as uint8 (N, H, W, C): MNIST-family tensors (N, H, W), SVHN/STL10 (N, C, H, W)."""
    a = data.numpy() if hasattr(data, "numpy") else np.asarray(data)
    if a.ndim == 3:
        return a[..., None]
    if a.shape[1] in (1, 3) and a.shape[-1] not in (1, 3):
        return a.transpose(0, 2, 3, 1)
    return a


def load(name: str, root: Path, train: bool) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Images (uint8 N, H, W, 3: grayscale expanded), labels and class names of one split (no download)."""
    ds = _construct(name, root, train, download=False)
    images = np.ascontiguousarray(_to_hwc(ds.data), dtype=np.uint8)
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)  # the models take RGB: a grey pixel is (v, v, v)
    raw = ds.targets if hasattr(ds, "targets") else ds.labels
    labels = np.asarray(raw.numpy() if hasattr(raw, "numpy") else raw, dtype=np.int64)
    spec = TORCHVISION[name]
    classes = list(getattr(ds, "classes", None) or [str(c) for c in range(spec.classes)])
    return images, labels, classes


def describe(name: str) -> str:
    """One line for the run log: what data.name=name is and how it is fed to the model."""
    s = TORCHVISION[name]
    gray = ", grayscale expanded to 3 channels (v, v, v) for the model" if s.channels == 1 else ""
    flip = "crop + horizontal flip" if s.flip else f"crop only (no flip: {name} holds digits or characters)"
    return f"{name}: {s.size}x{s.size}, {s.classes} classes{gray}; data.augment=lab is {flip}"
