"""Secrets in the serving pod: spec.apiKeySecret puts the API key into the server's environment, from the
Secret, for both runtimes; the store credentials reach only the init container that fetches the model."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest
from pydantic import ValidationError

from forge_operator.api import ForgeDeployment
from forge_operator.plan.deployment import plan_deployment
from forge_operator.render.deployment import render_deployment
from forge_operator.settings import OperatorSettings

SETTINGS = OperatorSettings(store_endpoint="minio:9000", store_secure=False)
VLLM = {"runtime": "vllm", "resources": {"gpus": 1}}


def _pod(**spec: Any) -> dict[str, Any]:
    dep = ForgeDeployment.model_validate({"apiVersion": "forge.ai/v1alpha1", "kind": "ForgeDeployment",
                                          "metadata": {"name": "chat", "namespace": "ml", "uid": "d1"},
                                          "spec": {"modelRef": "tuned", **spec}})
    plan = plan_deployment(dep, SETTINGS, "s3://forge/forge/ml/forgetrainingrun/tuned/u/model", "sha256:abc")
    objs = render_deployment(plan)
    for obj in objs:
        kubernetes_validate.validate(obj, "1.30.0", strict=True)
    deployment = next(o for o in objs if o["kind"] == "Deployment")
    pod: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return pod


def _server_env(pod: dict[str, Any]) -> dict[str, Any]:
    server = next(c for c in pod["containers"] if c["name"] == "server")
    return {e["name"]: e.get("valueFrom", e.get("value")) for e in server.get("env", [])}


@pytest.mark.parametrize(("runtime", "variable"), [({}, "FORGE_API_KEY"), (VLLM, "VLLM_API_KEY")])
def test_api_key_comes_from_the_secret(runtime: dict[str, Any], variable: str) -> None:
    env = _server_env(_pod(apiKeySecret={"name": "chat-api", "key": "token"}, **runtime))
    assert env[variable] == {"secretKeyRef": {"name": "chat-api", "key": "token"}}
    # the key never appears as a literal value or on the command line
    pod = _pod(apiKeySecret={"name": "chat-api"}, **runtime)
    assert _server_env(pod)[variable] == {"secretKeyRef": {"name": "chat-api", "key": "apiKey"}}
    assert not any("api-key" in arg for c in pod["containers"] for arg in c["command"])


@pytest.mark.parametrize("runtime", [{}, VLLM])
def test_no_key_variable_without_the_secret(runtime: dict[str, Any]) -> None:
    env = _server_env(_pod(**runtime))
    assert "FORGE_API_KEY" not in env and "VLLM_API_KEY" not in env


def test_secret_name_is_checked() -> None:
    with pytest.raises(ValidationError, match="apiKeySecret"):
        _pod(apiKeySecret={"name": "Not A Name"})


@pytest.mark.parametrize("runtime", [{}, VLLM])
def test_only_the_fetching_init_container_holds_store_credentials(runtime: dict[str, Any]) -> None:
    pod = _pod(**runtime)
    [fetch] = pod["initContainers"]
    assert fetch["command"][:2] == ["forge-trainer", "fetch"]
    assert "--store-insecure" in fetch["command"]  # SETTINGS: a plain-HTTP store
    assert {"FORGE_S3_ACCESS_KEY", "FORGE_S3_SECRET_KEY"} <= {e["name"] for e in fetch["env"]}
    [server] = pod["containers"]
    assert not any(e["name"].startswith("FORGE_S3_") for e in server.get("env", []))
    assert "/models/model" in server["command"]
    assert {"name": "models", "mountPath": "/models", "readOnly": True} in server["volumeMounts"]
