"""FLOPs of a training step and the device's peak: achieved TFLOP/s and utilisation (MFU).

FLOPs are counted once per run with torch.utils.flop_counter on a copy of the model (forward + loss +
backward of one small batch; the optimizer's element-wise update is not counted, as in every MFU figure).
The peak is a datasheet figure for known GPUs (dense, no sparsity) and, on a CPU, a measured bound: the
best large-matmul rate this process measured in any precision the CPU runs natively. A convolution
step rarely beats a large matmul, so the bound holds in practice; it is still a measurement, so it is
labelled as one wherever it is used.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .device import cpu_bf16_native, synchronize

# Dense peak TFLOP/s per precision ("fp32" without TF32; "tf32" the tensor-core fp32 rate), from NVIDIA's
# datasheets (dense, no sparsity). Matched by the exact model name torch reports (normalised: lower case, without
# "NVIDIA"/"Tesla", "-" as a space): a substring match gave an L40S the L4's 121 TFLOP/s. A name not listed gets a
# measured matmul peak instead, and peak_source says so.
_H100_SXM = {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4}
_A100 = {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0, "fp16": 312.0}
_V100 = {"fp32": 15.7, "tf32": 15.7, "bf16": 15.7, "fp16": 125.0}
GPU_PEAKS: dict[str, tuple[str, dict[str, float]]] = {
    "h200": ("H200 SXM", _H100_SXM),
    "h100 80gb hbm3": ("H100 SXM5", _H100_SXM),
    "h100 sxm5 80gb": ("H100 SXM5", _H100_SXM),
    "h100 pcie": ("H100 PCIe", {"fp32": 51.2, "tf32": 378.0, "bf16": 756.0, "fp16": 756.0}),
    "a100 sxm4 40gb": ("A100 40GB SXM4", _A100),
    "a100 sxm4 80gb": ("A100 80GB SXM4", _A100),
    "a100 pcie 40gb": ("A100 40GB PCIe", _A100),
    "a100 80gb pcie": ("A100 80GB PCIe", _A100),
    "l40s": ("L40S", {"fp32": 91.6, "tf32": 183.0, "bf16": 362.05, "fp16": 362.05}),
    "l40": ("L40", {"fp32": 90.5, "tf32": 90.5, "bf16": 181.05, "fp16": 181.05}),
    "l4": ("L4", {"fp32": 30.3, "tf32": 60.0, "bf16": 121.0, "fp16": 121.0}),
    "geforce rtx 4090": ("RTX 4090", {"fp32": 82.6, "tf32": 82.6, "bf16": 165.2, "fp16": 165.2}),
    "v100 sxm2 16gb": ("V100 SXM2", _V100),
    "v100 sxm2 32gb": ("V100 SXM2", _V100),
    "t4": ("T4", {"fp32": 8.1, "tf32": 8.1, "bf16": 8.1, "fp16": 65.0}),
}
GPU_PEAK_SOURCE = "NVIDIA datasheet, dense (no sparsity)"


def normalise_gpu_name(name: str) -> str:
    """'NVIDIA A100-SXM4-40GB' -> 'a100 sxm4 40gb' (the key of GPU_PEAKS)."""
    words = name.replace("-", " ").lower().split()
    return " ".join(w for w in words if w not in ("nvidia", "tesla"))


@dataclass(frozen=True)
class Peak:
    tflops: float
    source: str


def step_flops_per_image(model: nn.Module, image_size: int = 32, classes: int = 10, batch: int = 2) -> float:
    """FLOPs of one training step per image (forward + loss + backward), counted on a copy of model."""
    m = copy.deepcopy(model).train()
    p = next(m.parameters())
    x = torch.randn(batch, 3, image_size, image_size, device=p.device)
    if _is_channels_last(m):
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, classes, (batch,), device=p.device)
    with FlopCounterMode(display=False) as fc:
        loss = nn.functional.cross_entropy(m(x), y)
        loss.backward()
    return fc.get_total_flops() / batch


def _is_channels_last(m: nn.Module) -> bool:
    w = next((p for p in m.parameters() if p.dim() == 4), None)
    return w is not None and w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()


def gpu_peak(name: str, precision: str, tf32: bool) -> Peak | None:
    """The datasheet peak of GPU `name` (exact model name) for precision (fp32 counts TF32 when it is allowed), or
    None for a name the table does not hold."""
    key = "tf32" if precision == "fp32" and tf32 else precision
    hit = GPU_PEAKS.get(normalise_gpu_name(name))
    if hit is None:
        return None
    model, peaks = hit
    return Peak(peaks[key], f"{GPU_PEAK_SOURCE}: {model} {key}")


def gpu_best(name: str) -> Peak | None:
    """The GPU's best dense rate in any precision (its bf16/fp16 tensor cores), or None for an unknown name."""
    hit = GPU_PEAKS.get(normalise_gpu_name(name))
    if hit is None:
        return None
    model, peaks = hit
    best = max(peaks, key=peaks.get)
    return Peak(peaks[best], f"{GPU_PEAK_SOURCE}: {model} {best} (the machine's best)")


def matmul_tflops(device: torch.device, dtype: torch.dtype, n: int, reps: int = 3) -> float:
    """Measured TFLOP/s of an n x n matmul (best of reps, after one untimed call)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(reps):
        synchronize(device)
        t = time.perf_counter()
        a @ b
        synchronize(device)  # note: sync point, so that the reading includes the matmul
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e12


def _cache_file() -> Path:
    root = os.environ.get("TRAINBENCH_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "trainbench")
    return Path(root) / "cpu_peak.json"


@functools.lru_cache(maxsize=4)
def cpu_peak(threads: int, bf16_native: bool) -> Peak:
    """A measured upper bound for this CPU: the best matmul rate in fp32 (and bf16 where it is native).

    Measured once per machine, torch version and thread count (about a second), then read from
    ~/.cache/trainbench/cpu_peak.json ($TRAINBENCH_CACHE); delete the file to measure again."""
    from .device import cpu_flags, cpu_model

    key = (
        f"{cpu_model()}|{' '.join(sorted(cpu_flags()))}|torch {torch.__version__}|{threads} threads|bf16 {bf16_native}"
    )
    path = _cache_file()
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        cached = {}
    if key in cached:
        return Peak(cached[key]["tflops"], cached[key]["source"])
    dev = torch.device("cpu")
    dtypes = [torch.float32] + ([torch.bfloat16] if bf16_native else [])
    best = max(matmul_tflops(dev, dt, n) for dt in dtypes for n in (1024, 2048))
    which = "fp32 and bf16" if bf16_native else "fp32"
    peak = Peak(best, f"measured: best {which} matmul (n=1024, 2048) on {threads} threads")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        cached[key] = {"tflops": peak.tflops, "source": peak.source}
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(cached, indent=1))
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home: measured again next time
    return peak


def measured_peak(device: torch.device, precision: str) -> Peak:
    """A measured matmul rate in the run's own precision (best of 3), for a device with no datasheet entry
    and for the run-precision bound on a CPU."""
    dt = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    tf = matmul_tflops(device, dt, 1024 if device.type == "cpu" else 4096)
    return Peak(tf, f"measured: {precision} matmul (n={1024 if device.type == 'cpu' else 4096}) on {device.type}")


def device_peak(device: torch.device, precision: str, tf32: bool = False) -> Peak | None:
    """The machine's best rate, that utilisation (mfu) is measured against, or None when unknown (MPS).

    CUDA: the datasheet's best dense rate for the exact GPU model, else a measured bf16 matmul (peak_source says
    so); CPU: the best measured matmul in a precision it runs natively."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        best = gpu_best(name)
        if best is not None:
            return best
        p = measured_peak(device, "bf16" if torch.cuda.is_bf16_supported() else "fp32")
        return Peak(p.tflops, f"{p.source} (GPU {name!r} is not in the datasheet table)")
    if device.type == "cpu":
        return cpu_peak(torch.get_num_threads(), cpu_bf16_native())
    return None


def precision_peak(device: torch.device, precision: str, tf32: bool = False) -> Peak | None:
    """The bound for the run's own precision (beside the machine's best): an fp32 run on a CPU with native bf16
    is then measured against fp32's matmul rate, not only against bf16's."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return gpu_peak(name, precision, tf32) or measured_peak(device, precision)
    if device.type == "cpu":
        return _cached_precision_peak(torch.get_num_threads(), precision)
    return None


@functools.lru_cache(maxsize=8)
def _cached_precision_peak(threads: int, precision: str) -> Peak:
    return measured_peak(torch.device("cpu"), precision)
