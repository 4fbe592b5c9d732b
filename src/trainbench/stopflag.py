"""Ctrl-C and SIGTERM as a request: the epoch loop stops at the next batch boundary; a second Ctrl-C stops at once."""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any

log = logging.getLogger("trainbench")


class StopFlag:
    """SIGTERM/SIGINT ask the loop to stop at the next batch boundary; a second SIGINT stops at once."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}
        self._pid = os.getpid()

    def _handle(self, signum: int, frame: Any) -> None:
        if os.getpid() != self._pid:
            # a forked DataLoader worker inherits this handler, and a terminal's Ctrl-C reaches the whole process
            # group: the main process stops the epoch and shuts the workers down, so a worker does nothing here
            # (before, each worker logged the request again: three lines with workers=2)
            return
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        log.warning("received %s: stopping after the current batch", signal.Signals(signum).name)

    def __enter__(self) -> StopFlag:
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGTERM, signal.SIGINT):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)

    def __call__(self) -> bool:
        return self.signum is not None
