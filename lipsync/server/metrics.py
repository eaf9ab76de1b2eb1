"""Prometheus metrics: HTTP requests counted here, queue depth and job durations read from Redis at scrape.

Job figures live in Redis (written by whoever finishes a request), so any API replica reports the whole
cluster's numbers.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lipsync.queue.jobs import JobStore
from lipsync.queue.records import DURATION_BUCKETS


class JobCollector(Collector):
    def __init__(self, store: JobStore, queue_lengths):
        self.store = store
        self.queue_lengths = queue_lengths

    def collect(self) -> Iterator:
        counts = self.store.counts()
        depth = GaugeMetricFamily("lipsync_queue_depth", "Requests waiting in each queue", labels=["queue"])
        for queue, length in self.queue_lengths().items():
            depth.add_metric([queue], length)
        yield depth
        yield GaugeMetricFamily("lipsync_requests_running", "Requests being processed", value=counts["running"])
        yield GaugeMetricFamily("lipsync_requests_queued", "Requests not yet started", value=counts["queued"])

        stats = self.store.job_stats()
        hist = HistogramMetricFamily(
            "lipsync_job_duration_seconds", "Time from start to completion, by outcome", labels=["outcome"]
        )
        done = CounterMetricFamily("lipsync_jobs_completed", "Completed requests, by outcome", labels=["outcome"])
        for outcome in ("ok", "error"):
            cumulative, buckets = 0.0, []
            for bound in [*map(str, DURATION_BUCKETS), "+Inf"]:
                cumulative += stats.get(f"bucket:{outcome}:{bound}", 0.0)
                buckets.append((bound, cumulative))
            hist.add_metric([outcome], buckets, sum_value=stats.get(f"sum:{outcome}", 0.0))
            done.add_metric([outcome], stats.get(f"count:{outcome}", 0.0))
        yield hist
        yield done


class HttpMetrics:
    """ASGI middleware counting requests by method, route template and status, with latency."""

    def __init__(self, app: ASGIApp, registry: CollectorRegistry):
        self.app = app
        self.requests = Counter(
            "lipsync_http_requests", "HTTP requests", ["method", "route", "status"], registry=registry
        )
        self.latency = Histogram(
            "lipsync_http_request_duration_seconds", "HTTP request latency", ["method", "route"], registry=registry
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = {"code": 500}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        start = time.perf_counter()
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            name = getattr(route, "path", "unmatched")
            self.requests.labels(scope["method"], name, str(status["code"])).inc()
            self.latency.labels(scope["method"], name).observe(time.perf_counter() - start)
