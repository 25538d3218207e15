"""Object store access: MinIO/S3 through the `minio` client, or a local directory, behind one small
interface. Every write is atomic: an S3 PUT appears whole or not at all, and a local write goes to a
temporary file that is renamed into place.

URIs: `s3://bucket/key/...` for S3, `file:///abs/path` or a plain path for a local directory.
Credentials come only from the environment (FORGE_S3_ACCESS_KEY, FORGE_S3_SECRET_KEY, filled from a
Kubernetes Secret), never from config files.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol
from urllib.parse import unquote, urlparse

from forge_trainer.config import StoreConfig

ACCESS_KEY_ENV = "FORGE_S3_ACCESS_KEY"
SECRET_KEY_ENV = "FORGE_S3_SECRET_KEY"
ENDPOINT_ENV = "FORGE_S3_ENDPOINT"


class StoreError(Exception):
    """An object store operation failed; the message names the URI."""


@dataclass(frozen=True)
class ObjectInfo:
    """One object found by `list`."""

    key: str
    size: int
    etag: str | None = None
    """The store's checksum of the object when it gives one (S3 ETag: the MD5 of a single-part upload)."""


class ObjectStore(Protocol):
    """The operations every store offers; keys are relative to the store's root (a bucket or dir)."""

    def uri(self, key: str) -> str: ...
    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None: ...
    def put_file(self, key: str, path: Path) -> None: ...
    def get_bytes(self, key: str) -> bytes: ...
    def get_file(self, key: str, path: Path) -> None: ...
    def open_read(self, key: str, offset: int = 0,
                  length: int | None = None) -> contextlib.AbstractContextManager[IO[bytes]]: ...
    def list(self, prefix: str) -> Iterator[ObjectInfo]: ...
    def exists(self, key: str) -> bool: ...
    def delete(self, key: str) -> None: ...


def _clean_key(key: str) -> str:
    key = key.lstrip("/")
    if any(part == ".." for part in key.split("/")):
        raise StoreError(f"object key {key!r} must not contain '..'")
    return key


def _check_range(uri: str, offset: int, length: int | None) -> None:
    if offset < 0 or (length is not None and length < 0):
        raise StoreError(f"{uri}: invalid byte range (offset {offset}, length {length})")


class _FileWindow(io.RawIOBase):
    """At most `left` bytes of an open file, from where it stands: a ranged read of a local object."""

    def __init__(self, fh: IO[bytes], left: int) -> None:
        super().__init__()
        self.fh, self.left = fh, left

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.left <= 0:
            return 0
        view = memoryview(buffer).cast("B")
        data = self.fh.read(min(len(view), self.left))
        view[:len(data)] = data
        self.left -= len(data)
        return len(data)

    def close(self) -> None:
        self.fh.close()
        super().close()


def _temp_file(directory: Path, name: str) -> tuple[int, str]:
    """A temporary file next to `name` in `directory`, made first (a delete of the directory's last object
    may remove it meanwhile, so a vanished directory is made once more)."""
    directory.mkdir(parents=True, exist_ok=True)
    try:
        return tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".tmp")
    except FileNotFoundError:
        directory.mkdir(parents=True, exist_ok=True)
        return tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".tmp")


class LocalStore:
    """A directory on this machine used as an object store."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def _path(self, key: str) -> Path:
        return self.root / _clean_key(key)

    def uri(self, key: str) -> str:
        return self._path(key).as_uri()

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        path = self._path(key)
        fd, tmp = _temp_file(path.parent, path.name)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def put_file(self, key: str, path: Path) -> None:
        dest = self._path(key)
        fd, tmp = _temp_file(dest.parent, dest.name)
        os.close(fd)
        try:
            shutil.copyfile(path, tmp)
            os.replace(tmp, dest)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError as exc:
            raise StoreError(f"{self.uri(key)} does not exist") from exc

    def get_file(self, key: str, path: Path) -> None:
        try:
            shutil.copyfile(self._path(key), path)
        except FileNotFoundError as exc:
            raise StoreError(f"{self.uri(key)} does not exist") from exc

    @contextlib.contextmanager
    def open_read(self, key: str, offset: int = 0, length: int | None = None) -> Iterator[IO[bytes]]:
        """The object's bytes from `offset`, `length` of them at most (None: to its end)."""
        _check_range(self.uri(key), offset, length)
        try:
            fh: IO[bytes] = self._path(key).open("rb")
        except FileNotFoundError as exc:
            raise StoreError(f"{self.uri(key)} does not exist") from exc
        fh.seek(offset)
        if length is not None:
            fh = io.BufferedReader(_FileWindow(fh, length))
        with fh:
            yield fh

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        base = self._path(prefix) if prefix else self.root
        # a prefix names a directory or a file-name prefix inside one, as in S3
        start = base if base.is_dir() else base.parent
        if not start.exists():
            return
        for dirpath, dirnames, filenames in os.walk(start):
            dirnames.sort()
            for name in sorted(filenames):
                if name.startswith(".") and name.endswith(".tmp"):
                    continue
                full = Path(dirpath) / name
                key = full.relative_to(self.root).as_posix()
                if key.startswith(_clean_key(prefix)):
                    yield ObjectInfo(key=key, size=full.stat().st_size)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        """Delete the object, and the directories it leaves empty up to the root (S3 has no directories,
        so none should outlive what was in them)."""
        path = self._path(key)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        parent = path.parent
        while parent != self.root and parent.is_relative_to(self.root):
            try:
                parent.rmdir()
            except OSError:  # not empty (or already gone, or not ours to remove): stop here
                break
            parent = parent.parent


class S3Store:
    """A bucket of an S3-compatible object store (MinIO, AWS S3, ...), through the minio client."""

    def __init__(self, bucket: str, config: StoreConfig, access_key: str, secret_key: str,
                 http_client: Any = None) -> None:
        """`http_client`: a urllib3 PoolManager (timeouts, retries); None keeps the minio defaults."""
        from minio import Minio  # imported here so pure users of this module need no minio

        if not config.endpoint:
            raise StoreError(f"s3://{bucket}: no S3 endpoint configured (store.endpoint or {ENDPOINT_ENV})")
        self.bucket = bucket
        self.client = Minio(config.endpoint, access_key=access_key, secret_key=secret_key,
                            secure=config.secure, region=config.region, http_client=http_client)

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{_clean_key(key)}"

    def _wrap(self, key: str, exc: Exception) -> StoreError:
        code = getattr(exc, "code", None)
        if code in ("NoSuchKey", "NoSuchBucket"):
            return StoreError(f"{self.uri(key)} does not exist")
        return StoreError(f"{self.uri(key)}: {type(exc).__name__}: {exc}")

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        try:
            self.client.put_object(self.bucket, _clean_key(key), io.BytesIO(data), len(data),
                                   content_type=content_type)
        except Exception as exc:
            raise self._wrap(key, exc) from exc

    def put_file(self, key: str, path: Path) -> None:
        try:
            self.client.fput_object(self.bucket, _clean_key(key), str(path))
        except Exception as exc:
            raise self._wrap(key, exc) from exc

    def get_bytes(self, key: str) -> bytes:
        with self.open_read(key) as fh:
            return fh.read()

    def get_file(self, key: str, path: Path) -> None:
        try:
            self.client.fget_object(self.bucket, _clean_key(key), str(path))
        except Exception as exc:
            raise self._wrap(key, exc) from exc

    @contextlib.contextmanager
    def open_read(self, key: str, offset: int = 0, length: int | None = None) -> Iterator[IO[bytes]]:
        """The object's bytes from `offset`, `length` of them at most (None: to its end): one ranged GET."""
        _check_range(self.uri(key), offset, length)
        if length == 0:  # minio reads length 0 as "to the end"
            yield io.BytesIO(b"")
            return
        try:
            response = self.client.get_object(self.bucket, _clean_key(key), offset=offset, length=length or 0)
        except Exception as exc:
            if getattr(exc, "code", None) == "InvalidRange":  # from at or past the end: nothing, as from a file
                yield io.BytesIO(b"")
                return
            raise self._wrap(key, exc) from exc
        try:
            yield response  # a urllib3 response is a readable binary stream
        finally:
            response.close()
            response.release_conn()

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        try:
            for obj in self.client.list_objects(self.bucket, prefix=_clean_key(prefix), recursive=True):
                if obj.object_name is not None and not obj.is_dir:
                    yield ObjectInfo(key=obj.object_name, size=obj.size or 0, etag=obj.etag or None)
        except Exception as exc:
            raise self._wrap(prefix, exc) from exc

    def exists(self, key: str) -> bool:
        try:
            self.client.stat_object(self.bucket, _clean_key(key))
            return True
        except Exception as exc:
            if getattr(exc, "code", None) in ("NoSuchKey", "NoSuchBucket", "NoSuchObject"):
                return False
            raise self._wrap(key, exc) from exc

    def delete(self, key: str) -> None:
        try:
            self.client.remove_object(self.bucket, _clean_key(key))
        except Exception as exc:
            raise self._wrap(key, exc) from exc


def split_uri(uri: str) -> tuple[str, str, str]:
    """`uri` as (scheme, root, key): ("s3", bucket, key) or ("file", directory, "")."""
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise StoreError(f"{uri!r}: an s3 URI needs a bucket (s3://bucket/prefix)")
        return "s3", parsed.netloc, parsed.path.lstrip("/")
    if parsed.scheme == "file":  # percent-encoded (RFC 8089), as Path.as_uri() writes it: "+" is "%2B"
        return "file", unquote(parsed.path), ""
    if parsed.scheme == "":
        return "file", uri, ""
    raise StoreError(f"{uri!r}: unsupported URI scheme {parsed.scheme!r} (use s3:// or a local path)")


def open_uri(uri: str, config: StoreConfig | None = None, http_client: Any = None) -> tuple[ObjectStore, str]:
    """The store that holds `uri`, and the key of `uri` inside it.

    For a local path the store's root is the path itself and the key is empty. `http_client` (a urllib3
    PoolManager) sets an S3 store's timeouts and retries."""
    scheme, root, key = split_uri(uri)
    if scheme == "file":
        return LocalStore(Path(root)), key
    cfg = config or StoreConfig()
    if not cfg.endpoint and os.environ.get(ENDPOINT_ENV):
        cfg = cfg.model_copy(update={"endpoint": os.environ[ENDPOINT_ENV]})
    access = os.environ.get(ACCESS_KEY_ENV, "")
    secret = os.environ.get(SECRET_KEY_ENV, "")
    return S3Store(root, cfg, access, secret, http_client), key


def join_key(*parts: str) -> str:
    """Join key parts with single slashes."""
    return "/".join(p.strip("/") for p in parts if p.strip("/"))


def write_json_atomic(store: ObjectStore, key: str, obj: Any) -> None:
    """Write `obj` as JSON to `key` in one atomic put."""
    data = json.dumps(obj, indent=2, sort_keys=True).encode()
    store.put_bytes(key, data, content_type="application/json")


def read_json(store: ObjectStore, key: str) -> Any:
    """Read and parse the JSON at `key`; a parse error names the URI."""
    raw = store.get_bytes(key)
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise StoreError(f"{store.uri(key)}: not valid JSON ({exc})") from exc


def append_jsonl(store: ObjectStore, key: str, records: list[dict[str, Any]]) -> None:
    """Append records to a JSONL log. A log has one writer; the whole object is rewritten atomically,
    so a reader never sees a torn line."""
    existing = store.get_bytes(key) if store.exists(key) else b""
    lines = b"".join(json.dumps(r, sort_keys=True).encode() + b"\n" for r in records)
    store.put_bytes(key, existing + lines, content_type="application/x-ndjson")


def sha256_bytes(data: bytes) -> str:
    """`sha256:<hex>` of data."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    """`sha256:<hex>` of a file, streamed."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()
