"""The image classifier kind: [N, C, H, W] pixels → class scores, probabilities and labels.

``/v1`` predict takes JSON tensors (``{"instances": [N,C,H,W]}``; with one channel also
``[N,H,W]`` and ``[N,H*W]``; floats in [0, 1] or 0–255 integers), an ``.npy`` body, one
``image/*`` body or multipart ``images`` files of any size; optional ``top_k`` (1–10). Photos
become model inputs in one of two ways (contract A, ``preprocessing.image``): ``digits`` — the
lecture MNIST models, and imported [N,1,28,28] models that ask for it — goes through Podium's
digit pipeline (``services.digits``); any other image model gets the photo converted to its
channels and resized to its H×W, in [0, 1]. Pixels then take the model's ``mean``/``std`` when
it states them (``(x - mean) / std`` per channel), photos and tensors alike.

``/v2``: the model's input, FP32 in [0,1] or UINT8 0–255 → its scores (FP32 [-1,K]),
``probabilities`` FP32 [-1,K] and ``label`` BYTES [-1].
"""

from __future__ import annotations

import asyncio
import collections
import functools
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np
from python_multipart.multipart import parse_options_header
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request
from starlette.responses import Response

from models.labels import labels_of
from services import codecs, digits
from services.batcher import Deferred
from services.errors import InvalidInput, PayloadTooLarge, clip
from services.http import media_type, parse_json, query_param
from services.kinds.base import (
    BINARY,
    NPY_TYPES,
    Call,
    Kind,
    Port,
    check_items,
    labels_bytes,
    npy_response,
    unsupported,
)
from services.kinds.registry import register

if TYPE_CHECKING:
    from services.config import ServeConfig
    from services.dataplane import DataPlane
    from services.repository import LoadedVersion

MAX_FORM_FIELDS = 64  # non-file parts of a multipart body (top_k is the only one read)
MAX_TOP_K = 10


# Requests whose images one decode job takes at most (batching on).
DECODE_BATCH = 16
# A job hands back what it has decoded whenever this long has passed since it last did: a
# request decoded early in a job of slow images (large photos) does not wait for the rest.
DECODE_DELIVER_S = 0.02


@functools.cache
def _decode_pool(threads: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(threads, thread_name_prefix="decode")


Pending = tuple[Callable[..., Any], tuple[Any, ...], asyncio.Future]


class _DecodeBatches:
    """Image decoding, batched like inference (``batching`` on): the requests that queue while
    every decode thread is busy are decoded by one job, and come back to the event loop together
    — one thread hand-off and one wake-up of the loop per job (or per ``DECODE_DELIVER_S`` of
    decoding), not per image — so they also reach the model's batcher in one turn of the loop
    and run as one batch. Under load an image endpoint is decode-bound (issue 15: PNG uploads at
    64 concurrent), and a thread hand-off per image, with the GIL traded each time, was what
    batching could save there. Each request's decode still fails alone (its own 400); a request
    whose client went away is skipped. The queue and the count of jobs are the event loop's."""

    def __init__(self, pool: ThreadPoolExecutor, threads: int) -> None:
        self.pool, self.threads = pool, threads
        self.pending: collections.deque[Pending] = collections.deque()
        self.jobs = 0  # running now (at most ``threads``)
        self.loop: asyncio.AbstractEventLoop | None = None

    def submit(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        if loop is not self.loop:  # a new event loop (in-process tests): nothing of the old counts
            self.loop, self.pending, self.jobs = loop, collections.deque(), 0
        future = loop.create_future()
        self.pending.append((fn, args, future))
        if self.jobs < self.threads:
            self._start(loop)
        return future

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        batch = []
        while self.pending and len(batch) < DECODE_BATCH:
            item = self.pending.popleft()
            if not item[2].done():  # cancelled: its client went away
                batch.append(item)
        if not batch:
            return
        try:
            job = loop.run_in_executor(self.pool, self._decode_all, loop, batch)
        except RuntimeError as exc:  # the pool has shut down (the process is stopping)
            self._fail(loop, batch, exc)
            return
        self.jobs += 1
        job.add_done_callback(functools.partial(self._done, loop, batch))

    def _decode_all(self, loop: asyncio.AbstractEventLoop, batch: list[Pending]
                    ) -> tuple[int, list[tuple[bool, Any]]]:
        """One job, in the pool: each request's outcome (a result or its exception), handed back
        every ``DECODE_DELIVER_S``; returns how many were handed back already, and all."""
        outcomes: list[tuple[bool, Any]] = []
        sent, since = 0, time.perf_counter()
        for fn, args, _ in batch:
            try:
                outcomes.append((True, fn(*args)))
            except Exception as exc:  # this request's own 400 (or failure); the others go on
                outcomes.append((False, exc))
            now = time.perf_counter()
            if now - since >= DECODE_DELIVER_S and len(outcomes) < len(batch):
                try:
                    loop.call_soon_threadsafe(self._deliver, loop, batch[sent:len(outcomes)],
                                              outcomes[sent:])
                except RuntimeError:  # that event loop has closed: nobody waits for the rest
                    return len(batch), outcomes
                sent, since = len(outcomes), now
        return sent, outcomes

    def _deliver(self, loop: asyncio.AbstractEventLoop, batch: list[Pending],
                 outcomes: list[tuple[bool, Any]]) -> None:
        if loop is not self.loop:  # a job of an event loop no longer served
            return
        for (_, _, future), (ok, value) in zip(batch, outcomes, strict=True):
            if future.done():
                continue
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)

    def _fail(self, loop: asyncio.AbstractEventLoop, batch: list[Pending], why: object) -> None:
        """Every request of ``batch`` fails (500), each with its own exception."""
        self._deliver(loop, batch, [(False, RuntimeError(f"image decoding failed: {why}"))
                                    for _ in batch])

    def _done(self, loop: asyncio.AbstractEventLoop, batch: list[Pending], job: asyncio.Future) -> None:
        if loop is not self.loop:
            return
        self.jobs -= 1
        if job.cancelled() or job.exception() is not None:  # the pool itself failed (shut down)
            self._fail(loop, batch, "cancelled" if job.cancelled() else job.exception())
        else:
            sent, outcomes = job.result()
            self._deliver(loop, batch[sent:], outcomes[sent:])
        if self.pending:
            self._start(loop)


@functools.cache
def _decode_batches(threads: int) -> _DecodeBatches:
    return _DecodeBatches(_decode_pool(threads), threads)


async def _off_loop(config: ServeConfig, fn: Callable[..., Any], *args: Any) -> Any:
    """Image decoding is CPU-bound for as long as the images are large: it runs in a bounded
    pool so that the event loop (health checks, every other request) never waits for it; with
    ``batching`` on, in batches (``_DecodeBatches``)."""
    threads = config.image_decode_threads()
    if config.batching:
        return await _decode_batches(threads).submit(fn, args)
    return await asyncio.get_running_loop().run_in_executor(_decode_pool(threads), fn, *args)


async def _multipart_images(request: Request, body: bytes, limit: int
                            ) -> tuple[list[tuple[str, bytes]], Any]:
    """The files (named ``field[filename]``, the name clipped) and ``top_k`` of a multipart body."""
    _, params = parse_options_header(request.headers.get("content-type", ""))
    if not 1 <= len(params.get(b"boundary", b"")) <= 70:  # RFC 2046
        raise InvalidInput("multipart/form-data needs a boundary parameter of 1 to 70 characters",
                           field="Content-Type")

    async def replay() -> AsyncIterator[bytes]:
        yield body

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


def ranked(scores: np.ndarray, k: int) -> list[tuple[list[int], list[float]]]:
    """Per row of ``scores`` [N, K]: the ``k`` most probable classes, most probable first, and
    their softmax probabilities (Python ints and floats, ready for JSON). Up to
    ``codecs.SMALL_SCORES`` scores, in plain Python: for the usual one-image request NumPy's
    per-call overhead (softmax, argsort, take_along_axis) cost ~14 µs on the event loop against
    ~3 µs this way (issue 15); big batches stay vectorised."""
    if scores.size <= codecs.SMALL_SCORES:
        out = []
        for row in scores.tolist():
            # softmax_row's arithmetic, but only the k kept probabilities divided out: the
            # division by one positive total keeps the exponentials' order (ties: lower class first)
            exps = codecs.exps_row(row)
            total = sum(exps)
            order = sorted(range(len(exps)), key=exps.__getitem__, reverse=True)[:k]
            out.append((order, [exps[j] / total for j in order]))
        return out
    probs = codecs.softmax(scores)
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return list(zip(order.tolist(), np.take_along_axis(probs, order, axis=1).tolist(), strict=True))


def _top_k(raw: Any, default: int) -> int:
    if raw is None:
        return default
    try:
        k = int(raw)
    except (TypeError, ValueError):
        raise InvalidInput(f"top_k must be an integer from 1 to {MAX_TOP_K}", field="top_k") from None
    if isinstance(raw, bool) or not 1 <= k <= MAX_TOP_K:
        raise InvalidInput(f"top_k must be an integer from 1 to {MAX_TOP_K}", field="top_k")
    return k


@register
class ImageClassifier(Kind):
    name = "image"
    max_batch = 256
    gpu_max_batch = 1024

    def __init__(self, spec: Any) -> None:
        super().__init__(spec)
        channels, height, width = spec.inputs[0].shape[1:]
        self.shape: tuple[int, int, int] = (channels, height, width)
        # Lecture models state no "image" preprocessing: they are the MNIST digit models.
        pre = spec.preprocessing.get("image")
        self.digits: bool = pre is None or bool(pre.get("digits"))
        self.mean = self._per_channel((pre or {}).get("mean"))
        self.std = self._per_channel((pre or {}).get("std"))
        self.classes: int = spec.outputs[0].shape[-1]
        self.labels: tuple[str, ...] = spec.labels or tuple(str(i) for i in range(self.classes))

    def _per_channel(self, values: list[float] | None) -> np.ndarray | None:
        return None if values is None else np.asarray(values, np.float32).reshape(-1, 1, 1)

    # -- decoding -------------------------------------------------------------------------------
    def _photo(self, image: Any) -> np.ndarray:
        return digits.mnist_digit(image) if self.digits else codecs.photo_tensor(image, self.shape)

    async def _decode(self, call: Call, defer: bool = False) -> tuple[np.ndarray | Deferred, Any]:
        """The request's images as [N, C, H, W] pixels in [0, 1], and its ``top_k`` if given.
        ``defer``: a plain JSON body's pixels may come as ``codecs.JsonImages``, parsed and
        checked when its batch runs (its refusals are the same, heard then)."""
        cfg, request = call.plane.config, call.request
        body = await call.body()
        media = media_type(request)
        if media == "application/json":
            if defer:
                later = codecs.JsonImages.of(body, self.shape, cfg.max_items_per_request,
                                             lambda: self._json_images(body, cfg)[0])
                # None: not the plain form, which the simdjson path below would decline too
                return (later, None) if later is not None else self._json_images(body, cfg)
            fast = codecs.json_images_fast(body, self.shape)
            if fast is not None:  # the plain form, without Python objects per pixel
                return codecs.checked_images(fast[1], fast[0], cfg.max_items_per_request,
                                             self.shape), None
            return self._json_images(body, cfg)
        if media in NPY_TYPES:
            return codecs.decode_npy(body, cfg.max_items_per_request, self.shape), None
        if media.startswith("image/"):
            return await self.decode_files(cfg, [("body", body)]), None
        if media == "multipart/form-data":
            files, top_k = await _multipart_images(request, body, cfg.max_items_per_request)
            return await self.decode_files(cfg, files), top_k
        raise unsupported(request, "application/json, application/x-npy, image/* or "
                                   "multipart/form-data")

    def _json_images(self, body: bytes, cfg: ServeConfig) -> tuple[np.ndarray, Any]:
        """Any JSON image body through orjson: its checked pixels and its ``top_k``."""
        payload = parse_json(body)
        if not isinstance(payload, dict):
            raise InvalidInput("expected a JSON object with 'instances'", field="body")
        key = "instances" if "instances" in payload else "inputs"
        if key not in payload:
            shapes = ", ".join(str([-1, *s]) for s in codecs.image_shapes(self.shape))
            raise InvalidInput(f"missing 'instances': a tensor of one of the shapes {shapes} "
                               f"(-1: the batch)", field="instances")
        images = codecs.decode_json_images(payload[key], cfg.max_items_per_request, key, self.shape)
        return images, payload.get("top_k")

    async def decode_files(self, cfg: ServeConfig, files: list[tuple[str, bytes]]) -> np.ndarray:
        """Image files (``(name, bytes)``: any size, mode and format) → [N, C, H, W] pixels in
        [0, 1], in the bounded decode pool, within the item and pixel limits (also the typed
        ``classify_images``)."""
        return await _off_loop(cfg, codecs.decode_images, files, cfg.max_items_per_request,
                               cfg.max_image_pixels, cfg.max_request_pixels, self._photo)

    def _normalized(self, pixels: np.ndarray | Deferred) -> np.ndarray | Deferred:
        if isinstance(pixels, Deferred):  # float32 pixels once filled; no mean or std to apply
            return pixels
        if self.mean is not None:
            pixels = pixels - self.mean
        if self.std is not None:
            pixels = pixels / self.std
        return pixels.astype(np.float32, copy=False)

    async def scores(self, plane: DataPlane, loaded: LoadedVersion, pixels: np.ndarray) -> np.ndarray:
        """Decoded [N, C, H, W] pixels in [0, 1] → class scores (logits) [N, K]."""
        (scores,) = await plane.infer(loaded, {self.spec.inputs[0].name: self._normalized(pixels)})
        return scores.reshape(scores.shape[0], -1)

    # -- /v1 ------------------------------------------------------------------------------------
    async def v1_predict(self, call: Call) -> dict[str, Any] | Response:
        request = call.request
        preview = self.digits and query_param(request, "preview") in ("1", "true")
        # A plain JSON body is parsed with its batch (``codecs.JsonImages``) unless its pixels
        # are wanted here (a preview) or must be normalized first.
        images, top_k = await self._decode(call, defer=not preview and self.mean is None
                                           and self.std is None)
        k = self.top_k(top_k if top_k is not None else query_param(request, "top_k"),
                       call.plane.config)
        scores = await self.scores(call.plane, call.loaded, images)
        if call.wants_npy:
            return npy_response(codecs.softmax(scores).astype(np.float32, copy=False))
        predictions = self.predictions(scores, k)
        if preview:
            for prediction, image in zip(predictions, images, strict=True):  # issue 12: what the model saw
                prediction["preview"] = digits.preview_png(image)
        return {"predictions": predictions}

    def top_k(self, raw: Any, cfg: ServeConfig) -> int:
        """The requested ``top_k`` (None: the configured default), checked, at most the classes."""
        return min(_top_k(raw, cfg.top_k_default), self.classes)

    def predictions(self, scores: np.ndarray, k: int) -> list[dict[str, Any]]:
        """Per image of ``scores`` (logits [N, K]): the best class (``digit`` for the digit
        models), its label and probability, and the ``k`` most likely labels (also the typed
        ``classify_*`` answers)."""
        labels, first = self.labels, "digit" if self.digits else "class"
        return [{first: row[0], "label": labels[row[0]], "probability": p[0],
                 "top_k": [{"label": labels[j], "probability": q} for j, q in zip(row, p, strict=True)]}
                for row, p in ranked(scores, k)]

    # -- /v2 ------------------------------------------------------------------------------------
    def inputs(self) -> tuple[Port, ...]:
        return (Port(self.spec.inputs[0].name, "FP32", (-1, *self.shape), ("UINT8",)),)

    def outputs(self) -> tuple[Port, ...]:
        return (Port(self.spec.outputs[0].name, "FP32", (-1, self.classes)),
                Port("probabilities", "FP32", (-1, self.classes)), Port("label", "BYTES", (-1,)))

    async def infer(self, plane: DataPlane, loaded: LoadedVersion, inputs: dict[str, np.ndarray],
                    parameters: dict[str, Any], wanted: set[str]) -> dict[str, np.ndarray]:
        name = self.spec.inputs[0].name  # the one input port's (``inputs``)
        image = inputs[name]
        if image.ndim < 2 or image.shape[1:] not in codecs.image_shapes(self.shape):
            send = " or ".join(str([-1, *s]) for s in codecs.image_shapes(self.shape))
            raise InvalidInput(f"input {name!r}: shape {list(image.shape)} is not a batch of "
                               f"{'×'.join(map(str, self.shape))} images; send {send}",
                               field=f"{name}.shape")
        check_items(image.shape[0], "images", plane.config.max_items_per_request)
        image = image.reshape(-1, *self.shape)
        # Checked with the batch when no mean or std is to be applied first (``PixelsLater``).
        pixels = (codecs.PixelsLater(image, name) if self.mean is None and self.std is None
                  else codecs.normalize_pixels(image, name))
        scores = await self.scores(plane, loaded, pixels)
        out = {self.spec.outputs[0].name: scores}
        if "probabilities" in wanted:
            out["probabilities"] = codecs.softmax(scores).astype(np.float32, copy=False)
        if "label" in wanted:
            out["label"] = labels_bytes(self.labels, labels_of(scores))
        return out

    # -- OpenAPI --------------------------------------------------------------------------------
    @classmethod
    def request_bodies(cls, endpoint: str) -> dict[str, dict[str, Any]]:
        return {
            "application/json": {"schema": {"type": "object"}, "examples": {
                "mnist tensor": {"value": {"instances": [[0.0] * 784], "top_k": 3}}}},
            "application/x-npy": BINARY, "image/png": BINARY, "image/jpeg": BINARY,
            "multipart/form-data": {"schema": {"type": "object", "properties": {
                "images": {"type": "array", "items": {"type": "string", "format": "binary"}},
                "top_k": {"type": "integer", "minimum": 1, "maximum": MAX_TOP_K}}},
                "encoding": {"images": {"contentType": "image/*"}}}}
