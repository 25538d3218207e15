"""SFT and RL start from an open-weights base the way continued pretraining does: the model is built on the
meta device and each worker reads only its FSDP2 shard from the safetensors files. Two real torchrun
workers on gloo, a sharded bf16 checkpoint written by transformers itself; the runs' lineage carries the
base directory's digest.

The model at step 0 is checked through the export: one step at a learning rate of 1e-12 leaves the
weights as loaded (to well under the tolerance), and the export is gathered from the shards the workers
loaded, so transformers computing the base's logits from it shows every worker read the right rows.
LoRA and QLoRA workers that trained their adapters export the merged model and the adapter gathered from
the shards: transformers computes from the export what one process merging that adapter gives (and PEFT,
for LoRA, what the adapter on the base gives).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from peft import PeftModel
from safetensors.torch import load_file
from tokenizers import Tokenizer, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, LlamaConfig

from forge_trainer.config import DatasetPurpose, Hyperparameters, SftMethod, Stage, TrainConfig, TrainProgress
from forge_trainer.data.tokenizer import new_bpe_tokenizer
from forge_trainer.errors import ConfigError
from forge_trainer.model.files import model_dir_digest
from forge_trainer.model.hf_export import export_hf
from forge_trainer.model.hf_import import load_pretrained, model_files
from forge_trainer.train.base_model import open_base_model
from forge_trainer.train.lora import (
    ADAPTER_WEIGHTS_NAME,
    apply_lora,
    load_adapter_state_dict,
    merged_state_dict,
)
from forge_trainer.train.parallel import wrap_model
from forge_trainer.train.posttrain import load_base, prepare_for_method
from forge_trainer.train.runtime import Runtime
from tests.support.ports import free_port
from tests.support.posttrain import (
    arithmetic_corpus,
    make_tokenizer,
    sum_conversations,
    sum_tasks,
    write_records_dataset,
)
from tests.support.training import ELASTIC_ENV

TOLERANCE = 1e-5
WORKERS = 2
BEFORE_BOUND = 0.25
"""What a worker's peak memory may grow before its model is placed, as a share of the whole model in fp32
(loading the base whole in fp32 before sharding, as SFT and RL did, is more than 1.0)."""


def write_base(out: Path, vocab: int) -> int:
    """A random Llama (~50M parameters, 190 MiB in fp32) saved by transformers in bf16, in several files
    with an index; returns its parameter count. Large enough that a worker's fixed costs of placing a
    model (~40 MiB: process group buffers, FSDP2's bookkeeping) are small next to its half."""
    config = LlamaConfig(hidden_size=768, intermediate_size=2048, num_hidden_layers=8, num_attention_heads=12,
                         num_key_value_heads=4, vocab_size=vocab, max_position_embeddings=128,
                         tie_word_embeddings=False)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(out, max_shard_size="20MB")
    assert (out / "model.safetensors.index.json").exists()
    return sum(p.numel() for p in model.parameters())


def hf_logits(directory: Path, ids: torch.Tensor) -> torch.Tensor:
    """transformers' own logits for `ids`, the model loaded from `directory` in float32."""
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    with torch.no_grad():
        logits: torch.Tensor = model(ids).logits
    return logits


def torchrun(tmp_path: Path, config: TrainConfig, name: str) -> tuple[list[dict[str, Any]], TrainProgress]:
    """Run `config` with two torchrun workers (each measuring its VmHWM); their measures and progress.json."""
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(config.to_wire()))
    out = tmp_path / f"{name}-rss"
    command = [str(Path(shutil.which("torchrun") or ".venv/bin/torchrun")), "--nnodes=1",
               f"--nproc-per-node={WORKERS}", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{free_port()}",
               "-m", "tests.support.peak_rss", str(out), "train", "--config", str(path)]
    root = Path(__file__).resolve().parents[2]
    env = {**ELASTIC_ENV, "PATH": str(root / ".venv" / "bin") + ":/usr/bin:/bin", "PYTHONPATH": str(root)}
    done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rss = [json.loads(Path(f"{out}.{rank}.json").read_text()) for rank in range(WORKERS)]
    progress = TrainProgress.model_validate_json((Path(config.output) / "progress.json").read_text())
    return rss, progress


def hyperparameters(**changes: Any) -> Hyperparameters:
    return Hyperparameters(**{"learning_rate": 1e-12, "min_learning_rate": 0.0, "warmup_steps": 0, "max_steps": 1,
                              "global_batch_size": 4, "micro_batch_size": 2, "sequence_length": 64,
                              "eval_interval": 0, "eval_batches": 1, "seed": 7, **changes})


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """The base directory (with the tokenizer's tokenizer.json) and its parameter count."""
    directory = tmp_path_factory.mktemp("base") / "llama"
    tok = make_tokenizer()
    params = write_base(directory, tok.get_vocab_size())
    (directory / "tokenizer.json").write_text(tok.to_str())
    return directory, params


def check_run(base: tuple[Path, int], rss: list[dict[str, Any]], progress: TrainProgress, export: Path,
              models: int) -> None:
    """Step 0 computed the base's logits (through the export), each worker grew by about its half of every
    model it loaded, and progress.json names the base's digest."""
    directory, params = base
    ids = torch.arange(24).reshape(2, 12) * 7 % 250
    torch.testing.assert_close(hf_logits(export, ids), hf_logits(directory, ids), rtol=0, atol=TOLERANCE)
    whole_mib = params * 4 / 2**20
    for rank, r in enumerate(rss):  # VmHWM: the peak so far, at the process start and around each placement
        assert len(r["loaded_mib"]) == models
        assert r["before_mib"][0] - r["idle_mib"] < BEFORE_BOUND * whole_mib, (rank, r, whole_mib)
        for n, loaded in enumerate(r["loaded_mib"], start=1):  # n models placed (policy, RL reference)
            assert loaded - r["idle_mib"] < n * whole_mib, (rank, n, r, whole_mib)
    assert progress.done and progress.base_model_digest == model_dir_digest(directory, model_files(directory))


def test_sft_workers_load_only_their_shard_of_a_transformers_base(base: tuple[Path, int], tmp_path: Path) -> None:
    tok = make_tokenizer()
    data = write_records_dataset(tmp_path / "data", DatasetPurpose.SFT, sum_conversations(16, seed=3),
                                 sum_conversations(4, seed=4), tok)
    config = TrainConfig(stage=Stage.SFT, dataset=data, output=str(tmp_path / "out"), init_model=str(base[0]),
                         method=SftMethod.FULL, precision="fp32", metrics_port=0, hyperparameters=hyperparameters(),
                         checkpointing={"interval": 1, "keep": 1})
    rss, progress = torchrun(tmp_path, config, "sft")
    check_run(base, rss, progress, tmp_path / "out" / "model", models=1)


def test_rl_workers_load_their_shard_of_the_policy_and_of_the_reference(base: tuple[Path, int],
                                                                         tmp_path: Path) -> None:
    tok = make_tokenizer()
    data = write_records_dataset(tmp_path / "tasks", DatasetPurpose.RL, sum_tasks(8, seed=1), sum_tasks(2, seed=2),
                                 tok)
    config = TrainConfig(stage=Stage.RL, dataset=data, output=str(tmp_path / "out"), init_model=str(base[0]),
                         method=SftMethod.FULL, precision="fp32", metrics_port=0,
                         rl={"reward": {"verifier": "exact_match"}, "groupSize": 2, "maxNewTokens": 2},
                         hyperparameters=hyperparameters(), checkpointing={"interval": 1, "keep": 1})
    rss, progress = torchrun(tmp_path, config, "rl")
    check_run(base, rss, progress, tmp_path / "out" / "model", models=2)
    assert progress.kl == pytest.approx(0.0, abs=1e-6)  # the reference computes what the policy does at step 1


def test_the_base_digest_follows_the_files_the_trainer_reads(base: tuple[Path, int], tmp_path: Path) -> None:
    runtime = Runtime(0, 1, 0, torch.device("cpu"), False)

    def digest(directory: Path) -> str | None:
        config = TrainConfig(stage=Stage.SFT, dataset="unused", output=str(tmp_path / "out"),
                             init_model=str(directory))
        with open_base_model(config, runtime) as opened:
            assert opened is not None
            return opened.digest

    original = digest(base[0])
    copy = shutil.copytree(base[0], tmp_path / "copy")
    assert digest(copy) == original  # identical content elsewhere: the same digest
    (copy / "pytorch_model.bin").write_bytes(b"pickles are never read")
    assert digest(copy) == original  # nor part of what the run read
    shard = sorted(copy.glob("model-*.safetensors"))[-1]
    data = bytearray(shard.read_bytes())
    data[-1] ^= 1  # one bit of one weight
    shard.write_bytes(bytes(data))
    assert digest(copy) != original
    (copy / "config.json").unlink()
    with pytest.raises(ConfigError, match=r"no config\.json"):
        digest(copy)


def tokenizer_without_chat_tokens() -> Tokenizer:
    """A byte-level BPE whose only special token is <|endoftext|>: a run adds ChatML's two tokens to it."""
    tok = new_bpe_tokenizer()
    trainer = trainers.BpeTrainer(vocab_size=290, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(arithmetic_corpus(), trainer=trainer)
    return tok


def _adapter_worker(rank: int, rendezvous: str, config_json: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=WORKERS)
    try:
        config = TrainConfig.model_validate_json(config_json)
        runtime = Runtime(rank, WORKERS, rank, torch.device("cpu"), True)
        torch.manual_seed(config.hyperparameters.seed)
        with load_base(config, runtime) as base:  # as sft and rl place their model
            prepare_for_method(base.model, config)
            model = wrap_model(base.model, runtime, load=base.load)
        local = {n: p.to_local().numel() for n, p in model.named_parameters()}  # type: ignore[attr-defined]
        with torch.no_grad():
            logits = model.eval()(torch.arange(24).reshape(2, 12) * 7 % 250)
        model.reshard()  # type: ignore[operator]  (the root keeps its parameters gathered after a forward)
        embed = model.model.embed_tokens.weight.full_tensor()  # type: ignore[union-attr, operator]
        if rank == 0:
            torch.save({"logits": logits, "embed": embed, "local": local}, out)
    finally:
        dist.destroy_process_group()


def sharded_start(tmp_path: Path, config: TrainConfig) -> dict[str, Any]:
    """What two FSDP2 workers placing `config`'s base as sft does compute at step 0 (worker 0's view)."""
    out = tmp_path / "start.pt"
    mp.spawn(_adapter_worker, args=(str(tmp_path / "rdzv"), config.model_dump_json(by_alias=True), str(out)),
             nprocs=WORKERS, join=True)
    saved: dict[str, Any] = torch.load(out)
    return saved


def adapter_config(tmp_path: Path, base_dir: Path, method: SftMethod) -> TrainConfig:
    return TrainConfig(stage=Stage.SFT, dataset="unused", output=str(tmp_path / "out"), init_model=str(base_dir),
                       method=method, precision="fp32", metrics_port=0, hyperparameters=hyperparameters(),
                       lora={"rank": 4, "alpha": 8, "dropout": 0.0, "targets": ["q_proj", "v_proj", "down_proj"]})


def write_tiny_base(out: Path, tok: Tokenizer) -> Path:
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=tok.get_vocab_size(), max_position_embeddings=64)
    torch.manual_seed(1)
    AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).save_pretrained(out, max_shard_size="40KB")
    (out / "tokenizer.json").write_text(tok.to_str())
    return out


def test_lora_workers_start_from_the_base_with_the_grown_vocabulary_at_the_mean(tmp_path: Path) -> None:
    tok = tokenizer_without_chat_tokens()
    directory = write_tiny_base(tmp_path / "base", tok)
    vocab = tok.get_vocab_size()
    start = sharded_start(tmp_path, adapter_config(tmp_path, directory, SftMethod.LORA))
    ids = torch.arange(24).reshape(2, 12) * 7 % 250
    assert start["logits"].shape[-1] == vocab + 2  # <|im_start|> and <|im_end|> were added
    # adapters start at zero: the base's own logits over its vocabulary
    torch.testing.assert_close(start["logits"][..., :vocab], hf_logits(directory, ids), rtol=0, atol=TOLERANCE)
    base_rows = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).model.embed_tokens.weight
    torch.testing.assert_close(start["embed"][:vocab], base_rows.detach(), rtol=0, atol=0)
    mean = base_rows.detach().double().mean(0).float()
    torch.testing.assert_close(start["embed"][vocab:], mean.expand(2, -1), rtol=0, atol=1e-7)
    whole = start["embed"].shape[0] * start["embed"].shape[1]
    assert start["local"]["model.embed_tokens.weight"] == whole // WORKERS  # each worker holds half the rows


def test_qlora_workers_quantize_the_same_nf4_base_as_one_process(tmp_path: Path) -> None:
    directory = write_tiny_base(tmp_path / "base", make_tokenizer())
    config = adapter_config(tmp_path, directory, SftMethod.QLORA)
    start = sharded_start(tmp_path, config)
    torch.manual_seed(config.hyperparameters.seed)
    whole = load_pretrained(directory)[0]  # the whole model, quantized in one process
    apply_lora(whole, config.lora, quantize=True)
    ids = torch.arange(24).reshape(2, 12) * 7 % 250
    with torch.no_grad():
        expected = whole.eval()(ids)
    torch.testing.assert_close(start["logits"], expected, rtol=0, atol=TOLERANCE)
    assert not torch.allclose(expected, hf_logits(directory, ids), atol=1e-3)  # NF4 did change the weights


PEFT_TOLERANCE = 1e-4
"""PEFT adds B A x to W x where the export folds B A into W: float32 rounding apart, the same logits."""


@pytest.mark.parametrize("method", [SftMethod.LORA, SftMethod.QLORA])
def test_adapter_workers_export_what_one_process_merges_from_their_adapter(method: SftMethod,
                                                                           tmp_path: Path) -> None:
    """Two FSDP2 workers train adapters and write the final model and adapter: the merged export loads
    in transformers with the logits of the same adapter merged in one process (and, for LoRA, of
    PEFT's adapter on the base)."""
    tok = make_tokenizer()
    directory = write_tiny_base(tmp_path / "base", tok)
    data = write_records_dataset(tmp_path / "data", DatasetPurpose.SFT, sum_conversations(16, seed=3),
                                 sum_conversations(4, seed=4), tok)
    config = TrainConfig(stage=Stage.SFT, dataset=data, output=str(tmp_path / "out"), init_model=str(directory),
                         method=method, precision="fp32", metrics_port=0,
                         hyperparameters=hyperparameters(learning_rate=1e-2, max_steps=2),
                         lora={"rank": 4, "alpha": 8, "dropout": 0.0, "targets": ["q_proj", "v_proj", "down_proj"]})
    _, progress = torchrun(tmp_path, config, method.value)
    assert progress.done and progress.final_model_uri
    adapter = load_file(tmp_path / "out" / "adapter" / ADAPTER_WEIGHTS_NAME)
    assert any(v.abs().max() > 0 for k, v in adapter.items() if ".lora_B." in k)  # the adapters did train
    whole, args = load_pretrained(directory)  # the same adapter merged in one process
    apply_lora(whole, config.lora, quantize=method is SftMethod.QLORA)
    load_adapter_state_dict(whole, adapter)
    export_hf(merged_state_dict(whole), args, None, tmp_path / "one", eos_token_id=0)
    ids = torch.arange(24).reshape(2, 12) * 7 % 250
    exported = hf_logits(tmp_path / "out" / "model", ids)
    torch.testing.assert_close(exported, hf_logits(tmp_path / "one", ids), rtol=0, atol=TOLERANCE)
    assert not torch.allclose(exported, hf_logits(directory, ids), atol=1e-3)  # not the base's
    if method is SftMethod.LORA:
        base = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
        peft = PeftModel.from_pretrained(base, tmp_path / "out" / "adapter").eval()
        with torch.no_grad():
            torch.testing.assert_close(exported, peft(ids).logits, rtol=0, atol=PEFT_TOLERANCE)
