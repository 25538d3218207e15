"""A small typed facade over the Kubernetes dynamic client: server-side apply with the operator's
field manager, reads, status merge patches, deletes. Nothing else in the operator imports
`kubernetes`."""

from __future__ import annotations

import copy
import logging
import re
import threading
from typing import Any, cast

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import NotFoundError, ResourceNotFoundError
from kubernetes.dynamic.resource import Resource

from forge_operator.api.common import FIELD_MANAGER

log = logging.getLogger("forge.kube")
_UNKNOWN_FIELD = re.compile(r"failed to create typed patch object: (\.[\w.]+): field not declared in schema")


def _drop_path(body: dict[str, Any], path: str) -> bool:
    """Remove the field at a dotted path such as `.spec.completionMode`; False if it is not there."""
    parts = path.strip(".").split(".")
    node: Any = body
    for part in parts[:-1]:
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    if isinstance(node, dict) and parts[-1] in node:
        del node[parts[-1]]
        return True
    return False


class KubeError(Exception):
    """A Kubernetes API call failed; the message names the object."""


def load_config(kubeconfig: str | None = None) -> None:
    """Load in-cluster config when running in a pod, else the kubeconfig."""
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config(config_file=kubeconfig)


class Kube:
    """Typed access to the API objects the operator manages."""

    def __init__(self, api_client: client.ApiClient | None = None) -> None:
        self._api = api_client or client.ApiClient()
        self._dyn: DynamicClient | None = None
        self._lock = threading.Lock()

    @property
    def dynamic(self) -> DynamicClient:
        """The dynamic client, created on first use (its discovery costs a few requests)."""
        with self._lock:
            if self._dyn is None:
                self._dyn = DynamicClient(self._api)
            return self._dyn

    def _resource(self, api_version: str, kind: str) -> Resource:
        try:
            return cast(Resource, self.dynamic.resources.get(api_version=api_version, kind=kind))
        except ResourceNotFoundError as exc:
            raise KubeError(f"the API server does not serve {kind} in {api_version}") from exc

    def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply `manifest` as field manager `forge-operator`; returns the live object.

        An older API server refuses fields it predates (e.g. Job `completionMode` before 1.21); such a
        field is dropped with a warning and the apply retried, so the rest still converges."""
        meta = manifest["metadata"]
        res = self._resource(manifest["apiVersion"], manifest["kind"])
        body = copy.deepcopy(manifest)
        for _ in range(8):
            try:
                live = self.dynamic.server_side_apply(res, body=body, namespace=meta.get("namespace"),
                                                      field_manager=FIELD_MANAGER, force_conflicts=True)
                return cast(dict[str, Any], live.to_dict())
            except ApiException as exc:
                message = _api_message(exc)
                unknown = _UNKNOWN_FIELD.search(message)
                if unknown and _drop_path(body, unknown.group(1)):
                    log.warning("apply %s %s: the API server does not know %s; applied without it",
                                manifest["kind"], meta["name"], unknown.group(1))
                    continue
                raise KubeError(f"apply {manifest['kind']} {meta.get('namespace')}/{meta['name']}: "
                                f"{exc.status} {exc.reason}: {message}") from exc
        raise KubeError(f"apply {manifest['kind']} {meta['name']}: too many fields unknown to the API server")

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """The object, or None if it does not exist."""
        res = self._resource(api_version, kind)
        try:
            return cast(dict[str, Any], self.dynamic.get(res, name=name, namespace=namespace).to_dict())
        except NotFoundError:
            return None
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise KubeError(f"get {kind} {namespace}/{name}: {exc.status} {exc.reason}") from exc

    def list(self, api_version: str, kind: str, namespace: str | None = None,
             label_selector: str | None = None) -> list[dict[str, Any]]:
        """Objects of a kind, optionally in one namespace and matching a label selector."""
        res = self._resource(api_version, kind)
        items = self.dynamic.get(res, namespace=namespace, label_selector=label_selector).to_dict()
        return cast(list[dict[str, Any]], items.get("items") or [])

    def patch_status(self, api_version: str, kind: str, namespace: str, name: str,
                     status: dict[str, Any]) -> None:
        """Merge-patch the status subresource (None values remove fields)."""
        res = self._resource(api_version, kind)
        try:
            self.dynamic.patch(res.status, body={"status": status}, name=name, namespace=namespace,
                               content_type="application/merge-patch+json")
        except ApiException as exc:
            if exc.status == 404:
                return  # deleted meanwhile: nothing to report on
            raise KubeError(f"patch status of {kind} {namespace}/{name}: {exc.status} {exc.reason}: "
                            f"{_api_message(exc)}") from exc

    def patch(self, api_version: str, kind: str, namespace: str, name: str, body: dict[str, Any]) -> None:
        """Merge-patch an object."""
        res = self._resource(api_version, kind)
        try:
            self.dynamic.patch(res, body=body, name=name, namespace=namespace,
                               content_type="application/merge-patch+json")
        except ApiException as exc:
            raise KubeError(f"patch {kind} {namespace}/{name}: {exc.status} {exc.reason}") from exc

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> bool:
        """Delete with background propagation (children go too); False if it was already gone."""
        res = self._resource(api_version, kind)
        try:
            self.dynamic.delete(res, name=name, namespace=namespace,
                                body={"propagationPolicy": "Background"})
            return True
        except NotFoundError:
            return False
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise KubeError(f"delete {kind} {namespace}/{name}: {exc.status} {exc.reason}") from exc

    def read_secret_keys(self, namespace: str, name: str) -> dict[str, str]:
        """The decoded data of a Secret (used only to hand credentials to the store client)."""
        import base64

        obj = self.get("v1", "Secret", namespace, name)
        if obj is None:
            raise KubeError(f"Secret {namespace}/{name} does not exist")
        return {k: base64.b64decode(v).decode() for k, v in (obj.get("data") or {}).items()}


def _api_message(exc: ApiException) -> str:
    import json

    try:
        return str(json.loads(exc.body or "{}").get("message", exc.body))
    except (ValueError, AttributeError):
        return str(exc.body)
