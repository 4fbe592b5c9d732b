"""Kill rate per module from mutmut's result files (mutants/**/*.py.meta), and the survivors by name.

    python mutation/mutmut_report.py [--min 85 config.py records.py checkpoint.py]

Equivalent mutants (changes no test can observe, by design) are listed in EQUIVALENT with the reason, and
left out of the rate; every other survivor counts against it.
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
EQUIVALENT: dict[str, str] = {}


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
    print(f"{'module':<16}{'mutants':>8}{'killed':>8}{'survived':>9}{'no tests':>9}{'equiv.':>7}{'kill rate':>10}")
    survivors: list[str] = []
    for module, codes in results.items():
        c = Counter()
        for name, code in codes.items():
            if name in EQUIVALENT:
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
        if c["not run"]:
            print(f"{module}: {c['not run']} mutants not run yet (mutmut was stopped or is still running)")
        rate = 100 * c["killed"] / counted if counted else 100.0
        print(f"{module:<16}{len(codes):>8}{c['killed']:>8}{c['survived']:>9}{c['no tests']:>9}{c['equivalent']:>7}"
              f"{rate:>9.1f}%")  # fmt: skip
        if a.min is not None and module in a.modules and rate < a.min:
            below.append(f"{module}: {rate:.1f}% < {a.min:.0f}%")
    if survivors:
        print("\nsurvivors (see one with: mutmut show NAME):")
        for s in survivors:
            print(f"  {s}")
    if EQUIVALENT:
        print("\nequivalent (left out of the rate):")
        for name, why in EQUIVALENT.items():
            print(f"  {name}: {why}")
    for b in below:
        print(f"below the bar: {b}", file=sys.stderr)
    return 1 if below else 0


if __name__ == "__main__":
    sys.exit(main())
