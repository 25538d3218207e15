"""Scoring on /v1/completions (`echo`, `logprobs`, `max_tokens` 0), as lm-evaluation-harness's
`local-completions` model and the legacy OpenAI API use it, checked against `transformers` running the
same model directory; and the hostile versions of those requests."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
import torch
from transformers import AutoModelForCausalLM, PreTrainedModel

from forge_trainer.serve.engine import Engine
from forge_trainer.serve.loading import LoadedModel, load_model
from forge_trainer.serve.sampling import SamplingParams, TokenLogprob
from tests.support.serve import server_torch_threads, serving, shared_tiny_model

MODEL = "tiny-scorer"
TOLERANCE = 1e-4
"""Largest difference allowed between our log-probabilities and transformers' (both float32 on a CPU;
they differ only by the order of floating-point sums in batched and single forward passes)."""


@pytest.fixture(autouse=True, scope="module")
def _server_torch_threads() -> Iterator[None]:
    with server_torch_threads():
        yield


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    return load_model(str(shared_tiny_model()), cache_dir=tmp_path_factory.mktemp("cache"), device="cpu")


@pytest.fixture(scope="module")
def reference() -> PreTrainedModel:
    """The same model directory loaded by transformers alone, as a user would load it."""
    model: PreTrainedModel = AutoModelForCausalLM.from_pretrained(shared_tiny_model(), dtype=torch.float32)
    return model.eval()


@pytest.fixture(scope="module")
def base_url(loaded: LoadedModel) -> Iterator[str]:
    with serving(loaded, MODEL, max_batch_size=4) as url:
        yield url


def complete(base_url: str, **body: Any) -> httpx.Response:
    return httpx.post(base_url + "/v1/completions", json={"model": MODEL, **body}, timeout=60)


def log_softmax(reference: PreTrainedModel, ids: list[int]) -> torch.Tensor:
    """transformers' next-token log-probabilities at every position of `ids`, in float32."""
    with torch.no_grad():
        logits = reference(input_ids=torch.tensor([ids])).logits[0]
    return torch.log_softmax(logits.float(), dim=-1)


PROMPTS = ["The quick brown fox jumps", "Hello world! How are you today?", "def add(a, b):\n    return a + b",
           "Kubernetes"]


def test_echoed_prompt_logprobs_equal_transformers_log_softmax(
        base_url: str, loaded: LoadedModel, reference: PreTrainedModel) -> None:
    # a batch of prompts of different lengths: they are prefilled together, left-padded
    ids = [loaded.tokenizer(p)["input_ids"] for p in PROMPTS]
    r = complete(base_url, prompt=ids, echo=True, logprobs=3, max_tokens=1, temperature=0)
    assert r.status_code == 200, r.text
    choices = sorted(r.json()["choices"], key=lambda c: c["index"])
    for prompt, prompt_ids, choice in zip(PROMPTS, ids, choices, strict=True):
        lp = choice["logprobs"]
        expected = log_softmax(reference, prompt_ids)
        # one entry per prompt token and one for the generated token; nothing predicts the first
        assert len(lp["token_logprobs"]) == len(prompt_ids) + 1
        assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
        want = [expected[i, t].item() for i, t in enumerate(prompt_ids[1:])]
        assert lp["token_logprobs"][1:-1] == pytest.approx(want, abs=TOLERANCE)
        for i in range(1, len(prompt_ids)):
            top3 = torch.topk(expected[i - 1], 3)
            alternatives = {loaded.tokenizer.decode([t]): v for t, v in zip(top3.indices.tolist(),
                                                                           top3.values.tolist(), strict=True)}
            for token, value in alternatives.items():
                assert lp["top_logprobs"][i][token] == pytest.approx(value, abs=TOLERANCE)
        # the generated token is the greedy one: its log-probability is the largest at the last position
        greedy = int(expected[-1].argmax())
        assert lp["token_logprobs"][-1] == pytest.approx(expected[-1, greedy].item(), abs=TOLERANCE)
        assert lp["token_logprobs"][-1] == max(lp["top_logprobs"][-1].values())
        assert lp["tokens"][:-1] == [loaded.tokenizer.decode([t]) for t in prompt_ids]
        assert choice["text"].startswith(prompt)
        assert lp["text_offset"][0] == 0
        assert all(b - a == len(t) for a, b, t in zip(lp["text_offset"], lp["text_offset"][1:], lp["tokens"],
                                                      strict=False))


def test_scoring_in_chunks_of_positions_equals_transformers(loaded: LoadedModel,
                                                            reference: PreTrainedModel) -> None:
    """A group of prompts whose logits would exceed the engine's scoring budget is prefilled a few
    positions at a time: the same log-probabilities, and decoding goes on from the right cache."""
    engine = Engine(loaded.model, loaded.tokenizer, eos_token_ids=set(), max_batch_size=4,
                    context_length=loaded.context_length, pad_token_id=loaded.pad_token_id)
    engine.scoring_logits = 3 * 2 * int(loaded.model.config.vocab_size)  # 3 positions per pass for 2 rows
    prompts = [loaded.tokenizer(p)["input_ids"] for p in PROMPTS[:2]]
    params = SamplingParams(max_tokens=3, temperature=0.0, logprobs=1, echo=True)

    async def score() -> dict[int, list[TokenLogprob]]:
        scored: dict[int, list[TokenLogprob]] = {0: [], 1: []}
        async for batch in engine.submit_many([(ids, params) for ids in prompts]).batches():
            for index, delta in batch:
                assert delta.error is None
                scored[index].extend(delta.logprobs)
        return scored

    engine.start()
    try:
        scored = asyncio.run(score())
    finally:
        engine.stop()
    for index, ids in enumerate(prompts):
        tokens = [t.token for t in scored[index]]
        assert tokens[:len(ids)] == ids and len(tokens) == len(ids) + 3
        expected = log_softmax(reference, tokens)
        assert [t.logprob for t in scored[index][1:]] == pytest.approx(
            [expected[i, t].item() for i, t in enumerate(tokens[1:])], abs=TOLERANCE)
        assert tokens[len(ids):] == [int(expected[i].argmax()) for i in range(len(ids) - 1, len(tokens) - 1)]


def test_max_tokens_zero_scores_the_prompt_and_generates_nothing(
        base_url: str, loaded: LoadedModel, reference: PreTrainedModel) -> None:
    prompt = PROMPTS[1]
    r = complete(base_url, prompt=prompt, echo=True, logprobs=0, max_tokens=0)
    assert r.status_code == 200, r.text
    body = r.json()
    choice = body["choices"][0]
    ids = loaded.tokenizer(prompt)["input_ids"]
    assert choice["text"] == prompt
    assert choice["finish_reason"] == "length"
    assert body["usage"] == {"prompt_tokens": len(ids), "completion_tokens": 0, "total_tokens": len(ids)}
    expected = log_softmax(reference, ids)
    assert choice["logprobs"]["token_logprobs"][1:] == pytest.approx(
        [expected[i, t].item() for i, t in enumerate(ids[1:])], abs=TOLERANCE)
    # logprobs 0: no alternatives, only the token itself
    assert all(len(top) == 1 for top in choice["logprobs"]["top_logprobs"][1:])


def test_generated_tokens_logprobs_without_echo(base_url: str, loaded: LoadedModel,
                                                reference: PreTrainedModel) -> None:
    client = openai.OpenAI(base_url=base_url + "/v1", api_key="unused", max_retries=0, timeout=60)
    ban_eos = {str(t): -100 for t in loaded.eos_token_ids}
    out = client.completions.create(model=MODEL, prompt=PROMPTS[0], max_tokens=5, temperature=0, logprobs=2,
                                    logit_bias=ban_eos)  # type: ignore[arg-type]
    lp = out.choices[0].logprobs
    assert lp is not None and lp.token_logprobs is not None and lp.tokens is not None
    assert len(lp.token_logprobs) == 5 and len(lp.tokens) == 5
    # transformers' greedy continuation (end of text banned, as in the request) and its log-probabilities
    full = loaded.tokenizer(PROMPTS[0])["input_ids"]
    expected: list[float] = []
    for _ in range(5):
        logp = log_softmax(reference, full)[-1]
        choice = int(logp.index_fill(0, torch.tensor(sorted(loaded.eos_token_ids)), -torch.inf).argmax())
        expected.append(logp[choice].item())
        full.append(choice)
    assert lp.token_logprobs == pytest.approx(expected, abs=TOLERANCE)
    assert lp.tokens == [loaded.tokenizer.decode([t]) for t in full[-5:]]


def test_echo_without_logprobs_returns_prompt_then_completion(base_url: str) -> None:
    alone = complete(base_url, prompt=PROMPTS[2], max_tokens=4, temperature=0).json()["choices"][0]
    echoed = complete(base_url, prompt=PROMPTS[2], max_tokens=4, temperature=0, echo=True).json()["choices"][0]
    assert echoed["text"] == PROMPTS[2] + alone["text"]
    assert echoed["logprobs"] is None


@pytest.mark.parametrize(("path", "body", "param"), [
    ("/v1/completions", {"prompt": "hi", "logprobs": 100}, "logprobs"),
    ("/v1/completions", {"prompt": "hi", "logprobs": -1}, "logprobs"),
    ("/v1/completions", {"prompt": "hi", "max_tokens": 0}, "max_tokens"),
    ("/v1/completions", {"prompt": "hi", "echo": True, "logprobs": 1, "stream": True}, "logprobs"),
    ("/v1/completions", {"prompt": "hi", "echo": True, "stream": True}, "echo"),
    ("/v1/completions", {"prompt": "word " * 300, "echo": True, "logprobs": 1, "max_tokens": 0}, "prompt"),
    ("/v1/completions", {"prompt": [7] * 257, "echo": True, "logprobs": 1, "max_tokens": 0}, "prompt"),
    ("/v1/completions", {"prompt": [7] * 256, "echo": True, "logprobs": 1, "max_tokens": 1}, "prompt"),
    ("/v1/completions", {"prompt": [[7] * 200] * 65, "echo": True, "logprobs": 1, "max_tokens": 0}, "prompt"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "logprobs": True,
                              "top_logprobs": 2}, "logprobs"),
])
def test_hostile_scoring_requests_get_a_400_naming_the_field(base_url: str, path: str, body: dict[str, Any],
                                                              param: str) -> None:
    r = httpx.post(base_url + path, json={"model": MODEL, **body}, timeout=30)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
    assert r.json()["error"]["message"]


def test_a_context_filling_scoring_batch_does_not_disturb_other_requests(base_url: str,
                                                                         loaded: LoadedModel) -> None:
    """64 prompts of the whole context, scored, while another client generates: the generation gets
    the same text as alone, and the big request is answered (or told to retry), never failed. While the big
    request fills the queue, the other client may be told to retry (429 with Retry-After, the server's
    admission control); it retries as the openai client does and must then be served."""
    ban_eos = {str(t): -100 for t in loaded.eos_token_ids}
    alone = complete(base_url, prompt=PROMPTS[0], max_tokens=24, temperature=0, logit_bias=ban_eos).json()
    results: dict[str, httpx.Response] = {}

    def big() -> None:
        results["big"] = complete(base_url, prompt=[[11 + i % 50] * 256 for i in range(64)], echo=True,
                                  logprobs=5, max_tokens=0)

    thread = threading.Thread(target=big)
    thread.start()
    other = complete(base_url, prompt=PROMPTS[0], max_tokens=24, temperature=0, logit_bias=ban_eos)
    deadline = time.monotonic() + 120
    while other.status_code == 429 and time.monotonic() < deadline:
        assert other.json()["error"]["code"] == "queue_full", other.text
        time.sleep(float(other.headers.get("retry-after", "1")))
        other = complete(base_url, prompt=PROMPTS[0], max_tokens=24, temperature=0, logit_bias=ban_eos)
    thread.join(timeout=120)
    assert other.status_code == 200, other.text
    assert other.json()["choices"][0]["text"] == alone["choices"][0]["text"]
    assert results["big"].status_code in (200, 429), results["big"].text
    if results["big"].status_code == 200:
        choices = results["big"].json()["choices"]
        assert len(choices) == 64
        assert all(len(c["logprobs"]["token_logprobs"]) == 256 for c in choices)
