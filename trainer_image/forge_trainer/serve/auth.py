"""API keys: every request but the probes must carry `Authorization: Bearer <key>`, as vLLM and OpenAI ask.

`/healthz` and `/readyz` stay open (the kubelet's probes carry no key). `/metrics` is open unless a
metrics key is set; it may be the API key itself or another one, so Prometheus need not hold the key
that generates. Keys are compared in constant time (`hmac.compare_digest`), so the time an answer
takes says nothing about how much of a guess was right.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable

from starlette.types import ASGIApp, Receive, Scope, Send

from forge_trainer.serve.protocol import ApiError

OPEN_PATHS = frozenset({"/healthz", "/readyz"})
METRICS_PATH = "/metrics"


def bearer_matches(authorization: bytes | None, key: bytes) -> bool:
    """Whether an Authorization header value is `Bearer <key>` (scheme case-insensitive), in constant time
    over the key."""
    if authorization is None:
        return False
    scheme, _, token = authorization.partition(b" ")
    # compare_digest even for a wrong scheme, so that case takes no less time than a wrong key
    return hmac.compare_digest(token.strip(), key) and scheme.lower() == b"bearer"


class ApiKeyMiddleware:
    """An ASGI middleware answering 401 (the OpenAI error object) to a request without the right key."""

    def __init__(self, app: ASGIApp, api_key: str | None, metrics_api_key: str | None,
                 on_reject: Callable[[str], None]) -> None:
        self.app = app
        self._key = api_key.encode() if api_key else None
        self._metrics_key = metrics_api_key.encode() if metrics_api_key else None
        self._on_reject = on_reject

    def _key_for(self, path: str) -> bytes | None:
        if path in OPEN_PATHS:
            return None
        if path == METRICS_PATH:
            return self._metrics_key
        return self._key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on if it needs no key or carries the right one; otherwise answer 401."""
        key = self._key_for(scope.get("path", "")) if scope["type"] == "http" else None
        if key is None:
            await self.app(scope, receive, send)
            return
        header = next((v for k, v in scope.get("headers", []) if k == b"authorization"), None)
        if bearer_matches(header, key):
            await self.app(scope, receive, send)
            return
        self._on_reject(scope.get("path", ""))
        message = ("Missing API key: send it as `Authorization: Bearer <key>`." if header is None
                   else "Incorrect API key provided.")
        body = json.dumps(ApiError(401, message, code="invalid_api_key").body()).encode()
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"www-authenticate", b"Bearer")]})
        await send({"type": "http.response.body", "body": body})
