"""Hydra callback: summarize every multirun when it ends, failed jobs included."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger("trainbench")


class SummarizeOnMultirunEnd(Callback):
    """Write summary.csv, report.md and plots into the sweep dir; exit non-zero if any job did not complete."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from .summarize import summarize

        sweep_dir = Path(config.hydra.sweep.dir)
        result = summarize(sweep_dir)
        print(f"[trainbench] report: {result.report_path}  summary: {result.summary_path}", flush=True)
        bad = [r for r in result.runs if r.status != "complete"]
        if bad:
            for r in bad:
                print(f"[trainbench] job {r.name}: {r.status}: {r.error or ''}", flush=True)
            raise SystemExit(
                f"[trainbench] {len(bad)} of {len(result.runs)} jobs did not complete (see {result.report_path})"
            )
