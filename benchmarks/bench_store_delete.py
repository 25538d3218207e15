"""Deleting a large prefix on finalization: the operator's deletion (store checksums from the listing, one
DeleteObjects request per 1000 keys, a JSONL report part per batch) against a reference measured in the
same run, the previous algorithm (download every object to hash it, delete one by one, one report at the
end). Prints wall time and the bytes the store sent to the deleting client (counted by a loopback proxy
between them: object bodies, listings, answers) for both, and the ratios.

    python benchmarks/bench_store_delete.py [--objects 1024] [--total-mb 1024]

Runs against moto_server on loopback (started here), which holds the objects on local disk/memory.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from minio import Minio

from forge_operator.api.common import RetentionPolicy
from forge_operator.store.connection import open_store
from forge_operator.store.deletion import DeletionJournal, DeletionReport, delete_artifacts
from forge_trainer.config import StoreConfig
from forge_trainer.store import ACCESS_KEY_ENV, SECRET_KEY_ENV, ObjectStore, open_uri, write_json_atomic

PREFIX = "forge/bench/forgetrainingrun/big/u1"


class CountingProxy:
    """A loopback TCP proxy to `upstream` that counts the bytes coming back from it."""

    def __init__(self, upstream: str) -> None:
        host, port = upstream.rsplit(":", 1)
        self.upstream = (host, int(port))
        self.received = 0
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"127.0.0.1:{self._server.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            client, _ = self._server.accept()
            server = socket.create_connection(self.upstream)
            threading.Thread(target=self._pipe, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, True), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, count: bool) -> None:
        try:
            while data := src.recv(1 << 16):
                if count:
                    with self._lock:
                        self.received += len(data)
                dst.sendall(data)
        except OSError:
            pass  # either side closed: the other one is shut down below
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


def _moto(tmp: Path) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    exe = shutil.which("moto_server") or str(Path(sys.executable).parent / "moto_server")
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], cwd=tmp,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc, f"127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("moto_server did not start within 30 s")


def _populate(client: Minio, bucket: str, objects: int, size: int) -> None:
    block = os.urandom(size)
    for i in range(objects):
        data = block[i % 251:] + block[:i % 251]  # distinct contents, same size
        client.put_object(bucket, f"{PREFIX}/checkpoints/step-{i:06d}/shard.bin", io.BytesIO(data), len(data))


def reference_delete(store: ObjectStore, prefix: str, audit_key: str) -> int:
    """The previous finalizer: every object downloaded and hashed, deleted one by one, one report at the end."""
    deleted = []
    for obj in list(store.list(prefix + "/")):
        digest = hashlib.sha256()
        with store.open_read(obj.key) as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        store.delete(obj.key)
        deleted.append({"uri": store.uri(obj.key), "size": obj.size, "sha256": "sha256:" + digest.hexdigest()})
    write_json_atomic(store, f"{audit_key}/reference.json", {"deleted": deleted})
    return len(deleted)


def operator_delete(store: ObjectStore, prefix: str, audit_key: str) -> int:
    """The operator's finalizer pass (store/deletion.py)."""
    report = DeletionReport("ForgeTrainingRun", "bench", "big", "u1", "Delete", store.uri(prefix))
    journal = DeletionJournal(store, audit_key, report)
    journal.resume()
    while not delete_artifacts(store, prefix, RetentionPolicy.DELETE, journal, max_batches=50):
        pass
    journal.finish()
    return report.deleted_objects


def _measure(proxy: CountingProxy, fn: Callable[[], int]) -> tuple[int, float, int]:
    before, started = proxy.received, time.perf_counter()
    n = fn()
    return n, time.perf_counter() - started, proxy.received - before


def main() -> None:
    """Populate, delete with both algorithms, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=1024)
    parser.add_argument("--total-mb", type=int, default=1024)
    args = parser.parse_args()
    size = args.total_mb * (1 << 20) // args.objects
    os.environ[ACCESS_KEY_ENV], os.environ[SECRET_KEY_ENV] = "bench", "bench-secret"
    with tempfile.TemporaryDirectory() as tmp:
        proc, endpoint = _moto(Path(tmp))
        try:
            client = Minio(endpoint, access_key="bench", secret_key="bench-secret", secure=False)
            proxy = CountingProxy(endpoint)
            config = StoreConfig(endpoint=proxy.endpoint, secure=False)
            results = {}
            for name in ("reference", "operator"):
                bucket = f"bench-{uuid.uuid4().hex[:8]}"
                client.make_bucket(bucket)
                started = time.perf_counter()
                _populate(client, bucket, args.objects, size)
                print(f"{name}: uploaded {args.objects} objects x {size} bytes in {time.perf_counter() - started:.1f}s",
                      flush=True)
                if name == "reference":
                    store, _ = open_uri(f"s3://{bucket}", config)  # the minio defaults it used
                    results[name] = _measure(proxy, lambda store=store: reference_delete(store, PREFIX, "forge/bench/_audit"))
                else:
                    store, _ = open_store(f"s3://{bucket}", config)
                    results[name] = _measure(proxy, lambda store=store: operator_delete(store, PREFIX, "forge/bench/_audit"))
                assert not list(store.list(PREFIX + "/")), f"{name}: objects left"
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    total = args.objects * size
    print(f"\ndeleting {args.objects} objects, {total / 2**20:.0f} MiB in all")
    print(f"{'':10} {'objects':>8} {'wall s':>8} {'MiB read':>10}")
    for name, (n, seconds, read) in results.items():
        print(f"{name:10} {n:8d} {seconds:8.2f} {read / 2**20:10.3f}")
    ref, op = results["reference"], results["operator"]
    print(f"speed-up {ref[1] / op[1]:.1f}x; bytes read {op[2] / max(ref[2], 1):.4f} of the reference's")


if __name__ == "__main__":
    main()
