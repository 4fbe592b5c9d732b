"""Both loaders against an independent reference: crops computed by hand in numpy, not by the code under test.

Each sample a loader yields must equal one of the 9 x 9 x 2 hand-computed (crop offset, flip) versions of its
source image, zero-padded by 4 and normalized with the lab's mean and std; over many draws the offsets and
both flips must all show up. Removing the crop, the flip or the normalization, or padding with anything but
zero, fails these tests.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import TINY, compose
from trainbench.data import loaders
from trainbench.data.loaders import make_loader
from trainbench.data.sources import ArrayDataset

# The lab's constants, typed in here from SPEC.md rather than imported from the code under test.
LAB_MEAN = np.array([0.4914, 0.4822, 0.4465])
LAB_STD = np.array([0.2023, 0.1994, 0.2010])
TRUE_STD = np.array([0.2470, 0.2435, 0.2616])


def _images(n: int = 4, seed: int = 0) -> ArrayDataset:
    rng = np.random.default_rng(seed)
    imgs = rng.integers(1, 256, (n, 32, 32, 3), dtype=np.uint8)  # no zero pixel: padding is recognisable
    return ArrayDataset(imgs, np.arange(n), [f"c{i}" for i in range(n)])


def _normalized(hwc: np.ndarray, std: np.ndarray = LAB_STD) -> np.ndarray:
    return ((hwc.astype(np.float64) / 255 - LAB_MEAN) / std).transpose(2, 0, 1)  # CHW


def reference_crops(img: np.ndarray) -> dict[tuple[int, int, bool], np.ndarray]:
    """Every output RandomCrop(32, padding=4) + RandomHorizontalFlip can give, normalized (by hand)."""
    padded = np.pad(img, ((4, 4), (4, 4), (0, 0)))  # zero padding
    out = {}
    for dy in range(9):
        for dx in range(9):
            crop = padded[dy : dy + 32, dx : dx + 32]
            out[(dy, dx, False)] = _normalized(crop)
            out[(dy, dx, True)] = _normalized(crop[:, ::-1])
    return out


def which_crop(x: torch.Tensor, refs: dict) -> tuple[int, int, bool] | None:
    a = x.detach().cpu().double().numpy()
    for k, ref in refs.items():
        if np.allclose(a, ref, atol=1e-4):
            return k
    return None


def _cfg(*extra: str):
    return compose([*TINY, *extra])


def _draw(loader, epochs: int) -> list[tuple[torch.Tensor, int]]:
    out = []
    for e in range(epochs):
        loaders.set_epoch(loader, e)  # order and crops are functions of (seed, epoch, index)
        for x, y in loader:
            out += list(zip(x, y.tolist()))
    return out


@pytest.mark.parametrize("loader", ["torch", "device"])
def test_train_samples_are_lab_crops_flips_and_normalized(loader):
    data = _images()
    refs = [reference_crops(img) for img in data.images]
    cfg = _cfg(f"loader={loader}", "batch_size=4")
    dl = make_loader(cfg, data, True, torch.device("cpu"), torch.Generator().manual_seed(0))
    seen = []
    for x, y in _draw(dl, 40):  # 160 draws
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32
        k = which_crop(x, refs[y])
        assert k is not None, "a training sample is not a zero-padded crop/flip of its image, normalized as the lab"
        seen.append(k)
    offsets = {(dy, dx) for dy, dx, _ in seen}
    flips = [f for _, _, f in seen]
    assert len(offsets) >= 40  # 81 positions, 160 draws: a fixed crop would give 1
    assert 0.3 < np.mean(flips) < 0.7  # both flips, about half each
    assert any(dy != 4 or dx != 4 for dy, dx in offsets)  # padding in view


@pytest.mark.parametrize("loader", ["torch", "device"])
@pytest.mark.parametrize("normalize,std", [("lab", LAB_STD), ("cifar10", TRUE_STD), ("true", TRUE_STD)])
def test_test_samples_are_plain_and_normalized(loader, normalize, std):
    data = _images()
    cfg = _cfg(f"loader={loader}", "batch_size=4", f"data.normalize={normalize}")
    x, y = next(iter(make_loader(cfg, data, False, torch.device("cpu"), None)))
    assert y.tolist() == [0, 1, 2, 3]  # test split: in order, no shuffle
    for i in range(4):
        np.testing.assert_allclose(x[i].double().numpy(), _normalized(data.images[i], std), atol=1e-5)


def test_normalize_true_changes_train_samples_too():
    data = _images(1)
    cfg = _cfg("batch_size=1", "data.normalize=cifar10")
    x, _ = next(iter(make_loader(cfg, data, True, torch.device("cpu"), torch.Generator().manual_seed(0))))
    padded = np.pad(data.images[0], ((4, 4), (4, 4), (0, 0)))
    refs = {}
    for dy in range(9):
        for dx in range(9):
            c = padded[dy : dy + 32, dx : dx + 32]
            refs[(dy, dx, False)] = _normalized(c, TRUE_STD)
            refs[(dy, dx, True)] = _normalized(c[:, ::-1], TRUE_STD)
    assert which_crop(x[0], refs) is not None


def test_torch_loader_takes_the_loader_keys():
    data = _images(8)
    cfg = _cfg("workers=2", "loader.persistent_workers=true", "loader.prefetch_factor=3", "loader.pin_memory=false")
    dl = make_loader(cfg, data, True, torch.device("cpu"), torch.Generator().manual_seed(0))
    assert (dl.num_workers, dl.persistent_workers, dl.prefetch_factor, dl.pin_memory) == (2, True, 3, False)
    assert dl.batch_size == 32
    assert len(_draw(dl, 2)) == 16  # two epochs through persistent workers, every image once per epoch
    dl0 = make_loader(_cfg("workers=0"), data, True, torch.device("cpu"), torch.Generator().manual_seed(0))
    assert dl0.num_workers == 0 and dl0.pin_memory is False  # pin_memory=null: on for CUDA only


def test_train_loader_shuffles_with_its_generator_and_test_does_not():
    data = _images(16)
    cfg = _cfg("batch_size=16")
    a = make_loader(cfg, data, True, torch.device("cpu"), torch.Generator().manual_seed(1))
    b = make_loader(cfg, data, True, torch.device("cpu"), torch.Generator().manual_seed(1))
    ya, yb = next(iter(a))[1].tolist(), next(iter(b))[1].tolist()
    assert ya == yb and sorted(ya) == list(range(16)) and ya != list(range(16))


@pytest.mark.parametrize("cl", [False, True])
@pytest.mark.parametrize("train", [False, True])
def test_device_loader_yields_the_models_layout(cl, train):
    """Batches come in the layout the model uses, so the step does not copy them again inside compute."""
    data = _images(8)
    cfg = _cfg("loader=device", "batch_size=4", f"channels_last={str(cl).lower()}")
    x, _ = next(iter(make_loader(cfg, data, train, torch.device("cpu"), None)))
    assert x.is_contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)
    assert x.is_contiguous() != cl
    same = x.to(memory_format=torch.channels_last if cl else torch.contiguous_format)
    assert same.data_ptr() == x.data_ptr()  # what StepContext.to_device does is then a no-op
