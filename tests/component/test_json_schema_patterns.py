"""A json_schema task whose patterns backtrack catastrophically is stopped and counted as a bad task,
like the regex verifier's (issue 14, section 5): jsonschema matched them with `re`, no timeout."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from forge_trainer.train.sandbox import SandboxLimits
from forge_trainer.train.verifiers import RewardModel, json_schema

SLOW = r"(a|aa)+$"  # exponential in a backtracking engine, `regex` included
EVIL = "a" * 40 + "!"


def test_the_reported_pattern_is_judged_at_once() -> None:
    schema = {"type": "string", "pattern": "^(a+)+$"}  # exponential under `re`, linear under `regex`
    start = time.monotonic()
    miss = json_schema(json.dumps(EVIL), {"schema": schema})
    assert time.monotonic() - start < 10
    assert (miss.score, miss.reason) == (0.0, "failed")
    assert json_schema(json.dumps("aaaa"), {"schema": schema}).passed


@pytest.mark.parametrize("schema, completion", [
    ({"type": "string", "pattern": SLOW}, json.dumps(EVIL)),
    ({"type": "object", "patternProperties": {SLOW: {"type": "integer"}}}, json.dumps({EVIL: 1})),
    ({"type": "object", "properties": {"a": {}}, "patternProperties": {SLOW: {}}, "additionalProperties": False},
     json.dumps({EVIL: 1})),
])
def test_a_backtracking_schema_pattern_is_a_bad_task(schema: dict[str, Any], completion: str) -> None:
    start = time.monotonic()
    outcome = json_schema(completion, {"schema": schema})
    assert time.monotonic() - start < 10
    assert (outcome.score, outcome.reason) == (0.0, "bad_task")
    assert outcome.is_error
    assert "took longer than" in outcome.detail


def test_one_time_limit_covers_every_pattern_of_a_completion() -> None:
    # 20 slow strings: one second each would be 20 s; one deadline for the whole validation is ~1 s
    schema = {"type": "array", "items": {"type": "string", "pattern": SLOW}}
    start = time.monotonic()
    outcome = json_schema(json.dumps([EVIL] * 20), {"schema": schema})
    assert time.monotonic() - start < 10
    assert outcome.reason == "bad_task"


def test_patterns_still_validate_as_json_schema_says() -> None:
    schema = {"type": "object", "properties": {"id": {"type": "string", "pattern": "^[a-z]+-[0-9]+$"}},
              "patternProperties": {"^x-": {"type": "integer"}}, "additionalProperties": False,
              "required": ["id"]}
    assert json_schema('{"id": "ab-12", "x-n": 3}', {"schema": schema}).passed
    assert json_schema('{"id": "AB-12"}', {"schema": schema}).reason == "failed"  # pattern
    assert json_schema('{"id": "ab-12", "x-n": "3"}', {"schema": schema}).reason == "failed"  # patternProperties
    extra = json_schema('{"id": "ab-12", "other": 1}', {"schema": schema})
    assert extra.reason == "failed" and "'other'" in extra.detail  # additionalProperties


def test_unevaluated_properties_with_pattern_properties_is_refused() -> None:
    # jsonschema re-runs patternProperties with `re` inside unevaluatedProperties: no way to time it
    schema = {"type": "object", "patternProperties": {SLOW: {}}, "unevaluatedProperties": False}
    outcome = json_schema(json.dumps({EVIL: 1}), {"schema": schema})
    assert (outcome.score, outcome.reason) == (0.0, "bad_task")


def test_the_run_counts_it_and_scores_the_other_completions() -> None:
    model = RewardModel(None, SandboxLimits())
    good = {"prompt": "p", "schema": {"type": "string", "pattern": "^a+$"}}
    evil = {"prompt": "p", "schema": {"type": "string", "pattern": SLOW}}
    outcomes, stats = model.score(["p", "p"], [json.dumps("aaa"), json.dumps(EVIL)], [good, evil])
    assert [o.score for o in outcomes] == [1.0, 0.0]
    assert stats.errors == 1 and stats.reasons["bad_task"] == 1
