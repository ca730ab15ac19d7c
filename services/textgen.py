"""Character generation on top of the batched step model.

A generation's prompt runs through the version's batcher (``plane.infer``: prompts arriving
together batch, the outcome is recorded for the rollout); its characters then come from the
version's generation loop (``services.textloop``), which advances every active generation with
one model step per character for all of them, the recurrent state travelling with each sequence
(it is an explicit input/output of the exported graph). With batching off each step runs on its
own through the batcher. The work of one request is bounded before it starts (``check_work``).
Encoding and sampling are models/textcodec.py's, the code that also writes the training run's
sample text.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np

from models.textcodec import distribution, encode_text, sample_next
from services.config import ServeConfig
from services.errors import InferenceError, InvalidInput, PayloadTooLarge

if TYPE_CHECKING:
    from services.dataplane import DataPlane
    from services.repository import LoadedVersion


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
    started = time.perf_counter()
    logits, state = await _step(plane, loaded, ids[None], _initial_state(loaded))
    loop = loaded.textloop
    if loop is None:  # batching off: one step at a time
        out = []
        for i in range(max_new_chars):
            out.append(sample_next(logits, rng, temperature, top_k))
            if i + 1 < max_new_chars:  # the step after the last character would go unused
                logits, state = await _step(plane, loaded, np.array([[out[-1]]], np.int64), state)
    else:
        try:
            out = await loop.generate(logits, state, max_new_chars, rng, temperature, top_k)
        except InferenceError:  # a failed step counts against the version, as plane.infer's do
            if plane.rollout is not None:
                plane.rollout.record(loaded, time.perf_counter() - started, ok=False)
            raise
    return "".join(loaded.vocab[i] for i in out), unknown


async def next_distribution(plane: DataPlane, loaded: LoadedVersion, prompt: str, top_k: int,
                            temperature: float = 1.0) -> tuple[list[tuple[str, float]], list[str]]:
    ids, unknown = encode_text(prompt, loaded.index)
    logits, _ = await _step(plane, loaded, ids[None], _initial_state(loaded))
    probs = distribution(logits, temperature, None)
    order = np.argsort(-probs)[:top_k]
    return [(loaded.vocab[i], float(probs[i])) for i in order], unknown
