"""A lean adaptive batcher: one queue and one inference thread per loaded model version.

Requests queue up while the model runs; as soon as it is free, everything queued that fits
(same non-batch shapes, at most ``max_batch_size`` items) runs as one batch — the window closes as
soon as the queue is empty, so a lone request never waits. Properties, as Triton's dynamic
batcher and BentoML's have them:

- a request's own batch is respected: it is never split across batches; one that alone exceeds
  ``max_batch_size`` runs as a batch of its own, in one inference-thread call of consecutive
  runs of at most that size, so memory is bounded by ``max_batch_size`` whatever the client
  sends (and nothing waits on the event loop between its runs);
- the fastest runs (``split``): every warm-up batch size is timed at load, and a batch of more
  items than the size with the least time per item runs as consecutive runs of that size (on a
  CPU, smaller runs stay in cache);
- a deadline: a request that waited longer than ``max_latency`` is answered 503, and a queue
  past ``max_queue_items`` refuses new work with 503 at once (load shedding, not collapse);
- observability: batch sizes, requests per batch, queue wait and compute time go to ``/metrics``.

A request that is **alone** — nothing queued or running here, and (the caller says) no other
HTTP request in the worker — and whose batch size costs at most ``inline_max_s`` (measured at
load by ``warm``) runs on the event loop thread itself: no future, no thread hand-off, which at
one request at a time is most of the batcher's cost (a futex wake, a thread-safe callback, an
eventfd write and two GIL hand-overs). Anything else takes the queue above; under load the
worker's other requests make no request alone, so batches still form.

Under load, a **batch** whose size costs at most ``inline_batch_max_s`` (a CPU runtime: the
repository gives a GPU's batcher 0) runs on the event loop thread too: the driver first yields
one turn of the loop, so the requests that arrived together queue into the batch, then runs it
there; requests that arrive while it runs wait in their sockets and form the next batch. On a
CPU whose cores the workers already fill (one worker per core, one runtime thread each: the
default) the inference thread only overlapped parsing with the model on the same cores while
adding its hand-offs: batches were about half the requests in flight, and the thread's wake-ups,
GIL hand-overs and cache misses cost more than the overlap gave (issue 15; mnist-cnn JSON at
c=64 on this 2-core machine: ~30 requests a batch instead of ~15, 12–17 % more requests/s). A
costlier batch takes the inference thread, so the loop stalls at most ``inline_batch_max_s``.

A feed may be **deferred** (``Deferred``: a plain JSON image body, ``codecs.JsonImages``): its
shape and dtype are known at the request, its items are decoded when its batch forms, request
after request, straight into the batch's own array. A request whose input is then refused hears
its own error and leaves the batch; the others run.

Tensors may batch on different axes (the char-rnn state is [layers, batch, hidden]).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from services.errors import InferenceError, InvalidInput, ServiceOverloaded

Runner = Callable[[dict[str, np.ndarray]], list[np.ndarray]]


def _slice(array: np.ndarray, start: int, stop: int, axis: int) -> np.ndarray:
    """A view of ``array[start:stop]`` along ``axis``."""
    if not axis:  # the usual batch axis: a plain slice, no index tuple to build
        return array[start:stop]
    return array[(slice(None),) * axis + (slice(start, stop),)]


# The wait an inline run records (it never queued); read only.
_NO_WAIT = [0.0]


class Deferred:
    """A feed decoded only when its batch runs: ``shape``, ``dtype`` and ``size`` are known at
    the request (they decide the batch it joins, as an array's would); ``fill`` writes its items
    into ``out`` (an array of that shape and dtype: the request's rows of the batch's own
    array) or raises what the request's client should hear (e.g. ``InvalidInput``) — that
    request alone fails, the rest of the batch runs. The batcher fills a batch's deferred feeds
    one request after another on the event loop, then hands each request's rows back in its
    feeds (what a shadow copy reads)."""

    __slots__ = ()
    shape: tuple[int, ...]
    dtype: np.dtype
    size: int

    def fill(self, out: np.ndarray) -> None:
        raise NotImplementedError

    def array(self) -> np.ndarray:
        out = np.empty(self.shape, self.dtype)
        self.fill(out)
        return out


def _materialize(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``feeds`` with each deferred feed decoded, in place (the caller's dict: its rollout
    shadow reads the arrays); its errors are the request's own."""
    for name, value in feeds.items():
        if isinstance(value, Deferred):
            feeds[name] = value.array()
    return feeds


@dataclass(slots=True)
class _Pending:
    feeds: dict[str, np.ndarray]
    n: int
    future: asyncio.Future
    enqueued: float
    # What must match to share a batch: computed only when another request is there to match.
    key: tuple | None = None


def _seconds(runner: Runner, feeds: dict[str, np.ndarray]) -> float:
    """How long one run of ``feeds`` takes."""
    started = time.perf_counter()
    runner(feeds)
    return time.perf_counter() - started


class Batcher:
    def __init__(self, model: str, version: str, runner: Runner, input_axes: dict[str, int],
                 output_axes: list[int], max_batch_size: int, max_latency_s: float,
                 max_queue_items: int, wait_s: float = 0.0, enabled: bool = True,
                 metrics: object | None = None, inline_max_s: float = 0.0,
                 split: bool = False, inline_batch_max_s: float = 0.0) -> None:
        self.model, self.version = model, version
        self.runner = runner
        self.input_axes = input_axes
        self._first_input = next(iter(input_axes.items()))  # the input whose axis counts items
        self.output_axes = output_axes
        self.max_batch_size = max_batch_size
        self.max_latency_s = max_latency_s
        self.max_queue_items = max_queue_items
        self.wait_s = wait_s
        self.enabled = enabled
        self.metrics = metrics
        self.inline_max_s = inline_max_s
        self.inline_batch_max_s = inline_batch_max_s
        self.split = split
        # The warmed batch size with the least time per item (``warm``, when ``split``): a batch
        # of more items runs as consecutive runs of this size. None: every batch runs whole.
        self.run_size: int | None = None
        # Warmed batch size → its measured seconds (``warm``); a size not here never runs inline.
        self.costs: dict[int, float] = {}
        self._item_sizes: dict[str, int] = {}  # elements per item of each input, as warmed
        self._queue: deque[_Pending] = deque()
        self._queued_items = 0
        self._running = 0  # runs on the inference thread now
        self._driving = False
        self._driver: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"infer-{model}")
        self._closed = False

    def warm(self, feeds_of: Callable[[int], dict[str, np.ndarray]], sizes: list[int],
             repeats: int = 5) -> None:
        """Run the model once at each batch size in ``sizes`` (ascending), so first requests
        pay no first-run costs; then time each size (the best of ``repeats`` more runs: a
        shared machine only ever adds time): what may run inline (``inline_max_s``) and which
        size runs the most items per second (``run_size``). The timed runs go round the sizes
        ``repeats`` times rather than size after size: the workers warm up together, and a
        burst of the other's work then slows every size a little instead of one size a lot
        (issue 15). The rounds go up and down in turn: going up every time, the smallest size
        always ran right after the largest, with cold caches (mnist-cnn's 1 item: 0.10–0.13 ms
        timed so, 0.03 ms warm). Timing adds about ``repeats``
        times the warm-up to the load; with neither inline runs (alone or batches) nor split
        batches it is skipped."""
        warmed = [(size, feeds_of(size)) for size in sizes]
        for _, feeds in warmed:
            self.runner(feeds)
        if not (self.inline_max_s > 0 or self.inline_batch_max_s > 0 or self.split):
            return
        for round_ in range(repeats):  # up, then down: no size always follows the largest
            for size, feeds in (warmed if round_ % 2 == 0 else warmed[::-1]):
                took = _seconds(self.runner, feeds)
                self.costs[size] = min(took, self.costs.get(size, took))
        if warmed and not self._item_sizes:
            size, feeds = warmed[0]
            self._item_sizes = {k: max(1, v.size // size) for k, v in feeds.items()}
        if self.split and self.costs:
            self.run_size = min(self.costs, key=lambda size: (self.costs[size] / size, -size))

    def _cheap(self, feeds: dict[str, np.ndarray], n: int, budget: float | None = None) -> bool:
        """Whether ``n`` items cost at most ``budget`` (default ``inline_max_s``): the measured
        cost of the smallest warmed batch size that holds them, scaled by how much larger than
        the warm-up's each item is (a longer char-rnn prompt, a bigger tensor of an imported
        model)."""
        budget = self.inline_max_s if budget is None else budget
        if n > self.max_batch_size:
            return False
        cost = self.costs.get(min(1 << (n - 1).bit_length(), self.max_batch_size))
        if cost is None or cost > budget:
            return False
        for name, array in feeds.items():
            per_item = self._item_sizes.get(name)
            if per_item is None:
                return False
            if array.size > n * per_item:
                cost *= array.size / (n * per_item)
        return cost <= budget

    def _batch_of(self, feeds: dict[str, np.ndarray]) -> int:
        name, axis = self._first_input
        return int(feeds[name].shape[axis])

    async def infer(self, feeds: dict[str, np.ndarray],
                    alone: Callable[[], bool] | None = None) -> list[np.ndarray]:
        """The outputs for ``feeds`` (each input batched on its axis), via the shared batches, or
        on the calling thread when the request is alone and cheap. ``alone``: whether no other
        request is in flight in the worker now (the data plane counts them); None: a caller
        nothing counts, alone whenever the batcher is idle."""
        if self._closed:
            raise self._gone()
        n = self._batch_of(feeds)
        if n == 0:
            raise InvalidInput("empty batch: send at least one item")
        if self._may_inline(alone) and self._cheap(feeds, n):
            # One turn of the event loop first: requests that arrived with this one (their tasks
            # are ready, not yet counted) enter and are counted, so a burst queues and batches.
            await asyncio.sleep(0)
            if self._may_inline(alone):
                return self._run_inline(feeds, n)
            if self._closed:  # unloaded during that turn: never queue on a closed batcher
                raise self._gone()
        loop = asyncio.get_running_loop()
        if not self.enabled:
            _materialize(feeds)
            started = time.perf_counter()
            self._running += 1
            try:
                out = await loop.run_in_executor(self._executor, self._run, feeds)
            except Exception as exc:
                raise self._failure(exc) from exc
            finally:
                self._running -= 1
            self._observe(1, n, time.perf_counter() - started, _NO_WAIT)
            return out
        if self._queued_items + n > self.max_queue_items:
            raise ServiceOverloaded(f"{self.model}: {self._queued_items} items already queued "
                                    f"(max_queue_items={self.max_queue_items}); retry later")
        pending = _Pending(feeds, n, loop.create_future(), time.monotonic())
        self._queue.append(pending)
        self._queued_items += n
        if not self._driving:
            self._driving = True
            await self._drive(pending)
        return await pending.future

    def _may_inline(self, alone: Callable[[], bool] | None) -> bool:
        """Nothing queued or running here, and (``alone``) no other request in the worker."""
        return (not self._running and not self._queue and not self._closed
                and (alone is None or alone()))

    def _run_inline(self, feeds: dict[str, np.ndarray], n: int) -> list[np.ndarray]:
        _materialize(feeds)  # a refusal is this request's own: raised as it is
        started = time.perf_counter()
        try:
            out = self._run(feeds)
        except Exception as exc:
            raise self._failure(exc) from exc
        self._observe(1, n, time.perf_counter() - started, _NO_WAIT)
        return out

    def _run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The model on ``feeds``, at most ``run_size`` (else ``max_batch_size``) items per run,
        the outputs joined on their batch axes: memory stays bounded by the batch size whatever a
        request holds, and on a CPU smaller runs stay in cache (mnist-cnn: 1,024 images in
        18.0 ms as runs of 64, 19.1 ms as runs of 256 — issue 15)."""
        size = self.run_size or self.max_batch_size
        n = self._batch_of(feeds)
        if n <= size:
            return self.runner(feeds)
        axes = self.input_axes
        parts = [self.runner({k: _slice(v, start, min(n, start + size), axes[k])
                              for k, v in feeds.items()}) for start in range(0, n, size)]
        return [np.concatenate([p[i] for p in parts], axis=ax) for i, ax in enumerate(self.output_axes)]

    def _gone(self) -> ServiceOverloaded:
        return ServiceOverloaded(f"{self.model}:{self.version} is no longer being served")

    def _failure(self, exc: Exception) -> InferenceError:
        return InferenceError(f"{self.model}:{self.version} failed: {exc}")

    def _key(self, p: _Pending) -> tuple:
        """What ``p`` must share with a batch: each input's dtype and non-batch shape."""
        if p.key is None:
            axes = self.input_axes
            p.key = tuple((k, v.dtype.str, v.shape[:axes[k]] + v.shape[axes[k] + 1:])
                          for k, v in p.feeds.items())
        return p.key

    def _expired(self, p: _Pending, now: float) -> bool:
        """Drop ``p`` from the count if its client went away or it is past the deadline (then
        it hears 503)."""
        if p.future.done():  # the client went away
            self._queued_items -= p.n
            return True
        if now - p.enqueued > self.max_latency_s:
            self._queued_items -= p.n
            p.future.set_exception(ServiceOverloaded(
                f"{self.model}: request waited {now - p.enqueued:.2f}s, past the "
                f"{self.max_latency_s:.2f}s latency deadline; the server is overloaded"))
            return True
        return False

    def _take(self) -> list[_Pending]:
        now = time.monotonic()
        if len(self._queue) == 1:  # nothing to match it with: no key, no scan
            p = self._queue.popleft()
            if self._expired(p, now):
                return []
            self._queued_items -= p.n
            return [p]
        batch: list[_Pending] = []
        keep: deque[_Pending] = deque()
        total, key = 0, None
        queue, max_batch = self._queue, self.max_batch_size
        while queue:
            p = queue.popleft()
            if self._expired(p, now):
                continue
            if p.n > max_batch:  # an oversized request runs alone, in runs (``_run``)
                if batch:
                    keep.append(p)
                    continue
                self._queued_items -= p.n
                batch.append(p)
                break
            if key is None:
                key = self._key(p)
            if total + p.n <= max_batch and self._key(p) == key:
                batch.append(p)
                total += p.n
                self._queued_items -= p.n
            else:
                keep.append(p)
                if total >= max_batch:
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
                elif self.inline_batch_max_s:
                    # One turn of the loop: the requests that arrived with this one queue first,
                    # so a batch run on this thread (``_execute``) holds them all.
                    await asyncio.sleep(0)
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
        waits = [time.monotonic() - p.enqueued for p in batch]
        try:
            feeds, kept = self._feeds(batch)  # a request whose input is refused leaves it here
        except Exception as exc:  # joining the inputs failed: every request hears why
            self._fail(batch, exc)
            return
        if len(kept) < len(batch):
            waits = [time.monotonic() - p.enqueued for p in kept]
            batch = kept
            if not batch:
                return
        started = time.perf_counter()
        items = sum(p.n for p in batch)
        try:
            self._running += 1
            try:
                if self.inline_batch_max_s and self._cheap(feeds, items, self.inline_batch_max_s):
                    outputs = self._run(feeds)  # on the event loop (module docstring)
                else:
                    outputs = await loop.run_in_executor(self._executor, self._run, feeds)
            finally:
                self._running -= 1
        except Exception as exc:  # the model failed: every request of the batch hears why
            self._fail(batch, exc)
            return
        self._observe(len(batch), items, time.perf_counter() - started, waits)
        if len(batch) == 1:
            if not batch[0].future.done():
                batch[0].future.set_result(outputs)
            return
        offset = 0
        outs = list(zip(outputs, self.output_axes, strict=True))
        for p in batch:
            stop = offset + p.n
            if not p.future.done():
                p.future.set_result([_slice(o, offset, stop, ax) for o, ax in outs])
            offset = stop

    def _fail(self, batch: list[_Pending], exc: Exception) -> None:
        error = self._failure(exc)
        for p in batch:
            if not p.future.done():
                p.future.set_exception(error)

    def _feeds(self, batch: list[_Pending]) -> tuple[dict[str, np.ndarray], list[_Pending]]:
        """The batch's inputs, each joined on its axis, and the requests in them: a request
        whose deferred feed refuses hears its error now and leaves the batch."""
        if len(batch) == 1:
            p = batch[0]
            try:
                return _materialize(p.feeds), batch
            except Exception as exc:  # the request's own input: its client hears it as it is
                if not p.future.done():
                    p.future.set_exception(exc)
                return {}, []
        axes = self.input_axes
        if not any(isinstance(v, Deferred) for p in batch for v in p.feeds.values()):
            return {k: np.concatenate([p.feeds[k] for p in batch], axis=ax)
                    for k, ax in axes.items()}, batch
        # Filled into the batch's own arrays, request after request: deferred feeds decode
        # here (``Deferred``), arrays are copied as ``np.concatenate`` would.
        first = batch[0].feeds
        total = sum(p.n for p in batch)
        feeds = {}
        for k, ax in axes.items():
            shape = list(first[k].shape)
            shape[ax] = total
            feeds[k] = np.empty(shape, first[k].dtype)
        kept: list[_Pending] = []
        offset = 0
        inputs = [(k, ax, feeds[k]) for k, ax in axes.items()]
        for p in batch:
            stop = offset + p.n
            mine = p.feeds
            try:
                for k, ax, whole in inputs:
                    rows = _slice(whole, offset, stop, ax)
                    value = mine[k]
                    if isinstance(value, Deferred):
                        value.fill(rows)
                    else:
                        rows[...] = value
                    mine[k] = rows  # its rows of the batch (a refused request's are reused)
            except Exception as exc:  # this request's input: it alone hears why
                if not p.future.done():
                    p.future.set_exception(exc)
                continue
            kept.append(p)
            offset = stop
        if offset < total:  # refused requests' rows are the tail left unused
            feeds = {k: _slice(v, 0, offset, axes[k]) for k, v in feeds.items()}
        return feeds, kept

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
