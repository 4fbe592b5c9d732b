"""The summarizer on crafted run dirs, the C3 rule, inspect's numbers, and real multirun sweeps."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pandas as pd
import pytest

from conftest import TINY, compose, train_cli
from trainbench.figures import epoch_columns
from trainbench.questions import model_facts
from trainbench.report.parts.lab import best_workers
from trainbench.summarize import summarize


@pytest.mark.parametrize(
    "counts,times,best,more",
    [
        ([0, 4, 8, 12], [74.8, 7.0, 13.3, 13.6], 4, False),  # the lab's own figures
        ([0, 4, 8, 12, 16], [50, 20, 10, 10.5, 5], 8, False),  # first stop counts, not the global minimum
        ([16, 0, 8, 4], [1, 9, 2, 4], 16, True),  # unsorted input; still decreasing at 16
        ([0, 4], [5.0, 5.0], 0, False),  # equal is not a decrease
    ],
)
def test_best_worker_rule(counts, times, best, more):
    assert best_workers(counts, times) == (best, more)


def write_epochs(d: Path, epochs: list[dict]) -> None:
    """epochs.csv with the real columns; keys an epoch dict lacks are empty cells."""
    with open(d / "epochs.csv", "w", newline="") as f:
        w = csv.DictWriter(f, epoch_columns())
        w.writeheader()
        for e in epochs:
            w.writerow({c: e.get(c, "") for c in epoch_columns()})


def write_run(d: Path, status: str, settings: dict, epochs: list[dict], truncate: bool = False, seed: int = 0) -> None:
    d.mkdir(parents=True)
    config = {
        "workers": settings.get("workers", 2),
        "seed": seed,
        "optimizer": {"name": "sgd", "lr": 0.1},
        "norm": {"name": "batchnorm"},
        "model": {"width": 8},
        "data": {"root": str(d)},
    }
    info = {
        "status": status,
        "config": config,
        "environment": {"device_name": "CPU: test", "hostname": "h"},
        "started_at": f"2026-01-01T00:00:0{len(list(d.parent.iterdir()))}",
        "error": None if status == "complete" else "boom",
    }
    info["finished_at"] = info["started_at"][:-1] + str(int(info["started_at"][-1]))
    (d / "run.json").write_text(json.dumps(info))
    write_epochs(d, epochs)
    if truncate:
        with open(d / "epochs.csv", "a") as f:
            f.write("1,4,512,2.3,0.1")  # killed mid-row


def epoch(i: int, data: float, compute: float, other: float = 0.1, acc: float = 0.5) -> dict:
    return {
        "epoch": i,
        "batches": 4,
        "samples": 512,
        "train_loss": 1.0 + i,
        "train_acc": acc,
        "test_loss": 1.0,
        "test_acc": acc,
        "data_time_s": data,
        "compute_time_s": compute,
        "other_time_s": other,
        "epoch_time_s": data + compute + other,
    }


def test_summarizer_on_crafted_runs(tmp_path):
    for w, data in [(0, 8.0), (1, 5.0), (4, 1.0), (8, 2.0)]:
        for seed in (0, 1):
            write_run(
                tmp_path / f"w{w}_s{seed}",
                "complete",
                {"workers": w},
                [epoch(0, data + seed, 3.0), epoch(1, data + seed, 3.0)],
                seed=seed,
            )
    write_run(tmp_path / "failed", "failed", {"workers": 12}, [epoch(0, 0.01, 1.0)])
    write_run(tmp_path / "running", "running", {"workers": 16}, [epoch(0, 0.01, 1.0)], truncate=True)
    (tmp_path / "diverged").mkdir()
    (tmp_path / "diverged" / "run.json").write_text(
        json.dumps({"status": "diverged", "error": "loss=nan", "config": {"workers": 2}})
    )
    s = summarize(tmp_path, inspect_models=False)
    summary = pd.read_csv(tmp_path / "summary.csv")
    assert len(summary) == 11
    assert (
        set(summary.columns[:2]) == {"workers", "seed"} and summary.columns[2] == "run"
    )  # the settings that vary come first
    assert summary.set_index("run").loc["running", "epochs"] == 1  # truncated last line dropped
    assert set(summary["status"]) == {"complete", "failed", "running", "diverged"}
    c3 = s.tables["c3_workers"]
    assert sorted(c3["workers"]) == [0, 1, 4, 8]  # failed/unfinished runs are in no table
    row4 = c3.set_index("workers").loc[4]
    assert row4["total_data_time_s"] == pytest.approx(
        (1.0 * 2 + 2.0 * 2) / 2
    )  # two epochs each; mean over seeds 0 and 1
    assert row4["total_data_time_s_std"] > 0 and row4["runs"] == 2
    report = (tmp_path / "report.md").read_text()
    assert "**4**" in report  # best count from the numbers
    assert "failed" in report and "diverged" in report and "loss=nan" in report
    assert "C4: 1 worker against 4 workers" in report
    assert " ± " in report  # settings repeated over two seeds: mean ± std
    assert (tmp_path / "plots" / "c3_workers.png").stat().st_size > 1000
    assert (tmp_path / "tables" / "c3_workers.csv").exists()


def _expected_params(width: int = 64, bn: bool = True, classes: int = 10) -> int:
    """ResNet-18 (CIFAR) parameters from its definition in SPEC, counted independently of the code."""

    def norm(c):
        return 2 * c if bn else 0

    total = 3 * width * 9 + norm(width)
    cin = width
    for i, stride in enumerate((1, 2, 2, 2)):
        c = width * 2**i
        for b in range(2):
            s = stride if b == 0 else 1
            total += cin * c * 9 + norm(c) + c * c * 9 + norm(c)
            if s != 1 or cin != c:
                total += cin * c + norm(c)
            cin = c
    return total + cin * classes + classes


@pytest.mark.parametrize("opt,norm", [("sgd", "batchnorm"), ("adam", "batchnorm"), ("sgd", "none")])
def test_inspect_numbers(opt, norm):
    f = model_facts(compose([f"optimizer={opt}", f"norm={norm}"]), layers=True)
    n = _expected_params(bn=norm == "batchnorm")
    assert f["trainable_parameters"] == n and f["gradients"] == n
    assert (f["conv_layers"], f["conv_layers_without_shortcut"], f["linear_in_features"]) == (20, 17, 512)
    if norm == "batchnorm":
        assert n == 11_173_962
    tensors = 20 + 1 + 1 + (2 * 20 if norm == "batchnorm" else 0)  # conv weights, linear w+b, BN w+b
    if opt == "sgd":
        assert f["optimizer_state"] == {"momentum_buffer": {"tensors": tensors, "elements": n}}
    else:
        assert f["optimizer_state"]["exp_avg"] == {"tensors": tensors, "elements": n}
        assert f["optimizer_state"]["exp_avg_sq"] == {"tensors": tensors, "elements": n}
    assert f["norm_layers"] == (20 if norm == "batchnorm" else 0)
    assert f["layers"][0]["layer"] == "conv1" and f["layers"][0]["output_shape"] == [2, 64, 32, 32]


def test_inspect_cli(tmp_path):
    import subprocess
    import sys

    p = subprocess.run(
        [sys.executable, "-m", "trainbench.inspect", "optimizer=adam", "--json", str(tmp_path / "i.json")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "17 without the 1x1 shortcut convs, 20 with them" in p.stdout and "exp_avg_sq" in p.stdout
    assert json.loads((tmp_path / "i.json").read_text())["optimizer"] == "adam"


def test_multirun_of_five_optimizers_ends_with_report(tmp_path):
    sweep = tmp_path / "sweep"
    train_cli(
        ["-m", "optimizer=sgd,nesterov,adagrad,adadelta,adam", *TINY, f"hydra.sweep.dir={sweep}"], tmp_path, check=True
    )
    s = pd.read_csv(sweep / "summary.csv")
    assert len(s) == 5 and list(s["optimizer"]) == ["sgd", "nesterov", "adagrad", "adadelta", "adam"]
    assert (s["status"] == "complete").all()
    report = (sweep / "report.md").read_text()
    assert "## C6: per optimizer" in report and "## Q1-Q4" in report and "## Findings" in report
    # after 2 batches every optimizer is near chance: no accuracy winner, and the report says why
    f = [x for x in json.loads((sweep / "findings.json").read_text()) if x["part"] == "c6"]
    acc = next(x for x in f if x["metric"] == "avg_train_acc")
    assert acc["winner"] is None and acc["significant"] is False
    assert "too short to compare accuracy" in acc["text"] or "indistinguishable" in acc["text"]
    assert (
        report.index("| sgd |") < report.index("| nesterov |") < report.index("| adagrad |") < report.index("| adam |")
    )
    facts = json.loads((sweep / "inspect.json").read_text())
    assert {f["optimizer"] for f in facts} == {"sgd", "nesterov", "adagrad", "adadelta", "adam"}
    for png in ("time_split.png", "curves.png", "compute_phases.png"):
        assert (sweep / "plots" / png).stat().st_size > 1000
    # where compute goes: the phase split per optimizer, and a finding on the phase that changes most
    assert "## Where compute goes" in report
    phases = pd.read_csv(sweep / "tables" / "compute_phases.csv")
    assert list(phases["optimizer"]) == ["sgd", "nesterov", "adagrad", "adadelta", "adam"]
    shares = phases[["copy_share", "forward_share", "backward_share", "optimizer_share"]].sum(axis=1)
    assert shares.to_numpy() == pytest.approx(1.0, abs=1e-4)  # four CSV cells of 6 significant digits each
    split = phases[["avg_copy_time_s", "avg_forward_time_s", "avg_backward_time_s", "avg_optimizer_time_s"]]
    assert split.sum(axis=1).to_numpy() == pytest.approx(phases["avg_compute_time_s"].to_numpy(), rel=0.01)
    compute = [x for x in json.loads((sweep / "findings.json").read_text()) if x["part"] == "compute"]
    (c,) = [x for x in compute if not x["text"].startswith("**Measurement flag")]  # one verdict (+ any flags)
    # an optimizer can move only its own phase: the verdict is about it (real timings may flag the others)
    assert c["metric"] == "avg_optimizer_time_s" and "Compute phases across optimizer" in c["text"]


def test_failing_job_and_sweep_rerun(tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", "optimizer.lr=0.1,-1,0.02", *TINY, f"hydra.sweep.dir={sweep}"]
    p = train_cli(args, tmp_path)
    assert p.returncode != 0  # the sweep reports its failed job ...
    s = pd.read_csv(sweep / "summary.csv")
    assert list(s["status"]) == ["complete", "failed", "complete"]  # ... after the others ran
    assert "optimizer.lr=-1" in s.loc[1, "error"]
    assert "1 of 3 jobs did not complete" in p.stdout + p.stderr
    mtimes = {j: (sweep / str(j) / "epochs.csv").stat().st_mtime_ns for j in (0, 2)}
    p2 = train_cli(args, tmp_path)  # re-run on the same sweep dir: complete jobs are skipped, the failed re-run
    assert p2.returncode != 0
    assert "already complete" in p2.stdout + p2.stderr
    assert {j: (sweep / str(j) / "epochs.csv").stat().st_mtime_ns for j in (0, 2)} == mtimes


@pytest.mark.slow  # 20 s: submitit's local executor starts a process per job (make test-all runs it)
def test_submitit_local_launcher(tmp_path):
    sweep = tmp_path / "sweep"
    train_cli(["-m", "launcher=local", "optimizer=sgd,adam", *TINY, f"hydra.sweep.dir={sweep}"], tmp_path, check=True)
    s = pd.read_csv(sweep / "summary.csv")
    assert list(s["status"]) == ["complete", "complete"]
    # submitit starts both jobs at once, but a tiny job may end before the other has started on a busy machine
    # (that made this test flaky): the report must warn exactly when the recorded spans overlap.
    spans = [json.loads((sweep / str(j) / "run.json").read_text()) for j in (0, 1)]
    overlap = spans[0]["started_at"] < spans[1]["finished_at"] and spans[1]["started_at"] < spans[0]["finished_at"]
    assert ("ran at the same time" in (sweep / "report.md").read_text()) == overlap


def crafted(
    d: Path,
    config: dict,
    epochs: list[dict],
    start: str = "2026-01-01T00:00:00",
    end: str | None = None,
    host: str = "h",
    status: str = "complete",
) -> None:
    """A run dir with an explicit config and start/finish times."""
    d.mkdir(parents=True)
    base = {
        "workers": 2,
        "seed": 0,
        "optimizer": {"name": "sgd"},
        "norm": {"name": "batchnorm"},
        "device": {"name": "cpu"},
        "model": {"width": 8},
    }
    for k, v in config.items():
        base[k] = {**base.get(k, {}), **v} if isinstance(v, dict) else v
    info = {
        "status": status,
        "config": base,
        "environment": {"hostname": host, "device_name": "CPU: test"},
        "started_at": start,
        "finished_at": end or start,
        "error": None,
    }
    (d / "run.json").write_text(json.dumps(info))
    write_epochs(d, epochs)


def test_c3_best_is_the_first_stop_not_the_lowest(tmp_path):
    # lab's rule: 0 -> 4 decreases, 4 -> 8 does not: best 4; the lowest data time is at 12
    for i, (w, data) in enumerate([(0, 8.0), (4, 2.0), (8, 3.0), (12, 1.0)]):
        crafted(
            tmp_path / str(i),
            {"workers": w},
            [epoch(0, data, 3.0)],
            start=f"2026-01-01T00:0{i}:00",
            end=f"2026-01-01T00:0{i}:30",
        )
    summarize(tmp_path, inspect_models=False)
    report = (tmp_path / "report.md").read_text()
    # one run per count, one epoch: no noise was measured, so the rule's count is not bolded and not a winner
    assert "stops decreasing after it) the best worker count is 4" in report and "count is **4**" not in report
    assert "lowest data-loading time 1 s with 12 workers" in report
    f = {x["metric"]: x for x in json.loads((tmp_path / "findings.json").read_text()) if x["part"] == "c3"}
    assert f["total_data_time_s"]["leading"] == 4 and f["total_data_time_s"]["winner"] is None


def test_concurrency_warning_only_for_runs_that_overlapped(tmp_path):
    seq = tmp_path / "seq"
    crafted(seq / "0", {"workers": 0}, [epoch(0, 1, 1)], "2026-01-01T00:00:00", "2026-01-01T00:01:00")
    crafted(seq / "1", {"workers": 4}, [epoch(0, 1, 1)], "2026-01-01T00:01:00", "2026-01-01T00:02:00")
    crafted(seq / "2", {"workers": 8}, [epoch(0, 1, 1)], "2026-01-01T00:01:30", "2026-01-01T00:03:00", host="other")
    summarize(seq, inspect_models=False)
    assert "same time" not in (seq / "report.md").read_text()  # back to back, or on another machine
    par = tmp_path / "par"
    crafted(par / "0", {"workers": 0}, [epoch(0, 1, 1)], "2026-01-01T00:00:00", "2026-01-01T00:01:00")
    crafted(par / "1", {"workers": 4}, [epoch(0, 1, 1)], "2026-01-01T00:00:59", "2026-01-01T00:02:00")
    summarize(par, inspect_models=False)
    assert "1 pair(s) of runs ran at the same time on one machine (0/1)" in (par / "report.md").read_text()


def test_c5_and_c7_sections(tmp_path):
    c5 = tmp_path / "c5"
    crafted(c5 / "0", {"device": {"name": "cpu"}}, [epoch(0, 1.0, 30.0), epoch(1, 1.0, 30.0)])
    crafted(c5 / "1", {"device": {"name": "cuda"}}, [epoch(0, 1.0, 2.0), epoch(1, 1.0, 2.0)])
    s = summarize(c5, inspect_models=False)
    t = s.tables["c5_device"].set_index("device")
    assert t.loc["cpu", "avg_epoch_time_s"] == pytest.approx(31.1) and t.loc[
        "cuda", "avg_epoch_time_s"
    ] == pytest.approx(3.1)
    report = (c5 / "report.md").read_text()
    assert "## C5: average epoch time per device" in report
    # one run per device, 2 epochs: no run-to-run noise, so cuda is named as looking best but not crowned
    assert "Fastest device per epoch: device=cuda looks best" in report and "seed=0,1,2" in report
    assert "10x as long per epoch" in report  # 31.1 / 3.1 = 10.03
    c7 = tmp_path / "c7"  # runs of different lengths (one was stopped early) must not break the table
    crafted(c7 / "0", {"norm": {"name": "batchnorm"}}, [epoch(i, 1.0, 5.0, acc=0.5 + 0.1 * i) for i in range(3)])
    crafted(c7 / "1", {"norm": {"name": "none"}}, [epoch(i, 1.0, 4.0, acc=0.3 + 0.1 * i) for i in range(2)])
    s = summarize(c7, inspect_models=False)
    report = (c7 / "report.md").read_text()
    assert "## C7: BatchNorm against none" in report and "Per-epoch training top-1" in report
    t = s.tables["c7_norm"].set_index("norm")
    assert t.loc["batchnorm", "avg_train_acc"] == pytest.approx(0.6) and t.loc[
        "none", "avg_train_acc"
    ] == pytest.approx(0.35)
    assert "| none | 0.3 | 0.4 |  |" in report  # the shorter run's missing epoch is an empty cell


def test_summarize_main_and_its_exit_status(tmp_path, capsys):
    from trainbench.summarize import main

    crafted(tmp_path / "runs" / "0", {}, [epoch(0, 1.0, 2.0)])
    assert main([str(tmp_path / "runs"), "--no-inspect"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# trainbench report") and f"wrote {tmp_path / 'runs' / 'summary.csv'}" in out
    assert "inspect.json" not in {p.name for p in (tmp_path / "runs").iterdir()}  # --no-inspect
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 1
    assert "no runs (no run.json) under" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path / "nowhere")])
    assert e.value.code == 2 and "is not a directory" in capsys.readouterr().err


def test_summarize_as_a_command(tmp_path):
    import subprocess
    import sys

    crafted(tmp_path / "runs" / "0", {}, [epoch(0, 1.0, 2.0)])
    p = subprocess.run(
        [sys.executable, "-m", "trainbench.summarize", str(tmp_path / "runs"), "--no-inspect"],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0, p.stderr
    assert "# trainbench report" in p.stdout and (tmp_path / "runs" / "summary.csv").exists()
    (tmp_path / "empty").mkdir()
    p = subprocess.run(
        [sys.executable, "-m", "trainbench.summarize", str(tmp_path / "empty")], capture_output=True, text=True
    )
    assert p.returncode == 1 and "no runs" in p.stderr


@pytest.mark.slow  # 13 s: joblib's processes (make test-all runs it)
def test_parallel_launcher(tmp_path):
    sweep = tmp_path / "sweep"
    train_cli(
        ["-m", "launcher=parallel", "optimizer=sgd,adam", *TINY, f"hydra.sweep.dir={sweep}"], tmp_path, check=True
    )
    s = pd.read_csv(sweep / "summary.csv")
    assert list(s["optimizer"]) == ["sgd", "adam"] and list(s["status"]) == ["complete", "complete"]


@pytest.mark.slow  # 15 s of full-width models (make test-all runs it)
def test_sweep_of_full_models_leaves_little_on_disk(tmp_path):
    """Three full ResNet-18 jobs (89 MB checkpoints each while they run) leave under 5 MB once complete."""
    sweep = tmp_path / "sweep"
    train_cli(
        [
            "-m",
            "seed=0,1,2",
            "data=synthetic",
            "data.train_size=64",
            "data.test_size=32",
            "epochs=1",
            "workers=0",
            "progress=false",
            f"hydra.sweep.dir={sweep}",
        ],
        tmp_path,
        check=True,
        timeout=600,
    )
    size = sum(p.stat().st_size for p in sweep.rglob("*") if p.is_file())
    assert size < 5e6, size
    assert not list(sweep.rglob("checkpoint_*.pt"))
    s = pd.read_csv(sweep / "summary.csv")
    assert list(s["status"]) == ["complete"] * 3


def test_sweep_rerun_with_other_settings_is_refused_and_reported(tmp_path):
    sweep = tmp_path / "sweep"
    train_cli(["-m", "optimizer=sgd,adam", *TINY, f"hydra.sweep.dir={sweep}"], tmp_path, check=True)
    before = (sweep / "0" / "epochs.csv").read_bytes()
    p = train_cli(["-m", "optimizer=adagrad,adam", *TINY, f"hydra.sweep.dir={sweep}"], tmp_path)
    out = p.stdout + p.stderr
    assert p.returncode != 0
    assert "1 job(s) were refused" in out and f"hydra.sweep.dir={sweep}" in out
    assert (sweep / "0" / "epochs.csv").read_bytes() == before  # the old run is untouched
    report = (sweep / "report.md").read_text()
    assert "## Jobs refused in this invocation" in report and "job 0 (optimizer=adagrad" in report
    # a later invocation that is not refused does not repeat old refusals
    p = train_cli(["-m", "optimizer=sgd,adam", *TINY, f"hydra.sweep.dir={sweep}"], tmp_path, check=True)
    assert "Jobs refused" not in (sweep / "report.md").read_text()


@pytest.mark.slow  # 12 s: the C3 findings are tested on fake sweeps and the golden report (make test-all runs it)
def test_real_tiny_c3_sweep_writes_findings_with_noise(tmp_path):
    sweep = tmp_path / "sweep"
    train_cli(
        [
            "experiment=c3",
            "data=synthetic",
            "data.train_size=512",
            "data.test_size=128",
            "epochs=1",
            "model.width=8",
            "workers=0,1,2",
            "progress=false",
            f"hydra.sweep.dir={sweep}",
        ],
        tmp_path,
        check=True,
    )
    f = {x["metric"]: x for x in json.loads((sweep / "findings.json").read_text()) if x["part"] == "c3"}
    busy = pd.read_csv(sweep / "summary.csv")["busy"].any()  # the suite's other worker can make the machine busy
    lab = f["total_data_time_s"]
    assert lab["leading"] in (0, 1, 2) and (lab["winner"] is None or (lab["significant"] and not busy))
    assert lab["winner"] is None  # one 1-epoch run per count: no noise measured, so never a winner
    assert isinstance(lab["significant"], bool) and lab["noise"] in ("seeds", "epochs", "none")
    assert "lab's rule" in f["total_data_time_s"]["text"]
    fastest = f["avg_epoch_time_s"]
    assert isinstance(fastest["significant"], bool) and (fastest["winner"] is not None or not fastest["significant"])
    assert not fastest["significant"] or fastest["noise"] != "none"  # never significant without noise
    report = (sweep / "report.md").read_text()
    assert f["diagnosis"]["text"] in report and "of the epoch" in f["diagnosis"]["text"]
    assert (sweep / "plots" / "c3_workers.png").exists()


def test_c4_sweep_takes_its_best_count_from_c3_not_from_its_two_points(tmp_path):
    for i, (w, data) in enumerate([(1, 5.0), (8, 0.5)]):
        crafted(tmp_path / str(i), {"workers": w}, [epoch(0, data, 10.0), epoch(1, data, 10.0)])
    s = summarize(tmp_path, inspect_models=False)
    parts = {f.part for f in s.findings}
    assert "c3" not in parts  # no "best" computed from two points
    report = (tmp_path / "report.md").read_text()
    assert "## C4: 1 worker against 8 workers (the count given on the command line (from C3))" in report
    text = next(f.text for f in s.findings if f.part == "c4" and f.metric == "explanation")
    assert "with 1 worker, data loading took 5 s" in text and "with 8 workers 0.5 s" in text
    assert "cannot prepare batches as fast" in text


def test_refused_jobs_are_read_in_job_order(tmp_path):
    from trainbench.report.runs import refused_jobs
    from trainbench.store.records import write_json

    assert refused_jobs(tmp_path) == []
    (tmp_path / ".refused").mkdir()
    for j in (10, 2):
        write_json(tmp_path / ".refused" / f"{j}.json", {"job": j, "error": f"e{j}", "overrides": ["optimizer=adam"]})
    (tmp_path / ".refused" / "bad.json").write_text("{")
    assert [r["job"] for r in refused_jobs(tmp_path)] == [2, 10]
    crafted(tmp_path / "0", {}, [epoch(0, 1, 1)])
    s = summarize(tmp_path, inspect_models=False)
    assert [r["job"] for r in s.refused] == [2, 10]
    report = (tmp_path / "report.md").read_text()
    assert "- job 2 (optimizer=adam): e2" in report and "- job 10 (optimizer=adam): e10" in report


def test_c3_diagnosis_when_workers_slow_the_epoch(tmp_path):
    # more workers cut the data wait but make compute (and so the epoch) slower: 4 epochs each, so that the 3
    # after the first give the noise
    for i, (w, data, comp, other) in enumerate([(0, 3.0, 10.0, 0.01), (2, 0.5, 14.0, 0.4), (4, 0.4, 18.0, 0.8)]):
        run = {"environment": {"cpu_count": 2}}
        crafted(tmp_path / str(i), {"workers": w}, [epoch(k, data, comp + 0.1 * (k % 2), other) for k in range(4)])
        info = json.loads((tmp_path / str(i) / "run.json").read_text())
        info["environment"].update(run["environment"])
        (tmp_path / str(i) / "run.json").write_text(json.dumps(info))
    s = summarize(tmp_path, inspect_models=False)
    d = next(f.text for f in s.findings if f.metric == "diagnosis")
    assert d.startswith("Data loading is 2.1%-23.0% of the epoch across worker counts.")
    assert "More workers made the epoch slower (13.1 s at 0 workers, 19.2 s at 4)" in d
    assert "this machine's 2 CPU cores" in d and "compute (40.2 s -> 72.2 s)" in d
    assert "other (start-up and hand-over, 0.04 s -> 3.2 s)" in d
    assert "by whole-epoch time 0 workers is the fastest setting, beyond the noise" in d
    lab = next(f for f in s.findings if f.metric == "total_data_time_s")
    assert lab.winner == 4 and "still decreasing at the largest count tried" in lab.text


def test_timing_mode_warning_reads_each_epoch_row(tmp_path):
    # the same clock everywhere: no warning
    same = tmp_path / "same"
    crafted(same / "0", {"device": {"name": "cpu"}}, [{**epoch(0, 1, 30), "timing_mode": "sync"}])
    crafted(same / "1", {"device": {"name": "cuda"}}, [{**epoch(0, 1, 2), "timing_mode": "sync"}])
    summarize(same, inspect_models=False)
    assert "different clocks" not in (same / "report.md").read_text()
    # C5 with cpu/sync beside cuda/events, and a run resumed with another timing (its epochs mix both)
    c5 = tmp_path / "c5"
    crafted(c5 / "0", {"device": {"name": "cpu"}}, [{**epoch(0, 1, 30), "timing_mode": "sync"}])
    crafted(
        c5 / "1",
        {"device": {"name": "cuda"}},
        [{**epoch(0, 1, 2), "timing_mode": "sync"}, {**epoch(1, 1, 2), "timing_mode": "events"}],
    )
    summarize(c5, inspect_models=False)
    report = (c5 / "report.md").read_text()
    assert "timed with different clocks (events: 1; sync: 0, 1)" in report
    assert "mix both clocks (resumed with another `timing`): 1." in report
    table = pd.read_csv(c5 / "summary.csv")
    assert list(table["timing_mode"]) == ["sync", "events+sync"]


def test_rows_without_a_timing_mode_fall_back_to_run_json(tmp_path):
    # epochs.csv written before the column existed: run.json's timing_mode stands for every row
    for i, mode in enumerate(["sync", "events"]):
        crafted(tmp_path / str(i), {"workers": 2 * i}, [epoch(0, 1, 1)])
        info = json.loads((tmp_path / str(i) / "run.json").read_text())
        (tmp_path / str(i) / "run.json").write_text(json.dumps({**info, "timing_mode": mode}))
    summarize(tmp_path, inspect_models=False)
    assert "different clocks (events: 1; sync: 0)" in (tmp_path / "report.md").read_text()


def test_compute_part_names_the_phase_that_changes_past_the_noise(tmp_path):
    # C6-like: adam's optimizer step is slower than sgd's; forward/backward the same within noise
    def ep(i, opt_s, jitter):
        e = epoch(i, 0.1, 1.0 + opt_s + jitter)
        return {
            **e,
            "copy_time_s": 0.01,
            "forward_time_s": 0.3 + jitter,
            "backward_time_s": 0.69,
            "optimizer_time_s": opt_s,
            "profiled_steps": 0,
            "timing_mode": "sync",
        }

    for i, (opt, opt_s) in enumerate([("sgd", 0.05), ("adam", 0.25)]):
        crafted(
            tmp_path / str(i),
            {"optimizer": {"name": opt}},
            [ep(k, opt_s + 0.001 * k, 0.01 * (k % 2)) for k in range(4)],
        )
    summarize(tmp_path, inspect_models=False)
    (f,) = [x for x in json.loads((tmp_path / "findings.json").read_text()) if x["part"] == "compute"]
    assert f["metric"] == "avg_optimizer_time_s" and f["winner"] == "sgd" and f["significant"] is True
    assert "the optimizer phase changes most" in f["text"] and "beyond the measured noise" in f["text"]
    t = pd.read_csv(tmp_path / "tables" / "compute_phases.csv")
    fwd = (0.3 + 0.31 + 0.3 + 0.31) / 4
    expected = [o / (0.01 + fwd + 0.69 + o) for o in (0.0515, 0.2515)]  # mean phase times over the 4 epochs
    assert t["optimizer_share"].tolist() == pytest.approx(expected, rel=1e-4)
    assert "## Where compute goes" in (tmp_path / "report.md").read_text()


def test_compute_part_absent_without_phase_columns(tmp_path):
    crafted(tmp_path / "0", {"workers": 0}, [epoch(0, 1, 1)])
    crafted(tmp_path / "1", {"workers": 2}, [epoch(0, 1, 1)])
    summarize(tmp_path, inspect_models=False)
    assert "Where compute goes" not in (tmp_path / "report.md").read_text()
    assert not [x for x in json.loads((tmp_path / "findings.json").read_text()) if x["part"] == "compute"]
