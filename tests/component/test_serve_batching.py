"""Continuous batching as a client sees it: concurrent requests get the same answers as alone, and a
short request is never held up by a long one."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from forge_trainer.serve.loading import LoadedModel, load_model
from tests.support.serve import server_torch_threads, serving, shared_tiny_model

MODEL = "tiny"
PROMPTS = ["Hello", "The quick brown fox jumps over the lazy dog.", "def add(a, b):",
           "Kubernetes operators reconcile the desired state", "1 2 3"]


@pytest.fixture(autouse=True, scope="module")
def _server_torch_threads() -> Iterator[None]:
    with server_torch_threads():
        yield


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    return load_model(str(shared_tiny_model()), cache_dir=tmp_path_factory.mktemp("cache"), device="cpu")


@pytest.fixture(scope="module")
def base_url(loaded: LoadedModel) -> Iterator[str]:
    with serving(loaded, MODEL, max_batch_size=3) as url:  # fewer slots than PROMPTS: some requests queue
        yield url


def no_eos(loaded: LoadedModel) -> dict[str, int]:
    return {str(t): -100 for t in loaded.eos_token_ids}


async def complete(client: openai.AsyncOpenAI, prompt: str, max_tokens: int, delay: float = 0.0,
                   **kwargs: object) -> str:
    await asyncio.sleep(delay)
    out = await client.completions.create(model=MODEL, prompt=prompt, max_tokens=max_tokens, **kwargs)  # type: ignore[call-overload]
    return str(out.choices[0].text)


@pytest.mark.parametrize("sampling", [{"temperature": 0}, {"temperature": 0.8, "top_p": 0.95, "seed": 11}])
def test_concurrent_requests_get_the_same_text_as_alone(base_url: str, loaded: LoadedModel,
                                                        sampling: dict[str, float]) -> None:
    async def run() -> tuple[list[str], list[str]]:
        client = openai.AsyncOpenAI(base_url=base_url + "/v1", api_key="unused", max_retries=0)
        lengths = [40, 25, 33, 18, 29]
        alone = [await complete(client, p, n, logit_bias=no_eos(loaded), **sampling)
                 for p, n in zip(PROMPTS, lengths, strict=True)]
        # staggered starts: sequences join a batch already decoding, longer and shorter than it
        together = await asyncio.gather(*(complete(client, p, n, delay=0.01 * i, logit_bias=no_eos(loaded),
                                                   **sampling)
                                          for i, (p, n) in enumerate(zip(PROMPTS, lengths, strict=True))))
        await client.close()
        return alone, list(together)

    alone, together = asyncio.run(run())
    assert together == alone
    assert all(alone)


def test_prompts_prefilled_in_small_groups_get_the_same_text(base_url: str, loaded: LoadedModel) -> None:
    async def run(url: str, together: bool) -> list[str]:
        client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        requests = [complete(client, p, 20, logit_bias=no_eos(loaded), temperature=0) for p in PROMPTS]
        texts = await asyncio.gather(*requests) if together else [await r for r in requests]
        await client.close()
        return list(texts)

    alone = asyncio.run(run(base_url, together=False))
    for budget in (1, 24):  # every prompt alone; two or three short prompts per forward pass
        with serving(loaded, MODEL, max_prefill_tokens=budget) as url:
            assert asyncio.run(run(url, together=True)) == alone


def test_short_request_finishes_before_a_long_one_started_earlier(base_url: str, loaded: LoadedModel) -> None:
    async def run() -> tuple[int, int, str]:
        client = openai.AsyncOpenAI(base_url=base_url + "/v1", api_key="unused", max_retries=0)
        long_chunks = 0
        long_reason = ""
        first_chunk = asyncio.Event()

        async def long() -> None:
            nonlocal long_chunks, long_reason
            stream = await client.completions.create(model=MODEL, prompt=PROMPTS[1], max_tokens=200,
                                                     temperature=0, stream=True, logit_bias=no_eos(loaded))
            async for chunk in stream:
                long_chunks += 1
                first_chunk.set()
                if chunk.choices[0].finish_reason:
                    long_reason = chunk.choices[0].finish_reason

        task = asyncio.create_task(long())
        await first_chunk.wait()
        started = time.monotonic()
        await complete(client, PROMPTS[0], 3, temperature=0, logit_bias=no_eos(loaded))
        assert time.monotonic() - started < 60
        chunks_when_short_done = long_chunks
        await task
        await client.close()
        return chunks_when_short_done, long_chunks, long_reason

    when_short_done, total, reason = asyncio.run(run())
    assert reason == "length"
    assert when_short_done < total  # the long one was still generating when the short one had finished


def test_a_client_that_disconnects_frees_its_place_in_the_batch(tmp_path_factory: pytest.TempPathFactory) -> None:
    long_context = load_model(str(shared_tiny_model(max_positions=8192)), cache_dir=tmp_path_factory.mktemp("long"),
                              device="cpu")
    with serving(long_context, MODEL) as url:
        def metric(name: str) -> float:
            lines = httpx.get(url + "/metrics").text.splitlines()
            return float(next((line.split()[-1] for line in lines if line.startswith(name + " ")), "0"))

        body = {"model": MODEL, "prompt": PROMPTS[1], "max_tokens": 8000, "temperature": 0, "stream": True,
                "logit_bias": no_eos(long_context)}
        with httpx.stream("POST", url + "/v1/completions", json=body, timeout=30) as r:
            next(r.iter_lines())
        deadline = time.monotonic() + 30
        while metric("forge_serve_running_sequences") and time.monotonic() < deadline:
            time.sleep(0.01)
        assert metric("forge_serve_running_sequences") == 0
        assert metric("forge_serve_decode_steps_total") < 7999  # stopped before the 8000 tokens asked for
        assert metric('forge_serve_requests_total{endpoint="/v1/completions",status="499"}') == 1


def test_moe_export_is_served_like_dense(tmp_path_factory: pytest.TempPathFactory) -> None:
    moe = load_model(str(shared_tiny_model(moe=True)), cache_dir=tmp_path_factory.mktemp("moe"), device="cpu")
    assert type(moe.model).__name__ == "MixtralForCausalLM"
    ids = moe.tokenizer(PROMPTS[1], return_tensors="pt")
    expected = moe.model.generate(**ids, max_new_tokens=10, min_new_tokens=10, do_sample=False)
    expected_text = moe.tokenizer.decode(expected[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)

    async def run(client: openai.AsyncOpenAI) -> list[str]:
        outs = await asyncio.gather(*(client.completions.create(model=MODEL, prompt=p, max_tokens=10, temperature=0,
                                                               logit_bias=no_eos(moe)) for p in PROMPTS[:3]))
        await client.close()
        return [o.choices[0].text for o in outs]

    with serving(moe, MODEL) as url:
        texts = asyncio.run(run(openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)))
    assert texts[1] == expected_text


def test_a_failed_step_fails_only_the_requests_still_generating(loaded: LoadedModel,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from forge_trainer.serve.engine import Engine

    merge = Engine._merge
    failures = [RuntimeError("out of memory")]

    def failing_merge(self: Engine, *args: object) -> None:
        if failures:
            raise failures.pop()
        merge(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(Engine, "_merge", failing_merge)
    with serving(loaded, MODEL) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=30)
        # both choices are complete with their first token, sent before the step failed
        done = client.completions.create(model=MODEL, prompt=PROMPTS[1], max_tokens=1, n=2, temperature=0,
                                         logit_bias=no_eos(loaded))
        assert [c.finish_reason for c in done.choices] == ["length", "length"]
        failures.append(RuntimeError("out of memory"))
        with pytest.raises(openai.InternalServerError, match="out of memory"):
            client.completions.create(model=MODEL, prompt=PROMPTS[1], max_tokens=5, temperature=0)
        after = client.completions.create(model=MODEL, prompt=PROMPTS[1], max_tokens=5, temperature=0,
                                          logit_bias=no_eos(loaded))
        assert after.choices[0].finish_reason == "length" and after.choices[0].text
