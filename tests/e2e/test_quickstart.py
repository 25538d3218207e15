"""The quickstart end to end: `forge run examples/quickstart/` prepares the data, pretrains, tunes,
reinforces and serves on this machine; the deployment answers the README's question through the openai
client; Ctrl-C ends everything; the same command again reuses what is done instead of recomputing.

The model must really learn: on the held-out questions (pairs of digits no chat and no training task
asks about), the rl model's greedy pass rate beats its sft start by RL_GAIN and clears the deployment's
eval gate (0.5), which the sft model alone fails. The held-out pairs are those whose numbers differ by 3
or 5 (make_data.py says why). Calibration on the 2-core CPU machine (CPU runs are deterministic: the same
seeds give the same figures), 24 held-out tasks, sft model 0.29 (7/24), rl (400 steps) seeds 11 (the
quickstart's) to 19: 0.62, 0.71, 0.75, 0.75, 0.67, 1.00, 1.00, 0.92, 0.67 (mean 0.79, every one +0.33 or
more), so RL_GAIN and the gate hold for any of them with a margin of at least 0.12. With the base pretrained
80 steps instead of 400 the same settings gave 0.83, 0.67, 0.67, 0.50, 0.33, 0.58 on seeds 11-16 (a failing
seed answered a favourite digit to pairs without it); the sweep that found the settings is in
docs/quickstart.md."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from forge_trainer.store import sha256_bytes
from tests.support.processes import default_sigint

pytestmark = pytest.mark.e2e

QUICKSTART = Path(__file__).resolve().parents[2] / "examples" / "quickstart"
FORGE = [sys.executable, "-m", "forge_operator.cli"]
SERVING = re.compile(r"is serving at (http://\S+) \(model \"([^\"]+)\"\)")
README_QUESTION, README_ANSWER = "Which is larger, 3 or 8?", "8"
RL_GAIN = 0.2
"""Least rise of the held-out greedy pass rate from the sft model to the rl model."""


def _start(cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([*FORGE, "run", "quickstart/", "--port", "0", "--plain"], cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            preexec_fn=default_sigint)  # _stop sends Ctrl-C


def _wait_serving(proc: subprocess.Popen[str], timeout: float) -> tuple[str, str, list[str]]:
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    for line in proc.stdout:
        lines.append(line.rstrip())
        found = SERVING.search(line)
        if found:
            return found.group(1), found.group(2), lines
        assert time.monotonic() < deadline, "\n".join(lines[-40:])
    raise AssertionError(f"forge run exited ({proc.wait()}) before serving:\n" + "\n".join(lines[-40:]))


def _stop(proc: subprocess.Popen[str]) -> tuple[int, str]:
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    return proc.returncode, out


def _status(root: Path, kind: str, name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((root / ".forge" / "default" / kind / name / "status.json").read_text())
    return data


def _steps(root: Path, run: str) -> list[dict[str, Any]]:
    logs = root / ".forge" / "default" / "forgetrainingrun" / run / "artifacts" / "logs"
    return [json.loads(line) for p in sorted(logs.glob("steps-*.jsonl")) for line in p.read_text().splitlines()]


def _chat(url: str, model: str) -> str:
    from openai import OpenAI

    client = OpenAI(base_url=url, api_key="unused", timeout=60)
    reply = client.chat.completions.create(model=model, max_tokens=4, temperature=0,
                                           messages=[{"role": "user", "content": README_QUESTION}])
    return reply.choices[0].message.content or ""


def _prompts(path: Path) -> set[str]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return {r["prompt"] if "prompt" in r else r["messages"][0]["content"] for r in rows}


def _port_open(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url.removesuffix("/v1") + "/healthz", timeout=2):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("quickstart")
    shutil.copytree(QUICKSTART, root / "quickstart")
    yield root


@pytest.mark.timeout(1500)  # about 5 minutes on 2 idle cores; several times that on a shared, loaded machine
def test_quickstart_runs_every_stage_and_serves_a_chat_answer(workdir: Path) -> None:
    proc = _start(workdir)
    try:
        url, model, lines = _wait_serving(proc, timeout=1400)
        answer = _chat(url, model)
    finally:
        code, rest = _stop(proc)
    assert answer.strip() == README_ANSWER, answer
    shown = "\n".join(lines)  # forge run's curve of the rl run, and its held-out pass rate before and after
    assert re.search(r"reward \(sampled\)\s+[▁▂▃▄▅▆▇█]+\s+\d\.\d\d -> \d\.\d\d over \d+ steps", shown), shown
    assert re.search(r"pass rate \(greedy, 24 eval tasks\): \d\.\d\d before -> \d\.\d\d after", shown), shown
    assert code == 130, rest
    assert not _port_open(url), "the model server outlived forge run"

    notes = _status(workdir, "forgedataset", "notes")["status"]
    manifest = Path(notes["manifestUri"].removeprefix("file://"))
    assert notes["phase"] == "Ready" and notes["digest"] == sha256_bytes(manifest.read_bytes())
    assert notes["counts"]["documentsKept"] > 500 and notes["counts"]["tokens"] > 100_000

    base = _status(workdir, "forgetrainingrun", "base")["status"]
    assert base["phase"] == "Succeeded" and base["lineage"]["datasetDigest"] == notes["digest"]
    losses = [s["loss"] for s in _steps(workdir, "base")]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 1.0, losses

    chat = _status(workdir, "forgetrainingrun", "chat")["status"]
    assert chat["phase"] == "Succeeded" and chat["lineage"]["baseModelDigest"] == base["finalModelDigest"]

    # held out: no eval question is a training task or a chat, in either order of its two numbers
    data = workdir / "quickstart" / "data"
    heldout = _prompts(data / "heldout" / "heldout.jsonl")
    assert len(heldout) == 24 and not heldout & (_prompts(data / "tasks" / "tasks.jsonl")
                                                 | _prompts(data / "chats" / "chats.jsonl"))
    solver = _status(workdir, "forgetrainingrun", "solver")["status"]
    before, after = solver["initialEvalMetrics"], solver["evalMetrics"]
    assert solver["phase"] == "Succeeded" and before["tasks"] == after["tasks"] == 24, solver
    gate = yaml.safe_load((QUICKSTART / "05-deployment.yaml").read_text())["spec"]["evalGate"][0]
    assert gate["metric"] == "pass_rate"
    assert before["pass_rate"] < gate["min"] <= after["pass_rate"], (before, after, gate)  # sft alone fails it
    assert after["pass_rate"] >= before["pass_rate"] + RL_GAIN, (before, after)
    steps = _steps(workdir, "solver")
    assert all({"kl", "completion_length", "clip_fraction", "success_rate"} <= set(s) for s in steps)
    assert solver["kl"] is not None and solver["completionLength"] >= 1
    eval_json = json.loads((Path(solver["outputUri"].removeprefix("file://")) / "eval.json").read_text())
    assert eval_json["change"]["pass_rate"] == pytest.approx(after["pass_rate"] - before["pass_rate"])
    assert eval_json["metrics"]["pass_rate_low"] < after["pass_rate"] < eval_json["metrics"]["pass_rate_high"] or \
        after["pass_rate"] == 1.0

    dep = _status(workdir, "forgedeployment", "assistant")["status"]
    assert dep["modelDigest"] == solver["finalModelDigest"] and dep["endpoint"] == url
    assert dep["phase"] != "Available"  # stopped with forge run

    table = subprocess.run([*FORGE, "get"], cwd=workdir, capture_output=True, text=True, check=True).stdout
    assert re.search(r"forgedataset.forge.ai/notes\s+pretrain\s+Ready", table), table
    assert re.search(r"forgetrainingrun.forge.ai/solver\s+rl\s+Succeeded\s+(\d+)/\1", table), table
    described = subprocess.run([*FORGE, "describe", "ftr/base"], cwd=workdir, capture_output=True, text=True,
                               check=True).stdout
    assert "Phase:       Succeeded" in described and re.search(r"Ready\s+True\s+Trained", described), described
    described = subprocess.run([*FORGE, "describe", "ftr/solver"], cwd=workdir, capture_output=True, text=True,
                               check=True).stdout
    side_by_side = rf"pass_rate\s+{before['pass_rate']:.4g}\s+{after['pass_rate']:.4g}\s+\+"
    assert "INITIAL" in described and re.search(side_by_side, described), described


def test_second_run_reuses_what_is_done_and_serves_again(workdir: Path) -> None:
    model_dir = Path(_status(workdir, "forgetrainingrun", "solver")["status"]["finalModelUri"].removeprefix("file://"))
    before = {p: p.stat().st_mtime_ns for p in model_dir.iterdir()}
    manifest_mtime = Path(_status(workdir, "forgedataset", "notes")["status"]["manifestUri"]
                          .removeprefix("file://")).stat().st_mtime_ns
    proc = _start(workdir)
    try:
        url, model, lines = _wait_serving(proc, timeout=120)
        answer = _chat(url, model)
    finally:
        code, _ = _stop(proc)
    text = "\n".join(lines)
    assert answer.strip() and code == 130
    for name in ("notes", "chats", "tasks", "heldout"):
        assert f"fds/{name}: Ready (up to date, manifest digest verified): not recomputed" in text, text
    for name in ("base", "chat", "solver"):
        assert re.search(rf"ftr/{name}: Succeeded \(up to date, \d+/\d+ steps\): not retrained", text), text
    assert {p: p.stat().st_mtime_ns for p in model_dir.iterdir()} == before
    assert Path(_status(workdir, "forgedataset", "notes")["status"]["manifestUri"]
                .removeprefix("file://")).stat().st_mtime_ns == manifest_mtime


def test_a_malformed_manifest_is_named_and_nothing_runs(tmp_path: Path) -> None:
    shutil.copytree(QUICKSTART, tmp_path / "quickstart", ignore=shutil.ignore_patterns("data"))
    bad = tmp_path / "quickstart" / "02-pretrain.yaml"
    bad.write_text(bad.read_text().replace("maxSteps:", "maxStep:"))
    proc = subprocess.run([*FORGE, "run", "quickstart/", "--plain"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2
    assert "quickstart/02-pretrain.yaml" in proc.stderr and "hyperparameters.maxStep" in proc.stderr, proc.stderr
    assert not (tmp_path / ".forge").exists()
