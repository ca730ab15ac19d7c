"""Prometheus metrics, exported through BentoML's own ``/metrics`` (``bentoml.metrics`` follows
BentoML's multiprocess set-up, so every worker's samples are merged).

**Deferred writes** (``defer``, set by each serving worker; issue 15): a Prometheus observation
takes a lock and, in BentoML's multiprocess mode, writes a memory-mapped file per value — about
7 µs of event-loop time per request over the values a request touches (in-process, A/B). A
deferring worker adds each observation to plain per-series sums and bucket counts instead
(``Kept``) and writes them out (``flush``) whenever it has no request in flight and at least
every ``metrics_flush_ms`` under load (``services.worker``): ``/metrics`` shows exactly the same
series and values, at most that much later. Not deferring (in-process apps, tests), every
observation is written at once.

Names follow Triton's and BentoML's habits: request counts by status, latency, and the batch
sizes actually formed (average batch = inference items ÷ executions). Label values come only from
loaded versions, Podium's endpoint names and its fixed set of statuses — never from what a client
typed — so the number of series is bounded whatever clients send.
"""

from __future__ import annotations

import functools
from bisect import bisect_left
from typing import Any

# The model/version label of a request no loaded version answered (an unknown name in the URL).
UNKNOWN = "unknown"
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)


class Kept:
    """Observations not yet written: counter child → amount; histogram child → [sum, counts per
    bucket of its bounds and +Inf]."""

    def __init__(self) -> None:
        self.counts: dict[Any, float] = {}
        self.hists: dict[Any, list[Any]] = {}

    def add(self, counter: Any, amount: float) -> None:
        counts = self.counts
        counts[counter] = counts.get(counter, 0) + amount

    def observe(self, histogram: Any, bounds: tuple[float, ...], value: float) -> None:
        pending = self.hists.get(histogram)
        if pending is None:
            pending = self.hists[histogram] = [0.0, [0] * (len(bounds) + 1)]
        pending[0] += value
        pending[1][bisect_left(bounds, value)] += 1  # the first bound ≥ value: observe()'s bucket

    def flush(self) -> None:
        """Write the kept observations into the Prometheus values: a histogram's sum and each
        bucket's count as one addition each, where ``observe`` adds them one observation at a
        time (prometheus_client's ``_sum`` and ``_buckets``: tests/test_metrics.py holds the
        two ways equal)."""
        if not (self.counts or self.hists):
            return
        counts, hists = self.counts, self.hists
        self.counts, self.hists = {}, {}
        for counter, amount in counts.items():
            counter.inc(amount)
        for histogram, (total, buckets) in hists.items():
            histogram._sum.inc(total)
            for i, n in enumerate(buckets):
                if n:
                    histogram._buckets[i].inc(n)


class Metrics:
    def __init__(self) -> None:
        import bentoml

        m = bentoml.metrics
        self.requests = m.Counter(
            name="podium_requests_total", documentation="requests by model, version, endpoint and status",
            labelnames=["model", "version", "endpoint", "status"])
        self.latency = m.Histogram(
            name="podium_request_duration_seconds", documentation="request latency in the server",
            labelnames=["model", "version", "endpoint"], buckets=LATENCY_BUCKETS)
        self.batch_size = m.Histogram(
            name="podium_batch_size", documentation="items per executed batch",
            labelnames=["model", "version"], buckets=BATCH_BUCKETS)
        self.batch_requests = m.Histogram(
            name="podium_batch_requests", documentation="requests merged into one executed batch",
            labelnames=["model", "version"], buckets=BATCH_BUCKETS)
        self.items = m.Counter(
            name="podium_inference_items_total", documentation="items (samples) inferred",
            labelnames=["model", "version"])
        self.executions = m.Counter(
            name="podium_inference_executions_total", documentation="model executions (batches)",
            labelnames=["model", "version"])
        self.compute = m.Histogram(
            name="podium_compute_duration_seconds", documentation="model execution time per batch",
            labelnames=["model", "version"], buckets=LATENCY_BUCKETS)
        self.queue_wait = m.Histogram(
            name="podium_queue_duration_seconds", documentation="time a request waited for its batch",
            labelnames=["model", "version"], buckets=LATENCY_BUCKETS)

        # labels() lookups cost more than the observation itself: keep the children.
        self._batch_children: dict[tuple[str, str], tuple[Any, ...]] = {}
        self._request_children: dict[tuple[str, str, str, int], tuple[Any, Any]] = {}
        self.deferred = False
        self.kept = Kept()

    def defer(self) -> None:
        """From now on, keep observations until ``flush`` (event-loop thread only)."""
        self.deferred = True

    def flush(self) -> None:
        self.kept.flush()

    def observe_batch(self, model: str, version: str, requests: int, items: int,
                      compute_s: float, waits: list[float]) -> None:
        children = self._batch_children.get((model, version))
        if children is None:
            children = self._batch_children[(model, version)] = tuple(
                metric.labels(model, version) for metric in (
                    self.batch_size, self.batch_requests, self.items, self.executions,
                    self.compute, self.queue_wait))
        size, per_batch, item_count, runs, compute, queue_wait = children
        if self.deferred:
            observe, add = self.kept.observe, self.kept.add
            observe(size, BATCH_BUCKETS, items)
            observe(per_batch, BATCH_BUCKETS, requests)
            add(item_count, items)
            add(runs, 1)
            observe(compute, LATENCY_BUCKETS, compute_s)
            for wait in waits:
                observe(queue_wait, LATENCY_BUCKETS, wait)
            return
        size.observe(items)
        per_batch.observe(requests)
        item_count.inc(items)
        runs.inc()
        compute.observe(compute_s)
        for wait in waits:
            queue_wait.observe(wait)

    def observe_request(self, model: str, version: str, endpoint: str, status: int,
                        seconds: float) -> None:
        key = (model, version, endpoint, status)
        children = self._request_children.get(key)
        if children is None:
            children = self._request_children[key] = (
                self.requests.labels(model, version, endpoint, str(status)),
                self.latency.labels(model, version, endpoint))
        count, latency = children
        if self.deferred:
            self.kept.add(count, 1)
            self.kept.observe(latency, LATENCY_BUCKETS, seconds)
            return
        count.inc()
        latency.observe(seconds)


@functools.cache
def get_metrics() -> Any:
    return Metrics()
