"""SFT, full and LoRA, against TRL's SFTTrainer (+ PEFT for LoRA) on the same tiny model and data.

Per seed, both trainers start from the same exported base (our Hugging Face export, loaded by
transformers for TRL), train on the same conversations tokenized by our ChatML renderer with the
loss on assistant tokens only (TRL gets `input_ids` + `completion_mask`, `completion_only_loss`), in
the same order (TRL's sampler is made sequential over our stream's order; every row holds one
conversation, so a step is the same batch), with the same AdamW (betas, weight decay on matrices,
clipping) and our warm-up + cosine schedule, for the same steps. Both finished models are then
judged by one function: token-weighted held-out loss on conversations about sums never trained on,
through transformers. tokens/s = trained (assistant) tokens / wall time from loading the base to
a written final model (ours: `forge-trainer train`'s entry point, with its checkpoint, eval.json and
export; TRL: model load, trainer set-up, train, save_model), after an untimed warm-up run of both.

    .venv/bin/python benchmarks/bench_sft_vs_trl.py --quick      # 1 seed, 40 steps: ~1 min on 2 cores
    .venv/bin/python benchmarks/bench_sft_vs_trl.py              # 3 seeds, 150 steps

Targets: held-out loss ours/TRL <= 1.02 (lower is better), tokens/s ours/TRL >= 1.0.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import posttrain_reference as ref
from forge_trainer.config import DatasetPurpose, Hyperparameters, SftMethod, Stage, TrainConfig
from forge_trainer.train.chat import ChatTokenizer
from forge_trainer.train.entry import run_training
from forge_trainer.train.sample_packing import make_example
from forge_trainer.train.sft_examples import PackedStream

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
BATCH = 8
MODEL = ref.TINY.model_copy(update={"max_seq_len": 128})
LR = {SftMethod.FULL: 1e-3, SftMethod.LORA: 3e-3}


def hyperparameters(method: SftMethod, steps: int, seq_len: int, seed: int) -> Hyperparameters:
    """The run's hyperparameters (one micro-batch per step, so the step is the batch)."""
    lr = LR[method]
    return Hyperparameters(learning_rate=lr, min_learning_rate=lr / 10, warmup_steps=max(1, steps // 10),
                           max_steps=steps, global_batch_size=BATCH, micro_batch_size=BATCH,
                           sequence_length=seq_len, eval_interval=0, eval_batches=1, seed=seed)


def run_ours(work: Path, base: Path, dataset: str, method: SftMethod, hp: Hyperparameters) -> tuple[Any, float]:
    """Train through the `forge-trainer train` entry point; (final model in transformers, wall seconds)."""
    from transformers import AutoModelForCausalLM

    config = TrainConfig(stage=Stage.SFT, model=MODEL, dataset=dataset, output=str(work / "ours"),
                         init_model=str(base), method=method, precision="fp32", metrics_port=0,
                         lora={"rank": 8, "alpha": 16, "dropout": 0.0, "targets": TARGETS},
                         hyperparameters=hp, checkpointing={"interval": hp.max_steps, "keep": 1})
    began = time.perf_counter()
    run_training(config)
    wall = time.perf_counter() - began
    return AutoModelForCausalLM.from_pretrained(work / "ours" / "model"), wall


def run_trl(work: Path, base: Path, ordered: list[tuple[list[int], list[bool]]], method: SftMethod,
            hp: Hyperparameters) -> tuple[Any, float, float]:
    """Train with TRL's SFTTrainer on `ordered` (one conversation per row, in our order); (model, wall,
    seconds of its train() loop alone)."""
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from torch.utils.data import SequentialSampler
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    class InOrder(SFTTrainer):  # type: ignore[misc]
        """SFTTrainer that reads the dataset in its order (ours), instead of a random permutation."""

        def _get_train_sampler(self, train_dataset: Any = None) -> SequentialSampler:
            return SequentialSampler(train_dataset if train_dataset is not None else self.train_dataset)

    began = time.perf_counter()
    torch.manual_seed(hp.seed)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(base)
    if method is SftMethod.LORA:
        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=TARGETS,
                                                 bias="none", task_type="CAUSAL_LM"))
    data = Dataset.from_list([{"input_ids": ids, "completion_mask": [int(t) for t in trained]}
                              for ids, trained in ordered])
    args = SFTConfig(output_dir=str(work / "trl"), max_steps=hp.max_steps, per_device_train_batch_size=BATCH,
                     gradient_accumulation_steps=1, learning_rate=hp.learning_rate, max_grad_norm=hp.grad_clip,
                     seed=hp.seed, data_seed=hp.seed, logging_steps=hp.max_steps, save_strategy="no",
                     report_to="none", use_cpu=True, completion_only_loss=True, packing=False,
                     max_length=hp.sequence_length + 1, dataloader_num_workers=0, disable_tqdm=True)
    trainer = InOrder(model=model, args=args, train_dataset=data, processing_class=tokenizer,
                      optimizers=ref.our_optimizer(model, hp))
    loop = float(trainer.train().metrics["train_runtime"])
    trained = trainer.model.merge_and_unload() if method is SftMethod.LORA else trainer.model
    trained.save_pretrained(work / "trl" / "model")
    return trained, time.perf_counter() - began, loop


def one_seed(method: SftMethod, seed: int, steps: int) -> dict[str, float]:
    """Both trainers on one seed: held-out losses and tokens/s."""
    with tempfile.TemporaryDirectory(prefix="bench-sft-trl-") as tmp:
        work = Path(tmp)
        tok = ref.make_tokenizer()
        chat = ChatTokenizer(tok)
        train_pairs, held_pairs = ref.split_pairs()
        train_convs = ref.conversations(train_pairs, 512, seed=seed)
        val_convs = ref.conversations(held_pairs, 64, seed=seed + 1)
        train_tok = ref.tokenized(chat, train_convs)
        val_tok = ref.tokenized(chat, val_convs)
        lengths = [len(ids) - 1 for ids, _ in train_tok]
        seq_len = max(lengths)
        # One conversation per packed row, so a step of ours is the same batch as a step of TRL's.
        assert 2 * min(lengths) > seq_len, (min(lengths), seq_len)
        hp = hyperparameters(method, steps, seq_len, seed)
        base = work / "base"
        ref.write_base_model(base, tok, seed=seed, config=MODEL)
        dataset = ref.write_records_dataset(work / "data", DatasetPurpose.SFT, train_convs, val_convs[:8], tok)
        examples = [make_example(ids, trained, seq_len) for ids, trained in train_tok]
        stream = PackedStream([e for e in examples if e is not None], seq_len, seed)
        rows = stream.rows(0, steps * BATCH)
        assert all(len(r) == 1 for r in rows)
        ordered = [train_tok[r[0]] for r in rows]
        tokens = sum(sum(trained[1:]) for _, trained in ordered)
        ours, ours_wall = run_ours(work, base, dataset, method, hp)
        theirs, trl_wall, trl_loop = run_trl(work, base, ordered, method, hp)
        return {"ours_loss": ref.held_out_loss(ours, val_tok), "trl_loss": ref.held_out_loss(theirs, val_tok),
                "ours_tps": tokens / ours_wall, "trl_tps": tokens / trl_wall, "trl_loop_tps": tokens / trl_loop,
                "initial_loss": ref.held_out_loss(_base_model(base), val_tok)}


def _base_model(base: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(base)


def main() -> None:
    """Run the comparison and print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one seed, 40 steps")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--methods", default="full,lora")
    args = parser.parse_args()
    seeds, steps = (1, 40) if args.quick else (args.seeds, args.steps)
    ref.quiet()
    torch.set_num_threads(1)  # tiny models: one thread each is fastest on shared cores, and the same for both
    for name in args.methods.split(","):
        method = SftMethod(name)
        one_seed(method, 99, 4)  # untimed warm-up: first imports and allocations count for neither side
        per_seed = []
        for seed in range(seeds):
            r = one_seed(method, seed, steps)
            per_seed.append(r)
            print(f"{name} seed {seed}: initial {r['initial_loss']:.4f}  ours {r['ours_loss']:.4f} "
                  f"trl {r['trl_loss']:.4f}  tok/s ours {r['ours_tps']:.0f} trl {r['trl_tps']:.0f}", flush=True)
        med = {k: ref.median([r[k] for r in per_seed]) for k in per_seed[0]}
        print(f"\nSFT {name}: {steps} steps x {BATCH} conversations, median of {seeds} seed(s)")
        print(ref.table([("held-out loss (lower is better)", med["ours_loss"], med["trl_loss"], "<= 1.02x"),
                         ("tokens/s (trained tokens, end to end)", med["ours_tps"], med["trl_tps"], ">= 1.0x"),
                         ("tokens/s, ours end to end vs TRL train()", med["ours_tps"], med["trl_loop_tps"],
                          "(TRL without set-up)")]))
        print()


if __name__ == "__main__":
    main()
