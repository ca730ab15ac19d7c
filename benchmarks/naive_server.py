"""The naive baseline (issue 15): the 20-line server every serving stack must beat.

FastAPI + ONNX Runtime, one forward per request (no batching), the same JSON body as Podium's
friendly endpoint (``{"instances": [[784 floats]]}``), answering the digit of each image. Run by
uvicorn with its access log off; each worker's session gets ``NAIVE_THREADS`` intra-op threads
(``bench_serve`` passes Podium's runtime threads; default all cores but one, Podium's rule).

    NAIVE_ONNX=/path/to/model.onnx .venv/bin/uvicorn benchmarks.naive_server:app --workers 2 \\
        --no-access-log --port 3200
"""

from __future__ import annotations

import os

import numpy as np
import onnxruntime as ort
import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response

options = ort.SessionOptions()
options.intra_op_num_threads = int(os.environ.get("NAIVE_THREADS", max(1, (os.cpu_count() or 1) - 1)))
options.inter_op_num_threads = 1
session = ort.InferenceSession(os.environ["NAIVE_ONNX"], options, providers=["CPUExecutionProvider"])
app = FastAPI()


@app.post("/predict")
async def predict(request: Request) -> Response:
    images = np.asarray(orjson.loads(await request.body())["instances"], np.float32)
    (logits,) = session.run(None, {"image": images.reshape(-1, 1, 28, 28)})
    return Response(orjson.dumps({"predictions": logits.argmax(1).tolist()}),
                    media_type="application/json")
