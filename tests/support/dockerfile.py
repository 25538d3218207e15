"""Dockerfiles read as text (no container engine here): instructions, stages, the final stage's ENV."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OPERATOR = ROOT / "operator" / "Dockerfile"
TRAINER = ROOT / "trainer_image" / "Dockerfile"


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(ln for ln in path.read_text().splitlines() if not ln.lstrip().startswith("#")))
    return [(m.group(1).upper(), m.group(2).strip()) for m in re.finditer(r"^\s*(\w+)\s+(.*)$", text, re.M)]


def final_stage(path: Path) -> list[tuple[str, str]]:
    """The instructions of the last stage (from its FROM on): what the shipped image is made of."""
    found = instructions(path)
    start = max(i for i, (op, _) in enumerate(found) if op == "FROM")
    return found[start:]


def image_env(path: Path) -> dict[str, str]:
    """The environment the final stage's ENV instructions give a container (`KEY=VALUE` form; a `$VAR`
    in a value is left as written)."""
    env: dict[str, str] = {}
    for op, args in final_stage(path):
        if op == "ENV":
            for word in shlex.split(args):
                key, sep, value = word.partition("=")
                assert sep, f"ENV {args}: use the KEY=VALUE form"
                env[key] = value
    return env
