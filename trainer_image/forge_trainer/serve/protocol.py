"""The OpenAI API's request bodies and error object, as far as the builtin runtime implements them.

Unknown fields are ignored (as vLLM does), so newer clients keep working; a known field the runtime
cannot honour (penalties, best_of, suffix, tools, chat logprobs, ...) is refused with a 400 that names it.
/v1/completions implements the legacy API's scoring fields as lm-evaluation-harness's
`local-completions` uses them: `logprobs` (0 to MAX_LOGPROBS alternatives per token), `echo` (the
prompt comes back before the completion, with its tokens' log-probabilities when `logprobs` is set)
and `max_tokens` 0 with `echo` (score the prompt, generate nothing); neither is offered on a stream. Every number is
range-checked here, before any work: a temperature so small that logits / temperature overflow, a seed
torch cannot take, NaN or infinity (which Python's JSON accepts) are a 400 naming the field.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from forge_trainer.serve.sampling import SamplingParams


class ApiError(Exception):
    """An error answered as the OpenAI error object with an HTTP status."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers
        """HTTP headers of the answer (Retry-After, WWW-Authenticate)."""

    def body(self) -> dict[str, Any]:
        """The JSON body: {"error": {"message", "type", "param", "code"}}."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def validation_error(exc: ValidationError) -> ApiError:
    """A 400 naming the first invalid field of a request body (or saying why it is not JSON)."""
    err = exc.errors(include_url=False)[0]
    if err["type"] == "json_invalid":
        return ApiError(400, f"We could not parse the JSON body of your request: {err['msg']}")
    loc = ".".join(str(p) for p in err["loc"])
    return ApiError(400, f"{loc}: {err['msg']}" if loc else err["msg"],
                    param=str(err["loc"][0]) if err["loc"] else None)


MIN_TEMPERATURE = 1e-2
"""Smallest non-zero temperature: below it logits / temperature overflow to inf and sampling is greedy anyway."""
MAX_STOP_CHARS = 256
"""Longest stop string: each generated token is checked against every stop string's prefixes."""
_INT64 = 2**63
MAX_LOGPROBS = 5
"""Most alternatives per token a completions request may ask for (`logprobs`), OpenAI's limit."""


def _temperature(value: float | None) -> float | None:
    if value is not None and 0.0 < value < MIN_TEMPERATURE:
        raise ValueError(f"must be 0 (greedy) or at least {MIN_TEMPERATURE}, got {value}")
    return value


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)


class StreamOptions(_Body):
    """Options of a streamed response."""

    include_usage: bool = False
    """Send a last chunk with the token counts."""


class _GenerationRequest(_Body):
    model: str
    """Name of the model to use; the server serves one."""
    max_tokens: Annotated[int | None, Field(ge=1, lt=_INT64)] = None
    """Most tokens to generate."""
    temperature: Annotated[float | None, Field(ge=0.0, le=2.0), AfterValidator(_temperature)] = None
    """Sampling temperature; 0 is greedy, otherwise at least MIN_TEMPERATURE."""
    top_p: Annotated[float | None, Field(gt=0.0, le=1.0)] = None
    """Nucleus sampling mass, in (0, 1]."""
    n: Annotated[int | None, Field(ge=1, le=16)] = None
    """Completions per prompt."""
    stop: Annotated[str, Field(max_length=MAX_STOP_CHARS)] | \
        Annotated[list[Annotated[str, Field(max_length=MAX_STOP_CHARS)]], Field(max_length=16)] | None = None
    """Up to 16 strings of at most MAX_STOP_CHARS characters that end generation."""
    seed: Annotated[int | None, Field(ge=-_INT64, lt=_INT64)] = None
    """Makes sampling reproducible; a signed 64-bit integer (choice k of n samples with seed + k)."""
    stream: bool | None = False
    """Answer with server-sent events as tokens are generated."""
    stream_options: StreamOptions | None = None
    """Options of a streamed response."""
    logit_bias: Annotated[dict[str, Annotated[float, Field(ge=-100, le=100)]], Field(max_length=4096)] | None = None
    """Added to the logits of these token ids (given as strings); at most 4096 of them."""
    frequency_penalty: Annotated[float | None, Field(ge=-2.0, le=2.0)] = None
    """OpenAI's range; any value but 0 is refused by the builtin runtime."""
    presence_penalty: Annotated[float | None, Field(ge=-2.0, le=2.0)] = None
    """OpenAI's range; any value but 0 is refused by the builtin runtime."""
    user: str | None = None

    def _unsupported(self) -> dict[str, bool]:
        return {"frequency_penalty": bool(self.frequency_penalty), "presence_penalty": bool(self.presence_penalty)}

    def check_supported(self) -> None:
        """Refuse fields the builtin runtime does not implement."""
        for name, used in self._unsupported().items():
            if used:
                raise ApiError(400, f"{name} is not supported by the builtin runtime", param=name)

    def sampling_params(self, max_tokens: int, vocab_size: int, choice: int = 0) -> SamplingParams:
        """The sampling parameters of the `choice`-th completion of this request."""
        bias: dict[int, float] = {}
        for key, value in (self.logit_bias or {}).items():
            try:
                token = int(key)
            except ValueError as exc:
                raise ApiError(400, f"logit_bias: {key!r} is not a token id", param="logit_bias") from exc
            if not 0 <= token < vocab_size:
                raise ApiError(400, f"logit_bias: token id {token} is outside the vocabulary (size {vocab_size})",
                               param="logit_bias")
            bias[token] = value
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        return SamplingParams(max_tokens=max_tokens,
                              temperature=1.0 if self.temperature is None else self.temperature,
                              top_p=1.0 if self.top_p is None else self.top_p, stop=stop,
                              seed=None if self.seed is None else self.seed + choice, logit_bias=bias,
                              logprobs=self._scoring()[0], echo=self._scoring()[1])

    def _scoring(self) -> tuple[int | None, bool]:
        """(logprobs, echo) as the engine takes them."""
        return None, False

    @property
    def include_usage(self) -> bool:
        """Whether a streamed answer ends with a usage chunk."""
        return self.stream_options is not None and self.stream_options.include_usage


class CompletionRequest(_GenerationRequest):
    """POST /v1/completions."""

    prompt: str | list[str] | list[int] | list[list[int]]
    """One prompt or a batch, as text or token ids."""
    max_tokens: Annotated[int | None, Field(ge=0, lt=_INT64)] = None
    """Most tokens to generate; 0 (with echo) scores the prompt and generates nothing."""
    echo: bool | None = False
    """Answer with the prompt before the completion (and its tokens' logprobs when logprobs is set)."""
    logprobs: Annotated[int | None, Field(ge=0, le=MAX_LOGPROBS)] = None
    """Log-probability of every token, with this many most likely alternatives at each position."""
    best_of: int | None = None
    suffix: str | None = None

    def _unsupported(self) -> dict[str, bool]:
        return {**super()._unsupported(), "best_of": self.best_of not in (None, 1), "suffix": bool(self.suffix)}

    def check_supported(self) -> None:
        """Refuse fields the builtin runtime does not implement, and max_tokens 0 without echo."""
        super().check_supported()
        if self.max_tokens == 0 and not self.echo:
            raise ApiError(400, "max_tokens: 0 asks for no completion, which only makes sense with echo "
                           "(scoring the prompt)", param="max_tokens")
        if self.stream and (self.echo or self.logprobs is not None):
            field = "logprobs" if self.logprobs is not None else "echo"
            raise ApiError(400, f"{field} is not supported on a streamed completion (stream: true); "
                           "ask without stream", param=field)

    def _scoring(self) -> tuple[int | None, bool]:
        return self.logprobs, bool(self.echo)


class TextPart(_Body):
    """A text part of a message's content."""

    type: Literal["text"]
    text: str


class ChatMessage(_Body):
    """One message of a conversation."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        """The message's content as plain text."""
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class ChatCompletionRequest(_GenerationRequest):
    """POST /v1/chat/completions."""

    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    """The conversation so far."""
    max_completion_tokens: Annotated[int | None, Field(ge=1)] = None
    """Most tokens to generate (the newer name of max_tokens)."""
    logprobs: bool | None = False
    tools: list[Any] | None = None
    response_format: dict[str, Any] | None = None

    def _unsupported(self) -> dict[str, bool]:
        return {**super()._unsupported(), "logprobs": bool(self.logprobs), "tools": bool(self.tools),
                "response_format": (self.response_format or {}).get("type", "text") != "text"}
