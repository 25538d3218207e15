"""The transformer: presets, causality, KV cache, padding, MoE routing, and the Hugging Face export
loading unchanged in transformers with equal logits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from forge_trainer.config import Architecture, ModelConfig, SizePreset
from forge_trainer.model import KVCache, ModelArgs, Transformer, resolve_model_args
from forge_trainer.model.flops import active_params
from forge_trainer.model.hf_export import export_hf, load_hf
from tests.support.s3 import S3Server
from tests.support.training import EOS, PAD, one_thread, real_corpus, train_tokenizer

pytestmark = pytest.mark.usefixtures(one_thread.__name__)

VOCAB = 300


def tiny(arch: Architecture = Architecture.DENSE, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(resolve_model_args(ModelConfig(size=SizePreset.TINY, architecture=arch), VOCAB)).eval()


def test_tiny_preset_is_small_and_overrides_apply() -> None:
    args = resolve_model_args(ModelConfig(size=SizePreset.TINY), VOCAB)
    assert (args.hidden_size, args.num_layers, args.num_heads, args.vocab_size) == (64, 2, 4, VOCAB)
    custom = resolve_model_args(ModelConfig(size=SizePreset.TINY, num_layers=3, hidden_size=96), VOCAB)
    assert (custom.num_layers, custom.hidden_size, custom.num_heads) == (3, 96, 4)
    explicit = resolve_model_args(ModelConfig(hidden_size=32, num_layers=1, num_heads=2), VOCAB)
    assert explicit.num_kv_heads == 2 and explicit.intermediate_size == 128
    moe = resolve_model_args(ModelConfig(size=SizePreset.TINY, architecture=Architecture.MOE), VOCAB)
    assert moe.is_moe and (moe.num_experts, moe.experts_per_token) == (4, 2)


def test_size_presets_have_the_advertised_scale() -> None:
    for size, low, high in ((SizePreset.SMALL, 0.08e9, 0.2e9), (SizePreset.B1, 0.8e9, 1.5e9),
                            (SizePreset.B7, 5.5e9, 8e9)):
        args = resolve_model_args(ModelConfig(size=size), 32_000)
        total = active_params(args) + args.vocab_size * args.hidden_size
        assert low < total < high, (size, total)


def test_inconsistent_dimensions_name_the_field() -> None:
    with pytest.raises(ValueError, match="hiddenSize"):
        resolve_model_args(ModelConfig(size=SizePreset.TINY, hidden_size=66), VOCAB)


def test_future_tokens_do_not_change_past_logits() -> None:
    model = tiny()
    ids = torch.randint(0, VOCAB, (2, 16))
    changed = ids.clone()
    changed[:, 10:] = (changed[:, 10:] + 1) % VOCAB
    with torch.no_grad():
        a, b = model(ids), model(changed)
    assert a.shape == (2, 16, VOCAB)
    torch.testing.assert_close(a[:, :10], b[:, :10])
    assert not torch.allclose(a[:, 10:], b[:, 10:])


@pytest.mark.parametrize("arch", list(Architecture))
def test_kv_cache_decoding_matches_full_forward(arch: Architecture) -> None:
    model = tiny(arch)
    ids = torch.randint(0, VOCAB, (2, 12))
    cache = KVCache(model.args, batch_size=2, max_len=16, device="cpu", dtype=torch.float32)
    with torch.no_grad():
        full = model(ids)
        steps = [model(ids[:, :8], cache=cache)]
        steps += [model(ids[:, i:i + 1], cache=cache) for i in range(8, 12)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-4)
    assert cache.length == 12


def test_left_padding_does_not_change_logits_of_real_tokens() -> None:
    model = tiny()
    ids = torch.randint(2, VOCAB, (1, 10))
    padded = torch.cat([torch.ones(1, 3, dtype=torch.long), ids], dim=1)
    mask = torch.cat([torch.zeros(1, 3), torch.ones(1, 10)], dim=1).long()
    with torch.no_grad():
        plain, masked = model(ids), model(padded, attention_mask=mask)
    torch.testing.assert_close(masked[:, 3:], plain, atol=1e-5, rtol=1e-4)
    assert torch.isfinite(masked).all()


def test_moe_has_a_balance_loss_that_trains_the_router() -> None:
    model = tiny(Architecture.MOE).train()
    ids = torch.randint(0, VOCAB, (4, 32))
    model(ids)
    assert model.aux_loss is not None and model.aux_loss.item() >= 0.99  # 1.0 is perfectly balanced
    model.aux_loss.backward()
    gate = model.model.layers[0].block_sparse_moe.gate.weight
    assert gate.grad is not None and gate.grad.abs().sum() > 0
    assert tiny(Architecture.DENSE)(ids).shape == (4, 32, VOCAB) and tiny().aux_loss is None


def test_activation_checkpointing_gives_the_same_gradients() -> None:
    ids = torch.randint(0, VOCAB, (2, 16))
    grads = []
    for ckpt in (False, True):
        model = tiny(seed=3).train()
        model.gradient_checkpointing = ckpt
        model(ids).logsumexp(-1).mean().backward()
        grads.append(model.model.layers[0].self_attn.q_proj.weight.grad)
    torch.testing.assert_close(grads[0], grads[1])


def test_module_names_are_hugging_face_names() -> None:
    names = {n for n, _ in tiny().named_parameters()}
    assert {"model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight",
            "model.layers.1.mlp.down_proj.weight", "model.norm.weight", "lm_head.weight"} <= names
    moe = {n for n, _ in tiny(Architecture.MOE).named_parameters()}
    assert {"model.layers.0.block_sparse_moe.gate.weight",
            "model.layers.0.block_sparse_moe.experts.3.w2.weight"} <= moe


@pytest.fixture(scope="module")
def tokenizer_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    train_tokenizer(real_corpus(60), vocab_size=VOCAB).save(str(path))
    return path


@pytest.mark.parametrize(("arch", "hf_class"), [(Architecture.DENSE, "LlamaForCausalLM"),
                                                (Architecture.MOE, "MixtralForCausalLM")])
def test_export_loads_in_transformers_with_equal_logits(arch: Architecture, hf_class: str, tmp_path: Path,
                                                        tokenizer_file: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    model = tiny(arch)
    export_hf(model, model.args, tokenizer_file, tmp_path, eos_token_id=0, pad_token_id=1)
    hf = AutoModelForCausalLM.from_pretrained(tmp_path)
    hf.eval()
    assert type(hf).__name__ == hf_class
    tok = AutoTokenizer.from_pretrained(tmp_path)
    assert (tok.eos_token, tok.pad_token) == (EOS, PAD)
    ids = torch.tensor([tok("The quick brown fox returns a new list.")["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, model(ids), atol=1e-5, rtol=1e-4)
    assert GenerationConfig.from_pretrained(tmp_path).eos_token_id == 0
    loaded, args = load_hf(tmp_path)
    assert args == model.args
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids), model(ids))


def test_export_to_s3_and_load_back(s3: S3Server, tokenizer_file: Path) -> None:
    model = tiny(Architecture.MOE)
    result = export_hf(model, model.args, tokenizer_file, s3.uri("runs/a/model"), eos_token_id=0,
                       store_config=s3.config)
    assert result.uri == s3.uri("runs/a/model") and result.digest.startswith("sha256:")
    loaded, _ = load_hf(s3.uri("runs/a/model"), s3.config)
    ids = torch.randint(0, VOCAB, (1, 8))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids), model(ids))


def test_export_config_records_our_dimensions(tmp_path: Path) -> None:
    model = tiny()
    export_hf(model, model.args, None, tmp_path, eos_token_id=0)
    config = json.loads((tmp_path / "config.json").read_text())
    assert ModelArgs.from_dict(config["forge"]) == model.args
    assert config["num_key_value_heads"] == 2 and config["architectures"] == ["LlamaForCausalLM"]
