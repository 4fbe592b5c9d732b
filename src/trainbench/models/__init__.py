"""Which network a run trains (model=): the lab's ResNet-18, any torchvision or timm model, or the user's own class.

model=resnet18 (the default) has no `_target_`: trainbench.models.resnet.ResNet18 with model.width. Every other choice
names a callable in model._target_: torchvision and timm name trainbench's factories below (they check
model.name and list close matches), model=custom the user's class, importable from the working directory or
PYTHONPATH. The other keys are keyword arguments; num_classes is the data's class count (passed where the class
takes it). check_model() builds the model once before any run file is written and pushes one batch through it,
so that a wrong output size or an input size the model cannot take ends the command with one line.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..config import MODEL_TARGETS, ConfigError, close_matches, model_key_error


def kind(m: Mapping) -> str:
    """resnet18 | torchvision | timm | custom, from a model config (a DictConfig or run.json's dict)."""
    target = m.get("_target_")
    return "resnet18" if target is None else MODEL_TARGETS.get(str(target), "custom")


def label(m: Mapping) -> str:
    """The model's name in logs, titles and summary rows: resnet18, torchvision/resnet50, timm/..., pkg.mod.Class."""
    k = kind(m)
    if k == "resnet18":
        return "resnet18"
    return f"{k}/{m.get('name')}" if k in ("torchvision", "timm") else str(m["_target_"])


def torchvision_model(name: str, num_classes: int, weights: str | None = None) -> Any:
    """torchvision.models.get_model(name) with random weights (model.weights=null) and num_classes outputs."""
    models = _torchvision(name)
    try:
        return models.get_model(name, weights=weights, num_classes=num_classes)
    except ValueError as e:  # e.g. pretrained weights with another class count than theirs
        raise ConfigError("model.weights", weights, "null (random init) or weights matching the data", str(e)) from e


def _torchvision(name: str) -> Any:
    """torchvision.models, having checked that it knows name."""
    from torchvision import models

    names = models.list_models()
    if name not in names:
        raise ConfigError(
            "model.name",
            name,
            f"one of torchvision.models.list_models() ({len(names)} names, e.g. "
            "resnet50, mobilenet_v3_small, vit_b_16)",
            close_matches(name, names),
        )
    return models


def timm_model(name: str, num_classes: int, pretrained: bool = False) -> Any:
    """timm.create_model(name) with num_classes outputs (timm is the optional extra trainbench[timm])."""
    return _timm(name).create_model(name, pretrained=pretrained, num_classes=num_classes)


def _timm(name: str) -> Any:
    """The timm module, having checked that it is installed and knows name."""
    try:
        import timm
    except ImportError:
        raise ConfigError(
            "model",
            "timm",
            "resnet18, torchvision or custom, or install the timm extra: pip install 'trainbench[timm]'",
        ) from None
    names = timm.list_models()
    if name not in names:
        raise ConfigError(
            "model.name", name, f"one of timm.list_models() ({len(names)} names)", close_matches(name, names)
        )
    return timm


def _import(target: str) -> Any:
    """The class or function model._target_ names, importable from the working directory or PYTHONPATH."""
    if str(Path.cwd()) not in sys.path and "" not in sys.path:
        sys.path.insert(0, str(Path.cwd()))  # python train.py puts train.py's folder first, not the cwd
    module, _, attr = target.rpartition(".")
    if not module:
        raise ConfigError("model._target_", target, "a dotted path pkg.module.Class")
    try:
        obj = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise ConfigError(
            "model._target_",
            target,
            "a class importable from the working directory or PYTHONPATH",
            f"{type(e).__name__}: {e}",
        ) from e
    return obj


def takes(fn: Any, arg: str) -> bool:
    """Whether fn (a class or function) accepts keyword argument arg (directly or through **kwargs)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == arg or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def create(model_cfg: Mapping, norm: str, classes: int) -> Any:
    """The configured network (on the CPU, in fp32): what build_model, inspect and the tuner start from."""
    from omegaconf import OmegaConf

    if OmegaConf.is_config(model_cfg):  # plain values for the user's class (lists, dicts), not OmegaConf nodes
        model_cfg = OmegaConf.to_container(model_cfg, resolve=True)
    k = kind(model_cfg)
    if k == "resnet18":
        from .resnet import ResNet18

        return ResNet18(norm, int(model_cfg.get("width", 64)), classes)
    kwargs = {key: v for key, v in model_cfg.items() if key not in ("_target_", "num_classes")}
    target = str(model_cfg["_target_"])
    fn = _import(target)
    if k != "custom" or takes(fn, "num_classes"):
        kwargs["num_classes"] = classes
    if k != "custom":
        return fn(**kwargs)
    try:
        return fn(**kwargs)
    except TypeError as e:  # a key the class does not take, or one it needs
        keys = ", ".join(f"model.{a}" for a in kwargs) or "none"
        raise ConfigError("model._target_", target, f"a class that takes the keys given ({keys})", str(e)) from e


def check_config(model_cfg: Any) -> None:
    """What can be checked without building: the keys, model._target_ set and importable, model.name known."""
    from omegaconf import OmegaConf

    if OmegaConf.is_config(model_cfg) and OmegaConf.is_missing(model_cfg, "_target_"):
        raise ConfigError(
            "model._target_",
            "???",
            "pkg.module.Class (your model class)",
            "model=custom needs model._target_=, e.g. model._target_=mynets.Net",
        )
    check_keys(model_cfg)
    k = kind(model_cfg)
    if k == "torchvision":
        _torchvision(str(model_cfg["name"]))
    elif k == "timm":
        _timm(str(model_cfg["name"]))
    elif k != "resnet18":
        _import(str(model_cfg["_target_"]))


def check_keys(model_cfg: Mapping) -> None:
    """Unknown keys under model. are refused (never ignored): the command line's rule (config.model_key_error) applied
    to the composed config; only model=custom passes extra keys to its class."""
    k = kind(model_cfg)
    if k != "custom":
        for key in model_cfg:
            model_key_error(k, str(key), model_cfg[key])


def needed_size(model: Any) -> int | None:
    """The input side a model declares (torchvision ViT's image_size, timm's pretrained_cfg), if it declares one."""
    side = getattr(model, "image_size", None)
    if isinstance(side, int):
        return side
    pc = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None)
    if isinstance(pc, dict) and pc.get("input_size"):
        return int(pc["input_size"][-1])
    return None


def check_model(model_cfg: Mapping, norm: str, classes: int, size: int, data_name: str) -> Any:
    """Build the model once and push two images of the data's size through it (eval mode, no gradients): a model
    that cannot take that size, or whose output is not one score per class, is a ConfigError naming both. The
    config's keys and names are check_config's (make_plan runs it first)."""
    import torch

    name = label(model_cfg)
    model = create(model_cfg, norm, classes).eval()
    try:
        with torch.no_grad():
            out = model(torch.randn(2, 3, size, size))
    except Exception as e:  # noqa: BLE001 - any failure here is the input size (or the user's forward)
        need = needed_size(model)
        how = (
            f"it takes {need}x{need}: set data.image_size={need}"
            if need and need != size
            else "set data.image_size=N to a side it takes"
        )
        why = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise ConfigError(
            "data.image_size",
            size,
            f"an input side model {name} takes",
            f"model {name} cannot take 3x{size}x{size} images ({why}); {how}",
        ) from e
    got = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
    if got != (2, classes):
        raise ConfigError(
            "model",
            name,
            f"a model with one output per class ({classes} for data.name={data_name})",
            f"model {name} gives output {got} for 2 images, not (2, {classes})",
        )
    return model
