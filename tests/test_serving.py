"""The friendly HTTP API on a real `bentoml serve` over a store of tiny trained models."""

from __future__ import annotations

import io
import re
import threading
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from models.catalog import DIABETES_FEATURES
from services.launch import Server
from training import data

MNIST_MODELS = ["mnist-fc", "mnist-cnn", "mnist-googlenet", "mnist-resnet"]


@pytest.fixture(scope="module")
def mnist() -> data.MnistData:
    return data.load_mnist()


def onnx_logits(store: Path, name: str, version: str, feeds: dict[str, np.ndarray]) -> list:
    path = store / "models" / name / version / "model.onnx"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def png(array: np.ndarray, mode: str = "L", size: tuple[int, int] | None = None,
        fmt: str = "PNG") -> bytes:
    image = Image.fromarray(array).convert(mode)
    if size:
        image = image.resize(size)
    buf = io.BytesIO()
    image.save(buf, fmt)
    return buf.getvalue()


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


# ------------------------------------------------------------------------------ good requests

def test_ready_and_lists_every_model(server: Server) -> None:
    with server.client() as c:
        assert c.get("/readyz").status_code == 200
        assert c.get("/livez").status_code == 200
        models = c.get("/v1/models").json()["models"]
        assert {m["name"] for m in models} == {"diabetes", *MNIST_MODELS, "char-rnn"}
        assert all(m["stable"] and m["runtime"] == "onnx" for m in models)
        info = c.get("/v1/models/mnist-cnn").json()
        assert info["signature"]["inputs"][0]["shape"] == [-1, 1, 28, 28]
        assert c.get("/v1/models/mnist-cnn/ready").json() == {"name": "mnist-cnn", "ready": True}


@pytest.mark.parametrize("name", MNIST_MODELS)
def test_json_tensor_predictions_equal_the_offline_model(server: Server, tiny_store: Path,
                                                         mnist: data.MnistData, name: str) -> None:
    x = mnist.test_x[:16].astype(np.float32) / 255.0
    with server.client() as c:
        r = c.post(f"/v1/models/{name}/predict", json={"instances": x.reshape(16, 784).tolist(),
                                                        "top_k": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    version = r.headers["Podium-Model-Version"]
    assert body["version"] == version and body["model"] == name
    assert r.headers["Podium-Model"] == name
    (logits,) = onnx_logits(tiny_store, name, version, {"image": x[:, None]})
    probs = softmax(logits)
    for pred, p in zip(body["predictions"], probs, strict=True):
        assert pred["digit"] == int(p.argmax())
        assert pred["probability"] == pytest.approx(float(p.max()), abs=1e-5)
        assert len(pred["top_k"]) == 3


def test_integer_pixels_and_nested_shapes_agree(server: Server, mnist: data.MnistData) -> None:
    x = mnist.test_x[:8]
    with server.client() as c:
        as_ints = c.post("/v1/models/mnist-cnn/predict",
                         json={"instances": x.reshape(8, 1, 28, 28).tolist()}).json()
        as_floats = c.post("/v1/models/mnist-cnn/predict",
                           json={"instances": (x / 255.0).reshape(8, 28, 28).tolist()}).json()
    assert [p["digit"] for p in as_ints["predictions"]] == \
        [p["digit"] for p in as_floats["predictions"]]


def test_npy_batch_larger_than_max_batch_is_split_not_refused(server: Server, tiny_store: Path,
                                                               mnist: data.MnistData) -> None:
    x = mnist.test_x[:600]  # max_batch_size is 256: split into 3 chunks inside the server
    with server.client() as c:
        r = c.post("/v1/models/mnist-resnet/predict", content=npy(x),
                   headers={"content-type": "application/x-npy"})
    assert r.status_code == 200, r.text
    digits = np.array([p["digit"] for p in r.json()["predictions"]])
    (logits,) = onnx_logits(tiny_store, "mnist-resnet", r.headers["Podium-Model-Version"],
                            {"image": (x.astype(np.float32) / 255.0)[:, None]})
    assert np.array_equal(digits, logits.argmax(1))


IMAGE_FORMS = [  # real test digits as a person would send them: large, inverted, coloured
    ("a.png", lambda d: png(d), "image/png"),
    ("b.png", lambda d: png(255 - d, size=(140, 140)), "image/png"),
    ("c.jpg", lambda d: png(d, "RGB", (56, 56), "JPEG"), "image/jpeg"),
    ("d.bmp", lambda d: png(255 - d, "RGB", (300, 300), "BMP"), "image/bmp"),
    ("e.png", lambda d: png(d, "LA"), "image/png"),
    ("f.webp", lambda d: png(d, "RGB", fmt="WEBP"), "image/webp"),
]


def test_image_uploads_any_size_mode_and_format(server: Server, mnist: data.MnistData) -> None:
    from services.codecs import mnist_from_image, open_image

    blobs = [make(mnist.test_x[i]) for i, (_, make, _) in enumerate(IMAGE_FORMS)]
    files = [("images", (name, blob, kind))
             for (name, _, kind), blob in zip(IMAGE_FORMS, blobs, strict=True)]
    # What the server should see: the same preprocessing, applied here.
    expected = np.stack([mnist_from_image(open_image(b, "x", 10**8)) for b in blobs])
    with server.client() as c:
        r = c.post("/v1/models/mnist-cnn/predict", files=files)
        assert r.status_code == 200, r.text
        as_tensor = c.post("/v1/models/mnist-cnn/predict",
                           json={"instances": expected.reshape(len(blobs), 784).tolist()})
        single = c.post("/v1/models/mnist-cnn/predict", content=blobs[1],
                        headers={"content-type": "image/png"})
    uploaded = [p["digit"] for p in r.json()["predictions"]]
    assert uploaded == [p["digit"] for p in as_tensor.json()["predictions"]]
    assert single.status_code == 200
    assert single.json()["predictions"][0]["digit"] == uploaded[1]


def test_diabetes_rows_named_and_positional(server: Server, tiny_store: Path) -> None:
    pima = data.load_pima()
    rows = pima.test_x[:5]
    named = [dict(zip(DIABETES_FEATURES, map(float, row), strict=True)) for row in rows[:2]]
    with server.client() as c:
        r = c.post("/v1/models/diabetes/predict", json={"rows": named + rows[2:].tolist()})
    assert r.status_code == 200, r.text
    (prob,) = onnx_logits(tiny_store, "diabetes", r.headers["Podium-Model-Version"],
                          {"features": rows})
    for pred, p in zip(r.json()["predictions"], prob.ravel(), strict=True):
        assert pred["probability"] == pytest.approx(float(p), abs=1e-6)
        assert pred["label"] == ("positive" if p >= 0.5 else "negative")


def test_generation_is_reproducible_with_a_seed(server: Server) -> None:
    body = {"prompt": "And God said", "max_new_chars": 40, "temperature": 0.8, "top_k": 10,
            "seed": 11}
    with server.client() as c:
        first = c.post("/v1/models/char-rnn/generate", json=body)
        second = c.post("/v1/models/char-rnn/generate", json=body)
        other = c.post("/v1/models/char-rnn/generate", json={**body, "seed": 12})
        nxt = c.post("/v1/models/char-rnn/next", json={"prompt": "In the beginning", "top_k": 4})
        odd = c.post("/v1/models/char-rnn/generate", json={"prompt": "Ωμέγα ☃ 🙂", "seed": 1,
                                                           "max_new_chars": 5})
    assert first.status_code == 200, first.text
    assert len(first.json()["text"]) == 40
    assert first.json()["text"] == second.json()["text"]
    assert other.json()["text"] != first.json()["text"]
    dist = nxt.json()["next"]
    assert len(dist) == 4 and sum(d["probability"] for d in dist) <= 1.0 + 1e-6
    assert odd.status_code == 200 and set(odd.json()["unknown_chars"]) >= {"Ω", "☃", "🙂"}


# -------------------------------------------------------------------------------- bad requests

BOMB = None


def _bomb() -> bytes:
    """A small PNG that declares 400 million pixels."""
    buf = io.BytesIO()
    Image.new("1", (20000, 20000)).save(buf, "PNG")
    return buf.getvalue()


def _truncated_png(mnist: data.MnistData) -> bytes:
    return png(mnist.test_x[0], size=(200, 200))[:300]


BAD = [
    # (path, kwargs, status, fragment of the message)
    ("mnist-cnn", {"json": {"instances": [[0.5] * 783]}}, 400, "is not a batch of 1×28×28 images"),
    ("mnist-cnn", {"json": {"instances": [0.5] * 784}}, 400, "is not a batch of 1×28×28 images"),
    ("mnist-cnn", {"json": {"instances": [["a"] * 784]}}, 400, "pixels must all be numbers"),
    ("mnist-cnn", {"json": {"instances": [[0.5] * 784, [0.5] * 10]}}, 400, "ragged"),
    ("mnist-cnn", {"json": {"instances": []}}, 400, "empty batch"),
    ("mnist-cnn", {"json": {"instances": [[2.5] * 784]}}, 400, "float pixels must be in [0, 1]"),
    ("mnist-cnn", {"json": {"instances": [[300] * 784]}}, 400, "integer pixels must be in 0–255"),
    ("mnist-cnn", {"json": {"pixels": []}}, 400, "missing 'instances'"),
    ("mnist-cnn", {"json": {"instances": [[0.1] * 784], "top_k": 99}}, 400, "top_k"),
    ("mnist-cnn", {"content": b'{"instances": [[NaN]]}',
                   "headers": {"content-type": "application/json"}}, 400, "malformed JSON"),
    ("mnist-cnn", {"content": npy(np.full((2, 784), np.nan, np.float32)),
                   "headers": {"content-type": "application/x-npy"}}, 400, "NaN or infinity"),
    ("mnist-cnn", {"content": npy(np.full((2, 784), np.inf)),
                   "headers": {"content-type": "application/x-npy"}}, 400, "NaN or infinity"),
    ("mnist-cnn", {"content": npy(np.zeros((0, 784), np.uint8)),
                   "headers": {"content-type": "application/x-npy"}}, 400, "empty batch"),
    ("mnist-cnn", {"content": npy(np.zeros((5000, 784), np.uint8)),
                   "headers": {"content-type": "application/x-npy"}}, 413, "the limit is 4096"),
    ("mnist-cnn", {"content": b"\x93NUMPY garbage", "headers": {"content-type": "application/x-npy"}},
     400, ".npy"),
    ("mnist-cnn", {"content": npy(np.array(["x"] * 784).reshape(1, 784)),
                   "headers": {"content-type": "application/x-npy"}}, 400, "pixels must be numbers"),
    ("mnist-cnn", {"content": b"x" * (9 * 1024 * 1024), "headers": {"content-type": "application/x-npy"}},
     413, "exceeds the 8388608-byte limit"),
    ("mnist-cnn", {"content": b"hello", "headers": {"content-type": "text/plain"}}, 415,
     "not accepted"),
    ("mnist-cnn", {"content": b"definitely not a png", "headers": {"content-type": "image/png"}},
     400, "not an image"),
    ("mnist-cnn", {"content": "TRUNCATED", "headers": {"content-type": "image/png"}}, 400,
     "truncated or corrupt image"),
    ("mnist-cnn", {"content": "BOMB", "headers": {"content-type": "image/png"}}, 413, "pixel limit"),
    ("mnist-cnn", {"files": [("images", ("x.png", b"nope", "image/png"))]}, 400, "not an image"),
    ("diabetes", {"json": {"rows": [[1, 2, 3]]}}, 400, "row 0 has 3 values"),
    ("diabetes", {"json": {"rows": [{"glucose": 1}]}}, 400, "missing"),
    ("diabetes", {"json": {"rows": [[1, 2, "x", 4, 5, 6, 7, 8]]}}, 400, "blood_pressure must be a number"),
    ("diabetes", {"json": {"rows": []}}, 400, "empty batch"),
    ("diabetes", {"json": {"rows": [[1] * 8] * 5000}}, 413, "the limit is 4096"),
    ("diabetes", {"content": b"1,2,3", "headers": {"content-type": "text/csv"}}, 415, "application/json"),
    ("char-rnn", {"json": {"rows": [[1] * 8]}}, 400, "does not serve /predict"),
    ("nope", {"json": {}}, 404, "is not served here"),
]


@pytest.mark.parametrize(("name", "kwargs", "status", "message"), BAD,
                         ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD)])
def test_bad_input_gets_a_clear_4xx(server: Server, mnist: data.MnistData, name: str,
                                    kwargs: dict, status: int, message: str) -> None:
    kwargs = dict(kwargs)
    if kwargs.get("content") == "TRUNCATED":
        kwargs["content"] = _truncated_png(mnist)
    if kwargs.get("content") == "BOMB":
        kwargs["content"] = _bomb()
    with server.client() as c:
        r = c.post(f"/v1/models/{name}/predict", **kwargs)
        assert r.status_code == status, r.text
        assert message in r.json()["error"]
        # The worker keeps serving: a good request right after succeeds.
        good = c.post("/v1/models/diabetes/predict", json={"rows": [[1, 85, 66, 29, 0, 26.6,
                                                                     0.351, 31]]})
        assert good.status_code == 200


TEXT_BAD = [
    ("generate", {"prompt": ""}, "prompt must be a non-empty string"),
    ("generate", {"prompt": 5}, "prompt must be a non-empty string"),
    ("generate", {"prompt": "x" * 2001}, "the limit is 2000"),
    ("generate", {"prompt": "a", "max_new_chars": 0}, "max_new_chars=0 is out of range"),
    ("generate", {"prompt": "a", "max_new_chars": 100000}, "out of range"),
    ("generate", {"prompt": "a", "max_new_chars": 1.5}, "max_new_chars must be an integer"),
    ("generate", {"prompt": "a", "temperature": 0}, "temperature=0 is out of range"),
    ("generate", {"prompt": "a", "temperature": 9}, "out of range"),
    ("generate", {"prompt": "a", "top_k": 0}, "top_k=0 is out of range"),
    ("next", {"prompt": ""}, "prompt must be a non-empty string"),
    ("next", {"prompt": "a", "top_k": "3"}, "top_k must be an integer"),
]


@pytest.mark.parametrize(("endpoint", "body", "message"), TEXT_BAD)
def test_bad_text_requests(server: Server, endpoint: str, body: dict, message: str) -> None:
    with server.client() as c:
        r = c.post(f"/v1/models/char-rnn/{endpoint}", json=body)
    assert r.status_code == 400, r.text
    assert message in r.json()["error"]


def test_unknown_version_is_404(server: Server) -> None:
    with server.client() as c:
        r = c.post("/v1/models/mnist-cnn/versions/doesnotexist/predict",
                   json={"instances": [[0.0] * 784]})
        assert r.status_code == 404 and "not loaded" in r.json()["error"]
        assert c.get("/v1/models/nope/ready").status_code == 404
        version = c.get("/v1/models/mnist-cnn").json()["stable"]
        ok = c.post(f"/v1/models/mnist-cnn/versions/{version}/predict",
                    json={"instances": [[0.0] * 784]})
        assert ok.status_code == 200 and ok.headers["Podium-Model-Version"] == version


# ---------------------------------------------------------------------------- batching, ops

def _metric_sum(text: str, metric: str, model: str) -> float:
    pattern = re.compile(rf'^{metric}\{{[^}}]*model="{re.escape(model)}"[^}}]*\}} ([0-9.e+]+)$', re.M)
    return sum(float(v) for v in pattern.findall(text))


def test_concurrent_clients_are_batched(server: Server, mnist: data.MnistData) -> None:
    x = (mnist.test_x[:1].astype(np.float32) / 255.0).reshape(1, 784).tolist()
    errors: list[str] = []

    def client() -> None:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            for _ in range(25):
                r = c.post("/v1/models/mnist-googlenet/predict", json={"instances": x})
                if r.status_code != 200:
                    errors.append(r.text)

    with server.client() as c:
        before = c.get("/metrics").text
        threads = [threading.Thread(target=client) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        after = c.get("/metrics").text
    assert not errors
    items = (_metric_sum(after, "podium_inference_items_total", "mnist-googlenet")
             - _metric_sum(before, "podium_inference_items_total", "mnist-googlenet"))
    runs = (_metric_sum(after, "podium_inference_executions_total", "mnist-googlenet")
            - _metric_sum(before, "podium_inference_executions_total", "mnist-googlenet"))
    assert items == 16 * 25
    assert runs < items, "16 concurrent clients never shared a batch"
    assert _metric_sum(after, "podium_batch_size_count", "mnist-googlenet") >= runs
    assert 'podium_requests_total{endpoint="predict",model="mnist-googlenet",status="200"' in after


def test_concurrent_generations_share_model_steps(server: Server) -> None:
    results: list[int] = []
    start = threading.Barrier(8)

    def gen(seed: int) -> None:
        with httpx.Client(base_url=server.url, timeout=120) as c:
            start.wait()
            r = c.post("/v1/models/char-rnn/generate",
                       json={"prompt": "And", "max_new_chars": 300, "seed": seed})
            results.append(r.status_code)

    with server.client() as c:
        before = c.get("/metrics").text
        threads = [threading.Thread(target=gen, args=(s,)) for s in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        after = c.get("/metrics").text
    assert results == [200] * 8
    items = (_metric_sum(after, "podium_inference_items_total", "char-rnn")
             - _metric_sum(before, "podium_inference_items_total", "char-rnn"))
    runs = (_metric_sum(after, "podium_inference_executions_total", "char-rnn")
            - _metric_sum(before, "podium_inference_executions_total", "char-rnn"))
    assert items == 8 * 300  # one prompt step and 299 character steps each (none after the last)
    assert runs < items


def test_openapi_page_documents_the_endpoints(server: Server) -> None:
    with server.client() as c:
        spec = c.get("/docs.json").json()
    assert "/v1/models/{name}/predict" in spec["paths"]
    assert "/v1/models/{name}/generate" in spec["paths"]


def test_onnx_serving_process_does_not_import_torch(server: Server) -> None:
    import psutil

    root = psutil.Process(server.proc.pid)
    group = [root.pid, *(p.pid for p in root.children(recursive=True))]
    maps = {pid: Path(f"/proc/{pid}/maps").read_text() for pid in group}
    assert any("onnxruntime" in m for m in maps.values()), "no server process runs ONNX Runtime"
    for pid, m in maps.items():
        assert "libtorch" not in m, f"process {pid} of the server loaded torch"


def test_torchscript_runtime_gives_the_same_answers(tiny_store: Path, tmp_path: Path,
                                                    mnist: data.MnistData) -> None:
    import shutil

    from services.launch import serve

    # A second server needs its own BENTOML_HOME: `bentoml serve` wipes the Prometheus
    # directory under the home it starts in, which would blank the first server's /metrics.
    store = tmp_path / "store"
    shutil.copytree(tiny_store / "models", store / "models")
    x = (mnist.test_x[:32].astype(np.float32) / 255.0).reshape(32, 784).tolist()
    env = {"PODIUM_RUNTIME": "torchscript", "PODIUM_MODELS": "mnist-cnn,diabetes"}
    with serve(store, tmp_path, env=env) as ts, ts.client() as c:
        models = c.get("/v1/models").json()["models"]
        r = c.post("/v1/models/mnist-cnn/predict", json={"instances": x})
    assert {m["runtime"] for m in models} == {"torchscript"}
    assert {m["name"] for m in models} == {"mnist-cnn", "diabetes"}
    digits = [p["digit"] for p in r.json()["predictions"]]
    (logits,) = onnx_logits(store, "mnist-cnn", r.headers["Podium-Model-Version"],
                            {"image": np.array(x, np.float32).reshape(32, 1, 28, 28)})
    assert digits == logits.argmax(1).tolist()
