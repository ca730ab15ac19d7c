"""Podium from BentoML's own clients (issue 14): the typed ``@bentoml.api`` methods, called with
the real ``bentoml.SyncHTTPClient`` / ``AsyncHTTPClient`` against a real ``bentoml serve``, answer
what the ``/v1`` and ``/v2`` routes answer for the same input (one data plane), refuse bad input
with Podium's 4xx message in the client's exception, obey the body limit, count in the metrics,
and compose with ``bentoml.depends`` from a second service."""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import bentoml
import httpx
import numpy as np
import pytest
from bentoml.exceptions import InvalidArgument, NotFound
from PIL import Image, ImageDraw
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.testclient import TestClient

from services import bento_api
from services.bento_api import BodyLimit, behind_the_mounts
from services.http import MODEL_HEADER, VERSION_HEADER
from services.launch import BENTOML, Server, free_port, stop
from services.routes import create_app
from tests.kinds_support import plane_of

API = {"classify_images", "classify_tensor", "predict_rows", "generate_text", "next_chars",
       "infer_tensors"}
ROW = [1, 85, 66, 29, 0, 26.6, 0.351, 31]
NAMED_ROW = {"pregnancies": 6, "glucose": 148, "blood_pressure": 72, "skin_thickness": 35,
             "insulin": 0, "bmi": 33.6, "diabetes_pedigree": 0.627, "age": 50}


@pytest.fixture(scope="module")
def client(server: Server) -> bentoml.SyncHTTPClient:
    with bentoml.SyncHTTPClient(server.url, timeout=60) as c:
        yield c


def digit_photo(tmp_path: Path) -> Path:
    """A photographed-looking "7": dark ink on grey paper, off-centre, larger than MNIST."""
    image = Image.new("L", (240, 180), 200)
    ImageDraw.Draw(image).line([(90, 40), (160, 40), (110, 150)], fill=30, width=12)
    path = tmp_path / "seven.png"
    image.save(path)
    return path


def test_the_client_lists_every_typed_api(client: bentoml.SyncHTTPClient, server: Server) -> None:
    assert set(client.endpoints) >= API
    schema = httpx.get(f"{server.url}/schema.json").json()
    assert {route["name"] for route in schema["routes"]} >= API
    assert schema["description"].startswith("Podium: ")  # BentoML's is the class docstring
    # The fast routes are still there, still mounted, unchanged.
    assert schema["paths"]["/v1/models/{name}/predict"] == {"mounted": True}


def test_typed_routes_go_behind_the_mounts_each_with_a_body_limit() -> None:
    async def endpoint(request: object) -> Response:
        return Response()

    app = Starlette(routes=[Route("/livez", endpoint),  # BentoML names each route after its API
                            Route("/predict_rows", endpoint, methods=["POST"], name="predict_rows"),
                            Mount("/", app=Starlette())])
    behind_the_mounts(app, ["predict_rows"], 1024)
    assert [route.path for route in app.router.routes] == ["/livez", "", "/predict_rows"]
    assert isinstance(app.router.routes[-1].app, BodyLimit)
    assert not isinstance(app.router.routes[0].app, BodyLimit)


def test_images_as_pil_photos_and_paths_answer_as_v1_multipart(
        client: bentoml.SyncHTTPClient, server: Server, tmp_path: Path) -> None:
    path = digit_photo(tmp_path)
    v1 = httpx.post(f"{server.url}/v1/models/mnist-cnn/predict", params={"top_k": 4},
                    files=[("images", ("seven.png", path.read_bytes(), "image/png"))]).json()
    # BentoML's client uploads a PIL image's own file: one opened from a file or a buffer.
    photo = Image.open(io.BytesIO(path.read_bytes()))
    from_pil = client.classify_images(images=[photo], model="mnist-cnn", top_k=4)
    from_path = client.classify_images(images=[path, path], model="mnist-cnn", top_k=4)
    assert from_pil == v1["predictions"]
    assert from_path == v1["predictions"] * 2
    assert len(from_pil[0]["top_k"]) == 4


def test_a_numpy_batch_answers_as_v1_json(client: bentoml.SyncHTTPClient, server: Server) -> None:
    batch = np.random.default_rng(0).integers(0, 256, (3, 28, 28), dtype=np.uint8)
    v1 = httpx.post(f"{server.url}/v1/models/mnist-fc/predict",
                    json={"instances": batch.tolist(), "top_k": 2}).json()
    assert client.classify_tensor(pixels=batch, model="mnist-fc", top_k=2) == v1["predictions"]
    # Float pixels in [0, 1] are the same images.
    assert client.classify_tensor(pixels=batch / 255, model="mnist-fc", top_k=2)[0]["digit"] == \
        v1["predictions"][0]["digit"]


def test_rows_answer_as_v1(client: bentoml.SyncHTTPClient, server: Server) -> None:
    v1 = httpx.post(f"{server.url}/v1/models/diabetes/predict", json={"rows": [NAMED_ROW, ROW]}).json()
    assert client.predict_rows(rows=[NAMED_ROW, ROW]) == v1["predictions"]


def test_generated_text_with_a_seed_is_v1s(client: bentoml.SyncHTTPClient, server: Server) -> None:
    settings = {"prompt": "And God said", "max_new_chars": 40, "temperature": 0.8, "top_k": 10,
                "seed": 7}
    v1 = httpx.post(f"{server.url}/v1/models/char-rnn/generate", json=settings).json()
    text = client.generate_text(**settings)
    assert text == v1["text"] and len(text) == 40
    assert client.generate_text(**{**settings, "seed": 8}) != text
    nxt = httpx.post(f"{server.url}/v1/models/char-rnn/next", json={"prompt": "In the", "top_k": 3})
    assert client.next_chars(prompt="In the", top_k=3) == nxt.json()["next"]


def test_generic_tensors_answer_as_v2(client: bentoml.SyncHTTPClient, server: Server) -> None:
    batch = np.random.default_rng(1).random((2, 1, 28, 28), dtype=np.float32)
    v2 = httpx.post(f"{server.url}/v2/models/mnist-cnn/infer", json={"inputs": [
        {"name": "image", "datatype": "FP32", "shape": [2, 1, 28, 28], "data": batch.ravel().tolist()}],
        "outputs": [{"name": "logits"}]}).json()
    out = client.infer_tensors(model="mnist-cnn", inputs=[{"name": "image", "data": batch}])
    by_name = {tensor["name"]: tensor for tensor in out}
    assert set(by_name) == {"logits", "probabilities"}  # the numeric outputs; labels are BYTES
    assert by_name["logits"]["datatype"] == "FP32"
    np.testing.assert_allclose(np.asarray(by_name["logits"]["data"]).ravel(), v2["outputs"][0]["data"],
                               rtol=1e-6)
    # JSON carries no dtype: integers 0–255 are UINT8 when the caller says so.
    pixels = (batch * 255).astype(np.uint8)
    out = client.infer_tensors(model="mnist-cnn", inputs=[{"name": "image", "data": pixels,
                                                           "datatype": "UINT8"}])
    assert np.asarray(out[0]["data"]).shape == (2, 10)
    rows = client.infer_tensors(model="diabetes", inputs=[{"name": "features", "data": np.array([ROW])}])
    assert rows[0]["name"] == "probability" and np.asarray(rows[0]["data"]).shape == (1, 1)


def test_the_async_client_runs_calls_concurrently(server: Server) -> None:
    batch = np.zeros((1, 784), np.uint8)

    async def main() -> list:
        async with bentoml.AsyncHTTPClient(server.url, timeout=60) as c:
            return await asyncio.gather(c.classify_tensor(pixels=batch, model="mnist-resnet"),
                                        c.generate_text(prompt="In the", max_new_chars=10, seed=1),
                                        c.predict_rows(rows=[ROW]))

    images, text, rows = asyncio.run(main())
    assert images[0]["label"] in [str(d) for d in range(10)]
    assert isinstance(text, str) and len(text) == 10
    assert rows[0]["label"] in ("negative", "positive")


@pytest.mark.parametrize(("call", "error", "message"), [
    (lambda c, tmp: c.classify_tensor(pixels=np.zeros((2, 27, 28))), InvalidArgument,
     "is not a batch of 1×28×28 images"),
    (lambda c, tmp: c.classify_tensor(pixels=np.full((1, 784), 300)), InvalidArgument,
     "integer pixels must be in 0–255"),
    (lambda c, tmp: c.classify_tensor(pixels=np.zeros((1, 784)), top_k=11), InvalidArgument,
     "top_k must be an integer from 1 to 10"),
    (lambda c, tmp: c.classify_images(images=[tmp]), InvalidArgument, "not an image Pillow can read"),
    (lambda c, tmp: c.predict_rows(rows=[[1, 2]]), InvalidArgument, "row 0 has 2 values; expected 8"),
    (lambda c, tmp: c.predict_rows(rows=[ROW], model="char-rnn"), InvalidArgument,
     "'char-rnn' is a text model; call generate_text"),
    (lambda c, tmp: c.generate_text(prompt="x", temperature=0), InvalidArgument,
     "temperature=0.0 is out of range"),
    (lambda c, tmp: c.generate_text(prompt=""), InvalidArgument, "prompt must be a non-empty string"),
    (lambda c, tmp: c.generate_text(prompt="x", model="nope"), NotFound, "'nope' is not served"),
    (lambda c, tmp: c.generate_text(prompt="x", max_new_chars=10**6), InvalidArgument,
     "max_new_chars=1000000 is out of range"),
    (lambda c, tmp: c.infer_tensors(model="mnist-cnn", inputs=[{"name": "pixels", "data": np.zeros(3)}]),
     InvalidArgument, "unknown input 'pixels'"),
])
def test_bad_input_raises_the_clients_error_with_podiums_message(
        client: bentoml.SyncHTTPClient, tmp_path: Path, call, error, message: str) -> None:
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_bytes(b"not an image at all")
    with pytest.raises(error) as caught:
        call(client, not_an_image)
    assert message in str(caught.value)
    assert caught.value.error_code < 500


def test_bodies_obey_max_request_bytes_and_answers_carry_the_version(server: Server) -> None:
    big = httpx.post(f"{server.url}/classify_tensor", content=b" " * (9 * 1024 * 1024),
                     headers={"content-type": "application/json"})
    assert big.status_code == 413
    assert "max_request_bytes" in big.json()["error"]

    def chunks():  # no Content-Length: refused as the body passes the limit
        for _ in range(9):
            yield b" " * (1024 * 1024)

    chunked = httpx.post(f"{server.url}/predict_rows", content=chunks(),
                         headers={"content-type": "application/json"})
    assert chunked.status_code == 413
    ok = httpx.post(f"{server.url}/predict_rows", json={"rows": [ROW]})
    assert ok.status_code == 200
    assert ok.headers["podium-model"] == "diabetes" and ok.headers["podium-model-version"]
    # Not JSON of the declared shape: BentoML's own 400, still {"error": ...}.
    wrong = httpx.post(f"{server.url}/predict_rows", json={"rows": "x"})
    assert wrong.status_code == 400 and "validation error" in wrong.json()["error"]


def test_a_url_in_place_of_an_image_is_refused_not_fetched(server: Server) -> None:
    # BentoML alone downloads a text value of a file field, from the server, whatever the address.
    answer = httpx.post(f"{server.url}/classify_images", data={"images": f"{server.url}/metrics"},
                        files={"unused": ("x", b"")})
    assert answer.status_code == 400
    assert "send each image as a file part" in answer.text


def test_calls_are_counted_in_podiums_metrics(client: bentoml.SyncHTTPClient, server: Server) -> None:
    def count() -> float:
        text = httpx.get(f"{server.url}/metrics").text
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("podium_requests_total{") and 'endpoint="predict_rows"' in line
                   and 'status="200"' in line)

    before = count()
    client.predict_rows(rows=[ROW, ROW])
    assert count() == before + 1


COMPOSED = '''
import os
import bentoml

@bentoml.service(http={"host": "127.0.0.1"})
class Gateway:
    podium = bentoml.depends(url=os.environ["PODIUM_URL"])

    @bentoml.api
    async def digit_and_text(self, pixels: list[list[int]], prompt: str) -> dict:
        import numpy as np
        found = await self.podium.to_async.classify_tensor(pixels=np.array([pixels], np.uint8))
        text = await self.podium.to_async.generate_text(prompt=prompt, max_new_chars=12, seed=3)
        return {"digit": found[0]["digit"], "text": text}
'''


def test_a_second_service_composes_podium_with_bentoml_depends(server: Server, tmp_path: Path) -> None:
    (tmp_path / "gateway.py").write_text(COMPOSED)
    port = free_port()
    env = {**os.environ, "PODIUM_URL": server.url, "BENTOML_DO_NOT_TRACK": "true",
           "BENTOML_HOME": str(tmp_path / "home")}
    with open(tmp_path / "gateway.log", "w") as log:
        proc = subprocess.Popen([BENTOML, "serve", "gateway:Gateway", "--port", str(port)],
                                cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while True:  # bounded: the gateway is ready, exited, or the test fails at the deadline
            assert proc.poll() is None, (tmp_path / "gateway.log").read_text()
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "gateway.log").read_text()
            time.sleep(0.3)
        pixels = np.zeros((28, 28), np.uint8)
        pixels[5:23, 13:16] = 255  # a "1"
        with bentoml.SyncHTTPClient(url, timeout=60) as gateway:
            answer = gateway.digit_and_text(pixels=pixels.tolist(), prompt="And God")
        direct = httpx.post(f"{server.url}/v1/models/char-rnn/generate",
                            json={"prompt": "And God", "max_new_chars": 12, "seed": 3}).json()
        assert answer["text"] == direct["text"]
        v1 = httpx.post(f"{server.url}/v1/models/mnist-cnn/predict",
                        json={"instances": [pixels.tolist()]}).json()
        assert answer["digit"] == v1["predictions"][0]["digit"]
    finally:
        stop(proc)



# -- in-process: the typed functions over a data plane of tiny real ONNX models -------------------
# (tests/kinds_support.py; no server): each answers what the kind's /v1 route answers, because it
# goes through the same kind object; errors, metrics and headers as the route wrapper's.

class Recorder:
    """Stands in for the Prometheus metrics: the requests recorded."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, str, int]] = []

    def observe_request(self, model: str, version: str, endpoint: str, status: int, seconds: float) -> None:
        self.requests.append((model, version, endpoint, status))

    def observe_batch(self, *args: object) -> None:
        pass


def context() -> SimpleNamespace:
    """What BentoML hands a typed method as ``ctx``: the request's headers, the response's status
    and headers."""
    return SimpleNamespace(request=SimpleNamespace(headers={}),
                           response=SimpleNamespace(status_code=200, metadata={}))


@pytest.fixture(scope="module")
def tiny_plane(tmp_path_factory: pytest.TempPathFactory):
    with plane_of(tmp_path_factory.mktemp("typed"), Recorder()) as plane, \
            TestClient(create_app(plane)) as http:
        yield plane, http


def test_each_typed_function_answers_as_the_kinds_v1_route(tiny_plane, tmp_path: Path) -> None:
    plane, http = tiny_plane
    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (30, 50, 3), dtype=np.uint8)).save(photo)
    v1 = http.post("/v1/models/photo/predict", params={"top_k": 2},
                   files=[("images", ("p.png", photo.read_bytes(), "image/png"))]).json()["predictions"]
    typed = asyncio.run(bento_api.classify_images(plane, context(), [photo], "photo", 2, None))
    assert typed == v1 and "class" in typed[0]  # an imported model's answer names no digit
    pixels = np.random.default_rng(4).random((2, 784)).astype(np.float32)
    v1 = http.post("/v1/models/mnist-fc/predict", json={"instances": pixels.tolist(), "top_k": 3}).json()
    typed = asyncio.run(bento_api.classify_tensor(plane, context(), pixels, "mnist-fc", 3, None))
    assert typed == v1["predictions"] and "digit" in typed[0]
    v1 = http.post("/v1/models/diabetes/predict", json={"rows": [ROW, NAMED_ROW]}).json()
    assert asyncio.run(bento_api.predict_rows(plane, context(), [ROW, NAMED_ROW], "diabetes", None)) \
        == v1["predictions"]
    settings = {"max_new_chars": 12, "temperature": 0.7, "top_k": None, "seed": 5}
    v1 = http.post("/v1/models/char-rnn/generate", json={"prompt": "ab c", **settings}).json()
    assert asyncio.run(bento_api.generate_text(plane, context(), "ab c", settings, "char-rnn", None)) \
        == v1["text"]
    v1 = http.post("/v1/models/char-rnn/next", json={"prompt": "ab", "top_k": 3}).json()
    assert asyncio.run(bento_api.next_chars(plane, context(), "ab", 3, "char-rnn", None)) == v1["next"]
    inputs = [bento_api.NamedTensor(name="x", data=np.ones((2, 3))),
              bento_api.NamedTensor(name="k", data=np.array([7, 8]))]
    v1 = http.post("/v1/models/two-io/predict", json={"inputs": {"x": [[1] * 3] * 2, "k": [7, 8]}}).json()
    typed = asyncio.run(bento_api.infer_tensors(plane, context(), "two-io", inputs, None))
    assert {t.name: (t.data.tolist(), t.datatype) for t in typed} == {
        "y": (v1["outputs"]["y"], "FP32"), "m": (v1["outputs"]["m"], "INT64")}


def test_typed_errors_metrics_and_headers_are_the_route_wrappers(tiny_plane) -> None:
    plane, _ = tiny_plane
    recorded = plane.metrics.requests
    ctx = context()
    refused = asyncio.run(bento_api.predict_rows(plane, ctx, [ROW], "two-io", None))
    assert refused.status_code == ctx.response.status_code == 400
    assert json.loads(refused.body) == {"error": "model 'two-io' is a tensor model; call infer_tensors",
                                        "field": "model"}
    assert ctx.response.metadata == {MODEL_HEADER: "two-io", VERSION_HEADER: "v1"}
    assert recorded[-1] == ("two-io", "v1", "predict_rows", 400)
    ctx = context()
    unknown = asyncio.run(bento_api.next_chars(plane, ctx, "ab", 3, "nope", None))
    assert unknown.status_code == ctx.response.status_code == 404 and ctx.response.metadata == {}
    assert recorded[-1][2:] == ("next_chars", 404) and recorded[-1][0] != "nope"  # no minted label
    ctx = context()
    assert len(asyncio.run(bento_api.next_chars(plane, ctx, "ab", 3, "char-rnn", None))) == 3
    assert ctx.response.status_code == 200 and recorded[-1] == ("char-rnn", "v1", "next_chars", 200)
