"""trainbench entry point: `python train.py [overrides]` or `python train.py -m key=a,b,...`."""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from trainbench.config import register_configs

register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    """Hydra composes cfg; trainbench.cli.run_job does the work."""
    from trainbench.cli import run_job

    run_job(cfg)


if __name__ == "__main__":
    from trainbench.config import ConfigError, check_command_line
    from trainbench.console import exit_with

    try:  # a typo'd group choice or key: one line, before Hydra starts and before torch is imported
        check_command_line([a for a in sys.argv[1:] if not a.startswith("-")], Path(__file__).resolve().parent / "conf")
    except ConfigError as e:
        exit_with(e)
    main()
