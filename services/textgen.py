"""Character generation on top of the batched step model.

Every step of every concurrent generation goes through the same batcher: N clients generating
at once become batches of N one-character steps, the recurrent state travelling with each
request (it is an explicit input/output of the exported graph).
"""

from __future__ import annotations

import numpy as np

from services.codecs import encode_text
from services.dataplane import PLANE
from services.repository import LoadedVersion


def _distribution(logits: np.ndarray, temperature: float, top_k: int | None) -> np.ndarray:
    scores = logits.astype(np.float64) / temperature
    scores[0] = -np.inf  # never emit the unknown-character id
    if top_k is not None and top_k < len(scores):
        cutoff = np.partition(scores, -top_k)[-top_k]
        scores[scores < cutoff] = -np.inf
    scores -= scores.max()
    probs = np.exp(scores)
    return probs / probs.sum()


async def _step(loaded: LoadedVersion, tokens: np.ndarray, state: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
    logits, state_out = await PLANE.infer(loaded, {"tokens": tokens, "state": state})
    return logits[0, -1], state_out


def _initial_state(loaded: LoadedVersion) -> np.ndarray:
    arch = loaded.architecture
    return np.zeros((arch["layers"], 1, arch["hidden"]), np.float32)


async def generate(loaded: LoadedVersion, prompt: str, max_new_chars: int, temperature: float,
                   top_k: int | None, seed: int | None) -> tuple[str, list[str]]:
    """The generated continuation of ``prompt`` and the prompt's out-of-vocabulary characters."""
    ids, unknown = encode_text(prompt, loaded.index)
    rng = np.random.default_rng(seed)
    logits, state = await _step(loaded, ids[None], _initial_state(loaded))
    out = []
    for _ in range(max_new_chars):
        nxt = int(rng.choice(len(logits), p=_distribution(logits, temperature, top_k)))
        out.append(loaded.vocab[nxt])
        logits, state = await _step(loaded, np.array([[nxt]], np.int64), state)
    return "".join(out), unknown


async def next_distribution(loaded: LoadedVersion, prompt: str, top_k: int,
                            temperature: float = 1.0) -> tuple[list[tuple[str, float]], list[str]]:
    ids, unknown = encode_text(prompt, loaded.index)
    logits, _ = await _step(loaded, ids[None], _initial_state(loaded))
    probs = _distribution(logits, temperature, None)
    order = np.argsort(-probs)[:top_k]
    return [(loaded.vocab[i], float(probs[i])) for i in order], unknown
