"""`python -m trainbench.inspect [overrides] [--json PATH]`: lab questions Q1-Q4 for the configured model.

Q1 convolutional layers (modules of type Conv1d/2d/3d; with and without the shortcut convs, where the model has
them: convs inside a module named `shortcut` or `downsample`), Q2 the last Linear layer's input size, Q3/Q4
trainable parameters and gradients (counted from .grad after a real forward/backward/step with the configured
optimizer, on the data's image size and class count), what the optimizer keeps as state, and a per-layer table.
Any model= works: the lab's ResNet-18, torchvision, timm or your own class.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn


def _get(cfg: Any, dotted: str, default: Any = None) -> Any:
    node = cfg
    for part in dotted.split("."):
        if node is None or part not in node:
            return default
        node = node[part]
    return node


def model_facts(cfg: Any, layers: bool = False) -> dict[str, Any]:
    """Q1-Q4 for cfg (a DictConfig or the plain dict stored in run.json)."""
    from .models import create, label
    from .recipe import build_optimizer

    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.create(cfg)
    torch.manual_seed(0)
    model_cfg = _get(cfg, "model") or {"width": 64}
    norm, width = _get(cfg, "norm.name", "batchnorm"), _get(cfg, "model.width", None)
    classes, size = data_shape(cfg)
    model = create(model_cfg, norm, classes)
    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.modules.conv._ConvNd)]
    shortcut = [m for n, m in convs if SHORTCUT & set(n.split("."))]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    rows: list[dict[str, Any]] = []
    hooks = _layer_hooks(model, rows) if layers else []
    opt = build_optimizer(cfg.optimizer, model.parameters())
    x = torch.randn(2, 3, size, size)
    y = torch.tensor([0, 1]) % classes
    loss = nn.functional.cross_entropy(model(x), y)  # a real forward and backward pass
    opt.zero_grad(set_to_none=True)
    loss.backward()
    for h in hooks:
        h.remove()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    opt.step()
    state = _optimizer_state(opt)
    return {
        "model": label(model_cfg),
        "norm": norm,
        "optimizer": _get(cfg, "optimizer.name", "?"),
        "width": width,
        "image_size": size,
        "classes": classes,
        "conv_layers": len(convs),
        "conv_layers_without_shortcut": len(convs) - len(shortcut),
        "shortcut_convs": len(shortcut),
        "shortcut_kernel": "1x1" if shortcut and all(set(m.kernel_size) == {1} for m in shortcut) else "",
        "linear_in_features": linears[-1].in_features if linears else None,
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "gradients": sum(g.numel() for g in grads),
        "gradient_tensors": len(grads),
        "optimizer_state": state,
        "optimizer_state_tensors": sum(v["tensors"] for v in state.values()),
        "optimizer_state_elements": sum(v["elements"] for v in state.values()),
        "norm_layers": sum(1 for m in model.modules() if isinstance(m, nn.modules.batchnorm._NormBase)),
        **({"layers": rows} if layers else {}),
    }


def _layer_hooks(model: nn.Module, rows: list[dict[str, Any]]) -> list[Any]:
    """Forward hooks that append each leaf layer's name, type, output shape and parameter count to rows."""
    hooks = []
    for name, mod in model.named_modules():
        if name and not list(mod.children()) and not isinstance(mod, nn.Sequential):  # empty Sequential: identity

            def hook(m: nn.Module, i: Any, o: torch.Tensor, name: str = name) -> None:
                params = sum(p.numel() for p in m.parameters(recurse=False))
                rows.append(
                    {"layer": name, "type": type(m).__name__, "output_shape": list(o.shape), "parameters": params}
                )

            hooks.append(mod.register_forward_hook(hook))
    return hooks


def _optimizer_state(opt: torch.optim.Optimizer) -> dict[str, dict[str, int]]:
    """Per state key (momentum_buffer, exp_avg, ...): how many tensors and elements the optimizer keeps."""
    state: dict[str, dict[str, int]] = {}
    for s in opt.state.values():
        for k, v in s.items():
            e = state.setdefault(k, {"tensors": 0, "elements": 0})
            if torch.is_tensor(v):
                e["tensors"] += 1
                e["elements"] += v.numel()
    return state


SHORTCUT = {"shortcut", "downsample"}  # the module names the lab's and torchvision's ResNets give shortcut convs


def data_shape(cfg: Any) -> tuple[int, int]:
    """(classes, image side) the model is built for: run.json's resolved numbers, else the data's (unread)."""
    from .data.sources import class_count, image_side

    classes, data = _get(cfg, "model.num_classes"), _get(cfg, "data")
    if classes is None:
        classes = class_count(data) if data is not None else 10
    return int(classes), image_side(data) if data is not None else 32


def compose(overrides: list[str]) -> DictConfig:
    """The config train.py would use with these overrides (real Hydra composition)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from .config import CONF_DIR, check_command_line, register_configs

    check_command_line(overrides, CONF_DIR)
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides)


def render(f: dict[str, Any]) -> str:
    """The answers as text."""
    lab = f.get("model", "resnet18") == "resnet18"
    what = f"ResNet-18 (norm={f['norm']}, model.width={f['width']})" if lab else f["model"]
    kernel = f.get("shortcut_kernel", "1x1")
    q1 = (
        f"{f['conv_layers_without_shortcut']} without the {kernel + ' ' if kernel else ''}shortcut convs, "
        f"{f['conv_layers']} with them"
        if f.get("shortcut_convs", 1)
        else f"{f['conv_layers']} (it has no shortcut convs)"
    )
    lines = [
        f"model: {what}, optimizer={f['optimizer']}; built for {f.get('classes', 10)} classes at "
        f"{f.get('image_size', 32)}x{f.get('image_size', 32)}",
        f"Q1  convolutional layers: {q1}",
        "    (counted: modules of type Conv1d/Conv2d/Conv3d; shortcut convs: those inside a module named "
        "shortcut or downsample)",
        "Q2  input dimension of the last linear layer: "
        + (str(f["linear_in_features"]) if f["linear_in_features"] is not None else "none (the model has no Linear)"),
        f"Q3/Q4 trainable parameters: {f['trainable_parameters']:,}; gradients after backward: {f['gradients']:,} "
        f"(in {f['gradient_tensors']} .grad tensors)",
        f"    optimizer state after one step: {f['optimizer_state_elements']:,} elements in "
        f"{f['optimizer_state_tensors']} tensors",
    ]
    lines += [f"      {k}: {v['tensors']} tensors, {v['elements']:,} elements" for k, v in f["optimizer_state"].items()]
    lines.append(f"    normalization layers: {f['norm_layers']}")
    if f.get("layers"):
        lines += ["", f"{'layer':<28}{'type':<14}{'output shape':<22}{'parameters':>12}"]
        lines += [
            f"{r['layer']:<28}{r['type']:<14}{str(r['output_shape']):<22}{r['parameters']:>12,}" for r in f["layers"]
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    p = argparse.ArgumentParser(prog="python -m trainbench.inspect", description=__doc__.splitlines()[0])
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. optimizer=adam norm=none")
    p.add_argument(
        "--json", type=Path, default=None, help="also write the answers as JSON to this path (default: write nothing)"
    )
    p.add_argument("--no-layers", action="store_true", help="leave out the per-layer table")
    a = p.parse_args(argv)
    from .config import ConfigError
    from .console import exit_with
    from .data.sources import DataError

    try:
        facts = model_facts(compose(a.overrides), layers=not a.no_layers)
    except (ConfigError, DataError) as e:  # one line, as train.py prints it
        exit_with(e)
    print(render(facts))
    if a.json is not None:
        a.json.write_text(json.dumps(facts, indent=2) + "\n")
        print(f"\nwrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
