"""A workload's pods as every handler looks at them: listed by the resource's selector labels, with the
last log lines of a container that failed (read once per failure, bounded, redacted), for status/pods.py to
judge; and the Warning Event a new trouble deserves."""

from __future__ import annotations

import dataclasses
import os
from collections import OrderedDict
from collections.abc import Collection
from datetime import datetime
from typing import Any

from forge_operator.api.common import ResourceStatus
from forge_operator.handlers.runtime import log, post_event, runtime
from forge_operator.kube.client import KubeError
from forge_operator.plan.naming import selector_labels
from forge_operator.status.conditions import PODS_READY, get_condition
from forge_operator.status.pods import (
    LOG_LIMIT_BYTES,
    LOG_TAIL_LINES,
    SECRET_WORDS,
    PodsSeen,
    log_tail,
    observe_pods,
    pods_event,
    quoted_logs,
    redact_log,
    secret_env_names,
)

_UNREADABLE: OrderedDict[str, None] = OrderedDict()
"""Failures whose log could not be read: not asked again every reconcile (a kubelet that does not answer
would hold each one up)."""


def look_at_pods(kind: str, name: str, namespace: str, now: datetime, prev: ResourceStatus,
                 owners: Collection[str] | None = None) -> PodsSeen:
    """The resource's pods (`owners`: only those these uids own, e.g. its current Jobs), and the failing
    container's last log lines when a container failed."""
    selector = ",".join(f"{k}={v}" for k, v in sorted(selector_labels(kind, name).items()))
    pods = runtime().kube.list("v1", "Pod", namespace, label_selector=selector)
    seen = observe_pods(pods, now, owners)
    trouble = seen.trouble
    if not seen.needs_logs or trouble is None or trouble.container is None:
        return seen
    old = get_condition(prev.conditions, PODS_READY)
    logs = quoted_logs(old.message if old else None, trouble.summary)
    if logs is None and trouble.summary not in _UNREADABLE:
        pod = next(p for p in pods if (p.get("metadata") or {}).get("name") == trouble.pod)
        try:
            text = runtime().kube.read_pod_log(namespace, trouble.pod, trouble.container, tail_lines=LOG_TAIL_LINES,
                                limit_bytes=LOG_LIMIT_BYTES, previous=trouble.previous)
        except KubeError as exc:
            log.info("%s %s/%s: cannot read the log of pod %s: %s", kind, namespace, name, trouble.pod, exc)
            _UNREADABLE[trouble.summary] = None
            while len(_UNREADABLE) > 256:
                _UNREADABLE.popitem(last=False)
            return seen
        logs = log_tail(redact_log(text, secret_env_names(pod), _known_secret_values())) or None
    return dataclasses.replace(seen, logs=logs)


def _known_secret_values() -> list[str]:
    """The secret values this operator holds itself (its store credentials, often the workloads' too):
    none of them may appear in a status, whatever the line around it looks like."""
    return [value for key, value in os.environ.items() if any(word in key.upper() for word in SECRET_WORDS)]


def tell_pod_trouble(body: dict[str, Any], prev: ResourceStatus, status: ResourceStatus) -> None:
    """Post the Warning Event of a new pod trouble or stall (reason: its category), once per change."""
    event = pods_event(prev, status)
    if event is not None:
        post_event(body, event[0], event[1], warning=True)
