"""The whole HTTP API in-process (issue 14): ``create_app(plane)`` and ``hot_app(plane)`` over a
data plane holding tiny real ONNX models (``tests/kinds_support.py``) — every kind through
``/v1`` and ``/v2``, the one wrapper (errors → status, metrics, version headers) and the OpenAPI
schema built from the route table. No server: seconds for the whole file."""

from __future__ import annotations

import asyncio
import io
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import orjson
import pytest
from onnx import numpy_helper
from PIL import Image
from starlette.testclient import TestClient

from services import codecs
from services.dataplane import DataPlane
from services.edge import Edge
from services.http import MODEL_HEADER, VERSION_HEADER
from services.routes import TABLE, create_app, hot_app
from tests.kinds_support import plane_of

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


class Recorder:
    """Stands in for the Prometheus metrics: what the wrapper and the batcher record."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, str, int]] = []
        self.batches: list[tuple[str, int, int]] = []

    def observe_request(self, model: str, version: str, endpoint: str, status: int, seconds: float) -> None:
        self.requests.append((model, version, endpoint, status))

    def observe_batch(self, model: str, version: str, requests: int, items: int, compute_s: float,
                      waits: list[float]) -> None:
        self.batches.append((model, requests, items))


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DataPlane]:
    with plane_of(tmp_path_factory.mktemp("kinds"), Recorder()) as plane:
        yield plane


@pytest.fixture(scope="module")
def client(plane: DataPlane) -> Iterator[TestClient]:
    with TestClient(create_app(plane)) as c:
        yield c


def weights(plane: DataPlane, name: str) -> np.ndarray:
    model = onnx.load(plane.repo().get(name).stored.file("model.onnx"))
    return numpy_helper.to_array(model.graph.initializer[0])


def npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


# ----------------------------------------------------------------------------- lecture kinds

def test_tabular_rows_answer_the_models_probability_and_the_label_rule(client: TestClient,
                                                                      plane: DataPlane) -> None:
    rows = [[6, 148, 72, 35, 0, 33.6, 0.627, 50], [1, 85, 66, 29, 0, 26.6, 0.351, 31]]
    r = client.post("/v1/models/diabetes/predict", json={"rows": rows})
    assert r.status_code == 200, r.text
    assert (r.headers[MODEL_HEADER], r.headers[VERSION_HEADER]) == ("diabetes", "v1")
    expected = 1 / (1 + np.exp(-(np.asarray(rows, np.float32) @ weights(plane, "diabetes"))[:, 0]))
    got = r.json()["predictions"]
    assert np.allclose([p["probability"] for p in got], expected, atol=1e-6)
    assert [p["label"] for p in got] == [("negative", "positive")[int(p >= 0.5)] for p in expected]


def test_mnist_json_npy_and_oip_give_the_same_scores(client: TestClient, plane: DataPlane) -> None:
    images = np.random.default_rng(1).integers(0, 256, (3, 28, 28), dtype=np.uint8)
    logits = (images.reshape(3, -1).astype(np.float32) / 255) @ weights(plane, "mnist-fc")
    top = logits.argmax(1).tolist()
    by_json = client.post("/v1/models/mnist-fc/predict", json={"instances": images.tolist()}).json()
    by_npy = client.post("/v1/models/mnist-fc/predict", content=npy(images),
                         headers={"Content-Type": "application/x-npy"}).json()
    assert [p["digit"] for p in by_json["predictions"]] == top
    assert by_json["predictions"] == by_npy["predictions"]
    oip = client.post("/v2/models/mnist-fc/infer", json={"inputs": [
        {"name": "image", "datatype": "UINT8", "shape": [3, 784], "data": images.ravel().tolist()}]}).json()
    out = {o["name"]: o for o in oip["outputs"]}
    assert np.allclose(np.reshape(out["logits"]["data"], (3, 10)), logits, atol=1e-4)
    assert out["label"]["data"] == [str(d) for d in top]


def test_text_generation_is_reproducible_and_text_only(client: TestClient) -> None:
    body = {"prompt": "abc", "max_new_chars": 12, "seed": 3, "temperature": 0.5}
    first, second = (client.post("/v1/models/char-rnn/generate", json=body).json() for _ in range(2))
    assert first["text"] == second["text"] and len(first["text"]) == 12
    nxt = client.post("/v1/models/char-rnn/next", json={"prompt": "ab", "top_k": 2}).json()
    assert len(nxt["next"]) == 2 and nxt["unknown_chars"] == []
    wrong = client.post("/v1/models/char-rnn/predict", json={"rows": []})
    assert wrong.status_code == 400 and "/v1/models/char-rnn/generate" in wrong.json()["error"]
    wrong = client.post("/v1/models/diabetes/generate", json={"prompt": "x"})
    assert wrong.status_code == 400 and "/v1/models/diabetes/predict" in wrong.json()["error"]


# ---------------------------------------------------------------------------- imported kinds

def test_imported_image_model_takes_photos_resized_and_normalized(client: TestClient,
                                                                 plane: DataPlane) -> None:
    """An RGB photo of any size becomes the model's [3,8,8] input, (x - mean) / std."""
    photo = Image.fromarray(np.random.default_rng(2).integers(0, 256, (30, 50, 3), dtype=np.uint8))
    pixels = codecs.photo_tensor(photo, (3, 8, 8))
    scores = (((pixels - 0.5) / 0.25).reshape(1, -1)) @ weights(plane, "photo")
    labels = ["cat", "dog", "fish", "bird"]
    for kwargs in ({"content": png(photo), "headers": {"Content-Type": "image/png"}},
                   {"files": [("images", ("p.png", png(photo), "image/png"))]},
                   {"json": {"instances": [np.rint(pixels * 255).astype(int).tolist()]}}):
        r = client.post("/v1/models/photo/predict", **kwargs)
        assert r.status_code == 200, r.text
        (prediction,) = r.json()["predictions"]
        assert prediction["label"] == labels[int(scores.argmax())]
        assert prediction["class"] == int(scores.argmax())
    wrong = client.post("/v1/models/photo/predict", json={"instances": [[[0.0] * 8] * 8]})
    assert wrong.status_code == 400 and "3×8×8" in wrong.json()["error"]


def test_tensor_kind_v1_named_tensors_of_their_own_dtypes(client: TestClient) -> None:
    r = client.post("/v1/models/two-io/predict", json={"inputs": {"x": [[1, 2, 3], [4, 5, 6]], "k": [7, 8]}})
    assert r.status_code == 200, r.text
    assert r.json()["outputs"] == {"y": [[2.0, 4.0, 6.0], [8.0, 10.0, 12.0]], "m": [8, 9]}


@pytest.mark.parametrize(("body", "message"), [
    ({"inputs": {"x": [[1, 2, 3]]}}, "missing input 'k'"),
    ({"inputs": {"x": [[1, 2, 3]], "k": [1], "z": [1]}}, "unknown input 'z'"),
    ({"inputs": {"x": [[1, 2]], "k": [1]}}, "does not match [-1, 3]"),
    ({"inputs": {"x": [[1, 2, 3]], "k": [1, 2]}}, "batch of 2 items, but 1"),
    ({"inputs": {"x": [[1, 2, 3]], "k": [1.5]}}, "INT64 data must be integers"),
    ({"inputs": {"x": [[1, 2, 3]], "k": [2**70]}}, "INT64 data must be integers"),
    ({"inputs": {"x": [[1, "a", 3]], "k": [1]}}, "FP32 data must be numbers"),
    ({"instances": [[1, 2, 3]]}, "expected 'inputs'"),
    ({"inputs": {"x": [], "k": []}}, "does not match"),
])
def test_tensor_kind_bad_input_is_a_named_400(client: TestClient, body: dict[str, Any], message: str) -> None:
    r = client.post("/v1/models/two-io/predict", json=body)
    assert r.status_code == 400, r.text
    assert message in r.json()["error"]


def test_tensor_kind_oip_json_and_binary(client: TestClient) -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    k = np.array([10, 20], np.int64)
    header = orjson.dumps({"inputs": [
        {"name": "x", "datatype": "FP32", "shape": [2, 3], "parameters": {"binary_data_size": x.nbytes}},
        {"name": "k", "datatype": "INT64", "shape": [2], "parameters": {"binary_data_size": k.nbytes}}],
        "outputs": [{"name": "m", "parameters": {"binary_data": True}}]})
    r = client.post("/v2/models/two-io/infer", content=header + x.tobytes() + k.tobytes(),
                    headers={"Inference-Header-Content-Length": str(len(header)),
                             "Content-Type": "application/octet-stream"})
    assert r.status_code == 200, r.text
    length = int(r.headers["Inference-Header-Content-Length"])
    (out,) = orjson.loads(r.content[:length])["outputs"]
    assert out["name"] == "m" and out["datatype"] == "INT64"
    assert np.frombuffer(r.content[length:], np.int64).tolist() == [11, 21]
    bad = client.post("/v2/models/two-io/infer", json={"inputs": [
        {"name": "x", "datatype": "FP64", "shape": [1, 3], "data": [1, 2, 3]},
        {"name": "k", "datatype": "INT64", "shape": [1], "data": [1]}]})
    assert bad.status_code == 400 and "takes FP32" in bad.json()["error"]
    config = client.get("/v2/models/two-io/config").json()
    assert [i["data_type"] for i in config["input"]] == ["TYPE_FP32", "TYPE_INT64"]


def test_accept_npy_answers_the_output_tensor(client: TestClient) -> None:
    """``Accept: application/x-npy`` on /v1 predict: the kind's output tensor as .npy (issue 15)."""
    accept = {"Accept": "application/x-npy"}
    rows = {"rows": [[1] * 8, [2] * 8]}
    as_json = client.post("/v1/models/diabetes/predict", json=rows).json()["predictions"]
    r = client.post("/v1/models/diabetes/predict", json=rows, headers=accept)
    assert r.headers["content-type"] == "application/x-npy" and r.headers[MODEL_HEADER] == "diabetes"
    probability = np.load(io.BytesIO(r.content), allow_pickle=False)
    assert probability.shape == (2, 1) and np.allclose(probability[:, 0], [p["probability"] for p in as_json])
    images = {"instances": np.zeros((3, 784)).tolist(), "top_k": 10}
    top = client.post("/v1/models/mnist-fc/predict", json=images).json()["predictions"][0]["top_k"]
    answer = client.post("/v1/models/mnist-fc/predict", json=images, headers=accept)
    probs = np.load(io.BytesIO(answer.content))
    assert probs.shape == (3, 10) and np.isclose(probs[0].max(), top[0]["probability"])
    body = {"inputs": {"x": [[1, 2, 3]], "k": [4]}}
    m = client.post("/v1/models/two-io/predict?output=m", json=body, headers=accept)
    assert np.load(io.BytesIO(m.content)).tolist() == [5]
    unnamed = client.post("/v1/models/two-io/predict", json=body, headers=accept)
    assert unnamed.status_code == 400 and "?output=" in unnamed.json()["error"]


def test_tensor_kind_npy_needs_one_input(client: TestClient) -> None:
    r = client.post("/v1/models/two-io/predict", content=npy(np.zeros((1, 3), np.float32)),
                    headers={"Content-Type": "application/x-npy"})
    assert r.status_code == 400 and "has 2 inputs" in r.json()["error"]


def test_concurrent_tensor_requests_are_batched_together(plane: DataPlane) -> None:
    """Requests in flight together run as one batch over the declared batch axes, each getting
    its own rows back. Through the edge, as in a worker: it counts the requests in flight, so
    none runs alone (inline)."""
    async def run() -> list[dict[str, Any]]:
        transport = httpx.ASGITransport(app=Edge(None, hot=hot_app(plane), plane=plane))
        async with httpx.AsyncClient(transport=transport, base_url="http://podium") as c:
            return [r.json() for r in await asyncio.gather(*(
                c.post("/v1/models/two-io/predict", json={"inputs": {"x": [[i, i, i]], "k": [i]}})
                for i in range(16)))]

    before = len(plane.metrics.batches)
    answers = asyncio.run(run())
    assert [a["outputs"]["m"] for a in answers] == [[i + 1] for i in range(16)]
    batches = [b for b in plane.metrics.batches[before:] if b[0] == "two-io"]
    assert sum(items for _, _, items in batches) == 16
    assert max(requests for _, requests, _ in batches) > 1, batches


# --------------------------------------------------------------------------- the one wrapper

def test_errors_status_metrics_and_headers_come_from_one_wrapper(client: TestClient,
                                                                 plane: DataPlane) -> None:
    recorder: Recorder = plane.metrics
    before = len(recorder.requests)
    unknown = client.post("/v1/models/nope/predict", json={})
    assert unknown.status_code == 404 and "nope" in unknown.json()["error"]
    assert MODEL_HEADER not in unknown.headers
    media = client.post("/v1/models/diabetes/predict", content=b"x", headers={"Content-Type": "text/plain"})
    assert media.status_code == 415 and media.headers[MODEL_HEADER] == "diabetes"
    ok = client.post("/v2/models/diabetes/infer", json={"inputs": [
        {"name": "features", "datatype": "FP32", "shape": [1, 8], "data": [1] * 8}]})
    assert ok.status_code == 200 and ok.headers[VERSION_HEADER] == "v1"
    assert recorder.requests[before:] == [("unknown", "unknown", "predict", 404),
                                          ("diabetes", "v1", "predict", 415),
                                          ("diabetes", "v1", "infer", 200)]
    info = client.get("/v1/models/two-io").json()
    assert info["kind"] == "tensor" and [t["name"] for t in info["signature"]["inputs"]] == ["x", "k"]
    assert len(recorder.requests) == before + 3  # metadata routes are not request metrics


def test_hot_app_serves_only_the_inference_routes(plane: DataPlane) -> None:
    with TestClient(hot_app(plane)) as hot:
        r = hot.post("/v1/models/diabetes/predict", json={"rows": [[1] * 8]})
        assert r.status_code == 200
        assert hot.get("/v1/models").status_code == 404
    assert {r.path.rsplit("/", 1)[-1] for r in TABLE if r.hot} == {"predict", "generate", "next", "infer"}


def test_admin_401_carries_www_authenticate(tmp_path: Path) -> None:
    with plane_of(tmp_path, admin_token="secret") as plane, TestClient(create_app(plane)) as c:
        r = c.get("/admin/rollout")
        assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer"
        assert c.get("/admin/rollout", headers={"Authorization": "Bearer nope"}).status_code == 403


# ------------------------------------------------------------------------------------ OpenAPI

def test_openapi_names_models_per_route_and_each_kinds_bodies(plane: DataPlane) -> None:
    served = {"diabetes": "tabular", "mnist-fc": "image", "char-rnn": "text", "photo": "image",
              "two-io": "tensor"}
    paths = create_app(plane, served).openapi()["paths"]

    def enum(path: str, method: str) -> list[str]:
        (param,) = [p for p in paths[path][method]["parameters"] if p["name"] == "name"]
        return param["schema"]["enum"]

    assert set(enum("/v1/models/{name}/predict", "post")) == {"diabetes", "mnist-fc", "photo", "two-io"}
    assert enum("/v1/models/{name}/generate", "post") == ["char-rnn"]
    assert set(enum("/v2/models/{name}/versions/{version}/infer", "post")) == set(served)
    content = paths["/v1/models/{name}/predict"]["post"]["requestBody"]["content"]
    assert {"application/json", "application/x-npy", "image/png", "multipart/form-data"} <= set(content)
    images = content["multipart/form-data"]["schema"]["properties"]["images"]
    assert images["items"] == {"type": "string", "format": "binary"}
    generate = paths["/v1/models/{name}/generate"]["post"]["requestBody"]["content"]["application/json"]
    assert generate["example"]["prompt"]
    def answers(path: str) -> dict[str, Any]:
        return paths[path]["post"]["responses"]["200"]["content"]

    assert "application/x-npy" in answers("/v1/models/{name}/predict")
    assert "application/x-npy" not in answers("/v1/models/{name}/generate")


def test_binary_oip_header_length_is_checked(client: TestClient) -> None:
    r = client.post("/v2/models/two-io/infer", content=struct.pack("<I", 1),
                    headers={"Inference-Header-Content-Length": "99"})
    assert r.status_code == 400 and r.headers[MODEL_HEADER] == "two-io"
