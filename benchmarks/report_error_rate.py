"""The report's error rate and power, simulated through the real summarizer (the numbers in README's "How the
report judges"): null sweeps of the lab's parts at 2, 3 and 5 repeats, with and without Holm's correction, and one
setting 4 standard errors faster at 5 and 8 repeats. CPU only, about a minute on 2 cores.

    python benchmarks/report_error_rate.py [--reports 200]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from trainbench import summarize
from trainbench.report.simulate import KINDS, report, sweep


def null_rate(rng, repeats: int, per_kind: int) -> float:
    hits = total = 0
    for kind in KINDS:
        for _ in range(per_kind):
            hits += any(f.significant for f in report(sweep(rng, kind, repeats)).findings)
            total += 1
    return hits / total


def power(rng, kind: str, repeats: int, n: int) -> float:
    faster = str(KINDS[kind][1][-1])
    found = 0
    for _ in range(n):
        a = report(sweep(rng, kind, repeats, effect=4.0))
        found += any(f.metric == "avg_epoch_time_s" and f.significant and faster in str(f.winner) for f in a.findings)
    return found / n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--reports", type=int, default=200, help="reports per kind and repeat count (null), per cell (power)"
    )
    a = p.parse_args()
    rng = np.random.default_rng(0)
    t = time.perf_counter()
    per_kind = max(1, a.reports // len(KINDS))
    for repeats in (2, 3, 5):
        print(f"null, {repeats} repeats: {null_rate(rng, repeats, per_kind):.1%} of reports with a significant finding")
    holm = summarize.holm
    summarize.holm = lambda findings, alpha=0.05: 0  # uncorrected: each test at 0.05 on its own
    try:
        for repeats in (2, 3, 5):
            print(f"null, {repeats} repeats, uncorrected: {null_rate(rng, repeats, per_kind):.1%}")
    finally:
        summarize.holm = holm
    for kind in ("c7", "model", "c6", "c3"):
        for repeats in (5, 8):
            print(f"power, {kind}, {repeats} repeats, 4 SE: {power(rng, kind, repeats, a.reports):.1%}")
    print(f"({time.perf_counter() - t:.0f} s)")


if __name__ == "__main__":
    main()
