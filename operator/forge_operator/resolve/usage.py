"""Who still uses a resource: its finalizer waits until nothing does."""

from __future__ import annotations

from forge_operator.api import DATASET, DEPLOYMENT, TRAINING_RUN
from forge_operator.api.dataset import DatasetPhase
from forge_operator.api.training import RunPhase
from forge_operator.resolve.lookup import Lookup, deleting, spec_of, status_of

SETTLED_RUN = (RunPhase.SUCCEEDED, RunPhase.FAILED)
SETTLED_DATASET = (DatasetPhase.READY, DatasetPhase.FAILED)


def usage(kind: str, name: str, lookup: Lookup) -> list[str]:
    """The resources (`Kind name`, sorted) that still use the resource `kind`/`name`: runs that train on a
    dataset and unsettled datasets that reuse its tokenizer; unfinished runs that start from a run, and deployments that serve it. Resources being
    deleted use nothing."""
    users: list[str] = []
    if kind == DATASET.kind:
        users = [f"{TRAINING_RUN.kind} {r['metadata']['name']}" for r in lookup.all(TRAINING_RUN.kind)
                 if not deleting(r) and name in (spec_of(r).get("datasetRef"), spec_of(r).get("evalDatasetRef"))]
        # a dataset that reuses this one's tokenizer copies it while it prepares; once settled it has its own
        users += [f"{DATASET.kind} {d['metadata']['name']}" for d in lookup.all(DATASET.kind)
                  if not deleting(d) and (spec_of(d).get("tokenizer") or {}).get("datasetRef") == name
                  and status_of(d).get("phase") not in SETTLED_DATASET]
    elif kind == TRAINING_RUN.kind:
        users = [f"{TRAINING_RUN.kind} {r['metadata']['name']}" for r in lookup.all(TRAINING_RUN.kind)
                 if not deleting(r) and (spec_of(r).get("init") or {}).get("baseRun") == name
                 and status_of(r).get("phase") not in SETTLED_RUN]
        users += [f"{DEPLOYMENT.kind} {d['metadata']['name']}" for d in lookup.all(DEPLOYMENT.kind)
                  if not deleting(d) and spec_of(d).get("modelRef") == name]
    return sorted(users)
