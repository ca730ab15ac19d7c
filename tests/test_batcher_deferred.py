"""Feeds decoded when their batch runs (``services.batcher.Deferred``, issue 15): each request's
rows are filled into the batch's own array in the order the requests joined; a request whose
input is refused hears its own error and leaves the batch, which runs on for the others; alone,
with batching off, inline or on the inference thread, the same. Fast and in-process: a tiny
model that records what it saw."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from services.batcher import Batcher, Deferred
from services.errors import InferenceError, InvalidInput


class Later(Deferred):
    """One request's rows, known by shape at the request, written when the batch forms; a
    negative value is refused, as a pixel out of range is."""

    __slots__ = ("value", "shape", "size", "filled")
    dtype = np.dtype(np.float32)

    def __init__(self, value: float, n: int = 1) -> None:
        self.value, self.shape, self.size, self.filled = value, (n, 3), 3 * n, 0

    def fill(self, out: np.ndarray) -> None:
        self.filled += 1
        if self.value < 0:
            raise InvalidInput(f"value {self.value} is negative", field="x")
        out[...] = self.value


class Model:
    """y = 2x, recording each batch it ran."""

    def __init__(self) -> None:
        self.batches: list[np.ndarray] = []

    def __call__(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        self.batches.append(feeds["x"].copy())
        return [2 * feeds["x"]]


def batcher(model: Model, **options: object) -> Batcher:
    kwargs = {"max_batch_size": 64, "max_latency_s": 5.0, "max_queue_items": 1000, **options}
    b = Batcher("m", "v1", model, {"x": 0}, [0], **kwargs)
    b.warm(lambda n: {"x": np.zeros((n, 3), np.float32)}, [1, 2, 4, 8, 16, 32, 64])
    model.batches.clear()
    return b


def crowd(b: Batcher, feeds: list[dict[str, object]]) -> list[object]:
    async def main() -> list[object]:
        return await asyncio.gather(*(b.infer(f, alone=lambda: False) for f in feeds),
                                    return_exceptions=True)
    return asyncio.run(main())


@pytest.mark.parametrize("inline_s", [0.05, 0.0], ids=["on the loop", "on the thread"])
def test_a_batch_fills_deferred_feeds_and_only_refused_requests_fail(inline_s: float) -> None:
    model = Model()
    b = batcher(model, inline_max_s=0.0, inline_batch_max_s=inline_s)
    values = [1.0, -1.0, 2.0, 3.0, -2.0, 4.0]
    feeds: list[dict[str, object]] = [{"x": Later(v, n=1 + i % 2)} for i, v in enumerate(values)]
    feeds.insert(3, {"x": np.full((2, 3), 9.0, np.float32)})  # an array in the same batch
    answers = crowd(b, feeds)
    for f, answer in zip(feeds, answers, strict=True):
        value = f["x"]
        if isinstance(value, Later) and value.value < 0:
            assert isinstance(answer, InvalidInput) and "is negative" in answer.message
            assert f["x"] is value  # never filled into the batch
            continue
        rows = np.asarray(f["x"])  # the request's rows of the batch, an array now
        assert not isinstance(f["x"], Deferred)
        (out,) = answer
        assert out.shape == rows.shape and np.array_equal(out, 2 * rows)
    # The accepted requests' rows only, in the order they joined: one batch on the loop (the
    # driver yields a turn first); on the thread the driver's own request may run first.
    assert len(model.batches) == (1 if inline_s else 2)
    ran = np.concatenate(model.batches)
    assert ran[:, 0].tolist() == [1, 2, 9, 9, 3, 3, 4, 4]
    assert all(f["x"].filled == 1 for f in feeds if isinstance(f["x"], Later))


def test_a_lone_deferred_feed_is_filled_inline_and_its_refusal_is_its_own() -> None:
    model = Model()
    b = batcher(model, inline_max_s=0.05)
    feeds: dict[str, object] = {"x": Later(5.0)}
    (out,) = asyncio.run(b.infer(feeds))
    assert out.tolist() == [[10.0] * 3] and isinstance(feeds["x"], np.ndarray)
    with pytest.raises(InvalidInput, match="is negative"):
        asyncio.run(b.infer({"x": Later(-5.0)}))
    assert len(model.batches) == 1  # the refused one never ran


@pytest.mark.parametrize("enabled", [True, False], ids=["batching on", "batching off"])
def test_every_path_through_the_thread_fills_and_refuses_alike(enabled: bool) -> None:
    model = Model()
    b = batcher(model, inline_max_s=0.0, inline_batch_max_s=0.0, enabled=enabled)
    (out,) = asyncio.run(b.infer({"x": Later(1.5, n=2)}))
    assert out.tolist() == [[3.0] * 3] * 2
    with pytest.raises(InvalidInput, match="is negative"):
        asyncio.run(b.infer({"x": Later(-1.0)}))
    assert len(model.batches) == 1


def test_a_batch_whose_every_request_is_refused_runs_nothing() -> None:
    model = Model()
    b = batcher(model, inline_max_s=0.0, inline_batch_max_s=0.05)
    answers = crowd(b, [{"x": Later(-1.0)}, {"x": Later(-2.0)}, {"x": Later(-3.0)}])
    assert all(isinstance(a, InvalidInput) for a in answers)
    assert model.batches == []


def test_a_model_failure_after_filling_is_still_every_requests() -> None:
    def broken(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        raise RuntimeError("model exploded")

    b = Batcher("m", "v1", broken, {"x": 0}, [0], max_batch_size=64, max_latency_s=5.0,
                max_queue_items=1000, inline_max_s=0.0, inline_batch_max_s=0.0)
    answers = crowd(b, [{"x": Later(1.0)}, {"x": Later(-1.0)}, {"x": Later(2.0)}])
    assert isinstance(answers[1], InvalidInput)  # refused before the model ran
    assert all(isinstance(answers[i], InferenceError) and "model exploded" in str(answers[i])
               for i in (0, 2))
