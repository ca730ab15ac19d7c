"""Issue 15: the per-character sampling cost of char-rnn generation, and a cheaper draw that gives
exactly the same characters for a seed.

``services.textgen.generate`` draws each character with ``rng.choice(len(p), p=p)``, which
validates ``p`` (finite, non-negative, sums to 1) on every call before it does what the draw
needs: ``cdf = p.cumsum(); cdf /= cdf[-1]; cdf.searchsorted(rng.random(), side="right")``.
Doing only that consumes the generator the same way (one double per draw), so the texts stay
identical; this script checks that on 10,000 draws and times both (CPU time, interleaved).

    .venv/bin/python -m benchmarks.experiments.textgen_sampling
"""

from __future__ import annotations

import statistics
import time

import numpy as np

from services.textgen import _distribution

VOCAB = 64


def choice(rng: np.random.Generator, p: np.ndarray) -> int:
    return int(rng.choice(len(p), p=p))


def inverse_cdf(rng: np.random.Generator, p: np.ndarray) -> int:
    cdf = p.cumsum()
    cdf /= cdf[-1]
    return int(cdf.searchsorted(rng.random(), side="right"))


def main() -> None:
    logits = np.random.default_rng(0).normal(size=(10_000, VOCAB)).astype(np.float32) * 3
    for seed in range(5):
        a, b = np.random.default_rng(seed), np.random.default_rng(seed)
        for i, row in enumerate(logits[seed::5]):
            p = _distribution(row, 0.8 if i % 2 else 1.0, None if i % 3 else 10)
            assert choice(a, p) == inverse_cdf(b, p), f"draw {i} of seed {seed} differs"
    print("10,000 draws identical")
    p = _distribution(logits[0], 1.0, None)
    rng = np.random.default_rng(1)
    cases = {"_distribution (softmax of the logits)": lambda: _distribution(logits[0], 1.0, None),
             "rng.choice(len(p), p=p) (today)": lambda: choice(rng, p),
             "cumsum + searchsorted(rng.random())": lambda: inverse_cdf(rng, p)}
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(15):
        for name, fn in cases.items():
            t0 = time.process_time()
            for _ in range(2000):
                fn()
            samples[name].append((time.process_time() - t0) / 2000 * 1e6)
    for name, values in samples.items():
        print(f"  {statistics.median(values):6.1f} CPU µs per character  {name}")


if __name__ == "__main__":
    main()
