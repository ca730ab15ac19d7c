"""Export a trained model to TorchScript and ONNX, and prove both equal to eager PyTorch.

The exported module is the *serving* module: preprocessing inside, the signature of the catalog.
Parity runs on held-out data (the whole test set for classifiers); a run that fails it is not
registered.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from models.artifacts import ONNX_FILE, TORCHSCRIPT_FILE
from models.catalog import ModelSpec
from models.labels import labels_of

MAX_ABS_DIFF = 1e-4  # on logits (or probabilities for diabetes), ONNX Runtime and TorchScript vs eager
MIN_ARGMAX_AGREEMENT = 1.0  # classifiers: every test example must get the same label
ONNX_OPSET = 18


class ParityError(RuntimeError):
    """An exported artefact does not reproduce the eager model within the thresholds."""


def _export_names(spec: ModelSpec) -> tuple[list[str], list[str]]:
    return [t.name for t in spec.inputs], [t.name for t in spec.outputs]


def export_onnx(spec: ModelSpec, module: nn.Module, example: tuple[torch.Tensor, ...], path: Path) -> Path:
    inputs, outputs = _export_names(spec)
    module.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if spec.kind == "text":
            # The TorchScript-based exporter keeps a native ONNX GRU with both batch and time
            # symbolic; the dynamo exporter specialises the output's time axis to the example's.
            torch.onnx.export(
                module, example, str(path), input_names=inputs, output_names=outputs,
                dynamic_axes={"tokens": {0: "batch", 1: "time"}, "state": {1: "batch"},
                              "logits": {0: "batch", 1: "time"}, "state_out": {1: "batch"}},
                opset_version=ONNX_OPSET, dynamo=False, external_data=False)
        else:
            batch = torch.export.Dim("batch", min=1, max=1 << 16)
            torch.onnx.export(
                module, example, str(path), input_names=inputs, output_names=outputs,
                dynamic_shapes=({0: batch},), opset_version=ONNX_OPSET, dynamo=True,
                external_data=False, verbose=False)
    return path


def export_torchscript(module: nn.Module, example: tuple[torch.Tensor, ...], path: Path) -> Path:
    module.eval()
    with torch.no_grad():
        scripted = torch.jit.trace(module, example, check_trace=False)
    scripted.save(str(path))
    return path


def export_all(spec: ModelSpec, module: nn.Module, example: tuple[torch.Tensor, ...],
               out_dir: Path) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    return {"onnx": export_onnx(spec, module, example, out_dir / ONNX_FILE),
            "torchscript": export_torchscript(module, example, out_dir / TORCHSCRIPT_FILE)}


Runner = Callable[[tuple[np.ndarray, ...]], list[np.ndarray]]


def _runners(spec: ModelSpec, module: nn.Module, files: dict[str, Path]) -> dict[str, Runner]:
    import onnxruntime as ort

    inputs, _ = _export_names(spec)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(files["onnx"]), options, providers=["CPUExecutionProvider"])
    scripted = torch.jit.load(str(files["torchscript"]))

    def torch_runner(fn: Callable[..., Any]) -> Runner:
        def run(arrays: tuple[np.ndarray, ...]) -> list[np.ndarray]:
            with torch.no_grad():
                out = fn(*(torch.from_numpy(a) for a in arrays))
            return [o.numpy() for o in (out if isinstance(out, tuple) else (out,))]
        return run

    return {
        "eager": torch_runner(module.eval()),
        "torchscript": torch_runner(scripted),
        "onnxruntime": lambda arrays: session.run(None, dict(zip(inputs, arrays, strict=True))),
    }


def prove_parity(spec: ModelSpec, module: nn.Module, files: dict[str, Path],
                 batches: Iterable[tuple[np.ndarray, ...]],
                 chain_state: bool = False, tolerance: float = MAX_ABS_DIFF) -> dict[str, Any]:
    """Max |Δ| and label agreement of each exported runtime against eager, over all batches.

    ``chain_state`` (char-rnn): each batch's second input is replaced by the previous batch's
    returned state, so the comparison covers long sequences the way a server generates.
    Raises ParityError when a threshold is missed; returns the figures otherwise.
    """
    runners = _runners(spec, module, files)
    worst = {name: 0.0 for name in runners if name != "eager"}
    agree = {name: 0 for name in worst}
    total = 0
    state: dict[str, np.ndarray] = {}
    for batch in batches:
        results = {}
        for name, run in runners.items():
            feed = batch
            if chain_state and name in state:
                feed = (batch[0], state[name])
            results[name] = run(feed)
            if chain_state:
                state[name] = results[name][-1]
        ref = results["eager"]
        ref_label = _labels(ref[0])
        total += ref_label.size
        for name in worst:
            for got, want in zip(results[name], ref, strict=True):
                worst[name] = max(worst[name], float(np.abs(got - want).max()))
            agree[name] += int((_labels(results[name][0]) == ref_label).sum())
    figures: dict[str, Any] = {"threshold_max_abs_diff": tolerance, "compared": total}
    failures = []
    for name in worst:
        agreement = agree[name] / total if total else 0.0
        figures[name] = {"max_abs_diff": worst[name], "label_agreement": agreement}
        if not worst[name] <= tolerance:
            failures.append(f"{name}: max |Δ| {worst[name]:.3g} > {tolerance:g}")
        if spec.is_classifier and agreement < MIN_ARGMAX_AGREEMENT:
            failures.append(f"{name}: label agreement {agreement:.4%} < {MIN_ARGMAX_AGREEMENT:.0%}")
    figures["passed"] = not failures
    if failures:
        raise ParityError(f"{spec.name}: parity failed, version not registered — "
                          + "; ".join(failures))
    return figures


def _labels(output: np.ndarray) -> np.ndarray:
    """The label of every item (every time step of a sequence): the serving label rule."""
    return labels_of(output.reshape(-1, output.shape[-1]))
