"""The lab presets as Hydra really composes them: their `hydra:` block (mode and sweep) included.

A plain compose() drops the `hydra:` node, and the presets are mostly that node; so these tests compose
with return_hydra_config=True, parse each sweep as Hydra's sweeper would, and compose + validate every job.
"""

from __future__ import annotations

import pytest
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode

from conftest import ROOT, compose
from trainbench.config import register_configs, validate

# What the lab asks of each part (SPEC.md), written out independently of the YAML files.
EXPECTED = {
    "c3": ("workers", ["0", "4", "8", "12", "16"]),
    "c4": ("workers", ["1", "4"]),
    "c5": ("device", ["cpu", "cuda"]),
    "c6": ("optimizer", ["sgd", "nesterov", "adagrad", "adadelta", "adam"]),  # the lab's order
    "c7": ("norm", ["batchnorm", "none"]),
}


def compose_with_hydra(overrides: list[str]):
    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides, return_hydra_config=True)


def sweep_values(key: str, spec: str) -> list[str]:
    """The jobs Hydra's basic sweeper makes of `key: spec`."""
    (override,) = OverridesParser.create().parse_overrides([f"{key}={spec}"])
    return list(override.sweep_string_iterator())


@pytest.mark.parametrize("preset", sorted(EXPECTED))
def test_sweep_presets_are_multiruns_over_the_labs_values(preset):
    cfg = compose_with_hydra([f"experiment={preset}"])
    assert cfg.hydra.mode == RunMode.MULTIRUN, f"experiment={preset} must run as a sweep"
    params = dict(cfg.hydra.sweeper.params)
    key, values = EXPECTED[preset]
    assert list(params) == [key]
    assert sweep_values(key, params[key]) == values


@pytest.mark.parametrize("preset", sorted(EXPECTED))
def test_every_job_of_every_preset_composes_and_validates(preset):
    key, _ = EXPECTED[preset]
    spec = compose_with_hydra([f"experiment={preset}"]).hydra.sweeper.params[key]
    for value in sweep_values(key, spec):
        cfg = compose([f"experiment={preset}", f"{key}={value}"])  # a bad value fails here (type) ...
        validate(cfg)  # ... or here (range/choice)
        got = cfg[key] if key == "workers" else cfg[key].name
        assert str(got) == value


@pytest.mark.parametrize("preset", ["c1", "c2"])
def test_single_run_presets_stay_single_runs_of_the_lab_setup(preset):
    cfg = compose_with_hydra([f"experiment={preset}"])
    assert cfg.hydra.mode in (None, RunMode.RUN)
    assert not cfg.hydra.sweeper.params
    assert (cfg.epochs, cfg.batch_size, cfg.workers, cfg.optimizer.name, cfg.norm.name) == (
        5,
        128,
        2,
        "sgd",
        "batchnorm",
    )


def test_launcher_presets_compose():
    local = compose_with_hydra(["launcher=local"]).hydra.launcher
    assert local._target_.endswith("LocalLauncher")
    par = compose_with_hydra(["launcher=parallel"]).hydra.launcher
    assert par._target_.endswith("JoblibLauncher") and par.n_jobs == 2
    slurm = compose_with_hydra(["launcher=slurm"]).hydra.launcher
    assert slurm._target_.endswith("SlurmLauncher") and slurm.max_num_timeout >= 1
    import torch

    assert local.gpus_per_node == (1 if torch.cuda.device_count() else 0)  # never 0 where a GPU is visible
    assert compose_with_hydra(["launcher=slurm", "workers=16"]).hydra.launcher.cpus_per_task == 17
    assert compose_with_hydra(["launcher=slurm", "workers=0"]).hydra.launcher.cpus_per_task == 2


@pytest.mark.parametrize("n", [1, 2, 4])
def test_a_job_with_n_ranks_gets_n_gpus_from_either_launcher(monkeypatch, n):
    """dist.nproc=N on CUDA: N GPUs for the job (before: one, so dist.nproc=2 failed the GPU-count check)."""
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert compose_with_hydra(["launcher=local", f"dist.nproc={n}"]).hydra.launcher.gpus_per_node == n
    s = compose_with_hydra(["launcher=slurm", f"dist.nproc={n}", "workers=2"]).hydra.launcher
    assert (s.nodes, s.tasks_per_node, s.gpus_per_node, s.cpus_per_task) == (1, 1, n, 3 * n)
    for nodes in (2, 3):  # one task per rank across nodes: each task runs one rank (workers + 1 cores)
        multi = compose_with_hydra(["launcher=slurm", f"dist.nproc={n}", f"dist.nnodes={nodes}"]).hydra.launcher
        assert (multi.nodes, multi.tasks_per_node, multi.gpus_per_node, multi.cpus_per_task) == (nodes, n, n, 3)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert compose_with_hydra(["launcher=local", f"dist.nproc={n}"]).hydra.launcher.gpus_per_node == n
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert compose_with_hydra(["launcher=local", f"dist.nproc={n}"]).hydra.launcher.gpus_per_node == 0
