"""Fixtures shared by every tier: a real S3 server (moto_server) on loopback."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from forge_trainer.config import StoreConfig
from forge_trainer.store import ACCESS_KEY_ENV, SECRET_KEY_ENV


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class S3Server:
    """A running moto_server and a fresh bucket in it."""

    endpoint: str
    bucket: str

    @property
    def config(self) -> StoreConfig:
        return StoreConfig(endpoint=self.endpoint, secure=False)

    def uri(self, key: str = "") -> str:
        return f"s3://{self.bucket}/{key}".rstrip("/")


@pytest.fixture(scope="session")
def _moto_endpoint() -> Iterator[str]:
    port = free_port()
    exe = shutil.which("moto_server") or str(Path(sys.executable).parent / "moto_server")
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.1)
    else:
        proc.kill()
        pytest.fail("moto_server did not start within 30 s")
    yield f"127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def s3(_moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """A real S3 API on loopback with an empty bucket; credentials set in the environment as a pod
    gets them from its Secret."""
    from minio import Minio

    monkeypatch.setenv(ACCESS_KEY_ENV, "forge-test")
    monkeypatch.setenv(SECRET_KEY_ENV, "forge-test-secret")
    bucket = f"forge-{uuid.uuid4().hex[:12]}"
    Minio(_moto_endpoint, access_key="forge-test", secret_key="forge-test-secret",
          secure=False).make_bucket(bucket)
    return S3Server(endpoint=_moto_endpoint, bucket=bucket)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests with no tier marker are unit tests."""
    tiers = {"integration", "e2e"}
    for item in items:
        if not tiers & {m.name for m in item.iter_markers()}:
            item.add_marker(pytest.mark.unit)


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
