"""A lean adaptive batcher: one queue and one inference thread per loaded model version.

Requests queue up while the model runs; as soon as it is free, everything queued that fits
(same non-batch shapes, at most ``max_batch_size`` items) runs as one batch — the window closes as
soon as the queue is empty, so a lone request never waits. Properties, as Triton's dynamic
batcher and BentoML's have them:

- a request's own batch is respected: it is never split across batches unless it alone exceeds
  ``max_batch_size``, in which case it is cut into chunks of at most that size, so memory is
  bounded by ``max_batch_size`` whatever the client sends;
- a deadline: a request that waited longer than ``max_latency`` is answered 503, and a queue
  past ``max_queue_items`` refuses new work with 503 at once (load shedding, not collapse);
- observability: batch sizes, requests per batch, queue wait and compute time go to ``/metrics``.

Tensors may batch on different axes (the char-rnn state is [layers, batch, hidden]).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from services.errors import InferenceError, InvalidInput, ServiceOverloaded

Runner = Callable[[dict[str, np.ndarray]], list[np.ndarray]]


def _slice(array: np.ndarray, start: int, stop: int, axis: int) -> np.ndarray:
    """A view of ``array[start:stop]`` along ``axis``."""
    return array[(slice(None),) * axis + (slice(start, stop),)]


@dataclass
class _Pending:
    feeds: dict[str, np.ndarray]
    n: int
    key: tuple
    future: asyncio.Future
    enqueued: float = field(default_factory=time.monotonic)


class Batcher:
    def __init__(self, model: str, version: str, runner: Runner, input_axes: dict[str, int],
                 output_axes: list[int], max_batch_size: int, max_latency_s: float,
                 max_queue_items: int, wait_s: float = 0.0, enabled: bool = True,
                 metrics: object | None = None) -> None:
        self.model, self.version = model, version
        self.runner = runner
        self.input_axes = input_axes
        self.output_axes = output_axes
        self.max_batch_size = max_batch_size
        self.max_latency_s = max_latency_s
        self.max_queue_items = max_queue_items
        self.wait_s = wait_s
        self.enabled = enabled
        self.metrics = metrics
        self._queue: deque[_Pending] = deque()
        self._queued_items = 0
        self._driving = False
        self._driver: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"infer-{model}")
        self._closed = False

    def _batch_of(self, feeds: dict[str, np.ndarray]) -> int:
        name, axis = next(iter(self.input_axes.items()))
        return int(feeds[name].shape[axis])

    async def infer(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The outputs for ``feeds`` (each input batched on its axis), via the shared batches."""
        if self._closed:
            raise ServiceOverloaded(f"{self.model}:{self.version} is no longer being served")
        n = self._batch_of(feeds)
        if n == 0:
            raise InvalidInput("empty batch: send at least one item")
        if n > self.max_batch_size:
            chunks = []
            for start in range(0, n, self.max_batch_size):
                stop = min(n, start + self.max_batch_size)
                chunks.append({k: _slice(v, start, stop, self.input_axes[k])
                               for k, v in feeds.items()})
            parts = await asyncio.gather(*(self.infer(c) for c in chunks))
            return [np.concatenate([p[i] for p in parts], axis=ax)
                    for i, ax in enumerate(self.output_axes)]
        loop = asyncio.get_running_loop()
        if not self.enabled:
            started = time.perf_counter()
            out = await loop.run_in_executor(self._executor, self.runner, feeds)
            self._observe(1, n, time.perf_counter() - started, [0.0])
            return out
        if self._queued_items + n > self.max_queue_items:
            raise ServiceOverloaded(f"{self.model}: {self._queued_items} items already queued "
                                    f"(max_queue_items={self.max_queue_items}); retry later")
        key = tuple((k, v.dtype.str, v.shape[:self.input_axes[k]] + v.shape[self.input_axes[k] + 1:])
                    for k, v in feeds.items())
        pending = _Pending(feeds, n, key, loop.create_future())
        self._queue.append(pending)
        self._queued_items += n
        if not self._driving:
            self._driving = True
            await self._drive(pending)
        return await pending.future

    def _take(self) -> list[_Pending]:
        now = time.monotonic()
        batch: list[_Pending] = []
        keep: deque[_Pending] = deque()
        total, key = 0, None
        while self._queue:
            p = self._queue.popleft()
            if p.future.done():  # the client went away
                self._queued_items -= p.n
                continue
            if now - p.enqueued > self.max_latency_s:
                self._queued_items -= p.n
                p.future.set_exception(ServiceOverloaded(
                    f"{self.model}: request waited {now - p.enqueued:.2f}s, past the "
                    f"{self.max_latency_s:.2f}s latency deadline; the server is overloaded"))
                continue
            if key is None:
                key = p.key
            if p.key == key and total + p.n <= self.max_batch_size:
                batch.append(p)
                total += p.n
                self._queued_items -= p.n
            else:
                keep.append(p)
                if total >= self.max_batch_size:
                    break
        keep.extend(self._queue)
        self._queue = keep
        return batch

    async def _drive(self, owner: _Pending | None) -> None:
        """Run batches until the queue is empty.

        A request that finds the batcher idle drives it itself, so an uncontended request costs no
        task switch; once its own answer is in and work remains, it hands the queue to a
        background task and returns to its client. Exactly one driver exists while
        ``_driving`` is set.
        """
        loop = asyncio.get_running_loop()
        handed_off = False
        try:
            while self._queue and not self._closed:
                if owner is not None and owner.future.done():
                    self._driver = loop.create_task(self._drive(None))
                    handed_off = True
                    return
                if self.wait_s and self._queued_items < self.max_batch_size:
                    await asyncio.sleep(self.wait_s)
                batch = self._take()
                if len(batch) == 1 and batch[0] is owner:
                    await self._execute(batch)  # nobody else's answer depends on this await
                elif batch:
                    # Shielded: if the driving client goes away, the others' batch completes.
                    await asyncio.shield(self._execute(batch))
        except asyncio.CancelledError:
            if self._queue and not self._closed:
                self._driver = loop.create_task(self._drive(None))
                handed_off = True
            raise
        finally:
            if not handed_off:
                self._driving = False

    async def _execute(self, batch: list[_Pending]) -> None:
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        waits = [time.monotonic() - p.enqueued for p in batch]
        try:
            if len(batch) == 1:
                feeds = batch[0].feeds
            else:
                feeds = {k: np.concatenate([p.feeds[k] for p in batch], axis=ax)
                         for k, ax in self.input_axes.items()}
            outputs = await loop.run_in_executor(self._executor, self.runner, feeds)
        except Exception as exc:  # the model failed: every request of the batch hears why
            error = InferenceError(f"{self.model}:{self.version} failed: {exc}")
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(error)
            return
        self._observe(len(batch), sum(p.n for p in batch), time.perf_counter() - started, waits)
        offset = 0
        for p in batch:
            if not p.future.done():
                p.future.set_result([
                    _slice(o, offset, offset + p.n, ax) if len(batch) > 1 else o
                    for o, ax in zip(outputs, self.output_axes, strict=True)])
            offset += p.n

    def _observe(self, requests: int, items: int, seconds: float, waits: list[float]) -> None:
        if self.metrics is not None:
            self.metrics.observe_batch(self.model, self.version, requests, items, seconds, waits)

    def close(self) -> None:
        """Stop serving: queued requests are answered 503, nothing waits forever."""
        self._closed = True
        while self._queue:
            p = self._queue.popleft()
            if not p.future.done():
                p.future.set_exception(ServiceOverloaded(
                    f"{self.model}:{self.version} was unloaded; retry"))
        self._queued_items = 0
        self._executor.shutdown(wait=False)
