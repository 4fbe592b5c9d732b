"""Q1-Q4: the model's facts for each (norm, optimizer) pair among the runs."""

from __future__ import annotations

import json

import pandas as pd

from ..render import md_table
from ..runs import Context, PartOutput


def part_q(ctx: Context) -> PartOutput:
    """Q1-Q4: the model's facts for each (norm, optimizer) pair among the runs."""
    if not ctx.inspect_models or not ctx.done:
        return PartOutput()
    from ...inspect import model_facts

    seen, facts = set(), []
    for r in ctx.done:
        c = r.info.get("config") or {}
        k = (c.get("norm", {}).get("name"), c.get("optimizer", {}).get("name"))
        if k in seen or len(seen) >= 5:
            continue
        seen.add(k)
        facts.append(model_facts(c))
    q = pd.DataFrame([{k: f[k] for k in ("norm", "optimizer", "conv_layers", "conv_layers_without_shortcut",
                                           "linear_in_features", "trainable_parameters", "gradients",
                                           "optimizer_state_tensors", "optimizer_state_elements")} for f in facts])  # fmt: skip
    (ctx.root / "inspect.json").write_text(json.dumps(facts, indent=2) + "\n")  # full facts, optimizer state included
    return PartOutput(md=["## Q1-Q4: the model", "", md_table(q), ""], tables={"q1_q4": q})
