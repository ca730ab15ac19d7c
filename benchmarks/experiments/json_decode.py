"""Issue 15: the fastest correct JSON body → float32 MNIST batch, measured.

Every variant takes the request body (``{"instances": [[784 floats]] * N}``) and returns what
``services.codecs.decode_json_images`` returns today — a checked float32 [N,1,28,28] — except the
text-parse one, which is a lower bound that skips the structure checks (ragged rows, nesting).
Variants run interleaved (round-robin, so machine noise hits all of them alike) and the median of
the rounds is reported, as µs per body.

    .venv/bin/python -m benchmarks.experiments.json_decode [--rounds 15]

orjson's ``OPT_*`` flags are ``dumps`` options only; ``orjson.loads`` takes none, so they do not
enter decoding. ujson and simdjson are not installed and were not added for this.
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


def float32_first(body: bytes) -> np.ndarray:
    """orjson → ``np.array(dtype=float32)`` directly, no float64 intermediate. The int-vs-float
    meaning (0–255 integers are scaled) is kept: a batch with any value strictly between 0 and 1
    held a float, so it is a float batch; only an all-integral batch (ambiguous: ``[0, 1]`` or
    ``[0.0, 1.0]``) takes today's path to learn which."""
    value = orjson.loads(body)["instances"]
    try:
        with np.errstate(over="ignore"):  # past float32's range → inf, refused by the range check
            array = np.array(value, dtype=np.float32)
    except (ValueError, TypeError):
        return current(body)  # ragged or not numbers: today's path raises the same 4xx
    if not ((array > 0) & (array < 1)).any():
        return current(body)
    return codecs.normalize_pixels(codecs._as_mnist_batch(array, "instances", MAX_ITEMS),
                                   "instances")


def float32_first_lean(body: bytes) -> np.ndarray:
    """As ``float32_first``, with the range check as one min and one max: JSON has no NaN or
    infinity (orjson refuses them) and a float past float32's range becomes inf, which fails
    ``max <= 1``, so the separate ``isfinite`` pass proves nothing more here."""
    value = orjson.loads(body)["instances"]
    try:
        with np.errstate(over="ignore"):
            array = np.array(value, dtype=np.float32)
    except (ValueError, TypeError):
        return current(body)
    if not ((array > 0) & (array < 1)).any():
        return current(body)
    batch = codecs._as_mnist_batch(array, "instances", MAX_ITEMS)
    if not (batch.min() >= 0.0 and batch.max() <= 1.0):  # written so that NaN fails too
        raise codecs.InvalidInput("float pixels must be in [0, 1]; send integers for 0–255",
                                  field="instances")
    return batch


def text_parse(body: bytes) -> np.ndarray:
    """Lower bound of parsing the number text directly (``np.fromstring``): no JSON validation,
    no shape checks — not a correct decoder, measured to see whether one would pay."""
    start, end = body.index(b"[["), body.rindex(b"]]") + 2
    flat = np.fromstring(body[start:end].replace(b"[", b"").replace(b"]", b""), dtype=np.float32,
                         sep=",")
    return flat.reshape(-1, 1, 28, 28)


VARIANTS: dict[str, Callable[[bytes], np.ndarray]] = {
    "orjson → np.asarray → astype(float32) (today)": current,
    "orjson → np.array(dtype=float32), int check": float32_first,
    "… and the range check as min/max only (no isfinite pass)": float32_first_lean,
    "np.fromstring of the number text (lower bound, unchecked)": text_parse,
}


def body_of(n: int, seed: int = 0) -> bytes:
    """N random images as 4-decimal floats: 5.4 KB per image, the issue's body."""
    images = np.round(np.random.default_rng(seed).random((n, 784)), 4)
    return orjson.dumps({"instances": images.tolist()})


def check_same() -> None:
    """Every correct variant gives today's array, on float, integer, mixed and integral bodies."""
    bodies = [body_of(1), body_of(64),
              orjson.dumps({"instances": np.arange(784).reshape(1, 784).__mod__(256).tolist()}),
              orjson.dumps({"instances": [[0, 0.5, 1] + [0] * 781]}),
              orjson.dumps({"instances": [[0.0, 1.0] * 392]})]
    for body in bodies:
        want = current(body)
        for fn in (float32_first, float32_first_lean):
            got = fn(body)
            assert got.dtype == np.float32 and np.array_equal(got, want), f"{fn.__name__} differs"
    for bad in ([[2.5] + [0.5] * 783], [[1e39] + [0.5] * 783], [[0.5, 0.5], [0.5]]):
        for fn in VARIANTS.values():
            if fn is not text_parse:
                try:
                    fn(orjson.dumps({"instances": bad}))
                except codecs.InvalidInput:
                    continue
                raise AssertionError(f"{fn.__name__} accepted {str(bad)[:40]}")
    assert np.allclose(text_parse(bodies[0]), current(bodies[0]))


def measure(body: bytes, rounds: int, budget_s: float = 0.05) -> dict[str, float]:
    per_call = time.perf_counter()
    current(body)
    calls = max(1, int(budget_s / max(time.perf_counter() - per_call, 1e-6)))
    samples: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(rounds):
        for name, fn in VARIANTS.items():
            t0 = time.perf_counter()
            for _ in range(calls):
                fn(body)
            samples[name].append((time.perf_counter() - t0) / calls * 1e6)
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
