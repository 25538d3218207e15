"""The two images, linted as text (no container engine here): bases pinned and overridable (by digest in a
registry pipeline), pip installs only what the lock files pin with hashes, non-root users that match what
the chart and the workload pods run as, the right extras, no secrets, a tight build context."""

from __future__ import annotations

import fnmatch
import re
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from forge_operator.render.pod import WORKLOAD_UID
from tests.support.dockerfile import OPERATOR, ROOT, TRAINER, final_stage, instructions

SECRETISH = re.compile(r"(SECRET|PASSWORD|TOKEN|ACCESS_KEY|PRIVATE|CREDENTIAL)", re.I)
LOCKS = {OPERATOR: ROOT / "deploy" / "constraints" / "operator.txt",
         TRAINER: ROOT / "deploy" / "constraints" / "trainer.txt"}
EXTRAS = {OPERATOR: "operator", TRAINER: "trainer"}
# torch's build for the image's VARIANT comes from the PyTorch index with its CUDA libraries (see scripts/lock)
VARIANT_SPECIFIC = re.compile(r"^(torch|triton|nvidia-.*|cuda-.*)$")
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def build_args(path: Path) -> dict[str, str]:
    """The defaults of the ARGs declared before the first FROM (those a FROM line can use)."""
    args: dict[str, str] = {}
    for op, rest in instructions(path):
        if op == "FROM":
            break
        if op == "ARG":
            name, _, default = rest.partition("=")
            args[name] = default
    return args


def base_images(path: Path) -> list[str]:
    """Every FROM that names an image (not an earlier stage), with the build args' defaults filled in."""
    found = instructions(path)
    stages = {m.group(1) for op, a in found if op == "FROM" and (m := re.search(r"\bAS\s+(\S+)", a, re.I))}
    defaults = build_args(path)
    images = [a.split()[0] for op, a in found if op == "FROM"]
    return [re.sub(r"\$\{(\w+)\}", lambda m: defaults[m.group(1)], i) for i in images if i not in stages]


def pip_installs(path: Path) -> list[str]:
    """Each `pip install ...` command of the RUN instructions."""
    runs = " && ".join(a for op, a in instructions(path) if op == "RUN")
    return [m.group(0).strip() for m in re.finditer(r"pip install[^;&|]*", runs)]


def locked(lock: Path) -> dict[str, list[str]]:
    """{requirement line: its hashes} of a lock file written by scripts/lock."""
    text = re.sub(r"\\\n", " ", lock.read_text())
    entries = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            requirement = line.split(" --hash=", 1)[0].strip()
            entries[requirement] = re.findall(r"--hash=sha256:([0-9a-f]{64})\b", line)
    return entries


@pytest.mark.parametrize("path", [OPERATOR, TRAINER], ids=["operator", "trainer"])
def test_base_image_is_a_build_argument_with_a_pinned_default(path: Path) -> None:
    """A registry pipeline passes --build-arg BASE_IMAGE=<image>@sha256:<digest>; the default stays a tag."""
    froms = [args.split()[0] for op, args in instructions(path) if op == "FROM"]
    assert froms and set(froms) == {"${BASE_IMAGE}"}, f"{path.name}: FROM {froms} does not use BASE_IMAGE"
    bases = base_images(path)
    assert bases
    for image in bases:
        assert "@sha256:" in image or re.search(r":[\w.-]+$", image), f"{image} is not pinned"
        assert not image.endswith(":latest")
    assert "digest" in path.read_text().split("FROM", 1)[0], "say how to pin the base by digest"


@pytest.mark.parametrize(("path", "uid"), [(OPERATOR, 65532), (TRAINER, WORKLOAD_UID)], ids=["operator", "trainer"])
def test_runs_as_the_non_root_uid_the_pods_use(path: Path, uid: int) -> None:
    users = [args for op, args in final_stage(path) if op == "USER"]
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


@pytest.mark.parametrize("path", [OPERATOR, TRAINER], ids=["operator", "trainer"])
def test_pip_installs_only_what_the_lock_pins(path: Path) -> None:
    """The lock goes in hash-checked; the project goes in offline (so a lock that misses a dependency
    fails the build); only the trainer's torch comes from elsewhere, at the version pyproject pins."""
    copies = [a.split() for op, a in instructions(path) if op == "COPY" and not a.startswith("--from")]
    lock_in_image = next(dest for *srcs, dest in copies if str(LOCKS[path].relative_to(ROOT)) in srcs)
    installs = pip_installs(path)
    assert any("--require-hashes" in i and "--no-deps" in i and f"-r {lock_in_image}" in i for i in installs), installs
    project = [i for i in installs if f".[{EXTRAS[path]}]" in i]
    assert project and all("--no-index" in i for i in project), project
    others = [i for i in installs if i not in project and "--require-hashes" not in i]
    assert all(re.fullmatch(r'pip install --index-url "\$index" torch==[\d.]+', i) for i in others), others
    assert not others or path == TRAINER


@pytest.mark.parametrize("path", [OPERATOR, TRAINER], ids=["operator", "trainer"])
def test_lock_pins_every_requirement_of_the_extra_with_hashes(path: Path) -> None:
    lock = LOCKS[path]
    assert "scripts/lock" in lock.read_text().split("\n", 3)[1], f"{lock.name} was not written by scripts/lock"
    entries = locked(lock)
    assert entries
    pins: dict[str, list[str]] = {}
    for line, hashes in entries.items():
        requirement = Requirement(line)
        assert len(requirement.specifier) == 1 and next(iter(requirement.specifier)).operator == "==", line
        assert hashes, f"{lock.name}: {line} has no --hash"
        assert not VARIANT_SPECIFIC.match(requirement.name) or requirement.name == "torchao", line
        pins.setdefault(canonicalize_name(requirement.name), []).append(next(iter(requirement.specifier)).version)
    wanted = PYPROJECT["project"]["dependencies"] + PYPROJECT["project"]["optional-dependencies"][EXTRAS[path]]
    wanted += PYPROJECT["build-system"]["requires"]  # the project is built offline, without isolation
    for text in wanted:
        requirement = Requirement(text)
        if VARIANT_SPECIFIC.match(requirement.name):
            continue
        versions = pins.get(canonicalize_name(requirement.name))
        assert versions, f"{lock.name} lacks {requirement.name} (run scripts/lock)"
        assert all(requirement.specifier.contains(v, prereleases=True) for v in versions), \
            f"{lock.name}: {requirement.name} {versions} does not satisfy pyproject's {requirement} (run scripts/lock)"


def test_trainer_installs_the_torch_the_project_pins_for_its_variant() -> None:
    pinned = next(Requirement(r) for r in PYPROJECT["project"]["optional-dependencies"]["trainer"]
                  if Requirement(r).name == "torch")
    runs = " ".join(a for op, a in instructions(TRAINER) if op == "RUN")
    assert f"torch{pinned.specifier}" in runs
    # cuda: the wheel index of the base image's CUDA (12.8 -> cu128); cpu: the CPU wheels
    cuda = re.search(r"cuda:(\d+)\.(\d+)", base_images(TRAINER)[0])
    assert cuda, "the default base is a CUDA image"
    assert re.search(rf"cuda\)\s*index=\$\{{TORCH_INDEX:-https://download\.pytorch\.org/whl/cu{cuda[1]}{cuda[2]}\}}",
                     runs)
    assert re.search(r"cpu\)\s*index=\$\{TORCH_INDEX:-https://download\.pytorch\.org/whl/cpu\}", runs)
    assert "ARG VARIANT=cuda" in TRAINER.read_text()


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


def _ignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore leaves `path` out of the build context (the last matching pattern wins; `!`
    brings a path back)."""
    excluded = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        pat = pattern.lstrip("!").rstrip("/")
        if fnmatch.fnmatch(path, pat) or path.startswith(pat + "/"):
            excluded = not negated
    return excluded


@pytest.mark.parametrize("path", [OPERATOR, TRAINER], ids=["operator", "trainer"])
def test_copied_paths_exist_and_are_in_the_build_context(path: Path) -> None:
    ignored = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
               if ln.strip() and not ln.startswith("#")]
    copies = [args for op, args in instructions(path) if op == "COPY" and not args.startswith("--from")]
    assert copies, f"{path.name} copies nothing from the build context"
    for args in copies:
        for src in args.split()[:-1]:
            assert (ROOT / src).exists(), f"{path.name}: COPY {src} does not exist"
            assert not _ignored(src.rstrip("/"), ignored), f"{src} is excluded by .dockerignore"


def test_build_context_leaves_out_the_repo_clutter() -> None:
    patterns = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
                if ln.strip() and not ln.startswith("#")]
    for clutter in (".git", ".venv", "tests", "deploy/argocd", "helm/forge-operator/values.yaml", "operator/kubeconfig"):
        assert _ignored(clutter, patterns), clutter
    assert not _ignored("deploy/constraints/operator.txt", patterns)


def test_chart_defaults_reference_the_images_these_files_build() -> None:
    values = yaml.safe_load((ROOT / "helm" / "forge-operator" / "values.yaml").read_text())
    assert "forge-operator" in values["image"]["repository"]
    assert "forge-operator" in OPERATOR.read_text().split("docker build", 1)[1].splitlines()[0]
    assert values["trainer"]["image"] in TRAINER.read_text()
