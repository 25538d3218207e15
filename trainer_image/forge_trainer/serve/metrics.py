"""Every Prometheus metric of the serving runtime, in one registry per server.

Counters and histograms are recorded when a request ends (or produces its first token); the batch
gauges are read from the engine at scrape time, so they never go stale.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class ServeMetrics:
    """The runtime's metrics; `render` gives the text exposition format."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("forge_serve_requests", "HTTP requests answered, by endpoint and status code",
                                ["endpoint", "status"], registry=self.registry)
        self.latency = Histogram("forge_serve_request_duration_seconds",
                                 "Time from receiving a request to sending its last byte", ["endpoint"],
                                 buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.time_to_first_token = Histogram("forge_serve_time_to_first_token_seconds",
                                             "Time from receiving a generation request to its first token",
                                             ["endpoint"], buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.prompt_tokens = Counter("forge_serve_prompt_tokens", "Prompt tokens processed",
                                     registry=self.registry)
        self.generated_tokens = Counter("forge_serve_generated_tokens", "Tokens generated",
                                        registry=self.registry)
        self.running = Gauge("forge_serve_running_sequences", "Sequences in the decoding batch now",
                             registry=self.registry)
        self.waiting = Gauge("forge_serve_waiting_requests", "Requests waiting for a place in the batch",
                             registry=self.registry)
        self.rejected = Counter("forge_serve_rejected_requests",
                                "Requests refused before any work, by reason: queue_full (429), body_too_large "
                                "(413), unauthorized (401)", ["reason"], registry=self.registry)
        for reason in ("queue_full", "body_too_large", "unauthorized"):
            self.rejected.labels(reason)  # every series from the start, so rate() sees the first rejection
        self.model_loaded = Gauge("forge_serve_model_loaded", "1 once the model is loaded and serving",
                                  registry=self.registry)

    def watch(self, running: Callable[[], float], waiting: Callable[[], float], steps: Callable[[], float]) -> None:
        """Read the batch gauges and the decoding step count from these functions at scrape time."""
        self.running.set_function(running)
        self.waiting.set_function(waiting)
        self.registry.register(_StepsCollector(steps))
        self.model_loaded.set(1)

    def render(self) -> bytes:
        """The metrics in the Prometheus text format."""
        return generate_latest(self.registry)


class _StepsCollector(Collector):
    """forge_serve_decode_steps_total, read from the engine: tokens generated over steps is the mean batch."""

    def __init__(self, steps: Callable[[], float]) -> None:
        self._steps = steps

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily("forge_serve_decode_steps", "Decoding steps run (each advances every running "
                                  "sequence by one token)", value=self._steps())
