"""The prepared GPU check (`scripts/gpu-check`, docs/gpu-check.md): one command that measures on one CUDA
GPU, within 8 minutes, what the CPU test suite cannot show.

    plan.py      the parts, their time budgets, the GPU and dry-run sizes (plain data)
    runner.py    each part in a process of its own, stopped at its budget; report.json + report.txt
    part.py      a part's process: its context, and measurements recorded as they finish
    measure.py   world of one FSDP2 worker, peak memory, measured matmul peak, MFU against both peaks
    training.py  timing our step engine and a plain PyTorch loop
    parts/       env, pretrain_dense, pretrain_moe, sft, rollout, serve, checkpoint
    report.py    the text table and the README rows
    wheels.py    --prepare: the extra wheels for the GPU machine, which has no network
"""
