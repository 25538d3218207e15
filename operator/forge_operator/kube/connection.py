"""Where the API server is and how to authenticate: the pod's service account in a cluster, else the
kubeconfig (`$KUBECONFIG` or `~/.kube/config`, its current context).

Read fresh on every call, so a rotated service-account token or an exec plugin's new token is picked up
when the API answers 401. The result is Kopf's own `ConnectionInfo`, so Kopf's sessions and the
operator's synchronous facade (`kube.client.Kube`) authenticate the same way. This replaces the
`kubernetes` client library, whose generated models cost the operator ~45 MB of memory for nothing.
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import kopf
import yaml

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class CredentialsError(Exception):
    """The API server's address or credentials cannot be determined; the message names the file."""


def connection_info(kubeconfig: str | None = None) -> kopf.ConnectionInfo:
    """In-cluster (service account) when running in a pod, else the kubeconfig."""
    if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST") and (SERVICE_ACCOUNT / "token").exists():
        return _in_cluster()
    return _from_kubeconfig(kubeconfig)


def _in_cluster() -> kopf.ConnectionInfo:
    host = os.environ["KUBERNETES_SERVICE_HOST"]
    port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    host = f"[{host}]" if ":" in host else host
    ns_file, ca_file = SERVICE_ACCOUNT / "namespace", SERVICE_ACCOUNT / "ca.crt"
    return kopf.ConnectionInfo(
        server=f"https://{host}:{port}",
        ca_path=str(ca_file) if ca_file.exists() else None,
        token=(SERVICE_ACCOUNT / "token").read_text().strip() or None,
        default_namespace=ns_file.read_text().strip() if ns_file.exists() else None,
    )


def _kubeconfig_paths(explicit: str | None) -> list[Path]:
    raw = explicit or os.environ.get("KUBECONFIG") or ""
    paths = [Path(p).expanduser() for p in raw.split(os.pathsep) if p.strip()]
    if not paths:
        default = Path("~/.kube/config").expanduser()
        if not default.exists():
            raise CredentialsError("no Kubernetes credentials: not in a pod, $KUBECONFIG is not set and "
                                   "~/.kube/config does not exist")
        paths = [default]
    return paths


def _from_kubeconfig(explicit: str | None) -> kopf.ConnectionInfo:
    # merged as kubectl does: the first file to set a key wins; relative paths are relative to their file
    current: str | None = None
    entries: dict[str, dict[str, tuple[dict[str, Any], Path]]] = {"contexts": {}, "clusters": {}, "users": {}}
    for path in _kubeconfig_paths(explicit):
        try:
            doc = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise CredentialsError(f"kubeconfig {path}: {exc}") from exc
        current = current or doc.get("current-context")
        for section, field in (("contexts", "context"), ("clusters", "cluster"), ("users", "user")):
            for item in doc.get(section) or []:
                entries[section].setdefault(item["name"], (item.get(field) or {}, path.parent))
    if not current or current not in entries["contexts"]:
        raise CredentialsError(f"kubeconfig: current-context {current!r} is not defined")
    context, _ = entries["contexts"][current]
    if context.get("cluster") not in entries["clusters"]:
        raise CredentialsError(f"kubeconfig: context {current!r} names unknown cluster {context.get('cluster')!r}")
    cluster, cluster_dir = entries["clusters"][context["cluster"]]
    user, user_dir = entries["users"].get(context.get("user") or "", ({}, cluster_dir))

    def rel(value: str | None, base: Path) -> str | None:
        return str((base / Path(value).expanduser()).resolve()) if value else None

    token = user.get("token")
    if not token and user.get("tokenFile"):
        token = Path(rel(user["tokenFile"], user_dir) or "").read_text().strip()
    cert_data, key_data = user.get("client-certificate-data"), user.get("client-key-data")
    expiration = None
    if user.get("exec"):
        cred = _exec_credential(user["exec"], user_dir)
        token = cred.get("token") or token
        cert_data = cred.get("clientCertificateData") or cert_data
        key_data = cred.get("clientKeyData") or key_data
        if cred.get("expirationTimestamp"):
            expiration = datetime.datetime.fromisoformat(str(cred["expirationTimestamp"]).replace("Z", "+00:00"))
    elif user.get("auth-provider"):
        token = (user["auth-provider"].get("config") or {}).get("access-token") or token
    return kopf.ConnectionInfo(
        server=str(cluster.get("server") or ""),
        ca_path=rel(cluster.get("certificate-authority"), cluster_dir),
        ca_data=cluster.get("certificate-authority-data"),
        insecure=bool(cluster.get("insecure-skip-tls-verify")) or None,
        username=user.get("username"), password=user.get("password"),
        token=token,
        certificate_path=None if cert_data else rel(user.get("client-certificate"), user_dir),
        certificate_data=cert_data,
        private_key_path=None if key_data else rel(user.get("client-key"), user_dir),
        private_key_data=key_data,
        default_namespace=context.get("namespace"),
        expiration=expiration,
    )


def _exec_credential(spec: dict[str, Any], base: Path) -> dict[str, Any]:
    """Run a kubeconfig `exec` credential plugin (e.g. `aws eks get-token`) and return its status."""
    command = str(spec.get("command") or "")
    env = {**os.environ, **{e["name"]: e["value"] for e in spec.get("env") or []}}
    if "/" in command and not Path(command).is_absolute():
        command = str(base / command)
    try:
        out = subprocess.run([command, *(spec.get("args") or [])], env=env, capture_output=True, text=True,
                             timeout=60, check=True).stdout
        return dict(json.loads(out).get("status") or {})
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        raise CredentialsError(f"kubeconfig exec credential plugin {command!r} failed: {exc}") from exc
