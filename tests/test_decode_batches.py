"""Image decoding batched like inference (issue 15): with ``batching`` on, the requests that queue
while the decode threads are busy are decoded by one pool job and come back together; each
request's failure stays its own. In-process, with a stand-in decoder."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from services.kinds.image import DECODE_BATCH, _DecodeBatches


def _decoder() -> tuple[object, threading.Event, list[str]]:
    """A decode function that blocks until released, then records the order of its calls."""
    release, calls = threading.Event(), []

    def decode(name: str) -> str:
        release.wait(5)
        calls.append(name)
        if name.startswith("bad"):
            raise ValueError(f"{name}: not an image")
        return name.upper()

    return decode, release, calls


def test_requests_queued_behind_a_busy_pool_are_decoded_by_one_job() -> None:
    decode, release, calls = _decoder()
    pool = ThreadPoolExecutor(1)
    batches = _DecodeBatches(pool, 1)
    jobs: list[int] = []
    submit = pool.submit

    def counting(fn, *args):  # type: ignore[no-untyped-def]
        jobs.append(len(args[1]))  # (loop, batch)
        return submit(fn, *args)

    pool.submit = counting  # type: ignore[method-assign]

    async def run() -> list[object]:
        first = batches.submit(decode, ("a",))  # starts a job of one at once
        rest = [batches.submit(decode, (name,)) for name in ("b", "bad-c", "d")]
        await asyncio.sleep(0.05)
        release.set()
        return await asyncio.gather(first, *rest, return_exceptions=True)

    results = asyncio.run(run())
    assert results[0] == "A" and results[1] == "B" and results[3] == "D"
    assert isinstance(results[2], ValueError) and "bad-c" in str(results[2])  # its own 400
    assert jobs == [1, 3], jobs  # the three that queued went as one job
    assert calls == ["a", "b", "bad-c", "d"]
    pool.shutdown()


def test_a_job_takes_at_most_decode_batch_requests_and_skips_gone_clients() -> None:
    decode, release, calls = _decoder()
    pool = ThreadPoolExecutor(1)
    batches = _DecodeBatches(pool, 1)

    async def run() -> list[object]:
        first = batches.submit(decode, ("first",))
        queued = [batches.submit(decode, (f"n{i}",)) for i in range(DECODE_BATCH + 3)]
        queued[0].cancel()  # its client went away before the job began
        await asyncio.sleep(0.05)
        release.set()
        return await asyncio.gather(first, *queued[1:])

    results = asyncio.run(run())
    assert results == ["FIRST", *(f"N{i}" for i in range(1, DECODE_BATCH + 3))]
    assert "n0" not in calls and len(calls) == DECODE_BATCH + 3
    pool.shutdown()


def test_a_job_of_slow_images_hands_back_each_as_time_passes() -> None:
    """A request decoded early in a job of slow images (large photos) is answered then, not when
    the job's last image is done."""
    import time

    done_at: dict[str, float] = {}

    def slow(name: str) -> str:
        time.sleep(0.03)  # > DECODE_DELIVER_S
        return name

    pool = ThreadPoolExecutor(1)
    batches = _DecodeBatches(pool, 1)

    async def run() -> None:
        async def one(name: str) -> None:
            await batches.submit(slow, (name,))
            done_at[name] = time.perf_counter()
        await asyncio.gather(*(one(f"p{i}") for i in range(6)))

    asyncio.run(run())
    # p0 ran alone; p1..p5 went as one job of 5 × 30 ms: p1 heard back ~120 ms before p5.
    assert done_at["p5"] - done_at["p1"] > 0.08, done_at
    pool.shutdown()


def test_a_new_event_loop_starts_clean() -> None:
    """A job left running by an event loop that ended does not hold the next loop's requests."""
    decode, release, _ = _decoder()
    pool = ThreadPoolExecutor(2)
    batches = _DecodeBatches(pool, 1)

    async def abandon() -> None:
        batches.submit(decode, ("left",))  # never released within this loop

    asyncio.run(abandon())
    release.set()

    async def again() -> object:
        return await asyncio.wait_for(batches.submit(decode, ("next",)), 5)

    assert asyncio.run(again()) == "NEXT"
    pool.shutdown()


@pytest.mark.parametrize("batching", [True, False])
def test_the_image_endpoint_decodes_with_batching_on_and_off(batching: bool) -> None:
    """The decode path of the image kind, both ways, answers the same pixels."""
    import io

    import numpy as np
    from PIL import Image

    from services import codecs
    from services.config import ServeConfig
    from services.kinds.image import _off_loop

    buf = io.BytesIO()
    pixels = np.zeros((28, 28), np.uint8)
    pixels[6:22, 12:16] = 255  # a "1"
    Image.fromarray(pixels, "L").save(buf, "PNG")
    cfg = ServeConfig(batching=batching)

    async def run() -> list[np.ndarray]:
        return await asyncio.gather(*(
            _off_loop(cfg, codecs.decode_images, [("body", buf.getvalue())], 4, 10**6, 10**6)
            for _ in range(5)))

    out = asyncio.run(run())
    assert all(o.shape == (1, 1, 28, 28) for o in out)
    assert all(np.array_equal(o, out[0]) for o in out) and out[0].max() > 0.5


def test_a_pool_that_has_shut_down_fails_the_requests_instead_of_holding_them() -> None:
    decode, release, _ = _decoder()
    release.set()
    pool = ThreadPoolExecutor(1)
    pool.shutdown()
    batches = _DecodeBatches(pool, 1)

    async def run() -> object:
        return await asyncio.wait_for(batches.submit(decode, ("a",)), 5)

    with pytest.raises(RuntimeError, match="image decoding failed"):
        asyncio.run(run())
