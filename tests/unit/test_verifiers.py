"""Each built-in verifier accepts what it should and rejects what it should."""

from __future__ import annotations

import json

import pytest

from forge_trainer.config import RewardConfig, VerifierKind
from forge_trainer.train.sandbox import SandboxLimits
from forge_trainer.train.verifiers import (
    RewardModel,
    exact_match,
    json_schema,
    python_tests,
    regex,
    tool_call,
)

LIMITS = SandboxLimits(timeout_seconds=5.0, memory_mb=256)


@pytest.mark.parametrize(("completion", "task", "passed"), [
    ("42", {"answer": "42"}, True),
    ("  42\n", {"answer": "42"}, True),
    ("42", {"answer": 42}, True),
    ("Paris", {"answer": ["paris", "Paris"]}, True),
    ("43", {"answer": "42"}, False),
    ("the answer is 42", {"answer": "42"}, False),
])
def test_exact_match(completion: str, task: dict[str, object], passed: bool) -> None:
    assert exact_match(completion, task).passed is passed


def test_exact_match_without_answer_is_a_counted_error_not_a_crash() -> None:
    outcome = exact_match("42", {"prompt": "?"})
    assert outcome.score == 0.0 and outcome.is_error


@pytest.mark.parametrize(("completion", "pattern", "passed"), [
    ("2024-01-31", r"\d{4}-\d{2}-\d{2}", True),
    (" 2024-01-31 ", r"\d{4}-\d{2}-\d{2}", True),
    ("date: 2024-01-31", r"\d{4}-\d{2}-\d{2}", False),
    ("2024-1-31", r"\d{4}-\d{2}-\d{2}", False),
])
def test_regex_matches_the_whole_completion(completion: str, pattern: str, passed: bool) -> None:
    assert regex(completion, {"pattern": pattern}).passed is passed


def test_regex_with_an_invalid_pattern_scores_zero_and_is_counted() -> None:
    outcome = regex("x", {"pattern": "("})
    assert outcome.score == 0.0 and outcome.is_error


SCHEMA = {"type": "object", "properties": {"sum": {"type": "integer"}}, "required": ["sum"],
          "additionalProperties": False}


@pytest.mark.parametrize(("completion", "passed"), [
    ('{"sum": 7}', True),
    ('```json\n{"sum": 7}\n```', True),
    ('{"sum": "7"}', False),
    ('{"total": 7}', False),
    ('{"sum": 7, "extra": 1}', False),
    ("sum is 7", False),
])
def test_json_schema(completion: str, passed: bool) -> None:
    assert json_schema(completion, {"schema": SCHEMA}).passed is passed


def test_json_schema_accepts_a_schema_given_as_a_string() -> None:
    assert json_schema('{"sum": 1}', {"schema": json.dumps(SCHEMA)}).passed


TOOL_TASK = {"tool": "get_weather", "arguments": {"city": "Oslo", "unit": "C"}}


@pytest.mark.parametrize(("completion", "passed"), [
    ('{"name": "get_weather", "arguments": {"city": "Oslo", "unit": "C"}}', True),
    ('{"tool": "get_weather", "arguments": {"unit": "C", "city": "Oslo"}}', True),
    ('{"type": "function", "function": {"name": "get_weather", '
     '"arguments": "{\\"city\\": \\"Oslo\\", \\"unit\\": \\"C\\"}"}}', True),
    ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo", "unit": "C"}}\n</tool_call>', True),
    ('{"name": "get_time", "arguments": {"city": "Oslo", "unit": "C"}}', False),
    ('{"name": "get_weather", "arguments": {"city": "Bergen", "unit": "C"}}', False),
    ('{"name": "get_weather", "arguments": {"city": "Oslo"}}', False),
    ("get_weather(city='Oslo')", False),
])
def test_tool_call(completion: str, passed: bool) -> None:
    assert tool_call(completion, TOOL_TASK).passed is passed


ADD_TESTS = ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"]


def test_python_tests_accepts_correct_code_in_a_fence() -> None:
    outcome = python_tests("Here you go:\n```python\ndef add(a, b):\n    return a + b\n```", {"tests": ADD_TESTS},
                           LIMITS)
    assert outcome.passed, outcome


def test_python_tests_accepts_tests_as_one_code_string() -> None:
    outcome = python_tests("def add(a, b):\n    return a + b", {"tests": "\n".join(ADD_TESTS)}, LIMITS)
    assert outcome.passed, outcome


def test_python_tests_rejects_wrong_code_as_a_plain_failure() -> None:
    outcome = python_tests("def add(a, b):\n    return a - b", {"tests": ADD_TESTS}, LIMITS)
    assert outcome.score == 0.0 and outcome.reason == "failed" and not outcome.is_error


def test_python_tests_code_that_raises_is_a_plain_failure() -> None:
    outcome = python_tests("def add(a, b) return a", {"tests": ADD_TESTS}, LIMITS)
    assert (outcome.score, outcome.reason, outcome.is_error) == (0.0, "failed", False)
    assert "SyntaxError" in outcome.detail


def test_python_tests_rejects_code_that_exits_before_the_tests_run() -> None:
    outcome = python_tests("import sys\nsys.exit(0)", {"tests": ADD_TESTS}, LIMITS)
    assert outcome.score == 0.0
    outcome = python_tests("import os\nos._exit(0)", {"tests": ADD_TESTS}, LIMITS)
    assert outcome.score == 0.0


def test_python_tests_output_cannot_forge_a_pass() -> None:
    code = 'print(\'{"score": 1.0}\')\nimport sys\nsys.stderr.write(\'{"score": 1.0}\')\nraise SystemExit(0)'
    assert python_tests(code, {"tests": ADD_TESTS}, LIMITS).score == 0.0


def test_reward_model_counts_success_and_mean() -> None:
    model = RewardModel.from_config(RewardConfig(verifier=VerifierKind.EXACT_MATCH))
    tasks = [{"prompt": "1+1", "answer": "2"}, {"prompt": "2+2", "answer": "4"}, {"prompt": "3+3", "answer": "6"}]
    outcomes, stats = model.score([t["prompt"] for t in tasks], ["2", "5", "6"], tasks)
    assert [o.passed for o in outcomes] == [True, False, True]
    assert stats.success_rate == pytest.approx(2 / 3) and stats.mean_reward == pytest.approx(2 / 3)
    assert stats.errors == 0 and model.totals.total == 3


def test_a_task_may_name_its_own_verifier() -> None:
    model = RewardModel(VerifierKind.EXACT_MATCH, LIMITS)
    tasks = [{"prompt": "a date", "verifier": "regex", "pattern": r"\d+"}, {"prompt": "x", "answer": "x"}]
    outcomes, _ = model.score(["", ""], ["123", "x"], tasks)
    assert all(o.passed for o in outcomes)
