"""Model kinds (issue 14): the label rule, imported models' specs (contract A), each kind's batch
axes, warm-up feeds and batch defaults, the codecs they use — in-process — and imported models
served end to end by a real server over a real store."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from models.catalog import CATALOG, UnknownModel, spec_from_metadata
from models.labels import labels_of
from services import codecs
from services.errors import InvalidInput, PayloadTooLarge
from services.kinds import KINDS, kind_for
from services.launch import Server, serve
from tests.kinds_support import PHOTO_METADATA, TWO_IO_METADATA

ROOT = Path(__file__).resolve().parent.parent


def test_label_rule_threshold_and_argmax() -> None:
    assert labels_of(np.array([[0.49], [0.5], [0.9]])).tolist() == [0, 1, 1]
    assert labels_of(np.array([0.1, 0.7])).tolist() == [0, 1]
    assert labels_of(np.array([[1.0, 3.0, 2.0], [5.0, 0.0, 0.0]])).tolist() == [1, 0]


def test_every_catalog_model_names_a_registered_kind() -> None:
    assert {spec.kind for spec in CATALOG.values()} <= set(KINDS)
    assert {"tabular", "image", "text", "tensor"} <= set(KINDS)
    for spec in CATALOG.values():
        kind = kind_for(spec)
        inputs, outputs = kind.batch_axes()
        assert set(inputs) == {t.name for t in spec.inputs} and len(outputs) == len(spec.outputs)
        assert kind.gpu_max_batch >= kind.max_batch >= 1


def test_imported_spec_round_trip_and_its_kind() -> None:
    spec = spec_from_metadata("two-io", TWO_IO_METADATA)
    assert (spec.kind, [t.name for t in spec.inputs], spec.inputs[1].dtype) == ("tensor", ["x", "k"], "int64")
    kind = kind_for(spec)
    feeds = kind.warm_feeds(None, 4)  # type: ignore[arg-type]  # a tensor kind needs no version
    assert feeds["x"].shape == (4, 3) and feeds["x"].dtype == np.float32
    assert feeds["k"].shape == (4,) and feeds["k"].dtype == np.int64
    assert [p.datatype for p in kind.inputs()] == ["FP32", "INT64"]
    photo = kind_for(spec_from_metadata("photo", PHOTO_METADATA))
    assert photo.name == "image" and photo.labels == ("cat", "dog", "fish", "bird")
    assert [p.shape for p in photo.inputs()] == [(-1, 3, 8, 8)]


def test_tensor_kind_batch_axis_comes_from_the_metadata() -> None:
    metadata = {**TWO_IO_METADATA, "batch_axes": {"inputs": {"x": 0, "k": 0}, "outputs": {"y": 1, "m": 0}}}
    assert kind_for(spec_from_metadata("m", metadata)).batch_axes() == ({"x": 0, "k": 0}, [1, 0])


@pytest.mark.parametrize("broken", [{}, {"kind": "tensor"}, {**TWO_IO_METADATA, "batch_axes": None}])
def test_metadata_that_is_no_imported_model_is_one_line(broken: dict) -> None:
    with pytest.raises(UnknownModel, match="not in the catalog"):
        spec_from_metadata("odd", broken)


def test_unknown_kind_is_named() -> None:
    with pytest.raises(ValueError, match="known kinds"):
        kind_for(spec_from_metadata("odd", {**TWO_IO_METADATA, "kind": "audio"}))


def test_image_shapes_and_batches() -> None:
    assert codecs.image_shapes((1, 28, 28)) == [(1, 28, 28), (28, 28), (784,)]
    assert codecs.image_shapes((3, 8, 8)) == [(3, 8, 8)]
    assert codecs.as_image_batch(np.zeros((2, 784)), "x", 10).shape == (2, 1, 28, 28)
    assert codecs.as_image_batch(np.zeros((2, 3, 8, 8)), "x", 10, (3, 8, 8)).shape == (2, 3, 8, 8)
    with pytest.raises(InvalidInput, match=r"send \[N,3,8,8\]"):
        codecs.as_image_batch(np.zeros((2, 8, 8)), "x", 10, (3, 8, 8))
    with pytest.raises(PayloadTooLarge):
        codecs.as_image_batch(np.zeros((11, 3, 8, 8)), "x", 10, (3, 8, 8))


def test_photo_tensor_converts_channels_and_size() -> None:
    gray = Image.new("L", (40, 20), 255)
    rgb = codecs.photo_tensor(gray, (3, 8, 4))
    assert rgb.shape == (3, 8, 4) and rgb.dtype == np.float32 and np.allclose(rgb, 1.0)
    assert codecs.photo_tensor(Image.new("RGB", (5, 5), (255, 0, 0)), (1, 2, 2)).shape == (1, 2, 2)


def test_read_npy_keeps_dtype_and_refuses_lies() -> None:
    buf = io.BytesIO()
    np.save(buf, np.arange(6, dtype=np.int64).reshape(3, 2))
    assert codecs.read_npy(buf.getvalue(), 10).dtype == np.int64
    with pytest.raises(InvalidInput, match="declares shape"):
        codecs.read_npy(buf.getvalue()[:-8], 10)


# -------------------------------------------------------------------- end to end, real server

REGISTER = """
import sys
from pathlib import Path
from tests.kinds_support import build_models
from training.register import register
for name, (files, metadata) in build_models(Path(sys.argv[1])).items():
    if "kind" in metadata:  # the imported ones (contract A); the lecture-shaped graphs stay out
        print(register(name, files, metadata))
"""


@pytest.fixture(scope="module")
def imported_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A real server over a store holding only imported models, registered per contract A."""
    store = tmp_path_factory.mktemp("imported-store")
    env = {**os.environ, "BENTOML_HOME": str(store), "BENTOML_DO_NOT_TRACK": "true"}
    subprocess.run([sys.executable, "-c", REGISTER, str(tmp_path_factory.mktemp("graphs"))], cwd=ROOT,
                   env=env, check=True, capture_output=True, timeout=120)
    with serve(store, tmp_path_factory.mktemp("imported-logs")) as server:
        yield server


def test_imported_models_are_served_by_default_through_v1_and_v2(imported_server: Server) -> None:
    with imported_server.client() as c:
        assert {m["name"] for m in c.get("/v1/models").json()["models"]} == {"photo", "two-io"}
        r = c.post("/v1/models/two-io/predict", json={"inputs": {"x": [[1, 2, 3]], "k": [41]}})
        assert r.status_code == 200, r.text
        assert r.json()["outputs"] == {"y": [[2.0, 4.0, 6.0]], "m": [42]}
        oip = c.post("/v2/models/two-io/infer", json={"inputs": [
            {"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [0, 1, 2]},
            {"name": "k", "datatype": "INT64", "shape": [1], "data": [1]}]}).json()
        assert {o["name"]: o["data"] for o in oip["outputs"]} == {"y": [0.0, 2.0, 4.0], "m": [2]}
        buf = io.BytesIO()
        Image.new("RGB", (64, 48), (200, 10, 10)).save(buf, "PNG")
        photo = c.post("/v1/models/photo/predict", files=[("images", ("a.png", buf.getvalue(), "image/png"))])
        assert photo.status_code == 200, photo.text
        assert photo.json()["predictions"][0]["label"] in PHOTO_METADATA["labels"]
        schema = c.get("/docs.json").json()
        (name,) = [p for p in schema["paths"]["/v1/models/{name}/predict"]["post"]["parameters"]
                   if p["name"] == "name"]
        # The configured models (the lecture ones are configured but not in this store).
        assert {"photo", "two-io"} <= set(name["schema"]["enum"]) and "char-rnn" not in name["schema"]["enum"]
        metrics = httpx.get(f"{imported_server.url}/metrics", timeout=10).text
        assert 'model="two-io"' in metrics and 'endpoint="infer"' in metrics
