"""A run dir's state: run.json (status, fingerprint, progress), the decision on what is already there (resume,
refuse, nothing to do), the rows a resume drops, and removing a dir that holds nothing of ours."""

from __future__ import annotations

import logging
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..figures import batch_columns, epoch_columns, totals
from . import checkpoint
from .records import RunLock, keep_rows, read_json, read_rows, write_json

log = logging.getLogger("trainbench")

OUR_FILES = ("run.json", "epochs.csv", "batches.csv")
REFUSED_DIR = ".refused"  # in a sweep dir: one JSON per job refused in the current invocation
__all__ = ["RunLock", "RunRecord", "discard_if_untouched", "drop_rows_after", "now", "start_epoch"]


def now() -> str:
    """The current time as run.json writes it (UTC, ISO 8601, milliseconds)."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class RunRecord:
    """run.json of one run dir, as this process knows it; only the main rank writes it."""

    def __init__(self, run_dir: Path, main: bool = True) -> None:
        self.run_dir, self.main = run_dir, main
        self.path = run_dir / "run.json"
        self.info: dict[str, Any] = read_json(self.path) or {}

    def save(self, **updates: Any) -> None:
        """Update run.json (atomically) with these keys and updated_at."""
        self.info.update(updates, updated_at=now())
        if self.main:
            write_json(self.path, self.info)

    def replace(self, **content: Any) -> None:
        """Write run.json as exactly this content (a job that failed before its run began: nothing of it to keep)."""
        self.info = dict(content)
        if self.main:
            write_json(self.path, self.info)

    def rows(self) -> list[dict[str, str]]:
        """epochs.csv's rows."""
        return read_rows(self.run_dir / "epochs.csv", epoch_columns())

    def finish(self, status: str, **extra: Any) -> None:
        """Record the run's end (status, totals over its rows); a disk that fails here is logged, not raised."""
        rows = self.rows()
        try:
            self.save(status=status, finished_at=now(), epochs_done=len(rows), totals=totals(rows), **extra)
        except OSError as e:  # the disk may be what failed; the status cannot be recorded then
            log.error("could not record status %s in %s: %s", status, self.path, e)


def _check_existing(rec: RunRecord, ckpt: dict | None, fp: str, cfg: Any, device_type: str) -> None:
    """Refuse to mix a different config into, or write over, what the run dir already holds."""
    rows = rec.rows()
    info = rec.info
    saved = ckpt or (
        {"fingerprint": info.get("fingerprint"), "train_config": info.get("train_config")} if rows else None
    )
    if saved and saved.get("fingerprint") and saved["fingerprint"] != fp:
        diff = checkpoint.config_diff(saved.get("train_config") or {}, checkpoint.training_config(cfg, device_type))
        raise checkpoint.RunDirRefused(
            f"run dir {rec.run_dir} holds a run of a different config ({'; '.join(diff) or 'fingerprint differs'}); "
            "refusing to resume it. Use the original settings, or another hydra.run.dir"
        )
    if rows and ckpt is None and not (cfg.resume.enabled and info.get("fingerprint") == fp):
        why = "resume.enabled=false" if not cfg.resume.enabled else "no checkpoint or record of its config"
        raise checkpoint.RunDirRefused(
            f"run dir {rec.run_dir} already holds {len(rows)} epoch rows and {why}; nothing was overwritten. "
            "Choose another hydra.run.dir"
        )


def start_epoch(rec: RunRecord, ckpt: dict | None, fp: str, cfg: Any, device_type: str) -> int | None:
    """The epoch this run starts at (0, or the one after ckpt's), or None when it is already complete.

    Raises RunDirRefused when the dir holds another config's run, or rows it cannot continue."""
    _check_existing(rec, ckpt, fp, cfg, device_type)
    done = len(rec.rows())
    if rec.info.get("status") == "complete" and rec.info.get("fingerprint") == fp:
        if done >= cfg.epochs:
            log.info("run dir %s is already complete (%d epochs); nothing to do", rec.run_dir, done)
            return None
        if ckpt is None:
            raise checkpoint.RunDirRefused(
                f"run dir {rec.run_dir} holds a complete run of {done} epochs whose checkpoints were removed "
                "(checkpoint.keep_on_complete=false), so it cannot be extended to "
                f"epochs={cfg.epochs}; nothing was changed. Train epochs={cfg.epochs} in another hydra.run.dir, "
                "and set checkpoint.keep_on_complete=true for runs you want to extend later"
            )
    return ckpt["epoch"] + 1 if ckpt else 0


def drop_rows_after(run_dir: Path, start: int, ckpt: dict | None) -> None:
    """Rows written after the checkpoint (killed between an epoch row and its checkpoint) are redone: drop them."""
    dropped = keep_rows(run_dir / "epochs.csv", epoch_columns(), lambda r: int(r["epoch"]) < start)
    dropped_b = keep_rows(run_dir / "batches.csv", batch_columns(), lambda r: int(r["epoch"]) < start)
    if ckpt is not None or dropped or dropped_b:
        log.info(
            "resuming %s: epochs 0..%d done; dropped %d epoch and %d batch rows written after it",
            Path(ckpt["path"]).name if ckpt else "from scratch",
            start - 1,
            dropped,
            dropped_b,
        )


def discard_if_untouched(run_dir: Path) -> None:
    """Remove a run dir that holds only what Hydra wrote for this job (config copies, log file)."""
    if not run_dir.is_dir() or any((run_dir / f).exists() for f in OUR_FILES) or any(run_dir.glob("checkpoint_*")):
        return
    if set(p.name for p in run_dir.iterdir()) <= {".hydra", "train.log", ".lock"}:
        shutil.rmtree(run_dir, ignore_errors=True)
        parent = run_dir.parent  # outputs/<date>/ left empty by this job
        if parent.name != "outputs" and parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()
