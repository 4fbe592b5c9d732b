"""Findings that hold off the one-key, quiet-machine path: two-key sweeps, implausible scaling, busy machines,
and commands that carry the sweep's own overrides."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import train_cli
from test_summarize import crafted, epoch
from trainbench.summarize import summarize


def _findings(root: Path) -> list[dict]:
    return json.loads((root / "findings.json").read_text())


def _workers_x_optimizer(root: Path, adam_extra: float, workers2_extra: float) -> None:
    """A fake workers x optimizer sweep, 4 epochs each, 0.02 s of noise per epoch."""
    rng = random.Random(1)
    job = 0
    for w in (0, 2):
        for opt in ("sgd", "adam"):
            base = 5.0 + workers2_extra * (w == 2) + adam_extra * (opt == "adam")
            eps = [epoch(k, 0.5, base - 0.6 + rng.gauss(0, 0.02)) for k in range(4)]
            crafted(root / str(job), {"workers": w, "optimizer": {"name": opt}}, eps)
            job += 1


def test_two_key_sweep_compares_at_matched_settings(tmp_path):
    """Adam 0.5 s slower at each worker count, workers=2 10 s slower at each optimizer: both named, both
    significant (before: 'indistinguishable', sgd 15 +- 5 against adam 15.5 +- 5, the 5 being the workers effect)."""
    _workers_x_optimizer(tmp_path / "fx", 0.5, 10.0)
    summarize(tmp_path / "fx", inspect_models=False)
    f = {(x["part"], x["metric"]): x for x in _findings(tmp_path / "fx")}
    opt, wrk = f[("c6", "avg_epoch_time_s")], f[("c3", "avg_epoch_time_s")]
    assert opt["winner"] == "sgd" and opt["significant"] and opt["noise"] == "epochs" and opt["n"] == 3
    assert "Compared at matched workers" in opt["text"] and "workers=0: -0.4" in opt["text"]
    assert wrk["winner"] == 0 and wrk["significant"]
    _workers_x_optimizer(tmp_path / "null", 0.0, 0.0)  # the same sweep without either effect
    summarize(tmp_path / "null", inspect_models=False)
    f = {(x["part"], x["metric"]): x for x in _findings(tmp_path / "null")}
    assert not f[("c6", "avg_epoch_time_s")]["significant"] and not f[("c3", "avg_epoch_time_s")]["significant"]


def _scaling_run(d: Path, nproc: int, epoch_s: float, compute_s: float, threads: int, others: float = 0.0) -> None:
    eps = [
        {
            **epoch(k, 0.1, compute_s, epoch_s - compute_s - 0.1),
            "world_size": nproc,
            "batches": 8 // nproc,
            "comm_time_s": 0.01 * (nproc - 1),
            "comm_exposed_s": 0.0,
            "comm_bytes": 1000 * (nproc > 1),
            "cpu_util": 0.9,
            "others_cpu": others,
            "load_avg": 1.0,
        }
        for k in range(4)
    ]
    crafted(d, {"dist": {"nproc": nproc}, "batch_size": 16}, eps)
    info = json.loads((d / "run.json").read_text())
    info.update(world_size=nproc, environment={**info["environment"], "torch_threads": threads})
    (d / "run.json").write_text(json.dumps(info))


def test_implausible_scaling_is_flagged_and_not_crowned(tmp_path):
    """The review's busy-machine sweep: 1 rank 66.9x slower than 2 ranks, negative subtraction estimate."""
    _scaling_run(tmp_path / "0", 1, 33.5, 33.0, threads=2, others=0.9)  # another process burnt the cores
    _scaling_run(tmp_path / "1", 2, 0.5, 0.3, threads=1)
    s = summarize(tmp_path, inspect_models=False)
    f = _findings(tmp_path)
    flags = [x for x in f if x["part"] == "scaling" and x["text"].startswith("**Implausible:**")]
    assert {x["metric"] for x in flags} == {"efficiency", "comm_estimate_s"}
    assert "[2] torch threads against [1] per rank" in next(x for x in flags if x["metric"] == "efficiency")["text"]
    (fastest,) = [x for x in f if x["part"] == "scaling" and x["metric"] == "avg_epoch_time_s"]
    assert fastest["winner"] is None and not fastest["significant"]
    assert list(s.table["busy"]) == [True, False] and "other processes used 90%" in s.table["busy_why"][0]
    report = (tmp_path / "report.md").read_text()
    assert "## Runs measured on a busy machine" in report and "**Busy machine:** run(s) 0" in report


def test_quiet_scaling_sweep_is_not_flagged(tmp_path):
    _scaling_run(tmp_path / "0", 1, 1.0, 0.8, threads=1)
    _scaling_run(tmp_path / "1", 2, 0.6, 0.4, threads=1)
    s = summarize(tmp_path, inspect_models=False)
    assert not s.table["busy"].any()
    assert not [x for x in _findings(tmp_path) if x["text"].startswith("**Implausible:**")]


def test_phase_a_setting_cannot_change_is_a_disturbed_measurement(tmp_path):
    """optimizer=sgd's forward 6.6x adam's, beyond the noise: flagged, not reported as an optimizer effect."""
    for i, (opt, fwd) in enumerate([("sgd", 2.0), ("adam", 0.3)]):
        eps = [
            {
                **epoch(k, 0.1, fwd + 1.0 + 0.01 * (k % 2)),
                "copy_time_s": 0.01,
                "forward_time_s": fwd + 0.01 * (k % 2),
                "backward_time_s": 0.7,
                "optimizer_time_s": 0.29,
                "timing_mode": "sync",
            }
            for k in range(4)
        ]
        crafted(tmp_path / str(i), {"optimizer": {"name": opt}}, eps)
    summarize(tmp_path, inspect_models=False)
    flags = [x for x in _findings(tmp_path) if x["part"] == "compute" and x["text"].startswith("**Measurement flag")]
    (c,) = flags
    assert c["text"].startswith("**Measurement flag:** the forward phase, which optimizer cannot move")
    assert c["winner"] is None and c["leading"] is None  # a flag, never a winner


def test_c3_next_command_keeps_the_sweeps_own_overrides(tmp_path):
    for i, w in enumerate((0, 2, 4)):
        crafted(tmp_path / str(i), {"workers": w}, [epoch(k, 3.0 - w / 2, 3.0) for k in range(2)])
        info = json.loads((tmp_path / str(i) / "run.json").read_text())
        info["overrides"] = ["experiment=c3", "data=imagefolder", "data.root=/my/images", f"workers={w}"]
        (tmp_path / str(i) / "run.json").write_text(json.dumps(info))
    summarize(tmp_path, inspect_models=False)
    report = (tmp_path / "report.md").read_text()
    assert "`python train.py experiment=c4 workers=1,4 data=imagefolder data.root=/my/images`" in report


def _burner() -> int:
    """Two processes spinning on the CPU, outside this process's tree (a shell starts them in a session of their own
    and exits, so they are nobody's descendants here, as another user's job would be); returns their group id."""
    burn = (
        "import multiprocessing as m, time; m.set_start_method('fork'); "
        "ps = [m.Process(target=lambda: [0 for _ in iter(int, 1)]) for _ in range(2)]; "
        "[p.start() for p in ps]; time.sleep(600)"
    )
    out = subprocess.run(
        ["sh", "-c", f'setsid {sys.executable} -c "{burn}" >/dev/null 2>&1 & echo $!'],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return int(out.strip())


def _stop(pgid: int) -> None:
    """Kill the burners and wait until they are gone (their CPU must not reach the next, quiet measurement)."""
    os.killpg(pgid, 9)
    end = time.time() + 10
    while time.time() < end:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)


@pytest.mark.timing  # needs a quiet machine for its negative half: runs in make test's serial pass
def test_a_run_next_to_a_burner_is_busy_and_a_quiet_one_is_not(tmp_path):
    """In process (a cold train.py adds nothing here): the same tiny run with and without two processes spinning."""
    from conftest import TINY, compose
    from trainbench.run import run

    burner = _burner()
    try:
        time.sleep(0.5)
        run(compose([*TINY, "epochs=2"]), tmp_path / "runs" / "0")
    finally:
        _stop(burner)
    run(compose([*TINY, "epochs=2"]), tmp_path / "runs" / "1")
    s = summarize(tmp_path / "runs", inspect_models=False)
    assert list(s.table["busy"]) == [True, False], s.table[["run", "max_others_cpu", "mean_cpu_util", "busy_why"]]
    assert "other processes used" in s.table["busy_why"][0]


@pytest.mark.slow  # 70 s: two sweeps of a 1-rank and a 2-rank job (make test-all runs it)
@pytest.mark.timing  # it reads the machine's load: in make test-all's serial pass, never beside another test
def test_real_scaling_sweep_with_a_burner_is_flagged_busy(tmp_path):
    """python train.py -m dist.nproc=1,2 ... with a process burning both cores during the 1-rank job: summary.csv
    marks it busy and the scaling finding crowns nothing; the same sweep on the quiet machine is not flagged."""
    args = [
        "-m",
        "dist.nproc=1,2",
        "data=synthetic",
        "data.train_size=256",
        "data.test_size=64",
        "model.width=8",
        "batch_size=16",
        "epochs=1",
        "workers=0",
        "progress=false",
    ]
    busy = tmp_path / "busy"
    burner = _burner()
    try:
        proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).parents[1] / "train.py"), *args, f"hydra.sweep.dir={busy}"],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "HYDRA_FULL_ERROR": "0"},
        )
        deadline = time.time() + 300
        while time.time() < deadline and not (busy / "1" / "run.json").exists() and proc.poll() is None:
            time.sleep(0.2)
    finally:
        _stop(burner)  # the 2-rank job runs on the quiet machine
    proc.communicate(timeout=300)
    s = pd.read_csv(busy / "summary.csv")
    assert bool(s.loc[0, "busy"]) and not bool(s.loc[1, "busy"]), s[["run", "busy", "busy_why"]]
    (f,) = [x for x in _findings(busy) if x["part"] == "scaling" and x["metric"] == "avg_epoch_time_s"]
    assert f["winner"] is None and not f["significant"]
    quiet = tmp_path / "quiet"
    train_cli([*args, f"hydra.sweep.dir={quiet}"], tmp_path, check=True)
    s = pd.read_csv(quiet / "summary.csv")
    assert not s["busy"].any(), s[["run", "busy", "busy_why"]]
