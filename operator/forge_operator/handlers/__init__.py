"""Thin Kopf handlers, one module per resource. Importing this package registers them all."""

from __future__ import annotations

import logging
from typing import Any

import aiohttp
import kopf

from forge_operator import metrics
from forge_operator.handlers import dataset, deployment, indexes, replica, training  # noqa: F401  (registers handlers)
from forge_operator.handlers.runtime import runtime
from forge_operator.kube.connection import connection_info


def _drop_timer_success(record: logging.LogRecord) -> bool:
    """Keep Kopf's per-object log to what happened: a timer that succeeded (every resource, every
    reconcile interval) says nothing; failures, creations and updates stay."""
    return not (record.levelno <= logging.INFO and str(record.msg).startswith("Timer ")
                and str(record.msg).endswith("succeeded."))


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    """Keep Kopf's bookkeeping in annotations (the CRD status holds only declared fields), post
    Events at INFO, and serve the operator's metrics."""
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="forge.ai")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="forge.ai")
    settings.posting.level = logging.INFO
    # handlers are short blocking API calls: enough threads that a burst does not queue behind them,
    # and no artificial wait to batch events of one object
    settings.execution.max_workers = 16
    settings.batching.batch_window = 0.01
    settings.watching.server_timeout = 120
    settings.watching.client_timeout = 150
    logging.getLogger("kopf.objects").addFilter(_drop_timer_success)
    port = runtime().settings.metrics_port
    if port:
        try:
            metrics.serve(port)
        except OSError as exc:
            logging.getLogger("forge.operator").warning("metrics port %s unavailable: %s", port, exc)


@kopf.on.login()
async def login(**_: Any) -> kopf.AiohttpSession:
    """Authenticate Kopf the same way as the operator's own API calls (kube/connection.py), through a
    session with a bounded connection pool: Kopf's default is unbounded, and a burst of objects then
    holds hundreds of TLS connections (~0.3 MB each) open. Called again by Kopf on a 401."""
    info = connection_info()
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=runtime().settings.api_connections, ssl=info.as_ssl_context()),
        headers={**info.as_http_headers(), "User-Agent": "forge-operator"})
    return kopf.AiohttpSession(aiohttp_session=session, server=info.server, default_namespace=info.default_namespace,
                               expiration=info.expiration)
