"""Podium's typed BentoML APIs: what ``bentoml.SyncHTTPClient`` / ``AsyncHTTPClient`` list and
call, and what another service composes with ``bentoml.depends``.

The ``@bentoml.api`` methods of ``services.service.Podium`` are one-line delegations to the
functions here. They take the typed arguments BentoML has already parsed (image files, NumPy
arrays, rows, a prompt) and hand them to the answering version's kind (``services.kinds``), the
same object that serves ``/v1`` and ``/v2``: ``plane.select`` (rollout routing, pinned clients),
the kind's decoding, limits and answer format, ``plane.infer`` (the adaptive batcher, the
rollout's outcome records) and the request metrics (``podium_requests_total{endpoint=
"classify_images"}`` …). Nothing here decodes, checks or formats a model's data itself.

Errors keep Podium's shape: a ``PodiumError`` becomes its own status with the body
``{"error": ..., "field": ...}`` (BentoML's own mapping would wrap a 4xx body in a list and
blank every 5xx), so the client raises ``InvalidArgument`` (400), ``NotFound`` (404),
``ServiceUnavailable`` (503) or ``BentoMLException`` with that status, its message the body.

BentoML reads these requests' bodies itself: ``BodyLimit`` bounds them by ``max_request_bytes``
before BentoML parses anything, as ``/v1`` does; ``behind_the_mounts`` keeps these routes off
the way of the ``/v1`` and ``/v2`` requests; and ``files_only`` stops BentoML from
downloading a URL sent in place of an image file.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from _bentoml_impl.serde import ALL_SERDE, MultipartSerde
from bentoml.validators import TensorSchema
from pydantic import BaseModel, ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.routing import Route

from services import oip_codec
from services.dataplane import DataPlane
from services.edge import send_json_error
from services.errors import InvalidInput, PodiumError, clip
from services.http import MODEL_HEADER, VERSION_HEADER, Exchange, Timer, error_response
from services.protocol import check_inputs  # /v2's checks of named tensors
from services.repository import LoadedVersion

Answer = Any  # what a typed API returns: its result, or a JSON error response
# The typed APIs of each kind, named when a model of another kind is called.
_USE = {"image": "classify_images or classify_tensor", "tabular": "predict_rows",
        "text": "generate_text or next_chars"}


async def answer(plane: DataPlane, ctx: Any, endpoint: str,
                 work: Callable[[Exchange], Awaitable[Any]]) -> Answer:
    """Run one typed API call as ``services.routes.wrap`` runs a route: metrics under
    ``endpoint``, a ``PodiumError`` (or an unexpected one, logged) as Podium's JSON error with its
    status, the answering version in the headers. ``work`` selects it with ``Exchange.select``."""
    ex = Exchange(plane, ctx.request, Timer(plane.metrics, endpoint))
    try:
        result = await work(ex)
        status = 200
    except Exception as exc:  # mapped to one status in services.http
        result = error_response(exc)
        # BentoML sets the status of a response returned by a method with a context from it.
        status = ctx.response.status_code = result.status_code
    if ex.loaded is not None:
        ctx.response.metadata[MODEL_HEADER] = ex.loaded.name
        ctx.response.metadata[VERSION_HEADER] = ex.loaded.version
    ex.timer.done(status)
    return result


def _select(ex: Exchange, model: str, version: str | None, kind: str) -> LoadedVersion:
    """The version answering this call (rollout routing reads the request's headers), which
    must be of ``kind``: another kind's model is named with the method that serves it."""
    loaded = ex.select(model, version)
    if loaded.kind.name != kind:
        raise InvalidInput(f"model {clip(model)!r} is a {loaded.kind.name} model; call "
                           f"{_USE.get(loaded.kind.name, 'infer_tensors')}", field="model")
    return loaded


def _given(settings: dict[str, Any]) -> dict[str, Any]:
    """The settings the caller gave (None: the kind's default, as a field left out of /v1's JSON)."""
    return {key: value for key, value in settings.items() if value is not None}


# ------------------------------------------------------------------------------------- images

async def classify_images(plane: DataPlane, ctx: Any, images: list[Path], model: str,
                          top_k: int | None, version: str | None) -> Answer:
    """Image files (BentoML stored each upload as a file) → predictions, through the image
    kind's photo pipeline, pixel limits, decode pool and answer, as ``/v1``'s uploads."""
    async def work(ex: Exchange) -> list[dict[str, Any]]:
        loaded = _select(ex, model, version, "image")
        kind, cfg = loaded.kind, plane.config
        k = kind.top_k(top_k, cfg)
        pixels = await kind.decode_files(cfg, [(f"images[{i}]", path.read_bytes())
                                               for i, path in enumerate(images)])
        return kind.predictions(await kind.scores(plane, loaded, pixels), k)

    return await answer(plane, ctx, "classify_images", work)


async def classify_tensor(plane: DataPlane, ctx: Any, pixels: np.ndarray, model: str,
                          top_k: int | None, version: str | None) -> Answer:
    """A NumPy batch ([N,1,28,28], [N,28,28] or [N,784]; floats in [0, 1] or 0–255 integers) →
    predictions; the shape, range and batch checks are the image kind's ``/v2`` ones."""
    async def work(ex: Exchange) -> list[dict[str, Any]]:
        loaded = _select(ex, model, version, "image")
        kind = loaded.kind
        k = kind.top_k(top_k, plane.config)
        (port,) = kind.inputs()
        out = await kind.infer(plane, loaded, {port.name: np.asarray(pixels)}, {}, set())
        return kind.predictions(out[kind.spec.outputs[0].name], k)  # the scores

    return await answer(plane, ctx, "classify_tensor", work)


# ------------------------------------------------------------------------------------ tabular

async def predict_rows(plane: DataPlane, ctx: Any, rows: list[Any], model: str,
                       version: str | None) -> Answer:
    """Rows (named features or lists of numbers) → probability and label per row, as ``/v1``."""
    async def work(ex: Exchange) -> list[dict[str, Any]]:
        loaded = _select(ex, model, version, "tabular")
        kind = loaded.kind
        return kind.predictions(await kind.rows_probability(plane, loaded, rows))

    return await answer(plane, ctx, "predict_rows", work)


# --------------------------------------------------------------------------------------- text

async def generate_text(plane: DataPlane, ctx: Any, prompt: str, settings: dict[str, Any],
                        model: str, version: str | None) -> Answer:
    """``prompt`` and ``settings`` (max_new_chars, temperature, top_k, seed) → the generated
    text (the same seed gives the same text as ``/v1/models/char-rnn/generate``)."""
    async def work(ex: Exchange) -> str:
        loaded = _select(ex, model, version, "text")
        result = await loaded.kind.generate(plane, loaded, {"prompt": prompt, **_given(settings)})
        return result["text"]

    return await answer(plane, ctx, "generate_text", work)


async def next_chars(plane: DataPlane, ctx: Any, prompt: str, top_k: int | None, model: str,
                     version: str | None) -> Answer:
    """The ``top_k`` most likely next characters after the prompt, with their probabilities."""
    async def work(ex: Exchange) -> list[dict[str, Any]]:
        loaded = _select(ex, model, version, "text")
        result = await loaded.kind.next(plane, loaded, {"prompt": prompt, **_given({"top_k": top_k})})
        return result["next"]

    return await answer(plane, ctx, "next_chars", work)


# ------------------------------------------------------------------------------------ tensors

class NamedTensor(BaseModel):
    """One tensor of ``infer_tensors``. JSON carries no dtype: ``datatype`` (an Open Inference
    Protocol name: FP32, UINT8, INT64…) says what the numbers are, as in a ``/v2`` JSON request;
    default: the model's own datatype for that input."""

    name: str
    data: Annotated[np.ndarray, TensorSchema("numpy-array")]
    datatype: str | None = None


async def infer_tensors(plane: DataPlane, ctx: Any, model: str, inputs: list[NamedTensor],
                        version: str | None) -> Answer:
    """Named input tensors → the model's numeric output tensors, through ``/v2``'s JSON decoding
    and the model kind's checks (names, datatypes, shapes, batch limits). Text models generate:
    use ``generate_text``."""
    async def work(ex: Exchange) -> list[NamedTensor]:
        loaded = ex.select(model, version)
        kind = loaded.kind
        if kind.name == "text":
            raise InvalidInput(f"model {clip(model)!r} generates text; call {_USE['text']}",
                               field="model")
        ports = {port.name: port.datatype for port in kind.inputs()}
        tensors = {}
        for tensor in inputs:
            datatype = (tensor.datatype or ports.get(tensor.name, "FP32")).upper()
            if datatype not in oip_codec.DTYPES:
                raise InvalidInput(f"input {clip(tensor.name)!r}: unknown datatype {clip(datatype)!r}; "
                                   f"one of {', '.join(oip_codec.DTYPES)}", field=f"{tensor.name}.datatype")
            array = oip_codec.json_array(tensor.name, datatype, np.asarray(tensor.data).tolist())
            tensors[tensor.name] = oip_codec.Tensor(tensor.name, datatype, array)
        numeric = {port.name for port in kind.outputs() if port.datatype != "BYTES"}
        outputs = await kind.infer(plane, loaded, check_inputs(kind, model, tensors), {}, numeric)
        return [NamedTensor(name=name, data=array, datatype=oip_codec.datatype_of(array))
                for name, array in outputs.items() if name in numeric]

    return await answer(plane, ctx, "infer_tensors", work)


# ------------------------------------------------------------------------------ request bodies

class FilePartsOnly(MultipartSerde):
    """BentoML's multipart decoding, except that a file field must hold file parts: BentoML
    *downloads* a text value of a file field as a URL, from the server (a request could make
    Podium fetch any address, unbounded in size; a value that is no URL was a 500)."""

    @staticmethod
    async def ensure_file(obj: str | UploadFile) -> UploadFile:
        if isinstance(obj, UploadFile):
            return obj
        raise ValidationError.from_exception_data("Input", [InitErrorDetails(
            type=PydanticCustomError("file_part", "send each image as a file part; a URL or text "
                                                  "is not fetched"),
            loc=("images",), input=clip(str(obj)))])


def behind_the_mounts(app: Starlette, names: Iterable[str], limit: int) -> None:
    """Put the typed APIs' routes of BentoML's app (``app``, before it serves) after its mounted
    apps, each behind ``BodyLimit``: BentoML lists them first, so every ``/v1`` and ``/v2``
    request tried each of them, and a middleware would see every request too."""
    names = set(names)
    routes = app.router.routes
    typed = [route for route in routes if isinstance(route, Route) and route.name in names]
    for route in typed:
        routes.remove(route)
        route.app = BodyLimit(route.app, limit)
    routes.extend(typed)


def files_only() -> None:
    """Serve multipart (and urlencoded) requests to the typed APIs with ``FilePartsOnly``."""
    for media in ("multipart/form-data", "application/x-www-form-urlencoded"):
        ALL_SERDE[media] = FilePartsOnly  # type: ignore[index]


class BodyLimit:
    """ASGI wrapper of one typed API's route: a body over ``limit`` bytes gets 413 before BentoML
    reads it (a declared Content-Length at once, a chunked body as soon as it passes the limit);
    at most ``limit`` bytes are held."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        limit = self.limit
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._refuse(send, f"request body of {int(declared)} bytes exceeds the "
                                     f"{limit}-byte limit (max_request_bytes)")
            return
        messages, total = [], 0
        while True:  # bounded: at most ``limit`` bytes are kept
            message = await receive()
            messages.append(message)
            total += len(message.get("body", b""))
            if total > limit:
                await self._refuse(send, f"request body exceeds the {limit}-byte limit "
                                         f"(max_request_bytes)")
                return
            if message["type"] != "http.request" or not message.get("more_body", False):
                break
        replay = iter(messages)

        async def replayed() -> dict[str, Any]:
            return next(replay, None) or await receive()

        await self.app(scope, replayed, send)

    @staticmethod
    async def _refuse(send: Any, message: str) -> None:
        await send_json_error(send, 413, PodiumError(message).message, close=True)
