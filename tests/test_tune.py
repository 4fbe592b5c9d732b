"""precision=auto and the tuner: detection with injected hardware facts, staging, ties, budget, Ctrl-C, the preset."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from conftest import TINY, compose
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


def _fake_measure(speeds, calls, interrupt_at=None):
    """measure() with known speeds (images/s per repeat) by setting."""

    def measure(cfg, device, data, cand, steps, warmup_steps, repeats):
        calls.append(cand.label)
        if interrupt_at is not None and len(calls) == interrupt_at:
            raise KeyboardInterrupt
        cand.ips = list(speeds(cand.settings))
        cand.data_share, cand.status = 0.1, "measured"
        if cand.settings["compile"]:
            cand.compile_s = 12.0

    return measure


def _cfg(tmp_path, *extra):
    return compose([*TINY, "data.train_size=128", f"tune.out={tmp_path / 'tune'}", "tune.write_preset=false",
                    "tune.workers=[0,2]", *extra])  # fmt: skip


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


def test_tuner_stages_and_ranking(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(T, "measure", _fake_measure(_speed, calls))
    monkeypatch.setattr(T, "precisions", lambda device, facts=None: (["fp32", "bf16"], "test"))
    res = T.tune(_cfg(tmp_path))
    # stage 1: precision x channels_last on the device loader; then the lab config; stage 2: loaders at the
    # winning compute settings (bf16 + channels_last); stage 3: compile on the best
    assert calls == [
        "loader=device precision=fp32 channels_last=false", "loader=device precision=fp32 channels_last=true",
        "loader=device precision=bf16 channels_last=false", "loader=device precision=bf16 channels_last=true",
        "loader=torch workers=2 precision=fp32 channels_last=false",
        "loader=torch workers=0 precision=bf16 channels_last=true",
        "loader=torch workers=2 precision=bf16 channels_last=true",
        "loader=device precision=bf16 channels_last=true compile=true",
    ]  # fmt: skip
    assert res.winner.label == "loader=device precision=bf16 channels_last=true compile=true"
    rows = list(csv.DictReader(open(tmp_path / "tune" / "tune.csv")))
    assert [float(r["images_per_s"]) for r in rows] == sorted((float(r["images_per_s"]) for r in rows), reverse=True)
    lab = next(r for r in rows if r["setting"] == "loader=torch workers=2 precision=fp32 channels_last=false")
    assert float(lab["vs_lab"]) == 1.0
    assert float(rows[0]["vs_lab"]) == pytest.approx(100 * 1.3 * 2 * 1.1 * 1.2 / 100)
    assert rows[0]["compile_s"] == "12.0"
    assert (tmp_path / "tune" / "winner.yaml").read_text().count("precision: bf16") == 1
    text = T.render(res)
    assert "winner: loader=device precision=bf16 channels_last=true compile=true" in text
    assert "python train.py loader=device precision=bf16 channels_last=true compile=true" in text


def test_tuner_calls_candidates_within_noise_a_tie(tmp_path, monkeypatch):
    def speed(s):  # channels_last adds 0.5 images/s, with a repeat spread of 2: no real order
        v = 100.0 + (0.5 if s["channels_last"] else 0.0) + (-50 if s["loader.name"] == "torch" else 0)
        return (v - 1, v + 1)

    monkeypatch.setattr(T, "measure", _fake_measure(speed, []))
    monkeypatch.setattr(T, "precisions", lambda device, facts=None: (["fp32"], "test"))
    res = T.tune(_cfg(tmp_path, "tune.compile=false"))
    rows = T.rows(res)
    assert rows[0]["setting"] == "loader=device precision=fp32 channels_last=true"
    assert rows[1]["setting"] == "loader=device precision=fp32 channels_last=false" and rows[1]["within_noise_of_best"]
    assert not any(r["within_noise_of_best"] for r in rows[2:])  # the torch loader is slower beyond the noise
    assert "within measured noise of the winner" in T.render(res)


def test_tuner_never_picks_a_setting_slower_than_the_lab_config(tmp_path, monkeypatch):
    def speed(s):  # an AVX2-like machine where everything but the lab config is slower
        lab = s["loader.name"] == "torch" and s["workers"] == 2 and s["precision"] == "fp32" and not s["channels_last"]
        v = 100.0 if lab and not s["compile"] else 60.0
        return (v - 0.5, v + 0.5)

    monkeypatch.setattr(T, "measure", _fake_measure(speed, []))
    monkeypatch.setattr(T, "precisions", lambda device, facts=None: (["fp32"], "test"))
    res = T.tune(_cfg(tmp_path))
    assert res.winner is res.lab


def test_tuner_budget_skips_and_ctrl_c_keeps_what_was_measured(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(T, "measure", _fake_measure(_speed, calls, interrupt_at=3))
    monkeypatch.setattr(T, "precisions", lambda device, facts=None: (["fp32", "bf16"], "test"))
    res = T.tune(_cfg(tmp_path))
    assert res.interrupted and len(calls) == 3
    rows = list(csv.DictReader(open(tmp_path / "tune" / "tune.csv")))
    assert [r["status"] for r in rows] == ["measured", "measured", "interrupted"]
    assert res.winner.label == "loader=device precision=fp32 channels_last=true"
    # budget: nothing starts once it is spent
    calls.clear()
    monkeypatch.setattr(T, "measure", _fake_measure(_speed, calls))
    res = T.tune(_cfg(tmp_path, "tune.budget_s=1e-9"))
    assert calls == [] and res.winner is None
    assert all(c.status.startswith("skipped: budget") for c in res.candidates)


def test_tuner_bad_keys_are_config_errors(tmp_path):
    with pytest.raises(ConfigError) as e:
        T.tune(_cfg(tmp_path, "tune.repeats=0"))
    assert e.value.key == "tune.repeats"


def test_real_measurement_uses_the_training_loop(tmp_path):
    """One real candidate, measured: positive throughput per repeat, the data share of a device loader small."""
    from trainbench.data import load_data

    cfg = _cfg(tmp_path, "batch_size=16")
    data, _ = load_data(cfg.data, test_needed=False)
    cand = T.Candidate({**T.LAB, "loader.name": "device", "workers": 0}, "test")
    T.measure(cfg, CPU, data, cand, steps=2, warmup_steps=1, repeats=2)
    assert cand.status == "measured" and len(cand.ips) == 2 and all(v > 0 for v in cand.ips)
    assert 0 <= cand.data_share < 0.5
    with pytest.raises(ValueError, match="tune.warmup_steps=8 leaves none to time"):
        T.measure(cfg, CPU, data, T.Candidate(dict(cand.settings), "t"), steps=2, warmup_steps=8, repeats=1)


def test_fastest_preset_uses_the_tuner_winner_when_there_is_one(tmp_path, monkeypatch):
    cfg = compose(["experiment=fastest"])
    assert (cfg.loader.name, cfg.precision) == ("device", "auto")  # no tuner result: auto + device loader
    assert not T.TUNED_PRESET.exists(), "a tuner result in conf/tuned would change this test"
    res = T.TuneResult([], None, None, tmp_path)
    c = T.Candidate({**T.LAB, "workers": 1, "channels_last": True}, "x", ips=[50.0, 51.0], status="measured")
    T.TUNED_PRESET.write_text(T.winner_yaml(c, c, "test machine"))
    try:
        cfg = compose(["experiment=fastest"])
        assert (cfg.loader.name, cfg.workers, cfg.precision, cfg.channels_last) == ("torch", 1, "fp32", True)
        assert compose(["experiment=fastest", "workers=3"]).workers == 3  # the command line still wins
    finally:
        T.TUNED_PRESET.unlink()
    assert res.winner is None


def test_tune_command_prints_the_table_and_writes_its_files(tmp_path):
    """python -m trainbench.tune as a user types it (a subprocess), on a tiny model."""
    import subprocess
    import sys

    out = tmp_path / "tune"
    p = subprocess.run(
        [sys.executable, "-m", "trainbench.tune", "data=synthetic", "data.train_size=96", "model.width=8",
         "batch_size=16", "tune.steps=2", "tune.repeats=2", "tune.workers=[0]", "tune.compile=false",
         "tune.precisions=[fp32]", "tune.channels_last=[false]",
         "tune.write_preset=false", f"tune.out={out}"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr[-2000:]
    assert "rank | setting | images/s" in p.stdout and "winner: " in p.stdout and "python train.py loader=" in p.stdout
    assert "trainbench.tune: " in p.stdout  # the progress header
    rows = list(csv.DictReader(open(out / "tune.csv")))
    assert rows and rows[0]["rank"] == "1" and all(r["status"] == "measured" for r in rows)
    assert (out / "winner.yaml").read_text().startswith("# @package _global_")
    assert not T.TUNED_PRESET.exists()
    bad = subprocess.run([sys.executable, "-m", "trainbench.tune", "tune.steps=0"], capture_output=True, text=True,
                         timeout=120, cwd=tmp_path)  # fmt: skip
    assert bad.returncode == 1 and "tune.steps" in bad.stderr and "Traceback" not in bad.stderr
