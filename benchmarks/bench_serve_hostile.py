"""Time and memory of `forge-trainer serve` under the attacks of issue 14 section 2, after the fix.

    python benchmarks/bench_serve_hostile.py

Starts the server in its own process on a tiny random model (8192-token context) and replays each
attack once, printing its answer, its wall time as a ratio of an ordinary 16-token completion measured
in the same run, and the growth of the server's peak RSS (VmHWM, reset before each attack where the
kernel allows it). Before the fix (issue 14): a 20 MB prompt took 49.7 s and grew the server from
575 MB to 5.5 GB; `[` x 200000 and seed 2**70 were 500s; temperature 1e-45 failed every concurrent
request; a client that left kept 4 sequences generating; nothing bounded the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.ports import free_port  # noqa: E402
from tests.support.serve import build_tiny_model  # noqa: E402

MODEL = "tiny"
FORGE_TRAINER = str(Path(sys.executable).parent / "forge-trainer")


class Server:
    """`forge-trainer serve` in a process of its own, and its memory as the kernel reports it."""

    def __init__(self, model_dir: Path, *extra: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([FORGE_TRAINER, "serve", "--model", str(model_dir), "--model-name", MODEL,
                                      "--host", "127.0.0.1", "--port", str(self.port), "--device", "cpu", *extra],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError("the server did not get ready")

    def _status_mb(self, field: str) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
        return 0.0

    def reset_peak(self) -> float:
        """Reset the peak RSS to the current one (if allowed); returns the current RSS in MB."""
        with contextlib.suppress(OSError):  # not every kernel lets a process reset another's peak
            Path(f"/proc/{self.proc.pid}/clear_refs").write_text("5")
        return self._status_mb("VmRSS")

    def peak(self) -> float:
        """The peak RSS in MB since the last reset."""
        return self._status_mb("VmHWM")

    def held(self) -> float:
        """Sequences running or waiting in the engine."""
        total = 0.0
        for line in httpx.get(self.url + "/metrics").text.splitlines():
            if line.startswith(("forge_serve_running_sequences ", "forge_serve_waiting_requests ")):
                total += float(line.split()[-1])
        return total

    def stop(self) -> None:
        """End the server."""
        self.proc.terminate()
        self.proc.wait(timeout=30)


def post(url: str, body: bytes | dict[str, object], timeout: float = 120) -> httpx.Response:
    """POST a completions body (raw bytes or JSON)."""
    if isinstance(body, bytes):
        return httpx.post(url + "/v1/completions", content=body, headers={"content-type": "application/json"},
                          timeout=timeout)
    return httpx.post(url + "/v1/completions", json=body, timeout=timeout)


def measure(server: Server, reference_s: float, name: str, attack: Callable[[], str]) -> None:
    """Run one attack and print what it got, its time against the reference, and the RSS growth."""
    before = server.reset_peak()
    started = time.monotonic()
    outcome = attack()
    took = time.monotonic() - started
    print(f"{name:<44} {outcome:<34} {took:7.2f} s {took / reference_s:7.1f}x  "
          f"RSS {before:5.0f} -> peak {server.peak():5.0f} MB")


def main() -> None:
    """Build the model, start the server, replay the attacks."""
    with tempfile.TemporaryDirectory(prefix="forge-bench-hostile-") as tmp:
        model_dir = build_tiny_model(Path(tmp) / "model", max_positions=8192)
        server = Server(model_dir, "--max-batch-size", "8", "--max-waiting", "8")
        url = server.url
        try:
            normal = {"model": MODEL, "prompt": "Hello world", "max_tokens": 16, "temperature": 0}
            post(url, normal)  # warm-up
            started = time.monotonic()
            for _ in range(5):
                assert post(url, normal).status_code == 200
            reference = (time.monotonic() - started) / 5
            print(f"reference: a 16-token completion takes {reference * 1000:.0f} ms; "
                  f"server RSS {server.reset_peak():.0f} MB\n")

            huge = b'{"model": "tiny", "prompt": "' + b"word " * 4_000_000 + b'"}'
            measure(server, reference, "20 MB prompt (Content-Length)",
                    lambda: str(post(url, huge).status_code))
            measure(server, reference, "20 MB prompt (chunked)", lambda: str(httpx.post(
                url + "/v1/completions", content=(huge[i:i + 65536] for i in range(0, len(huge), 65536)),
                timeout=120).status_code))
            big = b'{"model": "tiny", "prompt": "' + b"word " * 700_000 + b'"}'
            measure(server, reference, "3.5 MB prompt (under the body limit)",
                    lambda: f"{(r := post(url, big)).status_code} {r.json()['error']['code']}")
            measure(server, reference, "'[' x 200000", lambda: str(post(url, b"[" * 200_000).status_code))
            measure(server, reference, "seed 2**70",
                    lambda: str(post(url, {**normal, "seed": 2**70}).status_code))
            measure(server, reference, "temperature 1e-45 among 7 ordinary requests", lambda: concurrent(url, normal))
            measure(server, reference, "n=4 x 8000 tokens, client leaves after 1 s", lambda: leave(server, normal))
            measure(server, reference, "64 concurrent requests (batch 8, queue 8)", lambda: flood(url, normal))
        finally:
            server.stop()


def concurrent(url: str, normal: dict[str, object]) -> str:
    """One request with temperature 1e-45 sent with seven ordinary ones; returns their status codes."""
    async def run() -> list[int]:
        async with httpx.AsyncClient(timeout=120) as client:
            bodies = [{**normal, "temperature": 1e-45}] + [{**normal, "temperature": 0.8, "seed": i} for i in range(7)]
            answers = await asyncio.gather(*(client.post(url + "/v1/completions", json=b) for b in bodies))
        return [a.status_code for a in answers]

    codes = asyncio.run(run())
    return f"{codes[0]}, others {sorted(set(codes[1:]))}"


def leave(server: Server, normal: dict[str, object]) -> str:
    """A non-streaming request for 4 x 8000 tokens whose client gives up after 1 s; returns how long the
    engine took to drop its sequences."""
    body = {**normal, "max_tokens": 8000, "n": 4, "temperature": 0.7}
    try:
        answer = httpx.post(server.url + "/v1/completions", json=body, timeout=httpx.Timeout(60, read=1.0))
        return f"answered {answer.status_code} within 1 s?"
    except httpx.ReadTimeout:
        pass
    left = time.monotonic()
    while server.held() and time.monotonic() - left < 60:
        time.sleep(0.01)
    return f"idle {time.monotonic() - left:.2f} s after leaving"


def flood(url: str, normal: dict[str, object]) -> str:
    """64 requests at once; returns how many got each status."""
    async def run() -> list[int]:
        async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=64)) as client:
            answers = await asyncio.gather(*(client.post(url + "/v1/completions", json={**normal, "max_tokens": 64})
                                             for _ in range(64)))
        return [a.status_code for a in answers]

    codes = asyncio.run(run())
    return ", ".join(f"{codes.count(c)}x {c}" for c in sorted(set(codes)))


if __name__ == "__main__":
    os.environ.setdefault("FORGE_LOG_LEVEL", "WARNING")
    main()
