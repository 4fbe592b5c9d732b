"""Where compute goes: phase split, achieved TFLOP/s and utilisation, operator categories, the phase a setting moves."""

from __future__ import annotations

import math

import pandas as pd

from ...figures import phase_columns
from ..plots import PHASE_NAMES, plot_phases
from ..render import md_table
from ..runs import Context, PartOutput, Run
from ..stats import ALPHA, Estimate, Finding, common_cells, estimates, firm_answer_hint, matched, noise_note, welch


def _op_categories(run: Run, top: int = 5) -> str | None:
    """The top operator categories of a run's profile (share of profiled self time), or None."""
    paths = [run.path / "profile" / "ops.csv", *sorted((run.path / "profile").glob("rank*/ops.csv"))]
    paths = [p for p in paths if p.is_file()]
    if not paths:
        return None
    ops = pd.concat([pd.read_csv(p) for p in paths])  # every rank's profile (with several ranks)
    ops["share"] = ops["self_time_s"] / ops["self_time_s"].sum() if ops["self_time_s"].sum() else 0.0
    if not len(ops):
        return None
    cats = ops.groupby("category")["share"].sum().sort_values(ascending=False).head(top)
    return ", ".join(f"{c} {s:.0%}" for c, s in cats.items())


# The phases each key can move. Its compute finding is about those only; a change in a phase the key cannot move
# is a measurement flag (another process, a busy machine between runs), never a winner. The optimizer runs after
# backward and touches no forward or backward kernel; DataLoader workers and the loader prepare batches before the
# step (pinned memory can move the copy). Keys not listed can move every phase (model, precision, batch size, ...).
PHASES = ("copy", "forward", "backward", "optimizer")
MOVES = {
    "optimizer": ("optimizer",),
    "workers": ("copy",),
    "loader": ("copy",),
    "norm": ("forward", "backward", "optimizer"),
    "seed": (),
}
IMPLAUSIBLE_RATIO = 1.25  # a flag without measured noise only past this ratio: small side effects are tolerated


def movable(key: str) -> tuple[str, ...]:
    """The phases key can move (`optimizer.lr` as `optimizer`, `loader.pin_memory` as `loader`)."""
    return MOVES.get(key, MOVES.get(key.split(".")[0], PHASES))


def _extremes(es: list[Estimate], cells: set, pairs: int) -> tuple[Estimate, Estimate, float | None, str]:
    """(highest, lowest) on the engine's numbers, the Bonferroni-corrected p of their difference (max against min of
    k settings is one of `pairs` comparisons), and the noise (none: no p)."""
    hi, lo = max(es, key=lambda e: matched(e, cells)), min(es, key=lambda e: matched(e, cells))
    t = welch(hi, lo, cells)
    noise = "none" if any(e.noise == "none" for e in es) or min(e.n for e in es) < 2 else t.noise
    p = min(1.0, t.p * pairs) if noise != "none" and not math.isnan(t.p) else None
    return hi, lo, p, noise


def part_compute(ctx: Context) -> PartOutput:
    """Where compute goes: the phase split per run, achieved TFLOP/s and utilisation, the top operator categories
    of profiled runs, and per varying setting the phase that changes most (a finding only past the noise)."""
    phase_cols = [f"avg_{c}" for c in phase_columns()]
    ok = ctx.ok
    if not len(ok) or not all(c in ok for c in phase_cols) or ok[phase_cols].isna().all().all():
        return PartOutput()
    ok = ok[ok[phase_cols].notna().all(axis=1)]
    t = ok[[*ctx.by, "run", *phase_cols, "avg_compute_time_s", "avg_achieved_tflops", "avg_mfu"]].copy()
    for ph, c in zip(PHASE_NAMES, phase_cols):
        t[f"{ph}_share"] = t[c] / t[phase_cols].sum(axis=1)
    out = PartOutput(tables={"compute_phases": t})
    out.md += [
        "## Where compute goes",
        "",
        "Compute per epoch split into its phases (copy = host-to-device copy, forward includes the loss, "
        "optimizer = zero_grad + step), the training step's achieved TFLOP/s (counted FLOPs / compute time) and "
        "utilisation (mfu) against the device's peak (`peak_source` in run.json).",
        "",
        md_table(t),
        "",
    ]
    runs = {r.name: r for r in ctx.done}
    cats = [(name, _op_categories(runs[name])) for name in t["run"] if name in runs]
    cats = [(n, c) for n, c in cats if c]
    if cats:
        out.md += ["Top operator categories (share of the profiled steps' self time, `profile/ops.csv`):", ""]
        out.md += [f"- {n}: {c}" for n, c in cats] + [""]
    profiled = [r.name for r in ctx.done if r.epochs["profiled_steps"].fillna(0).sum() > 0]
    if profiled:
        out.md += [
            f"**Note:** runs {', '.join(profiled)} include steps run under the profiler (slower; `profiled` in "
            "batches.csv): their times are not comparable with unprofiled runs.",
            "",
        ]
    for key in (k for k in ctx.by if ctx.free(k)):
        out.findings += _phase_findings(ctx, key, phase_cols)
    if ctx.plots:
        out.plots.append(plot_phases(t, [runs[n].label() if n in runs else n for n in t["run"]], ctx.root / "plots"))
    return out


def _phase_findings(ctx: Context, key: str, phase_cols: list[str]) -> list[Finding]:
    """For key: the movable phase that changes most (one finding: a winner only past the noise, Bonferroni over the
    phases and pairs it chose from), and a flag for each phase key cannot move that changed anyway."""
    groups = [(v, [g for g in gs if not pd.isna(g[0].get(phase_cols[0]))]) for v, gs in ctx.groups(key)]
    groups = [(v, gs) for v, gs in groups if gs]
    if len(groups) < 2:
        return []
    match = ctx.others(key)
    per_phase = {ph: estimates(groups, f"avg_{ph}_time_s", match) for ph in PHASES}
    cells = common_cells(per_phase["copy"])
    if not cells:
        return []
    k = len(per_phase["copy"])
    pairs = k * (k - 1) // 2
    out = [f for ph in PHASES if ph not in movable(key) and (f := _flag(key, ph, per_phase[ph], cells, pairs))]
    can = [ph for ph in movable(key) if len(per_phase[ph]) > 1]
    if can:
        out.append(_phase_verdict(key, can, per_phase, cells, pairs * len(can)))
    return out


def _phase_verdict(key: str, can: list[str], per_phase: dict, cells: set, tests: int) -> Finding:
    """The phase (of those key can move) whose change is clearest: the smallest corrected p, else the largest ratio."""
    got = {ph: _extremes(per_phase[ph], cells, tests) for ph in can}

    def clearest(ph: str) -> tuple:
        hi, lo, p, _ = got[ph]
        ratio = matched(hi, cells) / matched(lo, cells) if matched(lo, cells) else math.inf
        return (p if p is not None else 2.0, -ratio)

    ph = min(can, key=clearest)
    hi, lo, p, noise = got[ph]
    es = per_phase[ph]
    vals = ", ".join(f"{key}={e.setting} {matched(e, cells):.3g} s" for e in es)
    ratio = matched(hi, cells) / matched(lo, cells) if matched(lo, cells) else math.inf
    head = (
        f"Compute phases across {key} (of the phases {key} can move: {', '.join(can)}): the {ph} phase changes most "
        f"({vals}; {key}={hi.setting} takes {ratio:.3g}x {key}={lo.setting}'s)"
    )
    n = min(e.n for e in es)
    if p is None:
        text = f"{head}, but {noise_note(es)}, so this is not a verdict: {firm_answer_hint(es)}."
        return Finding("compute", f"avg_{ph}_time_s", None, False, text, "none", n, lo.setting, key=key)
    corr = f"p={p:.2g}, Bonferroni over {tests} comparisons"
    within = f"{head}, within the noise ({noise_note(es)}, {corr})."
    if p < ALPHA:
        text = f"{head}, beyond the measured noise ({noise_note(es)}, {corr}). Lowest {ph} time: **{lo.setting}**."
        demoted = f"{head} ({noise_note(es)}, {corr}): not beyond the noise after the report's correction."
        return Finding(
            "compute", f"avg_{ph}_time_s", lo.setting, True, text, noise, n, lo.setting, p, key=key, demoted=demoted
        )
    return Finding("compute", f"avg_{ph}_time_s", None, False, within, noise, n, lo.setting, p, key=key)


def _flag(key: str, ph: str, es: list[Estimate], cells: set, pairs: int) -> Finding | None:
    """A phase key cannot move that changed: past the noise (a p in the report's correction), or without measured
    noise by IMPLAUSIBLE_RATIO. Never a winner."""
    if len(es) < 2:
        return None
    hi, lo, p, noise = _extremes(es, cells, pairs)
    lo_v, hi_v = matched(lo, cells), matched(hi, cells)
    ratio = hi_v / lo_v if lo_v > 0 else math.inf
    if ratio < IMPLAUSIBLE_RATIO or (p is not None and p >= ALPHA):
        return None
    how = f"beyond the noise ({noise_note(es)}, p={p:.2g})" if p is not None else f"with {noise_note(es)}"
    text = (
        f"**Measurement flag:** the {ph} phase, which {key} cannot move, takes {ratio:.3g}x as long at "
        f"{key}={hi.setting} ({hi_v:.3g} s) as at {key}={lo.setting} ({lo_v:.3g} s), {how}. That points at another "
        f"load on the machine while some runs were measured (see `busy` in summary.csv), not at {key}: re-run on a "
        f"quiet machine before reading the other {key} figures."
    )
    demoted = (
        f"{text.split(', beyond the noise')[0]}: not beyond the noise after the report's correction." if p else None
    )
    n = min(e.n for e in es)
    return Finding(
        "compute", f"avg_{ph}_time_s", None, p is not None, text, noise, n, None, p, key=key, demoted=demoted
    )
