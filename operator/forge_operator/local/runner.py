"""`forge run`: resources in reference order, each one's planned workload run on this machine,
status derived by the operator's own status functions and saved under the state directory."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel

from forge_operator.api.common import now_rfc3339
from forge_operator.api.dataset import DatasetPhase, ForgeDataset, ForgeDatasetStatus
from forge_operator.api.deployment import DeploymentPhase, ForgeDeployment, ForgeDeploymentStatus
from forge_operator.api.training import ForgeTrainingRun, ForgeTrainingRunStatus, RunPhase
from forge_operator.local.display import Display
from forge_operator.local.lookup import RecordLookup
from forge_operator.local.processes import end_tree, log_tail, new_token, start_process
from forge_operator.local.staged import StagedProcesses
from forge_operator.local.state import ResourceDir
from forge_operator.local.torchx_launch import LocalApp
from forge_operator.manifests import LoadedManifest
from forge_operator.plan.dataset import plan_dataset, prepare_stage_args
from forge_operator.plan.deployment import plan_deployment
from forge_operator.plan.naming import output_uri
from forge_operator.plan.training import RDZV_PORT_ENV, plan_training_run
from forge_operator.plan.workload import InvalidSpecError
from forge_operator.resolve.dataset import resolve_dataset
from forge_operator.resolve.deployment import resolve_deployment
from forge_operator.resolve.training import resolve_run
from forge_operator.settings import OperatorSettings
from forge_operator.status.conditions import Waiting
from forge_operator.status.dataset import DatasetObservation, derive_dataset_status
from forge_operator.status.deployment import DeploymentObservation, derive_deployment_status
from forge_operator.status.job import JobObservation
from forge_operator.status.training import RunObservation, derive_run_status
from forge_operator.store.artifacts import read_progress
from forge_trainer.config import DatasetProgress, StoreConfig, TrainProgress
from forge_trainer.store import StoreError, join_key, open_uri, sha256_bytes

LOCAL_UID = "local"
M = TypeVar("M", bound=BaseModel)
POLL_SECONDS = 0.5


class RunFailed(Exception):
    """A resource failed; the message says which and why."""


@dataclass
class RunOptions:
    """What `forge run` was asked to do."""

    root: Path
    namespace: str = "default"
    store: str | None = None
    """`s3://bucket` to write artifacts to S3/MinIO; None for the local state directory."""
    serve: bool = True
    host: str = "127.0.0.1"
    port: int = 8000


@dataclass
class LocalRunner:
    """Runs manifests (already ordered) one after the other."""

    options: RunOptions
    display: Display
    settings: OperatorSettings = field(default_factory=OperatorSettings.from_env)
    records: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    manifests: dict[tuple[str, str], LoadedManifest] = field(default_factory=dict)
    server: subprocess.Popen[bytes] | None = None
    server_token: str | None = None

    # -- shared ---------------------------------------------------------------------------------

    def _dir(self, kind: str, name: str) -> ResourceDir:
        return ResourceDir(self.options.root, self.options.namespace, kind, name)

    @property
    def _bucket(self) -> str:
        """The bucket artifacts go to (`--store s3://bucket`, else the settings' bucket)."""
        if self.options.store:
            return self.options.store.removeprefix("s3://").strip("/").split("/", 1)[0]
        return self.settings.store_bucket

    @property
    def _lookup(self) -> RecordLookup:
        """What references resolve against: the records of the resources run so far."""
        return RecordLookup(self.records)

    def _output(self, kind: str, name: str) -> str:
        if self.options.store:
            return output_uri(self._bucket, self.options.namespace, kind, name, LOCAL_UID)
        return str(self._dir(kind, name).artifacts.resolve())

    def _fail(self, m: LoadedManifest, status: BaseModel, message: str) -> RunFailed:
        """Save the failed status; the RunFailed to raise."""
        self._save(m, status, {})
        return RunFailed(f"{m.kind} {m.name}: {message}")

    @property
    def store_config(self) -> StoreConfig:
        """How workloads and this runner reach the store."""
        return self.settings.store

    def _body(self, m: LoadedManifest) -> dict[str, Any]:
        body: dict[str, Any] = json.loads(json.dumps(m.body))
        meta = body.setdefault("metadata", {})
        meta.setdefault("namespace", self.options.namespace)
        meta["uid"] = LOCAL_UID
        meta.setdefault("generation", 1)
        return body

    def _save(self, m: LoadedManifest, status: BaseModel, extra: dict[str, Any]) -> dict[str, Any]:
        rd = self._dir(m.kind, m.name)
        old = rd.read() or {}
        record = {"apiVersion": m.body["apiVersion"], "kind": m.kind,
                  "metadata": {"name": m.name, "namespace": self.options.namespace,
                               "creationTimestamp": (old.get("metadata") or {}).get("creationTimestamp")
                               or now_rfc3339(), "manifest": str(m.path)},
                  "spec": m.body.get("spec") or {}, "status": status.model_dump(mode="json", by_alias=True,
                                                                                 exclude_none=True)}
        record.update(extra)
        rd.write(record)
        self.records[(m.kind, m.name)] = record
        self.display.update(m.kind, m.name, record)
        return record

    def _wait(self) -> None:
        time.sleep(POLL_SECONDS)

    def _clear_output(self, uri: str) -> None:
        """Remove what an earlier, different or unfinished attempt left under `uri`."""
        store, prefix = open_uri(uri, self.store_config)
        if not self.options.store:
            shutil.rmtree(Path(uri), ignore_errors=True)
            return
        for obj in list(store.list(prefix.rstrip("/") + "/")):
            store.delete(obj.key)

    def _read_bytes(self, uri: str, key: str = "") -> bytes | None:
        try:
            store, prefix = open_uri(uri, self.store_config)
            k = join_key(prefix, key) if key else prefix
            return store.get_bytes(k) if store.exists(k) else None
        except StoreError:
            return None

    # -- entry ----------------------------------------------------------------------------------

    def run(self, ordered: list[LoadedManifest]) -> None:
        """Run every resource in order; a failure stops the rest (RunFailed)."""
        self.manifests = {(m.kind, m.name): m for m in ordered}
        for m in ordered:
            self.display.add(m.kind, m.name)
            saved = self._dir(m.kind, m.name).read()
            if saved:
                self.records[(m.kind, m.name)] = saved
                self.display.update(m.kind, m.name, saved)
        for m in ordered:
            if isinstance(m.resource, ForgeDataset):
                self.run_dataset(m)
            elif isinstance(m.resource, ForgeTrainingRun):
                self.run_training(m)
            elif isinstance(m.resource, ForgeDeployment):
                self.run_deployment(m)

    def stop(self) -> None:
        """End the model server (if this run started one)."""
        if self.server is not None and self.server_token is not None:
            end_tree(self.server_token, self.server, grace=10)
            self.server = None

    # -- datasets -------------------------------------------------------------------------------

    def run_dataset(self, m: LoadedManifest) -> None:
        """Prepare a dataset, unless a Ready one with an intact manifest and the same config exists."""
        rd = self._dir(m.kind, m.name)
        body = self._body(m)
        src = body["spec"]["source"]["uri"]
        if not src.startswith("s3://"):
            body["spec"]["source"]["uri"] = str((m.path.parent / src).resolve())
        ds = ForgeDataset.model_validate(body)
        resolved = resolve_dataset(ds, self._lookup, bucket=self._bucket)
        if isinstance(resolved, Waiting):
            status, _ = derive_dataset_status(ForgeDatasetStatus(), DatasetObservation(1, waiting=resolved), _now())
            raise self._fail(m, status, resolved.message)
        try:
            plan = plan_dataset(ds, self.settings, reused_tokenizer_uri=resolved.reused_tokenizer_uri, local=True,
                                output=self._output(m.kind, m.name))
        except InvalidSpecError as exc:
            status, _ = derive_dataset_status(ForgeDatasetStatus(), DatasetObservation(1, spec_error=str(exc)), _now())
            raise self._fail(m, status, str(exc)) from exc
        digest = plan.config_hash
        saved = rd.read() or {}
        if saved.get("configHash") == digest and self._dataset_intact(saved.get("status") or {}):
            self.display.note(m.kind, m.name, "Ready (up to date, manifest digest verified): not recomputed")
            return
        self._clear_output(plan.output_uri)
        config_file = rd.path / "prepare.yaml"
        rd.path.mkdir(parents=True, exist_ok=True)
        config_file.write_text(yaml.safe_dump(plan.config.to_wire(), sort_keys=False))
        log = rd.path / "logs" / "prepare.log"
        token = new_token()
        command = [sys.executable, "-m", "forge_trainer.cli", "prepare", "--config", str(config_file)]
        # a split preparation runs its stages as processes, min(parallelism, cores) at a time
        proc = StagedProcesses([[command + args for args in stage] for stage in prepare_stage_args(plan.parallelism)],
                               min(plan.parallelism, os.cpu_count() or 1), token, log)
        status = ForgeDatasetStatus()
        extra = {"configHash": digest, "log": str(log)}
        try:
            while True:
                code = proc.poll()
                job = (JobObservation(active=1) if code is None else
                       JobObservation(succeeded=1, complete=True) if code == 0 else
                       JobObservation(failed=1, failed_final=True, message=log_tail(log) or f"exit status {code}"))
                progress = self._progress(plan.output_uri, DatasetProgress)
                status, _ = derive_dataset_status(status, DatasetObservation(
                    1, job_name=plan.job_name, output_uri=plan.output_uri, job=job, progress=progress), _now())
                self._save(m, status, extra)
                if code is not None:
                    break
                self._wait()
        except BaseException:
            end_tree(token)
            status, _ = derive_dataset_status(status, DatasetObservation(
                1, job_name=plan.job_name, output_uri=plan.output_uri,
                job=JobObservation(failed_final=True, message="interrupted (Ctrl-C); the next `forge run` "
                                                              "prepares it again")), _now())
            self._save(m, status, extra)
            raise
        end_tree(token, grace=2)
        if status.phase != DatasetPhase.READY:
            raise RunFailed(f"ForgeDataset {m.name}: {status.message} (log: {log})")

    def _dataset_intact(self, status: dict[str, Any]) -> bool:
        if status.get("phase") != DatasetPhase.READY or not status.get("manifestUri") or not status.get("digest"):
            return False
        data = self._read_bytes(status["manifestUri"])
        return data is not None and sha256_bytes(data) == status["digest"]

    def _progress(self, uri: str, model: type[M]) -> M | None:
        try:
            return read_progress(uri, self.store_config, model)
        except StoreError:
            return None

    # -- training runs --------------------------------------------------------------------------

    def run_training(self, m: LoadedManifest) -> None:
        """Train through TorchX's local scheduler, unless it already succeeded with the same config;
        an unfinished run resumes from its newest checkpoint (same output prefix)."""
        rd = self._dir(m.kind, m.name)
        run = ForgeTrainingRun.model_validate(self._body(m))
        config_file = rd.path / "train.yaml"
        try:
            resolved = resolve_run(run, self._lookup, bucket=self._bucket, trainer_image="local")
            if isinstance(resolved, Waiting):
                status, _ = derive_run_status(ForgeTrainingRunStatus(), RunObservation(1, waiting=resolved), _now())
                raise self._fail(m, status, resolved.message)
            plan = plan_training_run(run, self.settings, resolved.refs, config_path=str(config_file.resolve()),
                                     output=self._output(m.kind, m.name))
        except InvalidSpecError as exc:
            status, _ = derive_run_status(ForgeTrainingRunStatus(), RunObservation(1, spec_error=str(exc)), _now())
            raise self._fail(m, status, str(exc)) from exc
        lineage = resolved.lineage.model_copy(update={"config_hash": plan.config_hash})
        saved = rd.read() or {}
        st = saved.get("status") or {}
        if saved.get("configHash") == plan.config_hash and st.get("phase") == RunPhase.SUCCEEDED and \
                self._read_bytes(st.get("finalModelUri") or "", "config.json") is not None:
            self.display.note(m.kind, m.name, f"Succeeded (up to date, {st.get('progress')} steps): not retrained")
            return
        if saved.get("configHash") not in (None, plan.config_hash):
            self._clear_output(plan.output_uri)  # checkpoints of another config must not be resumed
        rd.path.mkdir(parents=True, exist_ok=True)
        # metrics port 0: a laptop may run several trainers, and the status here comes from progress.json
        config_file.write_text(yaml.safe_dump(plan.config.model_copy(update={"metrics_port": 0}).to_wire(),
                                              sort_keys=False))
        extra = {"configHash": plan.config_hash, "log": str(rd.path / "logs")}
        resumed = self._progress(plan.output_uri, TrainProgress)
        if resumed is not None and resumed.step:
            self.display.note(m.kind, m.name, f"resuming from step {resumed.step} (checkpoint in {plan.output_uri})")
        status = ForgeTrainingRunStatus()
        for role in plan.app.roles:  # a free rendezvous port: another `forge run` may be training too
            role.env[RDZV_PORT_ENV] = str(_free_port("127.0.0.1"))
        app = LocalApp(plan.app, new_token(), rd.path / "logs")
        try:
            while True:
                job = app.observe()
                progress = self._progress(plan.output_uri, TrainProgress)
                status, _ = derive_run_status(status, RunObservation(
                    1, job_name=plan.app.name, output_uri=plan.output_uri, job=job, progress=progress,
                    max_restarts=0, stall_timeout_seconds=run.spec.stall_timeout_seconds, lineage=lineage,
                    resolved=resolved.resolved), _now())
                self._save(m, status, extra)
                if job.complete or job.failed_final or status.phase in (RunPhase.FAILED, RunPhase.SUCCEEDED):
                    break
                self._wait()
        except BaseException:
            app.stop()
            status, _ = derive_run_status(status, RunObservation(
                1, job_name=plan.app.name, output_uri=plan.output_uri, max_restarts=0, lineage=lineage,
                job=JobObservation(failed_final=True, message="interrupted (Ctrl-C); the next `forge run` resumes "
                                                              "from the newest checkpoint"),
                progress=self._progress(plan.output_uri, TrainProgress)), _now())
            self._save(m, status, extra)
            raise
        app.close()
        if status.phase != RunPhase.SUCCEEDED:
            raise RunFailed(f"ForgeTrainingRun {m.name}: {status.message}{_worker_error(app.stderr_files())}")

    # -- deployments ----------------------------------------------------------------------------

    def run_deployment(self, m: LoadedManifest) -> None:
        """Check the eval gate, start the builtin server on this machine and wait until it is ready."""
        dep = ForgeDeployment.model_validate(self._body(m))
        spec = dep.spec
        if not self.options.serve:
            self.display.note(m.kind, m.name, "not served (--no-serve)")
            return
        try:
            model = resolve_deployment(dep, self._lookup, bucket=self._bucket)
        except InvalidSpecError as exc:
            status, _ = derive_deployment_status(ForgeDeploymentStatus(), DeploymentObservation(
                1, spec_error=str(exc)), _now())
            raise self._fail(m, status, str(exc)) from exc
        if isinstance(model, Waiting):
            status, _ = derive_deployment_status(ForgeDeploymentStatus(), DeploymentObservation(1, waiting=model), _now())
            raise self._fail(m, status, model.message)
        gate = model.gate
        status, _ = derive_deployment_status(ForgeDeploymentStatus(), DeploymentObservation(
            1, gate_passed=gate.passed, gate_message=gate.message), _now())
        if not gate.passed:
            raise self._fail(m, status, gate.message)
        plan = plan_deployment(dep, self.settings, model.uri, model.digest)
        port = self.options.port or _free_port(self.options.host)
        if not _port_free(self.options.host, port):
            port = _free_port(self.options.host)
            self.display.note(m.kind, m.name, f"port {self.options.port} is taken; serving on {port}")
        endpoint = f"http://{self.options.host}:{port}/v1"
        rd = self._dir(m.kind, m.name)
        log = rd.path / "logs" / "serve.log"
        argv = [sys.executable, "-m", "forge_trainer.cli", "serve", "--model", plan.model_uri,
                "--model-name", plan.model_name, "--host", self.options.host, "--port", str(port),
                "--max-batch-size", str(spec.max_batch_size)]
        if plan.model_digest:
            argv += ["--model-digest", plan.model_digest]
        self.server_token = new_token()
        self.server = start_process(argv, self.server_token, log)
        live: dict[str, Any] = {"status": {"readyReplicas": 0}}
        obs = DeploymentObservation(1, gate_passed=True, gate_message=gate.message, deployment=live,
                                    endpoint=endpoint, model_uri=plan.model_uri, model_digest=plan.model_digest)
        extra = {"log": str(log), "pid": self.server.pid}
        while True:
            status, _ = derive_deployment_status(status, obs, _now())
            self._save(m, status, extra)
            if status.phase == DeploymentPhase.AVAILABLE:
                break
            if self.server.poll() is not None:
                raise RunFailed(f"ForgeDeployment {m.name}: the server exited: {log_tail(log, 3)}")
            if _ready(f"http://{self.options.host}:{port}/readyz"):
                live["status"]["readyReplicas"] = 1
                continue
            self._wait()
        self.display.serving(m.name, endpoint, plan.model_name)

    def serve_forever(self, m: LoadedManifest) -> None:
        """Keep the server running until Ctrl-C; a server that dies is a failure."""
        while self.server is not None:
            if self.server.poll() is not None:
                raise RunFailed(f"ForgeDeployment {m.name}: the server exited with status {self.server.returncode}")
            time.sleep(POLL_SECONDS)

    def mark_stopped(self, m: LoadedManifest) -> None:
        """After the server was stopped: the deployment has no ready replica any more."""
        saved = self.records.get((m.kind, m.name))
        if not saved:
            return
        prev = ForgeDeploymentStatus.model_validate(saved.get("status") or {})
        status, _ = derive_deployment_status(prev, DeploymentObservation(
            1, gate_passed=True, deployment={"status": {"readyReplicas": 0}}, endpoint=prev.endpoint,
            model_uri=prev.model_uri, model_digest=prev.model_digest), _now())
        status.message = "stopped (forge run ended); run it again to serve"
        self._save(m, status, {k: v for k, v in saved.items() if k in ("log",)})


def _worker_error(stderr_files: list[Path]) -> str:
    """The workers' last error line (torchrun's own summary says little), and where the logs are."""
    for path in stderr_files:
        lines = [line for line in path.read_text(errors="replace").splitlines()
                 if line.startswith("[rank") and "Error" in line]
        if lines:
            return f"\n  {lines[-1]}\n  (log: {path})"
    return f"\n  (logs: {', '.join(map(str, stderr_files))})" if stderr_files else ""


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return int(resp.status) == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _now() -> datetime:
    return datetime.now(UTC)
