"""Curated semantic mutants: one deliberate breakage of one behaviour each, and the tests that must catch it.

mutmut mutates operators and constants; it cannot express "augment the whole epoch before the first batch"
or "skip every fourth bf16 step". These mutants can: each is a source edit (old text -> new text, every old
text must occur exactly once, so a mutant that no longer applies is reported as stale rather than silently
passing). The runner copies the working tree once, applies one mutant at a time, runs its tests with the
copy's src/ first on PYTHONPATH (subprocess runs of train.py see the mutant too), and restores the file.

    python mutation/semantic.py            # all mutants
    python mutation/semantic.py -k bf16    # those whose id contains bf16
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutant:
    id: str
    what: str
    edits: tuple[tuple[str, str, str], ...]  # (file, old, new)
    tests: tuple[str, ...]


M = Mutant
OPTIMIZER_TESTS = (
    "tests/test_config.py::test_each_optimizer_choice_builds_its_torch_class",
    "tests/test_config.py::test_optimizer_state_after_a_real_step_matches_the_algorithm",
)
MUTANTS: list[Mutant] = [
    # 1. the lab's train transforms (loader=torch)
    M(
        "transforms-no-crop",
        "loader=torch without RandomCrop(32, padding=4)",
        (
            (
                "src/trainbench/data/loaders.py",
                "img = TF.crop(TF.pad(img, self.pad), dy, dx, size, size)",
                "img = TF.crop(TF.pad(img, self.pad), self.pad, self.pad, size, size)",
            ),
        ),
        ("tests/test_loaders.py",),
    ),
    M(
        "transforms-no-flip",
        "loader=torch without RandomHorizontalFlip",
        (
            (
                "src/trainbench/data/loaders.py",
                "            if flip:\n                img = TF.hflip(img)",
                "            if False:\n                img = TF.hflip(img)",
            ),
        ),
        ("tests/test_loaders.py",),
    ),
    M(
        "transforms-no-normalize",
        "loader=torch without Normalize",
        (
            (
                "src/trainbench/data/loaders.py",
                "T.Compose([T.ToTensor(), T.Normalize(mean, std)])",
                "T.Compose([T.ToTensor()])",
            ),
        ),
        ("tests/test_loaders.py",),
    ),
    M(
        "normalize-choice-ignored",
        "data.normalize=cifar10 uses the lab's std",
        (("src/trainbench/data/sources.py", "return STD[NORMALIZE_ALIASES.get(name, name)]", 'return STD["lab"]'),),
        ("tests/test_loaders.py",),
    ),
    # 2. optimizers
    M(
        "adagrad-is-sgd",
        "optimizer=adagrad builds torch.optim.SGD",
        (("conf/optimizer/adagrad.yaml", "_target_: torch.optim.Adagrad", "_target_: torch.optim.SGD"),),
        OPTIMIZER_TESTS,
    ),
    M(
        "adadelta-is-sgd",
        "optimizer=adadelta builds torch.optim.SGD",
        (("conf/optimizer/adadelta.yaml", "_target_: torch.optim.Adadelta", "_target_: torch.optim.SGD"),),
        OPTIMIZER_TESTS,
    ),
    M(
        "nesterov-dropped",
        "build_optimizer drops nesterov",
        (
            (
                "src/trainbench/recipe.py",
                'k not in ("name", "_target_", "_partial_")',
                'k not in ("name", "_target_", "_partial_", "nesterov")',
            ),
        ),
        OPTIMIZER_TESTS,
    ),
    # 3. presets
    M(
        "c3-banana",
        "c3 sweeps workers 1,banana",
        (("conf/experiment/c3.yaml", "workers: 0,4,8,12,16", "workers: 1,banana"),),
        ("tests/test_presets.py",),
    ),
    M(
        "c6-not-multirun",
        "c6 with mode: RUN",
        (("conf/experiment/c6.yaml", "mode: MULTIRUN", "mode: RUN"),),
        ("tests/test_presets.py",),
    ),
    M(
        "c7-without-none",
        "c7 sweeps batchnorm only",
        (("conf/experiment/c7.yaml", "norm: batchnorm,none", "norm: batchnorm"),),
        ("tests/test_presets.py",),
    ),
    # 4. stop requests
    M(
        "no-per-batch-stop",
        "the per-batch stop check removed (SIGTERM finishes the epoch)",
        (
            (
                "src/trainbench/timing/epoch.py",
                "        if stop_requested():\n            clock.settle()",
                "        if False:\n            clock.settle()",
            ),
        ),
        ("tests/test_timing.py",),
    ),
    M(
        "device-loader-precompute",
        "DeviceLoader augments the whole epoch before the first batch",
        (
            (
                "src/trainbench/data/loaders.py",
                "    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:\n        n, dev, e",
                "    def __iter__(self):\n        return iter(list(self._batches()))\n\n"
                "    def _batches(self):\n        n, dev, e",
            ),
        ),
        ("tests/test_speed_paths.py",),
    ),
    # 6. channels_last
    M(
        "channels-last-off",
        "channels_last disabled everywhere",
        (
            (
                "src/trainbench/timing/epoch.py",
                "fmt = torch.channels_last if self.channels_last else torch.contiguous_format",
                "fmt = torch.contiguous_format",
            ),
            (
                "src/trainbench/recipe.py",
                "if cfg.channels_last:\n        model = model.to(",
                "if False:\n        model = model.to(",
            ),
        ),
        ("tests/test_speed_paths.py",),
    ),
    # 7. clocks
    M(
        "startup-before-clock",
        "worker start-up before the epoch clock plus a hidden 0.5 s prefetch",
        (
            (
                "src/trainbench/timing/epoch.py",
                "    epoch_start = time.perf_counter()\n    pending: list[_Pending] = []\n    it = None\n",
                "    it = iter(loader)\n    time.sleep(0.5)\n    epoch_start = time.perf_counter()\n    pending: list[_Pending] = []\n",
            ),
        ),
        ("tests/test_timing.py",),
    ),
    M(
        "iter-outside-data-clock",
        "iter(loader) before the data clock (start-up lands in other)",
        (
            (
                "src/trainbench/timing/epoch.py",
                "    pending: list[_Pending] = []\n    it = None\n",
                "    pending: list[_Pending] = []\n    it = iter(loader)\n",
            ),
        ),
        ("tests/test_timing.py",),
    ),
    M(
        "compute-clock-after-step",
        "compute clock started after the step (the step counted as data)",
        (
            (
                "src/trainbench/timing/epoch.py",
                "        m1 = clock.mark()",
                "        ctx.step(x, y, -1)\n        m1 = clock.mark()",
            ),
        ),
        ("tests/test_timing.py",),
    ),
    M(
        "isnan-only",
        "divergence check sees NaN but not inf",
        (
            (
                "src/trainbench/timing/epoch.py",
                "        if not math.isfinite(loss):\n            pending.clear()",
                "        if math.isnan(loss):\n            pending.clear()",
            ),
        ),
        ("tests/test_timing.py",),
    ),
    M(
        "bf16-skips-steps",
        "bf16 skips every fourth optimizer step",
        (
            (
                "src/trainbench/timing/epoch.py",
                "        else:\n            self.optimizer.step()",
                "        elif self.autocast_dtype is None or global_step % 4 != 3:\n            self.optimizer.step()",
            ),
        ),
        ("tests/test_speed_paths.py",),
    ),
    # 9. summarizer
    M(
        "best-workers-argmin",
        "C3's best count is the plain argmin of data time",
        (
            (
                "src/trainbench/report/parts/lab.py",
                "best, more = best_workers(list(data), [matched(e, cells) if cells else e.value for e in data.values()])",
                "best, more = min(data, key=lambda w: data[w].value), False",
            ),
        ),
        ("tests/test_summarize.py::test_c3_best_is_the_first_stop_not_the_lowest",),
    ),
    M(
        "concurrency-any-two",
        "the concurrency warning fires for any two runs on one host",
        (
            (
                "src/trainbench/report/parts/overview.py",
                "if x[2] == y[2] and x[0] < y[1] and y[0] < x[1]",
                "if x[2] == y[2]",
            ),
        ),
        ("tests/test_summarize.py::test_concurrency_warning_only_for_runs_that_overlapped",),
    ),
    # 10. device loader padding, completed runs
    M(
        "device-pad-255",
        "DeviceLoader pads with 255 instead of 0",
        (
            (
                "src/trainbench/data/loaders.py",
                "imgs = torch.nn.functional.pad(imgs, (0, 0, p, p, p, p))",
                "imgs = torch.nn.functional.pad(imgs, (0, 0, p, p, p, p), value=255)",
            ),
        ),
        ("tests/test_loaders.py", "tests/test_speed_paths.py"),
    ),
    M(
        "complete-run-redone",
        'the "already complete" early return removed',
        (
            (
                "src/trainbench/store/runrecord.py",
                "        if done >= cfg.epochs:\n            log.info(",
                "        if False:\n            log.info(",
            ),
        ),
        ("tests/test_faults.py::test_completed_run_is_not_redone",),
    ),
    M(
        "prefetch-factor-ignored",
        "loader.prefetch_factor not passed to the DataLoader",
        (("src/trainbench/data/loaders.py", 'kwargs["prefetch_factor"] = prefetch_factor', "pass"),),
        ("tests/test_loaders.py",),
    ),
    M(
        "eval-in-epoch-clock",
        "work after the last batch timed inside the epoch",
        (
            (
                "src/trainbench/timing/epoch.py",
                "    _drain(pending, stats, clock, epoch, on_batch)\n    stats.epoch_time_s = time.perf_counter() - epoch_start",
                "    _drain(pending, stats, clock, epoch, on_batch)\n    time.sleep(0.3)\n    stats.epoch_time_s = time.perf_counter() - epoch_start",
            ),
        ),
        ("tests/test_timing.py",),
    ),
    M(
        "events-loader-time-dropped",
        "with CUDA events, device time queued by the loader not counted as data",
        (
            (
                "src/trainbench/timing/epoch.py",
                "        data_s = clock.span(m0, m1)",
                "        data_s = 0.0 * clock.span(m0, m1)",
            ),
        ),
        ("tests/test_timing.py", "tests/test_gpusim.py"),
    ),
    M(
        "events-per-step-sync",
        "the events clock reading every step (a hidden per-step stall)",
        (
            (
                "src/trainbench/timing/epoch.py",
                "        if clock.per_step:\n            clock.settle()  # note: the one CPU-GPU sync point of a step",
                "        if True:\n            clock.settle()  # note: the one CPU-GPU sync point of a step",
            ),
        ),
        ("tests/test_gpusim.py",),
    ),
    M(
        "device-loader-layout",
        "the device loader yields channels_last strides whatever the model uses",
        (
            (
                "src/trainbench/data/loaders.py",
                "yield x.contiguous(memory_format=self.memory_format), self.labels[idx]",
                "yield x, self.labels[idx]",
            ),
        ),
        ("tests/test_loaders.py",),
    ),
    M(
        "tf32-on",
        "TF32 allowed whatever tf32 says",
        (
            (
                "src/trainbench/device.py",
                "torch.backends.cudnn.allow_tf32 = bool(cfg.tf32)",
                "torch.backends.cudnn.allow_tf32 = True",
            ),
        ),
        ("tests/test_speed_paths.py",),
    ),
    M(
        "resume-ignores-device",
        "the fingerprint ignores the resolved device",
        (("src/trainbench/store/checkpoint.py", '        c["resolved_device"] = device_type', "        pass"),),
        ("tests/test_checkpoint.py",),
    ),
    # issue 9/11 additions: per-row clock, compute phases, skipped steps, older run dirs
    M(
        "phase-forward-mark-late",
        "the forward phase's end marked after backward (backward counted as forward)",
        (
            (
                "src/trainbench/timing/epoch.py",
                "        phase_end()  # forward + loss\n",
                "",
            ),
            (
                "src/trainbench/timing/epoch.py",
                "        phase_end()  # backward\n",
                "        phase_end()  # backward\n        phase_end()\n",
            ),
        ),
        ("tests/test_timing.py",),
    ),
    M(
        "skipped-not-counted",
        "fp16 steps skipped by the grad scaler counted as taken",
        (("src/trainbench/figures.py", 'batch="skipped", ranks=FIRST', 'batch="skipped", epoch=NONE, ranks=FIRST'),),
        ("tests/test_timing.py",),
    ),
    M(
        "timing-mode-not-per-row",
        "epochs.csv rows without their clock",
        (("src/trainbench/trainer.py", "timing_mode=b.timing,", "timing_mode=None,"),),
        ("tests/test_speed_paths.py",),
    ),
    M(
        "old-header-not-migrated",
        "an older version's epochs.csv appended to under a header that does not match",
        (
            (
                "src/trainbench/store/records.py",
                "        if header is not None and header != columns:",
                "        if False:",
            ),
        ),
        ("tests/test_records.py", "tests/test_speed_paths.py"),
    ),
    # issue 10: data-parallel training
    M(
        "aug-ignores-epoch",
        "crops depend on (seed, index) but not the epoch (every epoch the same crops)",
        (("src/trainbench/data/loaders.py", "    h = _mix32(h ^ (epoch & _M32))\n", "    h = _mix32(h)\n"),),
        ("tests/test_distributed.py::test_augmentation_is_a_function_of_seed_epoch_and_index",),
    ),
    M(
        "shards-contiguous",
        "ranks take contiguous halves of the order (their batches are not one process's global batches)",
        (
            (
                "src/trainbench/data/loaders.py",
                "        order = order[rank::world]  # evaluation",
                "        order = order.chunk(world)[rank]  # evaluation",
            ),
        ),
        ("tests/test_distributed.py::test_epoch_order_shards_are_the_single_process_batches",),
    ),
    M(
        "allreduce-sums",
        "the communication hook sums the gradients instead of averaging them",
        (
            (
                "src/trainbench/parallel/commclock.py",
                "max(self._last_launch, t0)\n        buf.div_(dist.get_world_size())\n",
                "max(self._last_launch, t0)\n",
            ),
        ),
        ("tests/test_distributed.py::test_two_ranks_train_the_same_model_as_one_with_twice_the_batch",),
    ),
    M(
        "events-host-wait-twice",
        "with events, the host wait added to the event span again (data counted twice)",
        (
            (
                "src/trainbench/timing/epoch.py",
                "        data_s = clock.span(m0, m1)",
                "        data_s = 2 * clock.span(m0, m1)",
            ),
        ),
        ("tests/test_gpusim.py::test_host_wait_is_data_time_once_not_twice",),
    ),
    M(
        "no-epoch-barrier",
        "rank 0's end-of-epoch work timed into the other ranks' next epoch (no barrier)",
        (
            (
                "src/trainbench/trainer.py",
                "        if self.ranks.active:\n            barrier()",
                "        if False:\n            barrier()",
            ),
        ),
        ("tests/test_distributed.py::test_rank_0s_end_of_epoch_work_is_outside_the_other_ranks_next_epoch",),
    ),
    M(
        "z-test-not-welch",
        "comparisons by a normal z = 2 instead of Welch's t (too loose for few repeats)",
        (
            (
                "src/trainbench/report/stats.py",
                "float(2 * sps.t.sf(abs(t), df))",
                "float(2 * sps.norm.sf(abs(t) / 1.0197))",
            ),
        ),
        ("tests/test_stats.py::test_false_positive_rate_on_identical_settings",),
    ),
    M(
        "unmatched-cells",
        "a key's values compared across every other key's levels (the other key's effect taken for noise)",
        (
            (
                "src/trainbench/report/stats.py",
                "by_cell.setdefault(tuple(repr(r[0].get(k)) for k in (match or [])), [])",
                "by_cell.setdefault((), [])",
            ),
        ),
        (
            "tests/test_stats.py::test_matched_cells_keep_another_keys_effect_out_of_the_noise",
            "tests/test_findings_sweeps.py::test_two_key_sweep_compares_at_matched_settings",
        ),
    ),
    M(
        "comm-clock-not-reset",
        "the warm-up's all-reduces counted in epoch 0's communication",
        (
            (
                "src/trainbench/trainer.py",
                "            b.ctx.comm.take()  # the warm-up",
                "            pass  # the warm-up",
            ),
        ),
        ("tests/test_distributed.py::test_two_ranks_train_the_same_model_as_one_with_twice_the_batch",),
    ),
    # issue 21: your own model and data
    M(
        "digits-flipped",
        "data.augment=lab flips MNIST's digits",
        (
            (
                "src/trainbench/data/torchvision_data.py",
                '"MNIST": Spec(28, 1, 10, (0.1307,), (0.3081,), False,',
                '"MNIST": Spec(28, 1, 10, (0.1307,), (0.3081,), True,',
            ),
        ),
        ("tests/test_tvdata.py::test_digits_are_cropped_with_padding_side_over_8_and_never_flipped",),
    ),
    M(
        "pad-always-4",
        "crop padding 4 whatever the image side (not side / 8)",
        (("src/trainbench/data/loaders.py", "return max(1, size // 8), flip_fits", "return PAD, flip_fits"),),
        ("tests/test_tvdata.py::test_digits_are_cropped_with_padding_side_over_8_and_never_flipped",),
    ),
    M(
        "classes-not-resolved",
        "run.json keeps model.num_classes null: the report and inspect cannot state the head that trained",
        (
            (
                "src/trainbench/plan.py",
                "cfg.model.num_classes, cfg.data.image_size = classes, size",
                "cfg.data.image_size = size",
            ),
        ),
        (
            "tests/test_models.py::test_twelve_class_imagefolder_reports_the_model_that_trained",
            "tests/test_tvdata.py::test_cifar100_trains_with_a_100_way_head",
        ),
    ),
    M(
        "grayscale-cifar-constants",
        "torchvision datasets normalised with CIFAR-10's constants",
        (
            (
                "src/trainbench/data/sources.py",
                "out.append(ArrayDataset(images, labels, classes, mean, std, spec.flip))",
                "out.append(ArrayDataset(images, labels, classes, flip=spec.flip))",
            ),
        ),
        ("tests/test_tvdata.py::test_grayscale_is_expanded_and_normalised_with_its_own_constants",),
    ),
    M(
        "unknown-model-key-ignored",
        "a key model=resnet18 does not have (model.name) is silently ignored",
        (
            (
                "src/trainbench/models/__init__.py",
                '    k = kind(model_cfg)\n    if k != "custom":',
                "    k = kind(model_cfg)\n    if False:",
            ),
        ),
        ("tests/test_models.py::test_unknown_model_key_in_composed_config_is_refused",),
    ),
    M(
        "output-size-unchecked",
        "a model with the wrong number of outputs trains (no check before the run)",
        (("src/trainbench/models/__init__.py", "    if got != (2, classes):", "    if False:"),),
        ("tests/test_models.py::test_output_size_mismatch_names_both_numbers",),
    ),
]


def _tree_files() -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    return [f for f in out.splitlines() if (ROOT / f).is_file()]


def copy_tree(dst: Path) -> None:
    """The working tree's tracked and untracked-but-not-ignored files (no .venv, outputs, data)."""
    for f in _tree_files():
        (dst / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, dst / f)


def run_one(m: Mutant, tree: Path, timeout: float) -> tuple[str, float, str]:
    """Apply m in tree, run its tests, restore; returns (verdict, seconds, last output line)."""
    originals = {}
    for f, old, _ in m.edits:
        originals.setdefault(f, (tree / f).read_text())
        count = (tree / f).read_text().count(old)
        if count != 1:
            for g, t in originals.items():
                (tree / g).write_text(t)
            return "stale", 0.0, f"{f}: the text to replace occurs {count} times (expected once)"
        (tree / f).write_text((tree / f).read_text().replace(old, new_text(m, f, old)))
    env = {**os.environ, "PYTHONPATH": str(tree / "src"), "HYDRA_FULL_ERROR": "0"}
    t = time.perf_counter()
    try:
        p = subprocess.run(
            [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-m", "not slow", *m.tests],
            cwd=tree,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        rc, out = p.returncode, (p.stdout + p.stderr).strip().splitlines()
    except subprocess.TimeoutExpired:
        rc, out = -1, ["timed out (counted as caught)"]
    finally:
        for f, text in originals.items():
            (tree / f).write_text(text)
    elapsed = time.perf_counter() - t
    failed = [line for line in out if line.startswith(("FAILED", "ERROR"))]
    last = "; ".join([*failed[:3], out[-1]]) if out else ""
    if rc == 0:
        return "SURVIVED", elapsed, last
    if rc in (1, -1):
        return "caught", elapsed, last
    return "error", elapsed, last  # collection error, no tests ran...: not a kill, fix the mutant


def new_text(m: Mutant, f: str, old: str) -> str:
    return next(n for g, o, n in m.edits if g == f and o == old)


def main(argv: list[str] | None = None) -> int:
    """Run the curated mutants; exit 1 if any survived, was stale or errored."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-k", default="", help="run only mutants whose id contains this")
    ap.add_argument("--timeout", type=float, default=600)
    a = ap.parse_args(argv)
    chosen = [m for m in MUTANTS if a.k in m.id]
    with tempfile.TemporaryDirectory(prefix="trainbench-semantic-") as tmp:
        tree = Path(tmp)
        copy_tree(tree)
        # the unmutated tree must pass the same tests, or a "caught" means nothing
        base = Mutant("baseline", "no change", (), tuple(sorted({t for m in chosen for t in m.tests})))
        verdict, secs, last = run_one(base, tree, a.timeout * 2)
        print(f"baseline (unmutated) tests: {'pass' if verdict == 'SURVIVED' else 'FAIL'} in {secs:.0f}s  {last}")
        if verdict != "SURVIVED":
            return 2
        results = []
        for m in chosen:
            verdict, secs, last = run_one(m, tree, a.timeout)
            results.append((m, verdict))
            print(f"{verdict:>8}  {m.id:<26} {secs:5.0f}s  {m.what}  [{last}]", flush=True)
    caught = sum(v == "caught" for _, v in results)
    print(f"\nsemantic mutants: {caught}/{len(results)} caught")
    bad = [(m, v) for m, v in results if v != "caught"]
    for m, v in bad:
        print(f"  {v}: {m.id}: {m.what} (tests: {', '.join(m.tests)})")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
