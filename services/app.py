"""The friendly HTTP API (``/v1``): per-model endpoints for rows, images, tensors and text.

Handlers take the raw request and decode at the edge (``services.codecs``) — faster than
per-field model validation on hot paths, with the same clear 4xx on bad input. FastAPI is used
for routing and so that BentoML's OpenAPI page (``/docs.json``, the index page) lists these
routes with their documented bodies.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from fastapi import APIRouter, FastAPI
from python_multipart.multipart import parse_options_header
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from services import codecs, digits, textgen
from services.dataplane import PLANE
from services.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType, clip
from services.http import (
    ERROR_RESPONSES,
    JSON,
    Timer,
    error_response,
    media_type,
    parse_json,
    read_body,
    versioned,
)

NPY_TYPES = {"application/x-npy", "application/npy", "application/octet-stream"}
MAX_FORM_FIELDS = 64  # non-file parts of a multipart body (top_k is the only one read)


def _top_k(payload: dict[str, Any] | None, request: Request) -> int:
    raw = (payload or {}).get("top_k", request.query_params.get("top_k"))
    if raw is None:
        return PLANE.config.top_k_default
    try:
        k = int(raw)
    except (TypeError, ValueError):
        raise InvalidInput("top_k must be an integer from 1 to 10", field="top_k") from None
    if isinstance(raw, bool) or not 1 <= k <= 10:
        raise InvalidInput("top_k must be an integer from 1 to 10", field="top_k")
    return k


@functools.cache
def _decode_pool(threads: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(threads, thread_name_prefix="decode")


async def _off_loop(fn: Callable[..., Any], *args: Any) -> Any:
    """Image decoding is CPU-bound for as long as the images are large: it runs in a bounded
    pool so that the event loop (health checks, every other request) never waits for it."""
    pool = _decode_pool(PLANE.config.image_decode_threads())
    return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)


async def _multipart_images(request: Request, body: bytes) -> tuple[list[tuple[str, bytes]], Any]:
    """The files (named ``field[filename]``, the name clipped) and ``top_k`` of a multipart body."""
    _, params = parse_options_header(request.headers.get("content-type", ""))
    if not 1 <= len(params.get(b"boundary", b"")) <= 70:  # RFC 2046
        raise InvalidInput("multipart/form-data needs a boundary parameter of 1 to 70 characters",
                           field="Content-Type")

    async def replay() -> AsyncIterator[bytes]:
        yield body

    limit = PLANE.config.max_items_per_request
    parser = MultiPartParser(request.headers, replay(), max_files=limit, max_fields=MAX_FORM_FIELDS)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        if exc.message.startswith("Too many"):
            raise PayloadTooLarge(f"multipart body: {exc.message} (max_items_per_request files, "
                                  f"{MAX_FORM_FIELDS} fields)", field="body") from None
        raise InvalidInput(f"malformed multipart body: {exc.message}", field="body") from None
    files = [(f"{key}[{clip(value.filename)}]" if value.filename else key, await value.read())
             for key, value in form.multi_items() if isinstance(value, UploadFile)]
    if not files:
        raise InvalidInput("no file part in the multipart body (is its boundary the one declared "
                           "in Content-Type?)", field="images")
    return files, form.get("top_k")


async def _decode_images(request: Request, body: bytes) -> tuple[np.ndarray, dict[str, Any] | None]:
    cfg = PLANE.config
    kind = media_type(request)
    if kind == "application/json":
        payload = parse_json(body)
        if not isinstance(payload, dict):
            raise InvalidInput("expected a JSON object with 'instances'", field="body")
        key = "instances" if "instances" in payload else "inputs"
        if key not in payload:
            raise InvalidInput("missing 'instances': a [N,1,28,28], [N,28,28] or [N,784] tensor",
                               field="instances")
        return codecs.decode_json_images(payload[key], cfg.max_items_per_request, key), payload
    if kind in NPY_TYPES:
        return codecs.decode_npy(body, cfg.max_items_per_request), None
    limits = (cfg.max_items_per_request, cfg.max_image_pixels, cfg.max_request_pixels)
    if kind.startswith("image/"):
        return await _off_loop(codecs.decode_images, [("body", body)], *limits), None
    if kind == "multipart/form-data":
        files, top_k = await _multipart_images(request, body)
        images = await _off_loop(codecs.decode_images, files, *limits)
        return images, {"top_k": top_k} if top_k else None
    raise UnsupportedMediaType(
        f"content type {clip(kind) or '(none)'!r} is not accepted; send application/json, "
        f"application/x-npy, image/* or multipart/form-data", field="Content-Type")


async def predict(request: Request, name: str, version: str | None = None) -> Response:
    timer = Timer(PLANE.metrics, "predict")
    try:
        loaded = PLANE.select(name, version, request.headers)
        timer.answered_by(loaded)
        spec = loaded.spec
        if spec.kind == "text":
            raise InvalidInput(f"{name} generates text: POST /v1/models/{name}/generate or /next",
                               field="path")
        body = await read_body(request, PLANE.config.max_request_bytes)
        if spec.kind == "tabular":
            if media_type(request) != "application/json":
                raise UnsupportedMediaType("send application/json with 'rows'",
                                           field="Content-Type")
            payload = parse_json(body)
            if not isinstance(payload, dict) or "rows" not in payload:
                raise InvalidInput("expected a JSON object with 'rows'", field="rows")
            rows = codecs.decode_rows(payload["rows"], PLANE.config.max_items_per_request)
            (prob,) = await PLANE.infer(loaded, {"features": rows})
            predictions = [{"probability": p, "label": spec.labels[int(p >= 0.5)]}
                           for p in prob.reshape(-1).tolist()]
        else:
            images, payload = await _decode_images(request, body)
            k = _top_k(payload, request)
            (logits,) = await PLANE.infer(loaded, {"image": images})
            probs = codecs.softmax(logits)
            order = np.argsort(-probs, axis=1)[:, :k]
            top = np.take_along_axis(probs, order, axis=1).tolist()  # Python floats, once
            labels = spec.labels
            predictions = [
                {"digit": row[0], "label": labels[row[0]], "probability": p[0],
                 "top_k": [{"label": labels[j], "probability": q} for j, q in zip(row, p, strict=True)]}
                for row, p in zip(order.tolist(), top, strict=True)]
            if request.query_params.get("preview") in ("1", "true"):  # issue 12: what the model saw
                for prediction, image in zip(predictions, images, strict=True):
                    prediction["preview"] = digits.preview_png(image)
        timer.done(200)
        return versioned({"model": name, "version": loaded.version, "predictions": predictions},
                         name, loaded.version)
    except Exception as exc:  # mapped to one status in services.http
        response = error_response(exc)
        timer.done(response.status_code)
        return response


async def _text_request(request: Request, name: str, version: str | None, endpoint: str) -> Response:
    timer = Timer(PLANE.metrics, endpoint)
    try:
        loaded = PLANE.select(name, version, request.headers)
        timer.answered_by(loaded)
        if loaded.spec.kind != "text":
            raise InvalidInput(f"{name} is not a text model: POST /v1/models/{name}/predict",
                               field="path")
        cfg = PLANE.config
        if media_type(request) != "application/json":
            raise UnsupportedMediaType("send application/json", field="Content-Type")
        payload = parse_json(await read_body(request, cfg.max_request_bytes))
        if not isinstance(payload, dict):
            raise InvalidInput("expected a JSON object with 'prompt'", field="body")
        prompt = payload.get("prompt")
        if not isinstance(prompt, str):
            raise InvalidInput("prompt must be a non-empty string", field="prompt")
        vocab = len(loaded.vocab) - 1
        generating = endpoint == "generate"
        n = codecs.number_field(payload, "max_new_chars", 200, int, 1, cfg.max_new_chars) if generating else 0
        textgen.check_work([prompt], n, cfg)
        if generating:
            temperature = codecs.number_field(payload, "temperature", 1.0, float, 0.0, 5.0,
                                      inclusive_low=False)
            top_k = codecs.number_field(payload, "top_k", None, int, 1, vocab)
            seed = codecs.number_field(payload, "seed", None, int, 0, 2**63 - 1)
            text, unknown = await textgen.generate(loaded, prompt, n, temperature, top_k, seed)
            content = {"model": name, "version": loaded.version, "prompt": prompt, "text": text,
                       "unknown_chars": unknown}
        else:
            top_k = codecs.number_field(payload, "top_k", 5, int, 1, vocab)
            dist, unknown = await textgen.next_distribution(loaded, prompt, top_k)
            content = {"model": name, "version": loaded.version, "prompt": prompt,
                       "next": [{"char": c, "probability": p} for c, p in dist],
                       "unknown_chars": unknown}
        timer.done(200)
        return versioned(content, name, loaded.version)
    except Exception as exc:
        response = error_response(exc)
        timer.done(response.status_code)
        return response


async def generate(request: Request, name: str, version: str | None = None) -> Response:
    return await _text_request(request, name, version, "generate")


async def next_chars(request: Request, name: str, version: str | None = None) -> Response:
    return await _text_request(request, name, version, "next")


async def list_models(request: Request) -> Response:
    try:
        return JSON({"models": PLANE.repo().describe()})
    except Exception as exc:
        return error_response(exc)


async def model_info(request: Request, name: str) -> Response:
    try:
        versions = PLANE.repo().model(name)
        stable = PLANE.repo().stable[name]
        loaded = versions[stable]
        spec = loaded.spec
        return JSON({"name": name, "stable": stable, "versions": list(versions),
                     "kind": spec.kind, "description": spec.description,
                     "signature": spec.signature(), "labels": list(spec.labels),
                     "metrics": loaded.stored.metadata.get("headline"),
                     "loaded": [v.describe() for v in versions.values()]})
    except Exception as exc:
        return error_response(exc)


async def model_ready(request: Request, name: str, version: str | None = None) -> Response:
    try:
        PLANE.repo().get(name, version)
        return JSON({"name": name, "ready": True})
    except Exception as exc:
        return error_response(exc)


_JSON_IMAGES = {"instances": [[0.0] * 784], "top_k": 3}
_PREDICT_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"type": "object"},
                         "examples": {
                             "mnist tensor": {"value": _JSON_IMAGES},
                             "diabetes rows": {"value": {"rows": [
                                 {"pregnancies": 6, "glucose": 148, "blood_pressure": 72,
                                  "skin_thickness": 35, "insulin": 0, "bmi": 33.6,
                                  "diabetes_pedigree": 0.627, "age": 50},
                                 [1, 85, 66, 29, 0, 26.6, 0.351, 31]]}}}},
    "application/x-npy": {"schema": {"type": "string", "format": "binary"}},
    "image/png": {"schema": {"type": "string", "format": "binary"}},
    "multipart/form-data": {"schema": {"type": "object", "properties": {
        "images": {"type": "array", "items": {"type": "string", "format": "binary"}}}}}}}}
_TEXT_BODY = {"requestBody": {"required": True, "content": {"application/json": {
    "schema": {"type": "object"},
    "example": {"prompt": "And God said", "max_new_chars": 120, "temperature": 0.8,
                "top_k": 10, "seed": 7}}}}}


def build_router() -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["Podium"])
    for suffix in ("", "/versions/{version}"):
        router.add_api_route(
            f"/models/{{name}}{suffix}/predict", predict, methods=["POST"],
            summary="Predict: diabetes rows, or MNIST images / JSON tensors / .npy batches",
            description="diabetes: `{\"rows\": [...]}` (named fields or 8-number lists). MNIST "
                        "models: JSON `{\"instances\": [N,1,28,28] | [N,28,28] | [N,784]}` (floats "
                        "in [0,1] or 0–255 integers), an `.npy` body, one `image/*` body, or "
                        "multipart images of any size. Optional `top_k` (1–10); `?preview=1` adds "
                        "each model input (28×28) as a base64 PNG.",
            openapi_extra=_PREDICT_BODY)
        router.add_api_route(
            f"/models/{{name}}{suffix}/generate", generate, methods=["POST"],
            summary="char-rnn: generate text from a prompt",
            description="`prompt`, `max_new_chars`, `temperature` in (0, 5], `top_k`, `seed` "
                        "(the same seed gives the same text).", openapi_extra=_TEXT_BODY)
        router.add_api_route(
            f"/models/{{name}}{suffix}/next", next_chars, methods=["POST"],
            summary="char-rnn: the next-character distribution after a prompt",
            openapi_extra=_TEXT_BODY)
        router.add_api_route(f"/models/{{name}}{suffix}/ready", model_ready, methods=["GET"],
                             summary="Per-model readiness (200 ready, 404 unknown, 503 loading)")
    router.add_api_route("/models", list_models, methods=["GET"], summary="Loaded models and versions")
    router.add_api_route("/models/{name}", model_info, methods=["GET"],
                         summary="A model's signature, labels, versions and headline metric")
    return router


def _plain(handler: Any) -> Any:
    async def endpoint(request: Request) -> Response:
        return await handler(request, **request.path_params)
    return endpoint


def create_hot_app() -> Starlette:
    """The inference routes as a plain Starlette app, mounted in front of the FastAPI app.

    The handlers take the raw request anyway, and FastAPI's per-request machinery (parameter
    solving, its own middlewares) was over a quarter of the event loop under load
    (results/bench/NOTES.md). The FastAPI app keeps the documented copies of these routes, so
    BentoML's OpenAPI page is unchanged.
    """
    from services import protocol

    routes = []
    for suffix in ("", "/versions/{version}"):
        base = f"/models/{{name}}{suffix}"
        routes += [Route(f"/v1{base}/predict", _plain(predict), methods=["POST"]),
                   Route(f"/v1{base}/generate", _plain(generate), methods=["POST"]),
                   Route(f"/v1{base}/next", _plain(next_chars), methods=["POST"]),
                   Route(f"/v2{base}/infer", _plain(protocol.infer), methods=["POST"])]
    return Starlette(routes=routes)


def create_app() -> FastAPI:
    from services import admin, protocol

    app = FastAPI(title="Podium", version="1", docs_url=None, redoc_url=None, openapi_url=None)
    for router in (build_router(), protocol.build_router(), admin.build_router()):
        app.include_router(router, responses=ERROR_RESPONSES)
    return app
