"""End-to-end runs of train.py in subprocesses: files, columns, statuses, sums, learning."""

from __future__ import annotations

import csv
import json

import pytest

from conftest import TINY, compose, train_cli
from trainbench.run import run

EPOCH_SPEC = [
    "epoch",
    "train_loss",
    "train_acc",
    "test_loss",
    "test_acc",
    "data_time_s",
    "compute_time_s",
    "epoch_time_s",
    "other_time_s",
    "samples",
    "samples_per_s",
]
BATCH_SPEC = ["epoch", "batch", "size", "loss", "acc", "data_time_s", "compute_time_s"]


def rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_cli_run_writes_spec_files(tmp_path):
    d = tmp_path / "run"
    p = train_cli(
        [*TINY, "epochs=2", "data.train_size=128", "data.test_size=64", f"hydra.run.dir={d}"], tmp_path, check=True
    )
    ep, ba = rows(d / "epochs.csv"), rows(d / "batches.csv")
    assert set(EPOCH_SPEC) <= set(ep[0]) and set(BATCH_SPEC) <= set(ba[0])
    assert [int(r["epoch"]) for r in ep] == [0, 1]
    assert len(ba) == 2 * 128 // 32
    for r in ep:
        parts = float(r["data_time_s"]) + float(r["compute_time_s"]) + float(r["other_time_s"])
        assert parts == pytest.approx(float(r["epoch_time_s"]), rel=1e-3)
        batch_data = sum(float(b["data_time_s"]) for b in ba if b["epoch"] == r["epoch"])
        assert batch_data == pytest.approx(float(r["data_time_s"]), rel=1e-3)
        assert 0 <= float(r["train_acc"]) <= 1 and 0 <= float(r["test_acc"]) <= 1
        assert int(r["samples"]) == 128
        assert float(r["samples_per_s"]) == pytest.approx(128 / float(r["epoch_time_s"]), rel=1e-3)
    info = json.loads((d / "run.json").read_text())
    assert info["status"] == "complete"
    assert info["config"]["epochs"] == 2 and info["choices"]["optimizer"] == "sgd"
    env = info["environment"]
    for k in ("python", "torch", "torchvision", "device_name", "cpu_model", "cpu_count"):
        assert env[k], k
    t = info["totals"]
    assert t["total_epoch_time_s"] == pytest.approx(sum(float(r["epoch_time_s"]) for r in ep), rel=1e-6)
    assert t["avg_train_acc"] == pytest.approx(sum(float(r["train_acc"]) for r in ep) / 2, rel=1e-6)
    log = (d / "train.log").read_text()
    assert "epoch 2/2" in log and "data " in log and "compute " in log  # Hydra's log file has the epoch lines
    assert "epoch 1/2" in p.stdout + p.stderr and "epoch 0/" not in p.stdout + p.stderr  # 1-based in logs


def test_worker_warning_once_per_job(tmp_path):
    """torch warns about too many workers for this machine; the train and test loaders must not repeat it."""
    p = train_cli([*TINY, "workers=3", f"hydra.run.dir={tmp_path / 'r'}"], tmp_path, check=True)
    assert (p.stdout + p.stderr).count("This DataLoader will create") <= 1


def test_inspect_writes_nothing_unless_asked(tmp_path, monkeypatch, capsys):
    from trainbench.questions import main  # the command's own entry point (its CLI run: test_summarize's inspect test)

    monkeypatch.chdir(tmp_path)
    assert main(["--no-layers"]) == 0
    assert "Q1" in capsys.readouterr().out and list(tmp_path.iterdir()) == []


def test_help_explains_groups_presets_and_keys_not_test_keys(tmp_path):
    p = train_cli(["--help"], tmp_path, check=True)
    out = p.stdout
    for word in (
        "optimizer",
        "sgd, nesterov, adagrad, adadelta, adam",
        "experiment",
        "c3",
        "workers",
        "epochs",
        "data.train_size",
        "loader",
        "precision",
        "python train.py -m",
    ):
        assert word in out, word
    assert "faults" not in out and "restore_rng" not in out and "nan_at_step" not in out


def test_test_eval_can_be_switched_off(tmp_path):
    info = run(compose([*TINY, "test_eval=false"]), tmp_path / "r")
    r = rows(tmp_path / "r" / "epochs.csv")[0]
    assert r["test_loss"] == "" and r["test_acc"] == "" and info["status"] == "complete"


def test_short_synthetic_run_learns(tmp_path):
    # 512 images, width 8: measured 0.71 train / 0.80 test top-1 after 3 epochs (seed 0), far above the bound
    cfg = compose([*TINY, "data.train_size=512", "data.test_size=256", "epochs=3", "optimizer.lr=0.05"])
    run(cfg, tmp_path / "r")
    last = rows(tmp_path / "r" / "epochs.csv")[-1]
    assert float(last["train_acc"]) > 0.3 and float(last["test_acc"]) > 0.3  # chance is 0.1


def test_a_plan_is_checked_once(tmp_path, monkeypatch):
    """cli checks the config and resolves the device once; run() takes that plan as it is."""
    from trainbench import plan as plan_mod

    calls = []
    real = plan_mod.validate
    monkeypatch.setattr(plan_mod, "validate", lambda cfg: (calls.append(1), real(cfg)))
    plan = plan_mod.make_plan(compose([*TINY, "test_eval=false"]))
    assert plan.device.type == "cpu" and calls == [1]
    assert run(plan, tmp_path / "r")["status"] == "complete"
    assert calls == [1]


def test_cudnn_benchmark_sweep_in_one_process_is_refused(tmp_path):
    sweep = tmp_path / "sweep"
    p = train_cli(["-m", "cudnn_benchmark=true,false", *TINY, f"hydra.sweep.dir={sweep}"], tmp_path)
    out = p.stdout + p.stderr
    assert p.returncode != 0 and "launcher=local (one process per job)" in out
    assert not list(sweep.rglob("epochs.csv"))  # nothing trained
    statuses = [json.loads(p.read_text())["status"] for p in sorted(sweep.glob("*/run.json"))]
    assert statuses == ["failed", "failed"]
