"""`forge-trainer train`: dispatch a TrainConfig to its stage."""

from __future__ import annotations

import logging
import os

from forge_trainer.config import Stage, TrainConfig


def run_training(config: TrainConfig) -> None:
    """Run the stage `config.stage` names (under torchrun, on every worker)."""
    if not logging.getLogger().handlers:
        rank = os.environ.get("RANK", "0")
        logging.basicConfig(level=logging.INFO if rank == "0" else logging.WARNING,
                            format=f"%(asctime)s rank{rank} %(levelname)s %(name)s: %(message)s")
    if config.stage is Stage.PRETRAIN:
        from forge_trainer.train.pretrain import run_pretrain

        run_pretrain(config)
    elif config.stage is Stage.SFT:
        from forge_trainer.train.sft import run_sft

        run_sft(config)
    else:
        from forge_trainer.train.rl import run_rl

        run_rl(config)
