"""What a user sees when a command ends on an error they can fix: one line, no traceback."""

from __future__ import annotations

import os
import sys


def exit_with(e: BaseException, extra: str = "", code: int = 1) -> None:
    """End the command with one clear message (the full traceback only with HYDRA_FULL_ERROR=1)."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise e
    print(f"trainbench: {type(e).__name__}: {e}{extra}", file=sys.stderr, flush=True)
    raise SystemExit(code)
