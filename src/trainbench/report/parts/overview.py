"""Overview parts: runs left out (and why), warnings on runs that shared a machine or clocks, all runs, plots."""

from __future__ import annotations

from datetime import datetime

from ..plots import plot_epochs
from ..render import md_table
from ..runs import Context, PartOutput, Run, refused_jobs, timing_modes


def part_status(ctx: Context) -> PartOutput:
    """Runs left out of the tables, and a warning when compared runs ran at the same time."""
    out = PartOutput()
    refused = refused_jobs(ctx.root)
    if refused:
        out.md += [
            "## Jobs refused in this invocation",
            "",
            "These jobs' run dirs already held runs of other settings; nothing was trained or overwritten, so "
            "the tables below show the OLD runs for them, not what this invocation asked for. Re-run with "
            "another `hydra.sweep.dir`.",
            "",
        ]
        out.md += [f"- job {r['job']} ({' '.join(r.get('overrides') or [])}): {r['error']}" for r in refused] + [""]
    if len(ctx.done) < len(ctx.runs):
        bad = ctx.table[ctx.table["status"] != "complete"]
        out.md += [
            "## Runs left out of every table (not complete)",
            "",
            md_table(bad[["run", "status", "epochs", "error"]]),
            "",
        ]
    if "busy" in ctx.table and ctx.table["busy"].any():
        b = ctx.table[ctx.table["busy"]]
        out.md += [
            "## Runs measured on a busy machine",
            "",
            "Other processes used the CPU while these runs were timed (or they got far less CPU than runs of "
            "the same settings): their times are distorted, and no finding crowns a setting on them. "
            "Re-run them on a quiet machine.",
            "",
            md_table(b[["run", "status", "max_others_cpu", "mean_cpu_util", "max_load_avg", "busy_why"]]),
            "",
        ]
    if "clamped_s" in ctx.table and (ctx.table["clamped_s"] > 0).any():
        c = ctx.table[ctx.table["clamped_s"] > 0]
        out.md += [
            f"**Clocks overlapped** in run(s) {', '.join(map(str, c['run']))}: data + compute exceeded the "
            "epoch, so other_time_s was clamped to 0 (clamped_s in epochs.csv and summary.csv says by how "
            "much). Their split of the epoch is not exact.",
            "",
        ]
    warn = _concurrency_warning(ctx.done)
    if warn:
        out.md += [warn, ""]
    warn = _timing_mode_warning(ctx.done)
    if warn:
        out.md += [warn, ""]
    return out


def _concurrency_warning(runs: list[Run]) -> str | None:
    spans = []
    for r in runs:
        try:
            a = datetime.fromisoformat(r.info["started_at"])
            b = datetime.fromisoformat(r.info.get("finished_at") or r.info["updated_at"])
        except (KeyError, TypeError, ValueError):
            continue
        spans.append((a, b, (r.info.get("environment") or {}).get("hostname"), r.name))
    overlaps = {
        (x[3], y[3])
        for i, x in enumerate(spans)
        for y in spans[i + 1 :]
        if x[2] == y[2] and x[0] < y[1] and y[0] < x[1]
    }
    if not overlaps:
        return None
    pairs = ", ".join(f"{a}/{b}" for a, b in sorted(overlaps)[:5])
    return (
        f"**Warning:** {len(overlaps)} pair(s) of runs ran at the same time on one machine ({pairs}); "
        "they competed for cores/GPU, so their times are not comparable."
    )


def _timing_mode_warning(runs: list[Run]) -> str | None:
    """A warning when compared figures come from different clocks (e.g. C5: cpu/sync beside cuda/events)."""
    by_mode: dict[str, list[str]] = {}
    mixed = []
    for r in runs:
        modes = timing_modes(r)
        if len(modes) > 1:
            mixed.append(r.name)
        for m in modes:
            by_mode.setdefault(m, []).append(r.name)
    if len(by_mode) <= 1:
        return None
    which = "; ".join(
        f"{m}: {', '.join(names[:6])}{' …' if len(names) > 6 else ''}" for m, names in sorted(by_mode.items())
    )
    text = (
        f"**Warning:** the runs compared here were timed with different clocks ({which}). `events` reads CUDA "
        "events once per epoch and leaves the per-step syncs out, `sync` syncs the device at every reading: "
        "their compute and other times are not measured the same way (see `timing_mode` in summary.csv)."
    )
    if mixed:
        text += f" Runs whose epochs mix both clocks (resumed with another `timing`): {', '.join(mixed)}."
    return text


def part_all_runs(ctx: Context) -> PartOutput:
    cols = [
        *ctx.varying,
        "run",
        "epochs",
        "avg_epoch_time_s",
        "avg_data_time_s",
        "avg_compute_time_s",
        "avg_other_time_s",
        "data_share",
        "avg_train_loss",
        "avg_train_acc",
        "samples_per_s",
    ]
    if not len(ctx.ok):
        return PartOutput()
    return PartOutput(md=["## All runs", "", md_table(ctx.ok[cols]), ""])


def part_plots(ctx: Context) -> PartOutput:
    """Where the epoch goes (stacked bars) and the training curves (per batch when runs have one epoch)."""
    if not ctx.done:
        return PartOutput()
    return PartOutput(plots=plot_epochs(ctx.done, ctx.root / "plots") if ctx.plots else [])
