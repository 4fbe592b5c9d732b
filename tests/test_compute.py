"""Where compute goes: FLOPs and peaks, the operator profile, the TensorBoard live view."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch

from conftest import TINY, compose
from trainbench import flops
from trainbench.config import ConfigError, validate
from trainbench.models.resnet import ResNet18
from trainbench.profiling import category
from trainbench.run import run


def rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_full_model_step_is_3_33_gflop_per_image():
    # The lab's ResNet-18 forward is 0.556 GMAC = 1.11 GFLOP per 32x32 image; backward about twice that
    # (the first conv needs no input gradient, so slightly less than 3x).
    fpi = flops.step_flops_per_image(ResNet18())
    assert fpi == pytest.approx(3.33e9, rel=0.02)
    # counting runs on a copy: the model's BatchNorm statistics and gradients are untouched
    m = ResNet18(width=8)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    flops.step_flops_per_image(m)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    assert all(p.grad is None for p in m.parameters())


def test_flops_scale_with_width_squared_and_count_channels_last_too():
    a, b = flops.step_flops_per_image(ResNet18(width=8)), flops.step_flops_per_image(ResNet18(width=16))
    assert 3.5 < b / a < 4.0  # convs scale with width^2; the stem and the classifier less
    cl = ResNet18(width=8).to(memory_format=torch.channels_last)
    assert flops.step_flops_per_image(cl) == a


@pytest.mark.parametrize(
    "name,model,bf16,fp32",
    [
        ("NVIDIA L40S", "L40S", 362.05, 91.6),  # a substring match gave it the L4's 121 (mfu 3x too high)
        ("NVIDIA L40", "L40", 181.05, 90.5),
        ("NVIDIA L4", "L4", 121.0, 30.3),
        ("NVIDIA H100 PCIe", "H100 PCIe", 756.0, 51.2),
        ("NVIDIA H100 80GB HBM3", "H100 SXM5", 989.4, 67.0),
        ("NVIDIA H200", "H200 SXM", 989.4, 67.0),
        ("NVIDIA A100-SXM4-40GB", "A100 40GB SXM4", 312.0, 19.5),
        ("NVIDIA A100-SXM4-80GB", "A100 80GB SXM4", 312.0, 19.5),
        ("NVIDIA A100 80GB PCIe", "A100 80GB PCIe", 312.0, 19.5),
    ],
)
def test_gpu_peaks_match_exact_model_names(name, model, bf16, fp32):
    p = flops.gpu_peak(name, "bf16", tf32=False)
    assert p.tflops == bf16 and f"{model} bf16" in p.source and "datasheet" in p.source
    assert flops.gpu_peak(name, "fp32", tf32=False).tflops == fp32
    assert flops.gpu_best(name).tflops == bf16  # the machine's best: its bf16 tensor cores


def test_tf32_and_unknown_gpu_names():
    assert flops.gpu_peak("NVIDIA A100-SXM4-40GB", "fp32", tf32=True).tflops == 156.0  # tf32=true: tensor cores
    for unknown in ("Some Future GPU", "NVIDIA L40S-Next", "NVIDIA H100 NVL"):
        assert flops.gpu_peak(unknown, "bf16", tf32=False) is None and flops.gpu_best(unknown) is None


def test_unknown_gpu_gets_a_measured_peak_and_says_so(monkeypatch):
    """device_peak on CUDA with a name outside the table: a measured matmul, and peak_source names the GPU."""
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "NVIDIA Imaginary 9000")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(flops, "matmul_tflops", lambda device, dtype, n, reps=3: 123.0)
    p = flops.device_peak(torch.device("cuda", 0), "fp32")
    assert (
        p.tflops == 123.0 and "measured" in p.source and "'NVIDIA Imaginary 9000' is not in the datasheet" in p.source
    )


def test_an_fp32_run_reports_its_own_precisions_bound_beside_the_machines_best(tmp_path):
    """On a CPU with native bf16 the machine's best is bf16's matmul rate; the run's own (fp32) bound is reported
    beside it (mfu_precision), so an fp32 run's utilisation is not read against bf16 alone."""
    from conftest import TINY, compose
    from trainbench.run import run

    info = run(compose([*TINY, "test_eval=false"]), tmp_path / "r")
    assert info["peak_precision_tflops"] > 0 and "fp32 matmul" in info["peak_precision_source"]
    row = next(csv.DictReader(open(tmp_path / "r" / "epochs.csv")))
    assert float(row["mfu_precision"]) == pytest.approx(
        float(row["achieved_tflops"]) / info["peak_precision_tflops"], rel=1e-6
    )


def test_cpu_peak_is_measured_once_per_machine(tmp_path, monkeypatch):
    monkeypatch.setenv("TRAINBENCH_CACHE", str(tmp_path))
    calls = []
    real = flops.matmul_tflops
    monkeypatch.setattr(flops, "matmul_tflops", lambda *a, **k: calls.append(a) or real(*a, **k))
    flops.cpu_peak.cache_clear()
    a = flops.cpu_peak(torch.get_num_threads(), False)
    assert a.tflops > 0 and a.source.startswith("measured") and len(calls) == 2  # fp32 at n=1024 and 2048
    flops.cpu_peak.cache_clear()  # a new process: read from the cache file, not measured again
    b = flops.cpu_peak(torch.get_num_threads(), False)
    assert b == a and len(calls) == 2
    assert json.loads((tmp_path / "cpu_peak.json").read_text())
    flops.cpu_peak.cache_clear()


@pytest.mark.parametrize(
    "name,cat",
    [
        ("aten::mkldnn_convolution", "convolution"),
        ("aten::convolution_backward", "convolution"),
        ("aten::cudnn_convolution", "convolution"),
        ("aten::native_batch_norm_backward", "batch norm"),
        ("aten::relu_", "activation"),
        ("aten::threshold_backward", "activation"),
        ("aten::avg_pool2d", "pooling"),
        ("aten::addmm", "linear"),
        ("aten::mm", "linear"),
        ("aten::_log_softmax", "loss"),
        ("aten::nll_loss_forward", "loss"),
        ("Optimizer.step#SGD.step", "optimizer"),
        ("aten::_foreach_add_", "optimizer"),
        ("aten::copy_", "copy"),
        ("aten::_to_copy", "copy"),
        ("Memcpy HtoD (Pageable -> Device)", "copy"),
        ("gloo:all_reduce", "communication"),
        ("nccl:all_reduce", "communication"),
        ("enumerate(DataLoader)#_SingleProcessDataLoaderIter.__next__", "data loading"),
        ("aten::empty", "other"),
    ],
)
def test_operator_categories(name, cat):
    assert category(name) == cat


def test_profile_writes_a_trace_and_an_ops_table_and_marks_its_steps(tmp_path):
    d = tmp_path / "r"
    info = run(
        compose([*TINY, "batch_size=8", "profile=true", "profiler.wait=1", "profiler.warmup=1", "profiler.active=2"]), d
    )
    assert info["status"] == "complete"
    trace = json.loads((d / "profile" / "trace.json").read_text())
    assert trace["traceEvents"]  # loads in Perfetto / chrome://tracing
    ops = rows(d / "profile" / "ops.csv")
    assert list(ops[0]) == ["name", "category", "calls", "self_time_s", "share"]
    assert sum(float(o["share"]) for o in ops) == pytest.approx(1.0, abs=1e-6)
    assert {o["category"] for o in ops} >= {"convolution", "batch norm", "optimizer"}
    assert [float(o["self_time_s"]) for o in ops] == sorted((float(o["self_time_s"]) for o in ops), reverse=True)
    assert [b["profiled"] for b in rows(d / "batches.csv")] == ["0", "1", "1", "1", "0", "0", "0", "0"]
    assert rows(d / "epochs.csv")[0]["profiled_steps"] == "3"


def test_no_profile_no_profile_dir_and_zero_profiled_steps(tmp_path):
    run(compose(TINY), tmp_path / "r")
    assert not (tmp_path / "r" / "profile").exists()
    assert rows(tmp_path / "r" / "epochs.csv")[0]["profiled_steps"] == "0"


def test_run_records_flops_and_utilisation(tmp_path):
    d = tmp_path / "r"
    info = run(compose(TINY), d)
    expected = flops.step_flops_per_image(ResNet18(width=8))
    assert info["flops_per_image"] == pytest.approx(expected)
    assert info["peak_tflops"] > 0 and info["peak_source"].startswith("measured")
    (e,) = rows(d / "epochs.csv")
    achieved = expected * int(e["samples"]) / float(e["compute_time_s"]) / 1e12
    assert float(e["achieved_tflops"]) == pytest.approx(achieved, rel=1e-6)
    assert float(e["mfu"]) == pytest.approx(achieved / info["peak_tflops"], rel=1e-6)


@pytest.mark.parametrize(
    "override,key",
    [
        ("profiler.active=0", "profiler.active"),
        ("profiler.wait=-1", "profiler.wait"),
        ("profiler.epoch=1", "profiler.epoch"),
        ("logger=wandb", "logger"),
    ],
)
def test_bad_profiler_and_logger_settings_are_config_errors(override, key):
    with pytest.raises(ConfigError) as e:
        validate(compose([*TINY, "profile=true", override]))
    assert e.value.key == key


def test_profiler_epoch_is_only_checked_when_profiling():
    validate(compose([*TINY, "profiler.epoch=3"]))  # profile=false: not used, not an error


def test_tensorboard_missing_is_a_config_error(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "tensorboard" else real(n, *a))
    with pytest.raises(ConfigError, match="pip install 'trainbench\\[tensorboard\\]'"):
        validate(compose([*TINY, "logger=tensorboard"]))


def test_tensorboard_log_reads_back(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    d = tmp_path / "r"
    run(compose([*TINY, "epochs=2", "logger=tensorboard"]), d)
    acc = EventAccumulator(str(d / "tb"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert {
        "batch/loss",
        "batch/compute_time_s",
        "batch/forward_time_s",
        "epoch/test_acc",
        "epoch/epoch_time_s",
    } <= set(tags)
    loss = acc.Scalars("batch/loss")
    batches = rows(d / "batches.csv")
    assert [s.step for s in loss] == [int(b["step"]) for b in batches]
    assert [s.value for s in loss] == pytest.approx([float(b["loss"]) for b in batches], rel=1e-6)
    test_acc = acc.Scalars("epoch/test_acc")
    assert [s.step for s in test_acc] == [0, 1]
    assert [s.value for s in test_acc] == pytest.approx([float(e["test_acc"]) for e in rows(d / "epochs.csv")])
    assert not any(math.isnan(s.value) for s in acc.Scalars("epoch/mfu"))
