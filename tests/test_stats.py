"""Findings that know their uncertainty: matched cells, Welch's t, noise from seeds or epochs, never per batch."""

from __future__ import annotations

import math
import random

import pandas as pd
import pytest
from scipy import stats as sps

from trainbench.report import stats as F


def _epochs(times: list[float], acc: float = 0.5) -> pd.DataFrame:
    return pd.DataFrame({"epoch": range(len(times)), "epoch_time_s": times, "train_acc": [acc] * len(times)})


def _run(value: float, epochs: list[float] | None = None, **settings) -> tuple[dict, pd.DataFrame, None]:
    times = epochs if epochs is not None else [value]
    return {"avg_epoch_time_s": value, "avg_train_acc": 0.5, **settings}, _epochs(times), None


def test_seeds_are_the_replicates_when_a_setting_repeats():
    (est,) = F.estimates([("a", [_run(v) for v in (10.0, 11.0, 12.0)])], "avg_epoch_time_s")
    assert (est.noise, est.n) == ("seeds", 3)
    assert est.value == pytest.approx(11.0) and est.se == pytest.approx(1.0 / math.sqrt(3))


def test_epochs_after_the_first_are_replicates_for_timing_only():
    (four,) = F.estimates([("a", [_run(11.0, [20.0, 10.0, 11.0, 12.0])])], "avg_epoch_time_s")
    assert (four.noise, four.n) == ("epochs", 3)  # the first (cold) epoch is left out of the noise
    assert four.se == pytest.approx(1.0 / math.sqrt(3))
    (three,) = F.estimates([("a", [_run(11.0, [20.0, 10.0, 11.0])])], "avg_epoch_time_s")
    assert three.noise == "none" and math.isnan(three.se)  # 2 epochs after the first are too few
    (acc,) = F.estimates([("a", [_run(11.0, [20.0, 10.0, 11.0, 12.0])])], "avg_train_acc")
    assert acc.noise == "none"  # accuracy: seeds only


def test_welch_matches_scipy_on_one_cell():
    a, b = [10.0, 10.4, 9.7, 10.2], [11.0, 10.1, 11.9]
    t = F.welch(F.Estimate.of("a", a), F.Estimate.of("b", b))
    ref = sps.ttest_ind(a, b, equal_var=False)
    assert t.p == pytest.approx(ref.pvalue) and t.diff == pytest.approx(sum(a) / 4 - sum(b) / 3)


def test_winner_only_beyond_the_noise_and_never_without_noise():
    clear = F.compare(
        "c6",
        "optimizer",
        "avg_epoch_time_s",
        [F.Estimate.of("sgd", [10.0, 10.1, 9.9]), F.Estimate.of("adam", [12.0, 12.1, 11.9])],
        True,
        "fastest optimizer",
        ".3g",
    )
    assert clear.winner == "sgd" and clear.significant and "**sgd**" in clear.text
    assert (clear.noise, clear.n) == ("seeds", 3)
    close = F.compare(
        "c6",
        "optimizer",
        "avg_epoch_time_s",
        [F.Estimate.of("sgd", [10.0, 11.0]), F.Estimate.of("adam", [10.5, 11.4])],
        True,
        "fastest optimizer",
        ".3g",
    )
    assert close.winner is None and not close.significant and "indistinguishable" in close.text
    lone = F.compare(
        "c6",
        "optimizer",
        "avg_epoch_time_s",
        [F.Estimate.of("sgd", [1.0]), F.Estimate.of("adam", [9.0])],
        True,
        "fastest optimizer",
        ".3g",
    )
    assert lone.winner is None and lone.leading == "sgd" and not lone.significant and lone.noise == "none"
    assert "seed=0,1,2" in lone.text  # says what to run for a verdict


def test_higher_is_better_for_accuracy_and_chance_names_no_winner():
    f = F.compare(
        "c7",
        "norm",
        "avg_train_acc",
        [F.Estimate.of("none", [0.40, 0.41]), F.Estimate.of("batchnorm", [0.60, 0.61])],
        False,
        "most accurate",
        ".3f",
    )
    assert f.winner == "batchnorm" and f.significant
    ests = [F.Estimate.of(s, [v, v + 0.001]) for s, v in (("sgd", 0.12), ("adam", 0.10))]
    g = F.accuracy_finding("c6", "optimizer", ests, classes=10)
    assert g.winner is None and not g.significant and "too short to compare accuracy" in g.text


def test_single_setting_names_no_winner_and_the_missing_rows():
    f = F.compare(
        "c5",
        "device",
        "avg_epoch_time_s",
        [F.Estimate.of("cpu", [30.0, 31.0])],
        True,
        "fastest device",
        ".3g",
        missing=["device=cuda (failed: no CUDA)"],
    )
    assert f.winner is None and not f.significant
    assert "Only one device completed (device=cpu)" in f.text and "missing: device=cuda (failed: no CUDA)" in f.text


def test_matched_cells_keep_another_keys_effect_out_of_the_noise():
    """Adam 0.5 s slower at every worker count; workers=2 adds 10 s: compared at matched workers, the 10 s is no
    noise (grouping by optimizer alone would make it the spread: 15 +- 5 against 15.5 +- 5)."""
    rng = random.Random(0)
    groups = []
    for opt, extra in (("sgd", 0.0), ("adam", 0.5)):
        runs = [
            _run(0.0, [5 + 10 * (w == 2) + extra + rng.gauss(0, 0.02) for _ in range(4)], workers=w) for w in (0, 2)
        ]
        groups.append((opt, runs))
    ests = F.estimates(groups, "avg_epoch_time_s", match=["workers"])
    t = F.welch(ests[1], ests[0])
    assert t.significant and t.diff == pytest.approx(0.5, abs=0.05) and len(t.levels) == 2
    unmatched = F.estimates(groups, "avg_epoch_time_s")  # every run of a setting in one cell: the 10 s is noise
    assert not F.welch(unmatched[1], unmatched[0]).significant


@pytest.mark.parametrize("repeats", [2, 3, 5])
def test_false_positive_rate_on_identical_settings(repeats):
    """Two identical settings, noise from repeats: called different at most 6 % of 2,000 draws (Welch at 0.05).
    The old rule (beyond 2 combined standard errors) called 18.6 % at 2 repeats, 11.8 % at 3, 8.2 % at 5."""
    rng = random.Random(repeats)
    draws, hits = 2000, 0
    for _ in range(draws):
        a = [rng.gauss(10.0, 1.0) for _ in range(repeats)]
        b = [rng.gauss(10.0, 1.0) for _ in range(repeats)]
        hits += F.differ(F.Estimate.of("a", a), F.Estimate.of("b", b))
    assert hits / draws <= 0.06, hits / draws


def test_finding_as_json_dict_carries_noise_and_n():
    import numpy as np

    d = F.Finding("c3", "total_data_time_s", np.int64(4), True, "t", "seeds", 3).as_dict()
    assert d == {
        "part": "c3",
        "metric": "total_data_time_s",
        "winner": 4,
        "significant": True,
        "text": "t",
        "noise": "seeds",
        "n": 3,
        "leading": 4,
        "p": None,
        "p_adjusted": None,
        "key": None,
    }
    assert type(d["winner"]) is int and type(d["leading"]) is int
