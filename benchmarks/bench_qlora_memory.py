"""QLoRA: the frozen base's memory in NF4 against bf16, and QLoRA's held-out loss against LoRA's on the
same budget.

Memory: a model of the `--size` shape gets our LoRA adapters with `quantize=True` (torchao NF4 with
double-quantized block scales, as the sft stage's `method: qlora` does); the bytes of every storage
the frozen base holds (NF4 data, scales and their scales; the weights NF4 leaves alone, the embedding,
head and norms, held in bf16) are summed and compared with the same base held in bf16.

Quality: from one base (a fresh tiny model given a short full SFT, so the adapters start from a model
that already knows the format), `method: lora` and `method: qlora` train through the
`forge-trainer train` entry point with the same data, seed, steps, rank and learning rate; the judge is
the held-out assistant-token loss of each exported model through transformers (posttrain_reference).

    .venv/bin/python benchmarks/bench_qlora_memory.py --quick    # 1 seed, 40 steps
    .venv/bin/python benchmarks/bench_qlora_memory.py            # 3 seeds, 150 steps

Targets: NF4/bf16 about 0.26 on the quantized layers (4 bits + 8-bit block scales + their fp32 scales),
the rest of the frozen base (embeddings, output head, norms: not quantized) 1.0x (bf16, computed in
float32); QLoRA loss / LoRA loss <= 1.05. The whole base's ratio depends on the embeddings' share:
the `small` shape's untied 32000 x 1024 embedding and head are 41% of its weights (0.56x); in a
Llama-7B-like shape they are 4% (about 0.29x).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

import posttrain_reference as ref
from forge_trainer.config import (
    DatasetPurpose,
    Hyperparameters,
    LoraConfig,
    ModelConfig,
    SftMethod,
    Stage,
    TrainConfig,
)
from forge_trainer.model import Transformer, resolve_model_args
from forge_trainer.train.chat import ChatTokenizer
from forge_trainer.train.entry import run_training
from forge_trainer.train.frozen_weights import frozen_base_bytes, storage_bytes
from forge_trainer.train.lora import apply_lora, is_nf4

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LORA = {"rank": 8, "alpha": 16, "dropout": 0.0, "targets": TARGETS}
MODEL = ref.TINY.model_copy(update={"hidden_size": 128, "intermediate_size": 256, "max_seq_len": 128})
SIZES = {"small": ModelConfig(hidden_size=1024, num_layers=8, num_heads=16, num_kv_heads=8,
                              intermediate_size=2816, max_seq_len=256),
         "quick": ModelConfig(hidden_size=256, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=768,
                              max_seq_len=128)}


def frozen_base_memory(config: ModelConfig, vocab: int) -> dict[str, float]:
    """Bytes of the frozen base with NF4 targets vs all-bf16, in total and on the quantized layers only."""
    torch.manual_seed(0)
    model = Transformer(resolve_model_args(config, vocab))
    bf16 = {name: p.numel() * 2 for name, p in model.named_parameters()}
    apply_lora(model, LoraConfig.model_validate(LORA), quantize=True)
    quantized_nf4 = quantized_bf16 = 0
    for t in model.buffers():
        if is_nf4(t):
            quantized_nf4 += storage_bytes(t)
            quantized_bf16 += t.numel() * 2
    return {"nf4": frozen_base_bytes(model), "bf16": sum(bf16.values()), "quantized_nf4": quantized_nf4,
            "quantized_bf16": quantized_bf16}


def loss_of(work: Path, base: Path, dataset: str, method: SftMethod, hp: Hyperparameters,
            val: list[tuple[list[int], list[bool]]]) -> float:
    """Train `method` from `base`; the held-out loss of its export."""
    from transformers import AutoModelForCausalLM

    out = work / method.value
    run_training(TrainConfig(stage=Stage.SFT, model=MODEL, dataset=dataset, output=str(out), init_model=str(base),
                             method=method, precision="fp32", metrics_port=0, lora=LORA, hyperparameters=hp,
                             checkpointing={"interval": hp.max_steps, "keep": 1}))
    return ref.held_out_loss(AutoModelForCausalLM.from_pretrained(out / "model"), val)


def one_seed(seed: int, steps: int) -> dict[str, float]:
    """A short full SFT as the base, then LoRA and QLoRA on the same budget: their held-out losses."""
    with tempfile.TemporaryDirectory(prefix="bench-qlora-") as tmp:
        work = Path(tmp)
        tok = ref.make_tokenizer()
        chat = ChatTokenizer(tok)
        train_pairs, held_pairs = ref.split_pairs()
        ref.write_base_model(work / "init", tok, seed=seed, config=MODEL)
        data = ref.write_records_dataset(work / "data", DatasetPurpose.SFT,
                                         ref.conversations(train_pairs, 512, seed=seed), [], tok)
        val = ref.tokenized(chat, ref.conversations(held_pairs, 64, seed=seed + 1))

        def hp(lr: float, n: int) -> Hyperparameters:
            return Hyperparameters(learning_rate=lr, min_learning_rate=lr / 10, warmup_steps=max(1, n // 10),
                                   max_steps=n, global_batch_size=8, micro_batch_size=8, sequence_length=64,
                                   eval_interval=0, eval_batches=1, seed=seed)

        run_training(TrainConfig(stage=Stage.SFT, model=MODEL, dataset=data, output=str(work / "base"),
                                 init_model=str(work / "init"), precision="fp32", metrics_port=0,
                                 hyperparameters=hp(1e-3, 30), checkpointing={"interval": 30, "keep": 1}))
        base = work / "base" / "model"
        return {"lora": loss_of(work, base, data, SftMethod.LORA, hp(3e-3, steps), val),
                "qlora": loss_of(work, base, data, SftMethod.QLORA, hp(3e-3, steps), val)}


def main() -> None:
    """Measure and print both tables."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one seed, 40 steps, a smaller model for memory")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=150)
    args = parser.parse_args()
    seeds, steps, size = (1, 40, "quick") if args.quick else (args.seeds, args.steps, "small")
    ref.quiet()
    torch.set_num_threads(1)
    mem = frozen_base_memory(SIZES[size], 32000)
    print(f"frozen base of a {size} model ({SIZES[size].hidden_size} hidden, {SIZES[size].num_layers} layers, "
          f"32000 vocab), LoRA targets {','.join(TARGETS)}")
    rest_held, rest_bf16 = mem["nf4"] - mem["quantized_nf4"], mem["bf16"] - mem["quantized_bf16"]
    bound = (0.27 * mem["quantized_bf16"] + rest_bf16) / mem["bf16"]  # NF4 layers at 0.27x, the rest in bf16
    print(ref.table([("frozen base MiB (QLoRA vs bf16)", mem["nf4"] / 2**20, mem["bf16"] / 2**20, f"< {bound:.2f}x"),
                     ("quantized layers MiB (NF4 vs bf16)", mem["quantized_nf4"] / 2**20,
                      mem["quantized_bf16"] / 2**20, "~0.26x (4.13 of 16 bits)"),
                     ("rest: embeddings, head, norms MiB", rest_held / 2**20, rest_bf16 / 2**20, "1.0x (bf16)")]))
    per_seed = []
    for seed in range(seeds):
        r = one_seed(seed, steps)
        per_seed.append(r)
        print(f"seed {seed}: held-out loss LoRA {r['lora']:.4f} QLoRA {r['qlora']:.4f}", flush=True)
    med = {k: ref.median([r[k] for r in per_seed]) for k in per_seed[0]}
    print(f"\nQLoRA vs LoRA (reference): {steps} steps x 8 conversations, rank 8, median of {seeds} seed(s)")
    print(ref.table([("held-out loss (lower is better)", med["qlora"], med["lora"], "<= 1.05x")]))


if __name__ == "__main__":
    main()
