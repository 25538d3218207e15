"""Importing open-weights checkpoints written by transformers itself (Llama, Mistral, Qwen2, Mixtral; one
file or sharded with an index; fp32 or bf16 on disk): our logits equal transformers' at step 0, workers
sharding the model read only their rows, training continues from the base, and the export keeps the
base's model_type and reloads in transformers with equal logits.

Tolerance: both sides compute in float32 from the same on-disk values, with the same operations in the
same order, so logits agree to 1e-5 absolute (measured: 0 for dense models, 6e-8 for Mixtral, whose
expert sums are accumulated in another order).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from tokenizers import Tokenizer
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    MistralConfig,
    MixtralConfig,
    PretrainedConfig,
    Qwen2Config,
)

from forge_trainer.config import PrepareConfig, SftMethod
from forge_trainer.data.manifest import Split
from forge_trainer.data.prepare import run_prepare
from forge_trainer.data.shards import load_manifest
from forge_trainer.errors import ConfigError, WorkloadError
from forge_trainer.model.hf_export import load_hf
from forge_trainer.model.hf_import import HFImportError, load_pretrained, load_weights, read_config
from forge_trainer.store import LocalStore, open_uri, sha256_file
from forge_trainer.train.batches import TokenSequences
from forge_trainer.train.chat_template import TemplateChatTokenizer
from forge_trainer.train.parallel import build_model, wrap_model
from forge_trainer.train.pretrain import run_pretrain
from forge_trainer.train.runtime import Runtime
from forge_trainer.train.sft import run_sft
from tests.support.posttrain import make_tokenizer, sft_config
from tests.support.s3 import S3Server
from tests.support.training import one_thread, pretrain_config, real_corpus, write_dataset

pytestmark = pytest.mark.usefixtures(one_thread.__name__)

TOLERANCE = 1e-5
VOCAB = 96
DIMS: dict[str, Any] = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                            num_key_value_heads=2, max_position_embeddings=64)
LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 16}


def hf_config(family: str, vocab: int = VOCAB, **extra: Any) -> PretrainedConfig:
    """A tiny config of `family` exercising what that family adds: Llama 3 rope scaling, a head_dim that is
    not hidden/heads and tied embeddings; Mistral's sliding window; Qwen2's biases and tied embeddings."""
    dims = {**DIMS, "vocab_size": vocab, **extra}
    if family == "llama":
        return LlamaConfig(**{"rope_scaling": LLAMA3_ROPE, "rope_theta": 5000.0, "head_dim": 16,
                              "tie_word_embeddings": True, **dims})
    if family == "mistral":
        return MistralConfig(**{"sliding_window": 5, **dims})
    if family == "qwen2":
        return Qwen2Config(**{"tie_word_embeddings": True, **dims})
    return MixtralConfig(**{"num_local_experts": 4, "num_experts_per_tok": 2, "sliding_window": 7, **dims})


def write_hf_model(family: str, out: Path, dtype: torch.dtype = torch.float32, shard: str | None = None,
                   seed: int = 0, **extra: Any) -> Path:
    """A random model of `family` saved by transformers' own save_pretrained (sharded when `shard`)."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(hf_config(family, **extra))
    if family == "qwen2":  # transformers initialises biases to zero; make them count
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                torch.nn.init.normal_(proj.bias, std=0.2)
    model.to(dtype).save_pretrained(out, **({"max_shard_size": shard} if shard else {}))
    return out


def hf_logits(directory: Path, ids: torch.Tensor) -> torch.Tensor:
    """transformers' own logits for `ids`, the model loaded from `directory` in float32."""
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    with torch.no_grad():
        logits: torch.Tensor = model(ids).logits
    return logits


FAMILIES = ("llama", "mistral", "qwen2", "mixtral")


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(("dtype", "shard"), [(torch.float32, None), (torch.bfloat16, "20KB"), (torch.float16, None)],
                         ids=["fp32-single", "bf16-sharded", "fp16-single"])
def test_logits_equal_transformers(family: str, dtype: torch.dtype, shard: str | None, tmp_path: Path) -> None:
    directory = write_hf_model(family, tmp_path / family, dtype, shard)
    assert (directory / "model.safetensors.index.json").exists() == (shard is not None)
    ids = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(1))
    ours, args = load_pretrained(directory)
    assert args.family == family
    with torch.no_grad():
        got = ours.eval()(ids)
    torch.testing.assert_close(got, hf_logits(directory, ids), rtol=0, atol=TOLERANCE)


def test_mistral_sliding_window_is_applied(tmp_path: Path) -> None:
    """The window changes the logits of positions past it: with it removed they would differ."""
    windowed = write_hf_model("mistral", tmp_path / "w", sliding_window=4)
    unbounded = write_hf_model("mistral", tmp_path / "u", sliding_window=None)
    ids = torch.randint(0, VOCAB, (1, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        a = load_pretrained(windowed)[0].eval()(ids)
        b = load_pretrained(unbounded)[0].eval()(ids)
    torch.testing.assert_close(a[:, :4], b[:, :4])  # same weights, within the window
    assert (a[:, 4:] - b[:, 4:]).abs().max() > 1e-3


def _config(directory: Path, **changes: Any) -> Path:
    path = directory / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))
    return directory


@pytest.mark.parametrize(("changes", "message"), [
    ({"model_type": "gemma2"}, r"model_type 'gemma2' is not supported; supported: llama, mistral, qwen2, mixtral"),
    ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}},
     r"rope_parameters.rope_type 'yarn' is not supported; supported: default, linear, llama3"),
    ({"hidden_act": "gelu"}, r"hidden_act='gelu' is not supported for model_type llama"),
    ({"mlp_bias": True}, r"mlp_bias=True is not supported"),
    ({"quantization_config": {"quant_method": "awq"}}, r"quantization_config=.* quantized checkpoints"),
    ({"num_hidden_layers": "two"}, r"num_hidden_layers must be a number"),
])
def test_unrepresentable_configs_are_refused_naming_the_key(changes: dict[str, Any], message: str,
                                                             tmp_path: Path) -> None:
    directory = _config(write_hf_model("llama", tmp_path / "m"), **changes)
    with pytest.raises(HFImportError, match=message):
        load_pretrained(directory)


def test_bad_weight_files_are_refused_naming_the_file(tmp_path: Path) -> None:
    directory = write_hf_model("qwen2", tmp_path / "m")
    (directory / "model.safetensors").rename(directory / "pytorch_model.bin")
    with pytest.raises(HFImportError, match=r"no model.safetensors .*pytorch_model.bin: pickled weights"):
        load_pretrained(directory)
    other = _config(write_hf_model("qwen2", tmp_path / "o"), num_hidden_layers=3)
    with pytest.raises(HFImportError, match=r"no tensor model.layers.2"):
        load_pretrained(other)
    wider = _config(write_hf_model("qwen2", tmp_path / "w"), intermediate_size=64)
    with pytest.raises(HFImportError, match=r"gate_proj.weight has shape \[48, 32\]; the model expects \[64, 32\]"):
        load_pretrained(wider)


def _sharded_worker(rank: int, rendezvous: str, directory: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=2)
    try:
        runtime = Runtime(rank, 2, rank, torch.device("cpu"), True)
        _, args = read_config(Path(directory))
        model = wrap_model(build_model(args), runtime, load=lambda m: load_weights(m, Path(directory)))
        local = sum(p.to_local().numel() for p in model.parameters())  # type: ignore[attr-defined]
        ids = torch.arange(16).reshape(1, 16) % VOCAB
        with torch.no_grad():
            logits = model.eval()(ids)
        # and it trains: one optimizer step changes the embedding (tied to the head for qwen2)
        model.reshard()  # type: ignore[operator]  (the root keeps its parameters gathered after a forward)
        before = model.model.embed_tokens.weight.full_tensor().clone()  # type: ignore[union-attr, operator]
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        F.cross_entropy(model.train()(ids)[0, :-1], ids[0, 1:]).backward()
        optimizer.step()
        model.reshard()  # type: ignore[operator]
        after = model.model.embed_tokens.weight.full_tensor()  # type: ignore[union-attr, operator]
        moved = (after - before).abs().max().item()
        if rank == 0:
            torch.save({"local": local, "logits": logits, "moved": moved}, out)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("family", ["qwen2", "mixtral"])
def test_two_fsdp_workers_each_read_their_half_and_compute_transformers_logits(family: str, tmp_path: Path) -> None:
    directory = write_hf_model(family, tmp_path / family, torch.bfloat16, "20KB")
    out = tmp_path / "out.pt"
    mp.spawn(_sharded_worker, args=(str(tmp_path / "rdzv"), str(directory), str(out)), nprocs=2, join=True)
    saved = torch.load(out)
    whole = load_pretrained(directory)[0]
    assert saved["local"] <= whole.num_parameters() / 2 + 100  # a worker holds only its half
    expected = hf_logits(directory, torch.arange(16).reshape(1, 16) % VOCAB)
    torch.testing.assert_close(saved["logits"], expected, rtol=0, atol=TOLERANCE)
    assert saved["moved"] > 1e-4


MISTRAL_TEMPLATE = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
                    "{% elif m['role'] == 'assistant' %}{{ m['content'] }}{{ eos_token }}"
                    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}"
                    "{% endfor %}")


@pytest.mark.parametrize("family", ["mistral", "llama"])  # llama: tied embeddings, llama3 rope, head_dim
def test_continued_pretraining_starts_from_the_base_and_exports_its_model_type(family: str, tmp_path: Path) -> None:
    dataset = write_dataset(LocalStore(tmp_path / "ds"), "", real_corpus(120), vocab_size=256)
    # the base's embedding table has more rows than the dataset's tokenizer has tokens, as Qwen2's does
    base = write_hf_model(family, tmp_path / "base", torch.bfloat16, "30KB", vocab=260,
                          max_position_embeddings=128)
    # the dataset was tokenized with the base's own tokenizer, whose config carries a chat template
    shutil.copy(tmp_path / "ds" / "tokenizer.json", base / "tokenizer.json")
    tok_config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|endoftext|>",
                  "eos_token": "<|endoftext|>", "chat_template": MISTRAL_TEMPLATE}
    (base / "tokenizer_config.json").write_text(json.dumps(tok_config))
    config = pretrain_config(dataset, tmp_path / "run", model=None, initModel=str(base),
                             hyperparameters={"maxSteps": 3, "evalInterval": 0, "sequenceLength": 32})
    result = run_pretrain(config)
    # step 1's loss is transformers' loss of the base on the first global batch
    manifest, _ = load_manifest(dataset)
    hp = config.hyperparameters
    batch = TokenSequences(dataset, manifest, Split.TRAIN, hp.sequence_length, hp.seed).batch(
        range(hp.global_batch_size))
    logits = hf_logits(base, batch["input_ids"])
    expected = F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=-100).item()
    assert result.losses[1] == pytest.approx(expected, rel=1e-4)
    export = tmp_path / "run" / "model"
    exported = json.loads((export / "config.json").read_text())
    assert exported["model_type"] == family
    assert exported["tie_word_embeddings"] == (family == "llama")
    ids = batch["input_ids"][:2]
    with torch.no_grad():
        ours = load_hf(export)[0].eval()(ids)
    torch.testing.assert_close(ours, hf_logits(export, ids), rtol=0, atol=TOLERANCE)
    for name in ("tokenizer.json", "tokenizer_config.json"):  # the base's own files, byte for byte
        assert (export / name).read_bytes() == (base / name).read_bytes(), name
    chat = AutoTokenizer.from_pretrained(export).apply_chat_template([{"role": "user", "content": "hi"}],
                                                                     tokenize=False)
    assert chat == "<|endoftext|>[INST] hi [/INST]"


def test_a_base_whose_tokenizer_is_larger_than_its_model_is_refused(tmp_path: Path) -> None:
    dataset = write_dataset(LocalStore(tmp_path / "ds"), "", real_corpus(60), vocab_size=256)
    base = write_hf_model("llama", tmp_path / "base", vocab=200)
    with pytest.raises(ConfigError, match=r"vocabulary \(200\) differs from the dataset tokenizer's \(25[0-9]\)"):
        run_pretrain(pretrain_config(dataset, tmp_path / "run", model=None, initModel=str(base),
                                     hyperparameters={"maxSteps": 1}))


def _chat_base(tmp_path: Path) -> Path:
    """A transformers-written Qwen2 base whose tokenizer_config.json carries a Mistral-style [INST] template."""
    tok = make_tokenizer()
    base = write_hf_model("qwen2", tmp_path / "base", torch.bfloat16, "40KB", vocab=tok.get_vocab_size(),
                          max_position_embeddings=128)
    (base / "tokenizer.json").write_text(tok.to_str())
    tok_config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|endoftext|>",
                  "eos_token": "<|endoftext|>", "chat_template": MISTRAL_TEMPLATE}
    (base / "tokenizer_config.json").write_text(json.dumps(tok_config))
    return base


def test_the_base_chat_template_renders_as_transformers_and_trains_only_the_answers(tmp_path: Path) -> None:
    base = _chat_base(tmp_path)
    tok_config = json.loads((base / "tokenizer_config.json").read_text())
    chat = TemplateChatTokenizer(Tokenizer.from_file(str(base / "tokenizer.json")), MISTRAL_TEMPLATE, tok_config)
    convo = [{"role": "user", "content": "What is 2 plus 2?"}, {"role": "assistant", "content": "4"},
             {"role": "user", "content": "And 3 plus 1?"}, {"role": "assistant", "content": "Also 4"}]
    rendered = chat.render(convo)
    hf = AutoTokenizer.from_pretrained(base)
    # the text is transformers' rendering; ids are the tokenizers library's (which the datasets use)
    assert rendered.ids == chat.encode(hf.apply_chat_template(convo, tokenize=False))
    trained = [i for i, t in zip(rendered.ids, rendered.trained, strict=True) if t]
    assert chat.tok.decode(trained, skip_special_tokens=False) == "4<|endoftext|>Also 4<|endoftext|>"
    assert chat.im_end == chat.tok.token_to_id("<|endoftext|>")
    assert chat.prompt_ids(convo[:1]) == chat.encode(hf.apply_chat_template(convo[:1], tokenize=False,
                                                                             add_generation_prompt=True))
    # a template that refuses system turns gets the system text at the start of the first user turn
    with_system = chat.render([{"role": "system", "content": "Be brief."}, *convo[:2]])
    assert chat.tok.decode(with_system.ids, skip_special_tokens=False).startswith("<|endoftext|>[INST] Be brief.")


@pytest.mark.parametrize("method", [SftMethod.FULL, SftMethod.LORA, SftMethod.QLORA])
def test_sft_from_a_transformers_base_trains_and_exports_the_base_type(method: SftMethod, tmp_path: Path) -> None:
    config = sft_config(tmp_path, method, steps=4, lr=1e-2)
    shutil.rmtree(tmp_path / "base")
    base = _chat_base(tmp_path)
    result = run_sft(config.model_copy(update={"model": None}))
    losses = list(result.losses.values())
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))
    export = tmp_path / "out" / "model"
    assert json.loads((export / "config.json").read_text())["model_type"] == "qwen2"
    ids = torch.arange(12).reshape(1, 12)
    with torch.no_grad():
        ours = load_hf(export)[0].eval()(ids)
    torch.testing.assert_close(ours, hf_logits(export, ids), rtol=0, atol=TOLERANCE)
    assert (export / "tokenizer_config.json").read_bytes() == (base / "tokenizer_config.json").read_bytes()
    if method is SftMethod.LORA:  # the PEFT adapter loads onto the transformers base: the merged export's logits
        import peft

        hf_base = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        adapted = peft.PeftModel.from_pretrained(hf_base, tmp_path / "out" / "adapter").eval()
        with torch.no_grad():
            torch.testing.assert_close(adapted(ids).logits, ours, rtol=1e-4, atol=1e-4)


def test_a_dataset_tokenizes_with_a_model_directory_tokenizer(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "docs.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in real_corpus(40)))
    base = write_hf_model("llama", tmp_path / "base", vocab=300)
    make_tokenizer().save(str(base / "tokenizer.json"))

    def prepare(out: str) -> Any:
        return run_prepare(PrepareConfig.model_validate({
            "source": str(source), "output": str(tmp_path / out), "tokenizer": {"uri": str(base)},
            "split": {"validationFraction": 0.2}}))

    manifest = prepare("a")
    assert manifest.tokenizer.sha256 == sha256_file(base / "tokenizer.json")
    (base / "tokenizer.json").rename(base / "tokenizer.model")
    with pytest.raises(WorkloadError, match=r"has no tokenizer.json \(it has only a SentencePiece tokenizer.model\)"):
        prepare("b")


def test_continued_pretraining_from_a_base_in_the_object_store(s3: S3Server, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The base mirrored into S3 (as `aws s3 sync` leaves it) trains as the local directory does, and the
    node's copy of it is gone once loaded."""
    (tmp_path / "node-tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "node-tmp"))  # the node's temporary directory
    store, _ = open_uri(s3.uri(), s3.config)
    dataset = write_dataset(store, "datasets/docs", real_corpus(120), vocab_size=256)
    base = write_hf_model("qwen2", tmp_path / "base", torch.bfloat16, "30KB", vocab=260, max_position_embeddings=128)
    for path in base.iterdir():
        store.put_file(f"models/qwen2/{path.name}", path)
    store.put_bytes("models/qwen2/pytorch_model.bin", b"not read: pickles are never opened")
    hp = {"maxSteps": 2, "evalInterval": 0, "sequenceLength": 32}
    remote = run_pretrain(pretrain_config(dataset, s3.uri("runs/remote"), model=None, store=s3.config.to_wire(),
                                          initModel=s3.uri("models/qwen2"), hyperparameters=hp))
    local = run_pretrain(pretrain_config(dataset, s3.uri("runs/local"), model=None, store=s3.config.to_wire(),
                                         initModel=str(base), hyperparameters=hp))
    assert remote.losses == local.losses
    assert list((tmp_path / "node-tmp").glob("forge-base-*")) == []
