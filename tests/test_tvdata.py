"""data=torchvision: fake datasets the tests write in torchvision's own on-disk formats (no network)."""

from __future__ import annotations

import hashlib
import pickle
import struct
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import compose
from trainbench.data import sources as D
from trainbench.data import torchvision_data as tvdata
from trainbench.data.loaders import augmentation, make_loader

SMALL = ["model.width=8", "workers=0", "epochs=1", "batch_size=32", "progress=false"]


def _md5(p: Path) -> str:
    return hashlib.md5(p.read_bytes()).hexdigest()


def write_cifar100(root: Path, n_train: int = 200, n_test: int = 100) -> np.ndarray:
    """CIFAR-100 as torchvision reads it: cifar-100-python/{train,test,meta}, pickled, CHW rows, fine_labels."""
    d = root / "cifar-100-python"
    d.mkdir(parents=True)
    rng = np.random.default_rng(1)
    first = None
    for name, n in (("train", n_train), ("test", n_test)):
        hwc = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        first = hwc if first is None else first
        rows = hwc.transpose(0, 3, 1, 2).reshape(n, 3072)
        entry = {"data": rows, "fine_labels": [i % 100 for i in range(n)], "coarse_labels": [i % 20 for i in range(n)]}
        (d / name).write_bytes(pickle.dumps(entry))
    (d / "meta").write_bytes(pickle.dumps({"fine_label_names": [f"fine{i}" for i in range(100)]}))
    return first


def patch_cifar100(monkeypatch, root: Path) -> None:
    from torchvision.datasets import CIFAR100

    d = root / "cifar-100-python"
    monkeypatch.setattr(CIFAR100, "train_list", [["train", _md5(d / "train")]])
    monkeypatch.setattr(CIFAR100, "test_list", [["test", _md5(d / "test")]])
    monkeypatch.setattr(CIFAR100, "meta", {**CIFAR100.meta, "md5": _md5(d / "meta")})


def _idx(path: Path, array: np.ndarray) -> None:
    """One idx file (the MNIST family's format): magic 0x0000080N, big-endian dims, then uint8 data."""
    header = struct.pack(">I", 0x0800 + array.ndim) + b"".join(struct.pack(">I", s) for s in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_mnist_family(root: Path, name: str = "FashionMNIST", n_train: int = 120, n_test: int = 60) -> None:
    """root/<name>/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte, as torchvision.datasets.MNIST reads them."""
    raw = root / name / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(2)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n) % 10
        images = np.clip(rng.normal(30 + 20 * labels[:, None, None], 20, (n, 28, 28)), 0, 255)
        _idx(raw / f"{prefix}-images-idx3-ubyte", images)
        _idx(raw / f"{prefix}-labels-idx1-ubyte", labels)


def test_cifar100_loads_with_its_classes_and_constants(tmp_path, monkeypatch):
    first = write_cifar100(tmp_path)
    patch_cifar100(monkeypatch, tmp_path)
    train, test = D.load_data(compose(["data=torchvision", "data.name=CIFAR100", f"data.root={tmp_path}"]).data)
    assert train.images.shape == (200, 32, 32, 3) and len(test) == 100
    np.testing.assert_array_equal(train.images[0], first[0])  # CHW rows back to HWC, pixel for pixel
    assert len(train.classes) == 100 and train.classes[3] == "fine3" and train.labels[:3].tolist() == [0, 1, 2]
    assert train.mean == (0.5071, 0.4865, 0.4409) and train.std == (0.2673, 0.2564, 0.2762) and train.flip


def test_cifar100_trains_with_a_100_way_head(tmp_path, monkeypatch):
    write_cifar100(tmp_path / "data")
    patch_cifar100(monkeypatch, tmp_path / "data")
    from trainbench.questions import model_facts
    from trainbench.run import run

    cfg = compose(["data=torchvision", "data.name=CIFAR100", f"data.root={tmp_path / 'data'}", *SMALL])
    info = run(cfg, tmp_path / "r")
    assert info["status"] == "complete"
    assert info["config"]["model"]["num_classes"] == 100 and info["config"]["data"]["image_size"] == 32
    facts = model_facts(info["config"])
    assert facts["classes"] == 100 and facts["trainable_parameters"] == 176_402 + 90 * 65  # 64 x 100 + 100 head


def test_fashion_mnist_trains_from_idx_files(tmp_path, caplog):
    import logging

    from trainbench.run import run

    write_mnist_family(tmp_path / "data")
    caplog.set_level(logging.INFO, logger="trainbench")
    cfg = compose(
        ["data=torchvision", "data.name=FashionMNIST", f"data.root={tmp_path / 'data'}", "data.download=false", *SMALL]
    )
    info = run(cfg, tmp_path / "run")
    assert info["status"] == "complete" and info["config"]["data"]["image_size"] == 28
    log = caplog.text
    assert "FashionMNIST: 28x28, 10 classes, grayscale expanded to 3 channels" in log
    assert "120 train / 60 test images" in log


def test_grayscale_is_expanded_and_normalised_with_its_own_constants(tmp_path):
    write_mnist_family(tmp_path, "MNIST")
    cfg = compose(["data=torchvision", "data.name=MNIST", f"data.root={tmp_path}", "loader=device", "batch_size=60"])
    train, test = D.load_data(cfg.data)
    assert train.images.shape == (120, 28, 28, 3)
    assert (train.images[..., 0] == train.images[..., 2]).all()  # a grey pixel is (v, v, v)
    assert train.mean == (0.1307,) * 3 and train.std == (0.3081,) * 3 and not train.flip  # digits: no flip
    x, _ = next(iter(make_loader(cfg, test, False, torch.device("cpu"), None)))
    ref = (torch.from_numpy(test.images[:60]).permute(0, 3, 1, 2).float() / 255 - 0.1307) / 0.3081
    torch.testing.assert_close(x, ref)


@pytest.mark.parametrize("loader", ["torch", "device"])
def test_digits_are_cropped_with_padding_side_over_8_and_never_flipped(tmp_path, loader):
    from trainbench.data.loaders import aug_params, epoch_order

    write_mnist_family(tmp_path, "MNIST")
    cfg = compose(
        ["data=torchvision", "data.name=MNIST", f"data.root={tmp_path}", f"loader={loader}", "batch_size=120"]
    )
    train, _ = D.load_data(cfg.data)
    assert augmentation(28, "lab", train.flip) == (3, False) and augmentation(96, "lab", True) == (12, True)
    x, _ = next(iter(make_loader(cfg, train, True, torch.device("cpu"), torch.Generator().manual_seed(0))))
    idx = epoch_order(120, 0, 0, True)
    dy, dx, flip = aug_params(0, 0, idx, 3, False)
    assert not flip.any() and len({(int(a), int(b)) for a, b in zip(dy, dx)}) > 30  # of the 7 x 7 offsets
    img = torch.from_numpy(train.images[idx.numpy()]).permute(0, 3, 1, 2)
    padded = torch.nn.functional.pad(img, (3, 3, 3, 3))  # zero pixels, as RandomCrop(28, padding=3)
    crops = torch.stack([padded[k, :, a : a + 28, b : b + 28] for k, (a, b) in enumerate(zip(dy, dx))])
    torch.testing.assert_close(x, (crops.float() / 255 - 0.1307) / 0.3081)  # crops at those offsets, unflipped


def test_augment_none_trains_on_the_plain_images(tmp_path):
    write_mnist_family(tmp_path, "FashionMNIST")
    cfg = compose(
        [
            "data=torchvision",
            "data.name=FashionMNIST",
            f"data.root={tmp_path}",
            "data.augment=none",
            "loader=device",
            "batch_size=120",
        ]
    )
    train, _ = D.load_data(cfg.data)
    x, y = next(iter(make_loader(cfg, train, True, torch.device("cpu"), torch.Generator().manual_seed(0))))
    order = torch.randperm(120, generator=torch.Generator().manual_seed(0 * 1_000_003 + 0))
    ref = (torch.from_numpy(train.images[order.numpy()]).permute(0, 3, 1, 2).float() / 255 - 0.2860) / 0.3530
    torch.testing.assert_close(x, ref)


def test_image_size_resizes_any_dataset(tmp_path):
    write_mnist_family(tmp_path, "KMNIST")
    cfg = compose(["data=torchvision", "data.name=KMNIST", f"data.root={tmp_path}", "data.image_size=32"])
    train, test = D.load_data(cfg.data)
    assert train.images.shape == (120, 32, 32, 3) and test.images.shape == (60, 32, 32, 3)
    native, _ = D.load_data(compose(["data=torchvision", "data.name=KMNIST", f"data.root={tmp_path}"]).data)
    assert native.images.shape[1] == 28
    assert abs(float(train.images.mean()) - float(native.images.mean())) < 2  # the same images, resized


def test_svhn_loads_from_its_mat_files(tmp_path, monkeypatch):
    from scipy.io import savemat
    from torchvision.datasets import SVHN

    rng = np.random.default_rng(3)
    split_list = {}
    for split, n in (("train", 30), ("test", 20)):
        x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        savemat(tmp_path / f"{split}_32x32.mat", {"X": x, "y": (np.arange(n) % 10 + 1)[:, None]})  # 10 means 0
        split_list[split] = ["", f"{split}_32x32.mat", _md5(tmp_path / f"{split}_32x32.mat")]
    monkeypatch.setattr(SVHN, "split_list", split_list)
    train, test = D.load_data(compose(["data=torchvision", "data.name=SVHN", f"data.root={tmp_path}"]).data)
    assert train.images.shape == (30, 32, 32, 3) and len(test) == 20 and not train.flip
    assert train.labels[:3].tolist() == [1, 2, 3] and train.labels[9] == 0


def test_a_failed_download_leaves_no_half_written_data(tmp_path, monkeypatch):
    import torchvision.datasets.mnist as mnist

    def broken(url, download_root, filename=None, md5=None, **kw):
        Path(download_root).mkdir(parents=True, exist_ok=True)
        (Path(download_root) / (filename or "part.gz")).write_bytes(b"half an archive")
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(mnist, "download_and_extract_archive", broken)
    root = tmp_path / "fresh"
    cfg = compose(["data=torchvision", "data.name=FashionMNIST", f"data.root={root}"])
    with pytest.raises(D.DataError) as e:
        D.check_available(cfg.data)
    assert str(e.value).startswith(f"data.name=FashionMNIST not available under {root} (download failed:")
    assert "check the network" in str(e.value) and "use data=synthetic" in str(e.value)
    assert not root.exists()  # created for the download: removed again
    kept = tmp_path / "kept"
    (kept / "mine.txt").parent.mkdir()
    (kept / "mine.txt").write_text("the user's")
    with pytest.raises(D.DataError):
        D.check_available(compose(["data=torchvision", "data.name=FashionMNIST", f"data.root={kept}"]).data)
    assert sorted(p.name for p in kept.iterdir()) == [".FashionMNIST.lock", "mine.txt"]  # no partial files


def test_a_download_lands_complete(tmp_path, monkeypatch):
    import torchvision.datasets.mnist as mnist

    def fake(url, download_root, filename=None, md5=None, **kw):
        raw = Path(download_root)
        if not any(raw.glob("*-ubyte")):
            write_mnist_family(raw.parent.parent, "FashionMNIST")

    monkeypatch.setattr(mnist, "download_and_extract_archive", fake)
    cfg = compose(["data=torchvision", "data.name=FashionMNIST", f"data.root={tmp_path}"])
    D.check_available(cfg.data)
    assert tvdata.present("FashionMNIST", tmp_path) and not list(tmp_path.glob(".download-*"))
    assert len(D.load_data(cfg.data)[0]) == 120


def test_missing_without_download_says_ways_out(tmp_path):
    cfg = compose(["data=torchvision", "data.name=CIFAR100", f"data.root={tmp_path}", "data.download=false"])
    with pytest.raises(D.DataError, match="set data.download=true, or use data=synthetic"):
        D.check_available(cfg.data)
    assert list(tmp_path.iterdir()) == []


def test_every_documented_dataset_has_facts():
    for name in ("CIFAR10", "CIFAR100", "MNIST", "FashionMNIST", "KMNIST", "SVHN", "STL10"):
        s = tvdata.TORCHVISION[name]
        assert len(s.mean) == len(s.std) == s.channels and s.classes >= 10 and s.size in (28, 32, 96)
        import torchvision.datasets as tvd

        assert hasattr(tvd, name)


def test_stl10_loads_96_pixel_images_from_its_binary_files(tmp_path, monkeypatch):
    """stl10_binary/{train,test}_{X,y}.bin: images stored column-major (C, W, H), labels 1..10."""
    from torchvision.datasets import STL10

    d = tmp_path / "stl10_binary"
    d.mkdir()
    rng = np.random.default_rng(4)
    first = {}
    for split, n in (("train", 6), ("test", 4)):
        hwc = rng.integers(0, 256, (n, 96, 96, 3), dtype=np.uint8)
        first[split] = hwc[0]
        (d / f"{split}_X.bin").write_bytes(np.ascontiguousarray(hwc.transpose(0, 3, 2, 1)).tobytes())
        (d / f"{split}_y.bin").write_bytes((np.arange(n) % 10 + 1).astype(np.uint8).tobytes())
    (d / "class_names.txt").write_text("\n".join(f"c{i}" for i in range(10)) + "\n")
    monkeypatch.setattr(STL10, "train_list", [[f, _md5(d / f)] for f in ("train_X.bin", "train_y.bin")])
    monkeypatch.setattr(STL10, "test_list", [[f, _md5(d / f)] for f in ("test_X.bin", "test_y.bin")])
    cfg = compose(["data=torchvision", "data.name=STL10", f"data.root={tmp_path}"])
    train, test = D.load_data(cfg.data)
    assert train.images.shape == (6, 96, 96, 3) and test.images.shape == (4, 96, 96, 3)
    np.testing.assert_array_equal(train.images[0], first["train"])  # pixel for pixel, upright
    assert train.labels.tolist() == [0, 1, 2, 3, 4, 5] and train.flip and train.classes[2] == "c2"
    assert augmentation(96, cfg.data.augment, train.flip) == (12, True)
