"""Device choice, device synchronization, and a description of the machine for run.json."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import ConfigError


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def resolve_device(name: str) -> torch.device:
    """auto -> cuda, else mps, else cpu; a requested device that is absent is a ConfigError."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "device", "cuda", "cpu or auto on this machine", "no CUDA device is visible; use device=cpu or device=auto"
        )
    if name == "mps" and not _mps_available():
        raise ConfigError(
            "device", "mps", "cpu or auto on this machine", "Apple MPS is not available; use device=cpu or device=auto"
        )
    if name not in ("cpu", "cuda", "mps"):
        raise ConfigError("device", name, "auto, cpu, cuda, mps")
    return torch.device(name)


def synchronize(device: torch.device) -> None:
    """Wait for all queued work on device (no-op on CPU, where every op is already synchronous)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # note: this is a CPU-GPU sync point
    elif device.type == "mps":
        torch.mps.synchronize()


def _cpuinfo(field: str) -> str | None:
    """The value of the first `field` line of /proc/cpuinfo (Linux), or None."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(field):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo, else platform)."""
    return _cpuinfo("model name") or platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo; empty elsewhere)."""
    return set((_cpuinfo("flags") or "").split())


NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # x86 units that compute bf16 natively


def cpu_bf16_native(flags: set[str] | None = None) -> bool:
    """True when this CPU has bf16 arithmetic units (AVX-512-BF16 or AMX); without them bf16 is emulated."""
    flags = cpu_flags() if flags is None else flags
    return any(f in flags for f in NATIVE_BF16_FLAGS)


@dataclass(frozen=True)
class HardwareFacts:
    """What decides whether bf16 is native: CUDA compute capability, or what torch reports of the CPU."""

    cuda_capability: tuple[int, int] | None = None
    cpu_avx512_bf16: bool = False
    cpu_amx: bool = False


def hardware_facts(device: torch.device) -> HardwareFacts:
    """The facts for device, as torch reports them (cpuinfo inside torch; /proc/cpuinfo flags if torch lacks them)."""
    if device.type == "cuda":
        return HardwareFacts(cuda_capability=tuple(torch.cuda.get_device_capability(device)))
    if device.type != "cpu":
        return HardwareFacts()
    try:
        return HardwareFacts(
            cpu_avx512_bf16=bool(torch.cpu._is_avx512_bf16_supported()),
            cpu_amx=bool(torch.cpu._is_amx_tile_supported()),
        )
    except AttributeError:  # an older torch: read the flags ourselves
        flags = cpu_flags()
        return HardwareFacts(cpu_avx512_bf16="avx512_bf16" in flags, cpu_amx="amx_bf16" in flags)


def resolve_precision(precision: str, device: torch.device, facts: HardwareFacts | None = None) -> tuple[str, str]:
    """precision=auto -> (bf16 where the hardware computes bf16 natively, else fp32; the reason). Others pass."""
    if precision != "auto":
        return precision, f"precision={precision} as configured"
    f = facts if facts is not None else hardware_facts(device)
    if device.type == "cuda":
        cc = f.cuda_capability or (0, 0)
        if cc >= (8, 0):
            return "bf16", f"CUDA compute capability {cc[0]}.{cc[1]} >= 8.0 has bf16 tensor cores"
        return "fp32", f"CUDA compute capability {cc[0]}.{cc[1]} < 8.0: no bf16 tensor cores"
    if device.type == "cpu":
        if f.cpu_amx or f.cpu_avx512_bf16:
            unit = "AMX" if f.cpu_amx else "AVX-512-BF16"
            return "bf16", f"the CPU has {unit} (as torch reports it): bf16 runs natively"
        return "fp32", "the CPU has neither AVX-512-BF16 nor AMX (as torch reports it): bf16 would be emulated"
    return "fp32", f"{device.type}: bf16 speed unknown, fp32 chosen"


def device_name(device: torch.device) -> str:
    """A human name for the training device."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return "Apple MPS"
    return f"CPU: {cpu_model()}"


def git_commit() -> str | None:
    """The project's git commit, or None outside a checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device: torch.device) -> dict:
    """Versions and hardware that produced a run's numbers."""
    import multiprocessing

    import torchvision

    cuda = device.type == "cuda"
    return {
        "python": sys.version.split()[0],
        "mp_start_method": multiprocessing.get_start_method(allow_none=True),  # how DataLoader workers start
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "cuda": torch.version.cuda if cuda else None,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "device": str(device),
        "device_name": device_name(device),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_bf16_native": cpu_bf16_native(),
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32,
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "hostname": platform.node(),
        "git_commit": git_commit(),
    }


def set_precision_flags(cfg, device: torch.device) -> None:
    """fp32 means fp32: TF32 (cuDNN's default for convolutions on Ampere+) only with tf32=true; warns on emulated
    bf16."""
    torch.backends.cuda.matmul.allow_tf32 = bool(cfg.tf32)
    torch.backends.cudnn.allow_tf32 = bool(cfg.tf32)
    if cfg.precision == "bf16" and device.type == "cpu" and not cpu_bf16_native():
        import logging

        logging.getLogger("trainbench").warning(
            "precision=bf16 on a CPU without native bf16 (no %s in /proc/cpuinfo flags): bf16 is emulated here, "
            "measured about 20x slower than fp32 on an AVX2-only CPU; precision=fp32 is faster on this machine",
            " or ".join(NATIVE_BF16_FLAGS),
        )


def check_device_options(cfg, device: torch.device) -> None:
    """Options that need a particular device, checked once the device is known."""
    if cfg.precision == "fp16" and device.type != "cuda":
        raise ConfigError(
            "precision", "fp16", f"fp32 or bf16 on {device.type}", "fp16 with a gradient scaler needs CUDA"
        )
