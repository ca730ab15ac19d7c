"""The character codec of ``char-rnn``, one for training and serving: text → ids, and the next
character drawn from a step's logits. NumPy only (no torch), so the served sampler is the one
that writes the training run's sample text (``training/train.py``) and the README quotes.

Sampling is reproducible: the same logits, settings and ``numpy.random.Generator`` seed give the
same characters wherever it runs.
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
