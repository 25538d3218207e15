"""Continuous batching as a client sees it: concurrent requests get the same answers as alone, and a
short request is never held up by a long one."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import openai
import pytest

from forge_trainer.serve.loading import LoadedModel, load_model
from tests.unit.serve_fixtures import serving, shared_tiny_model

MODEL = "tiny"
PROMPTS = ["Hello", "The quick brown fox jumps over the lazy dog.", "def add(a, b):",
           "Kubernetes operators reconcile the desired state", "1 2 3"]


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
