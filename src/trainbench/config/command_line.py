"""The command line checked before Hydra composes anything (train.py, inspect, tune): one ConfigError line for a
group choice that names no file, a key no section has, a model key the chosen model does not take, and a value of
the wrong type. No torch import: a typo ends in well under a second."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from .schema import CONF_DIR, MODEL_SCHEMAS, ConfigError, TrainConfig, close_matches, group_choices


def check_command_line(overrides: list[str], conf_dir: Path = CONF_DIR) -> None:
    """Check every `key=value` override: group choices, known keys, model keys, value types.

    Only plain values and comma-separated sweeps are checked; Hydra's sweep functions (`choice(...)`, `glob(...)`)
    and `+`/`~` overrides (which add or delete keys on purpose) are left to Hydra."""
    schema = OmegaConf.structured(TrainConfig)
    choice = _model_choices(overrides)
    for o in overrides:
        key, eq, value = o.partition("=")
        if not eq or key.startswith("~") or "(" in value or "[" in value:
            continue
        bare = key.lstrip("+")
        if bare == "model" or bare.startswith("model."):
            if bare != "model":
                for c in choice:
                    model_key_error(c, bare[len("model.") :], value, plus=key.startswith("+"), sweep=choice)
            else:
                _check_choices(key, value, conf_dir)
            continue
        if key.startswith(("+", "hydra")):
            continue
        if (conf_dir / key).is_dir():
            _check_choices(key, value, conf_dir)
            continue
        node = OmegaConf.select(schema, key, throw_on_missing=False, default=KeyError)
        if node is KeyError:
            raise unknown_key(key, value, schema, conf_dir)
        if not OmegaConf.is_config(node):
            _check_type(key, value, node)


def _model_choices(overrides: list[str]) -> list[str]:
    for o in overrides:
        if o.startswith("model="):
            return [v.strip() for v in o.partition("=")[2].split(",")]
    return ["resnet18"]


def _check_choices(key: str, value: str, conf_dir: Path) -> None:
    choices = group_choices(key, conf_dir)
    for v in (v.strip() for v in value.split(",")):
        if v and v not in choices:
            raise ConfigError(key, v, ", ".join(choices), f"{key}= names a file in conf/{key}/")


def unknown_key(key: str, value: str, schema: object, conf_dir: Path = CONF_DIR) -> ConfigError:
    """A key no section has: name the section's keys and the closest match (never suggest `+` for a typo)."""
    section, _, leaf = key.rpartition(".")
    node = OmegaConf.select(schema, section, default=None) if section else schema
    if not OmegaConf.is_config(node):  # the section itself is unknown (dat.train_size): match the first part
        top = [k for k in schema if not str(k).startswith("_")]  # type: ignore[union-attr]
        groups = sorted(p.name for p in conf_dir.iterdir() if p.is_dir())
        first = key.split(".")[0]
        names = sorted(set(top) | set(groups))
        return ConfigError(key, value, "a key of the config: " + ", ".join(names), close_matches(first, names))
    keys = [str(k) for k in node]  # type: ignore[union-attr]
    where = f"a key of {section}" if section else "a top-level key"
    hits = close_matches(leaf, keys).removeprefix("did you mean: ")
    hint = "did you mean: " + ", ".join(f"{section}.{h}" if section else h for h in hits.split(", ")) if hits else ""
    return ConfigError(key, value, f"{where}: {', '.join(keys)}", hint)


def _check_type(key: str, value: str, node: object) -> None:
    import yaml
    from omegaconf.errors import OmegaConfBaseException

    for v in (v.strip() for v in value.split(",")):
        try:
            OmegaConf.update(OmegaConf.structured(TrainConfig), key, yaml.safe_load(v), merge=True)
        except (OmegaConfBaseException, yaml.YAMLError, ValueError):
            kind = type(node).__name__ if node is not None else "a value of this key's type"
            raise ConfigError(key, v, f"a value of type {kind}" if node is not None else kind) from None


def model_key_error(choice: str, sub: str, value: object, plus: bool = False, sweep: list[str] | None = None) -> None:
    """model.<sub>=value for model=<choice>: the one model-key rule, for the command line and the composed config.

    A key the choice does not take is refused (never ignored); model=custom takes _target_, num_classes and any
    +model.<key> (its class's keyword arguments)."""
    if "." in sub:
        return
    if choice == "custom":
        if not plus and sub not in ("_target_", "num_classes"):
            raise ConfigError(
                f"model.{sub}",
                value,
                "_target_, num_classes, or +model.<key>=<value> for a keyword argument of your class",
                f"write +model.{sub}={value}",
            )
        return
    fields = list(MODEL_SCHEMAS[choice].__dataclass_fields__) if choice in MODEL_SCHEMAS else None
    if fields is None or sub in fields:
        return
    if choice == "resnet18" and sub == "name":
        hint = f"for torchvision's {value}: model=torchvision model.name={value}"
    else:
        hint = close_matches(sub, fields)
    if sweep and len(sweep) > 1:
        hint += (
            f"{'; ' if hint else ''}this sweep also runs model={choice}, which has no {sub}: compare models with "
            f"-m model=torchvision model.name=a,b or -m model={','.join(sweep)}"
        )
    raise ConfigError(f"model.{sub}", value, f"the keys of model={choice}: {', '.join(fields)}", hint)
