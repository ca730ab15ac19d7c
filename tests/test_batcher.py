"""The adaptive batcher on its own: merging, splitting, deadlines, load shedding, failures."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from services.batcher import Batcher
from services.errors import InferenceError, InvalidInput, ServiceOverloaded


class Model:
    """A real (tiny) model: y = 2x + row sums, recording the batch sizes it was called with."""

    def __init__(self, delay: float = 0.0, fail: bool = False) -> None:
        self.delay, self.fail = delay, fail
        self.batches: list[int] = []
        self.lock = threading.Lock()

    def __call__(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        x = feeds["x"]
        with self.lock:
            self.batches.append(len(x))
        if self.delay:
            time.sleep(self.delay)
        if self.fail:
            raise RuntimeError("model exploded")
        return [2 * x, x.sum(axis=1, keepdims=True)]


def batcher(model: Model, **kwargs: object) -> Batcher:
    options = {"max_batch_size": 8, "max_latency_s": 5.0, "max_queue_items": 1000}
    options.update(kwargs)
    return Batcher("m", "v1", model, {"x": 0}, [0, 0], **options)


def run(coro):  # noqa: ANN001, ANN201
    return asyncio.run(coro)


def test_concurrent_requests_share_batches_and_get_their_own_rows() -> None:
    model = Model(delay=0.01)
    b = batcher(model)

    async def main() -> list[list[np.ndarray]]:
        xs = [np.full((1, 3), i, np.float32) for i in range(20)]
        return await asyncio.gather(*(b.infer({"x": x}) for x in xs))

    results = run(main())
    for i, (doubled, sums) in enumerate(results):
        assert doubled.tolist() == [[2 * i] * 3] and sums.tolist() == [[3 * i]]
    assert sum(model.batches) == 20
    assert max(model.batches) > 1 and max(model.batches) <= 8  # merged, never past the maximum


def test_a_lone_request_runs_at_once() -> None:
    model = Model()
    b = batcher(model)
    out = run(b.infer({"x": np.ones((3, 2), np.float32)}))
    assert model.batches == [3] and out[1].tolist() == [[2.0]] * 3


class Observed:
    def __init__(self) -> None:
        self.batches: list[tuple[int, int]] = []

    def observe_batch(self, model: str, version: str, requests: int, items: int, compute_s: float,
                      waits: list[float]) -> None:
        self.batches.append((requests, items))


def test_oversized_request_is_split_into_maximum_batches() -> None:
    model, metrics = Model(), Observed()
    b = batcher(model, max_batch_size=4, metrics=metrics)
    x = np.arange(22, dtype=np.float32).reshape(11, 2)
    doubled, sums = run(b.infer({"x": x}, alone=lambda: False))
    assert np.array_equal(doubled, 2 * x) and np.array_equal(sums[:, 0], x.sum(1))
    assert model.batches == [4, 4, 3]  # runs of at most the maximum, in order
    assert metrics.batches == [(1, 11)]  # one execution: one inference-thread call, no loop trips


def test_an_oversized_request_runs_alone_and_requests_behind_it_still_batch() -> None:
    model, metrics = Model(delay=0.01), Observed()
    b = batcher(model, max_batch_size=4, metrics=metrics)

    async def main() -> list[list[np.ndarray]]:
        small = [np.full((1, 2), i, np.float32) for i in range(6)]
        big = np.arange(20, dtype=np.float32).reshape(10, 2)
        first = asyncio.ensure_future(b.infer({"x": small[0]}))  # drives: the model is busy
        await asyncio.sleep(0)
        rest = [b.infer({"x": big}), *(b.infer({"x": x}) for x in small[1:])]
        return [await first, *await asyncio.gather(*rest)]

    results = run(main())
    assert np.array_equal(results[1][0], 2 * np.arange(20, dtype=np.float32).reshape(10, 2))
    for i, (doubled, _) in enumerate([results[0], *results[2:]]):
        assert doubled.tolist() == [[2 * i] * 2]
    # The big one ran next, as its own execution (10 items in runs of 4, 4, 2), never mixed
    # with others; the 5 small ones queued behind it still shared batches, at most 4 items.
    assert metrics.batches == [(1, 1), (1, 10), (4, 4), (1, 1)]
    assert model.batches == [1, 4, 4, 2, 4, 1]


def test_different_shapes_are_never_merged() -> None:
    model = Model(delay=0.005)
    b = batcher(model)

    async def main() -> None:
        await asyncio.gather(*(b.infer({"x": np.ones((1, 2 + i % 2), np.float32)})
                               for i in range(10)))

    run(main())
    assert sum(model.batches) == 10  # concatenation would have failed on mixed widths


def test_empty_batch_is_invalid() -> None:
    with pytest.raises(InvalidInput, match="empty batch"):
        run(batcher(Model()).infer({"x": np.zeros((0, 3), np.float32)}))


def test_deadline_and_queue_limit_answer_503() -> None:
    slow = Model(delay=0.3)
    b = batcher(slow, max_batch_size=1, max_latency_s=0.1)

    async def main() -> list[object]:
        return await asyncio.gather(*(b.infer({"x": np.ones((1, 1), np.float32)})
                                      for _ in range(4)), return_exceptions=True)

    outcomes = run(main())
    assert not isinstance(outcomes[0], Exception)
    assert any(isinstance(o, ServiceOverloaded) and "deadline" in str(o) for o in outcomes)

    full = batcher(Model(delay=0.2), max_queue_items=2, max_batch_size=1)

    async def flood() -> list[object]:
        return await asyncio.gather(*(full.infer({"x": np.ones((1, 1), np.float32)})
                                      for _ in range(6)), return_exceptions=True)

    outcomes = run(flood())
    assert any(isinstance(o, ServiceOverloaded) and "already queued" in str(o) for o in outcomes)
    assert any(not isinstance(o, Exception) for o in outcomes)


def test_model_failure_reaches_every_request_of_the_batch() -> None:
    b = batcher(Model(delay=0.01, fail=True))

    async def main() -> list[object]:
        return await asyncio.gather(*(b.infer({"x": np.ones((1, 2), np.float32)})
                                      for _ in range(5)), return_exceptions=True)

    outcomes = run(main())
    assert all(isinstance(o, InferenceError) and "model exploded" in str(o) for o in outcomes)


def test_a_cancelled_driver_does_not_strand_the_others() -> None:
    model = Model(delay=0.05)
    b = batcher(model, max_batch_size=1)

    async def main() -> list[object]:
        first = asyncio.ensure_future(b.infer({"x": np.ones((1, 1), np.float32)}))
        await asyncio.sleep(0)  # the first request now drives the batcher
        others = [asyncio.ensure_future(b.infer({"x": np.full((1, 1), i, np.float32)}))
                  for i in range(2, 5)]
        await asyncio.sleep(0.01)
        first.cancel()
        return await asyncio.wait_for(asyncio.gather(*others), timeout=5)

    results = run(main())
    assert [r[0].item() for r in results] == [4.0, 6.0, 8.0]


def test_batching_off_runs_each_request_alone() -> None:
    model = Model(delay=0.005)
    b = batcher(model, enabled=False)

    async def main() -> None:
        await asyncio.gather(*(b.infer({"x": np.ones((1, 2), np.float32)}) for _ in range(6)))

    run(main())
    assert model.batches == [1] * 6
