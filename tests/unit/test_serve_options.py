"""`forge-trainer serve` refuses batching options it cannot honour, before loading anything."""

from __future__ import annotations

import pytest

from forge_trainer.errors import WorkloadError
from forge_trainer.serve.server import main


@pytest.mark.parametrize("option", ["--max-batch-size", "--max-prefill-tokens"])
def test_a_batching_limit_below_one_is_refused_with_its_name(option: str) -> None:
    with pytest.raises(WorkloadError, match=f"{option} must be at least 1, got 0"):
        main(["--model", "/nonexistent/model", "--model-name", "m", option, "0"])
