"""The Open Inference Protocol (KServe v2) front door: ``/v2``, so ``tritonclient.http``, KServe and
MLServer clients work unchanged.

One data path, two front doors: a request here is decoded at the edge (``services.oip_codec``),
checked against the signature of the model's kind (``services.kinds``: each kind states its
input and output tensors and maps them onto the model), then goes through the same version
selection and ``DataPlane.infer`` (adaptive batcher, runtime, metrics) as the friendly ``/v1``
API, under the same size limits. The handlers take an ``Exchange`` (``services.routes`` wraps
each one once: errors → status, metrics, version headers). ``infer`` answers with its body
already encoded (``services.http.Encoded``), which the hot app sends without building a Starlette
``Response``: the OIP path is as lean as ``/v1``'s JSON answers (issue 15).
"""

from __future__ import annotations

import importlib.metadata
import os
from typing import Any

from starlette.responses import Response

from services import oip_codec
from services.errors import InvalidInput, ModelNotReady
from services.http import JSON, Encoded, Exchange, read_body
from services.kinds import Kind, Port
from services.oip_codec import HEADER_LENGTH
from services.runtimes import triton_config

PLATFORMS = {"onnx": ("onnxruntime_onnx", "onnxruntime"), "torchscript": ("pytorch_libtorch", "pytorch")}
EXTENSIONS = ["binary_tensor_data", "parameters", "model_configuration"]
# Request parameters tritonclient may send on its own; accepted and ignored.
RESERVED_PARAMETERS = {"sequence_id", "sequence_start", "sequence_end", "priority", "timeout",
                       "headers", "binary_data_output"}
_HEADER_LENGTH_KEY = HEADER_LENGTH.lower().encode("latin-1")  # as an ASGI header name


def check_inputs(kind: Kind, name: str, tensors: dict[str, oip_codec.Tensor]) -> dict[str, Any]:
    expected = kind.signature.inputs
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


def _check_parameters(kind: Kind, name: str, parameters: dict[str, Any]) -> None:
    unknown = [k for k in parameters if k not in kind.parameters and k not in RESERVED_PARAMETERS]
    if unknown:
        takes = ", ".join(kind.parameters) or "none"
        raise InvalidInput(f"unknown request parameter {unknown[0]!r} for model {name!r}; it takes: "
                           f"{takes}", field=f"parameters.{unknown[0]}")


def _wanted(kind: Kind, name: str, request: oip_codec.Request) -> dict[str, bool]:
    known = kind.signature.outputs
    if request.outputs is None:
        return dict.fromkeys(known, request.binary_default)
    for output in request.outputs:
        if output not in known:
            raise InvalidInput(f"unknown output {output!r} for model {name!r}; its outputs: "
                               f"{', '.join(sorted(known))}", field="outputs")
    return request.outputs


async def infer(ex: Exchange, name: str, version: str | None = None) -> Encoded:
    loaded = ex.select(name, version)
    plane, request = ex.plane, ex.request
    limit = plane.config.max_request_bytes
    body = oip_codec.decompress(await read_body(request, limit),
                                request.headers.get("content-encoding"), limit)
    decoded = oip_codec.decode_request(body, request.headers.get(HEADER_LENGTH))
    kind = loaded.kind
    inputs = check_inputs(kind, name, decoded.inputs)
    _check_parameters(kind, name, decoded.parameters)
    wanted = _wanted(kind, name, decoded)
    results = await kind.infer(plane, loaded, inputs, decoded.parameters, set(wanted))
    header: dict[str, Any] = {"model_name": name, "model_version": loaded.version}
    if decoded.id is not None:
        header["id"] = decoded.id
    content, length = oip_codec.encode_response(
        header, [(out, results[out], binary) for out, binary in wanted.items()])
    if length is None:
        return Encoded(content, b"application/json")
    return Encoded(content, b"application/octet-stream", ((_HEADER_LENGTH_KEY, b"%d" % length),))


async def model_metadata(ex: Exchange, name: str, version: str | None = None) -> dict[str, Any]:
    loaded = ex.get(name, version)
    repo = ex.plane.repo()
    stable = repo.stable[name]
    return {"name": name, "versions": [stable, *(v for v in repo.model(name) if v != stable)],
            "platform": PLATFORMS[loaded.runtime.kind][0],
            "inputs": [p.metadata() for p in loaded.kind.inputs()],
            "outputs": [p.metadata() for p in loaded.kind.outputs()]}


def _config_tensor(port: Port, batched: bool) -> dict[str, Any]:
    datatype = "STRING" if port.datatype == "BYTES" else port.datatype
    return {"name": port.name, "data_type": f"TYPE_{datatype}",
            "dims": list(port.shape[1:] if batched else port.shape)}


async def model_config(ex: Exchange, name: str, version: str | None = None) -> dict[str, Any]:
    """A Triton-style model configuration (what ``perf_analyzer`` reads to size its requests)."""
    loaded = ex.get(name, version)
    kind, cfg = loaded.kind, ex.plane.config
    platform, backend = PLATFORMS[loaded.runtime.kind]
    config: dict[str, Any] = {
        "name": name, "platform": platform, "backend": backend,
        "max_batch_size": loaded.batcher.max_batch_size if kind.batched else 0,
        "input": [_config_tensor(p, kind.batched) for p in kind.inputs()],
        "output": [_config_tensor(p, kind.batched) for p in kind.outputs()],
        **triton_config(loaded.runtime)}  # where it runs: the providers really in use
    if kind.batched and cfg.batching:
        config["dynamic_batching"] = {"max_queue_delay_microseconds": int(cfg.batch_wait_ms * 1000)}
    return config


async def model_ready(ex: Exchange, name: str, version: str | None = None) -> dict[str, Any]:
    loaded = ex.get(name, version)
    return {"name": name, "version": loaded.version, "ready": True}


def server_version() -> str:
    try:
        return importlib.metadata.version("podium")
    except importlib.metadata.PackageNotFoundError:  # a bento carries the source, not the dist
        return os.environ.get("PODIUM_SERVER_VERSION", "unknown")


async def server_metadata(ex: Exchange) -> dict[str, Any]:
    return {"name": "podium", "version": server_version(), "extensions": EXTENSIONS}


async def live(ex: Exchange) -> dict[str, Any]:
    return {"live": True}


async def ready(ex: Exchange) -> Response:
    if ex.plane.ready:
        return JSON({"ready": True})
    return JSON({**ModelNotReady("the server is still loading its models").body(), "ready": False},
                status_code=503)
