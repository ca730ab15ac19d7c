"""Podium's typed BentoML APIs: what ``bentoml.SyncHTTPClient`` / ``AsyncHTTPClient`` list and
call, and what another service composes with ``bentoml.depends``.

The ``@bentoml.api`` methods of ``services.service.Podium`` are one-line delegations to the
functions here. They take the typed arguments BentoML has already parsed (image files, NumPy
arrays, rows, a prompt) and run them through the same data plane as ``/v1`` and ``/v2``:
``plane.select`` (rollout routing, pinned clients), the same decoding and limits
(``services.codecs``, ``services.digits``, ``services.textgen``, the ``/v2`` kind adapters),
``plane.infer`` (the adaptive batcher, the rollout's outcome records) and the request metrics
(``podium_requests_total{endpoint="classify_images"}`` …).

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

from services import codecs, textgen
from services.app import _off_loop  # the bounded decode pool of /v1's uploads
from services.dataplane import DataPlane
from services.edge import send_json_error
from services.errors import InvalidInput, PodiumError, clip
from services.http import JSON, MODEL_HEADER, VERSION_HEADER, Timer, error_response
from services.metrics import UNKNOWN
from services.oip_codec import DTYPES, Tensor, datatype_of
from services.oip_codec import _from_json as decode_json_tensor
from services.protocol import ADAPTERS, _check_inputs
from services.repository import LoadedVersion

Answer = Any  # what a typed API returns: its result, or a JSON error response


async def answer(plane: DataPlane, ctx: Any, endpoint: str,
                 work: Callable[[Timer], Awaitable[Any]]) -> Answer:
    """Run one typed API call: metrics under ``endpoint``, a ``PodiumError`` (or an unexpected
    one, logged) as Podium's JSON error with its status. ``work`` names the answering version
    with ``timer.answered_by``, which also sets the version headers."""
    timer = Timer(plane.metrics, endpoint)
    try:
        result = await work(timer)
    except Exception as exc:
        response: JSON = error_response(exc)
        timer.done(response.status_code)
        # BentoML sets the status of a response returned by a method with a context from it.
        ctx.response.status_code = response.status_code
        return response
    timer.done(200)
    if timer.model != UNKNOWN:
        ctx.response.metadata[MODEL_HEADER] = timer.model
        ctx.response.metadata[VERSION_HEADER] = timer.version
    return result


def _select(plane: DataPlane, ctx: Any, timer: Timer, model: str, version: str | None,
            kind: str) -> LoadedVersion:
    """The version answering this call (rollout routing reads the request's headers), which
    must be of ``kind``: another kind's model is named with the method that serves it."""
    loaded = plane.select(model, version, ctx.request.headers)
    timer.answered_by(loaded)
    if loaded.spec.kind != kind:
        raise InvalidInput(f"model {clip(model)!r} is a {loaded.spec.kind} model; call "
                           f"{_USE.get(loaded.spec.kind, 'infer_tensors')}", field="model")
    return loaded


_USE = {"image": "classify_images or classify_tensor", "tabular": "predict_rows",
        "text": "generate_text or next_chars"}


# ------------------------------------------------------------------------------------- images

def _top_k(plane: DataPlane, top_k: int | None) -> int:
    k = plane.config.top_k_default if top_k is None else top_k
    if not 1 <= k <= 10:
        raise InvalidInput("top_k must be an integer from 1 to 10", field="top_k")
    return k


def _classified(loaded: LoadedVersion, logits: np.ndarray, k: int) -> list[dict[str, Any]]:
    """/v1 predict's answer per image: the best digit, its probability, and the top ``k``."""
    probs = codecs.softmax(logits)
    order = np.argsort(-probs, axis=1)[:, :k]
    top = np.take_along_axis(probs, order, axis=1).tolist()
    labels = loaded.spec.labels
    return [{"digit": row[0], "label": labels[row[0]], "probability": p[0],
             "top_k": [{"label": labels[j], "probability": q} for j, q in zip(row, p, strict=True)]}
            for row, p in zip(order.tolist(), top, strict=True)]


async def classify_images(plane: DataPlane, ctx: Any, images: list[Path], model: str,
                          top_k: int | None, version: str | None) -> Answer:
    """Image files (BentoML stored each upload as a file) → predictions, through the same photo
    pipeline, pixel limits and decode pool as ``/v1``'s multipart uploads."""
    async def work(timer: Timer) -> list[dict[str, Any]]:
        loaded = _select(plane, ctx, timer, model, version, "image")
        k = _top_k(plane, top_k)
        cfg = plane.config
        files = [(f"images[{i}]", path.read_bytes()) for i, path in enumerate(images)]
        batch = await _off_loop(codecs.decode_images, files, cfg.max_items_per_request,
                                cfg.max_image_pixels, cfg.max_request_pixels)
        (logits,) = await plane.infer(loaded, {"image": batch})
        return _classified(loaded, logits, k)

    return await answer(plane, ctx, "classify_images", work)


async def classify_tensor(plane: DataPlane, ctx: Any, pixels: np.ndarray, model: str,
                          top_k: int | None, version: str | None) -> Answer:
    """A NumPy batch ([N,1,28,28], [N,28,28] or [N,784]; floats in [0, 1] or 0–255 integers) →
    predictions; the shape, range and batch checks are ``/v2``'s."""
    async def work(timer: Timer) -> list[dict[str, Any]]:
        loaded = _select(plane, ctx, timer, model, version, "image")
        k = _top_k(plane, top_k)
        out = await ADAPTERS["image"].run(loaded, {"image": np.asarray(pixels)}, {}, set())
        return _classified(loaded, out["logits"], k)

    return await answer(plane, ctx, "classify_tensor", work)


# ------------------------------------------------------------------------------------ tabular

async def predict_rows(plane: DataPlane, ctx: Any, rows: list[Any], model: str,
                       version: str | None) -> Answer:
    """Rows (named features or 8-number lists) → probability and label per row, as ``/v1``."""

    async def work(timer: Timer) -> list[dict[str, Any]]:
        loaded = _select(plane, ctx, timer, model, version, "tabular")
        features = codecs.decode_rows(rows, plane.config.max_items_per_request)
        (prob,) = await plane.infer(loaded, {"features": features})
        labels = loaded.spec.labels
        return [{"probability": p, "label": labels[int(p >= 0.5)]} for p in prob.reshape(-1).tolist()]

    return await answer(plane, ctx, "predict_rows", work)


# --------------------------------------------------------------------------------------- text

def _sampling(plane: DataPlane, loaded: LoadedVersion, prompt: str, given: dict[str, Any],
              generating: bool) -> dict[str, Any]:
    """The sampling settings checked with ``/v1``'s ranges and work bounds (``given``: the
    caller's settings, None = the default)."""
    cfg = plane.config
    settings = {key: value for key, value in given.items() if value is not None}
    vocab = len(loaded.vocab) - 1
    n = codecs.number_field(settings, "max_new_chars", 200, int, 1, cfg.max_new_chars) if generating else 0
    textgen.check_work([prompt], n, cfg)
    if not generating:
        return {"top_k": codecs.number_field(settings, "top_k", 5, int, 1, vocab)}
    return {"max_new_chars": n,
            "temperature": codecs.number_field(settings, "temperature", 1.0, float, 0.0, 5.0,
                                               inclusive_low=False),
            "top_k": codecs.number_field(settings, "top_k", None, int, 1, vocab),
            "seed": codecs.number_field(settings, "seed", None, int, 0, 2**63 - 1)}


async def generate_text(plane: DataPlane, ctx: Any, prompt: str, settings: dict[str, Any],
                        model: str, version: str | None) -> Answer:
    """``prompt`` and ``settings`` (max_new_chars, temperature, top_k, seed) → the generated
    text (the same seed gives the same text as ``/v1/models/char-rnn/generate``)."""

    async def work(timer: Timer) -> str:
        loaded = _select(plane, ctx, timer, model, version, "text")
        s = _sampling(plane, loaded, prompt, settings, generating=True)
        text, _ = await textgen.generate(loaded, prompt, s["max_new_chars"],
                                         s["temperature"], s["top_k"], s["seed"])
        return text

    return await answer(plane, ctx, "generate_text", work)


async def next_chars(plane: DataPlane, ctx: Any, prompt: str, top_k: int | None, model: str,
                     version: str | None) -> Answer:
    """The ``top_k`` most likely next characters after the prompt, with their probabilities."""

    async def work(timer: Timer) -> list[dict[str, Any]]:
        loaded = _select(plane, ctx, timer, model, version, "text")
        s = _sampling(plane, loaded, prompt, {"top_k": top_k}, generating=False)
        dist, _ = await textgen.next_distribution(loaded, prompt, s["top_k"])
        return [{"char": c, "probability": p} for c, p in dist]

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

    async def work(timer: Timer) -> list[NamedTensor]:
        loaded = plane.select(model, version, ctx.request.headers)
        timer.answered_by(loaded)
        if loaded.spec.kind == "text":
            raise InvalidInput(f"model {clip(model)!r} generates text; call {_USE['text']}",
                               field="model")
        adapter = ADAPTERS[loaded.spec.kind]
        ports = {port.name: port.datatype for port in adapter.inputs}
        tensors = {}
        for tensor in inputs:
            datatype = (tensor.datatype or ports.get(tensor.name, "FP32")).upper()
            if datatype not in DTYPES:
                raise InvalidInput(f"input {clip(tensor.name)!r}: unknown datatype {clip(datatype)!r}; "
                                   f"one of {', '.join(DTYPES)}", field=f"{tensor.name}.datatype")
            data = np.asarray(tensor.data)
            array = decode_json_tensor(tensor.name, datatype, data.shape, data.tolist())
            tensors[tensor.name] = Tensor(tensor.name, datatype, array)
        numeric = {port.name for port in adapter.outputs if port.datatype != "BYTES"}
        outputs = await adapter.run(loaded, _check_inputs(adapter, model, tensors), {}, numeric)
        return [NamedTensor(name=name, data=array, datatype=datatype_of(array))
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
