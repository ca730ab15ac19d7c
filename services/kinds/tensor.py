"""The generic tensor kind: any model's own named inputs and outputs, of any dtype, served as
they are (an imported model that is no image classifier, contract A).

``/v1`` predict: ``{"inputs": {name: nested list}}`` (``{"instances": nested list}`` when the
model has one input) or an ``.npy`` body (one input) → ``{"outputs": {name: nested list}}``.
``/v2``: the model's signature, each tensor under its own name and datatype. Every tensor is
checked against its declared shape (-1: any size) and the batch (the declared batch axis of
each tensor) must agree between inputs; requests are batched together over those axes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from starlette.responses import Response

from services import codecs, oip_codec
from services.errors import InvalidInput
from services.http import media_type
from services.kinds.base import (
    BINARY,
    NPY_TYPES,
    Call,
    Kind,
    Port,
    check_items,
    npy_response,
    unsupported,
)
from services.kinds.registry import register

if TYPE_CHECKING:
    from services.dataplane import DataPlane
    from services.repository import LoadedVersion

_OIP = {np.dtype(dtype): name for name, dtype in oip_codec.DTYPES.items() if name != "BYTES"}


def _datatype(dtype: str) -> str:
    return _OIP[np.dtype(dtype).newbyteorder("<")]


@register
class Tensor(Kind):
    name = "tensor"

    def __init__(self, spec: Any) -> None:
        super().__init__(spec)
        self.axes, _ = self.batch_axes()

    def inputs(self) -> tuple[Port, ...]:
        return tuple(Port(t.name, _datatype(t.dtype), t.shape) for t in self.spec.inputs)

    def outputs(self) -> tuple[Port, ...]:
        return tuple(Port(t.name, _datatype(t.dtype), t.shape) for t in self.spec.outputs)

    def _checked(self, arrays: dict[str, np.ndarray], limit: int) -> dict[str, np.ndarray]:
        """``arrays`` against the signature: every input present, its rank and fixed dimensions
        as declared, one batch size on every batch axis, within the item limit."""
        ports = {p.name: p for p in self.inputs()}
        unknown = [n for n in arrays if n not in ports]
        if unknown:
            raise InvalidInput(f"unknown input {unknown[0]!r} for model {self.spec.name!r}; its "
                               f"inputs: {', '.join(ports)}", field=unknown[0])
        missing = [n for n in ports if n not in arrays]
        if missing:
            raise InvalidInput(f"missing input {missing[0]!r} for model {self.spec.name!r}",
                               field=missing[0])
        batch = None
        for name, port in ports.items():
            array = arrays[name]
            if array.ndim != len(port.shape) or any(d not in (-1, n) for d, n in zip(port.shape, array.shape,
                                                                                    strict=True)):
                raise InvalidInput(f"input {name!r}: shape {list(array.shape)} does not match "
                                   f"{list(port.shape)} (-1: any size)", field=f"{name}.shape")
            n = array.shape[self.axes[name]]
            if batch is not None and n != batch:
                raise InvalidInput(f"input {name!r}: batch of {n} items, but {batch} in the other "
                                   f"inputs", field=f"{name}.shape")
            batch = n
        check_items(batch or 0, "items", limit)
        return arrays

    async def _run(self, plane: DataPlane, loaded: LoadedVersion,
                   arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feeds = self._checked(arrays, plane.config.max_items_per_request)
        outputs = await plane.infer(loaded, feeds)
        return {t.name: out for t, out in zip(self.spec.outputs, outputs, strict=True)}

    # -- /v1 ------------------------------------------------------------------------------------
    async def _decode(self, call: Call) -> dict[str, np.ndarray]:
        ports = self.inputs()
        body = await call.body()
        media = media_type(call.request)
        if media in NPY_TYPES:
            if len(ports) != 1:
                raise InvalidInput(f"model {self.spec.name!r} has {len(ports)} inputs: send JSON "
                                   f"{{\"inputs\": {{name: tensor}}}}", field="body")
            array = codecs.read_npy(body, call.plane.config.max_items_per_request)
            if array.dtype.newbyteorder("<") != oip_codec.DTYPES[ports[0].datatype]:
                raise InvalidInput(f"input {ports[0].name!r}: .npy of dtype {array.dtype}; the model "
                                   f"takes {np.dtype(oip_codec.DTYPES[ports[0].datatype]).name}",
                                   field="body")
            return {ports[0].name: array}
        if media != "application/json":
            raise unsupported(call.request, "application/json or application/x-npy")
        payload = await call.json_object("'inputs'")
        values = payload.get("inputs")
        if values is None and "instances" in payload and len(ports) == 1:
            values = {ports[0].name: payload["instances"]}
        if not isinstance(values, dict):
            raise InvalidInput("expected 'inputs': an object of input name → tensor (nested lists)"
                               + (" or 'instances': a tensor" if len(ports) == 1 else ""),
                               field="inputs")
        datatypes = {p.name: p.datatype for p in ports}
        return {name: oip_codec.json_array(name, datatypes.get(name, "FP32"), value)
                for name, value in values.items()}

    async def v1_predict(self, call: Call) -> dict[str, Any] | Response:
        outputs = await self._run(call.plane, call.loaded, await self._decode(call))
        if call.wants_npy:
            return npy_response(outputs[self._npy_output(call)])
        return {"outputs": {name: array.tolist() for name, array in outputs.items()}}

    def _npy_output(self, call: Call) -> str:
        """The output an ``.npy`` answer holds: the only one, or ``?output=NAME``."""
        names = [t.name for t in self.spec.outputs]
        name = call.request.query_params.get("output", names[0] if len(names) == 1 else None)
        if name not in names:
            raise InvalidInput(f"an .npy answer holds one output: name it with ?output= (one of "
                               f"{', '.join(names)})", field="output")
        return name

    # -- /v2 ------------------------------------------------------------------------------------
    async def infer(self, plane: DataPlane, loaded: LoadedVersion, inputs: dict[str, np.ndarray],
                    parameters: dict[str, Any], wanted: set[str]) -> dict[str, np.ndarray]:
        return await self._run(plane, loaded, inputs)

    # -- OpenAPI --------------------------------------------------------------------------------
    @classmethod
    def request_bodies(cls, endpoint: str) -> dict[str, dict[str, Any]]:
        return {"application/json": {"schema": {"type": "object", "properties": {
                    "inputs": {"type": "object", "description": "input name → tensor (nested lists)"},
                    "instances": {"type": "array", "description": "the tensor of a one-input model"}}},
                    "examples": {"named tensors": {"value": {"inputs": {"x": [[1.0, 2.0]]}}}}},
                "application/x-npy": BINARY}
