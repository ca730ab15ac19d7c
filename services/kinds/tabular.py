"""The tabular classifier kind (diabetes): rows of named numeric features → the probability of
the positive class and its label.

``/v1``: ``{"rows": [{feature: number} | [numbers]]}``. ``/v2``: ``features`` FP32 [-1,F] →
``probability`` FP32 [-1,1], ``label`` BYTES [-1].
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from starlette.responses import Response

from models.labels import labels_of
from services import codecs
from services.errors import InvalidInput
from services.kinds.base import Call, Kind, Port, check_items, labels_bytes, npy_response
from services.kinds.registry import register

if TYPE_CHECKING:
    from services.dataplane import DataPlane
    from services.repository import LoadedVersion

EXAMPLE_ROWS = {"rows": [{"pregnancies": 6, "glucose": 148, "blood_pressure": 72, "skin_thickness": 35,
                          "insulin": 0, "bmi": 33.6, "diabetes_pedigree": 0.627, "age": 50},
                         [1, 85, 66, 29, 0, 26.6, 0.351, 31]]}


@register
class Tabular(Kind):
    name = "tabular"
    max_batch = 1024
    gpu_max_batch = 4096

    @property
    def features(self) -> tuple[str, ...]:
        return tuple(self.spec.preprocessing["features"])

    async def _probability(self, plane: DataPlane, loaded: LoadedVersion,
                           features: np.ndarray) -> np.ndarray:
        (probability,) = await plane.infer(loaded, {self.spec.inputs[0].name: features})
        return probability.reshape(-1, 1)

    async def v1_predict(self, call: Call) -> dict[str, Any] | Response:
        payload = await call.json_object("'rows'")
        if "rows" not in payload:
            raise InvalidInput("expected a JSON object with 'rows'", field="rows")
        probability = await self.rows_probability(call.plane, call.loaded, payload["rows"])
        if call.wants_npy:
            return npy_response(probability)
        return {"predictions": self.predictions(probability)}

    async def rows_probability(self, plane: DataPlane, loaded: LoadedVersion, rows: Any) -> np.ndarray:
        """Rows (JSON: named features or lists of numbers), checked → [N, 1] probabilities (also
        the typed ``predict_rows``)."""
        features = codecs.decode_rows(rows, plane.config.max_items_per_request, self.features)
        return await self._probability(plane, loaded, features)

    def predictions(self, probability: np.ndarray) -> list[dict[str, Any]]:
        """Per row: the probability of the positive class and the label."""
        labels = self.spec.labels
        return [{"probability": p, "label": labels[i]} for p, i in
                zip(probability[:, 0].tolist(), labels_of(probability).tolist(), strict=True)]

    def inputs(self) -> tuple[Port, ...]:
        return (Port(self.spec.inputs[0].name, "FP32", (-1, len(self.features))),)

    def outputs(self) -> tuple[Port, ...]:
        return (Port("probability", "FP32", (-1, 1)), Port("label", "BYTES", (-1,)))

    async def infer(self, plane: DataPlane, loaded: LoadedVersion, inputs: dict[str, np.ndarray],
                    parameters: dict[str, Any], wanted: set[str]) -> dict[str, np.ndarray]:
        (port,) = self.inputs()
        features = inputs[port.name]
        if features.ndim != 2 or features.shape[1] != port.shape[1]:
            raise InvalidInput(f"input {port.name!r}: shape {list(features.shape)} is not "
                               f"[N,{port.shape[1]}]", field=f"{port.name}.shape")
        check_items(features.shape[0], "rows", plane.config.max_items_per_request)
        if not np.isfinite(features).all():
            raise InvalidInput(f"input {port.name!r} contains NaN or infinity", field=port.name)
        probability = await self._probability(plane, loaded, features)
        out = {"probability": probability}
        if "label" in wanted:
            out["label"] = labels_bytes(self.spec.labels, labels_of(probability))
        return out

    @classmethod
    def request_bodies(cls, endpoint: str) -> dict[str, dict[str, Any]]:
        return {"application/json": {"schema": {"type": "object"},
                                     "examples": {"diabetes rows": {"value": EXAMPLE_ROWS}}}}
