"""The tuner's command line: python -m trainbench.tune [Hydra overrides, tune.* included]."""

from __future__ import annotations

import logging
import sys

from ..config import ConfigError
from ..console import exit_with
from ..data.sources import DataError
from ..questions import compose
from . import __doc__ as tune_doc
from .search import render, tune


def main(argv: list[str] | None = None) -> int:
    """CLI: python -m trainbench.tune [Hydra overrides, tune.* included]."""

    args = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in args):
        print(tune_doc)
        return 0
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        cfg = compose([a for a in args if not a.startswith("hydra.")])
        run_dir = next((a.split("=", 1)[1] for a in args if a.startswith("hydra.run.dir=")), None)
        if run_dir and cfg.tune.out is None:
            cfg.tune.out = run_dir  # the tuner's output goes where the user's hydra.run.dir says
        result = tune(cfg)
        # the printed commands carry the user's settings, never the tuner's own output dir or tune.* keys
        result.base = [a for a in args if not a.startswith(("tune.", "+tune.", "-", "hydra."))]
    except (ConfigError, DataError, ValueError) as e:
        exit_with(e)
        return 1
    print()
    print(render(result))
    print("\nwrote " + ", ".join(map(str, result.wrote)))
    return 130 if result.interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
