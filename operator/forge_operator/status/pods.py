"""What a workload's pods say about why it does not run: the one pod that is stuck or failed (its name,
rank, node, the category of trouble, the scheduler's or kubelet's own message and since when), read from
the Pod objects as the API returns them; the PodsReady and Stalled conditions that carry it; and the
redaction that keeps secrets out of the log lines quoted with a failure."""

from __future__ import annotations

import re
import signal
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from forge_operator.api.common import ConditionStatus, ResourceStatus, parse_time, rfc3339
from forge_operator.status.conditions import PODS_READY, STALLED, get_condition, mark

INDEX_KEY = "batch.kubernetes.io/job-completion-index"
"""Label (1.28+) and annotation (1.21+) an Indexed Job's pod carries its completion index (its rank) in."""
INDEX_ENV = "JOB_COMPLETION_INDEX"
LOG_MARKER = "\nlast log lines of container "
"""Separates the summary of a failure from the log lines quoted after it."""
LOG_TAIL_LINES = 20
LOG_LIMIT_BYTES = 2048
_IMAGE_PULL = {"ErrImagePull", "ImagePullBackOff", "ErrImageNeverPull", "InvalidImageName",
               "RegistryUnavailable", "ImageInspectError"}
_CONTAINER_CONFIG = {"CreateContainerConfigError", "CreateContainerError", "RunContainerError",
                     "PreCreateHookError", "PreStartHookError", "PostStartHookError"}
_NORMAL_WAITING = {"ContainerCreating", "PodInitializing"}


class Trouble(StrEnum):
    """Why a pod does not run: the reason of the PodsReady condition and of the Warning Event."""

    NODE_LOST = "NodeLost"
    """Its node stopped answering (the pod's deletion never completed, or the node controller said so)."""
    EVICTED = "Evicted"
    """The kubelet or an eviction (drain, preemption) removed it."""
    OOM_KILLED = "OOMKilled"
    """A container exceeded its memory limit and the kernel killed it."""
    SIGNAL = "Signal"
    """A container was killed by a signal (exit code above 128)."""
    EXIT_CODE = "ExitCode"
    """A container exited with a non-zero code."""
    CRASH_LOOP = "CrashLoop"
    """A container keeps failing and the kubelet backs off restarting it."""
    CONTAINER_CONFIG = "ContainerConfig"
    """The container cannot be created (a missing Secret or ConfigMap key, a bad command)."""
    IMAGE_PULL = "ImagePull"
    """The image cannot be pulled (or is absent with a pull policy that forbids pulling)."""
    UNSCHEDULABLE = "Unschedulable"
    """The scheduler finds no node for it."""
    PENDING = "Pending"
    """Not started yet and nothing says why (normal at first; stalled after podsStalledAfter)."""

    @property
    def failed(self) -> bool:
        """Whether a container ended (its log tells why), as opposed to a pod that waits to start."""
        return self in (Trouble.OOM_KILLED, Trouble.SIGNAL, Trouble.EXIT_CODE, Trouble.CRASH_LOOP)

    @property
    def waiting(self) -> bool:
        """Whether the pod may still start by itself (and so stalls after a while)."""
        return self in (Trouble.CRASH_LOOP, Trouble.CONTAINER_CONFIG, Trouble.IMAGE_PULL, Trouble.UNSCHEDULABLE,
                        Trouble.PENDING)


_TERMINAL = (Trouble.NODE_LOST, Trouble.EVICTED, Trouble.OOM_KILLED, Trouble.SIGNAL, Trouble.EXIT_CODE)
_SEVERITY = list(Trouble)
_REASONS = frozenset(t.value for t in Trouble)


@dataclass(frozen=True)
class PodTrouble:
    """The pod that explains why a workload does not run."""

    pod: str
    trouble: Trouble
    message: str
    """The scheduler's or kubelet's words (or ours, where they say nothing)."""
    since: str | None
    """When it started (RFC 3339): the condition's lastTransitionTime, the container's finishedAt, ..."""
    rank: str | None = None
    """Its rank (the Job completion index), where the pod carries one."""
    node: str | None = None
    container: str | None = None
    previous: bool = False
    """The container's log to quote is that of its previous instance (it restarted)."""

    @property
    def summary(self) -> str:
        """One line naming the pod, its rank and node, the category and the message."""
        rank = f" (rank {self.rank})" if self.rank is not None else ""
        where = f" on node {self.node}" if self.node else (" (not scheduled)" if self.trouble is Trouble.UNSCHEDULABLE
                                                            else "")
        since = f" (since {self.since})" if self.since else ""
        return f"pod {self.pod}{rank}{where}: {self.trouble.value}: {self.message}{since}"


@dataclass(frozen=True)
class PodsSeen:
    """A workload's pods as one reconcile saw them."""

    total: int = 0
    """Pods that count (not the ones stopping normally)."""
    ready: int = 0
    """Ready pods, plus pods that finished successfully."""
    running: int = 0
    """Pods with a running container and no trouble."""
    trouble: PodTrouble | None = None
    """The pod that explains most (the earliest failure, else the most severe wait)."""
    troubled: int = 0
    """Pods with some trouble, `trouble` included."""
    logs: str | None = None
    """The failing container's last log lines, redacted (the handler reads them)."""

    @property
    def needs_logs(self) -> bool:
        """Whether the trouble is a container that ended, whose log says why."""
        return self.trouble is not None and self.trouble.trouble.failed and self.trouble.container is not None

    @property
    def cause(self) -> PodTrouble | None:
        """The trouble, unless it is only a pod that has not started yet."""
        return self.trouble if self.trouble is not None and self.trouble.trouble is not Trouble.PENDING else None

    @property
    def blocking(self) -> PodTrouble | None:
        """The trouble when it keeps every pod from running: something waits for a cause, or waited past
        its time, and no pod runs (a plain Pending pod is not a cause by itself)."""
        found = self.trouble
        if found is None or self.running or not found.trouble.waiting or found.trouble is Trouble.PENDING:
            return None
        return found

    def headline(self) -> str:
        """The trouble in one line, and how many more pods have one."""
        if self.trouble is None:
            return ""
        more = f" (and {self.troubled - 1} more pod(s) with trouble)" if self.troubled > 1 else ""
        return f"{self.trouble.summary}{more}"

    def text(self) -> str:
        """The PodsReady message: the headline and the quoted log lines."""
        if self.trouble is None:
            return ""
        logs = f"{LOG_MARKER}{self.trouble.container}:\n{self.logs}" if self.logs else ""
        return f"{self.headline()}{logs}"


def observe_pods(pods: Iterable[dict[str, Any]], now: datetime, owners: Collection[str] | None = None) -> PodsSeen:
    """What these pods say (`owners`: count only pods owned by one of these uids, e.g. the Job of the current
    attempt). Pods that are stopping within their grace period are left out; one still
    listed after its deletion deadline sits on a node that no longer answers."""
    total = ready = running = 0
    troubles: list[PodTrouble] = []
    for pod in pods:
        meta = pod.get("metadata") or {}
        if owners is not None and not any(o.get("uid") in owners for o in meta.get("ownerReferences") or []):
            continue
        deadline = parse_time(meta.get("deletionTimestamp"))
        if deadline is not None and deadline > now:
            continue
        total += 1
        found = pod_trouble(pod, now)
        if found is not None:
            troubles.append(found)
            continue
        status = pod.get("status") or {}
        phase = status.get("phase")
        if phase == "Succeeded" or _condition(status, "Ready").get("status") == "True":
            ready += 1
        if phase == "Running":
            running += 1
    if not troubles:
        return PodsSeen(total=total, ready=ready, running=running)
    real = [t for t in troubles if t.trouble is not Trouble.PENDING]  # not started yet is no trouble by itself
    return PodsSeen(total=total, ready=ready, running=running, trouble=min(troubles, key=_explains_most),
                    troubled=len(real) or len(troubles))


def _explains_most(found: PodTrouble) -> tuple[int, int, str, str, str]:
    """Sort key: a container or pod that ended before one that waits, the earliest ending first (in a
    distributed job the first failure is the cause, the others follow it); waits by severity."""
    if found.trouble in _TERMINAL:
        return 0, 0, found.since or "~", found.rank or "~", found.pod
    return 1, _SEVERITY.index(found.trouble), found.since or "~", found.rank or "~", found.pod


def pod_rank(pod: dict[str, Any]) -> str | None:
    """The pod's rank: its Job completion index from the label, the annotation, or a literal env value."""
    meta = pod.get("metadata") or {}
    for where in (meta.get("labels") or {}, meta.get("annotations") or {}):
        if where.get(INDEX_KEY) is not None:
            return str(where[INDEX_KEY])
    for container in (pod.get("spec") or {}).get("containers") or []:
        for env in container.get("env") or []:
            if env.get("name") == INDEX_ENV and env.get("value") is not None:
                return str(env["value"])
    return None


def pod_trouble(pod: dict[str, Any], now: datetime) -> PodTrouble | None:
    """Why this one pod is stuck or failed, or None when nothing is wrong with it (yet)."""
    meta, spec, status = pod.get("metadata") or {}, pod.get("spec") or {}, pod.get("status") or {}
    name = str(meta.get("name") or "?")
    rank, node = pod_rank(pod), spec.get("nodeName") or None
    phase = status.get("phase")
    if phase == "Succeeded":
        return None

    def found(trouble: Trouble, message: str, since: str | None, container: str | None = None,
              previous: bool = False) -> PodTrouble:
        return PodTrouble(name, trouble, _one_line(message), since, rank, node, container, previous)

    reason = status.get("reason")
    deadline = parse_time(meta.get("deletionTimestamp"))
    if reason == "NodeLost" or (deadline is not None and deadline <= now and phase not in ("Failed",)):
        return found(Trouble.NODE_LOST, status.get("message") or (
            f"its deletion did not complete by {meta.get('deletionTimestamp')}: node {node or '?'} does not answer"),
            meta.get("deletionTimestamp") or _ready_since(status))
    disruption = _condition(status, "DisruptionTarget")
    if disruption.get("status") == "True" and disruption.get("reason") == "DeletionByTaintManager":
        return found(Trouble.NODE_LOST, disruption.get("message") or "its node is unreachable",
                     disruption.get("lastTransitionTime"))
    if reason in ("Evicted", "Preempting") or (disruption.get("status") == "True" and phase == "Failed"):
        return found(Trouble.EVICTED, status.get("message") or disruption.get("message") or str(reason),
                     disruption.get("lastTransitionTime") or _ready_since(status))
    limits = {c.get("name"): ((c.get("resources") or {}).get("limits") or {}).get("memory")
              for c in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]}
    # init containers first: the main containers wait for them
    for cstatus in [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]:
        container = _container_trouble(cstatus, limits.get(cstatus.get("name")), phase)
        if container is not None:
            trouble, message, since, previous = container
            return found(trouble, message, since or _ready_since(status), cstatus.get("name"), previous)
    scheduled = _condition(status, "PodScheduled")
    if scheduled.get("status") == "False":
        return found(Trouble.UNSCHEDULABLE, scheduled.get("message") or scheduled.get("reason") or "not scheduled",
                     scheduled.get("lastTransitionTime") or meta.get("creationTimestamp"))
    if phase == "Failed":
        return found(Trouble.EXIT_CODE, status.get("message") or reason or "the pod failed", _ready_since(status))
    if phase in (None, "Pending", "Unknown"):
        return found(Trouble.PENDING, "not started yet", meta.get("creationTimestamp") or status.get("startTime"))
    return None


def _container_trouble(cstatus: dict[str, Any], memory_limit: str | None,
                       phase: str | None) -> tuple[Trouble, str, str | None, bool] | None:
    """(category, message, since, whether the log to quote is the previous instance's) of one container."""
    name = cstatus.get("name")
    state = cstatus.get("state") or {}
    waiting, terminated = state.get("waiting"), state.get("terminated")
    if waiting:
        why, said = waiting.get("reason") or "", waiting.get("message") or ""
        if why in _IMAGE_PULL:
            return Trouble.IMAGE_PULL, f"container {name}: {why}: {said or cstatus.get('image') or ''}", None, False
        if why in _CONTAINER_CONFIG:
            return Trouble.CONTAINER_CONFIG, f"container {name}: {why}: {said}", None, False
        if why == "CrashLoopBackOff":
            last = (cstatus.get("lastState") or {}).get("terminated") or {}
            ended = f"; last exit: {exit_text(last, memory_limit)}" if last else ""
            return (Trouble.CRASH_LOOP, f"container {name} restarted {cstatus.get('restartCount') or 0} times{ended}",
                    last.get("finishedAt"), bool(last))
        if why and why not in _NORMAL_WAITING:
            return Trouble.CONTAINER_CONFIG, f"container {name}: {why}: {said}", None, False
        return None
    if terminated and (terminated.get("exitCode") or 0) != 0:
        if phase == "Running" and cstatus.get("restartCount"):
            return None  # restarting under restartPolicy Always: CrashLoopBackOff says so if it keeps failing
        return (_terminated_category(terminated), f"container {name} {exit_text(terminated, memory_limit)}",
                terminated.get("finishedAt"), False)
    return None


def _terminated_category(terminated: dict[str, Any]) -> Trouble:
    if terminated.get("reason") == "OOMKilled":
        return Trouble.OOM_KILLED
    if terminated.get("signal") or int(terminated.get("exitCode") or 0) > 128:
        return Trouble.SIGNAL
    return Trouble.EXIT_CODE


def exit_text(terminated: dict[str, Any], memory_limit: str | None = None) -> str:
    """How a container ended, in words: `exceeded its memory limit 8Gi (OOMKilled, exit code 137)`,
    `was killed by SIGKILL (exit code 137)`, `exited with code 1 (Error)`, with its message if any."""
    code = int(terminated.get("exitCode") or 0)
    reason = terminated.get("reason") or ""
    said = f": {terminated['message']}" if terminated.get("message") else ""
    if reason == "OOMKilled":
        limit = f" {memory_limit}" if memory_limit else ""
        return f"exceeded its memory limit{limit} (OOMKilled, exit code {code}){said}"
    number = int(terminated.get("signal") or 0) or (code - 128 if code > 128 else 0)
    if number:
        return f"was killed by {signal_name(number)} (exit code {code}){said}"
    return f"exited with code {code}{f' ({reason})' if reason else ''}{said}"


def signal_name(number: int) -> str:
    """SIGKILL for 9; `signal 77` for a number this platform does not name."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or [] if c.get("type") == type_), {})


def _ready_since(status: dict[str, Any]) -> str | None:
    """When the pod stopped being ready (the best time a kubelet gives for a waiting container)."""
    ready = _condition(status, "Ready")
    return ready.get("lastTransitionTime") or status.get("startTime")


def _one_line(text: str) -> str:
    return " ".join(str(text).split()).rstrip(".") if text else ""


# --- conditions --------------------------------------------------------------------------------------


def pods_stalled(seen: PodsSeen | None, now: datetime, stalled_after: float) -> bool:
    """Whether the pods have waited to start for longer than `stalled_after` seconds (nothing runs)."""
    found = seen.trouble if seen is not None else None
    if found is None or not found.trouble.waiting or seen is None or seen.running:
        return False
    since = parse_time(found.since)
    return since is not None and now - since > timedelta(seconds=stalled_after)


def mark_pods(status: ResourceStatus, seen: PodsSeen | None, now: datetime, stalled_after: float) -> bool:
    """Set PodsReady (and Stalled, on a kind without its own stall notion: `status` without one keeps
    none) from what the pods say; untouched when they were not looked at. Returns whether the pods have
    stalled. PodsReady is False with the trouble's category as its reason, or while pods start."""
    if seen is None:
        return False
    stamp = rfc3339(now)
    stalled = pods_stalled(seen, now, stalled_after)
    if seen.trouble is not None:
        mark(status, PODS_READY, ConditionStatus.FALSE, seen.trouble.trouble.value, seen.text(), stamp)
    elif seen.total and seen.ready == seen.total:
        mark(status, PODS_READY, ConditionStatus.TRUE, "Ready", f"{seen.ready}/{seen.total} pod(s) ready", stamp)
    elif seen.total:
        mark(status, PODS_READY, ConditionStatus.FALSE, "Starting",
             f"{seen.ready}/{seen.total} pod(s) ready, none failing", stamp)
    elif get_condition(status.conditions, PODS_READY) is not None:
        mark(status, PODS_READY, ConditionStatus.FALSE, "NoPods", "no pods", stamp)
    return stalled


def stalled_text(seen: PodsSeen, stalled_after: float) -> str:
    """The Stalled message: how long is too long, and the pod that waits."""
    assert seen.trouble is not None
    return f"no pod has started for more than {int(stalled_after)}s (podsStalledAfter): {seen.trouble.summary}"


def mark_pods_stalled(status: ResourceStatus, seen: PodsSeen | None, stalled: bool, stalled_after: float,
                      now: str) -> None:
    """The Stalled condition of a kind whose only stall is pods that do not start."""
    if stalled and seen is not None and seen.trouble is not None:
        mark(status, STALLED, ConditionStatus.TRUE, seen.trouble.trouble.value, stalled_text(seen, stalled_after), now)
    elif get_condition(status.conditions, STALLED) is not None or seen is not None:
        mark(status, STALLED, ConditionStatus.FALSE, "Progressing", "", now)


def pods_event(prev: ResourceStatus, new: ResourceStatus) -> tuple[str, str] | None:
    """The Warning Event (reason, message) a reconcile owes: PodsReady turned False with a trouble, or the
    trouble changed, or the pods have now stalled; None when nothing changed (not every tick)."""
    cond, old = get_condition(new.conditions, PODS_READY), get_condition(prev.conditions, PODS_READY)
    stalled, was_stalled = get_condition(new.conditions, STALLED), get_condition(prev.conditions, STALLED)
    if (stalled is not None and stalled.status is ConditionStatus.TRUE and stalled.reason in _REASONS
            and (was_stalled is None or was_stalled.status is not ConditionStatus.TRUE)):
        return "Stalled", stalled.message
    if cond is None or cond.status is not ConditionStatus.FALSE or cond.reason not in _REASONS:
        return None
    if cond.reason == Trouble.PENDING:
        return None  # a pod that has not started yet is not news
    if old is not None and (old.status, old.reason, old.message) == (cond.status, cond.reason, cond.message):
        return None
    return cond.reason, cond.message


# --- log lines ---------------------------------------------------------------------------------------

SECRET_WORDS = ("KEY", "SECRET", "TOKEN", "PASSWORD", "PASSWD", "CREDENTIAL")
"""A name with one of these in it (any case) holds a secret: its value never reaches a status."""
_SECRET_NAME = rf"[\w.-]*(?:{'|'.join(SECRET_WORDS)})[\w.-]*"
_KEY_VALUE = re.compile(rf"""(?i)(["']?{_SECRET_NAME}["']?\s*[=:]\s*)("[^"]*"|'[^']*'|[^\s,;&]+)""")
_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s:@]+:[^/\s@]+@")
_TOKEN_SHAPES = re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b|\beyJ[\w-]{8,}\.[\w-]{8,}\.[\w-]*|(?i:bearer)\s+[\w.~+/-]{8,}=*")
REDACTED = "[REDACTED]"


def secret_env_names(pod: dict[str, Any]) -> list[str]:
    """Names of the env vars the pod takes from Secrets (secretKeyRef): their values never reach a status."""
    spec = pod.get("spec") or {}
    return sorted({str(env["name"]) for c in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]
                   for env in c.get("env") or []
                   if env.get("name") and ((env.get("valueFrom") or {}).get("secretKeyRef") is not None)})


def redact_log(text: str, secret_names: Iterable[str] = (), secret_values: Iterable[str] = ()) -> str:
    """`text` with every known secret value, the value of every `NAME=value` / `"name": value` whose name
    says key, secret, token or password (or is a Secret-backed env var of the pod), credentials in URLs,
    and token-shaped strings replaced by [REDACTED]."""
    for value in sorted({v for v in secret_values if len(v) >= 4}, key=len, reverse=True):
        text = text.replace(value, REDACTED)
    names = [re.escape(n) for n in secret_names if n]
    if names:
        named = re.compile(rf"""(["']?(?:{"|".join(names)})["']?\s*[=:]\s*)("[^"]*"|'[^']*'|[^\s,;&]+)""")
        text = named.sub(lambda m: m.group(1) + REDACTED, text)
    text = _KEY_VALUE.sub(lambda m: m.group(1) + REDACTED, text)
    text = _URL_USERINFO.sub(lambda m: m.group(1) + REDACTED + "@", text)
    return _TOKEN_SHAPES.sub(REDACTED, text)


def log_tail(text: str, lines: int = LOG_TAIL_LINES, limit: int = LOG_LIMIT_BYTES) -> str:
    """The last `lines` lines of `text` within `limit` bytes (whole lines where possible; the API server
    may ignore tailLines/limitBytes, and a single line may be longer than the limit)."""
    kept = text.rstrip("\n").splitlines()[-lines:]
    out = "\n".join(kept)
    while len(out.encode()) > limit and len(kept) > 1:
        kept = kept[1:]
        out = "\n".join(kept)
    data = out.encode()
    return data[-limit:].decode(errors="ignore") if len(data) > limit else out


def quoted_logs(message: str | None, summary: str) -> str | None:
    """The log lines an earlier PodsReady message quoted for the same trouble (so they are read once per
    failure, not every reconcile); None when the message is about something else."""
    if not message or not message.startswith(summary) or LOG_MARKER not in message:
        return None
    _, _, quoted = message.split(LOG_MARKER, 1)[1].partition(":\n")  # "<container>:\n<lines>"
    return quoted or None
