"""Thin Kopf handlers, one module per resource. Importing this package registers them all."""

from __future__ import annotations

import logging
from typing import Any

import kopf

from forge_operator import metrics
from forge_operator.handlers import dataset, deployment, training  # noqa: F401  (registers handlers)
from forge_operator.handlers.runtime import runtime


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
    port = runtime().settings.metrics_port
    if port:
        try:
            metrics.serve(port)
        except OSError as exc:
            logging.getLogger("forge.operator").warning("metrics port %s unavailable: %s", port, exc)
