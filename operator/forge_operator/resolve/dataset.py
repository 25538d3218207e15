"""Resolve a ForgeDataset: the dataset whose tokenizer it reuses (spec.tokenizer.datasetRef)."""

from __future__ import annotations

from dataclasses import dataclass, field

from forge_operator.api.dataset import ForgeDataset
from forge_operator.resolve.lookup import Lookup
from forge_operator.resolve.references import check_namespace, ready_dataset
from forge_operator.status.conditions import Waiting
from forge_operator.status.dataset import TOKENIZER_READY


@dataclass(frozen=True)
class ResolvedDataset:
    """What a dataset's references resolved to."""

    reused_tokenizer_uri: str | None = None
    resolved: list[str] = field(default_factory=list)
    """The reference conditions that are now True."""


def resolve_dataset(ds: ForgeDataset, lookup: Lookup, *, bucket: str) -> ResolvedDataset | Waiting:
    """The tokenizer of the dataset named by spec.tokenizer.datasetRef (Ready, with a tokenizer), or what
    we wait for; nothing to resolve without one. A source or tokenizer URI in Forge's bucket outside the
    dataset's namespace is an InvalidSpecError."""
    namespace = ds.metadata["namespace"]
    for field_, uri in (("spec.source.uri", ds.spec.source.uri), ("spec.tokenizer.uri", ds.spec.tokenizer.uri)):
        check_namespace(uri, field_, bucket, namespace, "a dataset may only read artifacts of its own namespace")
    ref = ds.spec.tokenizer.dataset_ref
    if ref is None:
        return ResolvedDataset()
    other = ready_dataset(lookup, ref, "spec.tokenizer.datasetRef", TOKENIZER_READY, "tokenizerUri")
    if isinstance(other, Waiting):
        return other
    return ResolvedDataset(str(other["tokenizerUri"]), [TOKENIZER_READY])
