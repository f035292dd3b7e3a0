"""Prometheus metrics of the guard proxy, in a registry of their own.

Each app gets its own `CollectorRegistry`, so two proxies in one process (or one per test)
never clash over metric names. Labels are closed sets (route, status, action, category), so a
client cannot blow up the series count by sending odd paths.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class ProxyMetrics:
    """The counters and histograms `/metrics` exposes."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "safeturn_guard_requests",
            "HTTP requests by route and status code.",
            ["route", "status"],
            registry=self.registry,
        )
        self.decisions = Counter(
            "safeturn_guard_decisions",
            "Guard decisions by action (allow, annotate, inject, refuse, replace) and category.",
            ["action", "category"],
            registry=self.registry,
        )
        self.failures = Counter(
            "safeturn_guard_failures",
            "Failures by component (moderator, reply_screen, upstream, upstream_timeout, store).",
            ["component"],
            registry=self.registry,
        )
        self.moderator_seconds = Histogram(
            "safeturn_guard_moderator_seconds",
            "Time spent in the moderator per request.",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.upstream_seconds = Histogram(
            "safeturn_guard_upstream_seconds",
            "Time spent waiting for the upstream model per request.",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "safeturn_guard_request_seconds",
            "Time from request to response for chat completions.",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)
