"""The operator starts under whatever uid it is given. Kopf names itself in the peering objects with
`getpass.getuser()` unless POD_ID is set, and that call fails for a uid with no passwd entry: the operator
image runs as 65532, which has none, and a cluster may assign any uid (OpenShift's are random). Kopf's own
id detection runs here in a child process under such a uid, with only the environment the image (or the
chart) gives it."""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
from typing import Any

import pytest

from tests.support.chart import render
from tests.support.dockerfile import OPERATOR, final_stage, image_env

OPENSHIFT_UID = 1000770000
POD_NAME = "forge-operator-7d9f8c6b5-x2kqz"
# Kopf and the standard library are imported while still root (the interpreter may live where another
# uid cannot read); only then does the child drop to the uid and ask Kopf for its peering id.
CHILD = """
import os, sys
from kopf._core.engines import peering
uid = int(sys.argv[1])
os.setgroups([]); os.setgid(uid); os.setuid(uid)
print(peering.detect_own_id(manual=False))
"""


def _no_passwd_entry(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return True
    return False


def _peering_id(uid: int, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Kopf's peering id, asked by a process running as `uid` with exactly `env`."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run a child under a uid with no passwd entry")
    if not _no_passwd_entry(uid):
        pytest.skip(f"uid {uid} has a passwd entry on this machine, so the failure cannot be reproduced")
    return subprocess.run([sys.executable, "-c", CHILD, str(uid)], env={"PATH": "/usr/bin:/bin", **env},
                          capture_output=True, text=True, timeout=120, check=False)


def _image_uid() -> int:
    user = [args for op, args in final_stage(OPERATOR) if op == "USER"][-1]
    return int(user.split(":")[0])


@pytest.mark.parametrize("uid", [_image_uid(), OPENSHIFT_UID], ids=["image-uid", "random-uid"])
def test_the_image_environment_gives_kopf_a_peering_id(uid: int) -> None:
    env = {k: v for k, v in image_env(OPERATOR).items() if "$" not in v}
    result = _peering_id(uid, env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "getpwuid" not in result.stderr
    assert result.stdout.strip().startswith(f"{env['USER']}@")


def _kubelet_env(container: dict[str, Any]) -> dict[str, str]:
    """The container's env as the kubelet resolves it (a Secret key becomes a placeholder)."""
    env: dict[str, str] = {}
    for item in container["env"]:
        ref = item.get("valueFrom", {})
        if "value" in item:
            env[item["name"]] = str(item["value"])
        elif ref.get("fieldRef", {}).get("fieldPath") == "metadata.name":
            env[item["name"]] = POD_NAME
        elif "secretKeyRef" in ref:
            env[item["name"]] = "secret"
    return env


def test_the_charts_environment_alone_gives_kopf_a_peering_id() -> None:
    """With any image (one without USER too) and any uid, the chart names the replica after its pod."""
    deployment = next(o for o in render() if o["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    result = _peering_id(OPENSHIFT_UID, _kubelet_env(container))
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == POD_NAME
