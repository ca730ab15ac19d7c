"""Character generation on top of the batched step model.

Every step of every concurrent generation goes through the same batcher: N clients generating
at once become batches of N one-character steps, the recurrent state travelling with each
request (it is an explicit input/output of the exported graph). The work of one request is
bounded before it starts (``check_work``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from services.codecs import encode_text
from services.config import ServeConfig
from services.errors import InvalidInput, PayloadTooLarge

if TYPE_CHECKING:
    from services.dataplane import DataPlane
    from services.repository import LoadedVersion


def _distribution(logits: np.ndarray, temperature: float, top_k: int | None) -> np.ndarray:
    scores = logits.astype(np.float64)
    scores[0] = -np.inf  # never emit the unknown-character id
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


def check_work(prompts: list[str], new_chars: int, config: ServeConfig) -> None:
    """Refuse a request whose work passes the bounds: each prompt non-empty and at most
    ``max_prompt_chars`` (400); the prompts' characters in all and the characters to generate in
    all (prompts × ``new_chars``) within the per-request limits (413, naming the setting)."""
    for text in prompts:
        if not text:
            raise InvalidInput("prompt must be a non-empty string", field="prompt")
        if len(text) > config.max_prompt_chars:
            raise InvalidInput(f"prompt has {len(text)} characters; the limit is "
                               f"{config.max_prompt_chars} (max_prompt_chars)", field="prompt")
    total = sum(map(len, prompts))
    if total > config.max_request_prompt_chars:
        raise PayloadTooLarge(f"{len(prompts)} prompt(s) of {total} characters in all; the limit per "
                              f"request is {config.max_request_prompt_chars} "
                              f"(max_request_prompt_chars)", field="prompt")
    generated = len(prompts) * new_chars
    if generated > config.max_request_generated_chars:
        raise PayloadTooLarge(f"{len(prompts)} prompt(s) × max_new_chars {new_chars} = {generated} "
                              f"characters to generate; the limit per request is "
                              f"{config.max_request_generated_chars} (max_request_generated_chars)",
                              field="max_new_chars")


async def _step(plane: DataPlane, loaded: LoadedVersion, tokens: np.ndarray, state: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
    logits, state_out = await plane.infer(loaded, {"tokens": tokens, "state": state})
    return logits[0, -1], state_out


def _initial_state(loaded: LoadedVersion) -> np.ndarray:
    arch = loaded.architecture
    return np.zeros((arch["layers"], 1, arch["hidden"]), np.float32)


async def generate(plane: DataPlane, loaded: LoadedVersion, prompt: str, max_new_chars: int,
                   temperature: float,
                   top_k: int | None, seed: int | None) -> tuple[str, list[str]]:
    """The generated continuation of ``prompt`` and the prompt's out-of-vocabulary characters."""
    ids, unknown = encode_text(prompt, loaded.index)
    rng = np.random.default_rng(seed)
    logits, state = await _step(plane, loaded, ids[None], _initial_state(loaded))
    out = []
    for _ in range(max_new_chars):
        nxt = int(rng.choice(len(logits), p=_distribution(logits, temperature, top_k)))
        out.append(loaded.vocab[nxt])
        logits, state = await _step(plane, loaded, np.array([[nxt]], np.int64), state)
    return "".join(out), unknown


async def next_distribution(plane: DataPlane, loaded: LoadedVersion, prompt: str, top_k: int,
                            temperature: float = 1.0) -> tuple[list[tuple[str, float]], list[str]]:
    ids, unknown = encode_text(prompt, loaded.index)
    logits, _ = await _step(plane, loaded, ids[None], _initial_state(loaded))
    probs = _distribution(logits, temperature, None)
    order = np.argsort(-probs)[:top_k]
    return [(loaded.vocab[i], float(probs[i])) for i in order], unknown
