"""Kill rate per module from mutmut's result files (mutants/**/*.py.meta), and the survivors by name.

    python mutation/mutmut_report.py [--min 85 schema.py records.py checkpoint.py]

Equivalent mutants (changes no test here can observe) are listed in EQUIVALENT with the reason; the first
rate counts them as survivors (the --min bar uses it), the second leaves them out. Mutant names are per
function and index: after editing a function, re-check its entries with `mutmut show NAME`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KILLED = {1, 3, 36, -24, 24, 152, 255, 37}  # test failure, pytest internal error, timeout, type check
SURVIVED = {0}
NO_TESTS = {5, 33}

# mutant name -> why no test can tell it apart from the original (reviewed by hand; keep short)
CUDA_ONLY = "observable only with a CUDA device (no test machine of this project has one)"
EQUIVALENT: dict[str, str] = {
    "trainbench.store.checkpoint.x_save_checkpoint__mutmut_15": "unlink(missing_ok=None) of a file just listed: differs "
    "only if it vanishes in between (a race no test can stage reliably)",
    "trainbench.store.checkpoint.x_save_checkpoint__mutmut_16": "unlink(missing_ok=False): as above",
    "trainbench.store.checkpoint.x_remove_checkpoints__mutmut_3": "unlink(missing_ok=None) of a file just listed: as above",
    "trainbench.store.checkpoint.x_remove_checkpoints__mutmut_4": "unlink(missing_ok=False) of a file just listed: as above",
    "trainbench.store.checkpoint.x_load_latest__mutmut_5": "map_location='cpu' -> None: identical without CUDA; "
    + CUDA_ONLY,
    "trainbench.store.checkpoint.x_load_latest__mutmut_8": "map_location dropped: identical without CUDA; " + CUDA_ONLY,
    "trainbench.store.records.x__complete_lines__mutmut_4": "the truncation cut runs also when text ends with a "
    "newline, where cutting after the last newline keeps all of it: same result",
    "trainbench.store.records.xǁCsvLogǁ__init____mutmut_22": "open(newline=None) writes '\\n' as os.linesep, which is "
    "'\\n' on POSIX (the only platform torch's DataLoader workers + fcntl locks run here)",
    "trainbench.store.records.xǁCsvLogǁ__init____mutmut_25": "open() without newline: as above",
    "trainbench.store.records.x_read_header__mutmut_3": "open(newline=None) for reading: universal newlines turn "
    "'\\r\\n' into '\\n'; the logs are written with '\\n' only (POSIX): same header",
    "trainbench.store.records.x_read_header__mutmut_5": "open() without newline for reading: as above",
    "trainbench.store.records.x__rewrite__mutmut_11": "r.get(c, None): csv writes None as an empty cell, as ''",
    "trainbench.store.records.x__rewrite__mutmut_13": "r.get(c): default None, as above",
    "trainbench.store.records.x__rewrite__mutmut_14": "the default is never used: every caller passes rows from "
    "read_rows(path, columns), which holds every column",
    "trainbench.store.records.xǁRunLockǁ__init____mutmut_5": "the initial fh value is replaced in __enter__ before any use",
    "trainbench.config.x__visible_gpus__mutmut_1": "the default nproc is never used: launcher=local passes dist.nproc",
    "trainbench.config.schema.x_cpus_for_workers__mutmut_1": "the default nproc is never used: launcher=slurm passes all three",
    "trainbench.config.x_cpus_for_workers__mutmut_2": "the default nnodes is never used: as above",
}


def load(mutants_dir: Path) -> dict[str, dict[str, int | None]]:
    """{module file name: {mutant name: exit code}}."""
    out: dict[str, dict[str, int | None]] = {}
    for meta in sorted(mutants_dir.rglob("*.py.meta")):
        data = json.loads(meta.read_text())
        out[meta.name.removesuffix(".meta")] = data.get("exit_code_by_key", {})
    return out


def main(argv: list[str] | None = None) -> int:
    """Print per-module kill rates and survivors; exit 1 when a module named with --min is under the bar."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--min", type=float, default=None, help="required kill rate (percent) for the modules named")
    ap.add_argument("modules", nargs="*", help="module file names the --min bar applies to")
    a = ap.parse_args(argv)
    results = load(ROOT / "mutants")
    if not results:
        print("no mutmut results under mutants/: run `mutmut run` first", file=sys.stderr)
        return 2
    below = []
    print(
        f"{'module':<16}{'mutants':>8}{'killed':>8}{'survived':>9}{'no tests':>9}{'equiv.':>7}{'kill rate':>10}"
        f"{'w/o equiv.':>11}"
    )
    survivors: list[str] = []
    for module, codes in results.items():
        c = Counter()
        for name, code in codes.items():
            if name in EQUIVALENT and code in SURVIVED:
                c["equivalent"] += 1
            elif code in KILLED:
                c["killed"] += 1
            elif code in SURVIVED:
                c["survived"] += 1
                survivors.append(name)
            elif code is None:
                c["not run"] += 1
            elif code in NO_TESTS:
                c["no tests"] += 1
                survivors.append(f"{name} (no test covers it)")
            else:
                c["other"] += 1
                survivors.append(f"{name} (exit code {code})")
        counted = c["killed"] + c["survived"] + c["no tests"] + c["other"]
        raw = 100 * c["killed"] / (counted + c["equivalent"]) if counted + c["equivalent"] else 100.0
        if c["not run"]:
            print(f"{module}: {c['not run']} mutants not run (not selected, stopped, or still running)")
        if not counted + c["equivalent"]:
            continue
        rate = 100 * c["killed"] / counted if counted else 100.0
        print(
            f"{module:<16}{len(codes):>8}{c['killed']:>8}{c['survived']:>9}{c['no tests']:>9}{c['equivalent']:>7}"
            f"{raw:>9.1f}%{rate:>10.1f}%"
        )
        if a.min is not None and module in a.modules and raw < a.min:  # the bar counts equivalents as survivors
            below.append(f"{module}: {raw:.1f}% < {a.min:.0f}%")
    if survivors:
        print("\nsurvivors (see one with: mutmut show NAME):")
        for s in survivors:
            print(f"  {s}")
    equivalent = [n for codes in results.values() for n, code in codes.items() if n in EQUIVALENT and code in SURVIVED]
    if equivalent:
        print("\nsurvivors explained as equivalent:")
        for name in equivalent:
            print(f"  {name}: {EQUIVALENT[name]}")
    for b in below:
        print(f"below the bar: {b}", file=sys.stderr)
    return 1 if below else 0


if __name__ == "__main__":
    sys.exit(main())
