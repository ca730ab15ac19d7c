"""The text generator kind (char-rnn): a prompt → generated text, or the next-character
distribution, one batched step model call per character (``services.textgen``).

``/v1``: ``generate`` (``prompt``, ``max_new_chars``, ``temperature``, ``top_k``, ``seed``) and
``next`` (``prompt``, ``top_k``). ``/v2``: ``prompt`` BYTES [-1] (one generation per element) with
the same request parameters → ``text`` BYTES, the prompt's shape.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import numpy as np

from services import codecs, textgen
from services.errors import InvalidInput
from services.kinds.base import Call, Kind, Port, check_items
from services.kinds.registry import register
from services.textloop import TextLoop

if TYPE_CHECKING:
    from services.dataplane import DataPlane
    from services.repository import LoadedVersion

DEFAULT_NEW_CHARS = 200
MAX_TEMPERATURE = 5.0
MAX_SEED = 2**63 - 1


def _sampling(payload: dict[str, Any], loaded: LoadedVersion) -> tuple[float, int | None, int | None]:
    """``temperature``, ``top_k`` and ``seed`` of a generation, checked."""
    temperature = codecs.number_field(payload, "temperature", 1.0, float, 0.0, MAX_TEMPERATURE,
                                      inclusive_low=False)
    top_k = codecs.number_field(payload, "top_k", None, int, 1, len(loaded.vocab) - 1)
    seed = codecs.number_field(payload, "seed", None, int, 0, MAX_SEED)
    return temperature, top_k, seed


@register
class TextGenerator(Kind):
    name = "text"
    endpoints = ("generate", "next")
    max_batch = 64
    gpu_max_batch = 256
    shadowed = False
    parameters = ("max_new_chars", "temperature", "top_k", "seed")
    batched = False  # char-rnn batches generation steps, not prompts
    npy_answers = False

    def batch_axes(self) -> tuple[dict[str, int], list[int]]:
        return {"tokens": 0, "state": 1}, [0, 1]  # the GRU state is layers × batch × hidden

    def setup(self, loaded: LoadedVersion) -> None:
        loaded.vocab = loaded.stored.vocabulary()
        loaded.index = {c: i for i, c in enumerate(loaded.vocab)}
        batcher = loaded.batcher
        if batcher.enabled:  # issue 15: generations advance together in one loop per version
            loaded.textloop = TextLoop(loaded.name, loaded.version, loaded.runtime.run,
                                       batcher.max_batch_size, batcher.max_latency_s,
                                       batcher.max_queue_items, batcher.metrics)

    def warm_feeds(self, loaded: LoadedVersion, batch: int) -> dict[str, np.ndarray]:
        arch = loaded.architecture
        return {"tokens": np.ones((batch, 8), np.int64),
                "state": np.zeros((arch["layers"], batch, arch["hidden"]), np.float32)}

    # -- /v1 ------------------------------------------------------------------------------------
    def _prompt(self, plane: DataPlane, payload: dict[str, Any], new_chars: int | None) -> tuple[str, int]:
        """The prompt and the characters to generate (``new_chars``: the default; None: none),
        checked against the work bounds."""
        prompt = payload.get("prompt")
        if not isinstance(prompt, str):
            raise InvalidInput("prompt must be a non-empty string", field="prompt")
        cfg = plane.config
        n = 0 if new_chars is None else codecs.number_field(payload, "max_new_chars", new_chars, int, 1,
                                                            cfg.max_new_chars)
        textgen.check_work([prompt], n, cfg)
        return prompt, n

    async def v1_generate(self, call: Call) -> dict[str, Any]:
        return await self.generate(call.plane, call.loaded, await call.json_object("'prompt'"))

    async def v1_next(self, call: Call) -> dict[str, Any]:
        return await self.next(call.plane, call.loaded, await call.json_object("'prompt'"))

    async def generate(self, plane: DataPlane, loaded: LoadedVersion, payload: dict[str, Any]
                       ) -> dict[str, Any]:
        """``/v1`` generate's answer to ``payload`` (``prompt``, ``max_new_chars``, ``temperature``,
        ``top_k``, ``seed``); also the typed ``generate_text``."""
        prompt, n = self._prompt(plane, payload, DEFAULT_NEW_CHARS)
        text, unknown = await textgen.generate(plane, loaded, prompt, n, *_sampling(payload, loaded))
        return {"prompt": prompt, "text": text, "unknown_chars": unknown}

    async def next(self, plane: DataPlane, loaded: LoadedVersion, payload: dict[str, Any]) -> dict[str, Any]:
        """``/v1`` next's answer to ``payload`` (``prompt``, ``top_k``); also the typed ``next_chars``."""
        prompt, _ = self._prompt(plane, payload, None)
        top_k = codecs.number_field(payload, "top_k", 5, int, 1, len(loaded.vocab) - 1)
        dist, unknown = await textgen.next_distribution(plane, loaded, prompt, top_k)
        return {"prompt": prompt, "next": [{"char": c, "probability": p} for c, p in dist],
                "unknown_chars": unknown}

    # -- /v2 ------------------------------------------------------------------------------------
    def inputs(self) -> tuple[Port, ...]:
        return (Port("prompt", "BYTES", (-1,)),)

    def outputs(self) -> tuple[Port, ...]:
        return (Port("text", "BYTES", (-1,)),)

    async def infer(self, plane: DataPlane, loaded: LoadedVersion, inputs: dict[str, np.ndarray],
                    parameters: dict[str, Any], wanted: set[str]) -> dict[str, np.ndarray]:
        cfg = plane.config
        prompts = inputs["prompt"]
        check_items(prompts.size, "prompts", cfg.max_items_per_request)
        try:
            texts = [raw.decode() for raw in prompts.ravel()]
        except UnicodeDecodeError:
            raise InvalidInput("input 'prompt' is not valid UTF-8", field="prompt") from None
        n = codecs.number_field(parameters, "max_new_chars", DEFAULT_NEW_CHARS, int, 1,
                                cfg.max_new_chars)
        textgen.check_work(texts, n, cfg)
        sampling = _sampling(parameters, loaded)
        # Concurrent generations share the batcher: N prompts step together as batches of N.
        results = await asyncio.gather(*(textgen.generate(plane, loaded, t, n, *sampling)
                                         for t in texts))
        out = np.empty(len(results), dtype=object)
        out[:] = [text.encode() for text, _ in results]
        return {"text": out.reshape(prompts.shape)}

    # -- OpenAPI --------------------------------------------------------------------------------
    @classmethod
    def request_bodies(cls, endpoint: str) -> dict[str, dict[str, Any]]:
        example = {"prompt": "And God said", "top_k": 5}
        if endpoint == "generate":
            example = {"prompt": "And God said", "max_new_chars": 120, "temperature": 0.8,
                       "top_k": 10, "seed": 7}
        return {"application/json": {"schema": {"type": "object", "required": ["prompt"]},
                                     "example": example}}
