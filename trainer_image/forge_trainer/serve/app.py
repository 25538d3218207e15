"""The HTTP API: OpenAI-compatible completions and chat completions, models, health and metrics.

Every error is the OpenAI error object. A request the server cannot serve as asked (malformed JSON,
an invalid field, an unknown model, a prompt too long for the context) gets a 4xx; only a failure
of the server itself is a 5xx.

Every client is taken as hostile, and each check comes before the work it protects: the body is
read up to `ServeLimits.max_body_bytes` (413 beyond), parsed by pydantic's JSON parser (nesting
bounded, NaN refused), the number of prompts and choices and each prompt's length in characters are
checked before anything is tokenized (which then runs in a worker thread, so the event loop keeps
streaming meanwhile), and a request that would make the engine hold more sequences
than the batch plus `max_waiting` gets 429 with Retry-After. A client that goes away cancels its
sequences, streamed or not.

/v1/completions scores text as the legacy OpenAI API does, which is what lm-evaluation-harness's
`local-completions` model sends for its loglikelihood (multiple-choice) tasks: with `echo` the answer's
text starts with the prompt, and with `logprobs` its `logprobs` object lists `tokens`,
`token_logprobs` (the prompt's first token's is null), `top_logprobs` (the most likely tokens, plus the
chosen one, per position) and `text_offset` (each token's offset in the answer's text). Scoring is
the engine's prefill, so a scoring request passes the same size checks, queue and 429s as any other.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from jinja2 import TemplateError
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from forge_trainer.serve.auth import ApiKeyMiddleware
from forge_trainer.serve.engine import Delta, Engine, Generation
from forge_trainer.serve.loading import LoadedModel
from forge_trainer.serve.metrics import ServeMetrics
from forge_trainer.serve.protocol import (
    ApiError,
    ChatCompletionRequest,
    CompletionRequest,
    validation_error,
)
from forge_trainer.serve.sampling import SamplingParams, TokenLogprob

log = logging.getLogger(__name__)

B = TypeVar("B", bound=BaseModel)
T = TypeVar("T")

COMPLETIONS = "/v1/completions"
CHAT = "/v1/chat/completions"
_DEFAULT_COMPLETION_MAX_TOKENS = 16
"""OpenAI's default max_tokens for /v1/completions; chat completions default to the rest of the context."""
_MAX_CHOICES = 64
"""Most completions one request may ask for (prompts x n)."""
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
"""Largest request body read by default (`--max-body-bytes`)."""
RETRY_AFTER_S = 1
"""What a 429 tells the client to wait before retrying."""


@dataclass(frozen=True)
class ServeLimits:
    """What one client may ask of the server, and who may ask at all."""

    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    """Largest request body; a longer one is refused with 413 while it is being read."""
    max_waiting: int | None = None
    """Most sequences that may wait for a place in the batch; None: four times the batch size."""
    api_key: str | None = None
    """Key every request but /healthz, /readyz (and /metrics) must carry as a Bearer token; None: open."""
    metrics_api_key: str | None = None
    """Key /metrics asks for (may equal api_key); None: /metrics is open."""


@dataclass
class ServingState:
    """What the HTTP side knows: the model's name, and the model and engine once loaded."""

    model_name: str
    loaded: LoadedModel | None = None
    engine: Engine | None = None
    created: int = field(default_factory=lambda: int(time.time()))
    max_token_chars: int = 1
    """Characters of the longest token of the vocabulary: a prompt longer than the context times this
    has more tokens than the context, which is known without tokenizing it."""

    def serve(self, loaded: LoadedModel, max_batch_size: int, metrics: ServeMetrics, *,
              max_prefill_tokens: int | None = None) -> None:
        """Start generating with `loaded`; the server is ready from now on."""
        # a token's vocabulary entry has at least as many characters as the text it decodes to
        self.max_token_chars = max((len(t) for t in loaded.tokenizer.get_vocab()), default=1)
        engine = Engine(loaded.model, loaded.tokenizer, eos_token_ids=loaded.eos_token_ids,
                        max_batch_size=max_batch_size, context_length=loaded.context_length,
                        pad_token_id=loaded.pad_token_id, max_prefill_tokens=max_prefill_tokens)
        engine.start()
        metrics.watch(lambda: engine.running, lambda: engine.waiting, lambda: engine.steps)
        self.loaded, self.engine = loaded, engine


@dataclass
class _Job:
    """One API call being generated: its choices' prompts and sampling parameters."""

    endpoint: str
    body: CompletionRequest | ChatCompletionRequest
    prompts: list[list[int]]
    params: list[SamplingParams]
    started: float
    id: str = ""
    echo: list[str] = field(default_factory=list)
    """Each choice's prompt as text, which its answer starts with (echo); empty without echo."""


def _sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def _choice_json(chat: bool, index: int, delta: Delta) -> bytes:
    """One choice of a streamed chunk, serialised."""
    finish = "null" if delta.finish_reason is None else f'"{delta.finish_reason}"'
    if chat:
        content = "{}" if not delta.text else '{"content":' + json.dumps(delta.text) + "}"
        return (f'{{"index":{index},"delta":{content},"finish_reason":{finish},"logprobs":null}}').encode()
    return (f'{{"index":{index},"text":{json.dumps(delta.text)},"finish_reason":{finish},'
            '"logprobs":null}').encode()


def _coalesce(batch: list[tuple[int, Delta]]) -> list[tuple[int, Delta]]:
    """The Deltas of a batch merged per choice (text joined, the last one's finish reason and counts):
    a listener that fell behind sends one chunk per choice instead of one per token."""
    merged: dict[int, Delta] = {}
    for index, delta in batch:
        before = merged.get(index)
        merged[index] = delta if before is None else Delta(
            text=before.text + delta.text, finish_reason=delta.finish_reason, prompt_tokens=delta.prompt_tokens,
            completion_tokens=delta.completion_tokens, error=delta.error, logprobs=before.logprobs + delta.logprobs)
    return list(merged.items())


class _GenerationStream(StreamingResponse):
    """A server-sent event stream that cancels its generation however it ends: finished, failed, or the
    client gone (Starlette then cancels the stream, possibly before its first chunk)."""

    def __init__(self, content: AsyncIterator[bytes], generation: Generation, headers: dict[str, str]) -> None:
        super().__init__(content, media_type="text/event-stream", headers=headers)
        self._generation = generation

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Stream the events; cancel the sequences still running once the stream ends for any reason."""
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._generation.cancel()


async def _disconnected(request: Request) -> None:
    """Return once the client has gone away (call after the body has been read)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


class Api:
    """The route handlers, bound to one ServingState, ServeMetrics and ServeLimits."""

    def __init__(self, state: ServingState, metrics: ServeMetrics, limits: ServeLimits) -> None:
        self.state = state
        self.metrics = metrics
        self.limits = limits
        # One thread, as vLLM does: a fast tokenizer called from two threads at once can fail with
        # "Already borrowed"; the tokenizer releases the GIL, so the event loop runs on meanwhile.
        self._tokenizer_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="forge-tokenizer")

    async def _tokenize(self, work: Callable[[], T]) -> T:
        """Run tokenizer work (templates, tokenizing) in the tokenizer thread."""
        return await asyncio.get_running_loop().run_in_executor(self._tokenizer_thread, work)

    # -- plumbing ---------------------------------------------------------------------------------

    def _error(self, endpoint: str, err: ApiError, started: float) -> JSONResponse:
        self._record(endpoint, err.status, started)
        if err.status >= 500:
            log.error("%s: %s", endpoint, err.message)
        return JSONResponse(err.body(), status_code=err.status, headers=err.headers)

    def _record(self, endpoint: str, status: int, started: float) -> None:
        self.metrics.requests.labels(endpoint, str(status)).inc()
        self.metrics.latency.labels(endpoint).observe(time.monotonic() - started)

    async def _read_body(self, request: Request) -> bytes:
        """The request body, refused with 413 as soon as it is known to exceed the limit: from its
        Content-Length, or while it arrives (chunked bodies declare none)."""
        limit = self.limits.max_body_bytes
        too_large = ApiError(413, f"The request body exceeds {limit} bytes.", code="request_too_large")
        declared = request.headers.get("content-length", "")
        if declared.isascii() and declared.isdigit() and (len(declared) > 18 or int(declared) > limit):
            self.metrics.rejected.labels("body_too_large").inc()
            raise too_large
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                self.metrics.rejected.labels("body_too_large").inc()
                raise too_large
            chunks.append(chunk)
        return b"".join(chunks)

    async def _body(self, request: Request, model: type[B]) -> B:
        raw = await self._read_body(request)
        try:
            # pydantic's own parser: nesting is bounded (no RecursionError) and NaN / Infinity are refused
            return model.model_validate_json(raw)
        except ValidationError as exc:
            raise validation_error(exc) from exc

    def _check_chars(self, chars: int, loaded: LoadedModel, param: str) -> None:
        """Refuse, before tokenizing, a prompt of more characters than the context can hold as tokens."""
        ctx = loaded.context_length
        most = ctx * self.state.max_token_chars
        if chars > most:
            raise ApiError(400, f"This model's maximum context length is {ctx} tokens, which hold at most {most} "
                           f"characters; your prompt has {chars}. Please reduce the length of the prompt.",
                           param=param, code="context_length_exceeded")

    def _admit(self, engine: Engine, job: _Job) -> Generation:
        """Hand `job` to the engine, or refuse it with 429 if its sequences would find no place in the batch
        or the queue. Checking and submitting with no await in between: every request sees the ones
        admitted before it."""
        waiting = self.limits.max_waiting
        capacity = engine.max_batch_size + (4 * engine.max_batch_size if waiting is None else waiting)
        held = engine.held
        sequences = len(job.prompts)
        if held and held + sequences > capacity:  # an idle server takes any request, however big
            self.metrics.rejected.labels("queue_full").inc()
            raise ApiError(429, f"The server is busy ({held} sequences generating or waiting, room for "
                           f"{capacity}); retry after {RETRY_AFTER_S} s.", type="rate_limit_error",
                           code="queue_full", headers={"Retry-After": str(RETRY_AFTER_S)})
        return engine.submit_many(list(zip(job.prompts, job.params, strict=True)))

    def _loaded(self, body: CompletionRequest | ChatCompletionRequest) -> tuple[Engine, LoadedModel]:
        if body.model != self.state.model_name:
            raise ApiError(404, f"The model `{body.model}` does not exist; this server serves "
                           f"`{self.state.model_name}`.", param="model", code="model_not_found")
        if self.state.engine is None or self.state.loaded is None:
            raise ApiError(503, "The model is still loading; retry shortly.", type="service_unavailable")
        body.check_supported()
        return self.state.engine, self.state.loaded

    def _plan(self, endpoint: str, body: CompletionRequest | ChatCompletionRequest, prompts: list[list[int]],
              loaded: LoadedModel, default_max: int | None, started: float) -> _Job:
        ctx = loaded.context_length
        vocab = int(loaded.model.config.vocab_size)
        requested = body.max_completion_tokens if isinstance(body, ChatCompletionRequest) else None
        requested = body.max_tokens if requested is None else requested
        _check_choices(len(prompts), body.n or 1)
        plan_prompts, params = [], []
        for ids in prompts:
            if not ids:
                raise ApiError(400, "The prompt is empty.", param="prompt")
            if any(not 0 <= t < vocab for t in ids):
                raise ApiError(400, f"The prompt holds token ids outside the vocabulary (size {vocab}).",
                               param="prompt")
            max_tokens = requested if requested is not None else default_max or max(ctx - len(ids), 1)
            if len(ids) + max_tokens > ctx:
                raise ApiError(400, f"This model's maximum context length is {ctx} tokens. However, you "
                               f"requested {len(ids) + max_tokens} tokens ({len(ids)} in the prompt, "
                               f"{max_tokens} in the completion). Please reduce the length of the prompt "
                               "or completion.", param="messages" if endpoint == CHAT else "prompt",
                               code="context_length_exceeded")
            for choice in range(body.n or 1):
                plan_prompts.append(ids)
                params.append(body.sampling_params(max_tokens, vocab, choice))
        prefix = "chatcmpl-" if endpoint == CHAT else "cmpl-"
        return _Job(endpoint, body, plan_prompts, params, started, id=prefix + uuid.uuid4().hex)

    # -- generation endpoints ---------------------------------------------------------------------

    async def completions(self, request: Request) -> Response:
        """POST /v1/completions."""
        started = time.monotonic()
        try:
            body = await self._body(request, CompletionRequest)
            engine, loaded = self._loaded(body)
            items = self._completion_prompts(body, loaded)
            ids = await self._tokenize(lambda: [loaded.tokenizer(p)["input_ids"] if isinstance(p, str) else list(p)
                                                for p in items])
            job = self._plan(COMPLETIONS, body, ids, loaded, _DEFAULT_COMPLETION_MAX_TOKENS, started)
            if body.echo:
                texts = await self._tokenize(lambda: [p if isinstance(p, str) else loaded.tokenizer.decode(p)
                                                      for p in items])
                job.echo = [text for text in texts for _ in range(body.n or 1)]
            generation = self._admit(engine, job)
        except ApiError as err:
            return self._error(COMPLETIONS, err, started)
        return await self._respond(request, job, generation)

    def _completion_prompts(self, body: CompletionRequest, loaded: LoadedModel) -> list[str | list[int]]:
        """The prompts of a completions request (one, or a batch; text or ids), once their number and
        length are checked."""
        prompt = body.prompt
        items: list[Any] = [prompt] if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)) \
            else list(prompt)
        if not items:
            raise ApiError(400, "The prompt is empty.", param="prompt")
        _check_choices(len(items), body.n or 1)
        for p in items:
            if isinstance(p, str):
                self._check_chars(len(p), loaded, "prompt")
        return items

    async def chat_completions(self, request: Request) -> Response:
        """POST /v1/chat/completions."""
        started = time.monotonic()
        try:
            body = await self._body(request, ChatCompletionRequest)
            engine, loaded = self._loaded(body)
            if not getattr(loaded.tokenizer, "chat_template", None):
                raise ApiError(400, f"The model `{body.model}` has no chat template; use /v1/completions.")
            messages = [{"role": m.role, "content": m.text()} for m in body.messages]
            if len(messages) > loaded.context_length:  # every message adds at least its role's tokens
                raise ApiError(400, f"{len(messages)} messages cannot fit in this model's context of "
                               f"{loaded.context_length} tokens.", param="messages",
                               code="context_length_exceeded")
            self._check_chars(sum(len(m["content"]) for m in messages), loaded, "messages")
            ids = await self._tokenize(lambda: _chat_prompt(loaded, messages))
            job = self._plan(CHAT, body, [ids], loaded, None, started)
            generation = self._admit(engine, job)
        except ApiError as err:
            return self._error(CHAT, err, started)
        return await self._respond(request, job, generation)

    async def _respond(self, request: Request, job: _Job, generation: Generation) -> Response:
        if job.body.stream:
            headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
            return _GenerationStream(self._stream(job, generation), generation, headers=headers)
        collecting = asyncio.create_task(self._collect(job, generation))
        watching = asyncio.create_task(_disconnected(request))
        try:
            await asyncio.wait((collecting, watching), return_when=asyncio.FIRST_COMPLETED)
        finally:
            watching.cancel()
            generation.cancel()  # nothing if it finished; otherwise the client went away (or we are stopping)
            if not collecting.done():
                collecting.cancel()
                await asyncio.wait((collecting,))
        if collecting.cancelled():
            self._record(job.endpoint, 499, job.started)  # nginx's "client closed request"
            return Response(status_code=499)
        texts, finals, scored = collecting.result()
        done = [d for d in finals if d is not None]
        failed = [d for d in done if d.finish_reason == "error"]
        if failed:
            return self._error(job.endpoint, ApiError(500, failed[0].error or "generation failed",
                                                      type="server_error"), job.started)
        if job.echo:
            texts = [prompt + text for prompt, text in zip(job.echo, texts, strict=True)]
        logprobs: list[dict[str, Any] | None] = [None] * len(texts)
        if isinstance(job.body, CompletionRequest) and job.body.logprobs is not None:
            tokenizer = self.state.loaded.tokenizer if self.state.loaded is not None else None
            logprobs = list(await self._tokenize(lambda: [_logprobs_json(tokenizer, s) for s in scored]))
        self._record(job.endpoint, 200, job.started)
        choices = [self._choice(job, i, texts[i], d.finish_reason, logprobs[i]) for i, d in enumerate(done)]
        return JSONResponse({"id": job.id, "object": "chat.completion" if job.endpoint == CHAT else "text_completion",
                             "created": int(time.time()), "model": self.state.model_name, "choices": choices,
                             "usage": self._usage(job, done)})

    async def _collect(self, job: _Job, generation: Generation
                       ) -> tuple[list[str], list[Delta | None], list[list[TokenLogprob]]]:
        """Every choice's whole text, final Delta and scored tokens."""
        texts = [""] * len(job.prompts)
        finals: list[Delta | None] = [None] * len(job.prompts)
        scored: list[list[TokenLogprob]] = [[] for _ in job.prompts]
        async for batch in self._deltas(job, generation):
            for index, delta in batch:
                texts[index] += delta.text
                scored[index].extend(delta.logprobs)
                if delta.finish_reason is not None:
                    finals[index] = delta
        return texts, finals, scored

    async def _deltas(self, job: _Job, generation: Generation) -> AsyncIterator[list[tuple[int, Delta]]]:
        """The engine's deltas for `job` in batches, recording time to first token and token counts."""
        first = True
        async for batch in generation.batches():
            if first:
                self.metrics.time_to_first_token.labels(job.endpoint).observe(time.monotonic() - job.started)
                first = False
            for _, delta in batch:
                if delta.finish_reason is not None:
                    self.metrics.generated_tokens.inc(delta.completion_tokens)
                    self.metrics.prompt_tokens.inc(delta.prompt_tokens)
            yield batch

    def _choice(self, job: _Job, index: int, text: str, finish_reason: str | None,
                logprobs: dict[str, Any] | None) -> dict[str, Any]:
        if job.endpoint == CHAT:
            return {"index": index, "message": {"role": "assistant", "content": text},
                    "finish_reason": finish_reason, "logprobs": None}
        return {"index": index, "text": text, "finish_reason": finish_reason, "logprobs": logprobs}

    @staticmethod
    def _usage(job: _Job, finals: list[Delta]) -> dict[str, int]:
        prompt = sum(len(p) for p in job.prompts[::job.body.n or 1])
        completion = sum(d.completion_tokens for d in finals)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    async def _stream(self, job: _Job, generation: Generation) -> AsyncIterator[bytes]:
        chat = job.endpoint == CHAT
        head = {"id": job.id, "object": "chat.completion.chunk" if chat else "text_completion",
                "created": int(time.time()), "model": self.state.model_name}
        # every chunk is this head, then the choice: only the choice is serialised per chunk
        prefix = _sse(head)[:-3] + b',"choices":['
        status = 499  # until the end is sent: a client that goes away first closed the request (nginx's 499)
        finals: list[Delta] = []
        try:
            if chat:
                for i in range(len(job.prompts)):
                    yield _sse({**head, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""},
                                                     "finish_reason": None, "logprobs": None}]})
            async for batch in self._deltas(job, generation):
                failed = next((d for _, d in batch if d.finish_reason == "error"), None)
                if failed is not None:
                    status = 500
                    err = ApiError(500, failed.error or "generation failed", type="server_error")
                    log.error("%s: %s", job.endpoint, err.message)
                    yield _sse(err.body())
                    break
                out = []
                for index, delta in _coalesce(batch):
                    if delta.finish_reason is not None:
                        finals.append(delta)
                    elif not delta.text:
                        continue
                    out.append(prefix + _choice_json(chat, index, delta) + b"]}\n\n")
                if out:
                    yield b"".join(out)
            else:
                if job.body.include_usage:
                    yield _sse({**head, "choices": [], "usage": self._usage(job, finals)})
            yield b"data: [DONE]\n\n"
            status = 200 if status == 499 else status
        finally:
            self._record(job.endpoint, status, job.started)

    # -- the other endpoints ----------------------------------------------------------------------

    async def models(self, request: Request) -> Response:
        """GET /v1/models."""
        started = time.monotonic()
        self._record("/v1/models", 200, started)
        return JSONResponse({"object": "list", "data": [self._model_card()]})

    async def model(self, request: Request) -> Response:
        """GET /v1/models/{model}."""
        started = time.monotonic()
        if request.path_params["model"] != self.state.model_name:
            return self._error("/v1/models/{model}", ApiError(404, f"The model `{request.path_params['model']}` "
                                                               "does not exist.", param="model",
                                                               code="model_not_found"), started)
        self._record("/v1/models/{model}", 200, started)
        return JSONResponse(self._model_card())

    def _model_card(self) -> dict[str, Any]:
        card: dict[str, Any] = {"id": self.state.model_name, "object": "model", "created": self.state.created,
                                "owned_by": "forge"}
        if self.state.loaded is not None:
            card["digest"] = self.state.loaded.digest
            card["max_model_len"] = self.state.loaded.context_length
        return card

    async def healthz(self, request: Request) -> Response:
        """GET /healthz: the process answers."""
        return JSONResponse({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        """GET /readyz: 200 once the model is loaded, 503 before."""
        if self.state.engine is None:
            return JSONResponse({"status": "loading"}, status_code=503)
        return JSONResponse({"status": "ready"})

    async def metrics_text(self, request: Request) -> Response:
        """GET /metrics in the Prometheus text format."""
        return Response(self.metrics.render(), media_type=CONTENT_TYPE_LATEST)


def _chat_prompt(loaded: LoadedModel, messages: list[dict[str, str]]) -> list[int]:
    """The token ids of `messages` put through the model's chat template, ready for the answer."""
    try:
        text = loaded.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    except TemplateError as exc:
        raise ApiError(400, f"The model's chat template rejected the messages: {exc}", param="messages") from exc
    ids: list[int] = loaded.tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids


_NO_PROBABILITY = -9999.0
"""What a log-probability of -inf is reported as (JSON has no infinity), as vLLM does."""


def _json_logprob(value: float) -> float | None:
    """A log-probability as JSON can hold it: -inf as _NO_PROBABILITY, NaN (a broken model) as null."""
    if math.isfinite(value):
        return value
    return _NO_PROBABILITY if value == -math.inf else None


def _logprobs_json(tokenizer: Any, scored: list[TokenLogprob]) -> dict[str, Any]:
    """The legacy completions `logprobs` object of one choice: each token as text, its log-probability,
    the most likely tokens at its position (with the chosen one) and its character offset in the text."""
    ids = sorted({t.token for t in scored} | {i for t in scored for i, _ in t.top})
    pieces = tokenizer.batch_decode([[i] for i in ids], clean_up_tokenization_spaces=False) if ids else []
    text_of = dict(zip(ids, pieces, strict=True))
    tokens = [text_of[t.token] for t in scored]
    top: list[dict[str, float | None] | None] = []
    for t in scored:
        if t.logprob is None:  # a prompt's first token: nothing predicts it
            top.append(None)
            continue
        alternatives = {text_of[i]: _json_logprob(v) for i, v in t.top}
        alternatives.setdefault(text_of[t.token], _json_logprob(t.logprob))
        top.append(alternatives)
    offsets, offset = [], 0
    for piece in tokens:
        offsets.append(offset)
        offset += len(piece)
    return {"tokens": tokens, "token_logprobs": [None if t.logprob is None else _json_logprob(t.logprob)
                                                 for t in scored],
            "top_logprobs": top, "text_offset": offsets}


def _check_choices(prompts: int, n: int) -> None:
    """Refuse a request for more than _MAX_CHOICES completions (prompts times n), before any work."""
    if prompts * n > _MAX_CHOICES:
        raise ApiError(400, f"At most {_MAX_CHOICES} completions per request (prompts times n); got "
                       f"{prompts} x {n}.", param="prompt" if prompts > 1 else "n")


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    kind = "not_found" if exc.status_code == 404 else "invalid_request_error"
    message = f"{request.method} {request.url.path}: {exc.detail}"
    return JSONResponse(ApiError(exc.status_code, message, type=kind).body(), status_code=exc.status_code,
                        headers=exc.headers)


async def _server_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error answering %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse(ApiError(500, "The server had an error while processing your request.",
                                 type="server_error").body(), status_code=500)


def build_app(state: ServingState, metrics: ServeMetrics, limits: ServeLimits | None = None) -> Starlette:
    """The ASGI application serving `state` within `limits` (the defaults when None)."""
    limits = limits or ServeLimits()
    api = Api(state, metrics, limits)
    routes = [
        Route(COMPLETIONS, api.completions, methods=["POST"]),
        Route(CHAT, api.chat_completions, methods=["POST"]),
        Route("/v1/models", api.models, methods=["GET"]),
        Route("/v1/models/{model:path}", api.model, methods=["GET"]),
        Route("/healthz", api.healthz, methods=["GET"]),
        Route("/readyz", api.readyz, methods=["GET"]),
        Route("/metrics", api.metrics_text, methods=["GET"]),
    ]
    middleware = []
    if limits.api_key or limits.metrics_api_key:
        middleware.append(Middleware(ApiKeyMiddleware, api_key=limits.api_key, metrics_api_key=limits.metrics_api_key,
                                     on_reject=lambda path: metrics.rejected.labels("unauthorized").inc()))
    return Starlette(routes=routes, middleware=middleware,
                     exception_handlers={HTTPException: _http_error, Exception: _server_error})
