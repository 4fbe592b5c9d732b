"""Data sources (CIFAR-10, synthetic, image folders, torchvision datasets) as uint8 arrays, and fixed subsets."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import logging
import urllib.error
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from . import torchvision_data

log = logging.getLogger(__name__)

MEAN = (0.4914, 0.4822, 0.4465)
STD = {"lab": (0.2023, 0.1994, 0.2010), "cifar10": (0.2470, 0.2435, 0.2616)}
NORMALIZE_ALIASES = torchvision_data.NORMALIZE_ALIASES


def normalize_std(name: str) -> tuple[float, float, float]:
    """The per-channel std that data.normalize names (lab, cifar10, or the old alias true)."""
    return STD[NORMALIZE_ALIASES.get(name, name)]


CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
SYNTHETIC_SIZES = {"train": 50_000, "test": 10_000}  # CIFAR-10's, so that timings compare
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")  # what data=imagefolder reads
SUBSET_SEED = 20190101  # fixed: subsets never depend on the training seed


class DataError(RuntimeError):
    """The data cannot be found or read; the message says where and what to do."""


@dataclass
class ArrayDataset:
    """Images as uint8 HWC (N, H, W, 3), integer labels, class names, and how the loaders normalise and flip them."""

    images: np.ndarray
    labels: np.ndarray
    classes: list[str]
    mean: tuple[float, ...] = MEAN
    std: tuple[float, ...] | None = None  # None: CIFAR-10's, as data.normalize picks (lab or cifar10)
    flip: bool = True  # data.augment=lab flips horizontally where the images allow it (not digits)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, idx: np.ndarray) -> ArrayDataset:
        """The images at idx, in that order."""
        return dataclasses.replace(self, images=self.images[idx], labels=self.labels[idx])


def balanced_subset(labels: np.ndarray, n: int, key: str = "data.train_size") -> np.ndarray:
    """Indices of n images, balanced across classes, identical in every run (fixed seed)."""
    if n > len(labels):
        raise DataError(f"{key}={n} but the split has only {len(labels)} images; use null for all")
    rng = np.random.default_rng(SUBSET_SEED)
    perm = rng.permutation(len(labels))
    classes = np.unique(labels)
    rank = np.empty(len(labels), dtype=np.int64)
    for c in classes:  # rank of each image within its class, in the permuted order
        members = perm[labels[perm] == c]
        rank[members] = np.arange(len(members))
    order = np.lexsort((labels, rank))  # round-robin over classes: all rank 0, then rank 1, ...
    return np.sort(order[:n])


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Exclusive advisory lock so that concurrent jobs sharing a data root never download twice."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # blocks while another job downloads/extracts
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _missing(root: Path, why: str, download: bool = False) -> DataError:
    ways = ["point data.root=DIR at a folder holding cifar-10-batches-py"]
    if not download:
        ways.append("set data.download=true (needs a network)")
    else:
        ways.append("check the network (data.download=true is already set)")
    ways.append("use data=synthetic")
    return DataError(
        f"CIFAR-10 not available at {root / 'cifar-10-batches-py'} ({why}). Ways out: {', '.join(ways[:-1])}, "
        f"or {ways[-1]}"
    )


def load_cifar10(root: Path, download: bool) -> tuple[ArrayDataset, ArrayDataset]:
    """CIFAR-10 from root/cifar-10-batches-py via torchvision (download and md5 checks included)."""
    from torchvision.datasets import CIFAR10

    if not download and not (root / "cifar-10-batches-py").is_dir():
        raise _missing(root, "folder missing and data.download=false")
    try:
        with _locked(root / ".cifar10.lock"):
            train = CIFAR10(str(root), train=True, download=download)
            test = CIFAR10(str(root), train=False, download=False)
    except (urllib.error.URLError, OSError) as e:
        raise _missing(root, f"download failed: {e}", download) from e
    except RuntimeError as e:  # torchvision: "Dataset not found or corrupted"
        raise _missing(root, str(e), download) from e
    classes = list(train.classes)
    return (
        ArrayDataset(np.asarray(train.data), np.asarray(train.targets, dtype=np.int64), classes),
        ArrayDataset(np.asarray(test.data), np.asarray(test.targets, dtype=np.int64), classes),
    )


def _prototypes(num_classes: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1234)
    low = torch.rand(num_classes, 3, 4, 4, generator=g)
    return F.interpolate(low, size=32, mode="bilinear", align_corners=False)  # smooth colour blobs


def make_synthetic(n: int, split: str, num_classes: int = 10) -> ArrayDataset:
    """n CIFAR-shaped images whose class is a shifted, noisy colour pattern; image i is the same for any n."""
    protos = _prototypes(num_classes)
    labels = np.arange(n, dtype=np.int64) % num_classes  # balanced for any n
    out = np.empty((n, 32, 32, 3), dtype=np.uint8)
    # every class pattern under every shift in [-4, 4]^2: (classes, 81, 3, 32, 32)
    shifted = torch.stack([torch.roll(protos, (dy, dx), (2, 3)) for dy in range(-4, 5) for dx in range(-4, 5)], 1)
    chunk = 1000  # always drawn whole, then cut: image i is the same whatever n
    for k, start in enumerate(range(0, n, chunk)):
        g = torch.Generator().manual_seed(2 * k + (split == "test") + 7)
        y = torch.arange(start, start + chunk) % num_classes
        shift = torch.randint(-4, 5, (chunk, 2), generator=g)
        contrast = 0.25 + 0.35 * torch.rand(chunk, 1, 1, 1, generator=g)
        base = shifted[y, (shift[:, 0] + 4) * 9 + (shift[:, 1] + 4)]
        noise = F.interpolate(torch.randn(chunk, 3, 8, 8, generator=g), size=32, mode="bilinear", align_corners=False)
        img = 0.5 + contrast * (base - 0.5) * 2 + 0.12 * noise + 0.06 * torch.randn(chunk, 3, 32, 32, generator=g)
        m = min(n, start + chunk) - start
        out[start : start + m] = (img[:m].clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return ArrayDataset(out, labels, [f"class{c}" for c in range(num_classes)])


def load_imagefolder(root: Path, image_size: int) -> tuple[ArrayDataset, ArrayDataset]:
    """root/train/<class>/* and root/test/<class>/* (PNG or JPEG), resized to image_size."""
    from PIL import Image

    train_dir = root / "train"
    if not train_dir.is_dir() or not (root / "test").is_dir():
        raise DataError(f"data=imagefolder needs {root}/train/<class>/* and {root}/test/<class>/*; set data.root=DIR")
    classes = sorted(p.name for p in train_dir.iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"no class folders in {train_dir}")

    def read(split: str) -> ArrayDataset:
        images, labels = [], []
        for d in sorted(p for p in (root / split).iterdir() if p.is_dir()):
            if d.name not in classes:
                raise DataError(f"{root / split} has class {d.name!r} that {train_dir} lacks ({classes})")
            for f in sorted(d.iterdir()):
                if f.suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                with Image.open(f) as im:
                    im = im.convert("RGB")
                    if im.size != (image_size, image_size):
                        im = im.resize((image_size, image_size), Image.BILINEAR)
                    images.append(np.asarray(im, dtype=np.uint8))
                labels.append(classes.index(d.name))
        if not images:
            raise DataError(f"no PNG/JPEG images under {root / split}")
        return ArrayDataset(np.stack(images), np.asarray(labels, dtype=np.int64), classes)

    train, test = read("train"), read("test")
    mean, std = channel_stats(train.images)  # the folder's own constants, not CIFAR-10's
    return (dataclasses.replace(train, mean=mean, std=std), dataclasses.replace(test, mean=mean, std=std))


def channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std (in [0, 1]) of uint8 NHWC images, over at most 10,000 of them (a fixed sample)."""
    sample = images[:: max(1, len(images) // 10_000)].astype(np.float64) / 255
    mean = sample.mean(axis=(0, 1, 2))
    std = np.maximum(sample.std(axis=(0, 1, 2)), 1e-3)  # a constant channel must not divide by zero
    return tuple(round(float(v), 4) for v in mean), tuple(round(float(v), 4) for v in std)


def resize(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 NHWC images resized to size x size (bilinear, antialiased), in chunks."""
    out = np.empty((len(images), size, size, images.shape[-1]), dtype=np.uint8)
    for s in range(0, len(images), 1000):
        x = torch.from_numpy(images[s : s + 1000]).permute(0, 3, 1, 2).float()
        y = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out[s : s + 1000] = y.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return out


def load_torchvision(cfg_data: Any, root: Path) -> tuple[ArrayDataset, ArrayDataset]:
    """data=torchvision: the class data.name names (downloaded first when missing and data.download=true)."""
    name = str(cfg_data.name)
    ensure_torchvision(name, root, bool(cfg_data.download))
    spec = torchvision_data.TORCHVISION[name]
    mean, std = spec.mean * (3 // spec.channels), spec.std * (3 // spec.channels)  # grayscale: repeated
    if name == "CIFAR10":
        std = None  # data.normalize picks CIFAR-10's std, as for data=cifar10
    out = []
    for train in (True, False):
        images, labels, classes = torchvision_data.load(name, root, train)
        out.append(ArrayDataset(images, labels, classes, mean, std, spec.flip))
    return out[0], out[1]


def _missing_tv(name: str, root: Path, why: str, download: bool) -> DataError:
    way = "check the network (data.download=true is already set)" if download else "set data.download=true"
    return DataError(
        f"data.name={name} not available under {root} ({why}). Ways out: point data.root=DIR at a "
        f"folder holding {', '.join(torchvision_data.TORCHVISION[name].needs)}, {way}, or use data=synthetic"
    )


def ensure_torchvision(name: str, root: Path, download: bool) -> None:
    """Download data.name=name when it is missing and allowed (under the root's lock); DataError otherwise."""
    if torchvision_data.present(name, root):
        return
    if not download:
        raise _missing_tv(name, root, "not found and data.download=false", download)
    created = not root.exists()
    lock = root / f".{name}.lock"
    try:
        with _locked(lock):
            if not torchvision_data.present(name, root):  # another job may have fetched it while this one waited
                torchvision_data.fetch(name, root, lambda why: _missing_tv(name, root, why, download))
    except DataError:
        _remove_if_created(root, created, lock)
        raise


def _remove_if_created(root: Path, created: bool, lock: Path) -> None:
    """Leave no empty data root (or its lock file) behind a failed download that created the root."""
    if created:
        lock.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            root.rmdir()


DATA_NAMES = torchvision_data.DATA_NAMES


def image_side(cfg_data: Any) -> int:
    """The side the images have as the model sees them: data.image_size, else the dataset's own (a torchvision
    class's; 32 for CIFAR-10, synthetic, and an image folder with data.image_size=null)."""
    if cfg_data.image_size:
        return int(cfg_data.image_size)
    return torchvision_data.TORCHVISION[cfg_data.name].size if cfg_data.name in torchvision_data.TORCHVISION else 32


def class_count(cfg_data: Any) -> int:
    """The data's class count, known without reading an image (imagefolder: its class folders)."""
    if cfg_data.name in torchvision_data.TORCHVISION:
        return torchvision_data.TORCHVISION[cfg_data.name].classes
    if cfg_data.name == "imagefolder":
        train = Path(str(cfg_data.root)).expanduser() / "train"
        n = sum(1 for p in train.iterdir() if p.is_dir()) if train.is_dir() else 0
        if not n:
            raise DataError(f"data=imagefolder needs {train}/<class>/* (no class folders there); set data.root=DIR")
        return n
    return 10


def load_data(cfg_data, test_needed: bool = True) -> tuple[ArrayDataset, ArrayDataset | None]:
    """The configured train and test splits, subset as data.train_size / data.test_size say."""
    name, root = cfg_data.name, Path(str(cfg_data.root)).expanduser()
    size = image_side(cfg_data)
    if name == "synthetic":
        train = make_synthetic(cfg_data.train_size or SYNTHETIC_SIZES["train"], "train")
        test = make_synthetic(cfg_data.test_size or SYNTHETIC_SIZES["test"], "test") if test_needed else None
        return _resized(train, size), _resized(test, size) if test is not None else None
    if name == "cifar10":
        train, test = load_cifar10(root, bool(cfg_data.download))
    elif name == "imagefolder":
        train, test = load_imagefolder(root, size)
    elif name in torchvision_data.TORCHVISION:
        train, test = load_torchvision(cfg_data, root)
    else:
        raise DataError(f"data.name={name!r}; allowed: {', '.join(DATA_NAMES)}")
    if cfg_data.train_size is not None:
        train = train.subset(balanced_subset(train.labels, cfg_data.train_size, "data.train_size"))
    if cfg_data.test_size is not None:
        test = test.subset(balanced_subset(test.labels, cfg_data.test_size, "data.test_size"))
    return _resized(train, size), (_resized(test, size) if test_needed else None)


def _resized(d: ArrayDataset, size: int) -> ArrayDataset:
    """d at size x size (data.image_size), resized once after subsetting (no copy when it already is)."""
    if d.images.shape[1] == size and d.images.shape[2] == size:
        return d
    return dataclasses.replace(d, images=resize(d.images, size))


def _split_sizes(cfg_data, root: Path) -> dict[str, int]:
    """Images per split, as far as known without reading the images."""
    if cfg_data.name in ("synthetic", "cifar10"):
        return dict(SYNTHETIC_SIZES)  # synthetic has CIFAR-10's sizes
    if cfg_data.name in torchvision_data.TORCHVISION:
        return dict(zip(("train", "test"), torchvision_data.TORCHVISION[cfg_data.name].sizes))
    sizes = {}
    for split in ("train", "test"):
        files = [f for f in (root / split).glob("*/*") if f.suffix.lower() in IMAGE_SUFFIXES]
        sizes[split] = len(files)
    return sizes


def check_available(cfg_data) -> None:
    """Fail fast, before any run file is written, when the data cannot possibly be read.

    CIFAR-10 missing with data.download=true is downloaded here (md5-checked, under the root's lock), so that
    an unreachable download fails before the run dir holds anything."""
    root = Path(str(cfg_data.root)).expanduser()
    if cfg_data.name == "cifar10" and not (root / "cifar-10-batches-py").is_dir():
        if not cfg_data.download:
            raise _missing(root, "folder missing and data.download=false")
        created = not root.exists()
        try:
            load_cifar10(root, download=True)
        except DataError:
            _remove_if_created(root, created, root / ".cifar10.lock")
            raise
    if cfg_data.name in torchvision_data.TORCHVISION:
        ensure_torchvision(cfg_data.name, root, bool(cfg_data.download))
    if cfg_data.name == "imagefolder" and not ((root / "train").is_dir() and (root / "test").is_dir()):
        raise DataError(f"data=imagefolder needs {root}/train/<class>/* and {root}/test/<class>/*; set data.root=DIR")
    sizes = _split_sizes(cfg_data, root)
    for split in ("train", "test"):
        n = cfg_data[f"{split}_size"]
        if n is not None and n > sizes[split]:
            raise DataError(
                f"data.{split}_size={n} but data={cfg_data.name} has only {sizes[split]} {split} images; "
                f"use data.{split}_size=null for all, or a number up to {sizes[split]}"
            )
