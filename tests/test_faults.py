"""Fault injection: SIGKILL/SIGTERM and resume, NaN, truncated checkpoints, locks, write failures, sweeps."""

from __future__ import annotations

import csv
import errno
import json
import shlex
import signal
import time
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from conftest import TINY, compose, popen_cli, train_cli
from trainbench.run import run
from trainbench.store import records
from trainbench.store.checkpoint import CheckpointError
from trainbench.store.records import RunLock, RunWriteError
from trainbench.timing.epoch import LoaderDied, StepContext, train_epoch

RESUME = [*TINY, "data.train_size=256", "epochs=3", "seed=7"]  # ~0.5 s per epoch: room to kill mid-run
METRICS = ["epoch", "batches", "samples", "train_loss", "train_acc", "test_loss", "test_acc"]


def rows(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def metrics(d: Path) -> list[dict]:
    return [{k: r[k] for k in METRICS} for r in rows(d / "epochs.csv")]


def batch_losses(d: Path) -> list[tuple]:
    return [(r["epoch"], r["batch"], r["loss"]) for r in rows(d / "batches.csv")]


def status(d: Path) -> str:
    return json.loads((d / "run.json").read_text())["status"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted run to compare resumed runs with."""
    d = tmp_path_factory.mktemp("ref") / "run"
    train_cli([*RESUME, f"hydra.run.dir={d}"], d.parent, check=True)
    return d


def wait_for(pred, timeout: float = 60.0, proc=None) -> None:
    end = time.time() + timeout
    while not pred():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process ended early:\n{proc.stdout.read()}")
        if time.time() > end:
            raise AssertionError("timed out")
        time.sleep(0.005)


def n_rows(path: Path) -> int:
    return max(0, len(path.read_text().splitlines()) - 1) if path.exists() else 0


def kill_after_first_epoch(d: Path, sig: int = signal.SIGKILL) -> int:
    p = popen_cli([*RESUME, f"hydra.run.dir={d}"], d.parent)
    wait_for(lambda: n_rows(d / "epochs.csv") >= 1 and (d / "checkpoint_epoch0.pt").exists(), proc=p)
    p.send_signal(sig)
    p.wait(60)
    assert n_rows(d / "epochs.csv") < 3, "the run finished before the kill; the test proves nothing"
    return p.returncode


def test_sigkill_then_rerun_equals_uninterrupted(tmp_path, reference):
    d = tmp_path / "run"
    assert kill_after_first_epoch(d) == -signal.SIGKILL
    assert status(d) == "running"  # SIGKILL leaves no chance to write; the rerun sorts it out
    train_cli([*RESUME, f"hydra.run.dir={d}"], tmp_path, check=True)
    assert [r["epoch"] for r in rows(d / "epochs.csv")] == ["0", "1", "2"]
    assert metrics(d) == metrics(reference)  # loss and accuracy identical, to the last printed digit
    assert batch_losses(d) == batch_losses(reference)
    info = json.loads((d / "run.json").read_text())
    assert info["status"] == "complete" and info["resumed_from_epoch"] >= 1


def test_resume_needs_no_rng_state_and_the_negative_control_fails(tmp_path, reference, monkeypatch):
    """Stop after epoch 0 and resume: with and without restoring RNG state the rows match the uninterrupted run,
    because each epoch's order and crops are functions of (seed, epoch, index). Negative control: a loader
    that is not told its epoch replays epoch 0's order and crops, and the rows differ."""
    for restore in (True, False):
        d = tmp_path / f"restore_{restore}"
        run(compose([*RESUME, "epochs=1", "checkpoint.keep_on_complete=true"]), d)  # as if stopped after epoch 0
        run(compose([*RESUME, f"resume.restore_rng={str(restore).lower()}"]), d)
        assert metrics(d) == metrics(reference)
    from trainbench import trainer as trainer_mod

    monkeypatch.setattr(trainer_mod, "set_epoch", lambda loader, epoch: None)
    d = tmp_path / "no_epoch"
    run(compose([*RESUME, "epochs=1", "checkpoint.keep_on_complete=true"]), d)
    run(compose(RESUME), d)
    assert metrics(d)[0] == metrics(reference)[0] and metrics(d)[1:] != metrics(reference)[1:]


def test_sigterm_mid_epoch_marks_interrupted_and_resumes(tmp_path, reference):
    d = tmp_path / "run"
    p = popen_cli([*RESUME, f"hydra.run.dir={d}"], tmp_path)
    wait_for(lambda: n_rows(d / "batches.csv") >= 10, proc=p)  # inside epoch 1
    p.send_signal(signal.SIGTERM)
    out = p.communicate(timeout=60)[0]
    assert p.returncode != 0
    assert status(d) == "interrupted", out
    assert "SIGTERM" in out
    # stopped at a batch boundary inside epoch 1, not at the end of the epoch (8 batches per epoch)
    epoch1 = [r for r in rows(d / "batches.csv") if r["epoch"] == "1"]
    assert 2 <= len(epoch1) < 8, len(epoch1)
    assert n_rows(d / "epochs.csv") == 1
    assert "stop requested during epoch 1" in json.loads((d / "run.json").read_text())["error"]
    assert list(d.glob("checkpoint_epoch*.pt"))  # the last checkpoint is kept
    train_cli([*RESUME, f"hydra.run.dir={d}"], tmp_path, check=True)
    assert status(d) == "complete"
    assert metrics(d) == metrics(reference)


def test_rows_past_the_checkpoint_are_reconciled(tmp_path, reference):
    """Epoch rows written after the last checkpoint (killed between row and checkpoint) are redone once."""
    d = tmp_path / "run"
    run(compose([*RESUME, "checkpoint.keep=3", "checkpoint.keep_on_complete=true"]), d)
    for e in (1, 2):
        (d / f"checkpoint_epoch{e}.pt").unlink()  # as if killed right after writing rows 1 and 2
    info = json.loads((d / "run.json").read_text())
    (d / "run.json").write_text(json.dumps({**info, "status": "running"}))
    assert run(compose([*RESUME, "checkpoint.keep=3"]), d)["resumed_from_epoch"] == 1
    assert [r["epoch"] for r in rows(d / "epochs.csv")] == ["0", "1", "2"]
    assert metrics(d) == metrics(reference)
    assert batch_losses(d) == batch_losses(reference)


def test_nan_at_chosen_step_marks_diverged(tmp_path):
    d = tmp_path / "run"
    p = train_cli([*RESUME, "faults.nan_at_step=11", f"hydra.run.dir={d}"], tmp_path)
    assert p.returncode != 0
    info = json.loads((d / "run.json").read_text())
    assert info["status"] == "diverged"
    assert info["diverged"] == {"epoch": 1, "batch": 3, "step": 11}  # 8 batches per epoch
    assert n_rows(d / "batches.csv") == 11  # stopped within the step: no row for the NaN step
    assert n_rows(d / "epochs.csv") == 1


def test_truncated_checkpoint_is_never_loaded(tmp_path):
    d = tmp_path / "run"
    run(compose([*TINY, "epochs=2", "checkpoint.keep_on_complete=true"]), d)
    ck = d / "checkpoint_epoch1.pt"
    ck.write_bytes(ck.read_bytes()[: ck.stat().st_size // 2])
    before = (d / "epochs.csv").read_text()
    p = train_cli([*TINY, "epochs=3", f"hydra.run.dir={d}"], tmp_path)
    assert p.returncode != 0
    assert "unreadable" in p.stderr + p.stdout and "checkpoint_epoch1.pt" in p.stderr + p.stdout
    assert (d / "epochs.csv").read_text() == before


def test_truncated_newest_checkpoint_falls_back_to_older(tmp_path):
    d = tmp_path / "run"
    cfg = compose([*TINY, "epochs=2", "checkpoint.keep=2", "checkpoint.keep_on_complete=true"])
    run(cfg, d)
    ck = d / "checkpoint_epoch1.pt"
    ck.write_bytes(ck.read_bytes()[:100])
    info = run(compose([*TINY, "epochs=3", "checkpoint.keep=2"]), d)
    assert info["status"] == "complete" and info["resumed_from_epoch"] == 1
    assert [r["epoch"] for r in rows(d / "epochs.csv")] == ["0", "1", "2"]


def test_different_config_is_refused(tmp_path):
    d = tmp_path / "run"
    run(compose([*TINY]), d)
    with pytest.raises(CheckpointError, match="optimizer.lr: 0.1 -> 0.05"):
        run(compose([*TINY, "epochs=2", "optimizer.lr=0.05"]), d)


def test_completed_run_is_not_redone(tmp_path, caplog):
    caplog.set_level("INFO", logger="trainbench")
    d = tmp_path / "run"
    run(compose([*TINY, "checkpoint.keep_on_complete=true"]), d)
    before = {f: (d / f).read_bytes() for f in ("epochs.csv", "batches.csv", "run.json", "checkpoint_epoch0.pt")}
    info = run(compose([*TINY, "checkpoint.keep_on_complete=true"]), d)
    assert info["status"] == "complete"
    assert {f: (d / f).read_bytes() for f in before} == before  # not even run.json's timestamps are touched
    assert "already complete" in caplog.text


def test_sigint_stops_a_single_run_as_interrupted(tmp_path):
    d = tmp_path / "run"
    p = popen_cli([*RESUME, f"hydra.run.dir={d}"], tmp_path)
    wait_for(lambda: n_rows(d / "batches.csv") >= 3, proc=p)
    p.send_signal(signal.SIGINT)
    out = p.communicate(timeout=60)[0]
    assert p.returncode != 0
    assert status(d) == "interrupted", out
    assert "SIGINT" in out
    assert n_rows(d / "batches.csv") < 8  # within epoch 0
    # one message and the exact command that resumes it; no traceback
    assert "Traceback" not in out, out
    resume = out.split("resume with:\n", 1)[1].strip().splitlines()[0]
    assert resume.startswith("python train.py ") and resume.endswith(f"hydra.run.dir={d}")
    assert p.returncode == 130
    args = shlex.split(resume)[2:]
    train_cli(args, tmp_path, check=True)  # the printed command really continues the run
    assert status(d) == "complete" and n_rows(d / "epochs.csv") == 3


def test_resume_disabled_refuses_a_run_dir_with_rows(tmp_path):
    d = tmp_path / "run"
    run(compose(TINY), d)
    before = (d / "epochs.csv").read_bytes()
    with pytest.raises(CheckpointError, match="already holds 1 epoch rows and resume.enabled=false"):
        run(compose([*TINY, "epochs=2", "resume.enabled=false"]), d)
    assert (d / "epochs.csv").read_bytes() == before


def test_checkpoint_disabled_writes_none_and_a_rerun_is_not_redone(tmp_path):
    d = tmp_path / "run"
    info = run(compose([*TINY, "epochs=2", "checkpoint.enabled=false"]), d)
    assert info["status"] == "complete" and info["epochs_done"] == 2
    assert not list(d.glob("checkpoint_*"))
    before = (d / "epochs.csv").read_bytes()
    info2 = run(compose([*TINY, "epochs=2", "checkpoint.enabled=false"]), d)  # complete: nothing to redo
    assert info2["status"] == "complete" and (d / "epochs.csv").read_bytes() == before


def test_complete_run_checkpoints_are_removed_by_default_and_it_cannot_be_extended(tmp_path):
    d = tmp_path / "run"
    run(compose([*TINY, "epochs=2"]), d)
    assert not list(d.glob("checkpoint_*"))
    before = (d / "epochs.csv").read_bytes()
    with pytest.raises(
        CheckpointError, match="complete run of 2 epochs whose checkpoints were removed.*keep_on_complete=true"
    ):
        run(compose([*TINY, "epochs=3"]), d)
    assert (d / "epochs.csv").read_bytes() == before
    # kept on request: the run can be extended
    k = tmp_path / "kept"
    run(compose([*TINY, "epochs=2", "checkpoint.keep_on_complete=true"]), k)
    assert [p.name for p in k.glob("checkpoint_*")] == ["checkpoint_epoch1.pt"]
    assert run(compose([*TINY, "epochs=3", "checkpoint.keep_on_complete=true"]), k)["epochs_done"] == 3


def test_checkpoint_keep_prunes_to_the_newest(tmp_path):
    d = tmp_path / "run"
    run(compose([*TINY, "epochs=3", "checkpoint.keep=2", "checkpoint.keep_on_complete=true"]), d)
    assert sorted(p.name for p in d.glob("checkpoint_*")) == ["checkpoint_epoch1.pt", "checkpoint_epoch2.pt"]


def test_locked_run_dir_is_refused(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    with RunLock(d):
        p = train_cli([*TINY, f"hydra.run.dir={d}"], tmp_path)
    assert p.returncode != 0
    assert "in use by another live run" in p.stderr + p.stdout
    assert not (d / "epochs.csv").exists()


def test_write_failure_is_clear_and_keeps_earlier_rows(tmp_path, monkeypatch):
    d = tmp_path / "run"
    real_init = records.CsvLog.__init__

    class FullDisk:
        """The file object of epochs.csv once the disk is full: the row of epoch 1 cannot be written."""

        def __init__(self, fh):
            self.fh = fh

        def write(self, line):
            if line.startswith("1,"):
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.fh.write(line)

        def __getattr__(self, name):
            return getattr(self.fh, name)

    def init(self, path, columns):
        real_init(self, path, columns)
        if path.name == "epochs.csv":
            self.fh = FullDisk(self.fh)

    monkeypatch.setattr(records.CsvLog, "__init__", init)
    with pytest.raises(RunWriteError, match="cannot write .*epochs.csv: No space left on device; earlier rows"):
        run(compose([*TINY, "epochs=3"]), d)
    assert [r["epoch"] for r in rows(d / "epochs.csv")] == ["0"]
    assert (d / "checkpoint_epoch0.pt").exists() and not (d / "checkpoint_epoch1.pt").exists()
    assert status(d) == "failed"
    monkeypatch.setattr(records.CsvLog, "__init__", real_init)  # the disk has room again: resume finishes the run
    assert run(compose([*TINY, "epochs=3"]), d)["status"] == "complete"
    assert [r["epoch"] for r in rows(d / "epochs.csv")] == ["0", "1", "2"]


def test_full_disk_on_a_real_file(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    (d / "batches.csv").symlink_to("/dev/full")  # every write to /dev/full fails with ENOSPC
    p = train_cli([*TINY, f"hydra.run.dir={d}"], tmp_path)
    assert p.returncode != 0
    assert "batches.csv" in p.stderr and "No space left on device" in p.stderr
    assert status(d) == "failed"


class _DyingData(Dataset):
    def __len__(self) -> int:
        return 64

    def __getitem__(self, i):
        if i == 20:
            import os

            os.kill(os.getpid(), signal.SIGKILL)  # the worker process dies
        return torch.zeros(3, 8, 8), 0


def test_dead_dataloader_worker_is_an_error_not_a_hang():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 10))
    ctx = StepContext(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), device=torch.device("cpu"))
    t = time.time()
    with pytest.raises(LoaderDied, match="DataLoader worker process died .* workers=0"):
        train_epoch(ctx, DataLoader(_DyingData(), batch_size=8, num_workers=1), 0)
    assert time.time() - t < 30


def test_resume_on_another_device_type_is_refused(tmp_path, monkeypatch):
    """A device=auto run that resolved to a GPU must not be continued on a CPU (simulated: the recorded
    fingerprint is the one of a CUDA run)."""
    from trainbench.store import checkpoint as C

    d = tmp_path / "run"
    run(compose([*TINY, "epochs=2", "checkpoint.keep_on_complete=true"]), d)
    real = C.fingerprint
    monkeypatch.setattr(C, "fingerprint", lambda cfg, device_type=None: real(cfg, "cuda"))
    with pytest.raises(CheckpointError, match="different config"):
        run(compose([*TINY, "epochs=3", "checkpoint.keep_on_complete=true"]), d)
