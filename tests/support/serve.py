"""Builds a tiny Hugging Face model directory in our export format, for the serving tests.

The directory holds what `forge_trainer.model.hf_export` writes: model.safetensors, config.json
(LlamaForCausalLM), generation_config.json, tokenizer.json and tokenizer_config.json with a chat
template and our special tokens.
"""

from __future__ import annotations

import atexit
import functools
import json
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import uvicorn
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    MixtralConfig,
    MixtralForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

from forge_trainer.serve.app import ServeLimits, ServingState, build_app
from forge_trainer.serve.loading import LoadedModel
from forge_trainer.serve.metrics import ServeMetrics
from forge_trainer.serve.server import default_cpu_threads
from tests.support.ports import free_port

EOS = "<|endoftext|>"
PAD = "<|pad|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = [EOS, PAD, IM_START, IM_END]

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "A model foundry turns a cluster into a place where models are trained and served.",
    "Kubernetes operators reconcile the desired state with the observed state.",
    "Tokens are generated one at a time, each conditioned on the ones before it.",
    "def add(a, b):\n    return a + b\n",
    "Hello world! How are you today? I am fine, thank you.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20",
]


def build_tokenizer(vocab_size: int = 300) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on a few sentences, with our special tokens and chat template."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=PAD,
                                   additional_special_tokens=[IM_START, IM_END], chat_template=CHAT_TEMPLATE)


def build_tiny_model(path: Path, *, hidden_size: int = 64, num_layers: int = 2, num_heads: int = 4,
                     num_kv_heads: int = 2, intermediate_size: int = 128, max_positions: int = 256,
                     vocab_size: int = 300, seed: int = 0, init_std: float = 0.2, moe: bool = False) -> Path:
    """Write a random tiny LlamaForCausalLM (MixtralForCausalLM with `moe`) and its tokenizer to `path` in
    our export format.

    `init_std` is large so that next-token logits are well separated: greedy decoding then picks the
    same token whatever the batch composition, which the batching tests rely on."""
    tokenizer = build_tokenizer(vocab_size)
    eos_id = tokenizer.convert_tokens_to_ids(EOS)
    pad_id = tokenizer.convert_tokens_to_ids(PAD)
    dims = dict(vocab_size=len(tokenizer), hidden_size=hidden_size, num_hidden_layers=num_layers,
                num_attention_heads=num_heads, num_key_value_heads=num_kv_heads, intermediate_size=intermediate_size,
                max_position_embeddings=max_positions, initializer_range=init_std, eos_token_id=eos_id,
                pad_token_id=pad_id, bos_token_id=None, tie_word_embeddings=False)
    torch.manual_seed(seed)
    model: PreTrainedModel
    if moe:
        model = MixtralForCausalLM(MixtralConfig(num_local_experts=4, num_experts_per_tok=2, **dims))
    else:
        model = LlamaForCausalLM(LlamaConfig(**dims))
    model.generation_config = GenerationConfig(eos_token_id=eos_id, pad_token_id=pad_id)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    # our export keeps the chat template inside tokenizer_config.json, as transformers 4 wrote it
    template_file = path / "chat_template.jinja"
    if template_file.exists():
        config_file = path / "tokenizer_config.json"
        tok_config = json.loads(config_file.read_text())
        tok_config["chat_template"] = template_file.read_text()
        config_file.write_text(json.dumps(tok_config, indent=2))
        template_file.unlink()
    return path


@contextmanager
def running_server(app: object, port: int) -> Iterator[str]:
    """Serve the ASGI `app` on 127.0.0.1:`port` in a thread; yields the base URL."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off",  # type: ignore[arg-type]
                                           access_log=False, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@functools.cache
def shared_tiny_model(moe: bool = False, max_positions: int = 256) -> Path:
    """One tiny model directory per kind (dense or MoE, context) and test process, built on first use and
    removed at exit."""
    root = Path(tempfile.mkdtemp(prefix="forge-serve-test-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return build_tiny_model(root / "model", moe=moe, max_positions=max_positions)


@contextmanager
def serving(loaded: LoadedModel, model_name: str, max_batch_size: int = 8,
            max_prefill_tokens: int | None = None, limits: ServeLimits | None = None) -> Iterator[str]:
    """The builtin runtime serving `loaded` on a free loopback port (within `limits`); yields the base URL."""
    metrics = ServeMetrics()
    state = ServingState(model_name=model_name)
    state.serve(loaded, max_batch_size=max_batch_size, metrics=metrics, max_prefill_tokens=max_prefill_tokens)
    try:
        with running_server(build_app(state, metrics, limits), free_port()) as url:
            yield url
    finally:
        assert state.engine is not None
        state.engine.stop()


@contextmanager
def server_torch_threads() -> Iterator[None]:
    """Run torch on as many CPU threads as `forge-trainer serve` does (every core but one, kept for the
    event loop); on a busy machine torch's default of every core stalls generation many times over."""
    before = torch.get_num_threads()
    torch.set_num_threads(default_cpu_threads())
    try:
        yield
    finally:
        torch.set_num_threads(before)
