"""The Open Inference Protocol (KServe v2) front door: ``/v2``, so ``tritonclient.http``, KServe and
MLServer clients work unchanged.

One data path, two front doors: a request here is decoded at the edge (``services.oip_codec``),
then goes through the same ``PLANE.select`` (version selection) and ``PLANE.infer`` (adaptive
batcher, runtime, metrics) as the friendly ``/v1`` API, under the same size limits.

Tensors, by model kind (-1 = variable):

- diabetes: ``features`` FP32 [-1,8] → ``probability`` FP32 [-1,1], ``label`` BYTES [-1];
- mnist-*: ``image`` FP32 in [0,1] or UINT8 0–255, [-1,1,28,28] (also [-1,28,28], [-1,784])
  → ``logits`` FP32 [-1,10], ``probabilities`` FP32 [-1,10], ``label`` BYTES [-1];
- char-rnn: ``prompt`` BYTES [-1] (one generation per element) with request parameters
  ``max_new_chars``, ``temperature``, ``top_k``, ``seed`` → ``text`` BYTES, the prompt's shape.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from services import codecs, oip_codec, textgen
from services.codecs import IMAGE_SIDE, normalize_pixels
from services.dataplane import PLANE
from services.errors import InvalidInput, ModelNotReady, PayloadTooLarge
from services.http import (
    JSON,
    MODEL_HEADER,
    VERSION_HEADER,
    Timer,
    error_response,
    read_body,
)
from services.oip_codec import HEADER_LENGTH
from services.repository import LoadedVersion
from services.runtimes import triton_config

PLATFORMS = {"onnx": ("onnxruntime_onnx", "onnxruntime"), "torchscript": ("pytorch_libtorch", "pytorch")}
EXTENSIONS = ["binary_tensor_data", "parameters", "model_configuration"]
# Request parameters tritonclient may send on its own; accepted and ignored.
RESERVED_PARAMETERS = {"sequence_id", "sequence_start", "sequence_end", "priority", "timeout",
                       "headers", "binary_data_output"}


@dataclass(frozen=True)
class Port:
    """One tensor of a model's protocol signature; ``accepts`` lists further input datatypes."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    accepts: tuple[str, ...] = ()

    def metadata(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


class Adapter:
    """A model kind's protocol signature and how its tensors map onto the data plane."""

    inputs: tuple[Port, ...] = ()
    outputs: tuple[Port, ...] = ()
    parameters: tuple[str, ...] = ()
    batched = True  # the first dimension of every tensor is the batch

    async def run(self, loaded: LoadedVersion, inputs: dict[str, np.ndarray],
                  parameters: dict[str, Any], wanted: set[str]) -> dict[str, np.ndarray]:
        raise NotImplementedError


def _labels(spec_labels: tuple[str, ...], index: np.ndarray) -> np.ndarray:
    out = np.empty(len(index), dtype=object)
    out[:] = [spec_labels[i].encode() for i in index]
    return out


def _batch_size(n: int, what: str) -> None:
    if n == 0:
        raise InvalidInput(f"empty batch: no {what}", field=what)
    limit = PLANE.config.max_items_per_request
    if n > limit:
        raise PayloadTooLarge(f"{n} {what} in one request; the limit is {limit} "
                              f"(max_items_per_request)", field=what)


class TabularAdapter(Adapter):
    inputs = (Port("features", "FP32", (-1, 8)),)
    outputs = (Port("probability", "FP32", (-1, 1)), Port("label", "BYTES", (-1,)))

    async def run(self, loaded: LoadedVersion, inputs: dict[str, np.ndarray],
                  parameters: dict[str, Any], wanted: set[str]) -> dict[str, np.ndarray]:
        features = inputs["features"]
        if features.ndim != 2 or features.shape[1] != 8:
            raise InvalidInput(f"input 'features': shape {list(features.shape)} is not [N,8]",
                               field="features.shape")
        _batch_size(features.shape[0], "rows")
        if not np.isfinite(features).all():
            raise InvalidInput("input 'features' contains NaN or infinity", field="features")
        (probability,) = await PLANE.infer(loaded, {"features": features})
        probability = probability.reshape(-1, 1)
        out = {"probability": probability}
        if "label" in wanted:
            out["label"] = _labels(loaded.spec.labels, (probability[:, 0] >= 0.5).astype(int))
        return out


class ImageAdapter(Adapter):
    inputs = (Port("image", "FP32", (-1, 1, IMAGE_SIDE, IMAGE_SIDE), ("UINT8",)),)
    outputs = (Port("logits", "FP32", (-1, 10)), Port("probabilities", "FP32", (-1, 10)),
               Port("label", "BYTES", (-1,)))
    _shapes = ((1, IMAGE_SIDE, IMAGE_SIDE), (IMAGE_SIDE, IMAGE_SIDE), (IMAGE_SIDE * IMAGE_SIDE,))

    async def run(self, loaded: LoadedVersion, inputs: dict[str, np.ndarray],
                  parameters: dict[str, Any], wanted: set[str]) -> dict[str, np.ndarray]:
        image = inputs["image"]
        if image.ndim < 2 or image.shape[1:] not in self._shapes:
            raise InvalidInput(f"input 'image': shape {list(image.shape)} is not a batch of MNIST "
                               f"images; send [N,1,28,28], [N,28,28] or [N,784]",
                               field="image.shape")
        _batch_size(image.shape[0], "images")
        batch = normalize_pixels(image.reshape(-1, 1, IMAGE_SIDE, IMAGE_SIDE), "image")
        (logits,) = await PLANE.infer(loaded, {"image": batch})
        out = {"logits": logits}
        if "probabilities" in wanted:
            out["probabilities"] = codecs.softmax(logits).astype(np.float32, copy=False)
        if "label" in wanted:
            out["label"] = _labels(loaded.spec.labels, logits.argmax(axis=1))
        return out


class TextAdapter(Adapter):
    inputs = (Port("prompt", "BYTES", (-1,)),)
    outputs = (Port("text", "BYTES", (-1,)),)
    parameters = ("max_new_chars", "temperature", "top_k", "seed")
    batched = False  # char-rnn batches generation steps, not prompts

    async def run(self, loaded: LoadedVersion, inputs: dict[str, np.ndarray],
                  parameters: dict[str, Any], wanted: set[str]) -> dict[str, np.ndarray]:
        cfg = PLANE.config
        prompts = inputs["prompt"]
        _batch_size(prompts.size, "prompts")
        try:
            texts = [raw.decode() for raw in prompts.ravel()]
        except UnicodeDecodeError:
            raise InvalidInput("input 'prompt' is not valid UTF-8", field="prompt") from None
        n = codecs.number_field(parameters, "max_new_chars", 200, int, 1, cfg.max_new_chars)
        textgen.check_work(texts, n, cfg)
        temperature = codecs.number_field(parameters, "temperature", 1.0, float, 0.0, 5.0,
                                  inclusive_low=False)
        top_k = codecs.number_field(parameters, "top_k", None, int, 1, len(loaded.vocab) - 1)
        seed = codecs.number_field(parameters, "seed", None, int, 0, 2**63 - 1)
        # Concurrent generations share the batcher: N prompts step together as batches of N.
        results = await asyncio.gather(*(textgen.generate(loaded, t, n, temperature, top_k, seed)
                                         for t in texts))
        out = np.empty(len(results), dtype=object)
        out[:] = [text.encode() for text, _ in results]
        return {"text": out.reshape(prompts.shape)}


ADAPTERS: dict[str, Adapter] = {"tabular": TabularAdapter(), "image": ImageAdapter(),
                                "text": TextAdapter()}


def _check_inputs(adapter: Adapter, name: str, tensors: dict[str, oip_codec.Tensor]
                  ) -> dict[str, np.ndarray]:
    expected = {port.name: port for port in adapter.inputs}
    for tensor in tensors.values():
        port = expected.get(tensor.name)
        if port is None:
            raise InvalidInput(f"unknown input {tensor.name!r} for model {name!r}; its inputs: "
                               f"{', '.join(expected)}", field=tensor.name)
        if tensor.datatype != port.datatype and tensor.datatype not in port.accepts:
            allowed = " or ".join((port.datatype, *port.accepts))
            raise InvalidInput(f"input {port.name!r} has datatype {tensor.datatype}; model {name!r} "
                               f"takes {allowed}", field=f"{port.name}.datatype")
    missing = [n for n in expected if n not in tensors]
    if missing:
        raise InvalidInput(f"missing input {missing[0]!r} for model {name!r}", field=missing[0])
    return {n: t.array for n, t in tensors.items()}


def _check_parameters(adapter: Adapter, name: str, parameters: dict[str, Any]) -> None:
    unknown = [k for k in parameters if k not in adapter.parameters and k not in RESERVED_PARAMETERS]
    if unknown:
        takes = ", ".join(adapter.parameters) or "none"
        raise InvalidInput(f"unknown request parameter {unknown[0]!r} for model {name!r}; it takes: "
                           f"{takes}", field=f"parameters.{unknown[0]}")


def _wanted(adapter: Adapter, name: str, request: oip_codec.Request) -> dict[str, bool]:
    if request.outputs is None:
        return {port.name: request.binary_default for port in adapter.outputs}
    known = {port.name for port in adapter.outputs}
    for output in request.outputs:
        if output not in known:
            raise InvalidInput(f"unknown output {output!r} for model {name!r}; its outputs: "
                               f"{', '.join(sorted(known))}", field="outputs")
    return request.outputs


async def infer(request: Request, name: str, version: str | None = None) -> Response:
    timer = Timer(PLANE.metrics, "infer")
    loaded = None
    try:
        loaded = PLANE.select(name, version, request.headers)
        timer.answered_by(loaded)
        limit = PLANE.config.max_request_bytes
        body = oip_codec.decompress(await read_body(request, limit),
                                    request.headers.get("content-encoding"), limit)
        decoded = oip_codec.decode_request(body, request.headers.get(HEADER_LENGTH))
        adapter = ADAPTERS[loaded.spec.kind]
        inputs = _check_inputs(adapter, name, decoded.inputs)
        _check_parameters(adapter, name, decoded.parameters)
        wanted = _wanted(adapter, name, decoded)
        results = await adapter.run(loaded, inputs, decoded.parameters, set(wanted))
        header: dict[str, Any] = {"model_name": name, "model_version": loaded.version}
        if decoded.id is not None:
            header["id"] = decoded.id
        content, length = oip_codec.encode_response(
            header, [(out, results[out], binary) for out, binary in wanted.items()])
        headers = {MODEL_HEADER: name, VERSION_HEADER: loaded.version}
        media = "application/json"
        if length is not None:
            headers[HEADER_LENGTH] = str(length)
            media = "application/octet-stream"
        timer.done(200)
        return Response(content, media_type=media, headers=headers)
    except Exception as exc:  # mapped to one status in services.http
        return _failed(exc, loaded, timer)


def _failed(exc: Exception, loaded: LoadedVersion | None, timer: Timer | None = None) -> Response:
    response = error_response(exc)
    if loaded is not None:
        response.headers[MODEL_HEADER] = loaded.name
        response.headers[VERSION_HEADER] = loaded.version
    if timer is not None:
        timer.done(response.status_code)
    return response


def _versions(name: str) -> list[str]:
    repo = PLANE.repo()
    stable = repo.stable[name]
    return [stable, *(v for v in repo.model(name) if v != stable)]


def _answer(content: dict[str, Any], loaded: LoadedVersion) -> JSON:
    return JSON(content, headers={MODEL_HEADER: loaded.name, VERSION_HEADER: loaded.version})


async def model_metadata(request: Request, name: str, version: str | None = None) -> Response:
    loaded = None
    try:
        loaded = PLANE.repo().get(name, version)
        adapter = ADAPTERS[loaded.spec.kind]
        return _answer({"name": name, "versions": _versions(name),
                        "platform": PLATFORMS[loaded.runtime.kind][0],
                        "inputs": [p.metadata() for p in adapter.inputs],
                        "outputs": [p.metadata() for p in adapter.outputs]}, loaded)
    except Exception as exc:
        return _failed(exc, loaded)


def _config_tensor(port: Port, batched: bool) -> dict[str, Any]:
    datatype = "STRING" if port.datatype == "BYTES" else port.datatype
    return {"name": port.name, "data_type": f"TYPE_{datatype}",
            "dims": list(port.shape[1:] if batched else port.shape)}


async def model_config(request: Request, name: str, version: str | None = None) -> Response:
    """A Triton-style model configuration (what ``perf_analyzer`` reads to size its requests)."""
    loaded = None
    try:
        loaded = PLANE.repo().get(name, version)
        adapter = ADAPTERS[loaded.spec.kind]
        platform, backend = PLATFORMS[loaded.runtime.kind]
        config: dict[str, Any] = {
            "name": name, "platform": platform, "backend": backend,
            "max_batch_size": loaded.batcher.max_batch_size if adapter.batched else 0,
            "input": [_config_tensor(p, adapter.batched) for p in adapter.inputs],
            "output": [_config_tensor(p, adapter.batched) for p in adapter.outputs],
            **triton_config(loaded.runtime)}  # where it runs: the providers really in use
        if adapter.batched and PLANE.config.batching:
            config["dynamic_batching"] = {"max_queue_delay_microseconds":
                                          int(PLANE.config.batch_wait_ms * 1000)}
        return _answer(config, loaded)
    except Exception as exc:
        return _failed(exc, loaded)


async def model_ready(request: Request, name: str, version: str | None = None) -> Response:
    loaded = None
    try:
        loaded = PLANE.repo().get(name, version)
        return _answer({"name": name, "version": loaded.version, "ready": True}, loaded)
    except Exception as exc:
        return _failed(exc, loaded)


def _server_version() -> str:
    try:
        return importlib.metadata.version("podium")
    except importlib.metadata.PackageNotFoundError:  # a bento carries the source, not the dist
        return os.environ.get("PODIUM_SERVER_VERSION", "unknown")


async def server_metadata(request: Request) -> Response:
    return JSON({"name": "podium", "version": _server_version(), "extensions": EXTENSIONS})


async def live(request: Request) -> Response:
    return JSON({"live": True})


async def ready(request: Request) -> Response:
    if PLANE.ready:
        return JSON({"ready": True})
    return JSON({**ModelNotReady("the server is still loading its models").body(), "ready": False},
                status_code=503)


def build_router() -> APIRouter:
    router = APIRouter(prefix="/v2", tags=["Open Inference Protocol"])
    router.add_api_route("", server_metadata, methods=["GET"],
                         summary="Server metadata: name, version, protocol extensions")
    router.add_api_route("/health/live", live, methods=["GET"], summary="Liveness (200 = live)")
    router.add_api_route("/health/ready", ready, methods=["GET"],
                         summary="Readiness: 200 once every model is loaded and warm, else 503")
    for suffix in ("", "/versions/{version}"):
        base = f"/models/{{name}}{suffix}"
        router.add_api_route(base, model_metadata, methods=["GET"],
                             summary="Model metadata: platform, versions, input and output tensors")
        router.add_api_route(f"{base}/ready", model_ready, methods=["GET"],
                             summary="Model readiness (200 ready, 404 unknown, 503 loading)")
        router.add_api_route(f"{base}/config", model_config, methods=["GET"],
                             summary="Triton-style model configuration (for perf_analyzer)")
        router.add_api_route(
            f"{base}/infer", infer, methods=["POST"],
            summary="Inference: JSON tensors or the binary tensor extension",
            description="OIP request `{\"id\", \"inputs\": [{\"name\", \"datatype\", \"shape\", "
                        "\"data\"}], \"outputs\": [{\"name\"}], \"parameters\"}`; binary tensors "
                        "follow the JSON header (`Inference-Header-Content-Length`, "
                        "`parameters.binary_data_size`). char-rnn takes `max_new_chars`, "
                        "`temperature`, `top_k`, `seed` as request parameters.")
    return router
