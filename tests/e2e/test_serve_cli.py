"""`forge-trainer serve` as the ForgeDeployment pod runs it: a model in S3, a digest, the openai client."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from forge_trainer.serve.model_files import model_dir_digest
from forge_trainer.store import open_uri
from tests.support.ports import free_port
from tests.support.s3 import S3Server
from tests.support.serve import shared_tiny_model

FORGE_TRAINER = str(Path(sys.executable).parent / "forge-trainer")


pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_cli_passes_serve_options_to_the_server() -> None:
    proc = subprocess.run([FORGE_TRAINER, "serve", "--model", "/nonexistent/model", "--model-name", "m"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "unrecognized arguments" not in proc.stderr and "/nonexistent/model" in proc.stderr


@pytest.fixture
def model_uri(s3: S3Server) -> str:
    store, _ = open_uri(s3.uri(), s3.config)
    local = shared_tiny_model()
    for f in sorted(local.rglob("*")):
        if f.is_file():
            store.put_file(f"forge/team-a/forgetrainingrun/chat/uid1/final/{f.relative_to(local).as_posix()}", f)
    return s3.uri("forge/team-a/forgetrainingrun/chat/uid1/final")


def serve(s3: S3Server, model_uri: str, digest: str, port: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [FORGE_TRAINER, "serve", "--model", model_uri, "--model-name", "chat", "--model-digest", digest,
         "--store-endpoint", s3.endpoint, "--store-insecure", "--host", "127.0.0.1", "--port", str(port),
         "--max-batch-size", "4"],
        env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_ready(proc: subprocess.Popen[str], url: str) -> None:
    """Return once the server at `url` is ready; fails with its stderr if it exits first."""
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, "server not ready within 60 s"
        try:
            if httpx.get(url + "/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)


@pytest.fixture
def server(s3: S3Server, model_uri: str) -> Iterator[str]:
    port = free_port()
    proc = serve(s3, model_uri, model_dir_digest(shared_tiny_model()), port)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, url)
        yield url
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM)  # uvicorn re-raises SIGTERM once shut down
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serves_the_model_from_s3_to_the_openai_client(server: str) -> None:
    client = openai.OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0)
    assert [m.id for m in client.models.list().data] == ["chat"]
    out = client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "Hello"}],
                                         max_tokens=8, temperature=0)
    streamed = client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "Hello"}],
                                              max_tokens=8, temperature=0, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == out.choices[0].message.content
    assert out.usage is not None and 1 <= out.usage.completion_tokens <= 8
    assert 'forge_serve_requests_total{endpoint="/v1/chat/completions",status="200"} 2.0' in \
        httpx.get(server + "/metrics").text


def test_refuses_to_start_when_the_digest_differs(s3: S3Server, model_uri: str) -> None:
    proc = serve(s3, model_uri, "sha256:" + "1" * 64, free_port())
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 1
    last = stderr.strip().splitlines()[-1]
    assert last.startswith(f"forge-trainer serve: {model_uri}: digest mismatch: expected sha256:111")


def test_a_pod_fetches_in_its_init_container_and_serves_without_store_keys(s3: S3Server, model_uri: str,
                                                                          tmp_path: Path) -> None:
    """What the ForgeDeployment pod runs: `forge-trainer fetch` (the init container, the only one with the
    store keys, here against a plain-HTTP store) and then the server on the local copy, with an API key."""
    digest = model_dir_digest(shared_tiny_model())
    fetched = subprocess.run([FORGE_TRAINER, "fetch", "--uri", model_uri, "--dest", str(tmp_path / "model"),
                              "--digest", digest, "--store-endpoint", s3.endpoint, "--store-insecure"],
                             env=dict(os.environ), capture_output=True, text=True, timeout=120)
    assert fetched.returncode == 0, fetched.stderr
    env = {k: v for k, v in os.environ.items() if not k.startswith("FORGE_S3_")}
    port = free_port()
    proc = subprocess.Popen([FORGE_TRAINER, "serve", "--model", str(tmp_path / "model"), "--model-name", "chat",
                             "--model-digest", digest, "--host", "127.0.0.1", "--port", str(port)],
                            env={**env, "FORGE_API_KEY": "sk-pod"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, url)
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0).models.list()
        client = openai.OpenAI(base_url=url + "/v1", api_key="sk-pod", max_retries=0)
        out = client.completions.create(model="chat", prompt="Hello", max_tokens=3, temperature=0)
        assert out.usage is not None and out.usage.completion_tokens >= 1
        assert b"FORGE_S3_" not in Path(f"/proc/{proc.pid}/environ").read_bytes()
    finally:
        proc.kill()
        proc.wait()
