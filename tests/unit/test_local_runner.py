"""The local runner's pure parts and its process handling: reference order, manifest errors that stop
everything before it starts, the tables `forge get` / `forge describe` print, and process trees ended."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import pytest

from forge_operator.api.training import ForgeTrainingRun
from forge_operator.local.command import run_local
from forge_operator.local.listing import find_record, render_describe, render_get
from forge_operator.local.order import order_manifests
from forge_operator.local.processes import end_tree, new_token, start_process, tagged_pids
from forge_operator.local.runner import RunOptions
from forge_operator.local.state import ResourceDir, saved_records
from forge_operator.manifests import ManifestError, load_manifests
from forge_operator.plan.training import ResolvedRefs, plan_training_run
from forge_operator.settings import OperatorSettings

pytestmark = pytest.mark.unit
QUICKSTART = Path(__file__).resolve().parents[2] / "examples" / "quickstart"
HEAD = "apiVersion: forge.ai/v1alpha1\n"


def _write(tmp: Path, name: str, text: str) -> None:
    (tmp / name).write_text(text)


def test_quickstart_is_ordered_by_references() -> None:
    ordered = [f"{m.kind}/{m.name}" for m in order_manifests(load_manifests([QUICKSTART]))]
    assert ordered == ["ForgeDataset/notes", "ForgeDataset/chats", "ForgeDataset/tasks",
                       "ForgeDataset/heldout", "ForgeTrainingRun/base",
                       "ForgeTrainingRun/chat", "ForgeTrainingRun/solver", "ForgeDeployment/assistant"]


def test_resources_listed_before_what_they_need_still_run_after_it(tmp_path: Path) -> None:
    _write(tmp_path, "a.yaml", HEAD + "kind: ForgeDeployment\nmetadata: {name: web}\nspec: {modelRef: tuned}\n---\n"
           + HEAD + "kind: ForgeTrainingRun\nmetadata: {name: tuned}\nspec: {stage: sft, datasetRef: d, "
                    "init: {baseRun: base}}\n---\n"
           + HEAD + "kind: ForgeTrainingRun\nmetadata: {name: base}\nspec: {stage: pretrain, datasetRef: d, "
                    "model: {size: tiny}}\n---\n"
           + HEAD + "kind: ForgeDataset\nmetadata: {name: d}\nspec: {source: {uri: data/}}\n")
    assert [m.name for m in order_manifests(load_manifests([tmp_path]))] == ["d", "base", "tuned", "web"]


def test_a_reference_to_a_missing_resource_names_file_and_field(tmp_path: Path) -> None:
    _write(tmp_path, "run.yaml", HEAD + "kind: ForgeTrainingRun\nmetadata: {name: r}\n"
                                        "spec: {stage: pretrain, datasetRef: nowhere, model: {size: tiny}}\n")
    with pytest.raises(ManifestError) as err:
        order_manifests(load_manifests([tmp_path]))
    assert str(err.value) == (f"{tmp_path / 'run.yaml'} (document 1): ForgeTrainingRun r: spec.datasetRef: "
                              "ForgeDataset nowhere is not in the manifests given")


def test_a_reference_cycle_is_refused(tmp_path: Path) -> None:
    _write(tmp_path, "d.yaml", HEAD + "kind: ForgeDataset\nmetadata: {name: a}\nspec: {source: {uri: x/}, "
                                      "tokenizer: {datasetRef: b}}\n---\n"
           + HEAD + "kind: ForgeDataset\nmetadata: {name: b}\nspec: {source: {uri: y/}, tokenizer: {datasetRef: a}}\n")
    with pytest.raises(ManifestError) as err:
        order_manifests(load_manifests([tmp_path]))
    assert ("reference cycle: ForgeDataset a (spec.tokenizer.datasetRef) -> ForgeDataset b "
            "(spec.tokenizer.datasetRef) -> ForgeDataset a") in str(err.value)


def test_a_malformed_manifest_stops_forge_run_before_anything_runs(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    _write(tmp_path, "ok.yaml", HEAD + "kind: ForgeDataset\nmetadata: {name: d}\nspec: {source: {uri: data/}}\n")
    _write(tmp_path, "bad.yaml", HEAD + "kind: ForgeTrainingRun\nmetadata: {name: r}\n"
                                        "spec: {stage: pretrain, datasetRef: d, model: {size: huge}}\n")
    code = run_local([tmp_path], RunOptions(root=tmp_path / ".forge"), plain=True)
    err = capsys.readouterr().err
    assert code == 2 and f"{tmp_path / 'bad.yaml'} (document 1): ForgeTrainingRun r" in err and "model.size" in err
    assert not (tmp_path / ".forge").exists()


def test_local_plan_runs_the_same_app_def_with_the_local_config_path(tmp_path: Path) -> None:
    run = ForgeTrainingRun.model_validate({"apiVersion": "forge.ai/v1alpha1", "kind": "ForgeTrainingRun",
                                           "metadata": {"name": "base", "namespace": "default", "uid": "local"},
                                           "spec": {"stage": "pretrain", "datasetRef": "d", "model": {"size": "tiny"},
                                                    "resources": {"gpusPerNode": 0}}})
    refs = ResolvedRefs(dataset_manifest=str(tmp_path / "manifest.json"))
    cluster = plan_training_run(run, OperatorSettings(), refs)
    local = plan_training_run(run, OperatorSettings(), refs, config_path=str(tmp_path / "train.yaml"),
                              output=str(tmp_path / "out"))
    assert local.config.output == str(tmp_path / "out") and cluster.config.output.startswith("s3://forge/")
    cmd = local.app.roles[0].args[1]
    assert cmd == cluster.app.roles[0].args[1].replace("/etc/forge/config.yaml", str(tmp_path / "train.yaml"))
    assert cmd.endswith(f"train --config {tmp_path / 'train.yaml'}")
    assert local.app.roles[0].env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] == "1"


RECORDS: list[dict[str, Any]] = [
    {"apiVersion": "forge.ai/v1alpha1", "kind": "ForgeTrainingRun",
     "metadata": {"name": "base", "namespace": "default", "creationTimestamp": "2026-01-01T00:00:00Z"},
     "spec": {"stage": "pretrain"},
     "status": {"phase": "Running", "progress": "40/120", "loss": 2.5, "worldSize": 1, "message": "running",
                "conditions": [{"type": "Ready", "status": "False", "reason": "JobRunning", "message": "running",
                                "lastTransitionTime": "2026-01-01T00:00:05Z"}]}},
    {"apiVersion": "forge.ai/v1alpha1", "kind": "ForgeDataset",
     "metadata": {"name": "notes", "namespace": "default", "creationTimestamp": "2026-01-01T00:00:00Z"},
     "spec": {"purpose": "pretrain"},
     "status": {"phase": "Ready", "counts": {"documentsKept": 600, "tokens": 415370}, "digest": "sha256:ab"}},
]


def test_get_prints_a_table_per_kind_with_the_crd_columns(tmp_path: Path) -> None:
    for r in RECORDS:
        ResourceDir(tmp_path, "default", r["kind"], r["metadata"]["name"]).write(r)
    from datetime import UTC, datetime

    table = render_get(saved_records(tmp_path), now=datetime(2026, 1, 1, 0, 5, tzinfo=UTC))
    lines = table.splitlines()
    assert [line.split() for line in lines] == [
        ["NAME", "PURPOSE", "PHASE", "KEPT", "TOKENS", "AGE"],
        ["forgedataset.forge.ai/notes", "pretrain", "Ready", "600", "415370", "5m"],
        [],
        ["NAME", "STAGE", "PHASE", "PROGRESS", "LOSS", "WORKERS", "AGE"],
        ["forgetrainingrun.forge.ai/base", "pretrain", "Running", "40/120", "2.5", "1", "5m"],
    ]
    assert lines[0].index("PURPOSE") == lines[1].index("pretrain")  # columns line up


def test_describe_shows_phase_counts_and_conditions() -> None:
    [run] = find_record(RECORDS, "ftr/base")
    text = render_describe(run)
    assert "Phase:       Running" in text and "  progress: 40/120" in text
    assert "  Ready   False    JobRunning   2026-01-01T00:00:05Z   running" in text
    assert find_record(RECORDS, "fds/base") == [] and len(find_record(RECORDS, "notes")) == 1


def test_end_tree_ends_every_process_the_workload_started(tmp_path: Path) -> None:
    token = new_token()
    # a child that leaves the process group: killpg alone would miss it
    script = ("import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], "
              "start_new_session=True); time.sleep(60)")
    proc = start_process([sys.executable, "-c", script], token, tmp_path / "log")
    deadline = time.monotonic() + 10
    while len(tagged_pids(token)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(tagged_pids(token)) == 2
    end_tree(token, proc, grace=5)
    assert proc.returncode is not None
    deadline = time.monotonic() + 5
    while tagged_pids(token) and time.monotonic() < deadline:  # the orphan is reaped by init
        time.sleep(0.1)
    assert tagged_pids(token) == []
