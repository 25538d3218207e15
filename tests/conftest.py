"""Fixtures shared by every tier: a real S3 server (moto_server) on loopback."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from forge_trainer.store import ACCESS_KEY_ENV, SECRET_KEY_ENV
from tests.support.ports import free_port
from tests.support.s3 import S3Server


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


TIERS = ("unit", "component", "integration", "e2e", "cluster")
CLUSTER_ENV = "FORGE_TEST_KUBECONFIG"  # the integration tier's cluster
NODE_CLUSTER_ENV = "FORGE_TEST_NODE_KUBECONFIG"  # the cluster tier's: a node runs the Pods
TESTS = Path(__file__).resolve().parent


def tier_of(path: Path) -> str:
    """The tier of a test file: the folder under tests/ it lives in (unit for anything else)."""
    parts = path.resolve().relative_to(TESTS).parts
    return parts[0] if len(parts) > 1 and parts[0] in TIERS else "unit"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Each test gets the marker of its folder's tier; a tier marker that disagrees with the folder is an
    error, so `-m unit` selects exactly tests/unit."""
    for item in items:
        tier = tier_of(item.path)
        marked = {m.name for m in item.iter_markers()} & set(TIERS)
        if marked - {tier}:
            raise pytest.UsageError(f"{item.nodeid}: marked {sorted(marked)} but lives in the {tier} tier's folder")
        item.add_marker(getattr(pytest.mark, tier))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    """With a cluster given (FORGE_TEST_KUBECONFIG for the integration tier, FORGE_TEST_NODE_KUBECONFIG
    for the cluster tier), a test of that tier that skips fails instead: the tier must not go quietly
    green without having run."""
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if not report.skipped or hasattr(report, "wasxfail"):
        return
    for tier, env in (("integration", CLUSTER_ENV), ("cluster", NODE_CLUSTER_ENV)):
        if os.environ.get(env) and item.get_closest_marker(tier):
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
            report.outcome = "failed"
            report.longrepr = f"{tier} test skipped although {env} is set: {reason}"


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
