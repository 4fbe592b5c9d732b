"""Checkpoints: fingerprint, RNG capture, atomic save with pruning, fallback on unreadable files. Fast unit tests."""

from __future__ import annotations

import logging
import random

import numpy as np
import pytest
import torch

from conftest import TINY, compose
from trainbench.store import checkpoint as C


def test_training_config_drops_only_the_resumable_keys():
    cfg = compose(TINY)
    tc = C.training_config(cfg)
    for k in ("epochs", "progress", "resume", "checkpoint", "faults", "timing", "test_eval"):
        assert k not in tc
    assert "root" not in tc["data"] and tc["data"]["name"] == "synthetic"
    for k in ("optimizer", "norm", "model", "batch_size", "seed", "workers", "precision", "loader", "device"):
        assert k in tc
    assert "epochs" in cfg and "root" in cfg.data  # the config itself is not changed


@pytest.mark.parametrize(
    "change,same",
    [
        ("epochs=7", True),
        ("progress=true", True),
        ("checkpoint.keep=4", True),
        ("resume.restore_rng=false", True),
        ("faults.nan_at_step=3", True),
        ("timing=events", True),
        ("test_eval=false", True),
        ("data.root=/elsewhere", True),
        ("optimizer.lr=0.05", False),
        ("seed=1", False),
        ("batch_size=16", False),
        ("norm=none", False),
        ("workers=2", False),
        ("precision=bf16", False),
    ],
)
def test_fingerprint_ignores_resumable_keys_only(change, same):
    a, b = C.fingerprint(compose(TINY)), C.fingerprint(compose([*TINY, change]))
    assert len(a) == 16 and int(a, 16) >= 0
    assert (a == b) is same


def test_rng_state_round_trip():
    state = C.rng_state(torch.device("cpu"))
    assert set(state) == {"torch", "cuda", "numpy", "python"}
    assert state["cuda"] is None  # a CPU run saves no GPU state (a resume with fewer GPUs must not fail)
    a = (torch.rand(3), np.random.rand(3), random.random())
    C.set_rng_state(state)
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def _state(tag: int) -> dict:
    return {"model": {"w": torch.tensor([float(tag)])}, "tag": tag}


def test_save_prunes_to_keep_and_lists_newest_first(tmp_path):
    for e in range(4):
        path = C.save_checkpoint(tmp_path, e, _state(e), keep=2)
        assert path == tmp_path / f"checkpoint_epoch{e}.pt"
    assert C.list_checkpoints(tmp_path) == [
        (3, tmp_path / "checkpoint_epoch3.pt"),
        (2, tmp_path / "checkpoint_epoch2.pt"),
    ]
    (tmp_path / "checkpoint_epochX.pt").write_text("")  # not ours: ignored
    (tmp_path / "checkpoint_epoch1.pt.tmp").write_text("")
    assert [e for e, _ in C.list_checkpoints(tmp_path)] == [3, 2]
    C.save_checkpoint(tmp_path, 10, _state(10), keep=1)  # numeric order, not text order
    assert [e for e, _ in C.list_checkpoints(tmp_path)] == [10]


def test_load_latest_returns_the_newest_with_its_path(tmp_path):
    assert C.load_latest(tmp_path) is None
    C.save_checkpoint(tmp_path, 0, _state(0), keep=3)
    C.save_checkpoint(tmp_path, 1, _state(1), keep=3)
    s = C.load_latest(tmp_path)
    assert s["epoch"] == 1 and s["tag"] == 1 and s["path"] == str(tmp_path / "checkpoint_epoch1.pt")


def test_load_latest_skips_unreadable_with_a_warning(tmp_path, caplog):
    C.save_checkpoint(tmp_path, 0, _state(0), keep=3)
    C.save_checkpoint(tmp_path, 1, _state(1), keep=3)
    (tmp_path / "checkpoint_epoch1.pt").write_bytes(b"truncated")
    with caplog.at_level(logging.WARNING):
        s = C.load_latest(tmp_path)
    assert s["epoch"] == 0
    assert "checkpoint_epoch1.pt is unreadable" in caplog.text and "trying an older one" in caplog.text


@pytest.mark.parametrize(
    "content", [{"epoch": 5, "model": {}}, {"epoch": 0}, [1, 2]], ids=["wrong-epoch", "no-model", "not-a-dict"]
)
def test_load_latest_refuses_foreign_content(tmp_path, content):
    torch.save(content, tmp_path / "checkpoint_epoch0.pt")
    with pytest.raises(C.CheckpointError) as e:
        C.load_latest(tmp_path)
    msg = str(e.value)
    assert "no readable checkpoint" in msg and "checkpoint_epoch0.pt" in msg and "nothing was loaded" in msg


def test_config_diff_names_nested_keys():
    a = {"optimizer": {"lr": 0.1, "name": "sgd"}, "seed": 0, "x": 1}
    b = {"optimizer": {"lr": 0.05, "name": "sgd"}, "seed": 0, "y": 2}
    assert C.config_diff(a, b) == ["optimizer.lr: 0.1 -> 0.05", "x: 1 -> None", "y: None -> 2"]
    assert C.config_diff(a, a) == []
    assert C.config_diff({"d": {"k": 1}}, {"d": 3}) == ["d: {'k': 1} -> 3"]


def test_training_config_resolves_and_tolerates_missing_keys():
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"a": 1, "b": "${a}", "raw": b"\x00"})  # no data, no resumable keys
    assert C.training_config(cfg) == {"a": 1, "b": 1, "raw": b"\x00"}
    assert len(C.fingerprint(cfg)) == 16  # bytes are hashed through str()


def test_fingerprint_is_independent_of_key_order():
    from omegaconf import OmegaConf

    a = OmegaConf.create({"x": 1, "y": {"p": 1, "q": 2}})
    b = OmegaConf.create({"y": {"q": 2, "p": 1}, "x": 1})
    assert C.fingerprint(a) == C.fingerprint(b)


def test_real_checkpoint_state_loads_back(tmp_path):
    """A checkpoint holding what run.py saves (RNG states: numpy arrays, python tuples) must load back."""
    state = {"model": {"w": torch.ones(2)}, "rng": C.rng_state(), "global_step": 3}
    C.save_checkpoint(tmp_path, 0, state, keep=1)
    s = C.load_latest(tmp_path)
    assert s["global_step"] == 3 and s["rng"]["python"] == state["rng"]["python"]
    assert s["model"]["w"].device.type == "cpu"


def test_foreign_content_warning_names_the_reason(tmp_path, caplog):
    torch.save({"epoch": 5, "model": {}}, tmp_path / "checkpoint_epoch0.pt")
    with caplog.at_level(logging.WARNING), pytest.raises(C.CheckpointError) as e:
        C.load_latest(tmp_path)
    assert [r.getMessage() for r in caplog.records if r.name == "trainbench.store.checkpoint"] == [
        "checkpoint checkpoint_epoch0.pt is unreadable (ValueError: contents do not match a trainbench checkpoint); "
        "trying an older one"
    ]
    assert str(e.value) == (
        f"no readable checkpoint in {tmp_path} (checkpoint_epoch0.pt unreadable, probably truncated); nothing was "
        "loaded. Move the run dir away to start again, or resume.enabled=false with a new hydra.run.dir"
    )


def test_two_unreadable_checkpoints_are_both_named(tmp_path):
    for e in (0, 1):
        (tmp_path / f"checkpoint_epoch{e}.pt").write_bytes(b"junk")
    with pytest.raises(C.CheckpointError, match=r"\(checkpoint_epoch1.pt, checkpoint_epoch0.pt unreadable"):
        C.load_latest(tmp_path)


def test_config_diff_keeps_earlier_differences_before_a_nested_one():
    assert C.config_diff({"a": 1, "b": {"x": 1}}, {"a": 2, "b": {"x": 2}}) == ["a: 1 -> 2", "b.x: 1 -> 2"]


def test_fingerprint_includes_the_resolved_device():
    cfg = compose(TINY)
    assert C.fingerprint(cfg, "cpu") != C.fingerprint(cfg, "cuda")
    assert C.training_config(cfg, "cuda")["resolved_device"] == "cuda"
    assert C.config_diff(C.training_config(cfg, "cuda"), C.training_config(cfg, "cpu")) == [
        "resolved_device: 'cuda' -> 'cpu'"
    ]


def test_old_checkpoints_cuda_list_is_ignored_on_cpu():
    state = C.rng_state(torch.device("cpu"))
    state["cuda"] = [torch.zeros(8, dtype=torch.uint8)]  # the old format: every visible GPU's state
    a = torch.rand(2)
    C.set_rng_state({**state, "torch": torch.get_rng_state()}, torch.device("cpu"))  # no GPU: nothing to restore
    C.set_rng_state(state, None)
    assert torch.rand(2).shape == a.shape


def test_remove_checkpoints(tmp_path):
    for e in range(3):
        C.save_checkpoint(tmp_path, e, _state(e), keep=3)
    (tmp_path / "other.pt").write_text("")
    assert C.remove_checkpoints(tmp_path) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.pt"]
    assert C.remove_checkpoints(tmp_path) == 0


class _FakeCuda:
    """torch.cuda's RNG functions, recorded: the CUDA branches' logic runs on a CPU."""

    def __init__(self, monkeypatch):
        self.set_calls = []
        monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device=None: torch.tensor([7, int(device.index or 0)]))
        monkeypatch.setattr(
            torch.cuda, "set_rng_state", lambda s, device=None: self.set_calls.append((s.tolist(), device))
        )


def test_cuda_rng_of_the_training_device_only(monkeypatch):
    fake = _FakeCuda(monkeypatch)
    dev = torch.device("cuda", 1)
    state = C.rng_state(dev)
    assert state["cuda"].tolist() == [7, 1]  # the training device's state, not every GPU's
    C.set_rng_state(state, dev)
    assert fake.set_calls == [([7, 1], dev)]
    C.set_rng_state(state, torch.device("cpu"))  # resumed on a CPU: nothing to restore on a GPU
    C.set_rng_state({**state, "cuda": None}, dev)
    assert len(fake.set_calls) == 1


def test_old_format_cuda_rng_list_restores_the_devices_own(monkeypatch):
    fake = _FakeCuda(monkeypatch)
    state = C.rng_state(torch.device("cpu"))
    state["cuda"] = [torch.tensor([0]), torch.tensor([1])]
    C.set_rng_state(state, torch.device("cuda", 1))
    C.set_rng_state(state, torch.device("cuda"))  # no index: device 0
    C.set_rng_state({**state, "cuda": []}, torch.device("cuda", 0))  # an old CPU run: nothing
    assert [c[0] for c in fake.set_calls] == [[1], [0]]
