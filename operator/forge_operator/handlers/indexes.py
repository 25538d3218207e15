"""The operator's in-memory view of every Forge resource (Kopf indexes, kept current by the watch), and
the Lookup that resolves references over it. Kopf calls no handler before every index holds the
initial listing."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kopf

from forge_operator.api import DATASET, DEPLOYMENT, GROUP, TRAINING_RUN, VERSION
from forge_operator.resolve.lookup import Index, IndexLookup, summary

Entry = dict[tuple[str | None, str], dict[str, Any]]
DATASETS, RUNS, DEPLOYMENTS = DATASET.plural, TRAINING_RUN.plural, DEPLOYMENT.plural


@kopf.index(GROUP, VERSION, DATASETS)
def forge_datasets(*, body: kopf.Body, namespace: str | None, name: str, **_: Any) -> Entry:
    """Every watched ForgeDataset by (namespace, name)."""
    return {(namespace, name): summary(body)}


@kopf.index(GROUP, VERSION, RUNS)
def forge_runs(*, body: kopf.Body, namespace: str | None, name: str, **_: Any) -> Entry:
    """Every watched ForgeTrainingRun by (namespace, name)."""
    return {(namespace, name): summary(body)}


@kopf.index(GROUP, VERSION, DEPLOYMENTS)
def forge_deployments(*, body: kopf.Body, namespace: str | None, name: str, **_: Any) -> Entry:
    """Every watched ForgeDeployment by (namespace, name)."""
    return {(namespace, name): summary(body)}


def cluster_lookup(namespace: str, handler_kwargs: Mapping[str, Any]) -> IndexLookup:
    """The Lookup of `namespace` over the indexes Kopf hands every handler (by the index functions' names)."""
    indexes: dict[str, Index] = {DATASET.kind: handler_kwargs["forge_datasets"],
                                 TRAINING_RUN.kind: handler_kwargs["forge_runs"],
                                 DEPLOYMENT.kind: handler_kwargs["forge_deployments"]}
    return IndexLookup(namespace, indexes)
