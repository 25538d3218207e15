"""Training: pretrain, sft (full / LoRA / QLoRA), rl; elastic, checkpoints, progress."""
