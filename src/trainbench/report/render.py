"""Tables for the report: mean (± std over repeats) per setting, and markdown without a tabulate dependency."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

FLOAT_FORMAT = "%.6g"  # CSV floats: 6 significant digits


def agg_by(df: pd.DataFrame, key: str, cols: list[str], order: list[Any]) -> pd.DataFrame:
    """Mean (and std, when settings repeat over seeds) of cols per value of key, in the given order."""
    g = df.groupby(key, sort=False, dropna=False)[cols]
    out = g.mean()
    n = g.size()
    if (n > 1).any():
        out = out.join(g.std().add_suffix("_std"))
    out["runs"] = n
    out = out.reindex([v for v in order if v in out.index])
    return out.reset_index()


def pm(df: pd.DataFrame, floatfmt: str = ".4g") -> pd.DataFrame:
    """Merge each column c with its c_std partner (settings repeated over seeds) into 'mean ± std' text."""
    out = df.copy()
    for c in [c for c in df.columns if f"{c}_std" in df.columns]:
        out[c] = [
            format(m, floatfmt) if pd.isna(sd) else f"{format(m, floatfmt)} ± {format(sd, floatfmt)}"
            for m, sd in zip(df[c], df[f"{c}_std"])
        ]
        out = out.drop(columns=f"{c}_std")
    return out


def md_table(df: pd.DataFrame, floatfmt: str = ".4g") -> str:
    """A pandas frame as a markdown table (no tabulate dependency); mean ± std where seeds repeat."""
    df = pm(df, floatfmt)
    cols = list(df.columns)

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "" if math.isnan(v) else format(v, floatfmt)
        return str(v)

    lines = ["| " + " | ".join(map(str, cols)) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)
