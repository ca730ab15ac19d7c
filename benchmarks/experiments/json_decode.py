"""Issue 15: the fastest correct JSON body → float32 MNIST batch, measured.

Every variant takes the request body (``{"instances": [[784 floats]] * N}``) and returns what
``services.codecs.decode_json_images`` returns today — a checked float32 [N,1,28,28] — except the
text-parse one, which is a lower bound that skips the structure checks (ragged rows, nesting).
Variants run interleaved (round-robin, so machine noise hits all of them alike) and the median of
the rounds is reported, as CPU µs per body (process time: on a shared machine, time spent
preempted by other processes is not counted).

    .venv/bin/python -m benchmarks.experiments.json_decode [--rounds 15]

orjson's ``OPT_*`` flags are ``dumps`` options only; ``orjson.loads`` takes none, so they do not
enter decoding. ujson is not installed. simdjson (``pysimdjson``) parses a plain body's batch into
one flat buffer without a Python object per pixel: Podium's path since issue 15's ninth pass
(``codecs.json_images_fast``, orjson for every other body).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import orjson

from services import codecs

MAX_ITEMS = 1024


def current(body: bytes) -> np.ndarray:
    """Today: orjson → ``np.asarray`` (float64 or int64 by discovery) → ``astype(float32)``."""
    return codecs.decode_json_images(orjson.loads(body)["instances"], MAX_ITEMS)


def _checked(array: np.ndarray) -> np.ndarray | None:
    """A float32 array as a checked MNIST batch, or None to let today's path decide (and name the
    problem in its own words). The range check is one min and one max, written so that NaN fails:
    JSON has no NaN or infinity (orjson refuses them), a float past float32's range became inf,
    and a JSON null became NaN, so today's separate ``isfinite`` pass proves nothing more here."""
    if array.ndim not in (2, 3, 4) or not array.size:
        return None
    batch = codecs.as_image_batch(array, "instances", MAX_ITEMS)
    return batch if batch.min() >= 0.0 and batch.max() <= 1.0 else None


def today_min_max(body: bytes) -> np.ndarray:
    """Today's ``np.asarray`` (whose dtype discovery also refuses strings and nulls), then the
    float32 cast and the min/max range check only."""
    try:
        array = np.asarray(orjson.loads(body)["instances"])
    except ValueError:
        return current(body)
    if array.dtype.kind != "f":  # integers 0–255, or not numbers: today's path
        return current(body)
    with np.errstate(over="ignore"):
        batch = _checked(array.astype(np.float32))
    return current(body) if batch is None else batch


def float32_first(body: bytes) -> np.ndarray:
    """orjson → ``np.array(dtype=float32)`` directly, no float64 intermediate. That cast takes
    numeric strings ("0.5") and nulls, which today refuses, so it runs only when the body holds no
    string but the "instances" key (two double quotes: a string anywhere else adds two). The
    int-vs-float meaning (0–255 integers are scaled) is kept: a batch with any value strictly
    between 0 and 1 held a float, so it is a float batch; an all-integral batch (ambiguous:
    ``[0, 1]`` or ``[0.0, 1.0]``) and anything refused take today's path."""
    value = orjson.loads(body)["instances"]
    if body.count(b'"') != 2:
        return current(body)
    try:
        with np.errstate(over="ignore"):  # past float32's range → inf, refused by the range check
            array = np.array(value, dtype=np.float32)
    except (ValueError, TypeError):
        return current(body)  # ragged or not numbers: today's path raises the same 4xx
    if not ((array > 0) & (array < 1)).any():
        return current(body)
    batch = _checked(array)
    return current(body) if batch is None else batch


def simdjson_flat(body: bytes) -> np.ndarray:
    """Podium's path: a plain body through simdjson's flat buffer (``codecs.json_images_fast``),
    any other through orjson; then the same checks."""
    fast = codecs.json_images_fast(body)
    if fast is None:
        return current(body)
    return codecs.checked_images(fast[1], fast[0], MAX_ITEMS)


def text_parse(body: bytes) -> np.ndarray:
    """Lower bound of parsing the number text directly (``np.fromstring``): no JSON validation,
    no shape checks — not a correct decoder, measured to see whether one would pay."""
    start, end = body.index(b"[["), body.rindex(b"]]") + 2
    flat = np.fromstring(body[start:end].replace(b"[", b"").replace(b"]", b""), dtype=np.float32,
                         sep=",")
    return flat.reshape(-1, 1, 28, 28)


VARIANTS: dict[str, Callable[[bytes], np.ndarray]] = {
    "orjson → np.asarray → astype(float32) (before issue 15's ninth pass)": current,
    "simdjson flat buffer for a plain body, else orjson (Podium now)": simdjson_flat,
    "today's np.asarray, range check as min/max only (no isfinite pass)": today_min_max,
    "orjson → np.array(dtype=float32) when no string in the body, int check, min/max": float32_first,
    "np.fromstring of the number text (lower bound, unchecked)": text_parse,
}


def body_of(n: int, seed: int = 0) -> bytes:
    """N random images as 4-decimal floats: 5.4 KB per image, the issue's body."""
    images = np.round(np.random.default_rng(seed).random((n, 784)), 4)
    return orjson.dumps({"instances": images.tolist()})


def refusal(fn: Callable[[bytes], np.ndarray], body: bytes) -> str:
    """The 4xx message ``fn`` refuses ``body`` with."""
    try:
        fn(body)
    except codecs.InvalidInput as exc:
        return str(exc)
    raise AssertionError(f"{fn.__name__} accepted {body[:60]!r}")


def check_same() -> None:
    """Every correct variant gives today's array on float, integer, mixed and integral bodies, and
    refuses today's bad bodies with today's message."""
    bodies = [body_of(1), body_of(64),
              orjson.dumps({"instances": np.arange(784).reshape(1, 784).__mod__(256).tolist()}),
              orjson.dumps({"instances": [[0, 0.5, 1] + [0] * 781]}),
              orjson.dumps({"instances": [[0.0, 1.0] * 392]}),
              orjson.dumps({"instances": [[0.25] * 784], "note": "a string: today's path"})]
    for body in bodies:
        want = current(body)
        for fn in (today_min_max, float32_first, simdjson_flat):
            got = fn(body)
            assert got.dtype == np.float32 and np.array_equal(got, want), f"{fn.__name__} differs"
    for bad in ([[2.5] + [0.5] * 783], [[1e39] + [0.5] * 783], [[0.5, 0.5], [0.5]],
                [["0.5"] + [0.5] * 783], [[None] + [0.5] * 783], [[True] * 784], [[-0.5] * 784]):
        body = orjson.dumps({"instances": bad})
        for fn in (today_min_max, float32_first, simdjson_flat):
            assert refusal(fn, body) == refusal(current, body), (fn.__name__, str(bad)[:40])
    assert np.allclose(text_parse(bodies[0]), current(bodies[0]))


def measure(body: bytes, rounds: int, budget_s: float = 0.05) -> dict[str, float]:
    per_call = time.perf_counter()
    current(body)
    calls = max(1, int(budget_s / max(time.perf_counter() - per_call, 1e-6)))
    samples: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(rounds):
        for name, fn in VARIANTS.items():
            t0 = time.process_time()  # CPU time: other processes' load preempts, it does not count
            for _ in range(calls):
                fn(body)
            samples[name].append((time.process_time() - t0) / calls * 1e6)
    return {name: statistics.median(s) for name, s in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    check_same()
    for n in (1, 64):
        body = body_of(n)
        result = measure(body, args.rounds)
        base = result[next(iter(VARIANTS))]
        print(f"\n{n} image(s), {len(body):,} B body: µs per body (median of {args.rounds} rounds)")
        for name, us in result.items():
            print(f"  {us:10.1f}  {base / us:5.2f}×  {name}")


if __name__ == "__main__":
    main()
