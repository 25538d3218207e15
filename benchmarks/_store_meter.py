"""Run `forge-trainer` with every call to the local object store counted, for `bench_data_scale.py`:

    python benchmarks/_store_meter.py REPORT.json DATASET_DIR -- prepare --config FILE [--stage ...]

`LocalStore` (the store behind a local path, for the source as for the dataset's prefix) is wrapped before
the CLI is imported, so every put, get, ranged read, listing, existence check and delete the workload makes
is counted with its bytes, by area: `source` (anything outside DATASET_DIR), `work` (the `_work/` area of
a split preparation, but its progress files), `progress` (progress.json and audit.jsonl, the dataset's and
each worker's) and `output` (the rest: shards, tokenizer, manifest). A ranged read counts the bytes the
workload took from it (what an S3 GET of the whole range would move, but for a read abandoned early).
The CLI's exit status is this process's; REPORT.json gets {area: {op: [calls, bytes]}}."""

from __future__ import annotations

import contextlib
import io
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "trainer_image"))

from forge_trainer.store import LocalStore

Counts = dict[str, dict[str, list[int]]]


class _Counting(io.RawIOBase):
    """The bytes read through a file object, counted."""

    def __init__(self, fh: IO[bytes]) -> None:
        self.fh, self.count = fh, 0

    def readable(self) -> bool:
        """Always: it is a reader."""
        return True

    def readinto(self, buffer: Any) -> int:
        """Read into `buffer` from the wrapped file, counting what came."""
        n = self.fh.readinto(buffer)  # type: ignore[attr-defined]
        self.count += n or 0
        return n  # type: ignore[no-any-return]


def install(dataset_dir: Path) -> Counts:
    """Wrap LocalStore's methods so that each call is counted in the returned (live) table."""
    counts: Counts = {}
    dataset_dir = dataset_dir.resolve()

    def area(store: LocalStore, key: str) -> str:
        path = store.root / key.strip("/")
        if not path.is_relative_to(dataset_dir):
            return "source"
        rel = path.relative_to(dataset_dir).as_posix() + "/"
        if rel.startswith("_work/progress/") or rel.rstrip("/").rsplit("/", 1)[-1] in (
                "progress.json", "audit.jsonl", "audit-before.jsonl"):
            return "progress"
        return "work" if rel.startswith("_work/") else "output"

    def add(store: LocalStore, key: str, op: str, size: int = 0) -> None:
        entry = counts.setdefault(area(store, key), {}).setdefault(op, [0, 0])
        entry[0] += 1
        entry[1] += size

    orig = {name: getattr(LocalStore, name) for name in
            ("put_bytes", "put_file", "get_bytes", "get_file", "open_read", "list", "exists", "delete")}

    def put_bytes(self: LocalStore, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        orig["put_bytes"](self, key, data, content_type)
        add(self, key, "put", len(data))

    def put_file(self: LocalStore, key: str, path: Path) -> None:
        orig["put_file"](self, key, path)
        add(self, key, "put", Path(path).stat().st_size)

    def get_bytes(self: LocalStore, key: str) -> bytes:
        data: bytes = orig["get_bytes"](self, key)
        add(self, key, "get", len(data))
        return data

    def get_file(self: LocalStore, key: str, path: Path) -> None:
        orig["get_file"](self, key, path)
        add(self, key, "get", Path(path).stat().st_size)

    @contextlib.contextmanager
    def open_read(self: LocalStore, key: str, offset: int = 0, length: int | None = None) -> Iterator[IO[bytes]]:
        with orig["open_read"](self, key, offset, length) as fh:
            counter = _Counting(fh)
            try:
                yield io.BufferedReader(counter, buffer_size=1 << 20)
            finally:
                add(self, key, "get", counter.count)

    def listing(self: LocalStore, prefix: str) -> Iterator[Any]:
        add(self, prefix, "list")
        yield from orig["list"](self, prefix)

    def exists(self: LocalStore, key: str) -> bool:
        add(self, key, "head")
        return bool(orig["exists"](self, key))

    def delete(self: LocalStore, key: str) -> None:
        add(self, key, "delete")
        orig["delete"](self, key)

    for name, fn in (("put_bytes", put_bytes), ("put_file", put_file), ("get_bytes", get_bytes),
                     ("get_file", get_file), ("open_read", open_read), ("list", listing), ("exists", exists),
                     ("delete", delete)):
        setattr(LocalStore, name, fn)
    return counts


def main(argv: list[str]) -> int:
    """Run the CLI on the arguments after `--` with the store counted; write the counts to REPORT."""
    if len(argv) < 3 or argv[2] != "--":
        raise SystemExit("usage: _store_meter.py REPORT.json DATASET_DIR -- FORGE_TRAINER_ARGS...")
    report, dataset_dir, cli_args = Path(argv[0]), Path(argv[1]), argv[3:]
    counts = install(dataset_dir)
    from forge_trainer.cli import main as cli_main

    try:
        code = cli_main(cli_args)
    finally:
        report.write_text(json.dumps(counts))
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
