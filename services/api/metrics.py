"""Prometheus metrics for ``GET /metrics``.

- ``falcon_lite_runs{status}``: runs by status,
- ``falcon_lite_samples{status, origin}``: buffered samples over all runs (``PURGED`` too),
- ``falcon_lite_run_step{run}`` and ``falcon_lite_run_steps_per_second{run}``: progress per
  run; the rate is the step difference between two scrapes over their time difference,
- ``falcon_lite_http_request_duration_seconds{method, route, status}``: request latency.

Each app gets its own ``CollectorRegistry`` so that several apps in one process (tests) do
not collide. The database snapshot comes from a callable so that this module stays free
of storage details.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import GaugeMetricFamily


@dataclass
class Snapshot:
    """What the database says right now."""

    runs_by_status: dict[str, int] = field(default_factory=dict)
    samples: dict[tuple[str, str], int] = field(default_factory=dict)
    steps: dict[int, int] = field(default_factory=dict)  # run id -> step (live runs)


class _StoreCollector:
    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        self.snapshot = snapshot
        self._last: dict[int, tuple[int, float]] = {}

    def describe(self):
        return []

    def collect(self):
        snap = self.snapshot()
        now = time.monotonic()
        runs = GaugeMetricFamily("falcon_lite_runs", "Runs by status.", labels=["status"])
        for status, n in sorted(snap.runs_by_status.items()):
            runs.add_metric([status], n)
        samples = GaugeMetricFamily(
            "falcon_lite_samples", "Buffered samples by status and origin.", labels=["status", "origin"]
        )
        for (status, origin), n in sorted(snap.samples.items()):
            samples.add_metric([status, origin], n)
        step = GaugeMetricFamily("falcon_lite_run_step", "Training step per run.", labels=["run"])
        rate = GaugeMetricFamily(
            "falcon_lite_run_steps_per_second", "Training steps per second per run (between scrapes).",
            labels=["run"],
        )
        for run_id, s in sorted(snap.steps.items()):
            step.add_metric([str(run_id)], s)
            last = self._last.get(run_id)
            if last is not None and now > last[1]:
                rate.add_metric([str(run_id)], max(0.0, (s - last[0]) / (now - last[1])))
            else:
                rate.add_metric([str(run_id)], 0.0)
            self._last[run_id] = (s, now)
        yield from (runs, samples, step, rate)


class ApiMetrics:
    """The registry of one app and the ASGI middleware that times its requests."""

    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        self.registry = CollectorRegistry()
        self.latency = Histogram(
            "falcon_lite_http_request_duration_seconds",
            "HTTP request latency.",
            labelnames=["method", "route", "status"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.registry.register(_StoreCollector(snapshot))

    def middleware(self, app):
        latency = self.latency

        async def timed(scope, receive, send):
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            start = time.perf_counter()
            status = {"code": 500}

            async def capture(message):
                if message["type"] == "http.response.start":
                    status["code"] = message["status"]
                await send(message)

            try:
                await app(scope, receive, capture)
            finally:
                route = scope.get("route")
                label = getattr(route, "path", None) or "unmatched"
                latency.labels(scope["method"], label, str(status["code"])).observe(
                    time.perf_counter() - start
                )

        return timed
