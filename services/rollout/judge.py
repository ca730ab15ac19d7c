"""The candidate's outcomes and the automatic-rollback verdict.

Each worker counts, per model version, requests, errors and requests slower than the rollout's
p99 limit in one-second buckets (``Outcomes``), and in shadow mode how often the candidate's
labels agree with stable's (``Agreement``). These are plain counts, so the counts of every worker
of every replica add up exactly (``Counts.total``); ``verdict`` judges the sum. "p99 over the
limit" is judged as "more than 1 % of the window's requests slower than the limit", which is the
same statement in counts. A few recent latencies travel too, for the p50/p99 shown in status.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from itertools import takewhile
from typing import Any

import numpy as np

from models.labels import labels_of
from services.rollout.state import Limits, ModelRollout

SAMPLES = 256  # recent latencies kept per version for display percentiles
SLOW_FRACTION = 0.01  # p99 > limit  <=>  more than 1 % of requests slower than the limit


@dataclass
class Counts:
    """Requests, errors and slow requests (over the p99 limit), summable across workers."""

    requests: int = 0
    errors: int = 0
    slow: int = 0

    @classmethod
    def total(cls, parts: Iterable[dict[str, Any]]) -> Counts:
        out = cls()
        for p in parts:
            out.requests += int(p.get("requests", 0))
            out.errors += int(p.get("errors", 0))
            out.slow += int(p.get("slow", 0))
        return out


class Outcomes:
    """One version's outcomes in one worker: totals and a window of one-second buckets.

    Written from the event loop and read from the watcher thread: guarded by one lock.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.totals = Counts()
        self._buckets: deque[list[int]] = deque(maxlen=86400)  # [second, requests, errors, slow]
        self._recent: deque[float] = deque(maxlen=SAMPLES)

    def add(self, seconds: float, ok: bool, slow_s: float) -> None:
        self.add_many([(self, seconds, ok, slow_s)])

    def add_many(self, outcomes: list[tuple[Any, float, bool, float]]) -> None:
        """Requests' outcomes, ``(_, seconds, ok, slow_s)`` each, counted in this second."""
        errors = sum(1 for _, _, ok, _ in outcomes if not ok)
        slow = sum(1 for _, seconds, _, slow_s in outcomes if slow_s and seconds > slow_s)
        second = int(time.time())
        with self._lock:
            totals = self.totals
            totals.requests += len(outcomes)
            totals.errors += errors
            totals.slow += slow
            if not self._buckets or self._buckets[-1][0] != second:
                self._buckets.append([second, 0, 0, 0])
            bucket = self._buckets[-1]
            bucket[1] += len(outcomes)
            bucket[2] += errors
            bucket[3] += slow
            self._recent.extend(seconds * 1000 for _, seconds, _, _ in outcomes)

    def snapshot(self, window_s: float) -> dict[str, Any]:
        """Totals, the window's counts and recent latencies (ms), as JSON."""
        since = time.time() - window_s
        with self._lock:
            window = list(takewhile(lambda b: b[0] + 1 > since, reversed(self._buckets)))
            recent = list(self._recent)
            totals = asdict(self.totals)
        return {**totals, "window": {"requests": sum(b[1] for b in window),
                                     "errors": sum(b[2] for b in window),
                                     "slow": sum(b[3] for b in window)},
                "recent_ms": [round(x, 3) for x in recent]}


def summarize(snapshots: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts summed over workers; percentiles over the recent latencies they sent."""
    totals = Counts.total(snapshots)
    window = Counts.total(s["window"] for s in snapshots)
    latencies = [x for s in snapshots for x in s["recent_ms"]]
    out: dict[str, Any] = {"requests": totals.requests, "errors": totals.errors,
                           "window_requests": window.requests,
                           "window_error_rate": window.errors / window.requests
                           if window.requests else 0.0}
    for q in (50, 90, 99):
        out[f"p{q}_ms"] = round(float(np.percentile(latencies, q)), 3) if latencies else None
    return out


@dataclass
class Agreement:
    """Shadow mode: how the candidate's answers compare with the stable version's."""

    compared: int = 0  # requests mirrored and answered
    items: int = 0
    agreed: int = 0  # items with the same label
    max_abs_diff: float = 0.0
    skipped: int = 0  # not mirrored: too many shadow copies already in flight

    def add(self, stable: np.ndarray, candidate: np.ndarray) -> None:
        agreed, items, diff = compare(stable, candidate)
        self.compared += 1
        self.items += items
        self.agreed += agreed
        self.max_abs_diff = max(self.max_abs_diff, diff)

    @property
    def rate(self) -> float | None:
        return self.agreed / self.items if self.items else None

    @classmethod
    def total(cls, parts: Iterable[dict[str, Any]]) -> Agreement:
        out = cls()
        for p in parts:
            for key in ("compared", "items", "agreed", "skipped"):
                setattr(out, key, getattr(out, key) + int(p.get(key, 0)))
            out.max_abs_diff = max(out.max_abs_diff, float(p.get("max_abs_diff", 0.0)))
        return out

    def to_json(self) -> dict[str, Any]:
        diff = self.max_abs_diff if math.isfinite(self.max_abs_diff) else None  # JSON has no inf
        return {**asdict(self), "max_abs_diff": diff, "agreement": self.rate}


def compare(stable: np.ndarray, candidate: np.ndarray) -> tuple[int, int, float]:
    """(items with the same label, items, max |Δ|) between two answers to the same request."""
    items = int(stable.shape[0])
    if stable.shape != candidate.shape:
        return 0, items, float("inf")
    if not stable.size:
        return items, items, 0.0
    diff = float(np.max(np.abs(stable.astype(np.float64) - candidate.astype(np.float64))))
    return int((labels_of(stable) == labels_of(candidate)).sum()), items, diff


@dataclass(frozen=True)
class Verdict:
    """``fail`` (roll back), ``pass`` (within every limit) or ``pending`` (too few requests)."""

    result: str
    reason: str
    figures: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"verdict": self.result, "healthy": self.result != "fail", "reason": self.reason,
                "figures": self.figures}


def verdict(limits: Limits, mode: str | None, window: Counts, agreement: Agreement | None
            ) -> Verdict:
    """Judge the candidate on the counts of every worker, summed."""
    n = window.requests
    figures: dict[str, Any] = {
        "window_requests": n, "window_errors": window.errors, "window_slow": window.slow,
        "error_rate": window.errors / n if n else None,
        "slow_rate": window.slow / n if n else None}
    if agreement is not None:
        figures.update(agreement_items=agreement.items, agreement=agreement.rate)
    reasons = []
    judged = n >= limits.min_requests
    if judged and limits.max_error_rate and window.errors / n > limits.max_error_rate:
        reasons.append(f"error rate {window.errors / n:.1%} > {limits.max_error_rate:.1%} over "
                       f"{n} requests")
    if judged and limits.max_p99_ms and window.slow / n > SLOW_FRACTION:
        reasons.append(f"p99 > {limits.max_p99_ms:g} ms: {window.slow} of {n} requests slower")
    if mode == "shadow" and limits.min_agreement and agreement is not None \
            and agreement.items >= limits.min_requests:
        judged = True
        if (agreement.rate or 0.0) < limits.min_agreement:
            reasons.append(f"shadow agreement {agreement.rate:.1%} < "
                           f"{limits.min_agreement:.1%} over {agreement.items} items")
    if reasons:
        return Verdict("fail", "; ".join(reasons), figures)
    if not judged:
        return Verdict("pending", f"{n} of {limits.min_requests} requests in the window", figures)
    return Verdict("pass", "within every limit", figures)


class Recorder:
    """One worker's outcomes per (model, version) and shadow agreement per model, for the
    rollout each model is in. Written from the event loop, read by the watcher and admin
    threads: one lock guards them all.

    A request's outcome is one ``append`` to a thread-safe queue (``add``), counted when the
    queue is next drained: by ``snapshot`` (whoever reads the counts sees every outcome added
    before) and by the worker as it writes its deferred metrics (``drain``: when it has no
    request in flight, and at least every ``metrics_flush_ms`` under load), so a bucket's second
    is at most that late. Counting each request as it came cost ~150 bytecodes a request on the
    event loop (two locks, the second, three counters and the bucket; issue 15). An outcome
    whose version's counts were reset in the meantime (a new rollout) goes to the counts it was
    added to, which nothing reads any more — as before."""

    PENDING_MAX = 65536  # outcomes queued before ``add`` counts them itself

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._outcomes: dict[tuple[str, str], Outcomes] = {}
        self._agreement: dict[str, Agreement] = {}
        self._rollout_ids: dict[str, str] = {}
        self._pending: deque[tuple[Outcomes, float, bool, float]] = deque()

    def reset(self, name: str, rollout_id: str) -> None:
        """A new rollout of ``name``: its counts start from zero."""
        with self._lock:
            for key in [k for k in self._outcomes if k[0] == name]:
                del self._outcomes[key]
            self._agreement.pop(name, None)
            self._rollout_ids[name] = rollout_id

    def add(self, name: str, version: str, seconds: float, ok: bool, slow_s: float) -> None:
        outcomes = self._outcomes.get((name, version))  # a dict read: atomic, no lock
        if outcomes is None:
            with self._lock:
                outcomes = self._outcomes.setdefault((name, version), Outcomes())
        pending = self._pending
        pending.append((outcomes, seconds, ok, slow_s))
        if len(pending) > self.PENDING_MAX:  # nobody drained (no worker loop): bounded anyway
            self.drain()

    def drain(self) -> None:
        """Count the outcomes added so far (any thread: each is taken from the queue once)."""
        pending = self._pending
        taken: dict[Outcomes, list[tuple[Outcomes, float, bool, float]]] = {}
        while True:
            try:
                item = pending.popleft()
            except IndexError:
                break
            group = taken.get(item[0])
            if group is None:
                taken[item[0]] = [item]
            else:
                group.append(item)
        for outcomes, items in taken.items():
            outcomes.add_many(items)

    def agree(self, name: str, rollout_id: str, stable: np.ndarray, candidate: np.ndarray) -> None:
        with self._lock:
            if self._rollout_ids.get(name) == rollout_id:  # not a copy from an earlier rollout
                self._agreement.setdefault(name, Agreement()).add(stable, candidate)

    def skipped(self, name: str) -> None:
        with self._lock:
            self._agreement.setdefault(name, Agreement()).skipped += 1

    def snapshot(self, window_s: Callable[[str], float]) -> dict[str, Any]:
        """Per model: its rollout id, each version's counts over ``window_s(model)``, and the
        shadow agreement — the ``models`` part of a heartbeat."""
        self.drain()
        with self._lock:
            outcomes = list(self._outcomes.items())
            agreement = {n: asdict(a) for n, a in self._agreement.items()}
            ids = dict(self._rollout_ids)
        models: dict[str, dict[str, Any]] = {}
        for (name, version), counts in outcomes:
            models.setdefault(name, {"rollout_id": ids.get(name, ""), "versions": {}})
            models[name]["versions"][version] = counts.snapshot(window_s(name))
        for name, agreed in agreement.items():
            models.setdefault(name, {"rollout_id": ids.get(name, ""), "versions": {}})
            models[name]["agreement"] = agreed
        return models


def rollout_parts(name: str, rollout_id: str, beats: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What each worker's heartbeat says of ``name`` under this rollout (older ones left out)."""
    return [b["models"][name] for b in beats
            if b.get("models", {}).get(name, {}).get("rollout_id") == rollout_id]


def judge_beats(name: str, plan: ModelRollout, beats: list[dict[str, Any]], defaults: Limits
                ) -> Verdict:
    """``plan``'s candidate judged on the counts every worker's heartbeat carries for this
    rollout, summed."""
    assert plan.candidate is not None
    parts = rollout_parts(name, plan.rollout_id, beats)
    window = Counts.total(p["versions"][plan.candidate]["window"] for p in parts
                          if plan.candidate in p["versions"])
    agreement = (Agreement.total(p["agreement"] for p in parts if "agreement" in p)
                 if plan.mode == "shadow" else None)
    return verdict(plan.limits or defaults, plan.mode, window, agreement)
