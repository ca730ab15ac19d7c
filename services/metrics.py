"""Prometheus metrics, exported through BentoML's own ``/metrics`` (``bentoml.metrics`` follows
BentoML's multiprocess set-up, so every worker's samples are merged).

**Deferred writes** (``defer``, set by each serving worker; issue 15): a Prometheus observation
takes a lock and, in BentoML's multiprocess mode, writes a memory-mapped file per value — about
7 µs of event-loop time per request over the values a request touches (in-process, A/B). A
deferring worker adds each observation to plain per-series sums and bucket counts instead
(``Kept``; a request's latency, the one observation every request makes, is one ``append`` to a
list bucketed when written) and writes them out (``flush``) whenever it has no request in flight
and at least every ``metrics_flush_ms`` under load (``services.worker``): ``/metrics`` shows
exactly the same series and values, at most that much later. Not deferring (in-process apps,
tests), every observation is written at once.

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
    bucket of its bounds and +Inf]; and ``series``: a histogram's values as they came (optionally
    each also one count of a counter), appended to a list its caller holds — one ``append`` per
    observation on the request path, bucketed when written."""

    def __init__(self) -> None:
        self.counts: dict[Any, float] = {}
        self.hists: dict[Any, list[Any]] = {}
        self._series: dict[tuple[Any, Any], tuple[tuple[float, ...], list[float]]] = {}

    def add(self, counter: Any, amount: float) -> None:
        counts = self.counts
        counts[counter] = counts.get(counter, 0) + amount

    def observe(self, histogram: Any, bounds: tuple[float, ...], value: float) -> None:
        pending = self.hists.get(histogram)
        if pending is None:
            pending = self.hists[histogram] = [0.0, [0] * (len(bounds) + 1)]
        pending[0] += value
        pending[1][bisect_left(bounds, value)] += 1  # the first bound ≥ value: observe()'s bucket

    def series(self, histogram: Any, bounds: tuple[float, ...], counter: Any = None) -> list[float]:
        """The list whose values ``flush`` observes in ``histogram`` (and counts in ``counter``,
        one each, if given): the same list for the same pair, emptied in place when written."""
        found = self._series.get((histogram, counter))
        if found is None:
            found = self._series[(histogram, counter)] = (bounds, [])
        return found[1]

    def flush(self) -> None:
        """Write the kept observations into the Prometheus values: a histogram's sum and each
        bucket's count as one addition each, where ``observe`` adds them one observation at a
        time (prometheus_client's ``_sum`` and ``_buckets``: tests/test_metrics.py holds the
        two ways equal)."""
        for (histogram, counter), (bounds, values) in self._series.items():
            if values:
                pending = self.hists.get(histogram)
                if pending is None:
                    pending = self.hists[histogram] = [0.0, [0] * (len(bounds) + 1)]
                pending[0] += sum(values)
                buckets = pending[1]
                for value in values:
                    buckets[bisect_left(bounds, value)] += 1
                if counter is not None:
                    self.add(counter, len(values))
                values.clear()
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

        # labels() lookups cost more than the observation itself: keep the children (and, for
        # a request's count and latency, the list a deferring worker appends its latency to).
        self._batch_children: dict[tuple[str, str], tuple[Any, ...]] = {}
        self._request_children: dict[tuple[str, str, str, int], tuple[Any, Any, list[float]]] = {}
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
            self.kept.series(queue_wait, LATENCY_BUCKETS).extend(waits)
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
            count = self.requests.labels(model, version, endpoint, str(status))
            latency = self.latency.labels(model, version, endpoint)
            children = self._request_children[key] = (
                count, latency, self.kept.series(latency, LATENCY_BUCKETS, count))
        if self.deferred:
            children[2].append(seconds)  # counted and observed when written (``Kept.series``)
            return
        children[0].inc()
        children[1].observe(seconds)


@functools.cache
def get_metrics() -> Any:
    return Metrics()
