"""logger=tensorboard: a live view of a run in TensorBoard (tb/ in the run dir). The CSVs stay the record."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .figures import tensorboard_batch_keys


class TensorBoardLog:
    """Per-batch (x = global step) and per-epoch (x = epoch, 0-based) scalars, flushed every few seconds."""

    def __init__(self, log_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter  # optional dependency: the tensorboard extra

        self.writer = SummaryWriter(str(log_dir), flush_secs=5)

    def batch(self, rec: Any) -> None:
        """One training batch's figures (written in the epoch's bookkeeping: other time)."""
        for k in tensorboard_batch_keys():  # the catalogue's figures with the tensorboard output
            v = rec[k]
            if not math.isnan(v):
                self.writer.add_scalar(f"batch/{k}", v, rec.step)

    def epoch(self, row: dict[str, Any]) -> None:
        """One epoch row's numeric figures."""
        for k, v in row.items():
            if k != "epoch" and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                self.writer.add_scalar(f"epoch/{k}", v, row["epoch"])
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
