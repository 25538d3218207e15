"""A model directory's digest: the value the operator records (`finalModelDigest`) and the server
checks (`--model-digest`), and the error for model files that are missing or not the ones expected.

    sha256 over the lines "<relative path> sha256:<hex of the file>\\n", sorted by relative path,

over every regular file under the directory (relative paths use "/"; each file's digest is
`forge_trainer.store.sha256_file`), written `sha256:<hex>`. `model_dir_digest` is the one definition:
the exports (`hf_export`, post-training) and the server's fetch (`serve.model_files`) all call it, and
the trainer records a base model's (`baseModelDigest`) over the files it reads of the base (`names`),
so a Forge export's digest is the same whichever side computes it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

from forge_trainer.store import sha256_file


class ModelFilesError(Exception):
    """The model's files could not be fetched or are not the ones expected; the message names the URI."""


def model_dir_digest(path: Path, names: Iterable[str] | None = None) -> str:
    """`sha256:<hex>` digest of a model directory (see the module docstring for the definition), over
    the files `names` (relative paths) when given, else over every file under it."""
    if names is None:
        files = sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file())
    else:
        files = sorted(set(names))
    if not files:
        raise ModelFilesError(f"{path}: no files to digest")
    h = hashlib.sha256()
    for rel in files:
        h.update(f"{rel} {sha256_file(path / rel)}\n".encode())
    return "sha256:" + h.hexdigest()
