"""A layout pass over an exported ONNX graph: convolution channels padded for ONNX Runtime's CPU
kernels.

ONNX Runtime's CPU provider runs a convolution in its blocked NCHWc layout (``NchwcTransformer``,
graph optimization level ALL) only when the channel counts are whole blocks (8 floats on AVX2);
otherwise it falls back to im2col and a small GEMM. mnist-cnn's second convolution reads the
first one's 10 channels and stayed on the slow path: 29-35 µs of an image's 55-59 µs at batches
of 8 and 32 (ONNX Runtime 1.32, 1 thread, its per-node profile). With the 10 channels padded to
16 — the first convolution given 6 more output channels of zero weights and zero bias, the second
6 more input channels of zero weights — both run NCHWc: an image at batch 32 took 32-36 µs
instead of 52-56, old and padded sessions alternating in one process (results/bench/NOTES.md).
The padded channels carry exact zeros (or, through an activation, a constant) into weights that
are all zero, so the outputs are the same sums; the export's parity proof then runs on the padded
file as on any other.

A convolution is padded only when nothing but convolutions read its channels: its output passes
only through channel-wise operators (``CHANNELWISE``: activations, pooling) with one data input,
and every path ends in a plain (``group`` 1) convolution that reads it as its data input. Any
other reader (a reshape, a concatenation, an addition, a graph output), a grouped convolution, a
weight not stored in the graph, shared with another node or also a graph input (a caller could
feed it), leaves that convolution as it was.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

CHANNEL_MULTIPLE = 8  # ONNX Runtime's NCHWc block on AVX2 CPUs (16 on AVX-512: 10 → 16 is both)
# Operators that act on each channel alone, element by element or by pooling within the channel,
# and keep the channel count: a zero channel stays one channel, whatever its values become.
CHANNELWISE = frozenset({"Relu", "LeakyRelu", "Sigmoid", "Tanh", "Elu", "Selu", "HardSigmoid",
                         "Softplus", "MaxPool", "AveragePool", "LpPool"})


def _attribute(node: Any, name: str, default: Any) -> Any:
    import onnx

    for attribute in node.attribute:
        if attribute.name == name:
            return onnx.helper.get_attribute_value(attribute)
    return default


def _own(name: str, weights: dict[str, Any], readers: dict[str, list[Any]]) -> bool:
    """Whether ``name`` is a weight stored in the graph (not fed) that one input alone reads."""
    return name in weights and len(readers[name]) == 1


def _plain_conv(node: Any, weights: dict[str, Any], readers: dict[str, list[Any]]) -> bool:
    """A convolution of one group whose weight is its own (``_own``): one the pass may pad."""
    return node.op_type == "Conv" and _attribute(node, "group", 1) == 1 \
        and _own(node.input[1], weights, readers)


def _plan(conv: Any, readers: dict[str, list[Any]], weights: dict[str, Any],
          outputs: set[str]) -> tuple[list[str], list[Any]] | None:
    """The tensors between ``conv`` and the convolutions that read its channels, and those
    convolutions; None when something else reads them (module docstring)."""
    tensors, convs, todo = [], [], [conv.output[0]]
    while todo:
        tensor = todo.pop()
        if tensor in outputs or not readers.get(tensor):
            return None
        tensors.append(tensor)
        for node in readers[tensor]:
            if list(node.input).count(tensor) != 1 or node.input[0] != tensor:
                return None
            if node.op_type == "Conv":
                if not _plain_conv(node, weights, readers):
                    return None
                convs.append(node)
            elif node.op_type in CHANNELWISE and len(node.input) == 1 and len(node.output) == 1:
                todo.append(node.output[0])
            else:
                return None
    return tensors, convs


def pad_conv_channels(model: Any, multiple: int = CHANNEL_MULTIPLE) -> list[dict[str, Any]]:
    """Pad, in place, the output channels of every convolution of ``model`` (an
    ``onnx.ModelProto``) whose channels only convolutions read, to a multiple of ``multiple``
    (module docstring). Returns what was padded: ``[{"node", "channels", "padded"}]``."""
    from onnx import numpy_helper

    graph = model.graph
    fed = {i.name for i in graph.input}  # an initializer also listed as an input may be fed
    weights = {init.name: init for init in graph.initializer if init.name not in fed}
    readers: dict[str, list[Any]] = {}  # a node once per input naming the tensor
    for node in graph.node:
        for name in node.input:
            if name:
                readers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}
    changed: list[dict[str, Any]] = []
    stale: set[str] = set()  # tensors between a padded convolution and its readers
    for conv in list(graph.node):
        if not _plain_conv(conv, weights, readers):
            continue
        bias = conv.input[2] if len(conv.input) > 2 and conv.input[2] else None
        if bias is not None and not _own(bias, weights, readers):
            continue
        kernel = numpy_helper.to_array(weights[conv.input[1]])
        channels = kernel.shape[0]
        padded = -(-channels // multiple) * multiple
        if padded == channels:
            continue
        plan = _plan(conv, readers, weights, outputs)
        if plan is None:
            continue
        tensors, convs = plan
        extra = padded - channels
        _replace(weights[conv.input[1]], np.pad(kernel, [(0, extra)] + [(0, 0)] * (kernel.ndim - 1)))
        if bias is not None:
            _replace(weights[bias], np.pad(numpy_helper.to_array(weights[bias]), (0, extra)))
        for reader in convs:
            read = numpy_helper.to_array(weights[reader.input[1]])
            _replace(weights[reader.input[1]],
                     np.pad(read, [(0, 0), (0, extra)] + [(0, 0)] * (read.ndim - 2)))
        stale.update(tensors)
        changed.append({"node": conv.name or conv.output[0], "channels": channels, "padded": padded})
    if stale:  # the shapes recorded for those tensors name the old channel counts
        kept = [info for info in graph.value_info if info.name not in stale]
        del graph.value_info[:]
        graph.value_info.extend(kept)
    return changed


def _replace(initializer: Any, array: np.ndarray) -> None:
    from onnx import numpy_helper

    initializer.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(array), initializer.name))


def note(model: str, change: dict[str, Any]) -> str:
    """The line an export or import prints for one padded convolution."""
    return (f"podium: {model}: ONNX convolution {change['node']}: {change['channels']} → "
            f"{change['padded']} output channels (zero-padded for ONNX Runtime's NCHWc kernels)")


def pad_file(path: Path, multiple: int = CHANNEL_MULTIPLE) -> list[dict[str, Any]]:
    """``pad_conv_channels`` on the ONNX file at ``path``, rewritten (checked) only if anything
    was padded."""
    import onnx

    model = onnx.load(str(path))
    changed = pad_conv_channels(model, multiple)
    if changed:
        onnx.checker.check_model(model)
        onnx.save(model, str(path))
    return changed
