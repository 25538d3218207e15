"""A model exported straight after pretraining (no fine-tuning) answers chat requests: the export carries a
chat template whose end-of-turn token stops generation, and the directory still loads in transformers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer

from forge_trainer.data.tokenizer import EOS_TOKEN, IM_END, IM_START, train_tokenizer
from forge_trainer.model.args import ModelArgs
from forge_trainer.model.hf_export import export_hf
from forge_trainer.model.transformer import Transformer
from forge_trainer.serve.loading import LoadedModel, load_model
from forge_trainer.train.chat import ChatTokenizer
from tests.support.serve import CORPUS, server_torch_threads, serving

MODEL = "base"
MESSAGES = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say hello."}]


@pytest.fixture(autouse=True, scope="module")
def _server_torch_threads() -> Iterator[None]:
    with server_torch_threads():
        yield


def foreign_tokenizer() -> Tokenizer:
    """A reused tokenizer without the ChatML tokens: byte-level BPE whose only special token is `</s>`."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    return tok


@dataclass
class Export:
    path: Path
    tokenizer: Tokenizer
    end_of_turn: str
    """The token the chat template closes every turn with."""


def export_pretrained(root: Path, tok: Tokenizer, eos: str) -> Path:
    """A freshly initialised model exported as pretraining exports it: weights plus the dataset's tokenizer."""
    tok.save(str(root / "tokenizer.json"))
    args = ModelArgs(vocab_size=tok.get_vocab_size(), hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                     intermediate_size=64, max_seq_len=128)
    result = export_hf(Transformer(args), args, root / "tokenizer.json", str(root / "model"),
                       eos_token_id=tok.token_to_id(eos))
    return Path(result.uri.removeprefix("file://"))


@pytest.fixture(scope="module", params=["forge-tokenizer", "foreign-tokenizer"])
def export(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Export:
    root = tmp_path_factory.mktemp(request.param)
    if request.param == "forge-tokenizer":  # what `forge-trainer prepare` trains: <|endoftext|>, <|pad|>, ChatML
        tok = train_tokenizer(iter(CORPUS * 4), vocab_size=320)
        return Export(export_pretrained(root, tok, EOS_TOKEN), tok, IM_END)
    tok = foreign_tokenizer()
    return Export(export_pretrained(root, tok, "</s>"), tok, "</s>")


@pytest.fixture(scope="module")
def loaded(export: Export, tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    return load_model(str(export.path), cache_dir=tmp_path_factory.mktemp("cache"), device="cpu")


@pytest.fixture(scope="module")
def client(loaded: LoadedModel) -> Iterator[openai.OpenAI]:
    with serving(loaded, MODEL) as url:
        yield openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=30)


def test_export_carries_a_chat_template_transformers_renders(export: Export) -> None:
    config = json.loads((export.path / "tokenizer_config.json").read_text())
    assert config["chat_template"]
    tok = AutoTokenizer.from_pretrained(export.path)
    text = tok.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    assert "You are terse." in text and "Say hello." in text
    assert text.count(export.end_of_turn) == len(MESSAGES)  # every turn is closed
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert ids.count(tok.convert_tokens_to_ids(export.end_of_turn)) == len(MESSAGES)  # as one token each


def test_forge_tokenizer_export_renders_chats_as_fine_tuning_does(tmp_path: Path) -> None:
    tokenizer = train_tokenizer(iter(CORPUS * 4), vocab_size=320)
    path = export_pretrained(tmp_path, tokenizer, EOS_TOKEN)
    tok = AutoTokenizer.from_pretrained(path)
    text = tok.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    assert text.startswith(IM_START + "system\n") and text.endswith(IM_START + "assistant\n")
    assert tok(text, add_special_tokens=False)["input_ids"] == ChatTokenizer(tokenizer).prompt_ids(MESSAGES)


def test_pretrained_export_answers_chat_completions(client: openai.OpenAI, export: Export) -> None:
    tok = AutoTokenizer.from_pretrained(export.path)
    prompt = tok.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    out = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=8,  # type: ignore[arg-type]
                                         temperature=0)
    choice = out.choices[0]
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    assert out.usage is not None
    assert out.usage.prompt_tokens == len(tok(prompt, add_special_tokens=False)["input_ids"])
    assert 1 <= out.usage.completion_tokens <= 8

    stream = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=8,  # type: ignore[arg-type]
                                            temperature=0, stream=True)
    streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert streamed == choice.message.content


def test_the_end_of_turn_token_stops_the_reply(client: openai.OpenAI, export: Export, loaded: LoadedModel) -> None:
    end = loaded.tokenizer.convert_tokens_to_ids(export.end_of_turn)
    out = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=8,  # type: ignore[arg-type]
                                         temperature=0, logit_bias={str(end): 100})
    assert out.choices[0].finish_reason == "stop"
    assert out.choices[0].message.content == ""
    assert out.usage is not None and out.usage.completion_tokens == 1
