"""`make gpu-check`: the GPU tests and a short set of real GPU measurements, into one results file.

On a machine with CUDA it runs, each stage with its own timeout (a stage that fails or times out is recorded and
the next one runs; partial results are kept): the `gpu`-marked tests; C5 (CPU against GPU on a few hundred
images); one run under timing=sync and timing=events (their compute must agree within 5 %); the phase clocks'
cost; precision=auto and the tuner's ranking; one full CIFAR-shaped epoch at the fastest settings; 2-rank nccl
data-parallel training when two GPUs are visible. Budget: under 8 minutes on one H100/H200.
Without CUDA it writes "no CUDA device: skipped" into the same file and exits 0.

Writes OUT/results.md (what a person reads) and OUT/results.csv (stage, status, seconds, figure, value, note).
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
SMALL = ["data=synthetic", "data.train_size=512", "data.test_size=128", "progress=false", "workers=2"]
COLUMNS = ["stage", "status", "seconds", "figure", "value", "note"]


def _train(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PY, str(ROOT / "train.py"), *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )


def _epochs(run_dir: Path) -> list[dict]:
    with open(run_dir / "epochs.csv") as f:
        return list(csv.DictReader(f))


def _mean(rows: list[dict], key: str, skip_first: bool = True) -> float:
    vals = [float(r[key]) for r in (rows[1:] if skip_first and len(rows) > 1 else rows) if r.get(key)]
    return sum(vals) / len(vals) if vals else float("nan")


def stage_tests(out: Path) -> list[tuple]:
    p = subprocess.run(
        [PY, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider"],
        capture_output=True,
        text=True,
        timeout=150,
        cwd=ROOT,
    )
    (out / "gpu_tests.log").write_text(p.stdout + p.stderr)
    last = (p.stdout.strip().splitlines() or [""])[-1]
    return [("gpu-marked tests", p.returncode, last)]


def stage_c5(out: Path) -> list[tuple]:
    sweep = out / "c5"
    _train(["-m", "device=cpu,cuda", *SMALL, "epochs=3", f"hydra.sweep.dir={sweep}"], timeout=240)
    res = []
    for job, dev in ((0, "cpu"), (1, "cuda")):
        res.append(
            (
                f"C5 avg epoch time, {dev} (epochs after the first)",
                _mean(_epochs(sweep / str(job)), "epoch_time_s"),
                "s",
            )
        )
    return res


def stage_clocks(out: Path) -> list[tuple]:
    res, comp = [], {}
    for timing in ("sync", "events"):
        d = out / f"timing_{timing}"
        _train(["device=cuda", *SMALL, "epochs=3", f"timing={timing}", f"hydra.run.dir={d}"], timeout=120)
        comp[timing] = _mean(_epochs(d), "compute_time_s")
        res.append((f"compute per epoch, timing={timing}", comp[timing], "s"))
    ratio = comp["events"] / comp["sync"]
    res.append(("compute events / sync (must be within 0.95-1.05)", ratio, "ok" if 0.95 <= ratio <= 1.05 else "FAIL"))
    for phases in ("true", "false"):
        d = out / f"phases_{phases}"
        _train(
            ["device=cuda", *SMALL, "epochs=3", "timing=sync", f"phase_clocks={phases}", f"hydra.run.dir={d}"],
            timeout=120,
        )
        res.append((f"epoch time, timing=sync phase_clocks={phases}", _mean(_epochs(d), "epoch_time_s"), "s"))
    return res


def stage_tuner(out: Path) -> list[tuple]:
    p = subprocess.run(
        [
            PY,
            "-m",
            "trainbench.tune",
            "data=synthetic",
            "data.train_size=2048",
            "tune.budget_s=90",
            f"tune.out={out / 'tune'}",
            "tune.write_preset=false",
        ],
        capture_output=True,
        text=True,
        timeout=200,
        cwd=ROOT,
    )
    (out / "tune.log").write_text(p.stdout + p.stderr)
    rows = list(csv.DictReader(open(out / "tune" / "tune.csv"))) if (out / "tune" / "tune.csv").exists() else []
    res = [(f"tuner #{r['rank']}: {r['setting']}", float(r["images_per_s"]), "images/s") for r in rows[:5] if r["rank"]]
    verdict = next((line for line in p.stdout.splitlines() if line.startswith(("winner:", "no setting"))), "")
    d = out / "auto"
    _train(["device=cuda", *SMALL, "epochs=1", "precision=auto", f"hydra.run.dir={d}"], timeout=90)
    auto = json.loads((d / "run.json").read_text()).get("precision_auto", {})
    return [*res, ("tuner verdict", float("nan"), verdict), ("precision=auto", float("nan"), json.dumps(auto))]


def stage_full_epoch(out: Path) -> list[tuple]:
    d = out / "full"
    _train(
        [
            "device=cuda",
            "experiment=fastest",
            "data=synthetic",
            "epochs=2",
            "test_eval=false",
            "progress=false",
            f"hydra.run.dir={d}",
        ],
        timeout=180,
    )
    rows = _epochs(d)
    return [
        (
            "full CIFAR-shaped epoch (50,000 images), experiment=fastest, 2nd epoch",
            float(rows[-1]["epoch_time_s"]),
            "s",
        ),
        ("images/s", float(rows[-1]["samples_per_s"]), ""),
    ]


def stage_ddp(out: Path) -> list[tuple]:
    import torch

    if torch.cuda.device_count() < 2:
        return [("2-rank nccl", float("nan"), "skipped: fewer than 2 GPUs visible")]
    sweep = out / "ddp"
    _train(["-m", "device=cuda", "dist.nproc=1,2", *SMALL, "epochs=3", f"hydra.sweep.dir={sweep}"], timeout=240)
    with open(sweep / "tables" / "scaling.csv") as f:
        rows = list(csv.DictReader(f))
    return [
        (
            f"{r['world_size']} ranks ({r['scaling']}): speedup",
            float(r["speedup"] or "nan"),
            f"comm {r['comm_time_s']} s",
        )
        for r in rows
    ]


STAGES = [
    ("tests", stage_tests),
    ("c5", stage_c5),
    ("clocks", stage_clocks),
    ("tuner", stage_tuner),
    ("full_epoch", stage_full_epoch),
    ("ddp", stage_ddp),
]


def write(out: Path, rows: list[dict], header: str) -> None:
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, COLUMNS)
        w.writeheader()
        w.writerows(rows)
    lines = [
        f"# trainbench gpu-check\n\n{header}\n",
        "| stage | status | seconds | figure | value | note |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['stage']} | {r['status']} | {r['seconds']} | {r['figure']} | {r['value']} | {r['note']} |" for r in rows
    ]
    (out / "results.md").write_text("\n".join(lines) + "\n")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=ROOT / "gpu-check")
    a = p.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    import torch

    if not torch.cuda.is_available():
        write(
            a.out,
            [
                {
                    "stage": "all",
                    "status": "skipped",
                    "seconds": 0,
                    "figure": "",
                    "value": "",
                    "note": "no CUDA device: skipped",
                }
            ],
            "no CUDA device: skipped",
        )
        print(f"no CUDA device: skipped (wrote {a.out / 'results.md'})")
        return 0
    header = f"{torch.cuda.get_device_name(0)}, {torch.cuda.device_count()} GPU(s), torch {torch.__version__}"
    rows: list[dict] = []
    for name, fn in STAGES:
        t = time.perf_counter()
        try:
            for figure, value, note in fn(a.out):
                rows.append(
                    {
                        "stage": name,
                        "status": "ok",
                        "seconds": f"{time.perf_counter() - t:.0f}",
                        "figure": figure,
                        "value": value,
                        "note": note,
                    }
                )
        except Exception as e:  # a stage that fails or times out is recorded; the next one runs
            rows.append(
                {
                    "stage": name,
                    "status": "failed",
                    "seconds": f"{time.perf_counter() - t:.0f}",
                    "figure": "",
                    "value": "",
                    "note": f"{type(e).__name__}: {str(e)[:200]}",
                }
            )
        write(a.out, rows, header)  # partial results kept after every stage
        print(f"[gpu-check] {name}: done in {time.perf_counter() - t:.0f} s", flush=True)
    print((a.out / "results.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
