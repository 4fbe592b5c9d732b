"""The catalogue of figures (figures.py): a figure added there alone reaches every output, and the epoch stats and
the rank tally keep their invariants over generated batches and ranks (hypothesis), not only over one example."""

from __future__ import annotations

import csv
import math
import textwrap

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import train_cli
from trainbench import figures as F

PLUGIN = """
from trainbench.figures import SUM, Figure, register

# A test figure added through the catalogue alone: twice each batch's images, summed over ranks.
register(Figure("dummy_images", "images", "twice the batch's images (a test figure)", batch="dummy_images",
                derive=lambda rec: 2 * rec["size"], ranks=SUM, summary=("total",), log=(5, "dummy {:.0f}")))
"""


def _csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_a_figure_added_through_the_catalogue_alone_reaches_every_output(tmp_path, monkeypatch):
    """batches.csv (every rank's rows), epochs.csv (the 2-rank tally), summary.csv and the epoch log line carry a
    figure that only a plugin module registered: no other file knows it."""
    (tmp_path / "tb_dummy_figure.py").write_text(textwrap.dedent(PLUGIN))
    monkeypatch.setenv("TRAINBENCH_FIGURES", "tb_dummy_figure")
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}:{__import__('os').environ.get('PYTHONPATH', '')}")
    sweep = tmp_path / "sweep"
    p = train_cli(
        [
            "-m",
            "dist.nproc=2",
            "dist.threads=1",
            "data=synthetic",
            "data.train_size=128",
            "data.test_size=32",
            "batch_size=32",
            "model.width=8",
            "workers=0",
            "epochs=1",
            "progress=false",
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=tmp_path,
        check=True,
    )
    run = sweep / "0"
    batches = _csv(run / "batches.csv")
    assert {r["rank"] for r in batches} == {"0", "1"}
    assert all(float(r["dummy_images"]) == 2 * float(r["size"]) for r in batches)
    (epoch,) = _csv(run / "epochs.csv")
    assert float(epoch["samples"]) == 128 and float(epoch["dummy_images"]) == 256  # summed over the 2 ranks
    (summary,) = _csv(sweep / "summary.csv")
    assert float(summary["total_dummy_images"]) == 256
    assert "| dummy 256" in (run / "train.log").read_text() + p.stdout + p.stderr
    assert "dummy_images" not in F.epoch_columns()  # this process never loaded the plugin: nothing leaked


def test_a_name_already_in_the_catalogue_is_refused():
    with pytest.raises(ValueError, match="already in the catalogue"):
        F.register(F.Figure("data_time_s", "s", "again"))


def test_every_figure_is_well_formed():
    names = [f.name for f in F.FIGURES]
    assert len(names) == len(set(names))
    for f in F.FIGURES:
        assert f.epoch in (F.SUM, F.WEIGHTED, F.COUNT, F.KEY, F.NONE, F.SET), f.name
        assert f.ranks in (F.MEAN, F.MAX, F.SUM, F.FIRST, F.WEIGHTED, F.RUN, F.DERIVED), f.name
        assert f.of is None or f.of in names, f.name
        assert (f.ranks == F.DERIVED) <= (f.derive is not None), f"{f.name}: derived without a rule"
        assert set(f.summary) <= set(F.SUMMARY_NAME), f.name


batches_st = st.lists(
    st.tuples(st.integers(1, 256), st.floats(0, 20), st.floats(0, 1), st.floats(0, 5), st.floats(0, 5)),
    min_size=1,
    max_size=30,
)


def _epoch(batches: list[tuple], epoch_time: float) -> F.EpochStats:
    stats = F.EpochStats(0)
    for i, (size, loss, acc, data, compute) in enumerate(batches):
        stats.add(
            F.batch_record(
                epoch=0, batch=i, step=i, size=size, loss=loss, acc=acc, data_time_s=data, compute_time_s=compute
            )
        )
    stats.epoch_time_s = epoch_time
    return stats


@settings(max_examples=200, deadline=None)
@given(batches_st, st.floats(0, 200))
def test_an_epoch_adds_up_its_batches(batches, epoch_time):
    """Sums are sums, the loss and accuracy are means over the images (not over the batches), counts count."""
    s = _epoch(batches, epoch_time)
    n = sum(b[0] for b in batches)
    assert s.batches == len(batches) and s.samples == n
    assert s.data_time_s == pytest.approx(sum(b[3] for b in batches))
    assert s.train_loss == pytest.approx(sum(b[0] * b[1] for b in batches) / n, rel=1e-9, abs=1e-12)
    assert s.train_acc == pytest.approx(sum(b[0] * b[2] for b in batches) / n, rel=1e-9, abs=1e-12)
    assert math.isnan(s.copy_time_s)  # no phase measured: "not measured", never a silent 0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(batches_st, st.floats(0, 200)), min_size=1, max_size=4))
def test_the_rank_tally_keeps_its_invariants(ranks):
    """Over any ranks: images add up, the epoch is the slowest rank's, the loss is image-weighted, other and clamped
    account exactly for epoch - data - compute, and each max is at least its mean."""
    per_rank = [dict(_epoch(b, t)) for b, t in ranks]
    row = F.tally(per_rank)
    assert row["samples"] == sum(s["samples"] for s in per_rank)
    assert row["epoch_time_s"] == max(s["epoch_time_s"] for s in per_rank)
    losses = [s["train_loss"] for s in per_rank]
    assert min(losses) - 1e-9 <= row["train_loss"] <= max(losses) + 1e-9
    rest = row["epoch_time_s"] - row["data_time_s"] - row["compute_time_s"]
    assert row["other_time_s"] - row["clamped_s"] == pytest.approx(rest, abs=1e-9)
    assert row["other_time_s"] >= 0 and row["clamped_s"] >= 0 and min(row["other_time_s"], row["clamped_s"]) == 0
    assert row["data_time_max_s"] >= row["data_time_s"] - 1e-9  # (a mean of equal floats may round up by an ulp)
    assert row["epoch_time_s"] >= row["epoch_time_mean_s"] - 1e-9
    if row["epoch_time_s"] > 0:
        assert row["samples_per_s"] == pytest.approx(row["samples"] / row["epoch_time_s"])


def test_the_log_line_is_the_catalogues():
    row = {
        "epoch": 0,
        "train_loss": 2.5,
        "train_acc": 0.1738,
        "test_loss": 71.7311,
        "test_acc": 0.1016,
        "data_time_s": 0.11,
        "compute_time_s": 12.5,
        "other_time_s": 0.01,
        "epoch_time_s": 12.62,
        "samples_per_s": 41.0,
    }
    assert F.log_line(row, 2) == (
        "epoch 1/2 | train loss 2.5000 acc 0.1738 | test loss 71.7311 acc 0.1016 | data "
        "0.11s compute 12.50s other 0.01s epoch 12.62s | 41 img/s"
    )
