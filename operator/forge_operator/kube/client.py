"""A small typed facade over the Kubernetes REST API: server-side apply with the operator's field
manager, creates, reads, status merge patches, deletes. Nothing else in the operator calls the API
synchronously; Kopf's watches and its own patches go through its aiohttp session.

Plain HTTP over a bounded urllib3 pool rather than the `kubernetes` client library: the operator needs
seven verbs, and the library's generated models would cost every operator replica ~45 MB of memory."""

from __future__ import annotations

import copy
import json
import logging
import re
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import quote, urlencode

import urllib3

from forge_operator.api.common import FIELD_MANAGER
from forge_operator.kube.connection import CredentialsError, connection_info

if TYPE_CHECKING:
    import kopf

log = logging.getLogger("forge.kube")
_UNKNOWN_FIELD = re.compile(r"(\.[\w.\[\]/-]+): field not declared in schema")
_PART = re.compile(r"([^.\[\]]+)((?:\[\d+\])*)")


def _drop_path(body: dict[str, Any], path: str) -> bool:
    """Remove the field at a path such as `.spec.completionMode` or
    `.spec.versions[0].schema.x-kubernetes-validations`; False if it is not there."""
    steps: list[str | int] = []
    for part in path.strip(".").split("."):
        match = _PART.fullmatch(part)
        if match is None:
            return False
        steps.append(match.group(1))
        steps += [int(i) for i in re.findall(r"\[(\d+)\]", match.group(2))]
    node: Any = body
    for step in steps[:-1]:
        try:
            node = node[step]
        except (KeyError, IndexError, TypeError):
            return False
    if isinstance(node, dict) and steps[-1] in node:
        del node[steps[-1]]
        return True
    return False


class KubeError(Exception):
    """A Kubernetes API call failed; the message names the object."""


class AlreadyExistsError(KubeError):
    """A create found an object of that name already there (409 AlreadyExists): it was left as it is."""


class ConflictError(KubeError):
    """A write with a resourceVersion precondition found the object changed since (409 Conflict)."""


def fields_dropped(sent: Any, live: Any, path: str = "") -> list[str]:
    """Paths of the fields set in `sent` (to anything but an empty or zero value, which the API server
    omits) that `live` lacks: what an older API server silently dropped from a create, such as a Job's
    `.spec.completionMode` before 1.21."""
    if isinstance(sent, dict) and isinstance(live, dict):
        dropped: list[str] = []
        for key, value in sent.items():
            if key in live:
                dropped += fields_dropped(value, live[key], f"{path}.{key}")
            elif value not in (None, "", 0, False, [], {}):
                dropped.append(f"{path}.{key}")
        return dropped
    if isinstance(sent, list) and isinstance(live, list) and len(sent) == len(live):
        return [p for i, (item, kept) in enumerate(zip(sent, live, strict=True))
                for p in fields_dropped(item, kept, f"{path}[{i}]")]
    return []


def load_config(kubeconfig: str | None = None) -> None:
    """Check up front that the API server's address and credentials can be found (the operator's
    start-up: a clear one-line error instead of a failure on the first request)."""
    try:
        connection_info(kubeconfig)
    except CredentialsError as exc:
        raise KubeError(str(exc)) from exc


@dataclass(frozen=True)
class _Resource:
    """Where a kind lives in the REST API (from discovery)."""

    prefix: str  # /api/v1 or /apis/GROUP/VERSION
    plural: str
    namespaced: bool

    def path(self, namespace: str | None, name: str | None = None, subresource: str | None = None) -> str:
        parts = [self.prefix]
        if self.namespaced and namespace:
            parts += ["namespaces", quote(namespace, safe="")]
        parts.append(self.plural)
        if name:
            parts.append(quote(name, safe=""))
        if subresource:
            parts.append(subresource)
        return "/".join(parts)


class _ApiError(Exception):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status, self.reason, self.message = status, reason, message


class Kube:
    """Typed access to the API objects the operator manages (thread-safe: Kopf runs sync handlers in
    a thread pool; requests share one bounded connection pool)."""

    def __init__(self, kubeconfig: str | None = None, *, max_connections: int = 16) -> None:
        self._kubeconfig = kubeconfig
        self._max_connections = max_connections
        self._lock = threading.Lock()
        self._conn: tuple[urllib3.PoolManager, kopf.ConnectionInfo] | None = None
        self._resources: dict[tuple[str, str], _Resource] = {}

    # --- transport -------------------------------------------------------------------------------------

    def _connection(self, *, renew: bool = False) -> tuple[urllib3.PoolManager, kopf.ConnectionInfo]:
        with self._lock:
            if self._conn is None or renew:
                try:
                    info = connection_info(self._kubeconfig)
                except CredentialsError as exc:
                    raise KubeError(str(exc)) from exc
                ssl_context = info.as_ssl_context()
                # urllib3 matches the certificate's names itself (IP SANs included: API servers are often
                # reached by IP, where no SNI name is sent), so the context must not insist on a hostname
                ssl_context.check_hostname = False
                pool = urllib3.PoolManager(num_pools=2, maxsize=self._max_connections, block=True,
                                           ssl_context=ssl_context, retries=False,
                                           assert_hostname=None if not info.insecure else False,
                                           timeout=urllib3.Timeout(connect=10, read=60))
                if self._conn is not None:
                    self._conn[0].clear()
                self._conn = (pool, info)
            return self._conn

    def _request(self, method: str, path: str, *, query: dict[str, str] | None = None,
                 body: Any = None, content_type: str = "application/json") -> Any:
        """One API call; the decoded JSON answer. Raises _ApiError for an error status (with the
        server's Status message) and KubeError when the server cannot be reached."""
        data = None if body is None else json.dumps(body).encode()
        for attempt in (0, 1):
            pool, info = self._connection(renew=attempt == 1)
            headers = {"Accept": "application/json", "User-Agent": FIELD_MANAGER, **info.as_http_headers()}
            if data is not None:
                headers["Content-Type"] = content_type
            url = info.server.rstrip("/") + path + (f"?{urlencode(query)}" if query else "")
            try:
                resp = pool.request(method, url, body=data, headers=headers)
            except urllib3.exceptions.HTTPError as exc:
                raise KubeError(f"{method} {path}: cannot reach the API server at {info.server}: {exc}") from exc
            if resp.status == 401 and attempt == 0:
                continue  # credentials rotated (service-account token, exec plugin): reload once
            payload: Any = None
            if resp.data:
                try:
                    payload = json.loads(resp.data)
                except ValueError:
                    payload = resp.data.decode(errors="replace")
            if resp.status >= 400:
                message = payload.get("message", "") if isinstance(payload, dict) else str(payload or "")
                reason = payload.get("reason", "") if isinstance(payload, dict) else ""
                raise _ApiError(resp.status, reason or str(resp.reason or ""), message)
            return payload
        raise AssertionError("unreachable")

    def _resource(self, api_version: str, kind: str) -> _Resource:
        """The kind's REST path, from API discovery (cached per group version)."""
        key = (api_version, kind)
        if key not in self._resources:
            prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
            try:
                listing = self._request("GET", prefix)
            except _ApiError as exc:
                raise KubeError(f"the API server does not serve {api_version} ({exc.status} {exc.reason})") from exc
            found = {r["kind"]: _Resource(prefix, r["name"], bool(r.get("namespaced")))
                     for r in listing.get("resources") or [] if "/" not in r["name"]}
            with self._lock:
                for k, res in found.items():
                    self._resources[(api_version, k)] = res
            if key not in self._resources:
                raise KubeError(f"the API server does not serve {kind} in {api_version}")
        return self._resources[key]

    # --- verbs -----------------------------------------------------------------------------------------

    def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply `manifest` as field manager `forge-operator`; returns the live object.

        An older API server refuses fields it predates (e.g. Job `completionMode` before 1.21); such a
        field is dropped with a warning and the apply retried, so the rest still converges."""
        meta = manifest["metadata"]
        res = self._resource(manifest["apiVersion"], manifest["kind"])
        body = copy.deepcopy(manifest)
        for _ in range(64):
            try:
                live = self._request("PATCH", res.path(meta.get("namespace"), meta["name"]), body=body,
                                     query={"fieldManager": FIELD_MANAGER, "force": "true"},
                                     content_type="application/apply-patch+yaml")  # JSON is YAML
                return cast(dict[str, Any], live)
            except _ApiError as exc:
                unknown = [p for p in _UNKNOWN_FIELD.findall(exc.message) if _drop_path(body, p)]
                if unknown and "failed to create typed patch object" in exc.message:
                    log.warning("apply %s %s: the API server does not know %s; applied without it",
                                manifest["kind"], meta["name"], ", ".join(unknown))
                    continue
                raise KubeError(f"apply {manifest['kind']} {meta.get('namespace')}/{meta['name']}: {exc}") from exc
        raise KubeError(f"apply {manifest['kind']} {meta['name']}: too many fields unknown to the API server")

    def create(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Create `manifest` (a POST, field manager `forge-operator`); returns the live object. Unlike
        apply it never adopts or overwrites an object of the same name: that raises AlreadyExistsError.

        An older API server silently drops fields it predates (e.g. Job `completionMode` before 1.21); the
        object is created without them, with a warning naming them, as apply does."""
        meta = manifest["metadata"]
        res = self._resource(manifest["apiVersion"], manifest["kind"])
        what = f"{manifest['kind']} {meta.get('namespace')}/{meta['name']}"
        try:
            live = cast(dict[str, Any], self._request("POST", res.path(meta.get("namespace")), body=manifest,
                                                      query={"fieldManager": FIELD_MANAGER}))
        except _ApiError as exc:
            if exc.status == 409:
                raise AlreadyExistsError(f"create {what}: it already exists") from exc
            raise KubeError(f"create {what}: {exc}") from exc
        dropped = fields_dropped(manifest.get("spec"), live.get("spec"), ".spec")
        if dropped:
            log.warning("create %s %s: the API server does not know %s; created without it",
                        manifest["kind"], meta["name"], ", ".join(dropped))
        return live

    def server_version(self) -> dict[str, Any]:
        """The API server's `/version` answer (major, minor, gitVersion, ...), which every client may read."""
        try:
            return cast(dict[str, Any], self._request("GET", "/version"))
        except _ApiError as exc:
            raise KubeError(f"read the API server's version: {exc}") from exc

    def read_pod_log(self, namespace: str, pod: str, container: str, *, tail_lines: int, limit_bytes: int,
                     previous: bool = False) -> str:
        """The last `tail_lines` lines (at most `limit_bytes` bytes) of a container's log (the pods/log
        subresource, bounded on the server's side); `previous`: of its instance before the last restart.
        KubeError when it cannot be read (no kubelet answers, the container never ran, the pod is gone)."""
        res = self._resource("v1", "Pod")
        query = {"container": container, "tailLines": str(tail_lines), "limitBytes": str(limit_bytes)}
        if previous:
            query["previous"] = "true"
        try:
            text = self._request("GET", res.path(namespace, pod, "log"), query=query)
        except _ApiError as exc:
            raise KubeError(f"log of {namespace}/{pod} container {container}: {exc}") from exc
        if text is None:
            return ""
        # _request decodes JSON answers: a log whose whole text is one JSON value comes back decoded
        return text if isinstance(text, str) else json.dumps(text)

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """The object, or None if it does not exist."""
        res = self._resource(api_version, kind)
        try:
            return cast(dict[str, Any], self._request("GET", res.path(namespace, name)))
        except _ApiError as exc:
            if exc.status == 404:
                return None
            raise KubeError(f"get {kind} {namespace}/{name}: {exc}") from exc

    def list(self, api_version: str, kind: str, namespace: str | None = None,
             label_selector: str | None = None) -> list[dict[str, Any]]:
        """Objects of a kind, optionally in one namespace and matching a label selector."""
        res = self._resource(api_version, kind)
        try:
            listing = self._request("GET", res.path(namespace),
                                    query={"labelSelector": label_selector} if label_selector else None)
        except _ApiError as exc:
            raise KubeError(f"list {kind} in {namespace or 'all namespaces'}: {exc}") from exc
        return cast(list[dict[str, Any]], listing.get("items") or [])

    def patch_status(self, api_version: str, kind: str, namespace: str, name: str,
                     status: dict[str, Any], *, resource_version: str | None = None) -> None:
        """Merge-patch the status subresource (None values remove fields). With `resource_version` the
        patch applies only to that version of the object, else it raises ConflictError."""
        res = self._resource(api_version, kind)
        body: dict[str, Any] = {"status": status}
        if resource_version is not None:
            body["metadata"] = {"resourceVersion": resource_version}
        try:
            self._request("PATCH", res.path(namespace, name, "status"), body=body,
                          content_type="application/merge-patch+json")
        except _ApiError as exc:
            if exc.status == 404:
                return  # deleted meanwhile: nothing to report on
            if exc.status == 409 and resource_version is not None:
                raise ConflictError(f"patch status of {kind} {namespace}/{name}: it changed since version "
                                    f"{resource_version}") from exc
            raise KubeError(f"patch status of {kind} {namespace}/{name}: {exc}") from exc

    def patch(self, api_version: str, kind: str, namespace: str, name: str, body: dict[str, Any]) -> None:
        """Merge-patch an object."""
        res = self._resource(api_version, kind)
        try:
            self._request("PATCH", res.path(namespace, name), body=body,
                          content_type="application/merge-patch+json")
        except _ApiError as exc:
            raise KubeError(f"patch {kind} {namespace}/{name}: {exc}") from exc

    def delete(self, api_version: str, kind: str, namespace: str, name: str, *,
               propagation: str = "Background") -> bool:
        """Delete (by default with background propagation: children go too); False if it was already
        gone. `propagation="Foreground"` keeps the object until its children are gone."""
        res = self._resource(api_version, kind)
        try:
            self._request("DELETE", res.path(namespace, name),
                          body={"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": propagation})
            return True
        except _ApiError as exc:
            if exc.status == 404:
                return False
            raise KubeError(f"delete {kind} {namespace}/{name}: {exc}") from exc
