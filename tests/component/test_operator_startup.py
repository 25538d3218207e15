"""`forge operator` started as a process: without credentials it stops at once with one line naming
where it looked (the credential rules themselves are unit-tested in tests/unit/test_kube_connection.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def test_operator_without_credentials_exits_with_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("KUBERNETES_SERVICE_HOST",)}
    env["KUBECONFIG"] = str(tmp_path / "missing.yaml")
    proc = subprocess.run([sys.executable, "-m", "forge_operator.cli", "operator", "--standalone"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]  # one line, no traceback
    assert "missing.yaml" in proc.stderr
