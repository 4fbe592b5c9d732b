"""Findings that know their uncertainty: noise from repeats or within runs, no winner from noise."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from trainbench.report import stats as F


def _epochs(times: list[float], acc: float = 0.5, samples: int = 1000) -> pd.DataFrame:
    return pd.DataFrame({"epoch": range(len(times)), "epoch_time_s": times, "data_time_s": [0.1] * len(times),
                         "compute_time_s": [t - 0.2 for t in times], "train_acc": [acc] * len(times),
                         "test_acc": [acc] * len(times), "train_loss": [1.0] * len(times),
                         "samples": [samples] * len(times)})  # fmt: skip


def _batches(per_batch: list[float]) -> pd.DataFrame:
    return pd.DataFrame({"data_time_s": [0.0] * len(per_batch), "compute_time_s": per_batch})


def test_within_run_noise_from_epochs_and_batches():
    e = _epochs([10.0, 12.0, 11.0])
    se_ep = pd.Series([10.0, 12.0, 11.0]).std() / math.sqrt(3)
    assert F.within_run_se(e, None, "avg_epoch_time_s") == pytest.approx(se_ep)
    b = _batches([1.0, 3.0] * 10)  # 20 batches, std 1.026
    se_b = pd.Series([1.0, 3.0] * 10).std() * math.sqrt(20) / 3  # noise of the sum, per epoch
    assert F.within_run_se(e, b, "avg_epoch_time_s") == pytest.approx(max(se_ep, se_b))
    assert F.within_run_se(e, None, "total_epoch_time_s") == pytest.approx(se_ep * 3)  # a sum of 3 epochs
    assert math.isnan(F.within_run_se(_epochs([10.0]), None, "avg_epoch_time_s"))  # nothing to estimate from


def test_accuracy_noise_is_binomial():
    e = _epochs([1.0, 1.0], acc=0.3, samples=500)
    assert F.within_run_se(e, None, "avg_train_acc") == pytest.approx(math.sqrt(0.3 * 0.7 / 1000))


def test_repeats_give_the_noise_when_present():
    rows = [({"m": v}, _epochs([1.0]), None) for v in (10.0, 11.0, 12.0)]
    (est,) = F.estimates([("a", rows)], "m")
    assert est.value == pytest.approx(11.0) and est.se == pytest.approx(1.0 / math.sqrt(3)) and est.source == "repeats"


def _est(setting, value, se, source="repeats"):
    return F.Estimate(setting, value, se, 3, source)


def test_winner_only_beyond_the_noise():
    clear = F.compare("c6", "optimizer", "avg_epoch_time_s", [_est("sgd", 10.0, 0.1), _est("adam", 12.0, 0.1)], True,
                      "fastest optimizer", ".3g")  # fmt: skip
    assert clear.winner == "sgd" and clear.significant and "**sgd**" in clear.text
    close = F.compare("c6", "optimizer", "avg_epoch_time_s", [_est("sgd", 10.0, 0.5), _est("adam", 10.5, 0.5)], True,
                      "fastest optimizer", ".3g")  # fmt: skip
    assert close.winner is None and not close.significant
    assert "indistinguishable" in close.text and "repeats" in close.text
    unknown = F.compare("c6", "optimizer", "avg_epoch_time_s", [_est("sgd", 1.0, math.nan, "within-run"),
                        _est("adam", 100.0, math.nan, "within-run")], True, "fastest optimizer", ".3g")  # fmt: skip
    assert unknown.winner is None and "could not be estimated" in unknown.text


def test_higher_is_better_for_accuracy():
    f = F.compare("c7", "norm", "avg_train_acc", [_est("none", 0.4, 0.01), _est("batchnorm", 0.6, 0.01)], False,
                  "most accurate", ".3f")  # fmt: skip
    assert f.winner == "batchnorm" and f.significant


def test_single_setting_names_no_winner_and_the_missing_rows():
    f = F.compare("c5", "device", "avg_epoch_time_s", [_est("cpu", 30.0, 1.0)], True, "fastest device", ".3g",
                  missing=["device=cuda (failed: no CUDA)"])  # fmt: skip
    assert f.winner is None and not f.significant
    assert "Only one device completed (device=cpu)" in f.text and "missing: device=cuda (failed: no CUDA)" in f.text


def test_accuracy_at_chance_names_no_winner():
    ests = [_est("sgd", 0.12, 0.001), _est("adam", 0.10, 0.001), _est("adadelta", 0.14, 0.001)]
    f = F.accuracy_finding("c6", "optimizer", ests, classes=10)
    assert f.winner is None and not f.significant and "too short to compare accuracy" in f.text
    g = F.accuracy_finding("c6", "optimizer", [_est("sgd", 0.5, 0.001), _est("adam", 0.7, 0.001)], classes=10)
    assert g.winner == "adam" and g.significant


def test_finding_as_json_dict():
    import numpy as np

    d = F.Finding("c3", "total_data_time_s", np.int64(4), True, "t").as_dict()
    assert d == {"part": "c3", "metric": "total_data_time_s", "winner": 4, "significant": True, "text": "t"}
    assert type(d["winner"]) is int
