"""The builtin runtime's HTTP API, driven by the real openai client against a server on loopback."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from forge_trainer.serve.app import ServingState, build_app
from forge_trainer.serve.loading import LoadedModel, load_model
from forge_trainer.serve.metrics import ServeMetrics
from tests.support.serve import EOS, server_torch_threads, serving, shared_tiny_model

MODEL = "tiny-chat"


@pytest.fixture(autouse=True, scope="module")
def _server_torch_threads() -> Iterator[None]:
    with server_torch_threads():
        yield


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    return load_model(str(shared_tiny_model()), cache_dir=tmp_path_factory.mktemp("cache"), device="cpu")


@pytest.fixture(scope="module")
def base_url(loaded: LoadedModel) -> Iterator[str]:
    with serving(loaded, MODEL, max_batch_size=4) as url:
        yield url


@pytest.fixture
def client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url + "/v1", api_key="unused", max_retries=0, timeout=30)


def no_eos(loaded: LoadedModel) -> dict[str, int]:
    """logit_bias that bans end-of-text, so a completion runs to max_tokens."""
    return {str(t): -100 for t in loaded.eos_token_ids}


def test_models_lists_the_served_model(client: openai.OpenAI) -> None:
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL


def test_completion_honours_max_tokens_and_counts_usage(client: openai.OpenAI, loaded: LoadedModel) -> None:
    out = client.completions.create(model=MODEL, prompt="Hello world", max_tokens=7, temperature=0,
                                    logit_bias=no_eos(loaded))
    assert out.choices[0].finish_reason == "length"
    assert out.usage is not None
    assert out.usage.completion_tokens == 7
    assert out.usage.prompt_tokens == len(loaded.tokenizer("Hello world")["input_ids"])
    assert out.usage.total_tokens == out.usage.prompt_tokens + 7
    assert out.choices[0].text == loaded.tokenizer.decode(
        loaded.tokenizer(out.choices[0].text)["input_ids"])  # a real decoded string


def test_greedy_completion_matches_transformers_generate(client: openai.OpenAI, loaded: LoadedModel) -> None:
    prompt = "The quick brown fox"
    ids = loaded.tokenizer(prompt, return_tensors="pt")
    expected_ids = loaded.model.generate(**ids, max_new_tokens=12, do_sample=False,
                                         eos_token_id=list(loaded.eos_token_ids))
    expected = loaded.tokenizer.decode(expected_ids[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    out = client.completions.create(model=MODEL, prompt=prompt, max_tokens=12, temperature=0)
    assert out.choices[0].text == expected


def test_streamed_completion_equals_the_non_streamed_one(client: openai.OpenAI, loaded: LoadedModel) -> None:
    kwargs = dict(model=MODEL, prompt="Numbers: 1 2 3", max_tokens=20, temperature=0, logit_bias=no_eos(loaded))
    whole = client.completions.create(**kwargs)  # type: ignore[call-overload]
    chunks = list(client.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs))  # type: ignore[call-overload]
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == whole.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 20


def test_chat_uses_the_models_chat_template(client: openai.OpenAI, loaded: LoadedModel) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello!"}]
    out = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=5, temperature=0,  # type: ignore[arg-type]
                                         logit_bias=no_eos(loaded))
    templated = loaded.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert templated.endswith("<|im_start|>assistant\n")
    assert out.usage is not None
    assert out.usage.prompt_tokens == len(loaded.tokenizer(templated, add_special_tokens=False)["input_ids"])
    assert out.choices[0].message.role == "assistant"
    assert out.choices[0].finish_reason == "length"
    assert out.usage.completion_tokens == 5


def test_streamed_chat_sends_role_then_content(client: openai.OpenAI, loaded: LoadedModel) -> None:
    messages = [{"role": "user", "content": "Count with me"}]
    whole = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=10, temperature=0)  # type: ignore[arg-type]
    chunks = list(client.chat.completions.create(model=MODEL, messages=messages, max_tokens=10,  # type: ignore[arg-type]
                                                 temperature=0, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason


def test_stop_string_cuts_the_text_before_it(client: openai.OpenAI, loaded: LoadedModel) -> None:
    full = client.completions.create(model=MODEL, prompt="Hello", max_tokens=30, temperature=0,
                                     logit_bias=no_eos(loaded)).choices[0].text
    stop = full[10:13]
    assert len(stop) == 3 and stop not in full[:10]
    for stream in (False, True):
        if stream:
            chunks = list(client.completions.create(model=MODEL, prompt="Hello", max_tokens=30, temperature=0,
                                                    logit_bias=no_eos(loaded), stop=[stop], stream=True))
            text = "".join(c.choices[0].text for c in chunks)
            reason = chunks[-1].choices[0].finish_reason
        else:
            out = client.completions.create(model=MODEL, prompt="Hello", max_tokens=30, temperature=0,
                                            logit_bias=no_eos(loaded), stop=stop)
            text, reason = out.choices[0].text, out.choices[0].finish_reason
        assert text == full[:full.index(stop)]
        assert reason == "stop"


def test_seed_makes_sampling_reproducible(client: openai.OpenAI, loaded: LoadedModel) -> None:
    def sample(seed: int) -> str:
        return client.completions.create(model=MODEL, prompt="Tokens are", max_tokens=24, temperature=1.0,
                                         top_p=0.9, seed=seed, logit_bias=no_eos(loaded)).choices[0].text
    assert sample(7) == sample(7)
    assert len({sample(s) for s in range(1, 5)}) > 1


def test_several_prompts_and_n_give_indexed_choices(client: openai.OpenAI, loaded: LoadedModel) -> None:
    out = client.completions.create(model=MODEL, prompt=["Hello", "Kubernetes operators"], max_tokens=4,
                                    temperature=0, n=2, logit_bias=no_eos(loaded))
    assert [c.index for c in out.choices] == [0, 1, 2, 3]
    assert out.choices[0].text == out.choices[1].text  # greedy: both choices of a prompt agree
    assert out.usage is not None and out.usage.completion_tokens == 16


def test_end_of_text_stops_generation(client: openai.OpenAI, loaded: LoadedModel) -> None:
    eos = loaded.tokenizer.convert_tokens_to_ids(EOS)
    out = client.completions.create(model=MODEL, prompt="Hello", max_tokens=50, temperature=0,
                                    logit_bias={str(eos): 100})
    assert out.choices[0].finish_reason == "stop"
    assert out.choices[0].text == ""
    assert out.usage is not None and out.usage.completion_tokens == 1


@pytest.mark.parametrize(("body", "status", "param"), [
    ({"model": "other", "prompt": "hi"}, 404, "model"),
    ({"model": MODEL, "prompt": "hi", "max_tokens": -1}, 400, "max_tokens"),
    ({"model": MODEL, "prompt": "hi", "temperature": 3}, 400, "temperature"),
    ({"model": MODEL, "prompt": "word " * 300, "max_tokens": 1}, 400, "prompt"),
    ({"model": MODEL, "prompt": "hi", "max_tokens": 1000}, 400, "prompt"),
    ({"model": MODEL, "prompt": ""}, 400, "prompt"),
    ({"model": MODEL, "prompt": [999999]}, 400, "prompt"),
    ({"model": MODEL}, 400, "prompt"),
    ({"model": MODEL, "prompt": "hi", "logprobs": 6}, 400, "logprobs"),
    ({"model": MODEL, "prompt": "hi", "best_of": 2}, 400, "best_of"),
    ({"model": MODEL, "prompt": "hi", "logit_bias": {"x": 1}}, 400, "logit_bias"),
    ({"model": MODEL, "prompt": ["hi"] * 65}, 400, "prompt"),
])
def test_bad_completion_requests_get_an_openai_error(base_url: str, body: dict[str, object], status: int,
                                                     param: str) -> None:
    r = httpx.post(base_url + "/v1/completions", json=body, timeout=30)
    assert r.status_code == status
    error = r.json()["error"]
    assert error["param"] == param
    assert error["message"]
    assert set(error) == {"message", "type", "param", "code"}


def test_openai_client_raises_the_matching_exceptions(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="maximum context length"):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "word " * 300}])
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=[])


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b"\xff\xfe", b""])
def test_malformed_bodies_get_400(base_url: str, raw: bytes) -> None:
    for path in ("/v1/completions", "/v1/chat/completions"):
        r = httpx.post(base_url + path, content=raw, headers={"content-type": "application/json"})
        assert r.status_code == 400, (path, raw, r.text)
        assert r.json()["error"]["type"] == "invalid_request_error"


def test_unknown_route_and_method_get_an_openai_error(base_url: str) -> None:
    r = httpx.get(base_url + "/v1/nothing")
    assert r.status_code == 404 and "error" in r.json()
    r = httpx.get(base_url + "/v1/completions")
    assert r.status_code == 405 and "error" in r.json()


def test_health_readiness_and_metrics(base_url: str, client: openai.OpenAI) -> None:
    assert httpx.get(base_url + "/healthz").json() == {"status": "ok"}
    assert httpx.get(base_url + "/readyz").status_code == 200
    client.completions.create(model=MODEL, prompt="Hello", max_tokens=3)
    list(client.completions.create(model=MODEL, prompt="Hello", max_tokens=3, stream=True))
    text = httpx.get(base_url + "/metrics").text
    assert 'forge_serve_requests_total{endpoint="/v1/completions",status="200"}' in text
    assert "forge_serve_request_duration_seconds_bucket" in text
    assert "forge_serve_time_to_first_token_seconds_count" in text
    generated = [line for line in text.splitlines() if line.startswith("forge_serve_generated_tokens_total")]
    assert float(generated[0].split()[-1]) >= 2
    assert "forge_serve_model_loaded 1.0" in text


def test_not_ready_until_the_model_is_loaded() -> None:
    from starlette.testclient import TestClient

    state = ServingState(model_name=MODEL)
    with TestClient(build_app(state, ServeMetrics())) as http:
        assert http.get("/healthz").status_code == 200
        assert http.get("/readyz").status_code == 503
        r = http.post("/v1/completions", json={"model": MODEL, "prompt": "hi"})
        assert r.status_code == 503
        assert json.loads(r.text)["error"]["message"]


def test_loaded_model_carries_its_digest(loaded: LoadedModel) -> None:
    from forge_trainer.serve.model_files import model_dir_digest

    assert loaded.digest == model_dir_digest(Path(shared_tiny_model()))


def test_streamed_chat_with_two_choices_and_usage(client: openai.OpenAI, loaded: LoadedModel) -> None:
    chunks = list(client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=6, temperature=0.9, seed=5, n=2,
        stream=True, stream_options={"include_usage": True}, logit_bias=no_eos(loaded)))
    texts = {0: "", 1: ""}
    finished = {}
    for c in chunks[:-1]:
        for choice in c.choices:
            texts[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                finished[choice.index] = choice.finish_reason
    assert finished == {0: "length", 1: "length"}
    assert texts[0] and texts[1]
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None and usage.completion_tokens == 12
