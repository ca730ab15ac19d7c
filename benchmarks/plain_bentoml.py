"""A plain BentoML 1.4 service for comparison: ``@bentoml.api(batchable=True)`` with ONNX Runtime on
mnist-cnn, BentoML's own adaptive batcher and request path. It is configured as fairly as Podium's
service (``services/service.py``): access log off, its inference route excluded from tracing, and
the same number of workers (``BENCH_WORKERS``, which ``bench_serve`` sets to Podium's). It takes
the same JSON body as Podium's friendly endpoint, ``{"instances": [[784 floats]]}``, so the two are
measured on identical requests.

    BENCH_ONNX=/path/to/model.onnx bentoml serve benchmarks.plain_bentoml:PlainOnnx --port 3100
"""

from __future__ import annotations

import os

import bentoml
import numpy as np


@bentoml.service(name="plain-onnx", workers=int(os.environ.get("BENCH_WORKERS", "1")),
                 logging={"access": {"enabled": False}}, tracing={"excluded_urls": ["/predict"]})
class PlainOnnx:
    def __init__(self) -> None:
        import onnxruntime as ort

        path = os.environ.get("BENCH_ONNX") or os.path.join(
            bentoml.models.get("mnist-cnn:latest").path, "model.onnx")
        self.session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        self.session.run(None, {"image": np.zeros((256, 1, 28, 28), np.float32)})

    @bentoml.api(batchable=True, batch_dim=0, max_batch_size=256, max_latency_ms=1000)
    def predict(self, instances: np.ndarray) -> np.ndarray:
        images = np.asarray(instances, np.float32).reshape(-1, 1, 28, 28)
        (logits,) = self.session.run(None, {"image": images})
        return logits
