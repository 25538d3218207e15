"""Loading a model to serve: from a local path or S3, checked against its digest, with a LoRA adapter
merged into its weights."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

from forge_trainer.serve.loading import LoadError, load_model
from forge_trainer.serve.model_files import model_dir_digest
from forge_trainer.store import open_uri
from tests.support.s3 import S3Server
from tests.support.serve import EOS, PAD, build_tokenizer, server_torch_threads, shared_tiny_model


@pytest.fixture(autouse=True, scope="module")
def _server_torch_threads() -> Iterator[None]:
    with server_torch_threads():
        yield


def test_digest_is_sha256_of_sorted_path_and_file_hash_lines(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "b.json").write_bytes(b"{}")
    (tmp_path / "sub" / "a.bin").write_bytes(b"\x00\x01")
    lines = "".join(f"{rel} sha256:{hashlib.sha256(data).hexdigest()}\n"
                    for rel, data in sorted([("b.json", b"{}"), ("sub/a.bin", b"\x00\x01")]))
    assert model_dir_digest(tmp_path) == "sha256:" + hashlib.sha256(lines.encode()).hexdigest()
    before = model_dir_digest(tmp_path)
    (tmp_path / "sub" / "a.bin").write_bytes(b"\x00\x02")
    assert model_dir_digest(tmp_path) != before


def test_an_export_from_the_training_side_loads_with_its_recorded_digest(tmp_path: Path) -> None:
    from forge_trainer.model.args import ModelArgs
    from forge_trainer.model.hf_export import export_hf
    from forge_trainer.model.transformer import Transformer

    tokenizer = build_tokenizer()
    tokenizer.backend_tokenizer.save(str(tmp_path / "tokenizer.json"))
    args = ModelArgs(vocab_size=len(tokenizer), hidden_size=32, num_layers=1, num_heads=4, num_kv_heads=2,
                     intermediate_size=64, max_seq_len=64)
    eos = tokenizer.convert_tokens_to_ids(EOS)
    result = export_hf(Transformer(args), args, tmp_path / "tokenizer.json", str(tmp_path / "export"),
                       eos_token_id=eos, pad_token_id=tokenizer.convert_tokens_to_ids(PAD))
    loaded = load_model(result.uri, cache_dir=tmp_path / "cache", digest=result.digest, device="cpu")
    assert loaded.digest == result.digest
    assert loaded.context_length == 64
    assert eos in loaded.eos_token_ids


def test_adapter_saved_by_lora_training_serves_the_fine_tuned_model(tmp_path: Path) -> None:
    from forge_trainer.config import LoraConfig
    from forge_trainer.model.args import ModelArgs
    from forge_trainer.model.hf_export import export_hf
    from forge_trainer.model.transformer import Transformer
    from forge_trainer.train.lora import apply_lora, save_adapter

    tokenizer = build_tokenizer()
    tokenizer.backend_tokenizer.save(str(tmp_path / "tokenizer.json"))
    args = ModelArgs(vocab_size=len(tokenizer), hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                     intermediate_size=64, max_seq_len=64)
    torch.manual_seed(3)
    trained = Transformer(args).eval()
    base = export_hf(trained, args, tmp_path / "tokenizer.json", str(tmp_path / "base"),
                     eos_token_id=tokenizer.convert_tokens_to_ids(EOS))
    lora = LoraConfig(rank=4, alpha=8.0, dropout=0.0, targets=["q_proj", "v_proj", "down_proj"])
    apply_lora(trained, lora)
    with torch.no_grad():  # stand-in for fine-tuning: B starts at zero, which would make the adapter a no-op
        for name, p in trained.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5)
    save_adapter(trained, lora, tmp_path / "adapter")
    served = load_model(base.uri, cache_dir=tmp_path / "cache", digest=base.digest,
                        adapter_uri=str(tmp_path / "adapter"), device="cpu")
    ids = torch.tensor([tokenizer("Hello world, how are you")["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(served.model(ids).logits, trained(ids), rtol=1e-4, atol=1e-4)
        plain = load_model(base.uri, cache_dir=tmp_path / "cache2", device="cpu")
        assert not torch.allclose(plain.model(ids).logits, trained(ids), atol=1e-3)


def upload(s3: S3Server, local: Path, prefix: str) -> str:
    store, _ = open_uri(s3.uri(), s3.config)
    for f in sorted(local.rglob("*")):
        if f.is_file():
            store.put_file(f"{prefix}/{f.relative_to(local).as_posix()}", f)
    return s3.uri(prefix)


def test_loads_from_s3_when_the_digest_matches(s3: S3Server, tmp_path: Path) -> None:
    uri = upload(s3, shared_tiny_model(), "forge/ns/run/final")
    digest = model_dir_digest(shared_tiny_model())
    loaded = load_model(uri, cache_dir=tmp_path, digest=digest, device="cpu", store=s3.config)
    assert loaded.digest == digest
    assert loaded.context_length == 256
    assert loaded.tokenizer.chat_template


def test_refuses_a_model_whose_digest_differs(s3: S3Server, tmp_path: Path) -> None:
    uri = upload(s3, shared_tiny_model(), "m")
    with pytest.raises(LoadError, match=rf"^{uri}: digest mismatch: expected sha256:0+, found sha256:") as info:
        load_model(uri, cache_dir=tmp_path, digest="sha256:" + "0" * 64, device="cpu", store=s3.config)
    assert "\n" not in str(info.value)


def test_missing_model_error_names_the_uri(tmp_path: Path) -> None:
    with pytest.raises(LoadError, match=str(tmp_path / "nothere")):
        load_model(str(tmp_path / "nothere"), cache_dir=tmp_path, device="cpu")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "config.json").write_text("{}")
    with pytest.raises(LoadError, match="junk: not a loadable"):
        load_model(str(tmp_path / "junk"), cache_dir=tmp_path, device="cpu")


def write_adapter(path: Path, targets: dict[str, tuple[torch.Tensor, torch.Tensor]], r: int, alpha: float) -> None:
    path.mkdir(parents=True)
    save_file({f"base_model.model.{name}.lora_{ab}.weight": t.contiguous()
               for name, (a, b) in targets.items() for ab, t in (("A", a), ("B", b))},
              str(path / "adapter_model.safetensors"))
    (path / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": alpha,
        "target_modules": sorted({n.rsplit(".", 1)[-1] for n in targets})}))


def test_lora_adapter_is_merged_into_the_weights(tmp_path: Path) -> None:
    base = AutoModelForCausalLM.from_pretrained(shared_tiny_model())
    modules = dict(base.named_modules())
    torch.manual_seed(1)
    targets = {}
    for name in ("model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj"):
        w = modules[name].weight
        targets[name] = (torch.randn(4, w.shape[1]), torch.randn(w.shape[0], 4))
    write_adapter(tmp_path / "adapter", targets, r=4, alpha=8.0)
    loaded = load_model(str(shared_tiny_model()), cache_dir=tmp_path / "cache",
                        adapter_uri=str(tmp_path / "adapter"), device="cpu")
    merged = dict(loaded.model.named_modules())
    for name, (a, b) in targets.items():
        expected = modules[name].weight + (8.0 / 4) * b @ a
        torch.testing.assert_close(merged[name].weight, expected)
    untouched = "model.layers.0.self_attn.k_proj"
    torch.testing.assert_close(merged[untouched].weight, modules[untouched].weight)


def test_adapter_for_another_model_is_refused(tmp_path: Path) -> None:
    write_adapter(tmp_path / "adapter", {"model.layers.9.self_attn.q_proj": (torch.zeros(2, 64), torch.zeros(64, 2))},
                  r=2, alpha=2.0)
    with pytest.raises(LoadError, match=r"adapter: .*model\.layers\.9\.self_attn\.q_proj.*not a linear layer"):
        load_model(str(shared_tiny_model()), cache_dir=tmp_path / "cache", adapter_uri=str(tmp_path / "adapter"),
                   device="cpu")
    shutil.rmtree(tmp_path / "adapter")
    write_adapter(tmp_path / "adapter", {"model.layers.0.self_attn.q_proj": (torch.zeros(2, 7), torch.zeros(64, 2))},
                  r=2, alpha=2.0)
    with pytest.raises(LoadError, match="shape"):
        load_model(str(shared_tiny_model()), cache_dir=tmp_path / "cache", adapter_uri=str(tmp_path / "adapter"),
                   device="cpu")
