"""Prometheus metrics of the API."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

REQUESTS = Counter("gradstore_http_requests_total", "HTTP requests", ["method", "route", "status"])
REQUEST_SECONDS = Histogram("gradstore_http_request_seconds", "HTTP latency", ["route"])
SELECT_SECONDS = Histogram(
    "gradstore_select_seconds",
    "Selection latency (target gradients + search)",
    ["method"],
    buckets=(0.01, 0.03, 0.1, 0.3, 1, 3, 10, 30, 100),
)
