"""Task-completion rewards: the built-in verifiers and the sandboxed custom verifier.

A task is one record of an rl dataset: {"prompt": str} plus what counts as success for its
verifier — "answer" (exact_match), "pattern" (regex), "schema" (json_schema), "tool" and
"arguments" (tool_call), "tests" (python_tests: a list of assert statements or a code string).
A custom verifier is Python source defining `verify(prompt, completion, task) -> float` in [0, 1].

Every verifier returns an `Outcome`; none raises because of what a completion or a custom
verifier did. A completion that does not pass scores 0 with a reason; reasons other than `failed`
(crash, timeout, memory, invalid, no_result, bad_task) are verifier errors and are counted by
`RewardStats`.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import regex as regex_module

from forge_trainer.config import RewardConfig, VerifierKind
from forge_trainer.errors import ConfigError
from forge_trainer.train.sandbox import SandboxLimits, run_custom_verifier, run_python_tests

CUSTOM_VERIFIER_ENV = "FORGE_CUSTOM_VERIFIER"
"""Environment variable with the path of the mounted custom verifier source (the ConfigMap key)."""
DEFAULT_CUSTOM_VERIFIER_PATH = "/etc/forge/verifier/verifier.py"
"""Where the operator mounts the custom verifier's ConfigMap key when the variable is unset."""

FAILED = "failed"


@dataclass(frozen=True)
class Outcome:
    """The reward of one completion and, when it is not a pass, why."""

    score: float
    """Reward in [0, 1]."""
    reason: str | None = None
    """None for a pass; `failed` for a plain miss; anything else is a verifier error."""
    detail: str = ""
    """Short explanation, for logs."""

    @property
    def passed(self) -> bool:
        """The completion fully succeeded (reward 1)."""
        return self.score >= 1.0

    @property
    def is_error(self) -> bool:
        """The verifier crashed, timed out, ran out of memory or could not judge (scored 0)."""
        return self.reason is not None and self.reason != FAILED


PASS = Outcome(1.0)


def _miss(detail: str) -> Outcome:
    return Outcome(0.0, FAILED, detail)


def _bad_task(detail: str) -> Outcome:
    return Outcome(0.0, "bad_task", detail)


_FENCE = re.compile(r"```[A-Za-z0-9_+-]*\s*\n?(.*?)```", re.DOTALL)


def strip_fences(text: str) -> str:
    """The body of the first Markdown code fence in `text`, or `text` stripped when there is none."""
    m = _FENCE.search(text)
    return (m.group(1) if m else text).strip()


def _parse_json(text: str) -> tuple[bool, Any]:
    body = strip_fences(text)
    for candidate in (body, re.sub(r"^<tool_call>\s*|\s*</tool_call>$", "", body)):
        try:
            return True, json.loads(candidate)
        except json.JSONDecodeError:
            continue
    return False, None


def exact_match(completion: str, task: dict[str, Any]) -> Outcome:
    """Pass when the completion, stripped, equals the answer (or one of a list of answers)."""
    if "answer" not in task:
        return _bad_task("task has no 'answer'")
    answers = task["answer"] if isinstance(task["answer"], list) else [task["answer"]]
    got = completion.strip()
    for answer in answers:
        want = answer if isinstance(answer, str) else json.dumps(answer)
        if got == want.strip():
            return PASS
    return _miss(f"expected {answers!r}")


REGEX_TIMEOUT_SECONDS = 1.0


def regex(completion: str, task: dict[str, Any]) -> Outcome:
    """Pass when the whole stripped completion matches the task's `pattern`. A pattern that backtracks
    catastrophically on a completion is stopped after REGEX_TIMEOUT_SECONDS and counted as a bad task,
    so one record cannot stall an RL run (the `regex` module's timeout; same syntax as `re`)."""
    pattern = task.get("pattern")
    if not isinstance(pattern, str):
        return _bad_task("task has no string 'pattern'")
    try:
        compiled = regex_module.compile(pattern, regex_module.DOTALL)
    except regex_module.error as exc:
        return _bad_task(f"invalid pattern: {exc}")
    try:
        matched = compiled.fullmatch(completion.strip(), timeout=REGEX_TIMEOUT_SECONDS)
    except TimeoutError:
        return _bad_task(f"pattern {pattern!r} took longer than {REGEX_TIMEOUT_SECONDS:g} s on the completion")
    return PASS if matched else _miss(f"does not match {pattern!r}")


def json_schema(completion: str, task: dict[str, Any]) -> Outcome:
    """Pass when the completion (optionally in a code fence) parses as JSON and validates against `schema`.
    The schema's patterns run through the regex module like the regex verifier's, REGEX_TIMEOUT_SECONDS
    for the whole validation; a schema that takes longer is counted as a bad task."""
    import jsonschema

    from forge_trainer.train.schema_patterns import best_error, untimed_patterns

    schema = task.get("schema")
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except json.JSONDecodeError as exc:
            return _bad_task(f"schema is not JSON: {exc}")
    if not isinstance(schema, dict | bool):
        return _bad_task("task has no 'schema'")
    try:
        validator_cls = jsonschema.validators.validator_for(schema)
        validator_cls.check_schema(schema)
    except jsonschema.SchemaError as exc:
        return _bad_task(f"invalid schema: {exc.message}")
    if (why := untimed_patterns(schema)) is not None:
        return _bad_task(why)
    ok, value = _parse_json(completion)
    if not ok:
        return _miss("not JSON")
    try:
        error = best_error(validator_cls, schema, value, REGEX_TIMEOUT_SECONDS)
    except regex_module.error as exc:
        return _bad_task(f"invalid pattern in schema: {exc}")
    except TimeoutError:
        return _bad_task(f"schema patterns took longer than {REGEX_TIMEOUT_SECONDS:g} s on the completion")
    return PASS if error is None else _miss(error.message[:200])


def _as_call(value: Any) -> tuple[str, Any] | None:
    """(name, arguments) of a tool call in the common JSON shapes, or None."""
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if not isinstance(value, dict):
        return None
    if isinstance(value.get("function"), dict):  # OpenAI: {"type": "function", "function": {...}}
        value = value["function"]
    name = value.get("name", value.get("tool"))
    if not isinstance(name, str):
        return None
    args = value.get("arguments", value.get("parameters", {}))
    if isinstance(args, str):  # OpenAI sends arguments as a JSON string
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            return None
    return name, args


def tool_call(completion: str, task: dict[str, Any]) -> Outcome:
    """Pass when the completion is a JSON call of the task's `tool` with exactly its `arguments`.

    Accepted shapes: {"name"|"tool": ..., "arguments"|"parameters": {...}}, the OpenAI
    {"function": {"name", "arguments": "<json>"}}, a one-element list of either, optionally inside a
    code fence or <tool_call> tags."""
    if not isinstance(task.get("tool"), str):
        return _bad_task("task has no string 'tool'")
    ok, value = _parse_json(completion)
    if not ok:
        return _miss("not JSON")
    call = _as_call(value)
    if call is None:
        return _miss("not a tool call")
    name, args = call
    if name != task["tool"]:
        return _miss(f"called {name!r}, expected {task['tool']!r}")
    if args != task.get("arguments", {}):
        return _miss("wrong arguments")
    return PASS


def python_tests(completion: str, task: dict[str, Any], limits: SandboxLimits) -> Outcome:
    """Pass when the completion's code (the first code fence, else all of it) passes the task's `tests`."""
    tests = task.get("tests")
    if not (isinstance(tests, str) or (isinstance(tests, list) and all(isinstance(t, str) for t in tests))):
        return _bad_task("task 'tests' must be a code string or a list of assert statements")
    result = run_python_tests(strip_fences(completion), tests, limits)
    return Outcome(result.score, result.error, result.detail)


def custom(source: str, prompt: str, completion: str, task: dict[str, Any], limits: SandboxLimits) -> Outcome:
    """The score of the custom verifier's `verify()`, run in the sandbox."""
    result = run_custom_verifier(source, prompt, completion, task, limits)
    return Outcome(result.score, result.error, result.detail)


def read_custom_source(path: str | None = None) -> str:
    """The custom verifier's source: `path`, else $FORGE_CUSTOM_VERIFIER, else the default mount path."""
    where = Path(path or os.environ.get(CUSTOM_VERIFIER_ENV) or DEFAULT_CUSTOM_VERIFIER_PATH)
    try:
        return where.read_text()
    except OSError as exc:
        raise FileNotFoundError(f"custom verifier source {where}: {exc.strerror} (mount the ConfigMap key "
                                f"there or set {CUSTOM_VERIFIER_ENV})") from exc


Scorer = Callable[[str, str, dict[str, Any]], Outcome]
"""(prompt, completion, task) -> Outcome."""


def build_scorer(kind: VerifierKind, limits: SandboxLimits, custom_source: str | None = None) -> Scorer:
    """The scoring function for one verifier kind."""
    if kind is VerifierKind.EXACT_MATCH:
        return lambda _p, c, t: exact_match(c, t)
    if kind is VerifierKind.REGEX:
        return lambda _p, c, t: regex(c, t)
    if kind is VerifierKind.JSON_SCHEMA:
        return lambda _p, c, t: json_schema(c, t)
    if kind is VerifierKind.TOOL_CALL:
        return lambda _p, c, t: tool_call(c, t)
    if kind is VerifierKind.PYTHON_TESTS:
        return lambda _p, c, t: python_tests(c, t, limits)
    if custom_source is None:
        raise ValueError("the custom verifier needs its source")
    source = custom_source
    return lambda p, c, t: custom(source, p, c, t, limits)


def limits_of(reward: RewardConfig) -> SandboxLimits:
    """Sandbox limits from the run's reward settings."""
    return SandboxLimits(timeout_seconds=reward.timeout_seconds, memory_mb=reward.memory_mb)


_SANDBOXED = {VerifierKind.PYTHON_TESTS, VerifierKind.CUSTOM}
_BUILT_IN = {k.value for k in VerifierKind if k is not VerifierKind.CUSTOM}


def infer_kind(task: dict[str, Any]) -> VerifierKind:
    """The built-in verifier a task's fields call for (its `verifier` field first, then: tests ->
    python_tests, tool -> tool_call, schema -> json_schema, pattern -> regex, otherwise exact_match)."""
    named = task.get("verifier")
    if isinstance(named, str) and named in _BUILT_IN:
        return VerifierKind(named)
    for key, kind in (("tests", VerifierKind.PYTHON_TESTS), ("tool", VerifierKind.TOOL_CALL),
                      ("schema", VerifierKind.JSON_SCHEMA), ("pattern", VerifierKind.REGEX)):
        if key in task:
            return kind
    return VerifierKind.EXACT_MATCH


@dataclass
class RewardStats:
    """Outcomes counted over a step, an evaluation or a run."""

    total: int = 0
    passed: int = 0
    score_sum: float = 0.0
    reasons: Counter[str] = field(default_factory=Counter)

    def add(self, outcome: Outcome) -> None:
        """Count one outcome."""
        self.total += 1
        self.passed += outcome.passed
        self.score_sum += outcome.score
        if outcome.reason is not None:
            self.reasons[outcome.reason] += 1

    @property
    def errors(self) -> int:
        """Verifications that crashed, timed out, ran out of memory or could not judge."""
        return sum(n for reason, n in self.reasons.items() if reason != FAILED)

    @property
    def mean_reward(self) -> float:
        """Mean score (0 when nothing was scored)."""
        return self.score_sum / self.total if self.total else 0.0

    @property
    def success_rate(self) -> float:
        """Fraction of completions that fully passed."""
        return self.passed / self.total if self.total else 0.0


class RewardModel:
    """Scores completions of tasks; a task may name its own built-in verifier in a `verifier` field,
    otherwise the run's verifier applies (kind None: the one the task's fields call for, see
    `infer_kind`). Sandboxed verifiers run in parallel."""

    def __init__(self, kind: VerifierKind | None, limits: SandboxLimits, custom_source: str | None = None,
                 workers: int | None = None) -> None:
        self.kind = kind
        self.limits = limits
        self.custom_source = custom_source
        self.workers = workers or max(1, min(8, os.cpu_count() or 1))
        self.totals = RewardStats()
        self._scorers: dict[VerifierKind, Scorer] = {}

    @classmethod
    def from_config(cls, reward: RewardConfig | None) -> RewardModel:
        """The reward model a run's `rl.reward` describes (custom source read from its mount); without
        one, each task's own built-in verifier. A custom source that cannot be read is a ConfigError."""
        if reward is None:
            return cls(None, SandboxLimits())
        try:
            source = read_custom_source() if reward.verifier is VerifierKind.CUSTOM else None
        except FileNotFoundError as exc:
            raise ConfigError(f"rl.reward.customSource: {exc}") from exc
        return cls(reward.verifier, limits_of(reward), source)

    def kind_of(self, task: dict[str, Any]) -> VerifierKind:
        """The verifier that judges `task`: its own `verifier` field when that names a built-in one."""
        named = task.get("verifier")
        if isinstance(named, str) and named in _BUILT_IN:
            return VerifierKind(named)
        return self.kind if self.kind is not None else infer_kind(task)

    def score_one(self, prompt: str, completion: str, task: dict[str, Any]) -> Outcome:
        """The outcome of one completion."""
        kind = self.kind_of(task)
        if kind not in self._scorers:
            self._scorers[kind] = build_scorer(kind, self.limits, self.custom_source)
        return self._scorers[kind](prompt, completion, task)

    def score(self, prompts: Sequence[str], completions: Sequence[str],
              tasks: Sequence[dict[str, Any]]) -> tuple[list[Outcome], RewardStats]:
        """Outcomes for each (prompt, completion, task), and their counts (also added to `totals`)."""
        args = list(zip(prompts, completions, tasks, strict=True))
        sandboxed = any(self.kind_of(t) in _SANDBOXED for t in tasks)
        if sandboxed and len(args) > 1:
            for kind in {self.kind_of(t) for t in tasks}:  # build scorers before threads share the cache
                self._scorers.setdefault(kind, build_scorer(kind, self.limits, self.custom_source))
            with ThreadPoolExecutor(self.workers) as pool:
                outcomes = list(pool.map(lambda a: self.score_one(*a), args))
        else:
            outcomes = [self.score_one(*a) for a in args]
        stats = RewardStats()
        for outcome in outcomes:
            stats.add(outcome)
            self.totals.add(outcome)
        return outcomes, stats
