"""Shared by the serving benchmarks (`bench_serve.py`, `gpu_check`): one round of greedy generation of
the same prompts by Hugging Face `generate` in-process or by streaming clients of our server, and the
logit bias both get. A round returns (wall seconds, median time to first token, generated tokens)."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import Awaitable, Callable

import httpx
import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from forge_trainer.serve.loading import LoadedModel


class FirstToken(StoppingCriteria):
    """Records when generate has produced its first token (never stops generation)."""

    def __init__(self) -> None:
        self.at: float | None = None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: object) -> torch.Tensor:
        if self.at is None:
            if input_ids.is_cuda:  # the token exists once the device has computed it
                torch.cuda.synchronize(input_ids.device)
            self.at = time.perf_counter()
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


def round_hf_generate(loaded: LoadedModel, texts: list[str], max_tokens: int, bias: dict[int, float],
                      completions: list[str] | None = None) -> tuple[float, float, int]:
    """Hugging Face `generate` on `texts` as one left-padded batch."""
    tok = loaded.tokenizer
    tok.padding_side = "left"
    batch = tok(texts, return_tensors="pt", padding=True).to(loaded.model.device)
    first = FirstToken()
    start = time.perf_counter()
    with torch.inference_mode():
        generate = loaded.model.generate
        out = generate(**batch, max_new_tokens=max_tokens, min_new_tokens=max_tokens,  # type: ignore[operator]
                       do_sample=False, pad_token_id=loaded.pad_token_id,
                       stopping_criteria=StoppingCriteriaList([first]),
                       sequence_bias={(t,): b for t, b in bias.items()})
        new = out[:, batch["input_ids"].shape[1]:].cpu()  # waits for the device
    wall = time.perf_counter() - start
    tokens = new.shape[1] * len(texts)
    assert first.at is not None
    if completions is not None:
        completions += tok.batch_decode(new, skip_special_tokens=True)
    return wall, first.at - start, tokens


def banned_tokens(loaded: LoadedModel) -> dict[int, float]:
    """The logit bias every contender gets: no end of text, no token without text of its own (so every
    completion has its full length and a streamed first chunk carries the first token)."""
    tok = loaded.tokenizer
    texts = {t: tok.decode([t], skip_special_tokens=True) for t in range(len(tok))}
    textless = {t for t, text in texts.items() if not text or "\ufffd" in text}
    return {t: -100.0 for t in sorted(loaded.eos_token_ids | textless)}


async def round_server(client: httpx.AsyncClient, url: str, texts: list[str], max_tokens: int,
                       bias: dict[int, float], completions: list[str] | None = None,
                       model: str = "bench") -> tuple[float, float, int]:
    """One streaming client per text against the server at `url`, all at once."""
    async def one(text: str, start: float) -> tuple[float, int, str]:
        body = {"model": model, "prompt": text, "max_tokens": max_tokens, "temperature": 0, "stream": True,
                "stream_options": {"include_usage": True}, "logit_bias": {str(k): v for k, v in bias.items()}}
        ttft, count, out = 0.0, 0, []
        async with client.stream("POST", url + "/v1/completions", json=body) as r:
            r.raise_for_status()
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if not ttft and chunk["choices"]:
                    ttft = time.perf_counter() - start
                out += [c["text"] for c in chunk["choices"]]
                if chunk.get("usage"):
                    count = chunk["usage"]["completion_tokens"]
        return ttft, count, "".join(out)

    return await concurrent_round(one, texts, completions)


Stream = Callable[[str, float], Awaitable[tuple[float, int, str]]]
"""One client's request: (prompt, round start) -> (time to first token, tokens, text)."""


async def concurrent_round(one: Stream, texts: list[str],
                           completions: list[str] | None = None) -> tuple[float, float, int]:
    """Every prompt at once through `one`: (wall seconds, median time to first token, tokens generated);
    the texts are appended to `completions` when given."""
    start = time.perf_counter()
    results = await asyncio.gather(*(one(t, start) for t in texts))
    wall = time.perf_counter() - start
    if completions is not None:
        completions += [r[2] for r in results]
    return wall, statistics.median(r[0] for r in results), sum(r[1] for r in results)
