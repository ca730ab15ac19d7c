"""The character codec of ``char-rnn``, one for training and serving: text → ids, and the next
character drawn from a step's logits. NumPy only (no torch), so the served sampler is the one
that writes the training run's sample text (``training/train.py``) and the README quotes.

Sampling is reproducible: the same logits, settings and ``numpy.random.Generator`` seed give the
same characters wherever it runs. ``sample_rows`` draws the next character of many sequences at
once (the serving loop's batched step, ``services/textloop.py``): row for row the same numbers and
the same character as ``sample_next``, each row from its own generator.
"""

from __future__ import annotations

import numpy as np

UNKNOWN_ID = 0  # the vocabulary's id for every character it does not hold; never generated


def encode_text(text: str, index: dict[str, int]) -> tuple[np.ndarray, list[str]]:
    """Character ids (unknown characters → ``UNKNOWN_ID``) and the distinct unknown characters."""
    ids = np.fromiter((index.get(c, UNKNOWN_ID) for c in text), dtype=np.int64, count=len(text))
    unknown = sorted({c for c in text if c not in index})
    return ids, unknown


def distribution(logits: np.ndarray, temperature: float, top_k: int | None) -> np.ndarray:
    """The next character's probabilities (float64, summing to 1) from one step's logits [V]."""
    scores = logits.astype(np.float64)
    scores[UNKNOWN_ID] = -np.inf  # never emit the unknown-character id
    if top_k is not None and top_k < len(scores):
        cutoff = np.partition(scores, -top_k)[-top_k]
        scores[scores < cutoff] = -np.inf
    # Shift before dividing: every score is then <= 0, so however small the temperature the
    # quotient is at worst -inf (probability 0, as intended), never +inf - +inf = NaN; the best
    # stays at 0.
    with np.errstate(over="ignore"):
        scores = (scores - scores.max()) / temperature
    probs = np.exp(scores)
    return probs / probs.sum()


def sample_next(logits: np.ndarray, rng: np.random.Generator, temperature: float,
                top_k: int | None = None) -> int:
    """The id of the next character, drawn from ``distribution`` with ``rng``."""
    return int(rng.choice(len(logits), p=distribution(logits, temperature, top_k)))


def distributions(logits: np.ndarray, temperatures: np.ndarray, top_ks: np.ndarray) -> np.ndarray:
    """``distribution`` of every row of ``logits`` [B, V], each with its own temperature and top_k
    (V: no cut), computed with the same operations in the same order, so row for row the same
    float64 numbers (``tests/test_textcodec.py`` checks it bit for bit)."""
    scores = logits.astype(np.float64)
    scores[:, UNKNOWN_ID] = -np.inf
    if (top_ks < scores.shape[1]).any():
        # The k-th largest score of each row: the value ``np.partition`` picks in the scalar path.
        cutoff = -np.sort(-scores, axis=1)[np.arange(len(scores)), top_ks - 1]
        scores[scores < cutoff[:, None]] = -np.inf
    with np.errstate(over="ignore"):
        scores = (scores - scores.max(axis=1, keepdims=True)) / temperatures[:, None]
    probs = np.exp(scores)
    return probs / probs.sum(axis=1, keepdims=True)


def sample_rows(logits: np.ndarray, rngs: list[np.random.Generator], temperatures: np.ndarray,
                top_ks: np.ndarray) -> np.ndarray:
    """The next character id of every row of ``logits`` [B, V], row i drawn with ``rngs[i]``: the
    id ``sample_next`` gives. ``Generator.choice(V, p=p)`` draws one double ``u`` and returns the
    first index whose normalised cumulative sum exceeds it; the same here, for all rows at once."""
    cdf = distributions(logits, temperatures, top_ks).cumsum(axis=1)
    cdf /= cdf[:, -1:]
    draws = np.fromiter((rng.random() for rng in rngs), np.float64, count=len(rngs))
    return (cdf <= draws[:, None]).sum(axis=1)
