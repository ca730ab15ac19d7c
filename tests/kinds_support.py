"""Tiny real ONNX models built here with ``onnx.helper`` (no training) and a data plane serving
them in-process: what the in-process tests of the kinds, codecs and handlers run against.

Each model has a lecture model's signature (diabetes, mnist-fc, char-rnn: the catalog describes
them) or is an imported model described by its own metadata (contract A of issue 14): an image
classifier taking [N,3,8,8] photos and a generic model with two inputs and two outputs of
different dtypes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from models.artifacts import ONNX_FILE, VOCAB_FILE, StoredVersion, sha256_file
from services.config import load_config
from services.dataplane import DataPlane
from services.repository import Repository

OPSET = 17
VOCAB = ["<unk>", "a", "b", "c", " "]
RNG = np.random.default_rng(0)


def _save(graph: onnx.GraphProto, path: Path) -> None:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)


def _init(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(array, name)


def _value(name: str, elem: int, shape: list[Any]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def diabetes_graph(path: Path) -> np.ndarray:
    """features [N,8] → probability = sigmoid(features · w) [N,1]; returns w."""
    w = RNG.normal(size=(8, 1)).astype(np.float32) * 0.1
    _save(helper.make_graph(
        [helper.make_node("MatMul", ["features", "w"], ["z"]),
         helper.make_node("Sigmoid", ["z"], ["probability"])], "diabetes",
        [_value("features", TensorProto.FLOAT, ["N", 8])],
        [_value("probability", TensorProto.FLOAT, ["N", 1])], [_init("w", w)]), path)
    return w


def classifier_graph(path: Path, input_name: str, chw: tuple[int, int, int], classes: int,
                     output_name: str) -> np.ndarray:
    """image [N,C,H,W] → Flatten → · w [C*H*W, classes]; returns w."""
    w = RNG.normal(size=(int(np.prod(chw)), classes)).astype(np.float32)
    _save(helper.make_graph(
        [helper.make_node("Flatten", [input_name], ["flat"], axis=1),
         helper.make_node("MatMul", ["flat", "w"], [output_name])], "classifier",
        [_value(input_name, TensorProto.FLOAT, ["N", *chw])],
        [_value(output_name, TensorProto.FLOAT, ["N", classes])], [_init("w", w)]), path)
    return w


def char_graph(path: Path, hidden: int = 4) -> None:
    """char-rnn's signature without a GRU: logits = embedding[tokens] [N,T,V]; state passes through."""
    embedding = RNG.normal(size=(len(VOCAB), len(VOCAB))).astype(np.float32)
    _save(helper.make_graph(
        [helper.make_node("Gather", ["embedding", "tokens"], ["logits"], axis=0),
         helper.make_node("Identity", ["state"], ["state_out"])], "char",
        [_value("tokens", TensorProto.INT64, ["N", "T"]),
         _value("state", TensorProto.FLOAT, [1, "N", hidden])],
        [_value("logits", TensorProto.FLOAT, ["N", "T", len(VOCAB)]),
         _value("state_out", TensorProto.FLOAT, [1, "N", hidden])], [_init("embedding", embedding)]), path)


def two_io_graph(path: Path) -> None:
    """Two inputs, two outputs of different dtypes: x FP32 [N,3], k INT64 [N] →
    y = 2x FP32 [N,3], m = k + 1 INT64 [N]."""
    _save(helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["y"]), helper.make_node("Add", ["k", "one"], ["m"])],
        "two_io",
        [_value("x", TensorProto.FLOAT, ["N", 3]), _value("k", TensorProto.INT64, ["N"])],
        [_value("y", TensorProto.FLOAT, ["N", 3]), _value("m", TensorProto.INT64, ["N"])],
        [_init("two", np.array(2.0, np.float32)), _init("one", np.array(1, np.int64))]), path)


def tensor(name: str, dtype: str, shape: list[int]) -> dict[str, Any]:
    return {"name": name, "dtype": dtype, "shape": shape, "description": ""}


# Contract A metadata of the two imported models.
PHOTO_METADATA = {
    "kind": "image", "description": "a 4-class classifier of 8×8 RGB photos",
    "signature": {"inputs": [tensor("pixels", "float32", [-1, 3, 8, 8])],
                  "outputs": [tensor("scores", "float32", [-1, 4])]},
    "batch_axes": {"inputs": {"pixels": 0}, "outputs": {"scores": 0}},
    "labels": ["cat", "dog", "fish", "bird"],
    "preprocessing": {"image": {"channels": 3, "height": 8, "width": 8, "mean": [0.5, 0.5, 0.5],
                                "std": [0.25, 0.25, 0.25], "digits": False}},
}
TWO_IO_METADATA = {
    "kind": "tensor", "description": "two inputs and two outputs of different dtypes",
    "signature": {"inputs": [tensor("x", "float32", [-1, 3]), tensor("k", "int64", [-1])],
                  "outputs": [tensor("y", "float32", [-1, 3]), tensor("m", "int64", [-1])]},
    "batch_axes": {"inputs": {"x": 0, "k": 0}, "outputs": {"y": 0, "m": 0}},
}


def build_models(root: Path) -> dict[str, tuple[dict[str, Path], dict[str, Any]]]:
    """Every test model: name → (files, metadata), written under ``root``."""
    out: dict[str, tuple[dict[str, Path], dict[str, Any]]] = {}
    for name, build, metadata in (
            ("diabetes", diabetes_graph, {}),
            ("mnist-fc", lambda p: classifier_graph(p, "image", (1, 28, 28), 10, "logits"), {}),
            ("char-rnn", char_graph, {"preprocessing": {"architecture": {"layers": 1, "hidden": 4}}}),
            ("photo", lambda p: classifier_graph(p, "pixels", (3, 8, 8), 4, "scores"), PHOTO_METADATA),
            ("two-io", two_io_graph, TWO_IO_METADATA)):
        folder = root / name
        folder.mkdir(parents=True)
        build(folder / ONNX_FILE)
        files = {"onnx": folder / ONNX_FILE}
        if name == "char-rnn":
            (folder / VOCAB_FILE).write_text(json.dumps({"chars": VOCAB}))
            files["vocab"] = folder / VOCAB_FILE
        out[name] = (files, metadata)
    return out


def stored_version(name: str, files: dict[str, Path], metadata: dict[str, Any]) -> StoredVersion:
    """A version as the store would give it back (checksums recorded), without the store."""
    checksums = {path.name: sha256_file(path) for path in files.values()}
    folder = next(iter(files.values())).parent
    return StoredVersion(name, "v1", folder, {**metadata, "sha256": checksums}, "2026-01-01T00:00:00")


@contextmanager
def plane_of(root: Path, metrics: Any = None, **settings: Any) -> Iterator[DataPlane]:
    """A data plane serving every test model in-process (no rollout)."""
    config = load_config("/nonexistent", models=["diabetes", "mnist-fc", "char-rnn"], **settings)
    repository = Repository(config, metrics)
    for name, (files, metadata) in build_models(root).items():
        loaded = repository.load(stored_version(name, files, metadata))
        repository.set_stable(name, loaded.version)
    repository.ready = True
    plane = DataPlane(config)
    plane.repository, plane.metrics = repository, metrics
    try:
        yield plane
    finally:
        for versions in repository.loaded.values():
            for loaded in versions.values():
                loaded.batcher.close()
