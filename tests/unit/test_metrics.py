"""The operator's scrape-time per-resource series (what a Prometheus scrape of the operator shows)."""

from __future__ import annotations

from prometheus_client import generate_latest

from forge_operator import metrics


def test_run_series_follow_the_status_and_vanish_on_delete() -> None:
    metrics.observe("ForgeTrainingRun", "ml", "llama", {"phase": "Running", "step": 40, "gpuHours": 12.5,
                                                        "mfu": 0.41})
    text = generate_latest(metrics.REGISTRY).decode()
    labels = 'name="llama",namespace="ml"'
    assert f"forge_run_step{{{labels}}} 40.0" in text
    assert f"forge_run_gpu_hours{{{labels}}} 12.5" in text
    assert f"forge_run_mfu{{{labels}}} 0.41" in text
    assert 'forge_resources{kind="ForgeTrainingRun",phase="Running"} 1.0' in text
    metrics.forget("ForgeTrainingRun", "ml", "llama")
    assert "forge_run_gpu_hours{" not in generate_latest(metrics.REGISTRY).decode()
