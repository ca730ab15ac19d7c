"""Continuous batching of char-rnn generations (issue 15): one loop per loaded text version.

Stepping each generation through the per-request batcher cost every character its own future,
batcher slot, executor hand-off and Python draw on the event loop (c=1 → c=32 gave 1.5–2× the
characters/s). Here the active generations advance together: each iteration draws every
sequence's next character (``models.textcodec.sample_rows``, one ``rng.random()`` per sequence
from its own generator, so a seed's text does not depend on its company) and runs ONE model step
for all that still need one, both on the loop's inference thread. New generations join between
iterations (their prompt was run by the caller, through the batcher); finished ones leave.

Bounds, as the batcher's: at most ``max_batch_size`` sequences per step (the others wait, first
come first served); a generation that waited longer than ``max_latency`` for a place is answered
503, and more than ``max_queue_items`` waiting ones refuse new work with 503 at once. A cancelled
generation (its client went away) leaves at the next iteration. A failing step fails the
generations in it (500) and the loop goes on; ``close`` (the version unloaded) answers 503 to
everything still in it. The loop's task exists only while it has work, so an idle or draining
server has none running.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from models.textcodec import sample_rows
from services.errors import InferenceError, ServiceOverloaded

log = logging.getLogger("podium.textloop")

Runner = Callable[[dict[str, np.ndarray]], list[np.ndarray]]


@dataclass(eq=False)
class _Sequence:
    logits: np.ndarray  # [V]: the last step's scores, from which the next character is drawn
    state: np.ndarray  # [layers, 1, hidden]: the recurrent state after the last step
    n: int  # characters to generate
    rng: np.random.Generator
    temperature: float
    top_k: int  # the vocabulary size when there is no cut
    future: asyncio.Future
    out: list[int] = field(default_factory=list)
    enqueued: float = field(default_factory=time.monotonic)


@dataclass
class _Outcome:
    done: list[_Sequence]  # finished: every character drawn
    stepped: list[_Sequence]  # advanced by one step, still generating
    error: Exception | None  # the step failed: ``stepped`` holds the sequences it failed
    compute_s: float


def _advance(active: list[_Sequence], runner: Runner) -> _Outcome:
    """Draw every active sequence's next character, then step those that need more (on the
    loop's inference thread: the event loop only admits and answers)."""
    started = time.perf_counter()
    ids = sample_rows(np.stack([s.logits for s in active]), [s.rng for s in active],
                      np.array([s.temperature for s in active]), np.array([s.top_k for s in active]))
    done, stepping = [], []
    for seq, nxt in zip(active, ids.tolist(), strict=True):
        seq.out.append(nxt)
        (done if len(seq.out) == seq.n else stepping).append(seq)
    if not stepping:
        return _Outcome(done, [], None, time.perf_counter() - started)
    feeds = {"tokens": np.array([[s.out[-1]] for s in stepping], np.int64),
             "state": np.concatenate([s.state for s in stepping], axis=1)}
    try:
        logits, state = runner(feeds)
    except Exception as exc:  # the model failed: the sequences of this step hear why
        return _Outcome(done, stepping, exc, time.perf_counter() - started)
    for j, seq in enumerate(stepping):
        seq.logits, seq.state = logits[j, -1], state[:, j:j + 1]
    return _Outcome(done, stepping, None, time.perf_counter() - started)


class TextLoop:
    def __init__(self, model: str, version: str, runner: Runner, max_batch_size: int,
                 max_latency_s: float, max_queue_items: int, metrics: object | None = None) -> None:
        self.model, self.version = model, version
        self.runner = runner
        self.max_batch_size = max_batch_size
        self.max_latency_s = max_latency_s
        self.max_queue_items = max_queue_items
        self.metrics = metrics
        self._waiting: deque[_Sequence] = deque()
        self._active: list[_Sequence] = []
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"textloop-{model}")
        self._closed = False

    @property
    def sequences(self) -> int:
        """Generations in the loop, active or waiting (0 once every one has left)."""
        return len(self._active) + len(self._waiting)

    async def generate(self, logits: np.ndarray, state: np.ndarray, n: int, rng: np.random.Generator,
                       temperature: float, top_k: int | None) -> list[int]:
        """The ids of ``n`` characters drawn from ``logits`` [V] (the prompt's last step) on,
        the model stepped from ``state`` [layers, 1, hidden] with each drawn character."""
        if self._closed:
            raise ServiceOverloaded(f"{self.model}:{self.version} is no longer being served")
        if len(self._waiting) >= self.max_queue_items:
            raise ServiceOverloaded(f"{self.model}: {len(self._waiting)} generations already wait "
                                    f"(max_queue_items={self.max_queue_items}); retry later")
        loop = asyncio.get_running_loop()
        seq = _Sequence(logits, state, n, rng, temperature, top_k or len(logits), loop.create_future())
        self._waiting.append(seq)
        if self._task is None:
            self._task = loop.create_task(self._run())
        return await seq.future  # cancelling the caller cancels the future: it leaves the loop

    def _admit(self) -> list[float]:
        """Move waiting generations into free places (FIFO); answer 503 to those past the
        deadline. The waits of the admitted ones, for the queue-wait metric."""
        now = time.monotonic()
        self._active = [s for s in self._active if not s.future.done()]
        waits = []
        while self._waiting and len(self._active) < self.max_batch_size:
            seq = self._waiting.popleft()
            if seq.future.done():  # the client went away while waiting
                continue
            if now - seq.enqueued > self.max_latency_s:
                seq.future.set_exception(ServiceOverloaded(
                    f"{self.model}: generation waited {now - seq.enqueued:.2f}s for a place, past "
                    f"the {self.max_latency_s:.2f}s latency deadline; the server is overloaded"))
                continue
            self._active.append(seq)
            waits.append(now - seq.enqueued)
        return waits

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while not self._closed:
                waits = self._admit()
                if not self._active:
                    return
                active = self._active
                outcome = await loop.run_in_executor(self._executor, _advance, active, self.runner)
                for seq in outcome.done:
                    if not seq.future.done():
                        seq.future.set_result(seq.out)
                if outcome.error is not None:
                    error = InferenceError(f"{self.model}:{self.version} failed: {outcome.error}")
                    for seq in outcome.stepped:
                        if not seq.future.done():
                            seq.future.set_exception(error)
                elif outcome.stepped and self.metrics is not None:
                    self.metrics.observe_batch(self.model, self.version, len(outcome.stepped),
                                               len(outcome.stepped), outcome.compute_s, waits)
                self._active = [s for s in outcome.stepped if outcome.error is None]
        except asyncio.CancelledError:  # the event loop is shutting down: nobody is left waiting
            self._fail(ServiceOverloaded(f"{self.model}:{self.version}: the server is stopping"))
            raise
        except Exception as exc:  # never leave a generation waiting on a loop that stopped
            if not self._closed:  # (closed: the executor refused the step; answered 503 below)
                log.exception("%s:%s generation loop failed", self.model, self.version)
                self._fail(InferenceError(f"{self.model}:{self.version} generation loop failed: {exc}"))
        finally:
            self._task = None
            if self._closed:
                self._fail(ServiceOverloaded(f"{self.model}:{self.version} was unloaded; retry"))
            elif self._waiting:  # arrived after the last admission: a fresh task serves them
                self._task = loop.create_task(self._run())

    def _fail(self, error: Exception) -> None:
        for seq in (*self._active, *self._waiting):
            if not seq.future.done():
                seq.future.set_exception(error)
        self._active, self._waiting = [], deque()

    def close(self) -> None:
        """Stop serving (the version is unloaded): the loop answers 503 to every generation still
        in it at its next iteration; no new one is taken."""
        self._closed = True
        self._executor.shutdown(wait=False)
