"""Where compute goes: phase split, achieved TFLOP/s and utilisation, operator categories, the phase a setting moves."""

from __future__ import annotations

import math

import pandas as pd

from ...figures import phase_columns
from ..plots import PHASE_NAMES, plot_phases
from ..render import md_table
from ..runs import Context, PartOutput, Run
from ..stats import Estimate, Finding, compare, differ, estimates


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


# Phases a setting cannot change: a change beyond the noise there is a disturbed measurement (another process,
# a busy machine between runs), not a finding. The optimizer runs after backward and touches no forward kernel;
# DataLoader workers prepare batches before the step, so the optimizer's step itself does not depend on them.
CANNOT_CHANGE = {"optimizer": ("copy", "forward"), "workers": ("optimizer",)}
IMPLAUSIBLE_RATIO = 1.25  # and only when the change is this large: small real side effects (caches) are tolerated


def _spread_in_se(es: list[Estimate]) -> float:
    """(highest - lowest) in combined standard errors (the difference in seconds when the noise is unknown or 0)."""
    hi, lo = max(es, key=lambda e: e.value), min(es, key=lambda e: e.value)
    se = math.hypot(hi.se, lo.se)
    return (hi.value - lo.value) / se if se > 0 and not math.isnan(se) else hi.value - lo.value


def implausible(key: str, per_phase: dict[str, list[Estimate]]) -> Finding | None:
    """A phase that `key` cannot change, changing beyond the noise and by IMPLAUSIBLE_RATIO: flagged, never crowned."""
    for ph in CANNOT_CHANGE.get(key, ()):
        es = per_phase.get(ph) or []
        if len(es) < 2:
            continue
        hi, lo = max(es, key=lambda e: e.value), min(es, key=lambda e: e.value)
        if lo.value > 0 and hi.value / lo.value >= IMPLAUSIBLE_RATIO and differ(hi, lo):
            return Finding(
                "compute",
                f"avg_{ph}_time_s",
                None,
                False,
                f"**Disturbed measurement:** the {ph} phase, which {key} cannot change, takes "
                f"{hi.value / lo.value:.3g}x as long at {key}={hi.setting} ({hi.value:.3g} s) as at "
                f"{key}={lo.setting} ({lo.value:.3g} s), beyond the noise. That is evidence of another "
                "load on the machine while some runs were measured (see `busy` in summary.csv), not an "
                f"effect of {key}: re-run on a quiet machine before reading the other {key} figures.",
                hi.noise,
                min(hi.n, lo.n),
            )
    return None


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
    for key in ctx.by:
        out.findings += _phase_findings(ctx, key, phase_cols)
    out.plots.append(plot_phases(t, [runs[n].label() if n in runs else n for n in t["run"]], ctx.root / "plots"))
    return out


def _phase_findings(ctx: Context, key: str, phase_cols: list[str]) -> list[Finding]:
    """The phase that changes most with key, against its noise (or the implausible-figures flag); none or one."""
    groups = [(v, [g for g in gs if not pd.isna(g[0].get(phase_cols[0]))]) for v, gs in ctx.groups(key)]
    groups = [(v, gs) for v, gs in groups if gs]
    if len(groups) < 2:
        return []
    match = ctx.others(key)
    per_phase = {ph: estimates(groups, f"avg_{ph}_time_s", match) for ph in PHASE_NAMES}
    flag = implausible(key, per_phase)
    if flag is not None:
        return [flag]
    spread = {ph: _spread_in_se(es) for ph, es in per_phase.items() if len(es) > 1}
    if not spread:
        return []
    ph = max(spread, key=spread.get)  # the phase whose change with this setting stands out most from its noise
    es = per_phase[ph]
    hi, lo = max(es, key=lambda e: e.value), min(es, key=lambda e: e.value)
    f = compare("compute", key, f"avg_{ph}_time_s", es, True, f"lowest {ph} time per epoch", ".3g", match=match)
    vals = ", ".join(f"{key}={e.setting} {e.value:.3g} s" for e in es)
    sig = (
        "a difference beyond the measured noise"
        if differ(hi, lo)
        else "no run-to-run noise was measured to judge it"
        if "none" in (hi.noise, lo.noise)
        else "a difference within the measured noise: it may not be real"
    )
    f.text = (
        f"Compute phases across {key}: the {ph} phase changes most ({vals}; {key}={hi.setting} takes "
        f"{hi.value / lo.value if lo.value else math.inf:.3g}x {key}={lo.setting}'s), {sig}. " + f.text
    )
    return [f]
