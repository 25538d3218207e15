"""`forge render`: every Kubernetes object the operator would apply for a set of manifests, like
`helm template`, for review in pull requests and for policy checks. It runs the operator's own
resolve -> plan -> render functions over a Lookup in which every reference is Ready (datasets) or
Succeeded (runs), with placeholder URIs and digests, so what it prints cannot drift from what the
operator applies."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from forge_operator.api import DATASET
from forge_operator.api.dataset import DatasetPhase, ForgeDataset
from forge_operator.api.deployment import ForgeDeployment
from forge_operator.api.training import ForgeTrainingRun, RunPhase
from forge_operator.manifests import LoadedManifest
from forge_operator.plan.dataset import plan_dataset
from forge_operator.plan.deployment import plan_deployment
from forge_operator.plan.naming import output_uri
from forge_operator.plan.training import plan_training_run
from forge_operator.plan.workload import InvalidSpecError
from forge_operator.render.dataset import render_dataset
from forge_operator.render.deployment import render_deployment
from forge_operator.render.training import render_training
from forge_operator.resolve.dataset import resolve_dataset
from forge_operator.resolve.deployment import resolve_deployment
from forge_operator.resolve.training import resolve_run
from forge_operator.settings import OperatorSettings
from forge_operator.status.conditions import Waiting

PLACEHOLDER_UID = "00000000-0000-0000-0000-000000000000"
"""The uid of every rendered resource (the API server assigns the real one)."""
PLACEHOLDER_DIGEST = "sha256:" + "0" * 64
"""The digest of every referenced dataset and model."""


def _placeholder_status(kind: str, namespace: str, name: str, bucket: str) -> dict[str, Any]:
    """The status of a finished `kind`/`name`: Ready or Succeeded, its outputs where Forge writes them."""
    out = output_uri(bucket, namespace, kind, name, PLACEHOLDER_UID)
    if kind == DATASET.kind:
        return {"phase": DatasetPhase.READY.value, "manifestUri": f"{out}/manifest.json", "digest": PLACEHOLDER_DIGEST,
                "tokenizerUri": f"{out}/tokenizer.json"}
    return {"phase": RunPhase.SUCCEEDED.value, "finalModelUri": f"{out}/model", "finalModelDigest": PLACEHOLDER_DIGEST}


@dataclass(frozen=True)
class ReadyLookup:
    """A Lookup in which every dataset is Ready and every run Succeeded, with placeholder URIs and digests;
    a resource among the manifests keeps its own spec (a base run's model is read from it)."""

    namespace: str
    bucket: str
    specs: Mapping[tuple[str, str], dict[str, Any]]
    """(kind, name) -> spec of the resources in the manifests."""

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        """`kind`/`name`, finished, whether or not it is among the manifests."""
        return {"metadata": {"name": name}, "spec": dict(self.specs.get((kind, name)) or {}),
                "status": _placeholder_status(kind, self.namespace, name, self.bucket)}

    def all(self, kind: str) -> list[dict[str, Any]]:
        """The resources of `kind` among the manifests."""
        return [body for (k, name) in self.specs if k == kind and (body := self.get(k, name)) is not None]


class RenderError(Exception):
    """A manifest cannot be rendered (the operator would report InvalidSpec); the message names it."""


def _body(m: LoadedManifest, namespace: str) -> dict[str, Any]:
    """The manifest's body as the API server would hand it to the operator (namespace, uid, generation)."""
    body = copy.deepcopy(m.body)
    meta = body.setdefault("metadata", {})
    meta.setdefault("namespace", namespace)
    meta["uid"] = PLACEHOLDER_UID
    meta.setdefault("generation", 1)
    return body


def _objects(resource: BaseModel, lookup: ReadyLookup, settings: OperatorSettings) -> list[dict[str, Any]]:
    """resolve -> plan -> render for one resource, through the operator's own functions."""
    bucket = settings.store_bucket
    resolved: object
    if isinstance(resource, ForgeDataset):
        resolved = resolve_dataset(resource, lookup, bucket=bucket)
        if not isinstance(resolved, Waiting):
            return render_dataset(plan_dataset(resource, settings, reused_tokenizer_uri=resolved.reused_tokenizer_uri))
    elif isinstance(resource, ForgeTrainingRun):
        resolved = resolve_run(resource, lookup, bucket=bucket, trainer_image=settings.trainer_image)
        if not isinstance(resolved, Waiting):
            return render_training(plan_training_run(resource, settings, resolved.refs, attempt=0))
    elif isinstance(resource, ForgeDeployment):
        resolved = resolve_deployment(resource, lookup, bucket=bucket)
        if not isinstance(resolved, Waiting):
            # what is applied once the eval gate passes (placeholders carry no metrics to judge it by)
            return render_deployment(plan_deployment(resource, settings, resolved.uri, resolved.digest))
    else:
        raise RenderError(f"{type(resource).__name__} is not a Forge kind")
    raise RenderError(f"unexpectedly waiting: {resolved}")


def render_manifests(loaded: list[LoadedManifest], namespace: str,
                     settings: OperatorSettings) -> tuple[list[dict[str, Any]], list[str]]:
    """Every object the operator would apply for `loaded` (in manifest order, each resource's objects in
    apply order), and the problems of the resources it would refuse, each naming file and field."""
    bodies = [_body(m, namespace) for m in loaded]
    specs: dict[str, dict[tuple[str, str], dict[str, Any]]] = {}
    for b in bodies:
        specs.setdefault(str(b["metadata"]["namespace"]), {})[(str(b["kind"]), str(b["metadata"]["name"]))] = \
            dict(b.get("spec") or {})
    objects: list[dict[str, Any]] = []
    problems: list[str] = []
    for m, body in zip(loaded, bodies, strict=True):
        ns = str(body["metadata"]["namespace"])
        lookup = ReadyLookup(ns, settings.store_bucket, specs[ns])
        try:
            objects += _objects(type(m.resource).model_validate(body), lookup, settings)
        except (InvalidSpecError, RenderError) as exc:
            problems.append(f"{m.path} (document {m.index + 1}): {m.kind} {m.name}: {exc}")
    return objects, problems
