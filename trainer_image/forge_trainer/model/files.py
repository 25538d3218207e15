"""A model directory's digest: the value the operator records (`finalModelDigest`) and the server
checks (`--model-digest`), and the error for model files that are missing or not the ones expected.

    sha256 over the lines "<relative path> sha256:<hex of the file>\\n", sorted by relative path,

over every regular file under the directory (relative paths use "/"; each file's digest is
`forge_trainer.store.sha256_file`), written `sha256:<hex>`. `model_dir_digest` is the one definition:
the exports (`hf_export`, post-training) and the server's fetch (`serve.model_files`) all call it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from forge_trainer.store import sha256_file


class ModelFilesError(Exception):
    """The model's files could not be fetched or are not the ones expected; the message names the URI."""


def model_dir_digest(path: Path) -> str:
    """`sha256:<hex>` digest of a model directory (see the module docstring for the definition)."""
    files = sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file())
    if not files:
        raise ModelFilesError(f"{path}: no files to digest")
    h = hashlib.sha256()
    for rel in files:
        h.update(f"{rel} {sha256_file(path / rel)}\n".encode())
    return "sha256:" + h.hexdigest()
