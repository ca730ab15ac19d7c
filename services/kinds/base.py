"""What a model kind is: one object that owns everything serving needs to know about a kind of
model — how a ``/v1`` request is decoded and validated, its Open Inference Protocol signature
(``/v2``) and how its tensors map onto the model, the batch axes and warm-up feeds, the default
batch limits, how outputs are encoded, and the OpenAPI request bodies it accepts.

The HTTP layer (``services.routes``) knows no kind: it selects the version, hands the request to
``loaded.kind`` and answers with what comes back. A kind object is made per model (``Kind(spec)``)
so that a kind reading its signature from the store (the generic tensor kind) holds it.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

import numpy as np
from starlette.requests import Request
from starlette.responses import Response

from models.catalog import ModelSpec
from services import codecs
from services.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType, clip
from services.http import Encoded, media_type, parse_json, read_body

if TYPE_CHECKING:
    from services.dataplane import DataPlane
    from services.repository import LoadedVersion


NPY = "application/x-npy"
NPY_BYTES = NPY.encode()
NPY_TYPES = {NPY, "application/npy", "application/octet-stream"}
BINARY = {"schema": {"type": "string", "format": "binary"}}  # an OpenAPI binary body


@dataclass(frozen=True)
class Port:
    """One tensor of a model's protocol signature; ``accepts`` lists further input datatypes."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    accepts: tuple[str, ...] = ()

    def metadata(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


class Signature(NamedTuple):
    """A kind's OIP ports by name, in order."""

    inputs: dict[str, Port]
    outputs: dict[str, Port]


@dataclass
class Call:
    """One ``/v1`` request as a kind sees it: the plane, the request and the version answering."""

    plane: DataPlane
    request: Request
    loaded: LoadedVersion

    @property
    def wants_npy(self) -> bool:
        """``Accept: application/x-npy``: the answer is the output tensor as ``.npy``."""
        return NPY in self.request.headers.get("accept", "")

    async def body(self) -> bytes:
        return await read_body(self.request, self.plane.config.max_request_bytes)

    async def json_object(self, what: str) -> dict[str, Any]:
        """The body as a JSON object (``what`` names the field it must hold, for the 400)."""
        if media_type(self.request) != "application/json":
            raise UnsupportedMediaType(f"send application/json with {what}", field="Content-Type")
        payload = parse_json(await self.body())
        if not isinstance(payload, dict):
            raise InvalidInput(f"expected a JSON object with {what}", field="body")
        return payload


class Kind:
    """A kind of model. Subclasses set the class attributes and override what they serve."""

    name: ClassVar[str]
    # /v1 endpoints (the last path segment) this kind answers; the others are a 400 naming these.
    endpoints: ClassVar[tuple[str, ...]] = ("predict",)
    # Items per executed batch unless configured per model (max_batch_size / gpu_max_batch_size).
    max_batch: ClassVar[int] = 64
    gpu_max_batch: ClassVar[int] = 256
    # Whether a shadow rollout may mirror a request (a text step carries the stable version's
    # recurrent state, meaningless to another version).
    shadowed: ClassVar[bool] = True
    # OIP: request parameters taken, and whether the first dimension of every tensor is the batch.
    parameters: ClassVar[tuple[str, ...]] = ()
    batched: ClassVar[bool] = True

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec

    # -- loading --------------------------------------------------------------------------------
    def batch_axes(self) -> tuple[dict[str, int], list[int]]:
        """The batch axis of every model input (by name) and output (in order)."""
        axes = self.spec.batch_axes or {}
        inputs, outputs = axes.get("inputs", {}), axes.get("outputs", {})
        return ({t.name: inputs.get(t.name, 0) for t in self.spec.inputs},
                [outputs.get(t.name, 0) for t in self.spec.outputs])

    def setup(self, loaded: LoadedVersion) -> None:
        """Per-version state read once at load (e.g. a vocabulary)."""

    def warm_feeds(self, loaded: LoadedVersion, batch: int) -> dict[str, np.ndarray]:
        """Model inputs of ``batch`` items, run at load so first requests pay no set-up cost:
        zeros of each input's declared shape, the batch on its batch axis, other variable
        dimensions 1."""
        axes, _ = self.batch_axes()
        feeds = {}
        for t in self.spec.inputs:
            shape = [1 if d < 0 else d for d in t.shape]
            shape[axes[t.name]] = batch
            feeds[t.name] = np.zeros(shape, np.dtype(t.dtype))
        return feeds

    # -- /v1 ------------------------------------------------------------------------------------
    def handler(self, endpoint: str) -> Callable[[Call], Awaitable[dict[str, Any] | Response]]:
        """What answers ``/v1`` ``endpoint`` (predict, generate, next): the kind's
        ``v1_<endpoint>``, for the route handler to await (one coroutine less per request than
        an ``async`` dispatcher); a 400 naming the endpoints it serves otherwise."""
        if endpoint not in self.endpoints:
            name = self.spec.name
            routes = " or ".join(f"/v1/models/{name}/{e}" for e in self.endpoints)
            raise InvalidInput(f"{name} is a {self.name} model and does not serve /{endpoint}: "
                               f"POST {routes}", field="path")
        return getattr(self, f"v1_{endpoint}")

    # -- /v2 ------------------------------------------------------------------------------------
    def inputs(self) -> tuple[Port, ...]:
        raise NotImplementedError

    def outputs(self) -> tuple[Port, ...]:
        raise NotImplementedError

    @cached_property
    def signature(self) -> Signature:
        """``inputs()`` and ``outputs()`` by name, built once: ``/v2`` checks every request against
        them, and building the ports anew cost ~2 µs a request (issue 15)."""
        return Signature({p.name: p for p in self.inputs()}, {p.name: p for p in self.outputs()})

    async def infer(self, plane: DataPlane, loaded: LoadedVersion, inputs: dict[str, np.ndarray],
                    parameters: dict[str, Any], wanted: set[str]) -> dict[str, np.ndarray]:
        """Checked OIP input tensors → output tensors (at least those in ``wanted``)."""
        raise NotImplementedError

    # -- OpenAPI --------------------------------------------------------------------------------
    # Whether /v1 predict answers ``Accept: application/x-npy`` with the output tensor as .npy.
    npy_answers: ClassVar[bool] = True

    @classmethod
    def request_bodies(cls, endpoint: str) -> dict[str, dict[str, Any]]:
        """OpenAPI ``content`` (media type → media object) this kind accepts on ``endpoint``."""
        return {}

    @classmethod
    def answers(cls, endpoint: str) -> dict[str, dict[str, Any]]:
        """OpenAPI ``content`` of this kind's 200 answer on ``endpoint``."""
        json = {"application/json": {"schema": {"type": "object"}}}
        return {**json, NPY: BINARY} if cls.npy_answers and endpoint == "predict" else json


def check_items(n: int, what: str, limit: int) -> None:
    """A batch of ``n`` items is not empty and within ``max_items_per_request``."""
    if n == 0:
        raise InvalidInput(f"empty batch: no {what}", field=what)
    if n > limit:
        raise PayloadTooLarge(f"{n} {what} in one request; the limit is {limit} "
                              f"(max_items_per_request)", field=what)


@functools.lru_cache(maxsize=64)
def _label_table(labels: tuple[str, ...]) -> np.ndarray:
    """``labels`` encoded once, as an object array (read only: answers index into it)."""
    table = np.empty(len(labels), dtype=object)
    table[:] = [label.encode() for label in labels]
    table.flags.writeable = False
    return table


def labels_bytes(labels: tuple[str, ...], index: np.ndarray) -> np.ndarray:
    """OIP BYTES tensor of the label names at ``index`` (a new array: one take from the labels
    encoded once, not an encode per item)."""
    return _label_table(labels).take(index)


def npy_response(array: np.ndarray) -> Encoded:
    """``array`` as an ``.npy`` answer, pre-encoded (sent without building a Starlette
    ``Response``: ``services.http.Encoded``)."""
    return Encoded(codecs.encode_npy(array), NPY_BYTES)


def unsupported(request: Request, accepted: str) -> UnsupportedMediaType:
    return UnsupportedMediaType(f"content type {clip(media_type(request)) or '(none)'!r} is not "
                                f"accepted; send {accepted}", field="Content-Type")
