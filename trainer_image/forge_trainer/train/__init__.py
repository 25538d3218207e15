"""Training: pretrain, sft (full / LoRA / QLoRA), rl; elastic, checkpoints, progress.

    entry.py       run_training(config, config_path): dispatch on config.stage
    pretrain.py    run_pretrain: the pretraining workload (its batches, loss, sync steps and export)
    loop.py        what every stage's loop shares: open_run (resume, restarts, reporter) and after_step
                   (live max steps, SIGTERM, evaluation and checkpoint when due)
    runtime.py     the worker group (torchrun, gloo/nccl) and the few collectives used
    control.py     what every worker agrees on while running: SIGTERM, live max steps from the config file
    parallel.py    meta-device builds, FSDP2 / DDP wrapping, activation checkpointing, torch.compile, autocast
    step_engine.py StepEngine: one optimizer step (accumulation, NaN guard, clipping, AdamW), evaluation
    schedule.py    warm-up + cosine learning rate, a pure function of the step
    batches.py     deterministic token batches from a dataset's shards, each rank its slice
    checkpoint.py  torch.distributed.checkpoint in the object store: save, find, load, prune
    progress.py    progress.json, the step log and Prometheus metrics (rank 0)

sft.py, rl.py, lora.py, posttrain.py, chat.py, sft_examples.py, sample_packing.py, evaluate.py,
generate.py, verifiers.py and sandbox.py build the post-training stages on these.
"""
