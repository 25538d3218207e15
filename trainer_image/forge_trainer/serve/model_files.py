"""Where the served model's files come from: the object store or a local path, checked against a digest
(`forge_trainer.model.files.model_dir_digest`, the one definition)."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from pathlib import Path

from forge_trainer.config import StoreConfig
from forge_trainer.model.files import ModelFilesError, model_dir_digest
from forge_trainer.store import StoreError, open_uri, split_uri

log = logging.getLogger(__name__)


def _cache_dir_for(uri: str, cache_root: Path) -> Path:
    return cache_root / hashlib.sha256(uri.encode()).hexdigest()[:16]


def fetch_model_dir(uri: str, cache_root: Path, config: StoreConfig | None = None) -> Path:
    """A local directory holding the files under `uri`: the path itself for a local URI, otherwise a
    copy of every object under the s3 prefix in a cache directory below `cache_root`."""
    scheme, root, _ = split_uri(uri)
    if scheme == "file":
        path = Path(root)
        if not path.is_dir():
            raise ModelFilesError(f"{uri}: not a directory")
        return path
    try:
        store, prefix = open_uri(uri, config)
        prefix = prefix.rstrip("/") + "/" if prefix else ""
        objects = [o for o in store.list(prefix)]
        if not objects:
            raise ModelFilesError(f"{uri}: no objects under this prefix")
        dest = _cache_dir_for(uri, cache_root)
        if dest.exists():  # a stale copy could hold files the model no longer has
            shutil.rmtree(dest)
        for obj in objects:
            rel = obj.key[len(prefix):]
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.part")
            store.get_file(obj.key, tmp)
            os.replace(tmp, target)
        log.info("fetched %d files of %s into %s", len(objects), uri, dest)
        return dest
    except StoreError as exc:
        raise ModelFilesError(f"{uri}: cannot fetch: {exc}") from exc


def verify_digest(uri: str, path: Path, expected: str | None) -> str:
    """The digest of the files fetched from `uri` into `path`; raises if `expected` is given and differs."""
    actual = model_dir_digest(path)
    if expected is not None and actual != expected:
        raise ModelFilesError(f"{uri}: digest mismatch: expected {expected}, found {actual}; refusing to serve")
    return actual
