"""The one read of a container's log (the pods/log subresource), bounded on the server's side: what a
failure's status quotes."""

from __future__ import annotations

import json

from forge_operator.kube.client import Kube, KubeError, _ApiError


def read_pod_log(kube: Kube, namespace: str, pod: str, container: str, *, tail_lines: int, limit_bytes: int,
                 previous: bool = False) -> str:
    """The last `tail_lines` lines (at most `limit_bytes` bytes) of a container's log; `previous`: of its
    instance before the last restart. Raises KubeError when the log cannot be read (no kubelet answers,
    the container never ran, the pod is gone)."""
    res = kube._resource("v1", "Pod")
    query = {"container": container, "tailLines": str(tail_lines), "limitBytes": str(limit_bytes)}
    if previous:
        query["previous"] = "true"
    try:
        text = kube._request("GET", res.path(namespace, pod, "log"), query=query)
    except _ApiError as exc:
        raise KubeError(f"log of {namespace}/{pod} container {container}: {exc}") from exc
    if text is None:
        return ""
    # the facade decodes JSON answers: a log whose whole text is one JSON value comes back decoded
    return text if isinstance(text, str) else json.dumps(text)
