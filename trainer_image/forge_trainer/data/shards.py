"""Reading a prepared dataset: the manifest, token shards, record shards and the tokenizer.

Every artifact is verified against the sha256 the manifest records before it is handed out, so a
truncated or tampered shard is an error that names the shard, never silently bad training data.

    manifest, digest = load_manifest("s3://bucket/forge/ns/forgedataset/docs/uid/manifest.json", store)
    for shard in manifest.shards:
        tokens = read_token_shard(uri, shard, store, dtype=manifest.dtype)
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from forge_trainer.config import StoreConfig
from forge_trainer.config.store import MANIFEST_NAME, TOKENIZER_NAME
from forge_trainer.data.manifest import Manifest, ShardFormat, ShardInfo
from forge_trainer.store import (
    LocalStore,
    ObjectStore,
    StoreError,
    join_key,
    open_uri,
    sha256_bytes,
    sha256_file,
    split_uri,
)


class IntegrityError(StoreError):
    """An artifact's sha256 differs from the one the manifest records; the message names it."""


def locate_dataset(uri: str, store: StoreConfig | None = None) -> tuple[ObjectStore, str]:
    """The store and key prefix of a dataset, given its prefix URI or its manifest.json URI."""
    base = uri.rstrip("/")
    if base == MANIFEST_NAME:
        base = "."
    elif base.endswith("/" + MANIFEST_NAME):
        base = base[: -len(MANIFEST_NAME) - 1] or "/"
    return open_uri(base, store)


def load_manifest(uri: str, store: StoreConfig | None = None) -> tuple[Manifest, str]:
    """The manifest of the dataset at `uri` (prefix or manifest.json URI) and its digest `sha256:<hex>`.

    The digest is the sha256 of manifest.json as stored: the dataset digest the operator reports."""
    st, prefix = locate_dataset(uri, store)
    key = join_key(prefix, MANIFEST_NAME)
    raw = st.get_bytes(key)
    try:
        manifest = Manifest.model_validate_json(raw)
    except ValueError as exc:
        raise StoreError(f"{st.uri(key)}: not a valid dataset manifest ({exc})") from exc
    return manifest, sha256_bytes(raw)


def verify_digest(data: bytes, expected: str, what: str) -> None:
    """Raise IntegrityError naming `what` unless sha256(data) is `expected`."""
    actual = sha256_bytes(data)
    if actual != expected:
        raise IntegrityError(f"{what}: sha256 mismatch (manifest says {expected}, file has {actual}); "
                             "the shard is corrupt or was changed after the dataset was made")


def read_shard_bytes(uri: str, shard: ShardInfo, store: StoreConfig | None = None) -> bytes:
    """The bytes of one shard of the dataset at `uri`, verified against the manifest's sha256."""
    st, prefix = locate_dataset(uri, store)
    key = join_key(prefix, shard.path)
    data = st.get_bytes(key)
    if len(data) != shard.bytes:
        raise IntegrityError(f"{st.uri(key)}: {len(data)} bytes, manifest says {shard.bytes}; "
                             "the shard is truncated or was changed after the dataset was made")
    verify_digest(data, shard.sha256, st.uri(key))
    return data


def read_token_shard(uri: str, shard: ShardInfo, store: StoreConfig | None = None,
                     dtype: str | None = None) -> npt.NDArray[np.unsignedinteger[Any]]:
    """The token ids of one `tokens` shard (read-only 1-D array), verified against its sha256.

    `dtype` is the manifest's dtype; when omitted the manifest is read to find it."""
    if shard.format is not ShardFormat.TOKENS:
        raise ValueError(f"shard {shard.path} holds {shard.format.value} records, not tokens")
    if dtype is None:
        manifest, _ = load_manifest(uri, store)
        dtype = manifest.dtype or "uint32"
    data = read_shard_bytes(uri, shard, store)
    return np.frombuffer(data, dtype=np.dtype(dtype).newbyteorder("<"))


def iter_records(uri: str, shard: ShardInfo, store: StoreConfig | None = None) -> Iterator[dict[str, Any]]:
    """The records of one `jsonl` shard (sft conversations or rl tasks), verified against its sha256."""
    if shard.format is not ShardFormat.JSONL:
        raise ValueError(f"shard {shard.path} holds {shard.format.value}, not JSONL records")
    data = read_shard_bytes(uri, shard, store)
    for line in data.splitlines():
        if line.strip():
            yield json.loads(line)


def fetch_tokenizer(uri: str, store: StoreConfig | None = None, dest: Path | None = None,
                    manifest: Manifest | None = None) -> Path:
    """A local path to the dataset's tokenizer.json, verified against the manifest's sha256.

    Downloads to `dest` (a file path) or a fresh temporary directory; a local dataset's file is
    returned in place."""
    if manifest is None:
        manifest, _ = load_manifest(uri, store)
    info = manifest.tokenizer
    if info.path is not None:
        st, prefix = locate_dataset(uri, store)
        key = join_key(prefix, info.path)
    elif info.uri is not None:
        st, key = open_tokenizer_uri(info.uri, store)
    else:
        raise StoreError(f"{uri}: manifest names no tokenizer path or uri")
    local = _local_file(st, key)
    if local is not None and dest is None:
        if sha256_file(local) != info.sha256:
            raise IntegrityError(f"{st.uri(key)}: sha256 mismatch with the manifest's tokenizer digest")
        return local
    target = dest or Path(tempfile.mkdtemp(prefix="forge-tokenizer-")) / TOKENIZER_NAME
    target.parent.mkdir(parents=True, exist_ok=True)
    st.get_file(key, target)
    actual = sha256_file(target)
    if actual != info.sha256:
        target.unlink(missing_ok=True)
        raise IntegrityError(f"{st.uri(key)}: sha256 mismatch (manifest says {info.sha256}, "
                             f"file has {actual})")
    return target


def open_tokenizer_uri(uri: str, store: StoreConfig | None = None) -> tuple[ObjectStore, str]:
    """The store and key of a tokenizer.json given by URI (s3://.../tokenizer.json or a local path)."""
    scheme, root, _ = split_uri(uri)
    if scheme == "file":
        path = Path(root)
        return LocalStore(path.parent), path.name
    return open_uri(uri, store)


def _local_file(st: ObjectStore, key: str) -> Path | None:
    if isinstance(st, LocalStore):
        path = st.root / key
        return path if path.is_file() else None
    return None
