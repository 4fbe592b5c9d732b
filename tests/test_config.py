"""Composition of every option, and clear errors for bad input before any run file is written."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from conftest import ROOT, TINY, compose, train_cli
from trainbench.config import ConfigError, validate

GROUPS = ["device", "optimizer", "norm", "data", "loader"]


@pytest.mark.parametrize(
    "group,option",
    [(g, p.stem) for g in GROUPS for p in sorted((ROOT / "conf" / g).glob("*.yaml"))]
    + [("experiment", p.stem) for p in sorted((ROOT / "conf" / "experiment").glob("*.yaml"))],
)
def test_every_option_composes(group, option):
    cfg = compose([f"{group}={option}"])
    if group != "experiment":
        assert cfg[group].name == option
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves


def test_defaults_reproduce_c1():
    cfg = compose()
    assert (cfg.epochs, cfg.batch_size, cfg.workers) == (5, 128, 2)
    assert (cfg.optimizer.name, cfg.optimizer.lr, cfg.optimizer.momentum, cfg.optimizer.weight_decay) == (
        "sgd",
        0.1,
        0.9,
        5e-4,
    )
    assert (cfg.norm.name, cfg.data.name, cfg.loader.name, cfg.precision) == ("batchnorm", "cifar10", "torch", "fp32")
    assert cfg.data.normalize == "lab"
    validate(cfg)


@pytest.mark.parametrize("workers", [0, 1, 2, 4, 8, 12, 16])
def test_lab_worker_counts(workers):
    assert compose([f"workers={workers}"]).workers == workers


def test_optimizer_hyperparameters():
    for name in ("sgd", "nesterov", "adagrad", "adadelta", "adam"):
        cfg = compose([f"optimizer={name}"])
        assert cfg.optimizer.lr == 0.1 and cfg.optimizer.weight_decay == 5e-4
        assert cfg.optimizer.momentum == (0.9 if name in ("sgd", "nesterov") else None)
    assert compose(["optimizer=nesterov"]).optimizer.nesterov is True


def test_wrong_type_fails_at_composition():
    with pytest.raises(Exception, match="batch_size"):
        compose(["batch_size=abc"])


@pytest.mark.parametrize(
    "override,key",
    [("epochs=0", "epochs"), ("batch_size=-1", "batch_size"), ("optimizer.lr=0", "optimizer.lr"),
     ("workers=-2", "workers"), ("data.train_size=0", "data.train_size"), ("precision=fp8", "precision"),
     ("optimizer.momentum=1.5", "optimizer.momentum")],
)  # fmt: skip
def test_range_checks_name_key_value_and_allowed(override, key):
    with pytest.raises(ConfigError) as e:
        validate(compose([override]))
    assert e.value.key == key
    assert f"{key}=" in str(e.value) and "allowed" in str(e.value)


@pytest.mark.parametrize(
    "args,expected",
    [
        (["optimizer=nosuch"], ["optimizer", "nosuch", "sgd", "adam"]),
        (["epochs=0"], ["epochs=0", "allowed", ">= 1"]),
        (["batch_size=abc"], ["batch_size", "abc"]),
        (
            ["data=cifar10", "data.root=NOWHERE", "data.download=false"],
            ["NOWHERE", "data.root=", "data.download=true", "data=synthetic"],
        ),
        (["device=cuda"], ["device", "device=cpu"]),
    ],
)
def test_bad_override_exits_nonzero_and_leaves_no_files(tmp_path, args, expected):
    if args == ["device=cuda"]:
        import torch

        if torch.cuda.is_available():
            pytest.skip("CUDA is present")
    base = [a for a in TINY if not a.startswith("data")] if args[0].startswith("data=") else TINY
    p = train_cli([*base, *args], tmp_path)
    out = p.stdout + p.stderr
    assert p.returncode != 0, out
    for word in expected:
        assert word in out, (word, out)
    leftovers = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert leftovers == [], leftovers


def test_bad_override_keeps_existing_run_dir(tmp_path):
    run_dir = tmp_path / "run"
    train_cli([*TINY, f"hydra.run.dir={run_dir}"], tmp_path, check=True)
    before = (run_dir / "epochs.csv").read_text()
    p = train_cli([*TINY, "epochs=0", f"hydra.run.dir={run_dir}"], tmp_path)
    assert p.returncode != 0
    assert (run_dir / "epochs.csv").read_text() == before
    assert (run_dir / "run.json").exists()
