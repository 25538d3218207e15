"""The two images, linted as text (no container engine here): pinned bases, non-root users that match
what the chart and the workload pods run as, the right extras, no secrets, a tight build context."""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path

import pytest
import yaml

from forge_operator.render.pod import WORKLOAD_UID

ROOT = Path(__file__).resolve().parents[2]
OPERATOR = ROOT / "operator" / "Dockerfile"
TRAINER = ROOT / "trainer_image" / "Dockerfile"
SECRETISH = re.compile(r"(SECRET|PASSWORD|TOKEN|ACCESS_KEY|PRIVATE|CREDENTIAL)", re.I)


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(ln for ln in path.read_text().splitlines() if not ln.lstrip().startswith("#")))
    return [(m.group(1).upper(), m.group(2).strip()) for m in re.finditer(r"^\s*(\w+)\s+(.*)$", text, re.M)]


@pytest.mark.parametrize("path", [OPERATOR, TRAINER], ids=["operator", "trainer"])
def test_base_images_are_pinned(path: Path) -> None:
    bases = [args.split()[0] for op, args in instructions(path) if op == "FROM"]
    assert bases
    for image in bases:
        assert "@sha256:" in image or re.search(r":[\w.-]+$", image), f"{image} is not pinned"
        assert not image.endswith(":latest")


@pytest.mark.parametrize(("path", "uid"), [(OPERATOR, 65532), (TRAINER, WORKLOAD_UID)], ids=["operator", "trainer"])
def test_runs_as_the_non_root_uid_the_pods_use(path: Path, uid: int) -> None:
    users = [args for op, args in instructions(path) if op == "USER"]
    assert users, "no USER: the image would run as root"
    assert users[-1].split(":")[0] == str(uid)


def test_operator_uid_matches_the_charts_pod_security_context() -> None:
    values = yaml.safe_load((ROOT / "helm" / "forge-operator" / "values.yaml").read_text())
    user = [a for op, a in instructions(OPERATOR) if op == "USER"][-1]
    assert values["podSecurityContext"]["runAsUser"] == int(user.split(":")[0])


@pytest.mark.parametrize(("path", "extra", "absent"), [(OPERATOR, ".[operator]", "torch"),
                                                       (TRAINER, ".[trainer]", ".[operator]")], ids=["operator", "trainer"])
def test_installs_its_own_extra_only(path: Path, extra: str, absent: str) -> None:
    runs = " ".join(a for op, a in instructions(path) if op == "RUN")
    assert extra in runs
    assert absent not in runs


def test_trainer_pins_the_cuda_torch_the_project_pins() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    pinned = re.search(r'"torch==([\d.]+)"', pyproject)
    assert pinned
    runs = " ".join(a for op, a in instructions(TRAINER) if op == "RUN")
    assert f"torch=={pinned.group(1)}" in runs and "--index-url" in runs
    assert "cuda" in next(a for op, a in instructions(TRAINER) if op == "FROM")


@pytest.mark.parametrize("path", [OPERATOR, TRAINER], ids=["operator", "trainer"])
def test_no_secrets_in_the_image(path: Path) -> None:
    found = instructions(path)
    assert {"ENV", "COPY"} <= {op for op, _ in found}  # both kinds the loop checks are there
    for op, args in found:
        if op in ("ENV", "ARG"):
            names = re.findall(r"(?:^|\s)([A-Za-z_][A-Za-z0-9_]*)(?==|\s|$)", args)
            assert not [n for n in names if SECRETISH.search(n)], f"{op} {args}"
        if op in ("COPY", "ADD"):
            assert not re.search(r"(\.env|kubeconfig|\.pem|\.key|id_rsa|\.aws|\.netrc)\b", args), args


@pytest.mark.parametrize("path", [OPERATOR, TRAINER], ids=["operator", "trainer"])
def test_copied_paths_exist_and_are_in_the_build_context(path: Path) -> None:
    ignored = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
               if ln.strip() and not ln.startswith("#")]
    copies = [args for op, args in instructions(path) if op == "COPY" and not args.startswith("--from")]
    assert copies, f"{path.name} copies nothing from the build context"
    for args in copies:
        for src in args.split()[:-1]:
            assert (ROOT / src).exists(), f"{path.name}: COPY {src} does not exist"
            top = src.rstrip("/")
            assert not any(fnmatch.fnmatch(top, pat) or top.startswith(pat + "/") for pat in ignored), \
                f"{src} is excluded by .dockerignore"


def test_build_context_leaves_out_the_repo_clutter() -> None:
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".git", ".venv", "tests", "**/kubeconfig"} <= ignored


def test_chart_defaults_reference_the_images_these_files_build() -> None:
    values = yaml.safe_load((ROOT / "helm" / "forge-operator" / "values.yaml").read_text())
    assert "forge-operator" in values["image"]["repository"]
    assert "forge-operator" in OPERATOR.read_text().split("docker build", 1)[1].splitlines()[0]
    assert values["trainer"]["image"] in TRAINER.read_text()
