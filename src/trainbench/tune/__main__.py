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
        cfg = compose(args)
        result = tune(cfg)
        result.base = [a for a in args if not a.startswith(("tune.", "+tune.", "-"))]
    except (ConfigError, DataError, ValueError) as e:
        exit_with(e)
        return 1
    print()
    print(render(result))
    print("\nwrote " + ", ".join(map(str, result.wrote)))
    return 130 if result.interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
