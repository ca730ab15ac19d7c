"""A lone cheap request runs on the calling thread (issue 15): when, what it records, how it
fails, and that concurrent requests still share batches — a cheap batch on the calling thread
too (``inline_batch_max_s``). Fast and in-process: a tiny real model
here, and a real data plane on tiny real ONNX models (tests/kinds_support.py)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest

from services.batcher import Batcher
from services.dataplane import DataPlane
from services.errors import InferenceError, ServiceOverloaded
from tests.kinds_support import plane_of


class Model:
    """y = 2x, recording each call's batch size and thread; ``per_item`` seconds per item."""

    def __init__(self, per_item: float = 0.0, fail: bool = False) -> None:
        self.per_item, self.fail = per_item, fail
        self.calls: list[tuple[int, bool]] = []  # (batch size, ran on the calling thread)
        self.caller = threading.get_ident()

    def __call__(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        x = feeds["x"]
        self.calls.append((len(x), threading.get_ident() == self.caller))
        if self.per_item:
            time.sleep(self.per_item * len(x))
        if self.fail:
            raise RuntimeError("model exploded")
        return [2 * x]


class Recorder:
    def __init__(self) -> None:
        self.batches: list[tuple[int, int, list[float]]] = []

    def observe_batch(self, model: str, version: str, requests: int, items: int, compute_s: float,
                      waits: list[float]) -> None:
        self.batches.append((requests, items, list(waits)))


# A slow model's item costs 2 ms against a 6 ms budget: 1 and 2 items under it, 4 and 8 over.
# Sleeps only ever overshoot, so "over" holds on any machine and "under" keeps a 2 ms margin in
# the best of five timed runs.
ITEM_S, BUDGET_S = 0.002, 0.006


def warmed(model: Model, inline_max_s: float = BUDGET_S, **kwargs: object) -> Batcher:
    options = {"max_batch_size": 8, "max_latency_s": 5.0, "max_queue_items": 1000,
               "inline_max_s": inline_max_s, **kwargs}
    b = Batcher("m", "v1", model, {"x": 0}, [0], **options)
    b.warm(lambda n: {"x": np.zeros((n, 3), np.float32)}, [1, 2, 4, 8])
    model.calls.clear()
    return b


def one(n: int = 1, width: int = 3) -> dict[str, np.ndarray]:
    return {"x": np.ones((n, width), np.float32)}


def test_warm_runs_every_size_then_times_each() -> None:
    model = Model(per_item=ITEM_S)
    b = Batcher("m", "v1", model, {"x": 0}, [0], max_batch_size=8, max_latency_s=5.0,
                max_queue_items=100, inline_max_s=BUDGET_S)
    b.warm(lambda n: {"x": np.zeros((n, 3), np.float32)}, [1, 2, 4, 8])
    assert sorted(b.costs) == [1, 2, 4, 8]
    assert b.costs[1] >= ITEM_S and b.costs[8] >= 8 * ITEM_S
    # Every size ran once (the warm-up), then 5 timed rounds of every size, up and down in turn.
    assert [n for n, _ in model.calls] == [1, 2, 4, 8] + [1, 2, 4, 8, 8, 4, 2, 1] * 2 + [1, 2, 4, 8]
    assert b.run_size is None  # not splitting: no run size chosen

    off = Model()
    b = Batcher("m", "v1", off, {"x": 0}, [0], max_batch_size=8, max_latency_s=5.0,
                max_queue_items=100, inline_max_s=0.0)
    b.warm(lambda n: {"x": np.zeros((n, 3), np.float32)}, [1, 2, 4, 8])
    assert b.costs == {} and [n for n, _ in off.calls] == [1, 2, 4, 8]  # nothing to time for


class CacheBound(Model):
    """A model whose runs cost 2 ms plus 1 ms per item up to 2 items and 4 ms per item past
    that (its working set leaves the cache): 2 items per run is the fastest per item."""

    def __call__(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        n = len(feeds["x"])
        time.sleep(0.002 + n * (0.001 if n <= 2 else 0.004))
        return super().__call__(feeds)


def test_split_batches_run_in_the_fastest_size() -> None:
    model = CacheBound()
    b = Batcher("m", "v1", model, {"x": 0}, [0], max_batch_size=8, max_latency_s=5.0,
                max_queue_items=100, inline_max_s=0.0, split=True)
    b.warm(lambda n: {"x": np.zeros((n, 3), np.float32)}, [1, 2, 4, 8])
    assert b.run_size == 2  # per item: 3, 2, 4.5 and 4.25 ms (sleeps only ever add)
    model.calls.clear()
    x = np.arange(21, dtype=np.float32).reshape(7, 3)
    (out,) = asyncio.run(b.infer({"x": x}))
    assert np.array_equal(out, 2 * x)  # joined in order
    assert model.calls == [(2, False), (2, False), (2, False), (1, False)]  # one thread call


@pytest.mark.parametrize("enabled", [True, False])
def test_a_lone_cheap_request_runs_on_the_calling_thread(enabled: bool) -> None:
    model, metrics = Model(), Recorder()
    b = warmed(model, enabled=enabled, metrics=metrics)
    (out,) = asyncio.run(b.infer(one(3)))
    assert out.tolist() == [[2.0] * 3] * 3
    assert model.calls == [(3, True)]
    assert metrics.batches == [(1, 3, [0.0])]  # recorded as a batch of one request, no wait


@pytest.mark.parametrize("enabled", [True, False])
def test_a_request_not_alone_takes_the_inference_thread(enabled: bool) -> None:
    model = Model()
    b = warmed(model, enabled=enabled)
    asyncio.run(b.infer(one(), alone=lambda: False))
    assert model.calls == [(1, False)]


def test_unknown_or_costly_sizes_and_a_zero_budget_never_run_inline() -> None:
    model = Model(per_item=ITEM_S)
    b = warmed(model)  # 1 and 2 items under the budget; 4 and 8 over
    asyncio.run(b.infer(one(2)))
    asyncio.run(b.infer(one(3)))  # the bucket of 4: 8 ms, over the budget
    asyncio.run(b.infer(one(8)))  # 16 ms
    assert model.calls == [(2, True), (3, False), (8, False)]

    never = Model()
    b = warmed(never, inline_max_s=0.0)
    asyncio.run(b.infer(one()))
    assert never.calls == [(1, False)]


def test_items_larger_than_the_warm_ups_scale_the_cost() -> None:
    model = Model(per_item=ITEM_S)
    b = warmed(model)
    asyncio.run(b.infer(one(1, width=3)))   # as warmed: 2 ms
    asyncio.run(b.infer(one(1, width=12)))  # 4× the elements: 8 ms estimated, over the budget
    assert model.calls == [(1, True), (1, False)]


@pytest.mark.parametrize("enabled", [True, False])
def test_inline_and_threaded_failures_are_inference_errors(enabled: bool) -> None:
    for alone in (True, False):
        model = Model()
        b = warmed(model, enabled=enabled)
        model.fail = True
        with pytest.raises(InferenceError, match="m:v1 failed: model exploded"):
            asyncio.run(b.infer(one(), alone=lambda: alone))  # noqa: B023 (called at once)
        assert model.calls == [(1, alone)]


def test_concurrent_requests_still_share_batches() -> None:
    """Under load no request is alone (the data plane counts the others): batches form as
    before. And a request that arrives while a batch runs queues, even if it says alone."""
    model = Model(per_item=ITEM_S)
    b = warmed(model, inline_max_s=0.05)  # every size measured and under the budget

    async def main() -> list[list[np.ndarray]]:
        crowd = [b.infer({"x": np.full((1, 3), i, np.float32)}, alone=lambda: False) for i in range(20)]
        return await asyncio.gather(*crowd, b.infer(one()))

    results = asyncio.run(main())
    assert [r[0][0, 0] for r in results[:20]] == [2.0 * i for i in range(20)]
    sizes = [n for n, _ in model.calls]
    assert sum(sizes) == 21 and max(sizes) > 1 and max(sizes) <= 8
    assert not any(inline for _, inline in model.calls)


def test_cheap_batches_under_load_run_on_the_loop_thread_costly_ones_on_the_inference_thread(
        ) -> None:
    """``inline_batch_max_s``: a crowd that arrived together forms full batches (the driver
    yields one turn before it takes), each run on the event loop's thread while its size costs at
    most the budget; over it, the inference thread. Every answer is its own request's."""
    async def crowd(b: Batcher, n: int) -> list[list[np.ndarray]]:
        return await asyncio.gather(*(b.infer({"x": np.full((1, 3), i, np.float32)},
                                              alone=lambda: False) for i in range(n)))

    model = Model(per_item=ITEM_S)
    b = warmed(model, inline_max_s=0.0, inline_batch_max_s=0.05)  # every size under it
    results = asyncio.run(crowd(b, 20))
    assert [r[0][0, 0] for r in results] == [2.0 * i for i in range(20)]
    assert model.calls == [(8, True), (8, True), (4, True)]  # full batches, all on this thread

    model = Model(per_item=ITEM_S)
    b = warmed(model, inline_max_s=0.0, inline_batch_max_s=BUDGET_S)  # 1 and 2 items under it
    asyncio.run(crowd(b, 2))
    asyncio.run(crowd(b, 5))  # a batch of 5: the bucket of 8, 16 ms, over the budget
    assert model.calls == [(2, True), (5, False)]


def test_inline_batches_fail_as_threaded_ones_do() -> None:
    model = Model()
    b = warmed(model, inline_batch_max_s=0.05)
    model.fail = True

    async def main() -> list[object]:
        return await asyncio.gather(*(b.infer(one(), alone=lambda: False) for _ in range(3)),
                                    return_exceptions=True)

    errors = asyncio.run(main())
    assert all(isinstance(e, InferenceError) and "model exploded" in str(e) for e in errors)
    assert model.calls == [(3, True)]


def test_a_version_unloaded_during_the_loop_turn_answers_503() -> None:
    model = Model()
    b = warmed(model)

    async def main() -> None:
        asyncio.get_running_loop().call_soon(b.close)  # runs in the turn infer yields
        await asyncio.wait_for(b.infer(one()), timeout=5)

    with pytest.raises(ServiceOverloaded, match="no longer being served"):
        asyncio.run(main())
    assert model.calls == []


# -- the data plane: ``inflight`` decides -------------------------------------------------------
@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DataPlane]:
    with plane_of(tmp_path_factory.mktemp("inline"), Recorder()) as plane:
        yield plane


def _threads(plane: DataPlane, inflight: int, monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Whether each of three mnist-fc requests ran on the event loop's thread, with
    ``inflight`` HTTP requests counted in the worker."""
    loaded = plane.repository.get("mnist-fc")
    ran: list[bool] = []
    runner = loaded.batcher.runner

    def spy(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        ran.append(threading.get_ident() == loop_thread)
        return runner(feeds)

    monkeypatch.setattr(loaded.batcher, "runner", spy)
    plane.inflight = inflight
    loop_thread = threading.get_ident()
    feeds = loaded.kind.warm_feeds(loaded, 1)
    try:
        for _ in range(3):
            (scores,) = asyncio.run(plane.infer(loaded, feeds))
            assert scores.shape == (1, 10)
    finally:
        plane.inflight = 0
    return ran


def test_the_plane_runs_its_only_request_inline(plane: DataPlane,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    loaded = plane.repository.get("mnist-fc")
    assert 1 in loaded.batcher.costs  # measured at load: the default budget allows inline
    assert loaded.batcher.inline_max_s == plane.config.inline_max_ms / 1000 > 0
    assert _threads(plane, 1, monkeypatch) == [True] * 3


def test_the_plane_batches_when_other_requests_are_in_flight(
        plane: DataPlane, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not alone: through the queue, as a batch — on the event loop while the batch is cheap
    (a CPU runtime, ``inline_batch_max_ms``), else on the inference thread."""
    loaded = plane.repository.get("mnist-fc")
    assert loaded.runtime.device == "cpu"
    assert loaded.batcher.inline_batch_max_s == plane.config.inline_batch_max_ms / 1000 > 0
    assert _threads(plane, 2, monkeypatch) == [True] * 3
    monkeypatch.setattr(loaded.batcher, "inline_batch_max_s", 0.0)
    assert _threads(plane, 2, monkeypatch) == [False] * 3


def test_run_size_survives_a_burst_of_other_work_during_warm_up(monkeypatch: pytest.MonkeyPatch
                                                                ) -> None:
    """Issue 15: the warm-up times each batch size ``repeats`` times, round the sizes: a burst of
    another worker's work over several consecutive timed runs (here 5 runs at twice the time,
    starting anywhere) slows one round of every size, not every run of one size, and the size
    with the least time per item is still chosen. Size after size, a burst over one size's runs
    made it look dearer than it is (mnist-cnn came out 16, 32 or 64 from start to start)."""
    import services.batcher as batcher

    per_item = {16: 1.03, 32: 1.01, 64: 1.00, 128: 1.05}  # seconds per item, scripted
    for burst_at in range(20):
        calls = 0

        def timed(runner: object, feeds: dict[str, np.ndarray], burst_at: int = burst_at) -> float:
            nonlocal calls
            n = len(feeds["x"])
            slow = burst_at <= calls < burst_at + 5
            calls += 1
            return per_item[n] * n * (2.0 if slow else 1.0)

        monkeypatch.setattr(batcher, "_seconds", timed)
        b = Batcher("m", "v1", Model(), {"x": 0}, [0], max_batch_size=128, max_latency_s=5.0,
                    max_queue_items=1000, inline_max_s=0.001, split=True)
        b.warm(lambda n: {"x": np.zeros((n, 3), np.float32)}, [16, 32, 64, 128])
        assert b.run_size == 64, (burst_at, b.costs)

