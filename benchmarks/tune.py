"""The tuner, checked: its ranked table on this machine, then a real run with the winner against what it measured.

    python benchmarks/tune.py [--epochs 2] [-- extra overrides]   (default: full model, synthetic 1024 images)

1. `python -m trainbench.tune` (in process) with the overrides; its table goes to results/tune.csv.
2. A real run (run(cfg), CSVs and all) with the winner's overrides and one with the lab config, --epochs each;
   their throughput is images per busy second (data + compute) of the last epoch, the tuner's definition, and
   also samples_per_s (whole epoch). The check: real winner within 5 % of the tuner's figure, and the
   winner's speed-up over the lab config in real runs.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from _common import machine, table, write_csv
from trainbench.figures import epoch_columns
from trainbench.questions import compose
from trainbench.run import run
from trainbench.store.records import read_rows
from trainbench.tune import search as T

DEFAULT = ["data=synthetic", "data.train_size=1024", "data.test_size=64", "progress=false"]


def real(overrides: list[str], epochs: int, d: Path) -> dict:
    """A real run; the last epoch's busy throughput and samples_per_s."""
    run(compose([*overrides, f"epochs={epochs}", "test_eval=false"]), d)
    last = read_rows(d / "epochs.csv", epoch_columns())[-1]
    busy = float(last["data_time_s"]) + float(last["compute_time_s"])
    return {"busy_images_per_s": float(last["samples"]) / busy, "samples_per_s": float(last["samples_per_s"])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("overrides", nargs="*")
    a = p.parse_args()
    base = [*DEFAULT, *a.overrides]
    with tempfile.TemporaryDirectory() as tmp:
        res = T.tune(compose([*base, f"tune.out={tmp}/tune", "tune.write_preset=false"]))
        print(T.render(res), flush=True)
        rows = T.rows(res)
        print(f"\nwrote {write_csv('tune', rows)}")
        if res.winner is None:
            sys.exit("no winner measured")
        tuned = res.winner.estimate().value
        lab_tuned = res.lab.estimate().value if res.lab and res.lab.ips else float("nan")
        win = real([*base, *res.winner.overrides], a.epochs, Path(tmp) / "winner")
        lab = real([*base, *T.Candidate(dict(T.LAB), "").overrides], a.epochs, Path(tmp) / "lab")
    check = [
        {
            "run": "winner",
            "setting": res.winner.label,
            "tuner_images_per_s": tuned,
            **win,
            "real_vs_tuner": win["busy_images_per_s"] / tuned,
        },
        {
            "run": "lab config",
            "setting": "loader=torch workers=2 precision=fp32 channels_last=false",
            "tuner_images_per_s": lab_tuned,
            **lab,
            "real_vs_tuner": lab["busy_images_per_s"] / lab_tuned,
        },
    ]
    print(table(check, f"Tuner winner in a real run ({a.epochs} epochs, last one) — {machine()}"))
    print(
        f"winner / lab config in real runs: {win['busy_images_per_s'] / lab['busy_images_per_s']:.2f}x busy "
        f"throughput, {win['samples_per_s'] / lab['samples_per_s']:.2f}x samples_per_s"
    )
    print(f"wrote {write_csv('tune_check', check)}")


if __name__ == "__main__":
    main()
