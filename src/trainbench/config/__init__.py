"""The config: its typed sections and their checks (schema.py), and the command line checked before Hydra
(command_line.py)."""

from .command_line import check_command_line, model_key_error
from .schema import (
    CONF_DIR,
    MODEL_SCHEMAS,
    MODEL_TARGETS,
    ConfigError,
    TrainConfig,
    close_matches,
    cpus_for_workers,
    group_choices,
    register_configs,
    validate,
    world_size,
)

__all__ = [
    "CONF_DIR",
    "MODEL_SCHEMAS",
    "MODEL_TARGETS",
    "ConfigError",
    "TrainConfig",
    "check_command_line",
    "close_matches",
    "cpus_for_workers",
    "group_choices",
    "model_key_error",
    "register_configs",
    "validate",
    "world_size",
]
