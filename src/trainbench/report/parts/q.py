"""Q1-Q4: the model's facts for each (model, norm, optimizer) among the runs."""

from __future__ import annotations

import json

import pandas as pd

from ..render import md_table
from ..runs import Context, PartOutput


def part_q(ctx: Context) -> PartOutput:
    """Q1-Q4: the model's facts for each (model, norm, optimizer) among the runs (a model column where one is not
    the lab's)."""
    if not ctx.inspect_models or not ctx.done:
        return PartOutput()
    from ...questions import model_facts
    from ..runs import model_label

    seen, facts = set(), []
    for r in ctx.done:
        c = r.info.get("config") or {}
        k = (model_label(c), c.get("norm", {}).get("name"), c.get("optimizer", {}).get("name"))
        if k in seen or len(seen) >= 5:
            continue
        seen.add(k)
        facts.append(model_facts(c))
    lab_only = all(f["model"] == "resnet18" for f in facts)
    keys = ("norm",) if lab_only else ("model", "norm")
    q = pd.DataFrame(
        [
            {
                k: f[k]
                for k in (
                    *keys,
                    "optimizer",
                    "conv_layers",
                    "conv_layers_without_shortcut",
                    "linear_in_features",
                    "trainable_parameters",
                    "gradients",
                    "optimizer_state_tensors",
                    "optimizer_state_elements",
                )
            }
            for f in facts
        ]
    )
    (ctx.root / "inspect.json").write_text(json.dumps(facts, indent=2) + "\n")  # full facts, optimizer state included
    return PartOutput(md=["## Q1-Q4: the model", "", md_table(q), ""], tables={"q1_q4": q})
