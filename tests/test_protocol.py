"""The Open Inference Protocol front door (/v2) on a real `bentoml serve`: through
``tritonclient.http`` unchanged and through plain HTTP, outputs checked against ONNX Runtime
running the stored files directly."""

from __future__ import annotations

import functools
import gzip
import struct
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import orjson
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from services.launch import Server

MNIST_MODELS = ["mnist-fc", "mnist-cnn", "mnist-googlenet", "mnist-resnet"]
ALL_MODELS = ["diabetes", *MNIST_MODELS, "char-rnn"]
ROWS = np.array([[6, 148, 72, 35, 0, 33.6, 0.627, 50], [1, 85, 66, 29, 0, 26.6, 0.351, 31],
                 [8, 183, 64, 0, 0, 23.3, 0.672, 32]], np.float32)


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[triton.InferenceServerClient]:
    with triton.InferenceServerClient(url=f"127.0.0.1:{server.port}") as c:
        yield c


@pytest.fixture(scope="module")
def http(server: Server) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c


@pytest.fixture(scope="module")
def versions(http: httpx.Client) -> dict[str, str]:
    return {name: http.get(f"/v2/models/{name}").json()["versions"][0] for name in ALL_MODELS}


@functools.cache
def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def reference(store: Path, name: str, version: str, feeds: dict[str, np.ndarray]) -> np.ndarray:
    """The first output of the stored ONNX file, run directly."""
    return _session(store / "models" / name / version / "model.onnx").run(None, feeds)[0]


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 1, 28, 28), dtype=np.float32)


def tensor(name: str, array: np.ndarray, datatype: str, binary: bool) -> triton.InferInput:
    t = triton.InferInput(name, list(array.shape), datatype)
    t.set_data_from_numpy(array, binary_data=binary)
    return t


def wanted(names: list[str], binary: bool) -> list[triton.InferRequestedOutput]:
    return [triton.InferRequestedOutput(n, binary_data=binary) for n in names]


def generate(client: triton.InferenceServerClient, prompts: list[str], binary: bool,
             **parameters: object) -> triton.InferResult:
    prompt = np.array([p.encode() for p in prompts], dtype=object)
    return client.infer("char-rnn", [tensor("prompt", prompt, "BYTES", binary)],
                        outputs=wanted(["text"], binary), parameters=parameters)


def rejected(call, status: str, *fragments: str) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as caught:
        call()
    assert caught.value.status() == status, caught.value
    for fragment in fragments:
        assert fragment in caught.value.message(), caught.value.message()
    return caught.value


def binary_body(header: dict, *chunks: bytes) -> tuple[bytes, dict[str, str]]:
    head = orjson.dumps(header)
    return head + b"".join(chunks), {"Inference-Header-Content-Length": str(len(head))}


# ---------------------------------------------------------------------------------- tritonclient

def test_server_live_ready_and_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "podium" and "binary_tensor_data" in meta["extensions"]


@pytest.mark.parametrize("name", ALL_MODELS)
def test_model_metadata_and_readiness(client: triton.InferenceServerClient, versions: dict[str, str],
                                      name: str) -> None:
    meta = client.get_model_metadata(name)
    assert meta["name"] == name and meta["platform"] == "onnxruntime_onnx"
    assert meta["versions"][0] == versions[name]
    first = meta["inputs"][0]
    if name == "char-rnn":
        assert first == {"name": "prompt", "datatype": "BYTES", "shape": [-1]}
        assert meta["outputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    elif name == "diabetes":
        assert first == {"name": "features", "datatype": "FP32", "shape": [-1, 8]}
        assert [o["name"] for o in meta["outputs"]] == ["probability", "label"]
    else:
        assert first == {"name": "image", "datatype": "FP32", "shape": [-1, 1, 28, 28]}
        assert meta["outputs"][0] == {"name": "logits", "datatype": "FP32", "shape": [-1, 10]}
    assert client.get_model_metadata(name, versions[name])["name"] == name
    assert client.is_model_ready(name)
    assert client.is_model_ready(name, versions[name])
    assert not client.is_model_ready(name, "no-such-version")


def test_model_config_for_perf_analyzer(client: triton.InferenceServerClient) -> None:
    config = client.get_model_config("mnist-cnn")
    assert config["max_batch_size"] > 0 and config["platform"] == "onnxruntime_onnx"
    assert config["input"] == [{"name": "image", "data_type": "TYPE_FP32", "dims": [1, 28, 28]}]


@pytest.mark.parametrize("binary", [True, False])
def test_diabetes(client: triton.InferenceServerClient, tiny_store: Path, versions: dict[str, str],
                  binary: bool) -> None:
    result = client.infer("diabetes", [tensor("features", ROWS, "FP32", binary)], request_id="r-1",
                          outputs=wanted(["probability", "label"], binary))
    expected = reference(tiny_store, "diabetes", versions["diabetes"], {"features": ROWS})
    probability = result.as_numpy("probability")
    assert probability.shape == (3, 1) and probability.dtype == np.float32
    np.testing.assert_allclose(probability, expected.reshape(3, 1), atol=1e-5)
    labels = [s.decode() if isinstance(s, bytes) else s for s in result.as_numpy("label")]
    assert labels == ["positive" if p >= 0.5 else "negative" for p in probability[:, 0]]
    response = result.get_response()
    assert response["id"] == "r-1" and response["model_version"] == versions["diabetes"]


@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("name", MNIST_MODELS)
def test_mnist(client: triton.InferenceServerClient, tiny_store: Path, versions: dict[str, str],
               name: str, binary: bool) -> None:
    batch = images(3)
    result = client.infer(name, [tensor("image", batch, "FP32", binary)],
                          outputs=wanted(["logits", "probabilities", "label"], binary))
    expected = reference(tiny_store, name, versions[name], {"image": batch})
    logits = result.as_numpy("logits")
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(result.as_numpy("probabilities").sum(axis=1), 1.0, atol=1e-5)
    labels = [int(s.decode() if isinstance(s, bytes) else s) for s in result.as_numpy("label")]
    assert labels == expected.argmax(axis=1).tolist()


def test_mnist_default_outputs_are_all_binary(client: triton.InferenceServerClient) -> None:
    result = client.infer("mnist-fc", [tensor("image", images(1), "FP32", True)])
    names = [o["name"] for o in result.get_response()["outputs"]]
    assert names == ["logits", "probabilities", "label"]
    assert all("binary_data_size" in o["parameters"] for o in result.get_response()["outputs"])


def test_mnist_uint8_flat_images(client: triton.InferenceServerClient, tiny_store: Path,
                                 versions: dict[str, str]) -> None:
    pixels = np.random.default_rng(1).integers(0, 256, (2, 784), dtype=np.uint8)
    result = client.infer("mnist-cnn", [tensor("image", pixels, "UINT8", True)],
                          outputs=wanted(["logits"], True))
    as_float = (pixels.astype(np.float32) / 255).reshape(2, 1, 28, 28)
    expected = reference(tiny_store, "mnist-cnn", versions["mnist-cnn"], {"image": as_float})
    np.testing.assert_allclose(result.as_numpy("logits"), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("binary", [True, False])
def test_char_rnn_generates_as_the_friendly_endpoint_does(
        client: triton.InferenceServerClient, http: httpx.Client, binary: bool) -> None:
    settings = {"max_new_chars": 40, "temperature": 0.8, "top_k": 5, "seed": 11}
    result = generate(client, ["And God said"], binary, **settings)
    (text,) = result.as_numpy("text")
    text = text.decode() if isinstance(text, bytes) else text
    assert len(text) == 40
    friendly = http.post("/v1/models/char-rnn/generate", json={"prompt": "And God said", **settings})
    assert friendly.json()["text"] == text


def test_char_rnn_several_prompts(client: triton.InferenceServerClient) -> None:
    result = generate(client, ["First", "Second", "Third"], True, max_new_chars=8, seed=1)
    texts = result.as_numpy("text")
    assert texts.shape == (3,) and all(len(t.decode()) == 8 for t in texts)


def test_version_addressed_inference(client: triton.InferenceServerClient,
                                     versions: dict[str, str]) -> None:
    version = versions["mnist-cnn"]
    result = client.infer("mnist-cnn", [tensor("image", images(1), "FP32", True)],
                          model_version=version, outputs=wanted(["logits"], True))
    assert result.get_response()["model_version"] == version
    rejected(lambda: client.infer("mnist-cnn", [tensor("image", images(1), "FP32", True)],
                                  model_version="nope"), "404", "'nope'")


def test_client_mistakes_are_4xx_with_our_message(client: triton.InferenceServerClient) -> None:
    rows = [tensor("features", ROWS, "FP32", True)]
    rejected(lambda: client.infer("no-such-model", rows), "404", "'no-such-model'")
    rejected(lambda: client.infer("diabetes", [tensor("features", ROWS.astype(np.int64), "INT64",
                                                      True)]), "400", "datatype INT64", "FP32")
    rejected(lambda: client.infer("diabetes", [tensor("feature", ROWS, "FP32", False)]), "400",
             "unknown input 'feature'")
    rejected(lambda: client.infer("diabetes", [tensor("features", ROWS[:, :7].copy(), "FP32",
                                                      True)]), "400", "[3, 7]")
    rejected(lambda: client.infer("diabetes", rows, outputs=wanted(["logits"], True)), "400",
             "unknown output 'logits'")
    rejected(lambda: client.infer("mnist-fc", [tensor("image", images(1) * 255, "FP32", True)]),
             "400", "[0, 1]")
    rejected(lambda: generate(client, ["x"], True, temperature=0), "400", "temperature")
    rejected(lambda: generate(client, ["x"], True, max_new_char=5), "400", "'max_new_char'")
    rejected(lambda: generate(client, [""], False), "400", "non-empty")


# ------------------------------------------------------------------------------------ plain HTTP

def test_health_endpoints(http: httpx.Client) -> None:
    assert http.get("/v2/health/live").json() == {"live": True}
    assert http.get("/v2/health/ready").json() == {"ready": True}
    assert http.get("/v2/models/mnist-cnn/ready").json()["ready"] is True
    missing = http.get("/v2/models/nope")
    assert missing.status_code == 404 and "'nope'" in missing.json()["error"]


@pytest.mark.parametrize("nested", [True, False])
def test_json_flat_or_nested(http: httpx.Client, tiny_store: Path, versions: dict[str, str],
                             nested: bool) -> None:
    batch = images(2, seed=3)
    data = batch.tolist() if nested else batch.ravel().tolist()
    response = http.post("/v2/models/mnist-resnet/infer", json={
        "id": "abc", "inputs": [{"name": "image", "datatype": "FP32", "shape": [2, 1, 28, 28],
                                 "data": data}],
        "outputs": [{"name": "label"}, {"name": "logits"}]})
    assert response.status_code == 200, response.text
    assert response.headers["Podium-Model-Version"] == versions["mnist-resnet"]
    body = response.json()
    assert body["id"] == "abc" and body["model_name"] == "mnist-resnet"
    assert [o["name"] for o in body["outputs"]] == ["label", "logits"]
    logits = body["outputs"][1]
    assert logits["shape"] == [2, 10] and logits["datatype"] == "FP32"
    expected = reference(tiny_store, "mnist-resnet", versions["mnist-resnet"], {"image": batch})
    np.testing.assert_allclose(np.array(logits["data"]).reshape(2, 10), expected, atol=1e-4)
    assert body["outputs"][0]["data"] == [str(i) for i in expected.argmax(axis=1)]


def test_binary_request_and_response_by_hand(http: httpx.Client, tiny_store: Path,
                                             versions: dict[str, str]) -> None:
    body, headers = binary_body({
        "inputs": [{"name": "features", "datatype": "FP32", "shape": [3, 8],
                    "parameters": {"binary_data_size": ROWS.nbytes}}],
        "outputs": [{"name": "probability", "parameters": {"binary_data": True}},
                    {"name": "label", "parameters": {"binary_data": True}}]}, ROWS.tobytes())
    response = http.post("/v2/models/diabetes/infer", content=body, headers=headers)
    assert response.status_code == 200, response.text
    size = int(response.headers["Inference-Header-Content-Length"])
    header = orjson.loads(response.content[:size])
    probability, label = header["outputs"]
    n = probability["parameters"]["binary_data_size"]
    got = np.frombuffer(response.content[size:size + n], np.float32).reshape(probability["shape"])
    expected = reference(tiny_store, "diabetes", versions["diabetes"], {"features": ROWS})
    np.testing.assert_allclose(got, expected.reshape(3, 1), atol=1e-5)
    raw = response.content[size + n:]
    assert len(raw) == label["parameters"]["binary_data_size"]
    (length,) = struct.unpack_from("<I", raw)
    assert raw[4:4 + length] in (b"negative", b"positive")


def test_char_rnn_json_with_request_parameters(http: httpx.Client) -> None:
    response = http.post("/v2/models/char-rnn/infer", json={
        "inputs": [{"name": "prompt", "datatype": "BYTES", "shape": [1], "data": ["ROMEO:"]}],
        "parameters": {"max_new_chars": 12, "seed": 5}})
    assert response.status_code == 200, response.text
    (text,) = response.json()["outputs"]
    assert text["datatype"] == "BYTES" and text["shape"] == [1] and len(text["data"][0]) == 12


def test_gzip_request_body(http: httpx.Client) -> None:
    body = orjson.dumps({"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 8],
                                     "data": ROWS[0].tolist()}]})
    response = http.post("/v2/models/diabetes/infer", content=gzip.compress(body),
                         headers={"Content-Encoding": "gzip"})
    assert response.status_code == 200, response.text


FEATURES = {"name": "features", "datatype": "FP32", "shape": [1, 8]}
ROW = ROWS[0].tolist()


@pytest.mark.parametrize(("body", "headers", "fragment"), [
    (b"{not json", {}, "malformed JSON"),
    (b"[]", {}, "JSON object"),
    (orjson.dumps({"inputs": []}), {}, "'inputs'"),
    (orjson.dumps({"inputs": [{**FEATURES, "datatype": "FP99", "data": ROW}]}), {}, "FP99"),
    (orjson.dumps({"inputs": [{**FEATURES, "data": ROW[:7]}]}), {}, "holds 8 elements but data has 7"),
    (orjson.dumps({"inputs": [{**FEATURES, "data": [ROW[:4], ROW[:3]]}]}), {}, "ragged"),
    (orjson.dumps({"inputs": [{**FEATURES, "data": ["a"] * 8}]}), {}, "FP32 data must be numbers"),
    (orjson.dumps({"inputs": [{**FEATURES, "shape": [1, -8], "data": ROW}]}), {}, "shape must be"),
    (orjson.dumps({"inputs": [FEATURES]}), {}, "neither 'data' nor"),
    (orjson.dumps({"id": 5, "inputs": [{**FEATURES, "data": ROW}]}), {}, "'id' must be a string"),
    (orjson.dumps({"inputs": [{**FEATURES, "data": ROW}, {**FEATURES, "data": ROW}]}), {},
     "appears twice"),
    (*binary_body({"inputs": [{**FEATURES, "parameters": {"binary_data_size": 64}}]}, ROWS[0].tobytes()),
     "only 32 bytes"),
    (*binary_body({"inputs": [{**FEATURES, "parameters": {"binary_data_size": 28}}]}, ROWS[0].tobytes()),
     "needs 32 bytes"),
    (*binary_body({"inputs": [{**FEATURES, "parameters": {"binary_data_size": 32}}]},
                  ROWS[0].tobytes() + b"xx"), "2 bytes after"),
    (ROWS[0].tobytes(), {"Inference-Header-Content-Length": "999"}, "Inference-Header-Content-Length"),
    (b"\x1f\x8b garbage", {"Content-Encoding": "gzip"}, "gzip"),
])
def test_malformed_requests_are_400(http: httpx.Client, body: bytes, headers: dict[str, str],
                                    fragment: str) -> None:
    response = http.post("/v2/models/diabetes/infer", content=body, headers=headers)
    assert response.status_code == 400, response.text
    assert fragment in response.json()["error"]
    assert response.headers["Podium-Model-Version"]


def test_bytes_binary_element_count_must_match_shape(http: httpx.Client) -> None:
    element = struct.pack("<I", 2) + b"hi"
    body, headers = binary_body({"inputs": [{"name": "prompt", "datatype": "BYTES", "shape": [2],
                                             "parameters": {"binary_data_size": len(element)}}]},
                                element)
    response = http.post("/v2/models/char-rnn/infer", content=body, headers=headers)
    assert response.status_code == 400 and "holds 2 BYTES elements" in response.json()["error"]


def test_still_healthy_after_errors_and_counted_in_metrics(http: httpx.Client) -> None:
    assert http.get("/v2/health/ready").status_code == 200
    response = http.post("/v2/models/diabetes/infer", json={"inputs": [{**FEATURES, "data": ROW}]})
    assert response.status_code == 200
    assert 'endpoint="infer"' in http.get("/metrics").text
