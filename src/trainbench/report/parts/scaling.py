"""Data-parallel scaling over world sizes: speed-up, efficiency, communication, bandwidth."""

from __future__ import annotations

import math

import pandas as pd

from ..plots import plot_scaling
from ..render import md_table
from ..runs import Context, PartOutput
from ..stats import Finding, compare, estimates

SCALING_COLUMNS = [
    "world_size",
    "batch_size",
    "global_batch",
    "scaling",
    "avg_epoch_time_s",
    "speedup",
    "efficiency",
    "compute_time_s",
    "comm_time_s",
    "comm_estimate_s",
    "bandwidth_gb_s",
    "comm_exposed_s",
    "comm_busy_s",
    "threads_per_rank",
    "runs",
]


AVERAGED = [
    "avg_epoch_time_s",
    "avg_compute_time_s",
    "avg_comm_time_s",
    "avg_comm_exposed_s",
    "comm_bytes_per_step",
    "steps_per_epoch",
    "avg_comm_busy_s",
]


def scaling_table(ok: pd.DataFrame, others: list[str] | None = None) -> pd.DataFrame:
    """tables/scaling.csv: per (world size, per-rank batch) and per level of the other varying keys (`others`: the
    matched cells the finding compares, never averaged together), against 1 rank at the same per-rank batch and
    level (weak scaling) and, where a 1-rank run at the same global batch exists, against it (strong scaling)."""
    others = [k for k in others or [] if k in ok and k not in ("world_size", "batch_size")]
    if others:  # group keys must be hashable and never NaN (pandas drops NaN groups)
        ok = ok.assign(**{k: ok[k].map(repr) for k in others})
    by = ["world_size", "batch_size", *others]
    ok = ok.assign(avg_comm_busy_s=ok["avg_comm_busy_s"] if "avg_comm_busy_s" in ok else math.nan)
    g = ok.groupby(by)[AVERAGED].mean()
    threads = ok.groupby(by)["torch_threads"].agg(lambda v: "/".join(str(int(x)) for x in sorted(set(v.dropna()))))
    n_runs = ok.groupby(by).size()
    rows = []
    for idx, v in g.iterrows():
        ws, bs, *level = idx
        bases = [("weak", (1, bs, *level))] + ([("strong", (1, ws * bs, *level))] if ws > 1 else [])
        for kind, key in bases:
            if key not in g.index:
                continue
            base = g.loc[key]
            speedup = base["avg_epoch_time_s"] / v["avg_epoch_time_s"]
            # the lab's estimate: N-rank compute minus what the same steps took on 1 rank (same per-rank batch)
            est = (
                v["avg_compute_time_s"] - v["steps_per_epoch"] * base["avg_compute_time_s"] / base["steps_per_epoch"]
                if kind == "weak" and ws > 1
                else math.nan
            )
            ring = 2 * (ws - 1) / ws  # ring all-reduce: bytes each rank sends (and receives) per byte of gradient
            # over the time the buckets' all-reduces took (each its own launch to completion, overlaps once); the
            # span from first launch to last completion overlaps backward and would understate the bandwidth
            busy = v["avg_comm_busy_s"] if v["avg_comm_busy_s"] > 0 else v["avg_comm_time_s"]
            bw = (
                ring * v["comm_bytes_per_step"] * v["steps_per_epoch"] / busy / 1e9 if ws > 1 and busy > 0 else math.nan
            )
            rows.append(
                {
                    **{k: eval_repr(x) for k, x in zip(others, level)},
                    "world_size": ws,
                    "batch_size": bs,
                    "global_batch": ws * bs,
                    "scaling": kind,
                    "avg_epoch_time_s": v["avg_epoch_time_s"],
                    "speedup": speedup,
                    "efficiency": speedup / ws,
                    "compute_time_s": v["avg_compute_time_s"],
                    "comm_time_s": v["avg_comm_time_s"],
                    "comm_estimate_s": est,
                    "bandwidth_gb_s": bw,
                    "comm_exposed_s": v["avg_comm_exposed_s"],
                    "comm_busy_s": v["avg_comm_busy_s"],
                    "threads_per_rank": threads.get(idx, ""),
                    "runs": int(n_runs[idx]),
                }
            )
    return pd.DataFrame(rows, columns=[*others, *SCALING_COLUMNS])


def eval_repr(text: str) -> object:
    """A setting's value back from its repr (the grouping key)."""
    import ast

    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def sanity_flags(t: pd.DataFrame, ok: pd.DataFrame) -> list[Finding]:
    """Figures that cannot be true of a fair measurement, each with its likely cause: flagged, never crowned."""
    out = []
    threads = ok.groupby("world_size")["torch_threads"].agg(lambda v: sorted({int(x) for x in v.dropna()}))
    for _, r in t[t["world_size"] > 1].iterrows():
        ws, where = (
            int(r["world_size"]),
            f"{int(r['world_size'])} ranks x batch {int(r['batch_size'])} ({r['scaling']})",
        )
        if r["efficiency"] > 1:
            base = threads.get(1, [])
            cause = (
                f"the 1-rank baseline ran with {base} torch threads against {threads.get(ws, [])} per rank, and "
                "a busy machine slows whichever run it overlaps (see `busy`)"
            )
            out.append(
                Finding(
                    "scaling",
                    "efficiency",
                    None,
                    False,
                    f"**Implausible:** {where}: speed-up {r['speedup']:.3g}x on {ws} ranks, efficiency "
                    f"{r['efficiency']:.0%} (above 100 %: more than linear). Likely cause: {cause}.",
                )
            )
        if not math.isnan(r["comm_estimate_s"]) and r["comm_estimate_s"] < 0:
            out.append(
                Finding(
                    "scaling",
                    "comm_estimate_s",
                    None,
                    False,
                    f"**Implausible:** {where}: the lab's subtraction estimate of communication is "
                    f"{r['comm_estimate_s']:.3g} s (negative: the N-rank step computed faster than the "
                    "1-rank step). Likely cause: unequal baselines (threads per rank, see "
                    "`torch_threads` in summary.csv) or a busy machine during the 1-rank run.",
                )
            )
    bad = ok[(ok["avg_data_time_s"] > ok["avg_epoch_time_s"])] if len(ok) else ok
    for _, r in bad.iterrows():
        out.append(
            Finding(
                "scaling",
                "data_time_s",
                None,
                False,
                f"**Implausible:** run {r['run']}: data time {r['avg_data_time_s']:.3g} s above the epoch's "
                f"{r['avg_epoch_time_s']:.3g} s. Likely cause: clocks that overlap (timing=events).",
            )
        )
    return out


def part_scaling(ctx: Context) -> PartOutput:
    """Data-parallel scaling over world sizes: speed-up, efficiency, measured communication against the lab's
    subtraction estimate, achieved all-reduce bandwidth, and a plot of the epoch split per world size."""
    ok = ctx.ok
    if not len(ok) or "world_size" not in ok or ok["world_size"].nunique() < 2:
        return PartOutput()
    nproc = next((k for k in ctx.by if k.endswith("nproc")), "dist.nproc")
    t = scaling_table(ok, [k for k in ctx.others(nproc) if k != "batch_size"])
    out = PartOutput(tables={"scaling": t})
    out.md += [
        "## Scaling: data-parallel training",
        "",
        "Speed-up = 1-rank epoch time / N-rank epoch time (epochs cover the same data; N ranks share it). "
        "Weak scaling: against 1 rank at the same per-rank batch (the global batch grows with N); strong: "
        "against 1 rank at the same global batch. comm_time_s is measured: the span of each step's gradient "
        "all-reduces (a DDP communication hook), summed over the epoch and averaged over ranks; the "
        "all-reduce runs during backward, so it overlaps compute and includes waiting for the slowest rank. "
        "comm_exposed_s is the part backward waited for (last bucket's launch to the last completion: "
        "communication not hidden behind backward's compute). comm_estimate_s is the lab's subtraction "
        "(N-rank compute minus the same steps' 1-rank compute): it can only see the exposed part, so compare "
        "it with comm_exposed_s. bandwidth_gb_s: ring all-reduce bytes, 2(N-1)/N x gradient bytes per step, "
        "over comm_busy_s (the buckets' own all-reduce times, overlapping buckets counted once). "
        "threads_per_rank: torch threads of each rank; compare only rows with the same count (a 1-rank "
        "baseline with 2 threads against 2 ranks of 1 is not like with like: sweep with dist.threads=1).",
        "",
        md_table(t),
        "",
    ]
    out.md += _comm_lines(t)
    out.md += [""]
    flags = sanity_flags(t, ok)
    out.findings += flags
    key = next((k for k in ctx.by if k.endswith("nproc") and ctx.free(k)), None)
    if key is not None:
        ests = estimates(ctx.groups(key), "avg_epoch_time_s", ctx.others(key))
        f = compare(
            "scaling",
            key,
            "avg_epoch_time_s",
            ests,
            True,
            "fastest world size per epoch",
            ".3g",
            ctx.missing(key),
            ctx.others(key),
        )
        if flags and f.significant:  # an implausible table crowns nothing
            f.significant, f.winner = False, None
            f.text += " Not crowned: the scaling table has implausible figures (flagged above)."
        out.findings.append(f)
    if ctx.plots:
        out.plots.append(plot_scaling(ok, ctx.root / "plots"))
    return out


def _comm_lines(t: pd.DataFrame) -> list[str]:
    """One line per weak-scaling row: the measured all-reduce span and exposed part against the lab's estimate."""
    lines: list[str] = []
    for _, r in t[(t["world_size"] > 1) & (t["scaling"] == "weak")].iterrows():
        if not math.isnan(r["comm_estimate_s"]) and r["comm_time_s"] > 0:
            ratio = r["comm_estimate_s"] / r["comm_time_s"]
            exp = r["comm_exposed_s"]
            vs_exp = f" ({r['comm_estimate_s'] / exp:.2f}x the measured exposed part, {exp:.3g} s)" if exp > 0 else ""
            lines += [
                f"- {int(r['world_size'])} ranks, batch {int(r['batch_size'])} per rank: all-reduce span "
                f"{r['comm_time_s']:.3g} s per epoch, of which {exp:.3g} s exposed; the lab's subtraction "
                f"estimate {r['comm_estimate_s']:.3g} s{vs_exp}, {ratio:.2f}x the span; speed-up "
                f"{r['speedup']:.2f}x, efficiency {r['efficiency']:.0%}."
            ]
    return lines
