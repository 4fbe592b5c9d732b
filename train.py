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
    from trainbench.cli import check_command_line

    check_command_line(sys.argv[1:], Path(__file__).resolve().parent / "conf")  # a typo'd group choice: one line
    main()
