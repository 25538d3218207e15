"""`forge-trainer train`: dispatch a TrainConfig to its stage."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from forge_trainer.config import Stage, TrainConfig


def run_training(config: TrainConfig, config_path: Path | None = None) -> None:
    """Run the stage `config.stage` names (under torchrun, on every worker). `config_path`, the file
    `config` was read from, is followed for live changes of `hyperparameters.maxSteps`."""
    if not logging.getLogger().handlers:
        rank = os.environ.get("RANK", "0")
        logging.basicConfig(level=logging.INFO if rank == "0" else logging.WARNING,
                            format=f"%(asctime)s rank{rank} %(levelname)s %(name)s: %(message)s")
    if config.stage is Stage.PRETRAIN:
        from forge_trainer.train.pretrain import run_pretrain

        run_pretrain(config, config_path=config_path)
    elif config.stage is Stage.SFT:
        from forge_trainer.train.sft import run_sft

        run_sft(config, config_path=config_path)
    else:
        from forge_trainer.train.rl import run_rl

        run_rl(config, config_path=config_path)
