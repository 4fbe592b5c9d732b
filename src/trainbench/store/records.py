"""Run-dir files: flushed CSV logs, atomic JSON, the run-dir lock. Every write error names the file.

Which columns a log has is the catalogue's (figures.py); this module only writes and reads them."""

from __future__ import annotations

import csv
import fcntl
import io
import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any


class RunWriteError(OSError):
    """Writing into the run dir failed (disk full, read-only, ...); earlier rows are intact."""


class RunDirLocked(RuntimeError):
    """Another live process holds this run dir."""


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float):
        return f"{v:.9g}"
    return str(v)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via temp file + fsync + rename, so that path holds either the old or the new content."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise RunWriteError(e.errno, f"cannot write {path}: {e.strerror or e}; the previous version is intact") from e


def write_json(path: Path, obj: Any) -> None:
    """Atomically write obj as indented JSON."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, default=str) + "\n").encode())


def read_json(path: Path) -> dict | None:
    """The JSON in path, or None when it is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _complete_lines(path: Path) -> str:
    text = path.read_text()
    if not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]  # the last line was written only in part
    return text


def read_rows(path: Path, columns: list[str]) -> list[dict[str, str]]:
    """Complete rows of a CSV log as {column: cell} for each of columns, matched by the file's header.

    A truncated last line (killed mid-write) and rows whose cell count differs from the header are dropped;
    a column the file lacks (written by an older version) reads as an empty cell."""
    if not path.is_file():  # missing, or not a regular file (a device, a fifo): nothing to read
        return []
    lines = list(csv.reader(io.StringIO(_complete_lines(path))))
    if not lines:
        return []
    header = lines[0]
    rows = []
    for row in lines[1:]:
        if len(row) != len(header):
            continue
        cells = dict(zip(header, row))
        rows.append({c: cells.get(c, "") for c in columns})
    return rows


def read_header(path: Path) -> list[str] | None:
    """The header of a CSV log, or None when the file is missing or empty."""
    if not path.is_file():
        return None
    with open(path, newline="") as fh:
        first = fh.readline()
    return next(csv.reader([first])) if first.endswith("\n") else None


def _rewrite(path: Path, columns: list[str], rows: list[dict[str, str]]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    w.writerows([r.get(c, "") for c in columns] for r in rows)
    atomic_write_bytes(path, buf.getvalue().encode())


class CsvLog:
    """Append-only CSV with fixed columns: header written once, every row flushed as written."""

    def __init__(self, path: Path, columns: list[str]) -> None:
        self.path, self.columns = path, columns
        header = read_header(path)
        if header is not None and header != columns:
            # Written by a version with other columns: carry its rows over by name (new columns empty),
            # atomically, so that a resumed run's file keeps one header and every earlier row.
            _rewrite(path, columns, read_rows(path, columns))
        try:
            new = header is None  # missing, empty, or only a header cut off mid-write: start the file afresh
            self.fh = open(path, "w" if new else "a", newline="")
            if new:
                self.fh.write(",".join(columns) + "\n")
                self.fh.flush()
        except OSError as e:
            raise RunWriteError(e.errno, f"cannot write {path}: {e.strerror or e}") from e

    def write(self, row: dict[str, Any]) -> None:
        """Append one row and flush it to the OS (a killed run keeps every written row)."""
        line = ",".join(_fmt(row.get(c)) for c in self.columns) + "\n"
        try:
            self.fh.write(line)
            self.fh.flush()
        except OSError as e:
            raise RunWriteError(
                e.errno, f"cannot write {self.path}: {e.strerror or e}; earlier rows and checkpoints are intact"
            ) from e

    def close(self) -> None:
        """Close the file, ignoring errors of a file that could not be flushed."""
        try:
            self.fh.close()
        except OSError:
            pass


def keep_rows(path: Path, columns: list[str], keep: Callable[[dict[str, str]], bool]) -> int:
    """Atomically rewrite a CSV log with only the complete rows that keep() accepts; returns rows dropped."""
    rows = read_rows(path, columns)
    kept = [r for r in rows if keep(r)]
    if len(kept) == len(rows):
        return 0  # nothing to drop: leave the file untouched
    _rewrite(path, columns, kept)
    return len(rows) - len(kept)


class RunLock:
    """Exclusive lock on a run dir (flock: released by the OS if the holder dies)."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / ".lock"
        self.fh: Any | None = None

    def __enter__(self) -> RunLock:
        self.fh = open(self.path, "a+")
        try:
            fcntl.flock(self.fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.fh.seek(0)
            holder = self.fh.read().strip() or "unknown"
            self.fh.close()
            raise RunDirLocked(
                f"run dir {self.path.parent} is in use by another live run (pid {holder}); "
                "wait for it to end or choose another hydra.run.dir"
            ) from None
        self.fh.seek(0)
        self.fh.truncate()
        self.fh.write(str(os.getpid()))
        self.fh.flush()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.fh is not None
        fcntl.flock(self.fh, fcntl.LOCK_UN)
        self.fh.close()
