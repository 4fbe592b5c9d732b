"""make gpu-check on a machine without CUDA: exits 0 and writes why it skipped into its results file."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from conftest import ROOT


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present: gpu-check measures instead")
def test_gpu_check_without_cuda_writes_the_skip_note(tmp_path):
    p = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    assert "no CUDA device: skipped" in (tmp_path / "results.md").read_text()
    assert "no CUDA device: skipped" in (tmp_path / "results.csv").read_text()
