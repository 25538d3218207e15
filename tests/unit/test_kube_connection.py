"""How the operator finds the API server and its credentials (kube/connection.py): kubeconfig files as
kubectl reads them, exec credential plugins, and clear errors naming the file or field."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from forge_operator.kube.connection import CredentialsError, connection_info


def _write(path: Path, doc: dict[str, object]) -> Path:
    path.write_text(yaml.safe_dump(doc))
    return path


def _config(user: dict[str, object], cluster: dict[str, object] | None = None) -> dict[str, object]:
    return {"apiVersion": "v1", "kind": "Config", "current-context": "dev",
            "contexts": [{"name": "dev", "context": {"cluster": "c", "user": "u", "namespace": "ml"}}],
            "clusters": [{"name": "c", "cluster": cluster or {"server": "https://10.0.0.1:6443"}}],
            "users": [{"name": "u", "user": user}]}


def test_token_and_namespace_from_the_current_context(tmp_path: Path) -> None:
    path = _write(tmp_path / "config", _config({"token": "abc"}))
    info = connection_info(str(path))
    assert info.server == "https://10.0.0.1:6443"
    assert info.as_http_headers() == {"Authorization": "Bearer abc"}
    assert info.default_namespace == "ml"


def test_relative_certificate_paths_are_relative_to_the_kubeconfig(tmp_path: Path) -> None:
    (tmp_path / "certs").mkdir()
    path = _write(tmp_path / "config", _config({"client-certificate": "certs/me.crt", "client-key": "certs/me.key"},
                                               {"server": "https://k", "certificate-authority": "certs/ca.crt"}))
    info = connection_info(str(path))
    assert info.ca_path == str(tmp_path / "certs" / "ca.crt")
    assert info.certificate_path == str(tmp_path / "certs" / "me.crt")
    assert info.private_key_path == str(tmp_path / "certs" / "me.key")


def test_token_file_is_read(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("from-file\n")
    info = connection_info(str(_write(tmp_path / "config", _config({"tokenFile": "token"}))))
    assert info.token == "from-file"


def test_exec_credential_plugin_supplies_the_token(tmp_path: Path) -> None:
    plugin = tmp_path / "get-token"
    plugin.write_text(f"#!{sys.executable}\nimport json, os\n"
                      "print(json.dumps({'kind': 'ExecCredential', 'status': {'token': 'exec-' + os.environ['WHO'],"
                      " 'expirationTimestamp': '2030-01-01T00:00:00Z'}}))\n")
    plugin.chmod(0o755)
    user = {"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": "./get-token",
                     "env": [{"name": "WHO", "value": "alice"}]}}
    info = connection_info(str(_write(tmp_path / "config", _config(user))))
    assert info.token == "exec-alice"
    assert info.expiration is not None and info.expiration.year == 2030


def test_failing_exec_plugin_is_named(tmp_path: Path) -> None:
    user = {"exec": {"command": "/nonexistent/aws", "args": ["eks", "get-token"]}}
    with pytest.raises(CredentialsError, match="exec credential plugin '/nonexistent/aws'"):
        connection_info(str(_write(tmp_path / "config", _config(user))))


def test_unknown_current_context_is_named(tmp_path: Path) -> None:
    doc = _config({"token": "x"}) | {"current-context": "prod"}
    with pytest.raises(CredentialsError, match="current-context 'prod'"):
        connection_info(str(_write(tmp_path / "config", doc)))


def test_fields_an_older_api_server_refuses_are_dropped_by_path() -> None:
    from forge_operator.kube.client import _UNKNOWN_FIELD, _drop_path

    body = {"spec": {"versions": [{"schema": {"x-kubernetes-validations": [1], "type": "object"}}],
                     "completionMode": "Indexed"}}
    message = ("failed to create typed patch object: errors:\n"
               "  .spec.versions[0].schema.x-kubernetes-validations: field not declared in schema\n"
               "  .spec.completionMode: field not declared in schema")
    dropped = [p for p in _UNKNOWN_FIELD.findall(message) if _drop_path(body, p)]
    assert dropped == [".spec.versions[0].schema.x-kubernetes-validations", ".spec.completionMode"]
    assert body == {"spec": {"versions": [{"schema": {"type": "object"}}]}}
    assert not _drop_path(body, ".spec.versions[3].schema")
