"""`forge-trainer serve` refuses options it cannot honour, before loading anything."""

from __future__ import annotations

import os

import pytest

from forge_trainer.errors import WorkloadError
from forge_trainer.serve.server import API_KEY_ENV, METRICS_API_KEY_ENV, build_parser, limits_from_args, main


@pytest.mark.parametrize("option", ["--max-batch-size", "--max-prefill-tokens"])
def test_a_batching_limit_below_one_is_refused_with_its_name(option: str) -> None:
    with pytest.raises(WorkloadError, match=f"{option} must be at least 1, got 0"):
        main(["--model", "/nonexistent/model", "--model-name", "m", option, "0"])


def test_api_key_comes_from_the_environment_and_leaves_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(API_KEY_ENV, "sk-from-secret")
    limits = limits_from_args(build_parser().parse_args(["--model", "m", "--model-name", "m"]))
    assert limits.api_key == "sk-from-secret" and limits.metrics_api_key is None
    assert API_KEY_ENV not in os.environ  # no child process inherits it


@pytest.mark.parametrize(("argv", "env", "message"), [
    ([], {API_KEY_ENV: ""}, "--api-key / FORGE_API_KEY is set but empty"),
    (["--api-key", " "], {}, "--api-key / FORGE_API_KEY is set but empty"),
    ([], {METRICS_API_KEY_ENV: ""}, "--metrics-api-key / FORGE_METRICS_API_KEY is set but empty"),
    (["--max-body-bytes", "0"], {}, "--max-body-bytes must be at least 1, got 0"),
    (["--max-waiting", "-1"], {}, "--max-waiting must be at least 0, got -1"),
])
def test_a_key_set_but_empty_or_a_bad_limit_is_refused(monkeypatch: pytest.MonkeyPatch, argv: list[str],
                                                       env: dict[str, str], message: str) -> None:
    """An empty key from a misfilled Secret must not silently serve an open API."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(WorkloadError, match=message):
        main(["--model", "/nonexistent/model", "--model-name", "m", *argv])
