"""The lab's parts C2-C7: per-epoch splits, the worker sweep (C3) and its profile (C4), devices, optimizers, norm."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import pandas as pd

from ..plots import plot_c3
from ..render import agg_by, md_table
from ..runs import Context, PartOutput, Run, core_count, in_cells
from ..stats import (
    ALPHA,
    Estimate,
    Finding,
    accuracy_finding,
    common_cells,
    compare,
    differ,
    estimates,
    matched,
    measured,
    noise_note,
    welch,
)

C2_IN_REPORT = 3  # C2 tables shown in report.md; the others are only in tables/


def best_workers(counts: list[int], data_times: list[float]) -> tuple[int, bool]:
    """The lab's rule: the worker count after which data-loading time stops decreasing.

    Returns (best, still_decreasing); still_decreasing means the largest count was still the fastest,
    so more workers should be tried.
    """
    pairs = sorted(zip(counts, data_times))
    for (c, t), (_, t_next) in zip(pairs, pairs[1:]):
        if t_next >= t:
            return c, False
    return pairs[-1][0], True


def _c2(run: Run) -> pd.DataFrame:
    cols = ["epoch", "train_loss", "train_acc", "data_time_s", "compute_time_s", "other_time_s", "epoch_time_s"]
    t = run.epochs[cols].copy()
    total = {"epoch": "Total", **{c: t[c].sum() for c in cols[3:]}, "train_loss": math.nan, "train_acc": math.nan}
    avg = {"epoch": "Avg", **{c: t[c].mean() for c in cols[1:]}}
    t["epoch"] = t["epoch"].astype(int).astype(str)
    return pd.concat([t, pd.DataFrame([total, avg])], ignore_index=True)


def part_c2(ctx: Context) -> PartOutput:
    """C2: per-epoch time split with Total and Avg rows, one table per distinct setting (first few in the report)."""
    out = PartOutput()
    seen: dict[str, Run] = {}
    for r in ctx.done:
        seen.setdefault(r.label(), r)
    for i, r in enumerate(seen.values()):
        t = _c2(r)
        out.tables[f"c2_{r.name.replace('/', '_')}"] = t
        if i < C2_IN_REPORT:
            out.md += [f"## C2: time per epoch, run {r.name} {r.settings or ''}", "", md_table(t), ""]
    if len(seen) > C2_IN_REPORT:
        out.md += [f"C2 tables of the other {len(seen) - C2_IN_REPORT} settings: `tables/c2_*.csv`.", ""]
    return out


def _worker_counts(ctx: Context) -> list[int]:
    return sorted(int(w) for w in ctx.order("workers")) if "workers" in ctx.by else []


def _is_c4_sweep(counts: list[int]) -> bool:
    """1 worker against one other count: a C4 comparison, whose best count comes from C3, not from here."""
    return len(counts) == 2 and 1 in counts


def _lab_rule(ctx: Context) -> tuple[dict[int, Estimate], int, bool]:
    """Data-time estimates per worker count (ascending) and the lab's best count (and still-decreasing flag).

    Shared by C3 and C4, so that both parts always name the same best count."""
    groups = sorted(ctx.groups("workers"), key=lambda g: g[0])
    data = {e.setting: e for e in estimates(groups, "total_data_time_s", ctx.others("workers"))}
    cells = common_cells(list(data.values()))
    best, more = best_workers(list(data), [matched(e, cells) if cells else e.value for e in data.values()])
    return data, best, more


C3_COLUMNS = [
    "total_data_time_s",
    "total_compute_time_s",
    "total_other_time_s",
    "total_epoch_time_s",
    "avg_epoch_time_s",
    "data_share",
]


def _rule_finding(data: dict[Any, Estimate], best: Any, more: bool) -> Finding:
    """The lab's rule as a finding, on the engine's numbers (the cells every count ran in): significant when the step
    that made `best` the best (the decrease into it, or at the smallest count the increase after it) is beyond the
    measured noise of every count."""
    ests = list(data.values())
    cells = common_cells(ests)
    ws = list(data)
    i = ws.index(best)
    other = data[ws[i - 1]] if i > 0 else (data[ws[i + 1]] if i + 1 < len(ws) else None)
    t = welch(other, data[best], cells) if other is not None else None
    noise, n, p = measured(ests, cells, t)
    sig = p is not None and p < ALPHA and t.diff > 0  # the other count's data time is higher than best's
    low = min(ests, key=lambda e: matched(e, cells)) if cells else None
    head = (
        "By the lab's rule (data-loading time stops decreasing after it) the best worker count is "
        + (f"**{best}**" if sig else f"{best}")
        + (" (still decreasing at the largest count tried: try more workers)" if more else "")
        + (f"; lowest data-loading time {matched(low, cells):.3g} s with {low.setting} workers. " if low else ". ")
    )
    firm = "repeat each count (e.g. `seed=0,1,2`) for a firm answer"
    if noise == "none":
        tail = f"But {noise_note(ests)}, so the rule's choice is not firm here: {firm}."
    else:
        tail = f"The data-time step around it is within the noise ({noise_note(ests)}, p={t.p:.2g}): {firm}."
    text = head + ("The step to it is beyond the noise." if sig else tail)
    demoted = None
    if p is not None:
        demoted = head + f"The data-time step to it (p={p:.2g}) is not beyond the noise after the report's correction: "
        demoted += f"{firm}."
    return Finding("c3", "total_data_time_s", best, sig, text, noise, n, best, p, key="workers", demoted=demoted)


def part_c3(ctx: Context) -> PartOutput:
    """C3: data-loading time per worker count, the lab's best, the fastest by epoch time, and a diagnosis."""
    counts = _worker_counts(ctx)
    if len(counts) < 2 or _is_c4_sweep(counts) or not ctx.free("workers"):
        return PartOutput()  # (workers confounded with another key: the report says so once, at the top)
    out = PartOutput()
    agg = agg_by(ctx.ok, "workers", C3_COLUMNS, sorted(ctx.order("workers")))
    out.tables["c3_workers"] = agg
    data, best, more = _lab_rule(ctx)
    match = ctx.others("workers")
    epoch = estimates(sorted(ctx.groups("workers"), key=lambda g: g[0]), "avg_epoch_time_s", match)
    out.findings.append(_rule_finding(data, best, more))
    fastest = compare(
        "c3", "workers", "avg_epoch_time_s", epoch, True, "fastest worker count by epoch time", ".3g", match=match
    )
    out.findings.append(fastest)
    out.findings.append(Finding("c3", "diagnosis", None, False, _c3_diagnosis(ctx, agg, best, epoch, fastest)))
    out.md += ["## C3: data-loading time per worker count (summed over epochs)", "", md_table(agg), ""]
    if best != 1:
        out.md += [
            f"Next (C4, 1 worker against the best count): `{sweep_command(ctx, 'experiment=c4', f'workers=1,{best}')}`",
            "",
        ]
    else:
        out.md += [
            "C4 compares 1 worker with the best count; here the best count is 1 itself, so there is nothing "
            "to compare (try the fastest count by epoch time instead).",
            "",
        ]
    if ctx.plots:
        out.plots.append(plot_c3(agg, ctx.root / "plots"))
    return out


def _c3_diagnosis(ctx: Context, agg: pd.DataFrame, best: int, epoch: list[Estimate], fastest: Finding) -> str:
    """Data- or compute-bound, and what the workers cost, in words from the numbers."""
    a = agg.set_index("workers")
    lo, hi = a.index.min(), a.index.max()
    share = a["data_share"]
    cores = core_count(ctx)
    parts = []
    if share.max() < 0.1:
        parts.append(
            f"Compute-bound: data loading is at most {share.max():.1%} of the epoch at any worker count "
            f"({share.idxmax()} workers), so the worker count can change the epoch by little."
        )
    elif share.get(lo, 0) >= 0.5:
        parts.append(f"Data-bound at {lo} workers: {share[lo]:.0%} of the epoch is spent waiting for data.")
    else:
        parts.append(f"Data loading is {share.min():.1%}-{share.max():.1%} of the epoch across worker counts.")
    est = {e.setting: e for e in epoch}
    if lo in est and hi in est and est[hi].value > est[lo].value and differ(est[hi], est[lo]):
        parts.append(
            f"More workers made the epoch slower ({est[lo].value:.3g} s at {lo} workers, "
            f"{est[hi].value:.3g} s at {hi}): "
            f"worker processes compete with the training computation for this machine's "
            f"{cores if cores else 'few'} CPU cores (environment.cpu_count in run.json); their cost shows in compute "
            f"({a.loc[lo, 'total_compute_time_s']:.3g} s -> {a.loc[hi, 'total_compute_time_s']:.3g} s) and in other "
            f"(start-up and hand-over, {a.loc[lo, 'total_other_time_s']:.3g} s -> "
            f"{a.loc[hi, 'total_other_time_s']:.3g} s), "
            "not in data time."
        )
    # one verdict per question: this sentence follows the epoch-time finding, never contradicts it
    if fastest.significant and fastest.winner != best:
        parts.append(
            f"The lab's rule looks at data time only; by whole-epoch time {fastest.winner} workers is the "
            "fastest setting, beyond the noise."
        )
    elif not fastest.significant and len(epoch) > 1:
        parts.append("By whole-epoch time no worker count is distinguishably fastest here (see the finding above).")
    return " ".join(parts)


def part_c4(ctx: Context) -> PartOutput:
    """C4: 1 worker against the best count (from a C3 sweep, or the other count of a C4 sweep), explained."""
    counts = _worker_counts(ctx)
    if 1 not in counts or len(counts) < 2 or not ctx.free("workers"):
        return PartOutput()
    if _is_c4_sweep(counts):
        best = next(c for c in counts if c != 1)
        source = "the count given on the command line (from C3)"
    else:
        _, best, _ = _lab_rule(ctx)
        source = "the best count of this C3 sweep by the lab's rule"
        if best == 1:
            return PartOutput()
    one = [r for r in ctx.done if r.settings.get("workers") == 1]
    bst = [r for r in ctx.done if r.settings.get("workers") == best]
    if not one or not bst:
        return PartOutput()
    a, b = one[0].epochs, bst[0].epochs
    t = pd.DataFrame({"epoch": a["epoch"].astype(int).astype(str)})
    for tag, e in (("1w", a), (f"{best}w", b)):
        for c in ("data_time_s", "compute_time_s", "other_time_s", "epoch_time_s"):
            t[f"{c}_{tag}"] = (
                e[c].values[: len(t)] if len(e) >= len(t) else list(e[c].values) + [math.nan] * (len(t) - len(e))
            )
    t = pd.concat(
        [t, pd.DataFrame([{"epoch": "Total", **t.iloc[:, 1:].sum()}, {"epoch": "Avg", **t.iloc[:, 1:].mean()}])]
    )
    out = PartOutput(tables={"c4_profile": t})
    out.md += [f"## C4: 1 worker against {best} workers ({source}), per epoch", "", md_table(t), ""]

    def split(e: pd.DataFrame) -> tuple[float, float, float, float]:
        ep = e["epoch_time_s"].mean()
        return e["data_time_s"].mean(), e["compute_time_s"].mean(), ep, e["data_time_s"].sum() / e["epoch_time_s"].sum()

    d1, c1, e1, s1 = split(a)
    d2, c2, e2, s2 = split(b)
    groups = [(w, g) for w, g in ctx.groups("workers") if w in (1, best)]
    match = ctx.others("workers")
    why = _c4_why(ctx, best, groups, match, (d1, c1, s1), (d2, c2, s2))
    text = (
        f"C4: with 1 worker, data loading took {d1:.3g} s and compute {c1:.3g} s per epoch ({s1:.0%} of a "
        f"{e1:.3g} s epoch waiting for data); with {best} workers {d2:.3g} s and {c2:.3g} s ({s2:.0%} of "
        f"{e2:.3g} s). The difference: " + " ".join(why)
    )
    ests = estimates(groups, "avg_epoch_time_s", match)
    verdict = compare(
        "c4", "workers", "avg_epoch_time_s", ests, True, "faster of the two by epoch time", ".3g", match=match
    )
    out.findings += [Finding("c4", "explanation", None, False, text), verdict]
    return out


def group_part(ctx: Context, key: str, part: str, title: str, accuracy: bool) -> PartOutput:
    """C5/C6/C7 and models: a table per value of key, the fastest setting and (where training differs) the most
    accurate; the findings' part is `part` up to its first underscore (c6_optimizer: c6)."""
    if (key not in ctx.by and not ctx.missing(key)) or not ctx.free(key):
        return PartOutput()
    if not ctx.done:
        return PartOutput()
    cols = [
        "avg_epoch_time_s",
        "avg_data_time_s",
        "avg_compute_time_s",
        "avg_other_time_s",
        "avg_train_loss",
        "avg_train_acc",
        "final_train_acc",
        "final_test_acc",
    ]
    groups = ctx.groups(key)
    missing = ctx.missing(key)
    match = ctx.others(key)
    ests = estimates(groups, "avg_epoch_time_s", match)
    # the table holds the runs the findings compare: those in the cells every setting of key ran in
    ok = in_cells(ctx.ok, match, common_cells(ests)) if len(ests) > 1 else ctx.ok
    agg = agg_by(ok, key, cols, ctx.order(key)) if key in ok else pd.DataFrame()
    out = PartOutput(tables={part: agg}, md=[f"## {title}", "", md_table(agg), ""])
    out.findings.append(
        compare(
            part.split("_")[0], key, "avg_epoch_time_s", ests, True, f"fastest {key} per epoch", ".3g", missing, match
        )
    )
    if part == "c5_device" and len(ests) > 1:
        slow, quick = max(e.value for e in ests), min(e.value for e in ests)
        out.md += [f"The slowest device takes {slow / quick:.3g}x as long per epoch as the fastest.", ""]
    if accuracy:
        acc = estimates(groups, "avg_train_acc", match)
        out.findings.append(accuracy_finding(part.split("_")[0], key, acc, ctx.classes(), missing, match))
    if key == "norm":
        first = {}  # one run per norm value (the first of each), whatever the sweep's loop order
        for r in ctx.done:
            first.setdefault(r.settings["norm"], r)
        per_epoch = pd.DataFrame({v: r.epochs.set_index("epoch")["train_acc"] for v, r in first.items()}).T
        per_epoch.columns = [f"epoch {int(c)}" for c in per_epoch.columns]
        out.md += ["Per-epoch training top-1:", "", md_table(per_epoch.reset_index(names="norm")), ""]
    return out


def _group_part(key: str, part: str, title: str, accuracy: bool) -> Callable[[Context], PartOutput]:
    """group_part for one key, as a part (a function of the context alone)."""
    fn = functools.partial(group_part, key=key, part=part, title=title, accuracy=accuracy)
    fn.__name__ = f"part_{part}"  # type: ignore[attr-defined]
    return fn


def sweep_command(ctx: Context, *new: str) -> str:
    """A command for a next sweep that keeps this sweep's own overrides (data=..., data.root=..., model.width=...)
    and replaces the keys given in `new` (and the ones that varied, which the next sweep sets itself)."""
    replaced = {o.split("=", 1)[0] for o in new} | set(ctx.varying) | {"experiment"}
    keep: list[str] = []
    for r in ctx.done[:1]:
        for o in r.info.get("overrides") or []:
            k = o.split("=", 1)[0].lstrip("+~")
            if k not in replaced and not k.startswith("hydra.") and o not in keep:
                keep.append(o)
    return " ".join(["python train.py", *new, *keep])


def _c4_why(ctx: Context, best: int, groups: list, match: list[str], one: tuple, other: tuple) -> list[str]:
    """C4's explanation of the difference, in sentences that agree with the noise (data, compute, share)."""
    d1, c1, s1 = one
    d2, c2, s2 = other
    cores = core_count(ctx)
    why = []
    if s1 > 0.2 and d2 < d1:
        why.append(
            f"one worker process cannot prepare batches as fast as the main process trains on them, so the "
            f"loop waits ({s1:.0%} of the epoch); {best} workers prepare batches in parallel and the wait falls "
            f"to {s2:.0%}."
        )
    elif s1 <= 0.2:
        why.append(
            f"even one worker keeps up with training here (data is {s1:.0%} of the epoch), so more workers "
            "have little to gain."
        )
    comp = {e.setting: e for e in estimates(groups, "avg_compute_time_s", match)}
    if c2 > c1 * 1.05 and 1 in comp and best in comp:
        if differ(comp[best], comp[1]):  # one verdict: a rise is explained only when it is beyond the noise
            why.append(
                f"Compute rose from {c1:.3g} s to {c2:.3g} s per epoch with {best} workers, beyond the noise: "
                f"the workers compete with training for the {cores or 'few'} CPU cores."
            )
        elif any(e.noise == "none" for e in comp.values()):
            why.append(
                f"Compute went from {c1:.3g} s to {c2:.3g} s per epoch, but {noise_note(list(comp.values()))}: "
                "not explained as an effect."
            )
        else:
            why.append(
                f"Compute went from {c1:.3g} s to {c2:.3g} s per epoch, within the noise "
                f"({noise_note(list(comp.values()))}): not explained as an effect."
            )
    return why
