"""Run-dir files: CSV logs, atomic writes, JSON, the lock. Fast unit tests (also what mutmut runs)."""

from __future__ import annotations

import errno
import math
import os

import pytest

from trainbench.figures import batch_columns, epoch_columns, totals
from trainbench.store import records as R


def test_fmt_cells():
    assert R._fmt(None) == "" and R._fmt(math.nan) == ""
    assert R._fmt(0.06996459499999999) == "0.069964595"  # 9 significant digits
    assert R._fmt(1.0) == "1" and R._fmt(3) == "3" and R._fmt("x") == "x" and R._fmt(math.inf) == "inf"


def test_csv_log_writes_header_once_and_flushes_every_row(tmp_path):
    p = tmp_path / "e.csv"
    log = R.CsvLog(p, ["a", "b"])
    assert p.read_text() == "a,b\n"  # header on disk before any row
    log.write({"a": 1, "b": 0.5})
    assert p.read_text() == "a,b\n1,0.5\n"  # flushed without close
    log.write({"a": 2})  # a missing key is an empty cell
    log.close()
    log = R.CsvLog(p, ["a", "b"])  # reopened: appends, no second header
    log.write({"a": 3, "b": None})
    log.close()
    assert p.read_text() == "a,b\n1,0.5\n2,\n3,\n"
    log.close()  # closing twice is harmless


def test_csv_log_on_an_empty_existing_file_writes_the_header(tmp_path):
    p = tmp_path / "e.csv"
    p.write_text("")
    R.CsvLog(p, ["a"]).close()
    assert p.read_text() == "a\n"


def test_csv_log_open_failure_names_the_file(tmp_path):
    with pytest.raises(R.RunWriteError, match=r"cannot write .*nodir.*e\.csv"):
        R.CsvLog(tmp_path / "nodir" / "e.csv", ["a"])


def test_csv_log_write_failure_names_the_file_and_keeps_rows(tmp_path):
    p = tmp_path / "e.csv"
    log = R.CsvLog(p, ["a"])
    log.write({"a": 1})

    class Full:
        def write(self, line):
            raise OSError(errno.ENOSPC, "No space left on device")

        def close(self):
            raise OSError(errno.ENOSPC, "No space left on device")

    log.fh = Full()
    with pytest.raises(R.RunWriteError) as e:
        log.write({"a": 2})
    assert str(p) in str(e.value) and "No space left on device" in str(e.value) and "intact" in str(e.value)
    assert e.value.errno == errno.ENOSPC
    log.close()  # a close that fails is ignored
    assert p.read_text() == "a\n1\n"


def test_read_rows_drops_truncated_and_malformed_lines(tmp_path):
    p = tmp_path / "e.csv"
    assert R.read_rows(p, ["a", "b"]) == []  # missing
    p.write_text("a,b\n1,2\n3\n4,5\n6,")  # a short row, then a last line killed mid-write
    assert R.read_rows(p, ["a", "b"]) == [{"a": "1", "b": "2"}, {"a": "4", "b": "5"}]
    p.write_text("a,b\n1,2\n")
    assert R.read_rows(p, ["a", "b"]) == [{"a": "1", "b": "2"}]
    assert R.read_rows(tmp_path, ["a"]) == []  # not a regular file


def test_keep_rows_rewrites_only_when_something_is_dropped(tmp_path):
    p = tmp_path / "e.csv"
    p.write_text("epoch,x\n0,a\n1,b\n2,c\n")
    os.utime(p, (1, 1))
    assert R.keep_rows(p, ["epoch", "x"], lambda r: True) == 0
    assert p.stat().st_mtime == 1  # untouched
    assert R.keep_rows(p, ["epoch", "x"], lambda r: int(r["epoch"]) < 2) == 1
    assert p.read_text() == "epoch,x\n0,a\n1,b\n"
    assert R.keep_rows(tmp_path / "none.csv", ["epoch"], lambda r: False) == 0


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path):
    p = tmp_path / "f.bin"
    R.atomic_write_bytes(p, b"one")
    R.atomic_write_bytes(p, b"two")
    assert p.read_bytes() == b"two"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["f.bin"]


def test_atomic_write_failure_keeps_the_old_version(tmp_path, monkeypatch):
    p = tmp_path / "f.bin"
    R.atomic_write_bytes(p, b"old")

    def fail(src, dst):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(R.os, "replace", fail)
    with pytest.raises(R.RunWriteError) as e:
        R.atomic_write_bytes(p, b"new")
    assert f"cannot write {p}: Read-only file system; the previous version is intact" == str(e.value.strerror)
    assert e.value.errno == errno.EROFS
    assert p.read_bytes() == b"old"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["f.bin"]  # the temp file was removed


def test_json_round_trip_and_unreadable(tmp_path):
    p = tmp_path / "run.json"
    R.write_json(p, {"a": 1, "p": tmp_path})
    assert p.read_text().endswith("\n") and '\n  "a": 1' in p.read_text()  # indented, one key per line
    assert R.read_json(p) == {"a": 1, "p": str(tmp_path)}
    assert R.read_json(tmp_path / "missing.json") is None
    p.write_text("{not json")
    assert R.read_json(p) is None


def test_run_lock_is_exclusive_names_the_holder_and_is_released(tmp_path):
    with R.RunLock(tmp_path) as lock:
        assert (tmp_path / ".lock").read_text() == str(os.getpid())
        with pytest.raises(R.RunDirLocked) as e:
            R.RunLock(tmp_path).__enter__()
        msg = str(e.value)
        assert str(tmp_path) in msg and f"pid {os.getpid()}" in msg and "hydra.run.dir" in msg
        assert lock.fh is not None
    with R.RunLock(tmp_path):  # released on exit: can be taken again
        pass


def test_run_lock_replaces_a_stale_pid(tmp_path):
    (tmp_path / ".lock").write_text("99999999")
    with R.RunLock(tmp_path):
        assert (tmp_path / ".lock").read_text() == str(os.getpid())


def test_totals_read_empty_cells_as_nan():
    rows = [
        {k: "1" for k in ("epoch_time_s", "data_time_s", "compute_time_s", "other_time_s", "samples")}
        | {"train_loss": "2", "train_acc": "", "test_loss": "", "test_acc": "0.5"}
    ] * 2
    t = totals(rows)
    assert t["total_epoch_time_s"] == 2 and t["avg_train_loss"] == 2 and math.isnan(t["avg_train_acc"])
    assert t["final_test_acc"] == 0.5 and t["samples_per_s"] == 1 and totals([]) == {"epochs": 0}


def test_column_contracts():
    # SPEC.md's required columns, and the order epochs.csv and batches.csv have had since 0.1 (readers match by name)
    epochs, batches = epoch_columns(), batch_columns()
    for c in [
        "epoch",
        "train_loss",
        "train_acc",
        "test_loss",
        "test_acc",
        "data_time_s",
        "compute_time_s",
        "epoch_time_s",
        "other_time_s",
        "samples",
        "samples_per_s",
    ]:
        assert c in epochs
    for c in ["epoch", "batch", "size", "loss", "acc", "data_time_s", "compute_time_s"]:
        assert c in batches
    assert len(set(epochs)) == len(epochs) and epochs[0] == "epoch"
    assert epochs == EPOCHS_CSV_01 and batches == BATCHES_CSV_01


EPOCHS_CSV_01 = [
    "epoch",
    "batches",
    "samples",
    "train_loss",
    "train_acc",
    "test_loss",
    "test_acc",
    "data_time_s",
    "compute_time_s",
    "other_time_s",
    "epoch_time_s",
    "samples_per_s",
    "eval_time_s",
    "lr",
    "copy_time_s",
    "forward_time_s",
    "backward_time_s",
    "optimizer_time_s",
    "skipped_steps",
    "timing_mode",
    "achieved_tflops",
    "mfu",
    "profiled_steps",
    "world_size",
    "comm_time_s",
    "comm_exposed_s",
    "comm_bytes",
    "epoch_time_mean_s",
    "data_time_max_s",
    "compute_time_max_s",
    "comm_time_max_s",
    "cpu_util",
    "others_cpu",
    "load_avg",
    "clamped_s",
    "mfu_precision",
    "comm_busy_s",
]
BATCHES_CSV_01 = [
    "epoch",
    "batch",
    "step",
    "size",
    "loss",
    "acc",
    "data_time_s",
    "compute_time_s",
    "copy_time_s",
    "forward_time_s",
    "backward_time_s",
    "optimizer_time_s",
    "skipped",
    "profiled",
    "rank",
    "comm_time_s",
    "comm_exposed_s",
]


def test_atomic_write_into_a_missing_dir_is_a_run_write_error(tmp_path):
    with pytest.raises(R.RunWriteError) as e:
        R.atomic_write_bytes(tmp_path / "nodir" / "f.bin", b"x")
    assert e.value.errno == errno.ENOENT
    assert (
        e.value.strerror
        == f"cannot write {tmp_path / 'nodir' / 'f.bin'}: No such file or directory; the previous version is intact"
    )


def test_csv_log_open_failure_message_and_errno(tmp_path):
    p = tmp_path / "nodir" / "e.csv"
    with pytest.raises(R.RunWriteError) as e:
        R.CsvLog(p, ["a"])
    assert e.value.errno == errno.ENOENT and e.value.strerror == f"cannot write {p}: No such file or directory"


def test_csv_log_write_failure_exact_message(tmp_path):
    p = tmp_path / "e.csv"
    log = R.CsvLog(p, ["a"])

    class Full:
        def write(self, line):
            raise OSError(errno.ENOSPC, "No space left on device")

    log.fh = Full()
    with pytest.raises(R.RunWriteError) as e:
        log.write({"a": 1})
    assert e.value.strerror == f"cannot write {p}: No space left on device; earlier rows and checkpoints are intact"


def test_read_rows_single_column_truncated_last_line(tmp_path):
    p = tmp_path / "e.csv"
    p.write_text("a\n1\n22")
    assert R.read_rows(p, ["a"]) == [{"a": "1"}]


def test_keep_rows_writes_plain_newlines(tmp_path):
    p = tmp_path / "e.csv"
    p.write_text("epoch\n0\n1\n")
    R.keep_rows(p, ["epoch"], lambda r: r["epoch"] == "0")
    assert p.read_bytes() == b"epoch\n0\n"


def test_csv_log_writes_plain_newlines(tmp_path):
    p = tmp_path / "e.csv"
    log = R.CsvLog(p, ["a", "b"])
    log.write({"a": "x", "b": 1})
    log.close()
    assert p.read_bytes() == b"a,b\nx,1\n"


def test_run_lock_held_without_a_pid_says_unknown(tmp_path):
    import fcntl

    with open(tmp_path / ".lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held by someone who wrote no pid
        with pytest.raises(R.RunDirLocked) as e:
            R.RunLock(tmp_path).__enter__()
    assert str(e.value) == (
        f"run dir {tmp_path} is in use by another live run (pid unknown); "
        "wait for it to end or choose another hydra.run.dir"
    )


def test_read_rows_matches_columns_by_header_name(tmp_path):
    p = tmp_path / "e.csv"
    p.write_text("b,a\n2,1\n")  # another column order
    assert R.read_rows(p, ["a", "b"]) == [{"a": "1", "b": "2"}]
    p.write_text("a\n1\n")  # written before column b existed: b reads as empty
    assert R.read_rows(p, ["a", "b"]) == [{"a": "1", "b": ""}]
    assert R.read_header(p) == ["a"]
    assert R.read_header(tmp_path / "none.csv") is None
    p.write_text("a,b")  # header cut off mid-write
    assert R.read_header(p) is None and R.read_rows(p, ["a", "b"]) == []


def test_csv_log_migrates_an_older_header_keeping_every_row(tmp_path):
    p = tmp_path / "e.csv"
    p.write_text("epoch,x\n0,a\n1,b\n")  # an older version's file, without column mode
    log = R.CsvLog(p, ["epoch", "mode", "x"])
    log.write({"epoch": 2, "mode": "sync", "x": "c"})
    log.close()
    assert p.read_text() == "epoch,mode,x\n0,,a\n1,,b\n2,sync,c\n"
    assert R.keep_rows(p, ["epoch", "mode", "x"], lambda r: r["epoch"] != "1") == 1
    assert p.read_text() == "epoch,mode,x\n0,,a\n2,sync,c\n"


def test_csv_log_restarts_a_file_holding_only_a_cut_off_header(tmp_path):
    p = tmp_path / "e.csv"
    p.write_text("epo")
    log = R.CsvLog(p, ["epoch"])
    log.write({"epoch": 0})
    log.close()
    assert p.read_text() == "epoch\n0\n"
