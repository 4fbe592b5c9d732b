"""Data sources on tiny datasets the tests write in the real on-disk formats."""

from __future__ import annotations

import hashlib
import pickle
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from trainbench.data import sources as D

N_TRAIN_PER_BATCH, N_TEST = 20, 30


def _md5(p: Path) -> str:
    return hashlib.md5(p.read_bytes()).hexdigest()


def write_cifar(root: Path, seed: int = 0) -> dict:
    """A tiny CIFAR-10 in the real cifar-10-batches-py layout (pickled dicts, CHW rows of 3072 bytes)."""
    rng = np.random.default_rng(seed)
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    images = {}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        n = N_TEST if name == "test_batch" else N_TRAIN_PER_BATCH
        hwc = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        labels = [int(i % 10) for i in range(n)]
        rows = hwc.transpose(0, 3, 1, 2).reshape(n, 3072)  # the file stores planes R, G, B per image
        with open(d / name, "wb") as f:
            pickle.dump(
                {"batch_label": name, "labels": labels, "data": rows, "filenames": [f"{i}.png" for i in range(n)]}, f
            )
        images[name] = (hwc, labels)
    with open(d / "batches.meta", "wb") as f:
        pickle.dump({"label_names": D.CIFAR_CLASSES, "num_cases_per_batch": N_TRAIN_PER_BATCH}, f)
    return images


def patch_checksums(monkeypatch, root: Path) -> None:
    from torchvision.datasets import CIFAR10

    d = root / "cifar-10-batches-py"
    monkeypatch.setattr(CIFAR10, "train_list", [[f"data_batch_{i}", _md5(d / f"data_batch_{i}")] for i in range(1, 6)])
    monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", _md5(d / "test_batch")]])
    monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": _md5(d / "batches.meta")})


def test_cifar10_real_format_loads(tmp_path, monkeypatch):
    images = write_cifar(tmp_path)
    patch_checksums(monkeypatch, tmp_path)
    train, test = D.load_cifar10(tmp_path, download=False)
    assert train.images.shape == (5 * N_TRAIN_PER_BATCH, 32, 32, 3) and train.images.dtype == np.uint8
    assert test.images.shape == (N_TEST, 32, 32, 3)
    np.testing.assert_array_equal(train.images[:N_TRAIN_PER_BATCH], images["data_batch_1"][0])
    np.testing.assert_array_equal(test.images, images["test_batch"][0])
    assert train.classes == D.CIFAR_CLASSES


def test_cifar10_corrupted_file_is_refused(tmp_path, monkeypatch):
    write_cifar(tmp_path)
    patch_checksums(monkeypatch, tmp_path)
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_3", "ab") as f:
        f.write(b"garbage")
    with pytest.raises(D.DataError, match="data.root=.*data.download=true.*data=synthetic"):
        D.load_cifar10(tmp_path, download=False)


def test_cifar10_missing_offline_names_path_and_ways_out(tmp_path):
    with pytest.raises(D.DataError) as e:
        D.load_cifar10(tmp_path / "nowhere", download=False)
    msg = str(e.value)
    assert str(tmp_path / "nowhere") in msg and "data.download=true" in msg and "data=synthetic" in msg


def _serve(directory: Path):
    """A loopback HTTP server for directory (the download path needs a real HTTP response)."""
    import functools
    import http.server

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(directory))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_cifar10_download_once_under_concurrency(tmp_path, monkeypatch):
    """The real download path (torchvision's, md5-checked) from a local file:// archive, by two jobs at once."""
    from torchvision.datasets import CIFAR10, cifar

    src = tmp_path / "src"
    write_cifar(src)
    patch_checksums(monkeypatch, src)
    tgz = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(tgz, "w:gz") as t:
        t.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    server = _serve(tmp_path)
    monkeypatch.setattr(CIFAR10, "url", f"http://127.0.0.1:{server.server_port}/{tgz.name}")
    monkeypatch.setattr(CIFAR10, "tgz_md5", _md5(tgz))
    calls = []
    real = cifar.download_and_extract_archive
    monkeypatch.setattr(cifar, "download_and_extract_archive", lambda *a, **k: (calls.append(1), real(*a, **k)))
    root = tmp_path / "shared_root"
    results, errors = [], []

    def job():
        try:
            results.append(D.load_cifar10(root, download=True))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=job) for _ in range(3)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    server.shutdown()
    assert errors == [] and len(results) == 3
    assert len(calls) == 1  # downloaded once; the others waited for the lock and found it verified
    for train, _ in results:
        np.testing.assert_array_equal(train.images, results[0][0].images)


def test_cifar10_download_failure_is_clear(tmp_path, monkeypatch):
    from torchvision.datasets import CIFAR10

    server = _serve(tmp_path)
    monkeypatch.setattr(CIFAR10, "url", f"http://127.0.0.1:{server.server_port}/no-such.tar.gz")
    try:
        with pytest.raises(D.DataError, match="download failed.*data=synthetic"):
            D.load_cifar10(tmp_path / "root", download=True)
    finally:
        server.shutdown()


def test_balanced_subset_fixed_and_balanced():
    labels = np.repeat(np.arange(10), 100)
    np.random.default_rng(0).shuffle(labels)
    idx = D.balanced_subset(labels, 50)
    assert np.bincount(labels[idx], minlength=10).tolist() == [5] * 10
    np.random.seed(123)  # the training seed must not matter
    np.testing.assert_array_equal(idx, D.balanced_subset(labels, 50))
    assert len(np.unique(D.balanced_subset(labels, 57))) == 57
    with pytest.raises(D.DataError, match="data.train_size=2000"):
        D.balanced_subset(labels, 2000)


def test_synthetic_is_fixed_balanced_and_prefix_stable():
    a = D.make_synthetic(1500, "train")
    b = D.make_synthetic(1200, "train")
    np.testing.assert_array_equal(a.images[:1200], b.images)
    assert a.images.shape == (1500, 32, 32, 3) and a.images.dtype == np.uint8
    assert np.bincount(a.labels).tolist() == [150] * 10
    assert not np.array_equal(D.make_synthetic(10, "test").images, a.images[:10])
    assert D.SYNTHETIC_SIZES == {"train": 50_000, "test": 10_000}
    # not trivial: images of one class are not identical
    assert (a.images[0].astype(int) - a.images[10].astype(int)).std() > 5


def test_load_data_subsets_follow_config(tmp_path, monkeypatch):
    write_cifar(tmp_path)
    patch_checksums(monkeypatch, tmp_path)
    cfg = OmegaConf.create(
        {
            "name": "cifar10",
            "root": str(tmp_path),
            "download": False,
            "train_size": 40,
            "test_size": 20,
            "image_size": 32,
        }
    )
    train, test = D.load_data(cfg)
    assert len(train) == 40 and len(test) == 20
    assert np.bincount(train.labels, minlength=10).tolist() == [4] * 10


def test_imagefolder(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("test", 2)):
        for cls in ("cat", "dog"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(n):
                size = 32 if i else 40  # one odd size: resized to data.image_size
                Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(
                    tmp_path / split / cls / f"{i}.png"
                )
    train, test = D.load_imagefolder(tmp_path, 32)
    assert train.classes == ["cat", "dog"]
    assert train.images.shape == (6, 32, 32, 3) and test.images.shape == (4, 32, 32, 3)
    assert sorted(train.labels.tolist()) == [0, 0, 0, 1, 1, 1]
    with pytest.raises(D.DataError, match="train"):
        D.load_imagefolder(tmp_path / "empty", 32)


def test_failed_download_in_the_precheck_leaves_nothing_and_does_not_advise_download(tmp_path, monkeypatch):
    """data.download=true, unreachable: check_available fails (before any run file), removes the data root it
    created, and does not tell the user to set data.download=true, which is already set."""
    from omegaconf import OmegaConf
    from torchvision.datasets import CIFAR10

    server = _serve(tmp_path)
    monkeypatch.setattr(CIFAR10, "url", f"http://127.0.0.1:{server.server_port}/no-such.tar.gz")
    root = tmp_path / "fresh_root"
    cfg = OmegaConf.create(
        {
            "name": "cifar10",
            "root": str(root),
            "download": True,
            "train_size": None,
            "test_size": None,
            "image_size": 32,
        }
    )
    try:
        with pytest.raises(D.DataError) as e:
            D.check_available(cfg)
    finally:
        server.shutdown()
    msg = str(e.value)
    assert "download failed" in msg and "data.download=true is already set" in msg and "data=synthetic" in msg
    assert "set data.download=true" not in msg
    assert not root.exists()


@pytest.mark.parametrize("split,n", [("train", 50_001), ("test", 10_001)])
def test_subset_larger_than_the_split_fails_in_the_precheck(split, n):
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(
        {
            "name": "synthetic",
            "root": "x",
            "download": False,
            "train_size": None,
            "test_size": None,
            "image_size": 32,
            f"{split}_size": n,
        }
    )
    with pytest.raises(D.DataError, match=f"data.{split}_size={n} but data=synthetic has only"):
        D.check_available(cfg)


def test_imagefolder_subset_checked_against_the_files(tmp_path):
    from omegaconf import OmegaConf

    for split in ("train", "test"):
        (tmp_path / split / "a").mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(tmp_path / split / "a" / f"{i}.png")
    cfg = OmegaConf.create(
        {
            "name": "imagefolder",
            "root": str(tmp_path),
            "download": False,
            "train_size": 3,
            "test_size": 4,
            "image_size": 32,
        }
    )
    with pytest.raises(D.DataError, match="data.test_size=4 but data=imagefolder has only 3 test images"):
        D.check_available(cfg)
