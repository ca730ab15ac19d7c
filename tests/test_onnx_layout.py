"""The export's ONNX layout pass (``training.onnx_layout``): convolution channels padded for ONNX
Runtime's NCHWc kernels only where nothing but convolutions read them, and the padded graph's
outputs the original's, in real ONNX Runtime sessions."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from training.onnx_layout import CHANNELWISE, pad_conv_channels, pad_file

ACTIVATIONS = ["Relu", "Sigmoid", "Tanh", "LeakyRelu", "MaxPool", "AveragePool"]


class Graph:
    """A small ONNX graph under construction: input ``x`` [N, channels, size, size]."""

    def __init__(self, channels: int = 1, size: int = 12, seed: int = 0) -> None:
        self.nodes: list = []
        self.inits: list = []
        self.rng = np.random.default_rng(seed)
        self.shape = (channels, size, size)
        self.n = 0

    def _name(self, kind: str) -> str:
        self.n += 1
        return f"{kind}{self.n}"

    def conv(self, x: str, cin: int, cout: int, k: int = 3, bias: bool = True, group: int = 1,
             pads: int = 0) -> str:
        name = self._name("conv")
        w = self.rng.normal(size=(cout, cin // group, k, k)).astype(np.float32)
        self.inits.append(numpy_helper.from_array(w, f"{name}.w"))
        inputs = [x, f"{name}.w"]
        if bias:
            self.inits.append(numpy_helper.from_array(
                self.rng.normal(size=cout).astype(np.float32), f"{name}.b"))
            inputs.append(f"{name}.b")
        self.nodes.append(helper.make_node("Conv", inputs, [name], name=name, group=group,
                                           kernel_shape=[k, k], pads=[pads] * 4))
        return name

    def op(self, op: str, *inputs: str, **attrs: object) -> str:
        name = self._name(op.lower())
        if op in ("MaxPool", "AveragePool"):
            attrs = {"kernel_shape": [2, 2], "strides": [1, 1], **attrs}
        self.nodes.append(helper.make_node(op, list(inputs), [name], name=name, **attrs))
        return name

    def model(self, *outputs: str) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *self.shape])],
            [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
            initializer=self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
        model.ir_version = 9
        return onnx.shape_inference.infer_shapes(model)  # value_info the pass must mend


def run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})


def padded(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[dict]]:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    changed = pad_conv_channels(copy)
    onnx.checker.check_model(copy, full_check=True)  # shapes too: every stale shape was dropped
    return copy, changed


def weight(model: onnx.ModelProto, name: str) -> np.ndarray:
    return next(numpy_helper.to_array(i) for i in model.graph.initializer if i.name == name)


def assert_same_outputs(a: onnx.ModelProto, b: onnx.ModelProto, channels: int = 1) -> None:
    x = np.random.default_rng(1).random((5, channels, 12, 12), np.float32)
    for got, want in zip(run(b, x), run(a, x), strict=True):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_the_mnist_cnn_shape_pads_the_first_convolution_for_the_second() -> None:
    g = Graph()
    c1 = g.conv("x", 1, 10, k=5)
    c2 = g.conv(g.op("Relu", g.op("MaxPool", c1)), 10, 20, k=3)
    model = g.model(g.op("Flatten", c2))
    new, changed = padded(model)
    assert changed == [{"node": c1, "channels": 10, "padded": 16}]
    assert weight(new, f"{c1}.w").shape == (16, 1, 5, 5)
    assert weight(new, f"{c1}.b").shape == (16,)
    assert weight(new, f"{c2}.w").shape == (20, 16, 3, 3)  # read by Flatten: its 20 kept
    assert not weight(new, f"{c1}.w")[10:].any() and not weight(new, f"{c2}.w")[:, 10:].any()
    np.testing.assert_array_equal(weight(new, f"{c1}.w")[:10], weight(model, f"{c1}.w"))
    assert_same_outputs(model, new)


@pytest.mark.parametrize("reader", ["output", "Add", "Concat", "Flatten", "grouped", "Mul"])
def test_a_convolution_read_by_anything_but_convolutions_is_left_alone(reader: str) -> None:
    g = Graph()
    c1 = g.conv("x", 1, 10)
    r = g.op("Relu", c1)
    outs = [g.conv(r, 10, 8)]  # one convolution reads it ...
    if reader == "output":
        outs.append(r)  # ... and so does the graph's output
    elif reader == "Add":
        outs.append(g.op("Add", r, r))
    elif reader == "Concat":
        outs.append(g.op("Concat", r, r, axis=1))
    elif reader == "Flatten":
        outs.append(g.op("Flatten", r))
    elif reader == "grouped":
        outs.append(g.conv(r, 10, 10, group=5))
    else:
        outs.append(g.op("Mul", r, g.op("Relu", r)))
    model = g.model(*outs)
    new, changed = padded(model)
    assert changed == []
    assert new.SerializeToString() == model.SerializeToString()


def test_whole_blocks_and_shared_weights_are_left_alone() -> None:
    g = Graph()
    model = g.model(g.conv(g.op("Relu", g.conv("x", 1, 16)), 16, 12))  # a whole block already
    assert padded(model)[1] == []
    # the reading convolution's weight is also another convolution's: padding it would change both
    g = Graph()
    c1 = g.conv("x", 1, 10)
    c2 = g.conv(g.op("Relu", c1), 10, 4)
    other = g.conv("x", 1, 10)
    g.nodes.append(helper.make_node("Conv", [other, f"{c2}.w"], ["shared"], name="shared",
                                    kernel_shape=[3, 3]))
    model = g.model(c2, "shared")
    new, changed = padded(model)
    assert [c["node"] for c in changed] == []
    assert new.SerializeToString() == model.SerializeToString()
    # a weight that is also a graph input (old exporters list them) may be fed by a caller
    g = Graph()
    c2 = g.conv(g.op("Relu", g.conv("x", 1, 10)), 10, 4)
    model = g.model(c2)
    model.graph.input.append(helper.make_tensor_value_info(f"{c2}.w", TensorProto.FLOAT,
                                                           [4, 10, 3, 3]))
    assert pad_conv_channels(model) == []


def test_branches_through_pooling_all_padded_and_equal() -> None:
    """GoogLeNet's shape: one activation read by three convolutions, one behind a pooling."""
    g = Graph()
    c1 = g.conv("x", 1, 10, pads=1)
    r = g.op("Relu", c1)
    a = g.conv(r, 10, 8, k=1)
    b = g.conv(g.conv(r, 10, 12, k=1), 12, 8, k=3, pads=1)
    c = g.conv(g.op("AveragePool", r, kernel_shape=[3, 3], strides=[1, 1], pads=[1] * 4), 10, 8,
               k=1, bias=False)
    model = g.model(g.op("Concat", a, b, c, axis=1))
    new, changed = padded(model)
    assert {(ch["channels"], ch["padded"]) for ch in changed} == {(10, 16), (12, 16)}
    assert_same_outputs(model, new)


@settings(max_examples=25, deadline=None)
@given(cin=st.integers(1, 5), c1=st.integers(1, 20), c2=st.integers(1, 20),
       k=st.integers(1, 3), pads=st.integers(0, 1), bias=st.booleans(),
       between=st.lists(st.sampled_from(ACTIVATIONS), max_size=3))
def test_any_padded_chain_gives_the_same_outputs(cin: int, c1: int, c2: int, k: int, pads: int,
                                                 bias: bool, between: list[str]) -> None:
    g = Graph(channels=cin, size=12)
    first = g.conv("x", cin, c1, k=k, bias=bias, pads=pads)
    t = first
    for op in between:
        t = g.op(op, t, alpha=0.1) if op == "LeakyRelu" else g.op(op, t)
    second = g.conv(t, c1, c2, k=k, pads=pads)
    model = g.model(g.op("Relu", second))
    new, changed = padded(model)
    assert [(c["channels"], c["padded"]) for c in changed] == (
        [(c1, -(-c1 // 8) * 8)] if c1 % 8 else [])
    assert weight(new, f"{second}.w").shape[1] == -(-c1 // 8) * 8
    assert_same_outputs(model, new, cin)


def test_pad_file_rewrites_only_what_it_padded(tmp_path) -> None:
    g = Graph()
    c1 = g.conv("x", 1, 10)
    model = g.model(g.op("Relu", g.conv(g.op("Relu", c1), 10, 4)))
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    assert [c["padded"] for c in pad_file(path)] == [16]
    assert weight(onnx.load(str(path)), f"{c1}.w").shape[0] == 16
    before = path.read_bytes()
    assert pad_file(path) == []  # a whole block now: nothing to do, the file untouched
    assert path.read_bytes() == before


def test_channelwise_operators_are_per_channel() -> None:
    """Every operator the pass walks through keeps channels apart: a zero channel's change
    reaches no other channel (real ONNX Runtime, each operator alone)."""
    x = np.random.default_rng(2).random((2, 3, 6, 6), np.float32)
    for op in sorted(CHANNELWISE):
        attrs = {"kernel_shape": [2, 2]} if "Pool" in op else {}
        node = helper.make_node(op, ["x"], ["y"], **attrs)
        graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
        model.ir_version = 9
        whole = run(model, x)[0]
        changed = x.copy()
        changed[:, 1] = 0
        got = run(model, changed)[0]
        assert got.shape[1] == 3, op
        np.testing.assert_array_equal(got[:, [0, 2]], whole[:, [0, 2]], err_msg=op)
