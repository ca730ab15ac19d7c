"""The char-rnn generation loop (services/textloop.py, issue 15), in-process on a tiny real ONNX
char model (tests/kinds_support.py): the vectorised sampler draws what the scalar one draws, a
seed's text is the one the step-by-step path gives (alone and among 31 others), and the loop's
bounds hold — places per step, queue deadline and length, a client that leaves, a failing step,
the version unloaded."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from models import textcodec
from services import textgen
from services.dataplane import DataPlane
from services.errors import InferenceError, ServiceOverloaded
from services.repository import LoadedVersion
from services.textloop import TextLoop
from tests import test_textcodec
from tests.kinds_support import plane_of


# -- the sampler ------------------------------------------------------------------------------
@pytest.mark.parametrize("vocab", [5, 13, 65, 300])
def test_sample_rows_draws_what_sample_next_draws_row_for_row(vocab: int) -> None:
    rng = np.random.default_rng(vocab)
    rows = 0
    for batch in (1, 2, 7, 32, 64):
        for _ in range(10):
            logits = (rng.normal(size=(batch, vocab)) * rng.uniform(0.1, 20)).astype(np.float32)
            temperatures = rng.choice([1.0, 0.8, 0.5, 5.0, 0.01, 1e-300], size=batch)
            top_ks = rng.choice([vocab, vocab, 1, 2, 3, vocab - 1], size=batch)
            seeds = rng.integers(0, 2**63 - 1, size=batch)
            probs = textcodec.distributions(logits, temperatures, top_ks)
            drawn = textcodec.sample_rows(logits, [np.random.default_rng(s) for s in seeds],
                                          temperatures, top_ks)
            for i in range(batch):
                top_k = int(top_ks[i]) if top_ks[i] < vocab else None
                assert np.array_equal(probs[i], textcodec.distribution(logits[i], temperatures[i], top_k))
                assert drawn[i] == textcodec.sample_next(logits[i], np.random.default_rng(seeds[i]),
                                                         float(temperatures[i]), top_k)
                rows += 1
    assert rows == 10 * (1 + 2 + 7 + 32 + 64)


@pytest.mark.parametrize(("settings", "expected"), test_textcodec.GOLDEN.items())
def test_sample_rows_gives_the_golden_characters(settings: tuple, expected: str) -> None:
    """The characters the served sampler drew at 937278d, drawn one row at a time."""
    temperature, top_k, seed = settings
    rng = np.random.default_rng(seed)
    vocab = len(test_textcodec.VOCAB)
    ids = [int(textcodec.sample_rows(row[None], [rng], np.array([temperature]),
                                     np.array([top_k or vocab]))[0]) for row in test_textcodec.LOGITS]
    assert "".join(test_textcodec.VOCAB[i] for i in ids) == expected


# -- the loop ---------------------------------------------------------------------------------
class Recorder:
    """The batch metrics the loop reports (``observe_batch``)."""

    def __init__(self) -> None:
        self.batches: list[tuple[int, int]] = []

    def observe_batch(self, model: str, version: str, requests: int, items: int, compute_s: float,
                      waits: list[float]) -> None:
        self.batches.append((requests, items))


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DataPlane]:
    with plane_of(tmp_path_factory.mktemp("textloop"), Recorder()) as plane:
        yield plane


def char_rnn(plane: DataPlane) -> LoadedVersion:
    return plane.repository.get("char-rnn")


BODIES = [("ab c", 1000 + 7 * i, 1.0 if i % 3 else 0.7, None if i % 2 else 3) for i in range(32)]
PROMPTS = ["a", "ab", "cab a", "bbb", "c a b"]


def run_all(plane: DataPlane, bodies: list[tuple[str, int, float, int | None]], n: int) -> list[str]:
    async def go() -> list[str]:
        loaded = char_rnn(plane)
        return [text for text, _ in await asyncio.gather(*(
            textgen.generate(plane, loaded, prompt, n, temperature, top_k, seed)
            for prompt, seed, temperature, top_k in bodies))]
    return asyncio.run(go())


def test_the_loop_serves_with_batching_on_and_not_with_it_off(tmp_path: Path) -> None:
    with plane_of(tmp_path, batching=False) as off:
        assert char_rnn(off).textloop is None


def test_a_seed_gives_the_step_by_step_text_alone_and_among_31_others(
        plane: DataPlane, monkeypatch: pytest.MonkeyPatch) -> None:
    """The reference: the same version with its loop taken away, so every character is its own
    step through the batcher (the path of every generation before issue 15)."""
    loaded = char_rnn(plane)
    assert isinstance(loaded.textloop, TextLoop)
    bodies = [(PROMPTS[i % len(PROMPTS)], seed, t, k) for i, (_, seed, t, k) in enumerate(BODIES)]
    before = len(plane.metrics.batches)
    crowd = run_all(plane, bodies, 40)
    steps = plane.metrics.batches[before:]
    alone_on = [run_all(plane, [body], 40)[0] for body in bodies[:4]]
    with monkeypatch.context() as patch:
        patch.setattr(loaded, "textloop", None)
        step_by_step = [run_all(plane, [body], 40)[0] for body in bodies]
    assert crowd == step_by_step
    assert alone_on == step_by_step[:4]
    assert all(len(text) == 40 for text in crowd)
    assert len(set(crowd)) > 16, "different seeds should give different texts"
    # 32 prompt steps (through the batcher) and 32 × 39 loop steps, in far fewer runs.
    assert sum(items for _, items in steps) == 32 * 40
    assert max(items for _, items in steps) == 32


def make_loop(loaded: LoadedVersion, runner: Any = None, **bounds: Any) -> TextLoop:
    settings = {"max_batch_size": 64, "max_latency_s": 5.0, "max_queue_items": 100, **bounds}
    return TextLoop("char-rnn", "v1", runner or loaded.runtime.run, **settings)


def start(loaded: LoadedVersion, loop: TextLoop, n: int, seed: int = 0) -> asyncio.Task:
    """A generation of ``n`` characters after the prompt "ab" (its prompt step run here)."""
    ids = textcodec.encode_text("ab", loaded.index)[0]
    logits, state = loaded.runtime.run({"tokens": ids[None],
                                        "state": np.zeros((1, 1, 4), np.float32)})
    return asyncio.ensure_future(loop.generate(logits[0, -1], state, n, np.random.default_rng(seed),
                                               1.0, None))


def slow(loaded: LoadedVersion, seconds: float, sizes: list[int] | None = None) -> Any:
    def run(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        if sizes is not None:
            sizes.append(len(feeds["tokens"]))
        time.sleep(seconds)
        return loaded.runtime.run(feeds)
    return run


def test_max_batch_size_caps_the_sequences_per_step_and_the_rest_wait(plane: DataPlane) -> None:
    loaded = char_rnn(plane)
    sizes: list[int] = []
    loop = make_loop(loaded, slow(loaded, 0.0, sizes), max_batch_size=4)

    async def go() -> list[list[int]]:
        return await asyncio.gather(*(start(loaded, loop, 5 + i, i) for i in range(10)))

    out = asyncio.run(go())
    assert [len(ids) for ids in out] == [5 + i for i in range(10)]
    assert max(sizes) == 4 and sizes[0] == 4
    assert sum(sizes) == sum(4 + i for i in range(10))  # every character but the last is stepped
    assert loop.sequences == 0
    loop.close()


def test_a_generation_waiting_past_the_deadline_is_503_and_a_full_queue_refuses(
        plane: DataPlane) -> None:
    loaded = char_rnn(plane)
    loop = make_loop(loaded, slow(loaded, 0.02), max_batch_size=1, max_latency_s=0.05,
                     max_queue_items=1)

    async def go() -> tuple[list[Any], Exception | None]:
        first = start(loaded, loop, 10)  # holds the only place for ~0.2 s
        await asyncio.sleep(0.01)
        second = start(loaded, loop, 3, 1)  # waits for it, past the 0.05 s deadline
        await asyncio.sleep(0)
        refused = None
        try:
            await start(loaded, loop, 3, 2)  # the queue (1) is full
        except ServiceOverloaded as exc:
            refused = exc
        return await asyncio.gather(first, second, return_exceptions=True), refused

    (first, second), refused = asyncio.run(go())
    assert len(first) == 10
    assert isinstance(second, ServiceOverloaded) and "latency deadline" in str(second)
    assert refused is not None and "max_queue_items=1" in str(refused)
    assert loop.sequences == 0
    loop.close()


def test_a_cancelled_generation_leaves_and_the_others_finish(plane: DataPlane) -> None:
    loaded = char_rnn(plane)
    sizes: list[int] = []
    loop = make_loop(loaded, slow(loaded, 0.005, sizes))

    async def go() -> list[Any]:
        tasks = [start(loaded, loop, 30, i) for i in range(3)]
        await asyncio.sleep(0.05)
        tasks[1].cancel()
        return await asyncio.gather(*tasks, return_exceptions=True)

    out = asyncio.run(go())
    assert isinstance(out[1], asyncio.CancelledError)
    assert len(out[0]) == len(out[2]) == 30
    assert sizes[0] == 3 and sizes[-1] == 2  # the cancelled one stopped taking a place
    assert loop.sequences == 0 and loop._task is None
    loop.close()


def test_a_failing_step_fails_its_generations_and_the_loop_goes_on(plane: DataPlane) -> None:
    loaded = char_rnn(plane)
    calls = []

    def flaky(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        calls.append(len(feeds["tokens"]))
        if len(calls) == 3:
            raise RuntimeError("device lost")
        return loaded.runtime.run(feeds)

    loop = make_loop(loaded, flaky)

    async def go() -> tuple[list[Any], list[int]]:
        failed = await asyncio.gather(start(loaded, loop, 10), start(loaded, loop, 10, 1),
                                      return_exceptions=True)
        return failed, await start(loaded, loop, 10, 2)

    failed, later = asyncio.run(go())
    assert all(isinstance(f, InferenceError) and "device lost" in str(f) for f in failed)
    assert len(later) == 10
    loop.close()


def test_closing_the_loop_answers_503_to_generations_in_it_and_after(plane: DataPlane) -> None:
    loaded = char_rnn(plane)
    loop = make_loop(loaded, slow(loaded, 0.01))

    async def go() -> list[Any]:
        running = start(loaded, loop, 100)
        await asyncio.sleep(0.05)
        # The repository closes an unloaded version from a timer thread.
        threading.Thread(target=loop.close).start()
        out = await asyncio.gather(running, return_exceptions=True)
        return [*out, *(await asyncio.gather(start(loaded, loop, 3), return_exceptions=True))]

    running, after = asyncio.run(go())
    assert isinstance(running, ServiceOverloaded) and "unloaded" in str(running)
    assert isinstance(after, ServiceOverloaded) and "no longer being served" in str(after)
    assert loop.sequences == 0

