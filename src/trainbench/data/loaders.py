"""Batch sources: the lab's DataLoader + torchvision pipeline, and the on-device batch-augmenting loader.

Both draw the same things from the same place: the epoch's order is a permutation seeded by (seed, epoch),
and each image's crop offsets and flip are a hash of (seed, epoch, image index). Nothing depends on which
process, worker or rank draws an image, so a run's losses do not depend on `workers`, a resumed run needs no
RNG state to continue exactly, and 2 ranks x batch 16 see the same global batches as 1 rank x batch 32.
The distribution is the lab's: offsets uniform over the 9 x 9 positions of RandomCrop(32, padding=4),
flip with p = 0.5 (tested statistically). Other image sides pad by side / 8 (data.augment=lab); datasets of
digits or characters are not flipped; data.augment=none neither crops nor flips.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision import transforms as T
from torchvision.transforms import functional as TF

from .sources import MEAN, ArrayDataset, normalize_std

PAD = 4  # random crop padding (lab: RandomCrop(32, padding=4)); other sides: side // 8
_M32 = 0xFFFFFFFF


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (xorshift-multiply) on int64 tensors holding values < 2^32 (no overflow)."""
    x = (((x >> 16) ^ x) * 0x45D9F3B) & _M32
    x = (((x >> 16) ^ x) * 0x45D9F3B) & _M32
    return (x >> 16) ^ x


def aug_params(
    seed: int, epoch: int, idx: torch.Tensor, pad: int = PAD, flip: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Crop offsets (dy, dx), each uniform over 0..2*pad, and flip (p = 0.5; never with flip=False) of images idx.

    A function of (seed, epoch, index) alone, on any device: the same image gets the same crop in any
    process, worker or rank."""
    h = _mix32(torch.full_like(idx, seed & _M32, dtype=torch.int64))
    h = _mix32(h ^ (epoch & _M32))
    h = _mix32(h ^ (idx.to(torch.int64) & _M32))
    n = 2 * pad + 1
    return h % n, (h // n) % n, (((h // (n * n)) % 2) == 1) & flip


def augmentation(size: int, augment: str, flip_fits: bool) -> tuple[int, bool]:
    """(crop padding, flip) for data.augment on images of this side: the lab's padding is side / 8 (4 at 32)."""
    if augment == "none":
        return 0, False
    return max(1, size // 8), flip_fits


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool, rank: int = 0, world: int = 1) -> torch.Tensor:
    """The indices rank draws in epoch: a permutation seeded by (seed, epoch), dealt out round-robin to world ranks.

    With several ranks the order is padded (repeating its start) to a multiple of world, as DistributedSampler
    does; rank r takes positions r, r + world, ... so that the ranks' k-th batches together are the k-th batch
    of one process with world times the batch size."""
    if shuffle:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    else:
        order = torch.arange(n)
    if world > 1:
        if shuffle:  # training: every rank the same number of steps (DDP's collectives pair up step by step)
            total = math.ceil(n / world) * world
            order = torch.cat([order, order[: total - n]])
        order = order[rank::world]  # evaluation: each image once over all ranks
    return order


def shard_size(n: int, shuffle: bool, rank: int = 0, world: int = 1) -> int:
    """len(epoch_order(n, ..., shuffle, rank, world)), without drawing the permutation."""
    if world <= 1:
        return n
    return math.ceil(n / world) if shuffle else len(range(rank, n, world))


class EpochSampler(Sampler):
    """Yields (epoch, index) pairs in epoch_order: the dataset derives the image's augmentation from both."""

    def __init__(self, n: int, seed: int, shuffle: bool, rank: int = 0, world: int = 1) -> None:
        self.n, self.seed, self.shuffle, self.rank, self.world = n, seed, shuffle, rank, world
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return shard_size(self.n, self.shuffle, self.rank, self.world)

    def __iter__(self):
        e = self.epoch
        return iter([(e, i) for i in epoch_order(self.n, self.seed, e, self.shuffle, self.rank, self.world).tolist()])


def lab_transforms(train: bool, std: tuple[float, ...], size: int = 32, mean: tuple[float, ...] = MEAN) -> T.Compose:
    """The lab's torchvision pipeline after the crop and flip (see TransformDataset): ToTensor + Normalize."""
    return T.Compose([T.ToTensor(), T.Normalize(mean, std)])


class TransformDataset(Dataset):
    """Per-sample PIL pipeline over uint8 arrays, as torchvision.datasets.CIFAR10 does it.

    With train=True, each (epoch, index) key gets the lab's RandomCrop(size, padding=4) + RandomHorizontalFlip,
    done with torchvision's own functional ops (pad with 0, crop, hflip) at the offsets aug_params gives."""

    def __init__(
        self,
        data: ArrayDataset,
        transform: T.Compose,
        train: bool = False,
        seed: int = 0,
        pad: int = PAD,
        flip: bool = True,
    ) -> None:
        self.data, self.transform, self.train, self.seed, self.pad, self.flip = data, transform, train, seed, pad, flip

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        epoch, i = key if isinstance(key, tuple) else (0, key)
        img = Image.fromarray(self.data.images[i])
        if self.train and (self.pad or self.flip):
            dy, dx, flip = (int(v) for v in aug_params(self.seed, epoch, torch.tensor([i]), self.pad, self.flip))
            size = self.data.images.shape[1]
            if self.pad:
                img = TF.crop(TF.pad(img, self.pad), dy, dx, size, size)
            if flip:
                img = TF.hflip(img)
        return self.transform(img), int(self.data.labels[i])


def set_epoch(loader, epoch: int) -> None:
    """Tell a loader (its sampler) which epoch it draws: order and augmentation depend on it."""
    target = loader if hasattr(loader, "set_epoch") else getattr(loader, "sampler", None)
    if target is not None and hasattr(target, "set_epoch"):
        target.set_epoch(epoch)


def _seed_worker(worker_id: int) -> None:
    # torch seeds each worker from the loader's generator; derive numpy/python seeds from it too
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def torch_loader(
    data: ArrayDataset,
    *,
    train: bool,
    batch_size: int,
    num_workers: int,
    std: tuple[float, float, float],
    generator: torch.Generator | None,
    pin_memory: bool,
    persistent_workers: bool = False,
    prefetch_factor: int | None = None,
    dataset: Dataset | None = None,
    seed: int = 0,
    rank: int = 0,
    world: int = 1,
    mean: tuple[float, ...] = MEAN,
    pad: int = PAD,
    flip: bool = True,
) -> DataLoader:
    """The lab's DataLoader: shuffled by (seed, epoch) when train (this rank's share), workers, optional pinning.

    generator seeds the workers' own RNGs only (nothing of the lab's pipeline draws from them)."""
    size = data.images.shape[1]
    ds = (
        dataset
        if dataset is not None
        else TransformDataset(data, lab_transforms(train, std, size, mean), train, seed, pad, flip)
    )
    kwargs = {}
    if num_workers > 0:
        kwargs = {"persistent_workers": persistent_workers, "worker_init_fn": _seed_worker}
        if prefetch_factor is not None:
            kwargs["prefetch_factor"] = prefetch_factor
    sampler = EpochSampler(len(ds), seed, shuffle=train, rank=rank, world=world)
    return DataLoader(
        ds,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=pin_memory,
        generator=generator if train else None,
        **kwargs,
    )


def crop_flip(padded: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor, size: int) -> torch.Tensor:
    """Per-sample crop at (dy, dx) of zero-padded NHWC uint8 images, then flip where flip is True -> NCHW."""
    ar = torch.arange(size, device=padded.device)
    rows = (dy[:, None] + ar)[:, :, None]  # (B, size, 1)
    cols = (dx[:, None] + ar)[:, None, :]  # (B, 1, size)
    cols = torch.where(flip[:, None, None], dx[:, None, None] + size - 1 - ar[None, None, :], cols)
    b = torch.arange(padded.shape[0], device=padded.device)[:, None, None]
    return padded[b, rows, cols].permute(0, 3, 1, 2)  # gather (B, size, size, C) -> NCHW


class DeviceLoader:
    """The whole split as one uint8 tensor on the device; shuffle, crop, flip and normalize in batch there."""

    def __init__(
        self,
        data: ArrayDataset,
        *,
        train: bool,
        batch_size: int,
        device: torch.device,
        std: tuple[float, float, float],
        seed: int = 0,
        channels_last: bool = False,
        rank: int = 0,
        world: int = 1,
        mean: tuple[float, ...] = MEAN,
        pad: int = PAD,
        flip: bool = True,
    ) -> None:
        self.train, self.batch_size, self.device = train, batch_size, device
        self.pad, self.flip = (pad, flip) if train else (0, False)
        self.seed, self.epoch, self.rank, self.world = seed, 0, rank, world
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        imgs = torch.from_numpy(np.ascontiguousarray(data.images))  # NHWC uint8
        self.size = imgs.shape[1]
        if self.pad:  # zero padding, as RandomCrop(padding=4) pads the uint8 image with 0
            p = self.pad
            imgs = torch.nn.functional.pad(imgs, (0, 0, p, p, p, p))
        self.images = imgs.to(device)
        self.labels = torch.from_numpy(data.labels).to(device)
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1)
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def items(self) -> int:
        """Images one epoch draws on this rank."""
        return shard_size(len(self.labels), self.train, self.rank, self.world)

    def __len__(self) -> int:
        return math.ceil(self.items() / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n, dev, e = len(self.labels), self.device, self.epoch
        order = epoch_order(n, self.seed, e, self.train, self.rank, self.world).to(dev)
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            x = self.images[idx]
            if self.pad or self.flip:
                dy, dx, flip = aug_params(self.seed, e, idx, self.pad, self.flip)  # on the device, (seed, epoch, index)
                x = crop_flip(x, dy, dx, flip, self.size)
            else:
                x = x.permute(0, 3, 1, 2)
            x = (x.float().div_(255) - self.mean) / self.std
            # The gather above leaves NHWC memory (channels_last strides). Hand over the layout the model is
            # in, here in the data clock, so that no hidden copy lands in the compute clock.
            yield x.contiguous(memory_format=self.memory_format), self.labels[idx]


def make_loader(
    cfg,
    data: ArrayDataset,
    train: bool,
    device: torch.device,
    generator: torch.Generator | None,
    rank: int = 0,
    world: int = 1,
):
    """The configured loader (cfg.loader.name) for one split; with world > 1, rank's share of the training split."""
    pad, flip = augmentation(data.images.shape[1], cfg.data.augment, data.flip)
    # the data's own normalisation; CIFAR-10's (std None) as data.normalize picks
    std = data.std if data.std is not None else normalize_std(cfg.data.normalize)
    norm = {"mean": data.mean, "std": std, "pad": pad, "flip": flip}
    if cfg.loader.name == "device":
        return DeviceLoader(
            data,
            train=train,
            batch_size=cfg.batch_size,
            device=device,
            seed=cfg.seed,
            channels_last=cfg.channels_last,
            rank=rank,
            world=world,
            **norm,
        )
    pin = cfg.loader.pin_memory if cfg.loader.pin_memory is not None else device.type == "cuda"
    return torch_loader(
        data,
        train=train,
        batch_size=cfg.batch_size,
        num_workers=cfg.workers,
        generator=generator,
        pin_memory=pin,
        persistent_workers=cfg.loader.persistent_workers,
        prefetch_factor=cfg.loader.prefetch_factor,
        seed=cfg.seed,
        rank=rank,
        world=world,
        **norm,
    )
