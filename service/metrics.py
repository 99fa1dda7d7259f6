"""Prometheus metrics of the API process (GET /metrics), one registry per app."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class ApiMetrics:
    def __init__(self, models: list[str]) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("sdedit_api_requests_total", "HTTP requests",
                                ["route", "method", "status"], registry=self.registry)
        self.latency = Histogram("sdedit_api_request_seconds", "HTTP request latency",
                                 ["route", "method"], registry=self.registry)
        self.queue_depth = Gauge("sdedit_queue_depth", "jobs waiting per model", ["model"],
                                 registry=self.registry)
        self.accepted = Counter("sdedit_api_jobs_accepted_total", "jobs enqueued", ["model"],
                                registry=self.registry)
        self.queue_depth_by_priority = Gauge("sdedit_queue_depth_by_priority",
                                             "jobs waiting per model and priority",
                                             ["model", "priority"], registry=self.registry)
        # Every model's series exist from the start at zero, so rate() and increase() see the
        # first jobs (a series born non-zero loses its first increments).
        for model in models:
            self.accepted.labels(model)
            self.queue_depth.labels(model)
            for priority in ("interactive", "batch"):
                self.queue_depth_by_priority.labels(model, priority)
