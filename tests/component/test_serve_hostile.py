"""The builtin runtime against hostile clients: each attack of issue 14 section 2 is replayed against a
real server on loopback and must fail safely (a 4xx naming the field, bounded time and memory, no effect
on other requests), as a user of the API would see it."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from forge_trainer.model.files import model_dir_digest
from forge_trainer.serve.app import ServeLimits, ServingState
from forge_trainer.serve.engine import Delta, Engine
from forge_trainer.serve.loading import LoadedModel, LoadError, load_model
from forge_trainer.serve.metrics import ServeMetrics
from forge_trainer.serve.sampling import SamplingParams
from forge_trainer.serve.server import build_parser, load_and_serve
from forge_trainer.store import ACCESS_KEY_ENV, SECRET_KEY_ENV, open_uri
from tests.support.s3 import S3Server
from tests.support.serve import server_torch_threads, serving, shared_tiny_model

MODEL = "tiny"
KEY = "sk-forge-test-0123456789"


@pytest.fixture(autouse=True, scope="module")
def _server_torch_threads() -> Iterator[None]:
    with server_torch_threads():
        yield


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    return load_model(str(shared_tiny_model()), cache_dir=tmp_path_factory.mktemp("cache"), device="cpu")


@pytest.fixture(scope="module")
def long_context(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    """A model whose context is long enough that a request runs for many seconds unless it is stopped."""
    return load_model(str(shared_tiny_model(max_positions=8192)), cache_dir=tmp_path_factory.mktemp("long"),
                      device="cpu")


@pytest.fixture(scope="module")
def base_url(loaded: LoadedModel) -> Iterator[str]:
    with serving(loaded, MODEL, max_batch_size=4) as url:
        yield url


def no_eos(loaded: LoadedModel) -> dict[str, int]:
    """logit_bias that bans end-of-text, so a completion runs to max_tokens."""
    return {str(t): -100 for t in loaded.eos_token_ids}


def metric(url: str, series: str, headers: dict[str, str] | None = None) -> float:
    """The value of one series on /metrics (0 when absent)."""
    for line in httpx.get(url + "/metrics", headers=headers).text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return 0.0


def held_sequences(url: str) -> float:
    """Sequences the engine runs or keeps waiting, as /metrics reports them."""
    return metric(url, "forge_serve_running_sequences") + metric(url, "forge_serve_waiting_requests")


def wait_until_idle(url: str, timeout: float = 30) -> float:
    """Poll until the engine holds no sequence; returns how long that took."""
    started = time.monotonic()
    while held_sequences(url) and time.monotonic() - started < timeout:
        time.sleep(0.02)
    return time.monotonic() - started


class PeakRss:
    """This process's peak resident memory over a block, in MB (Linux: the peak is reset at entry)."""

    def __enter__(self) -> PeakRss:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        self.before = self._status("VmRSS")
        self.started = time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.monotonic() - self.started
        self.growth_mb = (self._status("VmHWM") - self.before) / 1024

    @staticmethod
    def _status(field: str) -> int:
        line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(field + ":"))
        return int(line.split()[1])


def post(url: str, body: bytes | dict[str, object], path: str = "/v1/completions", **kwargs: object) -> httpx.Response:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(url + path, content=raw, headers={"content-type": "application/json"}, timeout=60,
                      **kwargs)  # type: ignore[arg-type]


def _raw(fields: str) -> bytes:
    """A completions body with `fields` (raw JSON text, e.g. NaN, which json.dumps would not write)."""
    return f'{{"model": "{MODEL}", "prompt": "hi", {fields}}}'.encode()


@pytest.mark.parametrize(("body", "param"), [
    ({"temperature": 1e-45}, "temperature"),
    ({"temperature": 0.009}, "temperature"),
    (_raw('"temperature": NaN'), "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"top_p": 1.01}, "top_p"),
    ({"seed": 2**70}, "seed"),
    ({"seed": 2**63}, "seed"),
    ({"seed": -(2**63) - 1}, "seed"),
    ({"frequency_penalty": 2.5}, "frequency_penalty"),
    (_raw('"presence_penalty": Infinity'), "presence_penalty"),
    ({"max_tokens": 2**70}, "max_tokens"),
    ({"n": 0}, "n"),
    ({"n": 17}, "n"),
    ({"stop": ["x" * 257]}, "stop"),
    (_raw('"logit_bias": {"1": NaN}'), "logit_bias"),
    ({"logit_bias": {str(i): 1 for i in range(5000)}}, "logit_bias"),
])
def test_out_of_range_sampling_fields_get_400_naming_the_field(base_url: str, body: bytes | dict[str, object],
                                                              param: str) -> None:
    payload = body if isinstance(body, bytes) else {"model": MODEL, "prompt": "hi", **body}
    r = post(base_url, payload)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
    assert r.json()["error"]["message"].startswith(param)


def test_accepted_edges_of_each_range_still_generate(base_url: str) -> None:
    for fields in ({"temperature": 0.01, "seed": 2**63 - 1, "n": 2}, {"top_p": 1e-9, "seed": -(2**63)},
                   {"temperature": 2, "frequency_penalty": 0, "presence_penalty": 0}):
        r = post(base_url, {"model": MODEL, "prompt": "hi", "max_tokens": 3, **fields})
        assert r.status_code == 200, (fields, r.text)


@pytest.mark.parametrize("raw", [
    b"[" * 200_000,  # json.loads raised RecursionError: a 500
    b'{"model": "tiny", "prompt": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    b'{"model": "tiny", "prompt": "hi", "seed": ' + str(2**70).encode() + b"}",
])
def test_bodies_that_crashed_the_handler_get_400(base_url: str, raw: bytes) -> None:
    for path in ("/v1/completions", "/v1/chat/completions"):
        r = post(base_url, raw, path)
        assert r.status_code == 400, (path, r.text)
        assert r.json()["error"]["type"] == "invalid_request_error"


def test_a_sequence_that_cannot_be_sampled_fails_alone(loaded: LoadedModel) -> None:
    """A temperature the API now refuses still reaches the engine from inside: its NaN probabilities fail
    that sequence only, and the sequences sharing its batch get the text they get alone."""
    engine = Engine(loaded.model, loaded.tokenizer, eos_token_ids=loaded.eos_token_ids, max_batch_size=8,
                    context_length=loaded.context_length, pad_token_id=loaded.pad_token_id)
    ban = {t: -100.0 for t in loaded.eos_token_ids}
    greedy = SamplingParams(max_tokens=12, temperature=0, logit_bias=ban)
    seeded = SamplingParams(max_tokens=12, temperature=0.8, seed=3, logit_bias=ban)
    broken = SamplingParams(max_tokens=12, temperature=1e-45, logit_bias=ban)
    ids = loaded.tokenizer("The quick brown fox")["input_ids"]

    async def run(params: list[SamplingParams]) -> list[list[Delta]]:
        out: list[list[Delta]] = [[] for _ in params]
        async for batch in engine.generate_many([(ids, p) for p in params]):
            for index, delta in batch:
                out[index].append(delta)
        return out

    engine.start()
    try:
        alone = asyncio.run(run([greedy, seeded]))
        together = asyncio.run(run([greedy, broken, seeded]))
        after = asyncio.run(run([greedy]))
    finally:
        engine.stop()
    assert together[1][-1].finish_reason == "error"
    assert "not finite" in (together[1][-1].error or "")
    for mine, theirs in ((together[0], alone[0]), (together[2], alone[1]), (after[0], alone[0])):
        assert mine[-1].finish_reason == "length"
        assert "".join(d.text for d in mine) == "".join(d.text for d in theirs)


def test_a_huge_body_is_refused_while_it_is_read(loaded: LoadedModel) -> None:
    """A 20 MB prompt took 49.7 s and 5 GB before its 400; now 413 before the body is even kept."""
    body = b'{"model": "tiny", "prompt": "' + b"word " * 4_000_000 + b'"}'
    with serving(loaded, MODEL) as url:
        chunks = (body[i:i + 65536] for i in range(0, len(body), 65536))  # no Content-Length: chunked
        with PeakRss() as chunked:
            r = httpx.post(url + "/v1/completions", content=chunks, timeout=60)
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
        with PeakRss() as declared:
            r = post(url, body)
        assert r.status_code == 413
        assert metric(url, 'forge_serve_rejected_requests_total{reason="body_too_large"}') == 2
    print(f"\n20 MB prompt: chunked 413 in {chunked.seconds:.2f} s, peak RSS +{chunked.growth_mb:.0f} MB; "
          f"declared 413 in {declared.seconds:.2f} s, +{declared.growth_mb:.0f} MB")
    # the client's own copies of the body are 20-40 MB; tokenizing it grew the server by 5 GB
    assert chunked.growth_mb < 200 and declared.growth_mb < 200


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_a_prompt_too_long_for_the_context_is_refused_before_tokenizing(base_url: str, path: str) -> None:
    text = "word " * 600_000  # 3 MB: within the body limit, thousands of times the 256-token context
    body: dict[str, object] = {"model": MODEL, "prompt": text} if "chat" not in path \
        else {"model": MODEL, "messages": [{"role": "user", "content": text}]}
    with PeakRss() as peak:
        r = post(base_url, body, path)
    print(f"\n3 MB prompt on {path}: 400 in {peak.seconds:.2f} s, peak RSS +{peak.growth_mb:.0f} MB")
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["code"] == "context_length_exceeded"
    assert "characters" in error["message"]  # decided from its length, not from its tokens
    assert error["param"] == ("messages" if "chat" in path else "prompt")


def test_many_prompts_or_messages_are_refused_before_any_work(base_url: str) -> None:
    r = post(base_url, {"model": MODEL, "prompt": ["hi"] * 100_000})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"
    assert "At most 64 completions" in r.json()["error"]["message"]
    r = post(base_url, {"model": MODEL, "messages": [{"role": "user", "content": ""}] * 20_000},
             "/v1/chat/completions")
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"


@pytest.mark.parametrize("stream", [False, True])
def test_a_client_that_goes_away_cancels_its_sequences(long_context: LoadedModel, stream: bool) -> None:
    """Four choices of 8000 tokens each: they stop within moments of the client leaving."""
    body = {"model": MODEL, "prompt": "The quick brown fox", "max_tokens": 8000, "n": 4, "temperature": 0.7,
            "stream": stream, "logit_bias": no_eos(long_context)}
    with serving(long_context, MODEL) as url:
        if stream:
            with httpx.stream("POST", url + "/v1/completions", json=body, timeout=30) as r:
                next(r.iter_lines())
        else:
            with pytest.raises(httpx.ReadTimeout):
                httpx.post(url + "/v1/completions", json=body, timeout=httpx.Timeout(30, read=1.0))
        took = wait_until_idle(url)
        print(f"\nstream={stream}: engine idle {took:.2f} s after the client left")
        assert held_sequences(url) == 0
        assert metric(url, "forge_serve_decode_steps_total") < 7999
        assert metric(url, 'forge_serve_requests_total{endpoint="/v1/completions",status="499"}') == 1
        # the server still answers
        assert post(url, {"model": MODEL, "prompt": "hi", "max_tokens": 2}).status_code == 200


def test_a_full_queue_answers_429_with_retry_after(long_context: LoadedModel) -> None:
    body = {"model": MODEL, "prompt": "Hello", "max_tokens": 8000, "temperature": 0, "stream": True,
            "logit_bias": no_eos(long_context)}
    limits = ServeLimits(max_waiting=1)
    with serving(long_context, MODEL, max_batch_size=1, limits=limits) as url, httpx.Client(timeout=30) as http:
        with http.stream("POST", url + "/v1/completions", json=body) as running:
            lines = running.iter_lines()  # kept: an abandoned line iterator closes the connection
            next(lines)  # generating: the batch of one is full
            with http.stream("POST", url + "/v1/completions", json=body) as waiting:
                assert waiting.status_code == 200
                deadline = time.monotonic() + 30
                while metric(url, "forge_serve_waiting_requests") < 1 and time.monotonic() < deadline:
                    time.sleep(0.02)
                r = httpx.post(url + "/v1/completions", json={**body, "stream": False}, timeout=30)
                assert r.status_code == 429
                assert r.headers["retry-after"] == "1"
                assert r.json()["error"]["type"] == "rate_limit_error"
                with pytest.raises(openai.RateLimitError):
                    openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0).completions.create(
                        model=MODEL, prompt="hi", max_tokens=2)
                assert metric(url, 'forge_serve_rejected_requests_total{reason="queue_full"}') == 2
                assert metric(url, 'forge_serve_requests_total{endpoint="/v1/completions",status="429"}') == 2
        wait_until_idle(url)
        assert post(url, {"model": MODEL, "prompt": "hi", "max_tokens": 2}).status_code == 200


def test_an_api_key_guards_everything_but_the_probes(loaded: LoadedModel) -> None:
    with serving(loaded, MODEL, limits=ServeLimits(api_key=KEY)) as url:
        for path in ("/v1/models", "/v1/nothing"):
            r = httpx.get(url + path)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
            assert r.json()["error"]["code"] == "invalid_api_key"
        assert httpx.get(url + "/v1/models", headers={"Authorization": f"Bearer {KEY}x"}).status_code == 401
        assert httpx.get(url + "/v1/models", headers={"Authorization": f"Basic {KEY}"}).status_code == 401
        r = post(url, {"model": MODEL, "prompt": "hi", "max_tokens": 2})
        assert r.status_code == 401
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0).models.list()
        client = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
        assert client.completions.create(model=MODEL, prompt="hi", max_tokens=2).choices
        assert httpx.get(url + "/v1/models", headers={"authorization": f"bearer {KEY}"}).status_code == 200
        for path in ("/healthz", "/readyz", "/metrics"):
            assert httpx.get(url + path).status_code == 200, path
        assert metric(url, 'forge_serve_rejected_requests_total{reason="unauthorized"}') == 6


def test_a_metrics_key_guards_metrics(loaded: LoadedModel) -> None:
    with serving(loaded, MODEL, limits=ServeLimits(api_key=KEY, metrics_api_key="scrape")) as url:
        assert httpx.get(url + "/metrics").status_code == 401
        assert httpx.get(url + "/metrics", headers={"Authorization": f"Bearer {KEY}"}).status_code == 401
        assert httpx.get(url + "/metrics", headers={"Authorization": "Bearer scrape"}).status_code == 200
        assert httpx.get(url + "/healthz").status_code == 200


def test_store_credentials_leave_the_environment_once_the_model_is_loaded(s3: S3Server) -> None:
    """A server that fetched its model itself keeps no store keys for the rest of its life (a pod's server
    gets none at all: its init container fetches)."""
    store, _ = open_uri(s3.uri(), s3.config)
    local = shared_tiny_model()
    for f in sorted(p for p in local.rglob("*") if p.is_file()):
        store.put_file(f"models/tiny/{f.relative_to(local).as_posix()}", f)
    for digest, loads in ((model_dir_digest(local), True), ("sha256:" + "0" * 64, False)):
        os.environ[ACCESS_KEY_ENV], os.environ[SECRET_KEY_ENV] = "forge-test", "forge-test-secret"
        args = build_parser().parse_args(["--model", s3.uri("models/tiny"), "--model-name", MODEL, "--device", "cpu",
                                          "--model-digest", digest, "--store-endpoint", s3.endpoint,
                                          "--store-insecure"])
        state = ServingState(model_name=MODEL)
        try:
            if loads:
                load_and_serve(args, state, ServeMetrics(), s3.config)
                assert state.engine is not None
            else:
                with pytest.raises(LoadError, match="digest mismatch"):
                    load_and_serve(args, state, ServeMetrics(), s3.config)
        finally:
            if state.engine is not None:
                state.engine.stop()
        assert ACCESS_KEY_ENV not in os.environ and SECRET_KEY_ENV not in os.environ


def test_a_burst_beyond_the_queue_is_refused_at_once(long_context: LoadedModel) -> None:
    """Eight long requests arriving together at a batch of one with one waiting place: two are taken and six
    refused, even though none has reached the engine when the others are checked."""
    body = {"model": MODEL, "prompt": "Hello", "max_tokens": 8000, "temperature": 0,
            "logit_bias": no_eos(long_context)}

    async def burst(url: str) -> list[int | str]:
        async with httpx.AsyncClient(timeout=httpx.Timeout(30, read=8.0)) as client:
            async def one() -> int | str:
                try:
                    return (await client.post(url + "/v1/completions", json=body)).status_code
                except httpx.ReadTimeout:
                    return "still generating"
            return list(await asyncio.gather(*(one() for _ in range(8))))

    with serving(long_context, MODEL, max_batch_size=1, limits=ServeLimits(max_waiting=1)) as url:
        answers = asyncio.run(burst(url))
        assert sorted(answers, key=str) == [429] * 6 + ["still generating"] * 2, answers
        wait_until_idle(url)
        assert held_sequences(url) == 0
