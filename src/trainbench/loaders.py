"""Batch sources: the lab's DataLoader + torchvision pipeline, and the on-device batch-augmenting loader."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from .data import MEAN, ArrayDataset, normalize_std

PAD = 4  # random crop padding (lab: RandomCrop(32, padding=4))


def lab_transforms(train: bool, std: tuple[float, float, float], size: int = 32) -> T.Compose:
    """The lab's torchvision pipeline: crop(pad 4) + flip + ToTensor + Normalize; test: ToTensor + Normalize."""
    aug = [T.RandomCrop(size, padding=PAD), T.RandomHorizontalFlip(p=0.5)] if train else []
    return T.Compose([*aug, T.ToTensor(), T.Normalize(MEAN, std)])


class TransformDataset(Dataset):
    """Per-sample PIL pipeline over uint8 arrays, as torchvision.datasets.CIFAR10 does it."""

    def __init__(self, data: ArrayDataset, transform: T.Compose) -> None:
        self.data, self.transform = data, transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(Image.fromarray(self.data.images[i])), int(self.data.labels[i])


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
) -> DataLoader:
    """The lab's DataLoader: shuffled (seeded by generator) when train, workers seeded, optional pinning."""
    size = data.images.shape[1]
    ds = dataset if dataset is not None else TransformDataset(data, lab_transforms(train, std, size))
    kwargs = {}
    if num_workers > 0:
        kwargs = {"persistent_workers": persistent_workers, "worker_init_fn": _seed_worker}
        if prefetch_factor is not None:
            kwargs["prefetch_factor"] = prefetch_factor
    return DataLoader(
        ds, batch_size=batch_size, shuffle=train, num_workers=num_workers, pin_memory=pin_memory,
        generator=generator if train else None, **kwargs,
    )  # fmt: skip


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
    ) -> None:
        self.train, self.batch_size, self.device = train, batch_size, device
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        imgs = torch.from_numpy(np.ascontiguousarray(data.images))  # NHWC uint8
        self.size = imgs.shape[1]
        if train:  # zero padding, as RandomCrop(padding=4) pads the uint8 image with 0
            imgs = torch.nn.functional.pad(imgs, (0, 0, PAD, PAD, PAD, PAD))
        self.images = imgs.to(device)
        self.labels = torch.from_numpy(data.labels).to(device)
        self.mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1)
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def __len__(self) -> int:
        return math.ceil(len(self.labels) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n, g, dev = len(self.labels), self.generator, self.device
        order = torch.randperm(n, generator=g, device=dev) if self.train else torch.arange(n, device=dev)
        for start in range(0, n, self.batch_size):
            idx = order[start : start + self.batch_size]
            x = self.images[idx]
            if self.train:
                m = len(idx)
                offs = torch.randint(0, 2 * PAD + 1, (2, m), generator=g, device=dev)  # uniform over 9x9
                flip = torch.rand(m, generator=g, device=dev) < 0.5
                x = crop_flip(x, offs[0], offs[1], flip, self.size)
            else:
                x = x.permute(0, 3, 1, 2)
            x = (x.float().div_(255) - self.mean) / self.std
            # The gather above leaves NHWC memory (channels_last strides). Hand over the layout the model is
            # in, here in the data clock, so that no hidden copy lands in the compute clock.
            yield x.contiguous(memory_format=self.memory_format), self.labels[idx]


def make_loader(cfg, data: ArrayDataset, train: bool, device: torch.device, generator: torch.Generator | None):
    """The configured loader (cfg.loader.name) for one split."""
    std = normalize_std(cfg.data.normalize)
    if cfg.loader.name == "device":
        return DeviceLoader(data, train=train, batch_size=cfg.batch_size, device=device, std=std, seed=cfg.seed,
                            channels_last=cfg.channels_last)  # fmt: skip
    pin = cfg.loader.pin_memory if cfg.loader.pin_memory is not None else device.type == "cuda"
    return torch_loader(
        data, train=train, batch_size=cfg.batch_size, num_workers=cfg.workers, std=std,
        generator=generator, pin_memory=pin, persistent_workers=cfg.loader.persistent_workers,
        prefetch_factor=cfg.loader.prefetch_factor,
    )  # fmt: skip
