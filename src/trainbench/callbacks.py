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

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        import shutil

        from .store.runrecord import REFUSED_DIR

        shutil.rmtree(Path(config.hydra.sweep.dir) / REFUSED_DIR, ignore_errors=True)  # refusals of earlier runs

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from .summarize import summarize

        sweep_dir = Path(config.hydra.sweep.dir)
        result = summarize(sweep_dir)
        print(f"[trainbench] report: {result.report_path}  summary: {result.summary_path}", flush=True)
        if result.refused:
            for r in result.refused:
                print(f"[trainbench] job {r['job']} refused: {r['error']}", flush=True)
            raise SystemExit(
                f"[trainbench] {len(result.refused)} job(s) were refused: hydra.sweep.dir={sweep_dir} holds runs of "
                "other settings, which were left as they were (the report lists them). Choose another hydra.sweep.dir"
            )
        bad = [r for r in result.runs if r.status != "complete"]
        if bad:
            for r in bad:
                print(f"[trainbench] job {r.name}: {r.status}: {r.error or ''}", flush=True)
            raise SystemExit(
                f"[trainbench] {len(bad)} of {len(result.runs)} jobs did not complete (see {result.report_path})"
            )
