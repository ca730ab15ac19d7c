"""Models a user would bring, built by the tests themselves (no downloads, no pretrained
weights): a tiny CNN on [N,3,32,32] and one of mnist-cnn's shape on [N,1,28,28], each exported as
ONNX and as TorchScript, hand-made ONNX graphs
(``onnx.helper``) for every rule of ``podium import``, garbage bytes, example inputs and labels."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper
from torch import nn

OPSET = [helper.make_opsetid("", 18)]


def _graph_file(path: Path, nodes: list, inputs: list, outputs: list, initializers: tuple = (),
                opsets: list = OPSET) -> Path:
    graph = helper.make_graph(nodes, path.stem, inputs, outputs, initializer=list(initializers))
    onnx.save(helper.make_model(graph, opset_imports=opsets, ir_version=9), path)
    return path


def _tensor(name: str, dtype: int, shape: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, shape)


class Noisy(nn.Module):
    """Its output is random, so no export can reproduce it: a parity failure that is real."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.rand_like(x)


def _export(module: nn.Module, example: torch.Tensor, d: Path, stem: str, input_name: str) -> None:
    """What a user does: the TorchScript-based exporter with a dynamic batch (``stem``.onnx) and
    torch.jit.script (``stem``.pt); the example input beside them (``stem``-x.npy)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example,), str(d / f"{stem}.onnx"), input_names=[input_name],
                          output_names=["logits"],
                          dynamic_axes={input_name: {0: "n"}, "logits": {0: "n"}},
                          opset_version=18, dynamo=False)
        torch.jit.script(module).save(str(d / f"{stem}.pt"))
    np.save(d / f"{stem}-x.npy", example.numpy())


def build_user_models(d: Path) -> dict[str, Path]:
    """Every model file, example input and labels file of the import tests, written into ``d``."""
    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(4, 5)).eval()
    _export(cnn, torch.randn(2, 3, 32, 32), d, "cnn", "pixels")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.script(Noisy()).save(str(d / "noisy.pt"))
    # mnist-cnn's shape: the second convolution reads 10 channels, which an import pads to 16.
    lenet = nn.Sequential(nn.Conv2d(1, 10, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(10, 20, 5),
                          nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(320, 10)).eval()
    _export(lenet, torch.randn(2, 1, 28, 28), d, "lenet", "image")
    np.save(d / "noisy-x.npy", np.zeros((2, 4), np.float32))
    f32, i64 = TensorProto.FLOAT, TensorProto.INT64
    _graph_file(d / "two.onnx", [helper.make_node("Add", ["a", "a"], ["total"]),
                                 helper.make_node("Mul", ["b", "b"], ["count"])],
                [_tensor("a", f32, ["n", 3]), _tensor("b", i64, ["n", 2])],
                [_tensor("total", f32, ["n", 3]), _tensor("count", i64, ["n", 2])])
    _graph_file(d / "fixed.onnx", [helper.make_node("Relu", ["x"], ["y"])],
                [_tensor("x", f32, [2, 3])], [_tensor("y", f32, [2, 3])])
    _graph_file(d / "unknown-op.onnx", [helper.make_node("Frobnicate", ["x"], ["y"], domain="com.example")],
                [_tensor("x", f32, ["n", 3])], [_tensor("y", f32, ["n", 3])],
                opsets=[*OPSET, helper.make_opsetid("com.example", 1)])
    _graph_file(d / "digits.onnx", [helper.make_node("Flatten", ["image"], ["flat"]),
                                    helper.make_node("MatMul", ["flat", "w"], ["logits"])],
                [_tensor("image", f32, ["n", 1, 28, 28])], [_tensor("logits", f32, ["n", 10])],
                [helper.make_tensor("w", f32, [784, 10], np.full(7840, 0.01, np.float32))])
    _graph_file(d / "rows.onnx", [helper.make_node("ReduceMean", ["features", "axes"], ["p"])],
                [_tensor("features", f32, ["n", 8])], [_tensor("p", f32, ["n", 1])],
                [helper.make_tensor("axes", i64, [1], [1])])
    _graph_file(d / "log.onnx", [helper.make_node("Log", ["x"], ["y"])],
                [_tensor("x", f32, ["n", 3])], [_tensor("y", f32, ["n", 3])])
    _graph_file(d / "words.onnx", [helper.make_node("Identity", ["text"], ["same"])],
                [_tensor("text", TensorProto.STRING, ["n"])], [_tensor("same", TensorProto.STRING, ["n"])])
    _graph_file(d / "constant.onnx", [helper.make_node("Constant", [], ["y"], value=helper.make_tensor(
        "c", f32, [1], [1.0]))], [], [_tensor("y", f32, [1])])
    _graph_file(d / "collapse.onnx", [helper.make_node("ReduceSum", ["x"], ["y"], keepdims=1)],
                [_tensor("x", f32, [2, 3])], [_tensor("y", f32, [1, 1])])
    (d / "garbage.onnx").write_bytes(b"\xff\xfe this is not a model \x00\x01" * 64)
    (d / "five.txt").write_text("cat\ndog\n\nbird\nfish\nfrog\n")
    (d / "three.json").write_text(json.dumps(["a", "b", "c"]))
    return {p.name: p for p in d.iterdir()}
