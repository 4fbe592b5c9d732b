"""Data-parallel training on CPU with gloo and 2 ranks: equivalence, index-derived augmentation, the comm clock,
faults, torchrun, the scaling report. Narrow models (model.width=8) so that everything fits the test budget."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import compose, train_cli
from trainbench.config import ConfigError
from trainbench.data import loaders
from trainbench.data.sources import STD, make_synthetic
from trainbench.plan import make_plan
from trainbench.run import run

ROOT = Path(__file__).resolve().parents[1]
SMALL = [
    "data=synthetic",
    "data.train_size=256",
    "data.test_size=64",
    "model.width=8",
    "workers=0",
    "epochs=2",
    "progress=false",
]


def rows(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def metrics(d: Path) -> list[tuple]:
    return [
        (r["epoch"], r["train_loss"], r["train_acc"], r["test_loss"], r["test_acc"]) for r in rows(d / "epochs.csv")
    ]


# ------------------------------------------------------------------------------- index-derived augmentation


def test_augmentation_is_a_function_of_seed_epoch_and_index():
    idx = torch.arange(1000)
    a = loaders.aug_params(0, 3, idx)
    assert all(torch.equal(x, y) for x, y in zip(a, loaders.aug_params(0, 3, idx)))  # repeatable
    assert all(torch.equal(x[7:9], y) for x, y in zip(a, loaders.aug_params(0, 3, idx[7:9])))  # per image
    assert not torch.equal(a[0], loaders.aug_params(0, 4, idx)[0])  # another epoch: other crops
    assert not torch.equal(a[0], loaders.aug_params(1, 3, idx)[0])  # another seed: other crops


def test_epoch_order_shards_are_the_single_process_batches():
    """2 ranks x batch 16 draw, step by step, exactly the images of 1 rank x batch 32."""
    one = loaders.epoch_order(256, 0, 1, True)
    r0, r1 = (loaders.epoch_order(256, 0, 1, True, rank, 2) for rank in (0, 1))
    for k in range(256 // 32):
        assert sorted(one[32 * k : 32 * k + 32].tolist()) == sorted(
            r0[16 * k : 16 * k + 16].tolist() + r1[16 * k : 16 * k + 16].tolist()
        )
    assert sorted(
        loaders.epoch_order(10, 0, 0, False, 0, 3).tolist()
        + loaders.epoch_order(10, 0, 0, False, 1, 3).tolist()
        + loaders.epoch_order(10, 0, 0, False, 2, 3).tolist()
    ) == list(range(10))  # eval: each image once
    assert len(loaders.epoch_order(10, 0, 0, True, 1, 3)) == 4  # training: padded, equal steps per rank
    for n, shuffle, rank, world in [
        (10, True, 1, 3),
        (10, False, 0, 3),
        (10, False, 2, 3),
        (7, True, 0, 1),
        (9, False, 1, 2),
    ]:
        assert loaders.shard_size(n, shuffle, rank, world) == len(loaders.epoch_order(n, 0, 0, shuffle, rank, world))


def test_both_loaders_draw_the_same_samples():
    """loader=torch (PIL pipeline) and loader=device (batched on the tensor) give the same batches."""
    data = make_synthetic(64, "train")
    cfg = compose(["data=synthetic", "batch_size=16", "workers=0"])
    tl = loaders.make_loader(cfg, data, True, torch.device("cpu"), torch.Generator().manual_seed(0))
    dcfg = compose(["data=synthetic", "batch_size=16", "loader=device"])
    dl = loaders.make_loader(dcfg, data, True, torch.device("cpu"), None)
    for epoch in (0, 2):
        loaders.set_epoch(tl, epoch)
        loaders.set_epoch(dl, epoch)
        for (xa, ya), (xb, yb) in zip(tl, dl):
            assert torch.equal(ya, yb)
            torch.testing.assert_close(xa, xb, atol=1e-5, rtol=0)


def test_workers_do_not_change_the_numbers(tmp_path):
    """Augmentation depends on (seed, epoch, index) only: workers=0 and workers=2 train the same model."""
    for w in (0, 2):
        run(compose([*SMALL, f"workers={w}", "epochs=1", "batch_size=32"]), tmp_path / f"w{w}")
    assert metrics(tmp_path / "w0") == metrics(tmp_path / "w2")


def test_device_loader_offsets_stay_uniform_across_epochs():
    data = make_synthetic(1000, "train")
    dl = loaders.DeviceLoader(data, train=True, batch_size=500, device=torch.device("cpu"), std=STD["lab"], seed=3)
    dy, dx, flip = [], [], []
    for e in range(10):
        a = loaders.aug_params(3, e, torch.arange(1000))
        dy.append(a[0])
        dx.append(a[1])
        flip.append(a[2])
        dl.set_epoch(e)
    dy, dx, flip = torch.cat(dy), torch.cat(dx), torch.cat(flip).float()
    counts = torch.bincount(dy * 9 + dx, minlength=81).float()
    expected = len(dy) / 81
    assert float(((counts - expected) ** 2 / expected).sum()) < 130  # chi-square, 80 dof, p < 1e-3 above 124.8
    assert abs(flip.mean().item() - 0.5) < 4 * (0.25 / len(flip)) ** 0.5


# ----------------------------------------------------------------------------------------- config checks


@pytest.mark.parametrize(
    "override,key",
    [
        ("dist.nproc=0", "dist.nproc"),
        ("dist.backend=nccl", "dist.backend"),
        ("dist.sync_bn=true", "dist.sync_bn"),
        ("compile=true", "compile"),
        ("dist.backend=mpi", "dist.backend"),
    ],
)
def test_bad_dist_settings_are_config_errors_before_any_work(override, key):
    if torch.cuda.is_available() and key in ("dist.backend", "dist.sync_bn") and override != "dist.backend=mpi":
        pytest.skip("valid with CUDA")
    with pytest.raises(ConfigError) as e:
        make_plan(compose([*SMALL, "dist.nproc=2", override]))
    assert e.value.key == key


def test_bad_dist_setting_on_the_command_line_writes_nothing(tmp_path):
    p = train_cli([*SMALL, "dist.nproc=2", "dist.backend=nccl", f"hydra.run.dir={tmp_path / 'r'}"], tmp_path)
    if torch.cuda.is_available():
        pytest.skip("nccl is valid with CUDA")
    assert p.returncode == 1 and "dist.backend" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "r").exists()


# -------------------------------------------------------------------------------------------- training


def test_two_ranks_train_the_same_model_as_one_with_twice_the_batch(tmp_path):
    """norm=none: 2 ranks x batch 16 = 1 rank x batch 32, to float tolerance (losses, accuracies, weights)."""
    common = [*SMALL, "norm=none", "checkpoint.keep_on_complete=true"]
    one = run(compose([*common, "batch_size=32"]), tmp_path / "one")
    two = run(compose([*common, "batch_size=16", "dist.nproc=2"]), tmp_path / "two")
    assert one["status"] == two["status"] == "complete"
    assert two["world_size"] == 2 and two["global_batch"] == 32 and "no BatchNorm" in two["batchnorm"]
    if sys.platform.startswith("linux"):  # workers forked, not spawned (a spawned rank would spawn them: seconds)
        assert two["environment"]["mp_start_method"] == "fork"
    a, b = rows(tmp_path / "one" / "epochs.csv"), rows(tmp_path / "two" / "epochs.csv")
    for ra, rb in zip(a, b):
        assert int(ra["samples"]) == int(rb["samples"]) == 256
        for k in ("train_loss", "train_acc", "test_loss", "test_acc"):
            assert float(ra[k]) == pytest.approx(float(rb[k]), rel=1e-4, abs=1e-6), k
    wa = torch.load(next((tmp_path / "one").glob("checkpoint_*.pt")), weights_only=False)["model"]
    wb = torch.load(next((tmp_path / "two").glob("checkpoint_*.pt")), weights_only=False)["model"]
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=2e-5, rtol=1e-4)
    # the communication clock: every step of both ranks all-reduced the gradients (11.2M x width^2/64^2 floats)
    e = rows(tmp_path / "two" / "epochs.csv")[0]
    params = sum(v.numel() for v in wb.values())
    assert int(e["comm_bytes"]) == int(e["batches"]) * params * 4 and float(e["comm_time_s"]) > 0
    assert int(e["world_size"]) == 2 and float(e["comm_time_max_s"]) >= float(e["comm_time_s"])
    assert 0 <= float(e["comm_exposed_s"]) <= float(e["comm_time_s"])  # the waited-for part of the span
    assert float(e["epoch_time_s"]) >= float(e["epoch_time_mean_s"])
    batches = rows(tmp_path / "two" / "batches.csv")
    assert {b["rank"] for b in batches} == {"0", "1"} and len(batches) == 2 * 2 * 8  # epochs x ranks x steps
    assert all(float(b["comm_time_s"]) > 0 for b in batches)


def test_killed_rank_ends_the_run_in_bounded_time_and_resume_gives_the_same_rows(tmp_path):
    """SIGKILL rank 1 in epoch 2: the run fails within seconds naming rank 1; re-running resumes from the
    last checkpoint and writes the rows of an uninterrupted run."""
    common = [*SMALL, "epochs=2", "batch_size=32", "dist.nproc=2", "checkpoint.keep_on_complete=true"]
    run(compose(common), tmp_path / "ref")
    d = tmp_path / "r"
    t = time.perf_counter()
    p = train_cli([*common, "faults.kill_rank=1", "faults.kill_at_step=5", f"hydra.run.dir={d}"], tmp_path, timeout=300)
    assert time.perf_counter() - t < 150
    assert p.returncode == 1 and "rank 1 was killed by SIGKILL" in p.stderr, p.stderr[-2000:]
    info = json.loads((d / "run.json").read_text())
    assert info["status"] == "failed" and "rank 1" in info["error"]
    assert len(rows(d / "epochs.csv")) == 1  # epoch 0 finished (4 steps per rank); epoch 1 died at its 2nd step
    assert run(compose(common), d)["status"] == "complete"  # the same command again, in process
    assert metrics(d) == metrics(tmp_path / "ref")


@pytest.mark.slow  # 8 s: torchrun starts its own agent and two ranks (make test-all runs it)
def test_torchrun_starts_the_ranks_and_they_agree_on_one_run_dir(tmp_path):
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            str(ROOT / "train.py"),
            *SMALL,
            "epochs=1",
            "batch_size=32",
            "dist.nproc=2",
            "loader=device",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HYDRA_FULL_ERROR": "1"},
    )
    assert p.returncode == 0, p.stderr[-3000:]
    runs = [rj.parent for rj in (tmp_path / "outputs").rglob("run.json")]
    assert len(runs) == 1
    info = json.loads((runs[0] / "run.json").read_text())
    assert info["status"] == "complete" and info["world_size"] == 2
    assert "each rank's own batch statistics" in info["batchnorm"]  # BatchNorm, not synchronized
    assert {b["rank"] for b in rows(runs[0] / "batches.csv")} == {"0", "1"}
    hydra_dirs = [d for d in (tmp_path / "outputs").rglob("*") if d.is_dir() and (d / ".hydra").is_dir()]
    assert hydra_dirs == [runs[0]]  # the other rank's own Hydra dir was removed


def test_sigterm_stops_every_rank_at_a_batch_boundary(tmp_path):
    d = tmp_path / "r"
    cmd = [
        sys.executable,
        str(ROOT / "train.py"),
        *SMALL,
        "epochs=50",
        "batch_size=16",
        "dist.nproc=2",
        f"hydra.run.dir={d}",
    ]
    proc = subprocess.Popen(
        cmd,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "HYDRA_FULL_ERROR": "0"},
    )
    deadline = time.time() + 120
    while time.time() < deadline and len(rows(d / "epochs.csv") if (d / "epochs.csv").exists() else []) < 1:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert json.loads((d / "run.json").read_text())["status"] == "interrupted"
    assert "resume with" in err


# -------------------------------------------------------------------------------------------- the report


@pytest.mark.slow  # 19 s: the scaling part is tested on fake sweeps and the golden report (make test-all runs it)
def test_scaling_sweep_writes_the_scaling_table_and_section(tmp_path):
    sweep = tmp_path / "sweep"
    p = train_cli(
        [
            "-m",
            "dist.nproc=1,2",
            "data=synthetic",
            "data.train_size=256",
            "data.test_size=64",
            "model.width=8",
            "norm=none",
            "batch_size=16",
            "epochs=2",
            "workers=0",
            "progress=false",
            f"hydra.sweep.dir={sweep}",
        ],
        tmp_path,
        timeout=400,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    t = pd.read_csv(sweep / "tables" / "scaling.csv")
    assert list(t.columns[:11]) == [
        "world_size",
        "batch_size",
        "global_batch",
        "scaling",
        "avg_epoch_time_s",
        "speedup",
        "efficiency",
        "compute_time_s",
        "comm_time_s",
        "comm_estimate_s",
        "bandwidth_gb_s",
    ]
    two = t[(t["world_size"] == 2) & (t["scaling"] == "weak")].iloc[0]
    one = t[t["world_size"] == 1].iloc[0]
    assert one["speedup"] == 1.0 and two["comm_time_s"] > 0 and two["bandwidth_gb_s"] > 0
    assert two["speedup"] == pytest.approx(one["avg_epoch_time_s"] / two["avg_epoch_time_s"], rel=1e-4)  # %.6g CSV
    assert two["efficiency"] == pytest.approx(two["speedup"] / 2, rel=1e-4)
    report = (sweep / "report.md").read_text()
    assert "## Scaling: data-parallel training" in report and "subtraction estimate" in report
    assert (sweep / "plots" / "scaling.png").stat().st_size > 1000
    f = [x for x in json.loads((sweep / "findings.json").read_text()) if x["part"] == "scaling"]
    assert f and f[0]["metric"] == "avg_epoch_time_s"


def test_dist_threads_pins_a_one_process_run_and_is_restored(tmp_path, monkeypatch):
    from trainbench import trainer as trainer_mod

    seen = []
    real = trainer_mod.Trainer.fit
    monkeypatch.setattr(trainer_mod.Trainer, "fit", lambda self: seen.append(torch.get_num_threads()) or real(self))
    before = torch.get_num_threads()
    run(compose([*SMALL, "epochs=1", "data.train_size=32", "dist.threads=1"]), tmp_path / "r")
    assert seen == [1] and torch.get_num_threads() == before


# ------------------------------------------------------------------------------------- for a lent GPU


requires_two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")


@pytest.mark.gpu
@requires_two_gpus
def test_nccl_two_ranks_train_the_same_model_as_one(tmp_path):
    """nccl (dist.backend=auto on CUDA), one GPU per rank: 2 x 16 = 1 x 32 with norm=none, comm measured."""
    common = [*SMALL, "device=cuda", "norm=none", "checkpoint.keep_on_complete=true"]
    run(compose([*common, "batch_size=32"]), tmp_path / "one")
    two = run(compose([*common, "batch_size=16", "dist.nproc=2"]), tmp_path / "two")
    assert two["status"] == "complete" and two["world_size"] == 2
    for ra, rb in zip(rows(tmp_path / "one" / "epochs.csv"), rows(tmp_path / "two" / "epochs.csv")):
        assert float(ra["train_loss"]) == pytest.approx(float(rb["train_loss"]), rel=1e-3)
    e = rows(tmp_path / "two" / "epochs.csv")[-1]
    assert float(e["comm_time_s"]) > 0 and int(e["comm_bytes"]) > 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_more_ranks_than_gpus_is_a_config_error():
    with pytest.raises(ConfigError) as e:
        make_plan(compose([*SMALL, "device=cuda", f"dist.nproc={torch.cuda.device_count() + 1}"]))
    assert e.value.key == "dist.nproc"


# ------------------------------------------------------------------------------------ measured right with ranks


def test_rank_0s_end_of_epoch_work_is_outside_the_other_ranks_next_epoch(tmp_path):
    """Rank 0's checkpoint slowed by 1 s: with the barrier after the epoch's bookkeeping, rank 1's first batch of
    epoch 1 and the epoch time stay as without the delay (before: rank 1's first batch 1.16 s, epoch 0.59 -> 1.62 s)."""
    common = [*SMALL, "batch_size=32", "dist.nproc=2", "loader=device"]
    run(compose([*common, "faults.checkpoint_delay_s=1.0"]), tmp_path / "slow")
    b = rows(tmp_path / "slow" / "batches.csv")
    first = [float(r["compute_time_s"]) for r in b if r["epoch"] == "1" and r["batch"] == "0"]
    assert len(first) == 2 and max(first) < 0.5, first  # both ranks' first step of epoch 1: no 1 s wait inside
    ep = [float(r["epoch_time_s"]) for r in rows(tmp_path / "slow" / "epochs.csv")]
    assert ep[1] < 1.0, ep


def test_divergence_with_ranks_is_diverged_like_one_process(tmp_path):
    """dist.nproc=2 faults.nan_at_step=2: status diverged (not failed), the same one-line message and exit code."""
    bad = [*SMALL, "batch_size=32", "faults.nan_at_step=2"]  # step 2 is epoch 0's batch 2 with 1 rank and with 2
    one = train_cli([*bad, f"hydra.run.dir={tmp_path / 'one'}"], tmp_path)
    two = train_cli([*bad, "dist.nproc=2", f"hydra.run.dir={tmp_path / 'two'}"], tmp_path, timeout=300)
    assert one.returncode == two.returncode == 1
    for d, p in (("one", one), ("two", two)):
        assert json.loads((tmp_path / d / "run.json").read_text())["status"] == "diverged"
        assert "trainbench: Diverged: training diverged: loss=nan at epoch 0, batch 2 (step 2)" in p.stderr, p.stderr


def test_profiles_with_ranks_are_written_per_rank(tmp_path):
    run(
        compose([*SMALL, "epochs=1", "batch_size=16", "dist.nproc=2", "profile=true", "profiler.active=2"]),
        tmp_path / "r",
    )
    for r in (0, 1):
        assert (tmp_path / "r" / "profile" / f"rank{r}" / "trace.json").stat().st_size > 0
        assert rows(tmp_path / "r" / "profile" / f"rank{r}" / "ops.csv")
    assert not (tmp_path / "r" / "profile" / "ops.csv").exists()


def test_the_stop_check_is_a_cpu_collective(monkeypatch):
    """any_rank all-reduces a CPU tensor (on the gloo side group beside nccl): no device sync per batch."""
    from trainbench.parallel import ranks as R

    seen = []
    monkeypatch.setattr(R.dist, "all_reduce", lambda t, op=None, group=None: seen.append((t.device.type, group)))
    monkeypatch.setattr(R, "_CPU_GROUP", "gloo-side-group")
    R.any_rank(True, torch.device("cuda", 0))
    assert seen == [("cpu", "gloo-side-group")]
    made = []
    monkeypatch.setattr(R.dist, "init_process_group", lambda *a, **k: None)
    monkeypatch.setattr(R.dist, "new_group", lambda backend: made.append(backend) or backend)
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: None)
    R.init_group(
        compose(SMALL), torch.device("cuda", 0), R.Ranks(0, 2, 0, 2)
    )  # auto -> nccl on CUDA: a gloo side group
    assert made == ["gloo"] and R._CPU_GROUP == "gloo"
    R.init_group(compose(SMALL), torch.device("cpu"), R.Ranks(0, 2, 0, 2))  # gloo already: none
    assert made == ["gloo"] and R._CPU_GROUP is None


@pytest.mark.parametrize("env", [{"WORLD_SIZE": "4", "RANK": "0"}, {"SLURM_PROCID": "1", "SLURM_NTASKS": "2"}])
def test_launcher_world_size_must_match_the_config(monkeypatch, env):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ConfigError) as e:
        make_plan(compose([*SMALL, "dist.nproc=2"]) if env.get("WORLD_SIZE") else compose(SMALL))
    assert e.value.key == "dist.nproc" and "the launcher started" in str(e.value)


def test_bandwidth_uses_the_buckets_own_time_overlaps_once():
    from trainbench.parallel.commclock import union_length

    assert union_length([(0.0, 1.0), (0.5, 1.5), (3.0, 4.0)]) == pytest.approx(2.5)
    assert union_length([]) == 0.0


def test_slurm_ranks_come_from_the_environment(monkeypatch):
    """A faked SLURM allocation (2 nodes x 2 tasks): rank, world, local rank and ranks per node from SLURM's vars."""
    from trainbench.parallel.ranks import env_ranks

    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("SLURM_PROCID", "3")
    monkeypatch.setenv("SLURM_NTASKS", "4")
    monkeypatch.setenv("SLURM_LOCALID", "1")
    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", "2(x2)")
    monkeypatch.setenv("SLURM_JOB_NODELIST", "node[01-02]")
    r = env_ranks()
    assert (r.rank, r.world, r.local_rank, r.local_world) == (3, 4, 1, 2) and not r.main
    plan_cfg = compose([*SMALL, "dist.nproc=2", "dist.nnodes=2"])
    assert make_plan(plan_cfg).cfg.dist.nnodes == 2  # 2 x 2 = SLURM_NTASKS: accepted
