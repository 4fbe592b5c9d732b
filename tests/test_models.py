"""model=: the lab's ResNet-18, torchvision and timm models by name, the user's own class; the facts that trained."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf
from PIL import Image

from conftest import ROOT, TINY, compose, train_cli
from trainbench import models
from trainbench.config import ConfigError, check_command_line
from trainbench.plan import make_plan, resolve_model
from trainbench.store.checkpoint import fingerprint

ANY = [o for o in TINY if not o.startswith("model.")]  # TINY without the lab model's width

TINYNET = '''
import torch
from torch import nn


class Net(nn.Module):
    """Two convs (one in a `shortcut`), a pool, a Linear: small enough for a test, with every part inspect counts."""

    def __init__(self, hidden: int = 8, num_classes: int = 10):
        super().__init__()
        self.conv = nn.Conv2d(3, hidden, 3, padding=1)
        self.shortcut = nn.Conv2d(3, hidden, 1)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x):
        y = torch.relu(self.conv(x) + self.shortcut(x))
        return self.head(y.mean((2, 3)))


class Fixed(nn.Module):
    """Seven outputs whatever the data: the wrong size for CIFAR-10's 10 classes."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(3, 7)

    def forward(self, x):
        return self.head(x.mean((2, 3)))
'''


@pytest.fixture
def tinynet(tmp_path: Path) -> Path:
    """A working directory holding tinynet.py (the user's own module)."""
    (tmp_path / "tinynet.py").write_text(TINYNET)
    return tmp_path


def _cli(args: list[str], cwd: Path, module: str = "train.py") -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(ROOT / "train.py")] if module == "train.py" else [sys.executable, "-m", module]
    return subprocess.run([*cmd, *args], cwd=cwd, capture_output=True, text=True, timeout=240)


def test_custom_model_trains_one_epoch_and_inspect_answers_for_it(tinynet, monkeypatch, capsys):
    """The user's module in the working directory: train.py (a subprocess, with 2 ranks: the spawned ranks import
    it too) trains it for one epoch; inspect answers Q1-Q4 for it."""
    args = [
        "model=custom",
        "model._target_=tinynet.Net",
        "+model.hidden=6",
        *ANY,
        "dist.nproc=2",
        "dist.threads=1",
        "hydra.run.dir=run",
    ]
    p = train_cli(args, tinynet, check=True)
    info = json.loads((tinynet / "run" / "run.json").read_text())
    assert info["status"] == "complete" and info["world_size"] == 2
    assert info["config"]["model"] == {"_target_": "tinynet.Net", "num_classes": 10, "hidden": 6}
    log = (tinynet / "run" / "train.log").read_text()
    assert "model=tinynet.Net;" in log and "262 trainable parameters" in log  # 3*6*9+6 + 3*6+6 + 6*10+10
    assert p.returncode == 0
    from trainbench.questions import main

    monkeypatch.chdir(tinynet)
    assert main(["model=custom", "model._target_=tinynet.Net", "+model.hidden=6", "--no-layers"]) == 0
    out = capsys.readouterr().out
    assert "model: tinynet.Net" in out
    assert "Q1  convolutional layers: 1 without the 1x1 shortcut convs, 2 with them" in out
    assert "Q2  input dimension of the last linear layer: 6" in out
    assert "Q3/Q4 trainable parameters: 262; gradients after backward: 262" in out


def test_torchvision_resnet50_trains_a_step():
    cfg = compose(
        ["model=torchvision", "model.name=resnet50", *ANY, "data.train_size=8", "data.test_size=8", "batch_size=8"]
    )
    import tempfile

    from trainbench.questions import model_facts
    from trainbench.run import run

    with tempfile.TemporaryDirectory() as d:
        info = run(cfg, Path(d) / "r")
        rows = pd.read_csv(Path(d) / "r" / "epochs.csv")
    assert info["status"] == "complete" and int(rows["batches"].iloc[0]) == 1 and rows["samples"].iloc[0] == 8
    assert info["config"]["model"]["name"] == "resnet50" and info["config"]["model"]["num_classes"] == 10
    facts = model_facts(info["config"])
    assert facts["model"] == "torchvision/resnet50" and facts["trainable_parameters"] == 23_528_522  # 10 classes
    assert facts["linear_in_features"] == 2048 and facts["shortcut_convs"] == 4  # its four downsample convs


def test_sweep_over_models_is_a_comparison_with_findings(tmp_path):
    sweep = tmp_path / "s"
    args = [
        "-m",
        "model=torchvision",
        "model.name=mobilenet_v3_small,shufflenet_v2_x0_5",
        "seed=0,1",
        *ANY,
        f"hydra.sweep.dir={sweep}",
    ]
    train_cli(args, tmp_path, check=True, timeout=400)
    s = pd.read_csv(sweep / "summary.csv")
    assert list(s["model"]) == ["torchvision/mobilenet_v3_small"] * 2 + ["torchvision/shufflenet_v2_x0_5"] * 2
    findings = json.loads((sweep / "findings.json").read_text())
    parts = {(f["part"], f["metric"]) for f in findings}
    assert ("model", "avg_epoch_time_s") in parts and ("model", "avg_train_acc") in parts
    speed = next(f for f in findings if f["part"] == "model" and f["metric"] == "avg_epoch_time_s")
    assert speed["noise"] == "seeds" and speed["n"] == 2  # two seeds per model: Welch on the seeds
    report = (sweep / "report.md").read_text()
    assert "## Models: per model" in report and "torchvision/mobilenet_v3_small" in report.splitlines()[0]
    assert (sweep / "tables" / "model.csv").exists()


def test_lab_default_keeps_its_fingerprint_and_facts():
    """Run dirs written before model= existed resume: the lab's config resolves to the same fingerprint."""
    cfg = resolve_model(compose([]))
    assert OmegaConf.to_container(cfg.model) == {"width": 64, "num_classes": 10} and cfg.data.image_size == 32
    assert fingerprint(cfg, "cpu") == "af5c99313b731892"  # the default C1 run's fingerprint before this change
    assert fingerprint(resolve_model(compose(["data=synthetic", "optimizer=adam"])), "cpu") == "3adf1ce0b3788cd5"


@pytest.mark.parametrize(
    "overrides,key,text",
    [
        (["model.name=resnet50"], "model.name", "model=torchvision model.name=resnet50"),
        (["+model.name=resnet50"], "model.name", "the keys of model=resnet18: width, num_classes"),
        (
            ["-m", "model=resnet18,torchvision", "model.name=resnet50"],
            "model.name",
            "this sweep also runs model=resnet18",
        ),
        (["model=torchvision", "model.width=8"], "model.width", "the keys of model=torchvision"),
        (["model=custom", "model._target_=x.Y", "model.hidden=3"], "model.hidden", "write +model.hidden=3"),
    ],
)
def test_unknown_model_keys_are_refused_before_hydra(overrides, key, text):
    with pytest.raises(ConfigError) as e:
        check_command_line([o for o in overrides if not o.startswith("-")], ROOT / "conf")
    assert e.value.key == key and text in str(e.value)


def test_unknown_model_key_in_composed_config_is_refused():
    """A key that reaches the config another way (a preset, +model.x from Hydra) is refused by the plan too."""
    cfg = compose([])
    cfg.model = OmegaConf.create({"width": 64, "num_classes": None, "name": "resnet50"})
    with pytest.raises(ConfigError, match="model.name='resnet50'; allowed: the keys of model=resnet18"):
        make_plan(cfg, check_data=False)


def test_unknown_names_list_close_matches():
    with pytest.raises(ConfigError, match="did you mean: resnet50"):
        models.check_config(compose(["model=torchvision", "model.name=resnet5"]).model)
    with pytest.raises(ConfigError, match="did you mean: .*CIFAR100"):
        make_plan(compose(["data=torchvision", "data.name=cifar100"]), check_data=False)


def test_output_size_mismatch_names_both_numbers(tinynet, monkeypatch):
    monkeypatch.chdir(tinynet)
    monkeypatch.syspath_prepend(str(tinynet))
    cfg = compose(["model=custom", "model._target_=tinynet.Fixed", *ANY])
    with pytest.raises(ConfigError) as e:
        make_plan(cfg)
    assert "gives output (2, 7) for 2 images, not (2, 10)" in str(e.value) and "data.name=synthetic" in str(e.value)
    with pytest.raises(ConfigError, match=r"model.num_classes=7; allowed: null \(the data's class count\) or 10"):
        make_plan(compose([*ANY, "model.num_classes=7"]))


def test_input_size_the_model_cannot_take_says_what_it_needs():
    with pytest.raises(ConfigError) as e:
        make_plan(compose(["model=torchvision", "model.name=vit_b_16", *ANY]))
    assert e.value.key == "data.image_size" and "it takes 224x224: set data.image_size=224" in str(e.value)


def test_custom_class_that_cannot_be_imported_or_built(tinynet, monkeypatch):
    monkeypatch.chdir(tinynet)
    with pytest.raises(ConfigError, match="model._target_='tinynet.Nope'.*AttributeError"):
        make_plan(compose(["model=custom", "model._target_=tinynet.Nope", *ANY]))
    with pytest.raises(ConfigError, match="model._target_='\\?\\?\\?'"):
        make_plan(compose(["model=custom", *ANY]))
    with pytest.raises(
        ConfigError,
        match="takes the keys given \\(model.depth, model.num_classes\\).*unexpected keyword argument .depth.",
    ):
        make_plan(compose(["model=custom", "model._target_=tinynet.Net", "+model.depth=3", *ANY]))


def test_norm_none_is_only_for_the_lab_model():
    with pytest.raises(ConfigError, match="norm.name='none'"):
        make_plan(compose(["model=torchvision", "norm=none", *ANY]))


def test_timm_model_trains_and_missing_timm_names_the_extra(tmp_path, monkeypatch):
    pytest.importorskip("timm")
    from trainbench.run import run

    info = run(compose(["model=timm", "model.name=resnet10t", *ANY]), tmp_path / "r")
    assert info["status"] == "complete" and info["config"]["model"]["name"] == "resnet10t"
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm now raises ImportError
    with pytest.raises(ConfigError, match=r"pip install 'trainbench\[timm\]'"):
        make_plan(compose(["model=timm", *ANY]))


def _imagefolder(root: Path, classes: int, per_class: int, gray: bool = False, side: int = 16) -> None:
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in range(classes):
            d = root / split / f"class{c:02d}"
            d.mkdir(parents=True)
            for i in range(per_class):
                level = 40 + 15 * c
                if gray:
                    img = Image.fromarray(np.clip(rng.normal(level, 10, (side, side)), 0, 255).astype(np.uint8), "L")
                else:
                    img = Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8))
                img.save(d / f"{i}.png")


def test_twelve_class_imagefolder_reports_the_model_that_trained(tmp_path, caplog):
    import logging

    from trainbench.questions import model_facts
    from trainbench.run import run

    _imagefolder(tmp_path / "data", 12, 3)
    caplog.set_level(logging.INFO, logger="trainbench")
    cfg = compose(
        [
            "data=imagefolder",
            f"data.root={tmp_path / 'data'}",
            "model.width=8",
            "workers=0",
            "epochs=1",
            "batch_size=16",
            "progress=false",
        ]
    )
    info = run(cfg, tmp_path / "run")
    assert info["config"]["model"]["num_classes"] == 12
    log = caplog.text

    facts = model_facts(info["config"])
    assert facts["classes"] == 12 and f"{facts['trainable_parameters']} trainable parameters" in log


def test_grayscale_imagefolder_is_normalised_with_its_own_constants(tmp_path):
    _imagefolder(tmp_path, 3, 4, gray=True, side=28)
    from trainbench.data.sources import load_data

    cfg = compose(["data=imagefolder", f"data.root={tmp_path}", "data.image_size=28"])
    train, _ = load_data(cfg.data)
    assert train.images.shape[1:] == (28, 28, 3)
    assert train.mean[0] == train.mean[1] == train.mean[2] and 0.2 < train.mean[0] < 0.5  # not CIFAR-10's 0.49/0.48
    import torch

    from trainbench.data.loaders import make_loader

    x, _ = next(iter(make_loader(cfg, train, False, torch.device("cpu"), None)))
    assert abs(float(x.mean())) < 0.2 and 0.7 < float(x.std()) < 1.3  # standardised with the folder's own numbers


def test_model_choice_is_one_setting_in_the_report():
    """-m model=resnet18,torchvision: the runs differ in several model.* keys; the report compares one `model`."""
    from trainbench.report.runs import Run, varying_keys

    lab = {"model": {"width": 64, "num_classes": 10}, "seed": 0}
    tv = {
        "model": {
            "_target_": "trainbench.models.torchvision_model",
            "name": "resnet18",
            "weights": None,
            "num_classes": 10,
        },
        "seed": 0,
    }
    runs = [Run(Path(str(i)), str(i), "complete", None, {"config": c}, pd.DataFrame()) for i, c in enumerate([lab, tv])]
    assert varying_keys(runs) == ["model"]
    assert [r.settings["model"] for r in runs] == ["resnet18", "torchvision/resnet18"]
    widths = [
        Run(Path("a"), "a", "complete", None, {"config": {"model": {"width": w}}}, pd.DataFrame()) for w in (8, 16)
    ]
    assert varying_keys(widths) == ["model.width"]  # the lab's model at two widths: as before


def test_the_model_class_and_its_arguments_are_in_the_fingerprint(tinynet, monkeypatch):
    from trainbench.run import run
    from trainbench.store.checkpoint import RunDirRefused

    monkeypatch.chdir(tinynet)
    base = ["model=custom", "model._target_=tinynet.Net", *ANY, "checkpoint.keep_on_complete=true"]
    assert run(compose([*base, "+model.hidden=6"]), tinynet / "r")["status"] == "complete"
    with pytest.raises(RunDirRefused, match=r"different config \(model.hidden: 6 -> 7\)"):
        run(compose([*base, "+model.hidden=7", "epochs=2"]), tinynet / "r")


def test_tuned_preset_key_names_the_model():
    import torch

    from trainbench.presets import key_of

    lab = key_of(compose([]), torch.device("cpu"))
    tv = key_of(compose(["model=torchvision", "model.name=resnet50"]), torch.device("cpu"))
    assert lab["model"] == {"width": 64, "norm": "batchnorm"}  # presets measured before model= still match
    assert tv["model"]["model"] == "torchvision/resnet50" and tv["model"]["args"]["name"] == "resnet50"


def test_inspect_errors_are_one_line(capsys):
    from trainbench.questions import main

    for args in (["model=torchvision", "model.name=resnt50"], ["data=imagefolder", "data.root=/nonexistent"]):
        with pytest.raises(SystemExit) as e:
            main([*args, "--no-layers"])
        err = capsys.readouterr().err.strip()
        assert e.value.code == 1 and len(err.splitlines()) == 1 and err.startswith("trainbench: ")
