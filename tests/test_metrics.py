"""Deferred metrics (issue 15, services.metrics): observations kept in plain sums and written
later give exactly what Prometheus' own ``inc``/``observe`` give, bucket by bucket — including
values on a bucket's bound and past the last one."""

from __future__ import annotations

import random

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from services.metrics import BATCH_BUCKETS, LATENCY_BUCKETS, Kept


def _pair(registry: CollectorRegistry, name: str, buckets: tuple[float, ...]) -> tuple:
    direct = Histogram(f"{name}_direct", "d", ["m"], buckets=buckets, registry=registry).labels("x")
    kept = Histogram(f"{name}_kept", "k", ["m"], buckets=buckets, registry=registry).labels("x")
    return direct, kept


def _samples(registry: CollectorRegistry, name: str) -> list[tuple[str, dict, float]]:
    out = []
    for family in registry.collect():
        for sample in family.samples:
            if sample.name.startswith(name) and not sample.name.endswith("_created"):
                out.append((sample.name.replace(name, "", 1), sample.labels, sample.value))
    return sorted(out, key=lambda s: (s[0], sorted(s[1].items())))


def test_kept_observations_equal_prometheus_own_after_a_flush() -> None:
    registry = CollectorRegistry()
    rng = random.Random(15)
    kept = Kept()
    for name, bounds, values in [
        ("lat", LATENCY_BUCKETS, [rng.expovariate(200) for _ in range(500)]
         + [0.0005, 0.001, 10.0, 11.0, 0.0]),  # on the bounds, past the last, zero
        ("items", BATCH_BUCKETS, [rng.randint(1, 3000) for _ in range(300)] + [1, 2048, 2049]),
    ]:
        direct, later = _pair(registry, name, bounds)
        for value in values:
            direct.observe(value)
            kept.observe(later, bounds, value)
        written = {n: v for n, _, v in _samples(registry, f"{name}_kept") if n in ("_count", "_sum")}
        assert written == {"_count": 0, "_sum": 0}  # nothing written before the flush
    count_direct = Counter("n_direct", "d", ["m"], registry=registry).labels("x")
    count_kept = Counter("n_kept", "k", ["m"], registry=registry).labels("x")
    for amount in (1, 1, 5, 0.5):
        count_direct.inc(amount)
        kept.add(count_kept, amount)
    kept.flush()
    for name in ("lat", "items", "n"):
        direct = _samples(registry, f"{name}_direct")
        later = _samples(registry, f"{name}_kept")
        assert [sample[:2] for sample in direct] == [sample[:2] for sample in later]
        for (_, _, a), (_, _, b) in zip(direct, later, strict=True):
            assert abs(a - b) <= 1e-9 * max(1.0, abs(a)), name
    assert b"lat_kept_bucket" in generate_latest(registry)
    kept.flush()  # nothing kept: writes nothing more
    assert _samples(registry, "n_kept") == _samples(registry, "n_direct")


def test_a_series_written_equals_observe_and_inc_one_by_one() -> None:
    """``Kept.series`` (a request's latency and count, one ``append`` a request): after a flush the
    histogram and the counter hold what ``observe`` and ``inc`` one by one give; the list is
    emptied in place, so its holder keeps appending to it; two series of one histogram (two
    statuses of one route) add up in it."""
    registry = CollectorRegistry()
    rng = random.Random(16)
    direct, later = _pair(registry, "req", LATENCY_BUCKETS)
    count_direct = Counter("c_direct", "d", ["m"], registry=registry).labels("x")
    ok_kept = Counter("c_kept", "k", ["m"], registry=registry).labels("x")
    bad_kept = Counter("c_kept_bad", "k", ["m"], registry=registry).labels("x")
    kept = Kept()
    ok = kept.series(later, LATENCY_BUCKETS, ok_kept)
    bad = kept.series(later, LATENCY_BUCKETS, bad_kept)
    assert kept.series(later, LATENCY_BUCKETS, ok_kept) is ok and ok is not bad
    for _ in range(2):
        for i in range(400):
            value = [rng.expovariate(300), 0.0025, 10.0, 12.0][i % 4]
            direct.observe(value)
            count_direct.inc()
            (bad if i % 7 == 0 else ok).append(value)
        kept.flush()
        assert ok == [] and bad == []
    kept.flush()  # nothing kept: writes nothing more
    direct_samples, later_samples = _samples(registry, "req_direct"), _samples(registry, "req_kept")
    assert [s[:2] for s in direct_samples] == [s[:2] for s in later_samples]
    for (_, _, a), (_, _, b) in zip(direct_samples, later_samples, strict=True):
        assert abs(a - b) <= 1e-9 * max(1.0, abs(a))
    total = {n: v for n, _, v in _samples(registry, "c_direct")}["_total"]
    ok_total = {n: v for n, _, v in _samples(registry, "c_kept")}["_total"]
    bad_total = {n: v for n, _, v in _samples(registry, "c_kept_bad")}["_total"]
    assert (ok_total, bad_total) == (800 - 2 * 58, 2 * 58) and ok_total + bad_total == total
