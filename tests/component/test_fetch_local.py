"""`forge-trainer fetch` from a local directory copies the model: the source a user pointed at stays."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

FORGE_TRAINER = [sys.executable, "-m", "forge_trainer.cli"]


def test_fetch_of_a_local_model_directory_copies_it_and_leaves_the_source(tmp_path: Path) -> None:
    source = tmp_path / "exported"
    (source / "nested").mkdir(parents=True)
    (source / "config.json").write_text('{"model_type": "llama"}')
    (source / "nested" / "weights.bin").write_bytes(b"\x00\x01" * 1000)
    dest = tmp_path / "models" / "model"
    dest.parent.mkdir()
    done = subprocess.run([*FORGE_TRAINER, "fetch", "--uri", str(source), "--dest", str(dest)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (source / "config.json").read_text() == '{"model_type": "llama"}', "the source must not be moved"
    assert (dest / "nested" / "weights.bin").read_bytes() == b"\x00\x01" * 1000
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*")) == \
        ["config.json", "nested", "nested/weights.bin"]
