"""precision=auto and the tuner: detection with injected hardware facts, staging, ties, budget, Ctrl-C, the preset."""

from __future__ import annotations

import csv
import json

import pytest
import torch
import yaml

from conftest import TINY, compose
from trainbench import presets
from trainbench.config import ConfigError
from trainbench.device import HardwareFacts, resolve_precision
from trainbench.plan import make_plan
from trainbench.run import run
from trainbench.tune import search as T

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.mark.parametrize(
    "device,facts,want,why",
    [
        (CPU, HardwareFacts(cpu_avx512_bf16=True), "bf16", "AVX-512-BF16"),
        (CPU, HardwareFacts(cpu_amx=True), "bf16", "AMX"),
        (CPU, HardwareFacts(), "fp32", "neither AVX-512-BF16 nor AMX"),
        (CUDA, HardwareFacts(cuda_capability=(9, 0)), "bf16", "9.0 >= 8.0"),
        (CUDA, HardwareFacts(cuda_capability=(8, 0)), "bf16", "8.0 >= 8.0"),
        (CUDA, HardwareFacts(cuda_capability=(7, 5)), "fp32", "7.5 < 8.0"),
        (torch.device("mps"), HardwareFacts(), "fp32", "unknown"),
    ],
)
def test_precision_auto_from_hardware_facts(device, facts, want, why):
    got, reason = resolve_precision("auto", device, facts)
    assert got == want and why in reason


def test_explicit_precision_is_never_changed():
    assert resolve_precision("bf16", CPU, HardwareFacts())[0] == "bf16"  # emulated, but asked for
    assert resolve_precision("fp32", CUDA, HardwareFacts(cuda_capability=(9, 0)))[0] == "fp32"


def test_precision_auto_run_records_what_it_resolved_to_and_why(tmp_path):
    want, why = resolve_precision("auto", CPU)
    plan = make_plan(compose([*TINY, "precision=auto"]))
    assert plan.cfg.precision == want and plan.precision == {"requested": "auto", "resolved": want, "why": why}
    info = run(plan, tmp_path / "r")
    assert info["status"] == "complete" and info["config"]["precision"] == want
    assert json.loads((tmp_path / "r" / "run.json").read_text())["precision_auto"]["why"] == why


def test_tuner_candidates_follow_the_hardware():
    assert T.precisions(CPU, HardwareFacts(cpu_avx512_bf16=True))[0] == ["fp32", "bf16"]
    assert T.precisions(CPU, HardwareFacts())[0] == ["fp32"]  # AVX2 only: bf16 is not even measured
    assert T.precisions(CUDA, HardwareFacts(cuda_capability=(8, 6)))[0] == ["fp32", "bf16", "fp16"]
    assert T.worker_counts(2) == [0, 1, 2] and T.worker_counts(16) == [0, 2, 8, 16] and T.worker_counts(1) == [0, 1]


def _fake_prepare(speeds, calls, interrupt_at=None):
    """prepare() with known speeds: each pass of a candidate returns the next of speeds(settings), in turn."""

    class Fake:
        def __init__(self, cfg, device, data, cand):
            self.cand, self.vals = cand, list(speeds(cand.settings))
            if cand.settings["compile"]:
                cand.compile_s = 12.0

        def one_pass(self, steps):
            calls.append(self.cand.label)
            if interrupt_at is not None and len(calls) == interrupt_at:
                raise KeyboardInterrupt
            v = self.vals[(len(self.cand.ips)) % len(self.vals)]
            self.cand.ips.append(v)
            self.cand.data_share, self.cand.status = 0.1, "measured"
            return v

    return Fake


def _cfg(tmp_path, *extra):
    return compose(
        [*TINY, "data.train_size=128", f"tune.out={tmp_path / 'tune'}", "tune.workers=[0,2]", "tune.repeats=2", *extra]
    )


def _speed(s):
    base = 100.0
    if s["loader.name"] == "device":
        base *= 1.3
    if s["precision"] == "bf16":
        base *= 2.0
    if s["channels_last"]:
        base *= 1.1
    if s["compile"]:
        base *= 1.2
    return (base - 1, base + 1)


def _preset(tmp_path) -> dict:
    return yaml.safe_load((tmp_path / "tune" / "preset.yaml").read_text())


def test_tuner_interleaves_repeats_and_names_a_winner_beyond_the_lab_config(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(T, "prepare", _fake_prepare(_speed, calls))
    monkeypatch.setattr(T, "precisions", lambda device, facts=None: (["fp32", "bf16"], "test"))
    res = T.tune(_cfg(tmp_path))
    s1 = [
        "loader=device precision=fp32 channels_last=false",
        "loader=device precision=fp32 channels_last=true",
        "loader=device precision=bf16 channels_last=false",
        "loader=device precision=bf16 channels_last=true",
    ]
    lab = "loader=torch workers=2 precision=fp32 channels_last=false"
    s2 = [
        lab,
        "loader=torch workers=0 precision=bf16 channels_last=true",
        "loader=torch workers=2 precision=bf16 channels_last=true",
        "loader=device precision=bf16 channels_last=true",
    ]
    s3 = [lab, s2[3], s2[3] + " compile=true"]
    assert calls == s1 + s1 + s2 + s2 + s3 + s3  # round-robin: every candidate once per round
    assert res.winner.label == s3[2] and "1.3x" not in res.verdict and "beyond the noise" in res.verdict
    rows = list(csv.DictReader(open(tmp_path / "tune" / "tune.csv")))
    assert [float(r["images_per_s"]) for r in rows] == sorted((float(r["images_per_s"]) for r in rows), reverse=True)
    assert float(next(r for r in rows if r["setting"] == lab)["vs_lab"]) == 1.0
    assert float(rows[0]["vs_lab"]) == pytest.approx(100 * 1.3 * 2 * 1.1 * 1.2 / 100) and rows[0]["compile_s"] == "12.0"
    assert _preset(tmp_path)["settings"] == {
        "loader.name": "device",
        "workers": 0,
        "precision": "bf16",
        "channels_last": True,
        "compile": True,
    }
    text = T.render(res)
    assert "winner: " + s3[2] in text and "python train.py loader=device precision=bf16 channels_last=true" in text


def test_a_tie_with_the_lab_config_writes_the_lab_config(tmp_path, monkeypatch):
    def speed(s):  # every setting within the noise of the lab config (spread 20 images/s)
        return (95.0 + (3 if s["channels_last"] else 0), 115.0 + (3 if s["loader.name"] == "device" else 0))

    monkeypatch.setattr(T, "prepare", _fake_prepare(speed, []))
    monkeypatch.setattr(T, "precisions", lambda device, facts=None: (["fp32"], "test"))
    res = T.tune(_cfg(tmp_path, "tune.compile=false"))
    assert res.winner is res.lab and "no setting beats the lab config here" in res.verdict
    assert _preset(tmp_path)["settings"] == dict(T.LAB)


def test_ties_with_the_fastest_go_to_the_fewest_changes(tmp_path, monkeypatch):
    def speed(s):  # the device loader is 2x the lab; channels_last adds 0.5 with a spread of 2: a tie
        v = 100.0 if s["loader.name"] == "torch" else 200.0 + (0.5 if s["channels_last"] else 0.0)
        return (v - 1, v + 1)

    monkeypatch.setattr(T, "prepare", _fake_prepare(speed, []))
    monkeypatch.setattr(T, "precisions", lambda device, facts=None: (["fp32"], "test"))
    res = T.tune(_cfg(tmp_path, "tune.compile=false"))
    rows = T.rows(res)
    assert rows[0]["setting"] == "loader=device precision=fp32 channels_last=true"
    assert rows[1]["within_noise_of_best"]
    assert res.winner.label == "loader=device precision=fp32 channels_last=false"  # fewer changes, tied with #1


def test_tuner_never_picks_a_setting_slower_than_the_lab_config(tmp_path, monkeypatch):
    def speed(s):  # an AVX2-like machine where everything but the lab config is slower
        lab = s["loader.name"] == "torch" and s["workers"] == 2 and s["precision"] == "fp32" and not s["channels_last"]
        v = 100.0 if lab and not s["compile"] else 60.0
        return (v - 0.5, v + 0.5)

    monkeypatch.setattr(T, "prepare", _fake_prepare(speed, []))
    monkeypatch.setattr(T, "precisions", lambda device, facts=None: (["fp32"], "test"))
    res = T.tune(_cfg(tmp_path))
    assert res.winner is res.lab


def test_tuner_budget_skips_and_ctrl_c_keeps_what_was_measured(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(T, "prepare", _fake_prepare(_speed, calls, interrupt_at=3))
    monkeypatch.setattr(T, "precisions", lambda device, facts=None: (["fp32", "bf16"], "test"))
    res = T.tune(_cfg(tmp_path))
    assert res.interrupted and len(calls) == 3
    rows = list(csv.DictReader(open(tmp_path / "tune" / "tune.csv")))
    assert sorted(r["status"] for r in rows) == ["interrupted", "interrupted", "measured", "measured"]
    assert not (tmp_path / "tune" / "preset.yaml").exists()  # an interrupted tuner writes no preset
    calls.clear()
    monkeypatch.setattr(T, "prepare", _fake_prepare(_speed, calls))
    res = T.tune(_cfg(tmp_path, "tune.budget_s=1e-9"))
    assert calls == [] and res.winner is None
    assert all(c.status.startswith("skipped: budget") for c in res.candidates)


def test_tuner_bad_keys_are_config_errors(tmp_path):
    with pytest.raises(ConfigError) as e:
        T.tune(_cfg(tmp_path, "tune.repeats=1"))
    assert e.value.key == "tune.repeats"


def test_real_measurement_uses_the_training_loop_and_counts_worker_start_up(tmp_path):
    """A real candidate: positive throughput per pass; with workers, the first batch (their start-up) is in it."""
    from trainbench.data.sources import load_data

    cfg = _cfg(tmp_path, "batch_size=16")
    data, _ = load_data(cfg.data, test_needed=False)
    cand = T.Candidate({**T.LAB, "loader.name": "device", "workers": 0}, "test")
    p = T.prepare(cfg, CPU, data, cand)
    assert p.one_pass(3) > 0 and p.one_pass(3) > 0
    assert cand.status == "measured" and len(cand.ips) == 2 and 0 <= cand.data_share < 0.5


def _fastest(cache, monkeypatch, *extra):
    monkeypatch.setenv("TRAINBENCH_CACHE", str(cache))
    return make_plan(compose(["experiment=fastest", *TINY, *extra]))


def test_fastest_applies_a_preset_only_on_a_matching_machine(tmp_path, monkeypatch, caplog):

    plan = _fastest(tmp_path / "cache", monkeypatch)
    assert plan.cfg.loader.name == "device" and plan.tuned["applied"] is None  # no preset yet: the fallback
    assert "no tuned preset" in caplog.text
    settings = {**T.LAB, "workers": 1, "channels_last": True}
    presets.write(settings, presets.key_of(plan.cfg, CPU), "test", tmp_path / "out")
    plan = _fastest(tmp_path / "cache", monkeypatch)
    assert (plan.cfg.loader.name, plan.cfg.workers, plan.cfg.channels_last) == ("torch", 1, True)
    assert plan.tuned["applied"].startswith(str(tmp_path / "cache"))
    plan = make_plan(compose(["experiment=fastest", *TINY, "workers=0"]), overrides=("workers=0",))
    assert plan.cfg.workers == 0  # the command line still wins
    monkeypatch.setattr(presets, "machine", lambda device: "a GPU node")  # another machine: not applied
    caplog.clear()
    plan = _fastest(tmp_path / "cache", monkeypatch)
    assert plan.cfg.loader.name == "device" and plan.tuned["applied"] is None and "no tuned preset" in caplog.text
    other = _fastest(tmp_path / "cache", monkeypatch, "batch_size=64")  # another batch size: not applied either
    assert other.tuned["applied"] is None


def test_the_tuner_writes_nothing_under_conf_or_src(tmp_path, monkeypatch):
    from conftest import ROOT

    def files():
        return {p for d in ("conf", "src") for p in (ROOT / d).rglob("*") if "__pycache__" not in p.parts}

    before = files()
    monkeypatch.setenv("TRAINBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(T, "prepare", _fake_prepare(_speed, []))
    monkeypatch.setattr(T, "precisions", lambda device, facts=None: (["fp32"], "test"))
    res = T.tune(_cfg(tmp_path))
    assert files() == before
    assert any(str(p).startswith(str(tmp_path / "cache")) for p in res.wrote)


def test_tune_command_prints_the_table_and_writes_its_files(tmp_path):
    """python -m trainbench.tune as a user types it (a subprocess), on a tiny model."""
    import subprocess
    import sys

    out = tmp_path / "tune"
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "trainbench.tune",
            "data=synthetic",
            "data.train_size=96",
            "model.width=8",
            "batch_size=16",
            "tune.steps=2",
            "tune.repeats=2",
            "tune.workers=[0]",
            "tune.compile=false",
            "tune.precisions=[fp32]",
            "tune.channels_last=[false]",
            "tune.write_preset=false",
            f"hydra.run.dir={out}",  # issue 27.7: the tuner's output goes where hydra.run.dir says
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    # the commands keep the tuner's own overrides (the model, data and batch size it measured), not tune.*
    base = "python train.py data=synthetic data.train_size=96 model.width=8 batch_size=16 "
    assert "rank | setting | images/s" in p.stdout and base + "loader=" in p.stdout
    assert base + "experiment=fastest" in p.stdout and "tune.steps" not in p.stdout.split("winner")[-1]
    assert "winner: " in p.stdout or "no setting beats the lab config here" in p.stdout
    assert "trainbench.tune: " in p.stdout  # the progress header
    rows = list(csv.DictReader(open(out / "tune.csv")))
    assert rows and rows[0]["rank"] == "1" and all(r["status"] == "measured" for r in rows)
    assert "settings:" in (out / "preset.yaml").read_text()
    commands = [line for line in p.stdout.splitlines() if "python train.py" in line]
    assert commands and not any("hydra.run.dir" in c for c in commands)  # not the tuner's own output dir
    bad = subprocess.run(
        [sys.executable, "-m", "trainbench.tune", "tune.steps=0"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert bad.returncode == 1 and "tune.steps" in bad.stderr and "Traceback" not in bad.stderr


def test_a_candidate_that_fails_mid_measurement_is_recorded_and_the_tune_goes_on(tmp_path, monkeypatch):
    """Issue 27.7: an exception in one candidate's pass (a divergence, an out-of-memory) no longer ends the tune:
    that candidate is `failed: ...` in tune.csv, every other one is measured and a verdict is reached."""
    base = _fake_prepare(_speed, [])

    class Flaky(base):
        def one_pass(self, steps):
            if self.cand.settings["precision"] == "bf16" and self.cand.settings["channels_last"] and self.cand.ips:
                raise RuntimeError("training diverged: loss=nan")
            return super().one_pass(steps)

    monkeypatch.setattr(T, "prepare", Flaky)
    monkeypatch.setattr(T, "precisions", lambda device, facts=None: (["fp32", "bf16"], "test"))
    res = T.tune(_cfg(tmp_path, "tune.compile=false"))
    bad = [c for c in res.candidates if c.settings["precision"] == "bf16" and c.settings["channels_last"]]
    assert bad and all(c.status == "failed: RuntimeError: training diverged: loss=nan" and not c.ips for c in bad)
    assert res.winner is not None and res.winner not in bad
    with open(tmp_path / "tune" / "tune.csv") as f:
        rows = list(csv.DictReader(f))
    assert any(r["status"].startswith("failed: RuntimeError") for r in rows)


def test_a_bf16_winner_says_it_changes_the_numerics(tmp_path, monkeypatch):
    monkeypatch.setattr(T, "prepare", _fake_prepare(_speed, []))
    monkeypatch.setattr(T, "precisions", lambda device, facts=None: (["fp32", "bf16"], "test"))
    res = T.tune(_cfg(tmp_path, "tune.compile=false"))
    assert res.winner.settings["precision"] == "bf16"
    assert "precision=bf16 changes the numerics" in T.render(res) and "seed=0,1,2" in T.render(res)
