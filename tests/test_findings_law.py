"""Issue 26's reproductions, each a test (constructed runs through the real summarizer), and the findings' invariants
over generated sweeps (hypothesis): 1-3 varying keys (group choices, keys inside a group, plain keys, keys that vary
together), 1-5 seeds per setting (unequal), failed jobs that knock out cells, 1-6 epochs with a slow first epoch,
1-4 ranks."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trainbench.figures import epoch_columns
from trainbench.report.simulate import SHARES, report, run
from trainbench.summarize import summarize


def eps(times: list[float], data: float = 1.0, backward: float | None = None, opt: float | None = None) -> pd.DataFrame:
    """Epoch rows with these epoch times (compute = time - data - 0.05), phases in the usual shares."""
    rows = []
    for i, t in enumerate(times):
        c = t - data - 0.05
        ph = {f"{p}_time_s": c * s for p, s in SHARES.items()}
        if backward is not None:
            ph["backward_time_s"] = backward
        if opt is not None:
            ph["optimizer_time_s"] = opt
        rows.append({"epoch": i, "batches": 8, "samples": 256, "train_loss": 2.0 - 0.1 * i, "train_acc": 0.3 + 0.05 * i,
                     "test_loss": 2.0, "test_acc": 0.3, "data_time_s": data, "compute_time_s": c, "other_time_s": 0.05,
                     "epoch_time_s": t, "timing_mode": "sync", "world_size": 1, **ph})  # fmt: skip
    return pd.DataFrame(rows).reindex(columns=epoch_columns())


def jitter(x: float, k: int, scale: float = 0.01) -> float:
    return x + scale * ((k * 7) % 5 - 2)


def by(findings, part=None, metric=None):
    return [f for f in findings if (part is None or f.part == part) and (metric is None or f.metric == metric)]


def test_1_the_winner_is_the_setting_its_own_test_shows_better():
    """sgd's slow first epoch must not make adam the winner: the test uses the epochs after the first, so does the
    ranking (sgd 1 s faster there)."""
    runs = [run("0", {"optimizer.name": "sgd"}, eps([20, 10, 10.1, 9.9, 10])),
            run("1", {"optimizer.name": "adam"}, eps([11, 11, 11.1, 10.9, 11]))]  # fmt: skip
    (f,) = by(report(runs).findings, "c6", "avg_epoch_time_s")
    assert f.leading == "sgd" and f.winner == "sgd" and f.significant and f.noise == "epochs"
    assert "epochs after the first" in f.text


def test_2_a_failed_cell_does_not_flip_the_winner():
    """adam's workers=4 jobs failed: the settings are compared where both ran (workers=0), where adam is faster."""
    runs = []
    for seed in range(3):
        for opt, w, t, status in [("sgd", 0, 30, "complete"), ("sgd", 4, 10, "complete"), ("adam", 0, 20, "complete"),
                                  ("adam", 4, 10, "failed")]:  # fmt: skip
            runs.append(run(str(len(runs)), {"optimizer.name": opt, "workers": w, "seed": seed},
                            eps([jitter(t, seed + k) for k in range(3)]), status))  # fmt: skip
    (f,) = by(report(runs).findings, "c6", "avg_epoch_time_s")
    assert f.leading == "adam" and f.winner == "adam" and f.significant
    assert "Compared where every optimizer ran" in f.text


def test_3_never_significant_with_a_setting_that_has_no_noise():
    """sgd and adam with 3 seeds, adagrad with 1 run of 3 epochs (no noise): nothing significant, noise none."""
    runs = [run(str(i), {"optimizer.name": o, "seed": s}, eps([jitter(t, s + k, 0.02) for k in range(3)]))
            for i, (o, s, t) in enumerate([("sgd", 0, 10), ("sgd", 1, 10), ("sgd", 2, 10), ("adam", 0, 12),
                                           ("adam", 1, 12), ("adam", 2, 12), ("adagrad", 0, 14)])]  # fmt: skip
    for f in report(runs).findings:
        assert not f.significant or (f.noise != "none" and f.n >= 2), f
    (f,) = by(report(runs).findings, "c6", "avg_epoch_time_s")
    assert f.noise == "none" and f.winner is None and f.leading == "sgd"


def test_4_a_key_inside_a_swept_group_is_a_setting_of_its_own(tmp_path):
    """-m optimizer=sgd,adam optimizer.lr=0.1,0.01: optimizer.lr varies, is a summary column and splits the settings
    (never pooled into noise); optimizer.momentum, which the choice explains, is not a setting."""
    runs = []
    for opt in ("sgd", "adam"):
        for lr in (0.1, 0.01):
            mom = 0.9 if opt == "sgd" else None
            runs.append(run(str(len(runs)), {"optimizer.name": opt, "optimizer.lr": lr, "optimizer.momentum": mom},
                            eps([10 + lr, 10 + lr, 10 + lr])))  # fmt: skip
    a = report(runs)
    assert a.varying == ["optimizer", "optimizer.lr"] and "optimizer.lr" in a.table
    assert len({r.label() for r in a.runs}) == 4  # the plot's legend tells all four apart


def test_4_an_image_folders_root_names_its_dataset():
    runs = [run(str(i), {"data.name": "imagefolder", "data.root": root}, eps([5, 5, 5]))
            for i, root in enumerate(["/data/cats", "/data/dogs"])]  # fmt: skip
    assert "data.root" in report(runs).varying
    from omegaconf import OmegaConf

    from trainbench.store.checkpoint import fingerprint

    a, b = (OmegaConf.create({"data": {"name": "imagefolder", "root": r}}) for r in ("/data/cats", "/data/dogs"))
    c, d = (OmegaConf.create({"data": {"name": "cifar10", "root": r}}) for r in ("/a", "/b"))
    assert fingerprint(a) != fingerprint(b) and fingerprint(c) == fingerprint(d)  # a resume with another folder


def test_5_keys_that_always_vary_together_are_confounded_and_crown_nothing():
    runs = [run("0", {"workers": 0, "precision": "fp32", "channels_last": False}, eps([10, 10, 10, 10])),
            run("1", {"workers": 4, "precision": "bf16", "channels_last": True}, eps([4, 4, 4, 4]))]  # fmt: skip
    a = report(runs)
    assert a.ctx.confounded == [("workers", "precision", "channels_last")]
    assert not by(a.findings, "c3") and not by(a.findings, "compute")  # no C3 logic, no per-key phase blame
    assert any("Confounded" in c for c in a.caveats)


def test_6_an_optimizer_is_judged_on_its_own_phase_and_backward_is_only_a_flag():
    """C6 with adadelta's backward lower (a disturbance): the verdict is about the optimizer phase (adam's step is
    the slowest); the backward change is a measurement flag, never a winner."""
    runs = []
    for seed in range(3):
        for opt, bwd, step in [("sgd", 1.6, 0.26), ("adam", 1.6, 0.35), ("adadelta", 0.9, 0.30)]:
            runs.append(run(str(len(runs)), {"optimizer.name": opt, "seed": seed},
                            eps([jitter(4.0, seed + k) for k in range(3)], backward=jitter(bwd, seed, 0.005),
                                opt=jitter(step, seed, 0.003))))  # fmt: skip
    comp = by(report(runs).findings, "compute")
    verdict = [f for f in comp if f.text.startswith("Compute phases")]
    flags = [f for f in comp if f.text.startswith("**Measurement flag")]
    assert [f.metric for f in verdict] == ["avg_optimizer_time_s"] and verdict[0].leading == "sgd"
    assert [f.metric for f in flags] == ["avg_backward_time_s"] and flags[0].winner is None
    assert not any("Lowest backward" in f.text for f in comp)


def test_7_no_sentence_says_within_the_noise_where_none_was_measured_and_winners_need_significance():
    runs = [run(str(w), {"workers": w}, eps([5 - w / 4] * 2)) for w in (0, 1, 2, 4)]
    a = report(runs)
    for f in a.findings:
        assert not ("within the noise" in f.text and "no run-to-run noise was measured" in f.text), f.text
        assert f.winner is None or f.significant
    (rule,) = by(a.findings, "c3", "total_data_time_s")
    assert "**" not in rule.text.split(". ")[0]  # the rule's count is not bolded without a verdict


def test_7_the_busy_caveat_is_said_once(tmp_path):
    runs = [run(str(w), {"workers": w}, eps([5 - w / 4] * 4)) for w in (0, 1, 2, 4)]
    runs[0].epochs["others_cpu"] = 0.6  # another process took 60 % of the machine during run 0
    a = report(runs)
    assert sum("Busy machine" in c for c in a.caveats) == 1
    assert not any("Busy machine" in f.text for f in a.findings)
    assert all(not f.significant for f in a.findings if "time" in f.metric)


def test_9_the_c7_per_epoch_table_has_every_norm_whatever_the_loop_order():
    runs = [run(str(i), {"norm.name": n, "seed": s}, eps([5, 5, 5])) for i, (n, s) in
            enumerate([(n, s) for n in ("batchnorm", "none") for s in range(4)])]  # fmt: skip
    md = "\n".join(x for o in report(runs).outputs for x in o.md)
    table = md.split("Per-epoch training top-1:")[1]
    assert "| batchnorm |" in table and "| none |" in table


def test_9_an_unresolved_class_count_of_a_failed_job_is_not_a_setting():
    ok = run("0", {"device.name": "cpu", "model.num_classes": 10}, eps([5, 5]))
    failed = run("1", {"device.name": "cuda", "model.num_classes": None}, eps([5]), status="failed")
    assert report([ok, failed]).varying == ["device"]


def test_9_summarize_follows_symlinks_and_compares_runs_of_several_dirs(tmp_path):
    from trainbench.store.records import write_json

    def write(d, w):
        d.mkdir(parents=True)
        cfg = {"workers": w, "seed": 0, "optimizer": {"name": "sgd"}, "norm": {"name": "batchnorm"}, "model": {}}
        write_json(d / "run.json", {"status": "complete", "config": cfg, "environment": {"device_name": "x"}})
        eps([5.0 - w / 4] * 3).to_csv(d / "epochs.csv", index=False)

    write(tmp_path / "a" / "run", 0)
    write(tmp_path / "b" / "run", 4)
    links = tmp_path / "links"
    links.mkdir()
    os.symlink(tmp_path / "a" / "run", links / "one")
    os.symlink(tmp_path / "b" / "run", links / "two")
    assert len(summarize(links, inspect_models=False).runs) == 2
    s = summarize(tmp_path / "cmp", inspect_models=False, sources=[tmp_path / "a", tmp_path / "b"])
    assert [r.settings["workers"] for r in s.runs] == [0, 4] and (tmp_path / "cmp" / "report.md").is_file()
    json.loads((tmp_path / "cmp" / "findings.json").read_text())


# ------------------------------------------------------------------------------------------- generated sweeps

KEYS = {  # key -> values: a group choice, a key inside a group, plain keys
    "optimizer.name": ["sgd", "adam", "adagrad"],
    "optimizer.lr": [0.1, 0.01],
    "workers": [0, 2, 4],
    "norm.name": ["batchnorm", "none"],
    "batch_size": [32, 64],
}


@st.composite
def sweeps(draw):
    keys = draw(st.lists(st.sampled_from(sorted(KEYS)), min_size=1, max_size=3, unique=True))
    tied = draw(st.booleans()) and len(keys) >= 2  # the first two keys vary together
    n_epochs = draw(st.integers(1, 6))
    ranks = draw(st.integers(1, 4))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    combos = [{}]
    for i, k in enumerate(keys):
        if tied and i == 1:
            combos = [{**c, k: KEYS[k][KEYS[keys[0]].index(c[keys[0]]) % len(KEYS[k])]} for c in combos]
        else:
            combos = [{**c, k: v} for c in combos for v in KEYS[k][: draw(st.integers(2, len(KEYS[k])))]]
    runs = []
    for c in combos:
        effect = draw(st.sampled_from([0.0, 0.0, 1.0, 3.0]))  # none, or far beyond the epoch-to-epoch noise
        for seed in range(draw(st.sampled_from([1, 1, 2, 3, 5]))):  # unequal repeats, often a lone run
            times = [10.0 + effect + rng.normal(0, 0.2) for _ in range(n_epochs)]
            times[0] += draw(st.sampled_from([0.0, 0.0, 8.0]))  # a slow first epoch (can flip an all-epoch ranking)
            status = draw(st.sampled_from(["complete"] * 5 + ["failed", "diverged"]))
            runs.append(run(str(len(runs)), {**c, "seed": seed, "dist.nproc": ranks}, eps(times), status))
    return runs


SHORT = {"optimizer.name": "optimizer", "norm.name": "norm"}


def _flat(cfg: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in cfg.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def oracle_scores(a, key: str, metric: str = "avg_epoch_time_s") -> tuple[dict, dict]:
    """Independently of the engine: per setting of key, its mean over the cells every setting ran in (cells: the
    other varying keys; replicates: the runs' figures with 2+ runs, else the epochs after the first when 3+, else the
    one figure), and how many runs those cells hold."""
    col = metric.removeprefix("avg_")
    others = [k for k in a.varying if k not in (key, "seed")]
    reps: dict = {}
    for r, row in zip(a.runs, a.table.to_dict("records")):
        if r.status != "complete" or not len(r.epochs):
            continue
        cell = tuple(repr(r.settings.get(k)) for k in others)
        reps.setdefault(r.settings.get(key), {}).setdefault(cell, []).append((row[metric], r.epochs[col].tolist()))
    common = set.intersection(*(set(c) for c in reps.values())) if reps else set()

    def cell_mean(runs):
        if len(runs) >= 2:
            return np.mean([m for m, _ in runs])
        later = runs[0][1][1:]
        return np.mean(later) if len(later) >= 3 else runs[0][0]

    scores = {v: np.mean([cell_mean(c[k]) for k in common]) for v, c in reps.items()} if common else {}
    counts = {v: sum(len(c[k]) for k in common) for v, c in reps.items()} if common else {}
    return scores, counts


def check_invariants(a) -> None:
    """(a)-(e) of issue 26 on one report (analyze ran: (f) nothing raised), each against an independent reading."""
    generated = {k for r in a.runs if r.status == "complete" for k in _flat(r.info["config"])}
    for k in KEYS:  # (c): every key that varies among the complete runs is a setting and a summary column
        vals = {repr(_flat(r.info["config"]).get(k)) for r in a.runs if r.status == "complete" and len(r.epochs)}
        if k in generated and len(vals) > 1:
            assert SHORT.get(k, k) in a.varying and SHORT.get(k, k) in a.table.columns, (k, a.varying)
    for f in a.findings:
        assert f.winner is None or f.significant, f  # (e)
        if f.significant:
            assert f.noise != "none" and f.n >= 2, f  # (b)
        if f.significant and f.winner is not None and f.key in a.varying and f.metric == "avg_epoch_time_s":
            scores, _ = oracle_scores(a, f.key)
            assert scores[f.winner] == min(scores.values()), (f.winner, scores)  # (a)
    for o in a.outputs:  # (d): a group part's table holds exactly the runs its finding compared
        for name, t in o.tables.items():
            key = {"c6": "optimizer", "c7": "norm"}.get(name.split("_")[0])
            if key and key in a.varying and "runs" in t and len(t):
                _, counts = oracle_scores(a, key)
                if counts:
                    assert dict(zip(t[key], t["runs"])) == {k: v for k, v in counts.items() if v}, (t, counts)


@settings(max_examples=200, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])  # fmt: skip
@given(sweeps())
def test_generated_sweeps_keep_the_findings_invariants(runs):
    check_invariants(report(runs))  # (f): nothing raises


@pytest.mark.parametrize("winner_check", ["(a)"])
def test_the_winner_invariant_is_checked_on_its_own_numbers(winner_check):
    """(a) read directly: a significant winner's numbers (the ones its test used) beat the runner-up's."""
    runs = [run(str(i), {"optimizer.name": o, "seed": s}, eps([jitter(t, s + k, 0.02) for k in range(3)]))
            for i, (o, s, t) in enumerate([(o, s, t) for o, t in (("sgd", 9), ("adam", 10)) for s in range(3)])]  # fmt: skip
    (f,) = by(report(runs).findings, "c6", "avg_epoch_time_s")
    assert f.winner == "sgd" and "optimizer=sgd (9" in f.text


@st.composite
def one_key_sweeps(draw):
    """One key with 3-5 settings, unequal repeats (1-5 seeds, often a lone run), 1-6 epochs with a slow first one
    now and then, effects from none to far beyond the noise, jobs that fail. Hypothesis draws the shape and a seed;
    the seed draws the rest uniformly (hypothesis alone favours its simplest values: no effect, equal repeats)."""
    values = ["sgd", "adam", "adagrad", "nesterov", "adadelta"][: draw(st.integers(3, 5))]
    n_epochs = draw(st.integers(1, 6))
    fail = draw(st.sampled_from([0.0, 0.15]))
    slow = draw(st.sampled_from([0.0, 8.0]))  # every run's first epoch slow (worker start-up, cold caches), or none
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    runs = []
    for v in values:
        effect = float(rng.choice([0.0, rng.uniform(0.5, 3.0)]))  # none, or beyond the epoch-to-epoch noise
        for seed in range(int(rng.integers(1, 6))):
            times = [10.0 + effect + rng.normal(0, 0.2) for _ in range(n_epochs)]
            times[0] += slow
            status = "failed" if rng.random() < fail else "complete"
            runs.append(run(str(len(runs)), {"optimizer.name": v, "seed": seed}, eps(times), status))
    return runs


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(one_key_sweeps())
def test_generated_one_key_sweeps_keep_the_findings_invariants(runs):
    check_invariants(report(runs))


def test_the_keys_a_choice_is_made_of_are_not_settings_of_their_own():
    """-m model=torchvision model.name=a,b: model.name (on the command line) is what `model` names, not a second,
    confounded setting."""
    runs = []
    for name in ("mobilenet_v3_small", "shufflenet_v2_x0_5"):
        r = run(str(len(runs)), {"model._target_": "trainbench.models.torchvision_model", "model.name": name},
                eps([5, 5, 5]))  # fmt: skip
        r.info["overrides"] = ["model=torchvision", f"model.name={name}"]
        runs.append(r)
    a = report(runs)
    assert a.varying == ["model"] and not a.ctx.confounded


def test_9_the_scaling_table_matches_cells_like_its_finding():
    """dist.nproc x workers: one scaling row per worker count, each against the 1-rank run at that count (never an
    average over worker counts), as the finding compares matched cells."""
    runs = []
    for w, base, gain in ((0, 10.0, 2.0), (2, 6.0, 1.5)):  # 2 ranks: 2x faster at workers=0, 1.5x at workers=2
        for nproc in (1, 2):
            for seed in range(2):
                t = base / (gain if nproc == 2 else 1.0) + 0.01 * seed
                runs.append(run(str(len(runs)), {"workers": w, "dist.nproc": nproc, "seed": seed}, eps([t, t, t])))
    a = report(runs)
    t = next(o.tables["scaling"] for o in a.outputs if "scaling" in o.tables)
    weak = t[(t["world_size"] == 2) & (t["scaling"] == "weak")]
    assert sorted(weak["workers"]) == [0, 2]
    # each against its own 1-rank baseline (averaged over worker counts both would read 8 / 4.5 = 1.78)
    assert weak.sort_values("workers")["speedup"].tolist() == pytest.approx([2.0, 1.5], rel=0.03)


def test_9_a_diverged_job_in_a_sweep_is_one_line_not_a_traceback(tmp_path):
    from conftest import TINY, train_cli

    p = train_cli(["-m", "faults.nan_at_step=0", *TINY, f"hydra.sweep.dir={tmp_path / 's'}"], tmp_path)
    out = p.stdout + p.stderr
    assert p.returncode != 0 and "ended with Diverged: training diverged" in out
    assert "Traceback" not in out
