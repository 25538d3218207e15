"""The HTTP API: OpenAI-compatible completions and chat completions, models, health and metrics.

Every error is the OpenAI error object. A request the server cannot serve as asked (malformed JSON,
an invalid field, an unknown model, a prompt too long for the context) gets a 4xx; only a failure
of the server itself is a 5xx.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from jinja2 import TemplateError
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from forge_trainer.serve.engine import Delta, Engine
from forge_trainer.serve.loading import LoadedModel
from forge_trainer.serve.metrics import ServeMetrics
from forge_trainer.serve.protocol import (
    ApiError,
    ChatCompletionRequest,
    CompletionRequest,
    validation_error,
)
from forge_trainer.serve.sampling import SamplingParams

log = logging.getLogger(__name__)

B = TypeVar("B", bound=BaseModel)

COMPLETIONS = "/v1/completions"
CHAT = "/v1/chat/completions"
_DEFAULT_COMPLETION_MAX_TOKENS = 16
"""OpenAI's default max_tokens for /v1/completions; chat completions default to the rest of the context."""
_MAX_CHOICES = 64
"""Most completions one request may ask for (prompts x n)."""


@dataclass
class ServingState:
    """What the HTTP side knows: the model's name, and the model and engine once loaded."""

    model_name: str
    loaded: LoadedModel | None = None
    engine: Engine | None = None
    created: int = field(default_factory=lambda: int(time.time()))

    def serve(self, loaded: LoadedModel, max_batch_size: int, metrics: ServeMetrics, *,
              max_prefill_tokens: int | None = None) -> None:
        """Start generating with `loaded`; the server is ready from now on."""
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
            completion_tokens=delta.completion_tokens, error=delta.error)
    return list(merged.items())


class Api:
    """The route handlers, bound to one ServingState and ServeMetrics."""

    def __init__(self, state: ServingState, metrics: ServeMetrics) -> None:
        self.state = state
        self.metrics = metrics

    # -- plumbing ---------------------------------------------------------------------------------

    def _error(self, endpoint: str, err: ApiError, started: float) -> JSONResponse:
        self._record(endpoint, err.status, started)
        if err.status >= 500:
            log.error("%s: %s", endpoint, err.message)
        return JSONResponse(err.body(), status_code=err.status)

    def _record(self, endpoint: str, status: int, started: float) -> None:
        self.metrics.requests.labels(endpoint, str(status)).inc()
        self.metrics.latency.labels(endpoint).observe(time.monotonic() - started)

    async def _body(self, request: Request, model: type[B]) -> B:
        raw = await request.body()
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ApiError(400, f"We could not parse the JSON body of your request: {exc}") from exc
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            raise validation_error(exc) from exc

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
        requested = requested or body.max_tokens
        if len(prompts) * (body.n or 1) > _MAX_CHOICES:
            raise ApiError(400, f"At most {_MAX_CHOICES} completions per request (prompts times n); got "
                           f"{len(prompts)} x {body.n or 1}.", param="prompt" if len(prompts) > 1 else "n")
        plan_prompts, params = [], []
        for ids in prompts:
            if not ids:
                raise ApiError(400, "The prompt is empty.", param="prompt")
            if any(not 0 <= t < vocab for t in ids):
                raise ApiError(400, f"The prompt holds token ids outside the vocabulary (size {vocab}).",
                               param="prompt")
            max_tokens = requested or default_max or max(ctx - len(ids), 1)
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
            _, loaded = self._loaded(body)
            ids = self._completion_prompts(body.prompt, loaded)
            job = self._plan(COMPLETIONS, body, ids, loaded, _DEFAULT_COMPLETION_MAX_TOKENS, started)
        except ApiError as err:
            return self._error(COMPLETIONS, err, started)
        return await self._respond(job)

    @staticmethod
    def _completion_prompts(prompt: str | list[str] | list[int] | list[list[int]],
                            loaded: LoadedModel) -> list[list[int]]:
        """The token ids of each prompt of a completions request (one, or a batch; text or ids)."""
        items: list[Any] = [prompt] if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)) \
            else list(prompt)
        if not items:
            raise ApiError(400, "The prompt is empty.", param="prompt")
        return [loaded.tokenizer(p)["input_ids"] if isinstance(p, str) else list(p) for p in items]

    async def chat_completions(self, request: Request) -> Response:
        """POST /v1/chat/completions."""
        started = time.monotonic()
        try:
            body = await self._body(request, ChatCompletionRequest)
            _, loaded = self._loaded(body)
            if not getattr(loaded.tokenizer, "chat_template", None):
                raise ApiError(400, f"The model `{body.model}` has no chat template; use /v1/completions.")
            messages = [{"role": m.role, "content": m.text()} for m in body.messages]
            try:
                text = loaded.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            except TemplateError as exc:
                raise ApiError(400, f"The model's chat template rejected the messages: {exc}",
                               param="messages") from exc
            ids = loaded.tokenizer(text, add_special_tokens=False)["input_ids"]
            job = self._plan(CHAT, body, [ids], loaded, None, started)
        except ApiError as err:
            return self._error(CHAT, err, started)
        return await self._respond(job)

    async def _respond(self, job: _Job) -> Response:
        if job.body.stream:
            headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
            return StreamingResponse(self._stream(job), media_type="text/event-stream", headers=headers)
        texts = [""] * len(job.prompts)
        finals: list[Delta | None] = [None] * len(job.prompts)
        async for batch in self._deltas(job):
            for index, delta in batch:
                texts[index] += delta.text
                if delta.finish_reason is not None:
                    finals[index] = delta
        done = [d for d in finals if d is not None]
        failed = [d for d in done if d.finish_reason == "error"]
        if failed:
            return self._error(job.endpoint, ApiError(500, failed[0].error or "generation failed",
                                                      type="server_error"), job.started)
        self._record(job.endpoint, 200, job.started)
        choices = [self._choice(job, i, texts[i], d.finish_reason) for i, d in enumerate(done)]
        return JSONResponse({"id": job.id, "object": "chat.completion" if job.endpoint == CHAT else "text_completion",
                             "created": int(time.time()), "model": self.state.model_name, "choices": choices,
                             "usage": self._usage(job, done)})

    async def _deltas(self, job: _Job) -> AsyncIterator[list[tuple[int, Delta]]]:
        """The engine's deltas for `job` in batches, recording time to first token and token counts."""
        assert self.state.engine is not None
        first = True
        async for batch in self.state.engine.generate_many(list(zip(job.prompts, job.params, strict=True))):
            if first:
                self.metrics.time_to_first_token.labels(job.endpoint).observe(time.monotonic() - job.started)
                first = False
            for _, delta in batch:
                if delta.finish_reason is not None:
                    self.metrics.generated_tokens.inc(delta.completion_tokens)
                    self.metrics.prompt_tokens.inc(delta.prompt_tokens)
            yield batch

    def _choice(self, job: _Job, index: int, text: str, finish_reason: str | None) -> dict[str, Any]:
        if job.endpoint == CHAT:
            return {"index": index, "message": {"role": "assistant", "content": text},
                    "finish_reason": finish_reason, "logprobs": None}
        return {"index": index, "text": text, "finish_reason": finish_reason, "logprobs": None}

    @staticmethod
    def _usage(job: _Job, finals: list[Delta]) -> dict[str, int]:
        prompt = sum(len(p) for p in job.prompts[::job.body.n or 1])
        completion = sum(d.completion_tokens for d in finals)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    async def _stream(self, job: _Job) -> AsyncIterator[bytes]:
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
            async for batch in self._deltas(job):
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


def build_app(state: ServingState, metrics: ServeMetrics) -> Starlette:
    """The ASGI application serving `state`."""
    api = Api(state, metrics)
    routes = [
        Route(COMPLETIONS, api.completions, methods=["POST"]),
        Route(CHAT, api.chat_completions, methods=["POST"]),
        Route("/v1/models", api.models, methods=["GET"]),
        Route("/v1/models/{model:path}", api.model, methods=["GET"]),
        Route("/healthz", api.healthz, methods=["GET"]),
        Route("/readyz", api.readyz, methods=["GET"]),
        Route("/metrics", api.metrics_text, methods=["GET"]),
    ]
    return Starlette(routes=routes, exception_handlers={HTTPException: _http_error, Exception: _server_error})
