"""Imported models served end to end: `podium import` (the real CLI) fills a real store with the
tests' own models — a tiny CNN imported from ONNX and, as its second version, from TorchScript;
a graph with two inputs and two outputs of different dtypes; a fixed-batch graph made batchable
with --batch-axis; a CNN of mnist-cnn's shape whose convolution channels the import pads — and a
real `bentoml serve` answers for them over /v1 (JSON tensors, .npy, a photo upload) and /v2 (JSON
and binary tensors through tritonclient), counts them in its metrics and rolls out between the two
imported versions."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tritonclient.http as triton
from PIL import Image

from services.launch import Server, serve
from tests.conftest import run_podium
from tests.import_support import build_user_models

TOKEN = "import-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LABELS = ["cat", "dog", "bird", "fish", "frog"]
MEAN, STD = 0.5, 0.25


def _import(home: Path, *args: str) -> str:
    """Run `podium import`; the new version's id."""
    return run_podium("import", *args, "--store", str(home)).stdout.split(":")[-1].strip()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return {k: str(v) for k, v in build_user_models(tmp_path_factory.mktemp("user-models")).items()}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, files: dict[str, str]) -> tuple[Path, dict[str, str]]:
    home = tmp_path_factory.mktemp("import-home")
    image = ["--labels", files["five.txt"], "--mean", f"{MEAN},{MEAN},{MEAN}", "--std", f"{STD},{STD},{STD}"]
    versions = {
        "v1": _import(home, files["cnn.onnx"], "--name", "tiny-cnn", *image),
        "v2": _import(home, files["cnn.pt"], "--name", "tiny-cnn", "--example-input", files["cnn-x.npy"],
                      *image),
    }
    _import(home, files["two.onnx"], "--name", "pair")
    _import(home, files["fixed.onnx"], "--name", "fixed", "--batch-axis", "x=0", "--batch-axis", "y=0")
    _import(home, files["lenet.onnx"], "--name", "lenet")  # its convolution channels padded 10 → 16
    return home, versions


@pytest.fixture(scope="module")
def server(store: tuple[Path, dict[str, str]], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home, versions = store
    logs = tmp_path_factory.mktemp("import-logs")
    # The models setting is left at its default: the lecture models plus every imported one.
    env = {"PODIUM_VERSIONS": json.dumps({"tiny-cnn": versions["v1"]}), "PODIUM_ADMIN_TOKEN": TOKEN,
           "PODIUM_ROLLOUT_STATE": str(logs / "rollout.json"), "PODIUM_ROLLOUT_POLL_MS": "50",
           "PODIUM_INTRA_OP_THREADS": "1"}
    with serve(home, logs, env) as running:
        yield running


@pytest.fixture
def client(server: Server) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c


def test_listed_with_their_signatures_on_v1_and_v2(client: httpx.Client) -> None:
    listed = {m["name"] for m in client.get("/v1/models").json()["models"]}
    assert {"tiny-cnn", "pair", "fixed"} <= listed
    meta = client.get("/v2/models/pair").json()
    assert meta["inputs"] == [{"name": "a", "datatype": "FP32", "shape": [-1, 3]},
                              {"name": "b", "datatype": "INT64", "shape": [-1, 2]}]
    assert meta["outputs"] == [{"name": "total", "datatype": "FP32", "shape": [-1, 3]},
                               {"name": "count", "datatype": "INT64", "shape": [-1, 2]}]


def test_v2_json_infer_two_inputs_two_outputs(client: httpx.Client) -> None:
    r = client.post("/v2/models/pair/infer", json={"id": "7", "inputs": [
        {"name": "a", "datatype": "FP32", "shape": [2, 3], "data": [1, 2, 3, 4, 5, 6]},
        {"name": "b", "datatype": "INT64", "shape": [2, 2], "data": [[1, 2], [3, 4]]}]})
    assert r.status_code == 200, r.text
    out = {o["name"]: o for o in r.json()["outputs"]}
    assert out["total"]["data"] == [2.0, 4.0, 6.0, 8.0, 10.0, 12.0] and out["total"]["datatype"] == "FP32"
    assert out["count"]["data"] == [1, 4, 9, 16] and out["count"]["datatype"] == "INT64"
    assert out["count"]["shape"] == [2, 2] and r.json()["id"] == "7"


def test_v2_binary_tensors_through_tritonclient(server: Server) -> None:
    a = np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32)
    b = np.arange(10, dtype=np.int64).reshape(5, 2)
    inputs = [triton.InferInput("a", [5, 3], "FP32"), triton.InferInput("b", [5, 2], "INT64")]
    inputs[0].set_data_from_numpy(a, binary_data=True)
    inputs[1].set_data_from_numpy(b, binary_data=True)
    outputs = [triton.InferRequestedOutput(n, binary_data=True) for n in ("total", "count")]
    client = triton.InferenceServerClient(url=server.url.removeprefix("http://"))
    try:
        result = client.infer("pair", inputs, outputs=outputs)
    finally:
        client.close()
    np.testing.assert_array_equal(result.as_numpy("total"), a + a)
    np.testing.assert_array_equal(result.as_numpy("count"), b * b)


def test_v1_json_tensors_and_npy(client: httpx.Client) -> None:
    r = client.post("/v1/models/pair/predict", json={"inputs": {"a": [[1, 2, 3]], "b": [[5, 6]]}})
    assert r.status_code == 200, r.text
    assert r.json()["outputs"] == {"total": [[2.0, 4.0, 6.0]], "count": [[25, 36]]}
    x = np.array([[-1, 0, 2], [3, -4, 5], [0.5, -0.5, 1]], np.float32)  # a batch of 3: once fixed at 2
    buf = io.BytesIO()
    np.save(buf, x)
    r = client.post("/v1/models/fixed/predict", content=buf.getvalue(),
                    headers={"Content-Type": "application/x-npy"})
    assert r.status_code == 200, r.text
    assert r.json()["outputs"] == {"y": np.maximum(x, 0).tolist()}
    r = client.post("/v1/models/fixed/predict", content=buf.getvalue(),
                    headers={"Content-Type": "application/x-npy", "Accept": "application/x-npy"})
    np.testing.assert_array_equal(np.load(io.BytesIO(r.content), allow_pickle=False), np.maximum(x, 0))


def test_photo_upload_to_the_imported_classifier(client: httpx.Client,
                                                 store: tuple[Path, dict[str, str]]) -> None:
    home, versions = store
    color = (200, 30, 90)  # one colour: resizing cannot change it, so the expected input is exact
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), color).save(buf, "PNG")
    r = client.post("/v1/models/tiny-cnn/predict", files=[("images", ("p.png", buf.getvalue(), "image/png"))])
    assert r.status_code == 200, r.text
    assert r.headers["podium-model-version"] == versions["v1"]
    pixels = (np.array(color, np.float32) / 255 - MEAN) / STD
    x = np.broadcast_to(pixels[None, :, None, None], (1, 3, 32, 32)).astype(np.float32)
    session = ort.InferenceSession(str(home / "models" / "tiny-cnn" / versions["v1"] / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    (scores,) = session.run(None, {"pixels": x})
    (prediction,) = r.json()["predictions"]
    assert prediction["label"] == LABELS[int(scores.argmax())]
    probs = np.exp(scores[0] - scores[0].max())
    assert prediction["probability"] == pytest.approx(float(probs.max() / probs.sum()), abs=1e-5)


def test_a_padded_import_answers_as_the_file_given(client: httpx.Client,
                                                   store: tuple[Path, dict[str, str]],
                                                   files: dict[str, str]) -> None:
    home, _ = store
    (stored,) = (home / "models" / "lenet").glob("*/model.onnx")
    widths = [list(t.dims)[:2] for t in onnx.load(str(stored)).graph.initializer if len(t.dims) == 4]
    assert widths == [[16, 1], [20, 16]]  # what the import stored: padded
    x = np.random.default_rng(5).random((3, 1, 28, 28), dtype=np.float32)
    r = client.post("/v2/models/lenet/infer", json={"inputs": [
        {"name": "image", "datatype": "FP32", "shape": [3, 1, 28, 28], "data": x.ravel().tolist()}],
        "outputs": [{"name": "logits"}]})
    assert r.status_code == 200, r.text
    session = ort.InferenceSession(files["lenet.onnx"], providers=["CPUExecutionProvider"])
    (want,) = session.run(None, {"image": x})
    got = np.asarray(r.json()["outputs"][0]["data"], np.float32).reshape(want.shape)
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_metrics_count_the_imported_models(client: httpx.Client, server: Server) -> None:
    client.post("/v1/models/pair/predict", json={"inputs": {"a": [[1, 2, 3]], "b": [[1, 1]]}})
    metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
    lines = [line for line in metrics.splitlines() if 'model="pair"' in line and not line.startswith("#")]
    assert lines, "no metrics line for the imported model"
    assert any('model="tiny-cnn"' in line for line in metrics.splitlines())


def test_rollout_canary_then_promote_between_two_imported_versions(
        client: httpx.Client, store: tuple[Path, dict[str, str]]) -> None:
    _, versions = store
    v1, v2 = versions["v1"], versions["v2"]
    buf = io.BytesIO()
    np.save(buf, np.random.default_rng(3).random((2, 3, 32, 32), dtype=np.float32))  # pixels in [0, 1]

    def answered(key: str) -> str:
        r = client.post("/v1/models/tiny-cnn/predict", content=buf.getvalue(),
                        headers={"Content-Type": "application/x-npy", **_route(key)})
        assert r.status_code == 200, r.text
        return r.headers["podium-model-version"]

    def keys(n: int) -> set[str]:
        return {answered(f"client-{i}") for i in range(n)}

    started = client.post("/admin/rollout/tiny-cnn/start", json={"version": v2, "percent": 50},
                          headers=AUTH)
    assert started.status_code == 200, started.text
    # 40 sticky keys at 50 %: both sides answer (one side only: chance 2 × 2^-40); other
    # workers follow the stored state within the poll interval, hence the bounded retry.
    assert _eventually(lambda: keys(40) == {v1, v2})
    assert answered("pin:candidate") == v2 and answered("pin:stable") == v1
    promoted = client.post("/admin/rollout/tiny-cnn/promote", headers=AUTH)
    assert promoted.status_code == 200, promoted.text
    assert _eventually(lambda: keys(10) == {v2})


def _route(key: str) -> dict[str, str]:
    """A sticky client key, or ``pin:SIDE`` for a pinned side."""
    if key.startswith("pin:"):
        return {"Podium-Pin": key.removeprefix("pin:")}
    return {"Podium-Client-Key": key}


def _eventually(check: Callable[[], bool], seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True
