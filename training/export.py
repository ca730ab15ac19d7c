"""Export a trained model to TorchScript and ONNX, and prove both equal to eager PyTorch.

The exported module is the *serving* module: preprocessing inside, the signature of the catalog.
Parity runs on held-out data (the whole test set for classifiers); a run that fails it is not
registered. torch is imported inside the functions that use it: `podium import model.onnx` uses
the ONNX Runtime parts only and starts seconds sooner without it.
"""

from __future__ import annotations

import functools
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from models.artifacts import ONNX_FILE, TORCHSCRIPT_FILE
from models.catalog import ModelSpec
from models.labels import labels_of
from training.onnx_layout import note, pad_file

if TYPE_CHECKING:
    import torch
    from torch import nn

MAX_ABS_DIFF = 1e-4  # on logits (or probabilities for diabetes), ONNX Runtime and TorchScript vs eager
MIN_ARGMAX_AGREEMENT = 1.0  # classifiers: every test example must get the same label
ONNX_OPSET = 18


class ParityError(RuntimeError):
    """An exported artefact does not reproduce the eager model within the thresholds."""


def _export_names(spec: ModelSpec) -> tuple[list[str], list[str]]:
    return [t.name for t in spec.inputs], [t.name for t in spec.outputs]


def export_onnx(spec: ModelSpec, module: nn.Module, example: tuple[torch.Tensor, ...], path: Path) -> Path:
    """The serving module as ONNX, its convolutions' channels padded for ONNX Runtime's CPU
    kernels where only convolutions read them (``training.onnx_layout``); the parity proof runs
    on this file."""
    inputs, outputs = _export_names(spec)
    write_onnx(module, example, path, inputs, outputs, dynamic_axes=spec.export_axes)
    for change in pad_file(path):
        print(note(spec.name, change), file=sys.stderr, flush=True)
    return path


def write_onnx(module: nn.Module, example: tuple[torch.Tensor, ...], path: Path, inputs: list[str],
               outputs: list[str], dynamic_axes: dict[str, dict[int, str]] | None = None) -> Path:
    """Write one self-contained ONNX file of ``module`` at opset ONNX_OPSET.

    With ``dynamic_axes`` the TorchScript-based exporter runs (it is the one that takes
    ScriptModules and keeps recurrent ops whole); without, the dynamo exporter with a dynamic
    batch on axis 0 of the one input.
    """
    import torch

    module.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamic_axes is not None:
            torch.onnx.export(module, example, str(path), input_names=inputs, output_names=outputs,
                              dynamic_axes=dynamic_axes, opset_version=ONNX_OPSET, dynamo=False,
                              external_data=False)
        else:
            batch = torch.export.Dim("batch", min=1, max=1 << 16)
            torch.onnx.export(
                module, example, str(path), input_names=inputs, output_names=outputs,
                dynamic_shapes=({0: batch},), opset_version=ONNX_OPSET, dynamo=True,
                external_data=False, verbose=False)
    return path


# torch 2.14 marks all of torch.jit deprecated and says so on every trace, trace_method and load:
# three FutureWarnings per exported model. Podium writes and reads TorchScript on purpose (its
# TorchScript runtime serves model.ts), so those warnings become one line per process instead.
_JIT_DEPRECATED = r"`torch\.jit\.\w+` is deprecated"
TORCHSCRIPT_NOTE = ("podium: note: torch marks torch.jit (TorchScript) as deprecated; Podium still "
                    "writes and reads model.ts on purpose, for its TorchScript runtime "
                    "(ONNX Runtime stays the default)")


@functools.cache
def _note_torchscript_once() -> None:
    print(TORCHSCRIPT_NOTE, file=sys.stderr, flush=True)


@contextmanager
def deliberate_torchscript() -> Iterator[None]:
    """Use TorchScript without torch's deprecation flood: one note per process, others untouched."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_JIT_DEPRECATED, category=FutureWarning)
        yield
    _note_torchscript_once()


def load_torchscript(path: Path) -> torch.jit.ScriptModule:
    import torch

    with deliberate_torchscript():
        return torch.jit.load(str(path), map_location="cpu").eval()


def export_torchscript(module: nn.Module, example: tuple[torch.Tensor, ...], path: Path) -> Path:
    import torch

    module.eval()
    with torch.no_grad(), deliberate_torchscript():
        scripted = torch.jit.trace(module, example, check_trace=False)
    scripted.save(str(path))
    return path


def export_all(spec: ModelSpec, module: nn.Module, example: tuple[torch.Tensor, ...],
               out_dir: Path) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    return {"onnx": export_onnx(spec, module, example, out_dir / ONNX_FILE),
            "torchscript": export_torchscript(module, example, out_dir / TORCHSCRIPT_FILE)}


Runner = Callable[[tuple[np.ndarray, ...]], list[np.ndarray]]


def torch_runner(fn: Callable[..., Any]) -> Runner:
    """Run a torch module (eager or TorchScript) on NumPy arrays; a tuple output becomes a list."""
    import torch

    def run(arrays: tuple[np.ndarray, ...]) -> list[np.ndarray]:
        with torch.no_grad():
            out = fn(*(torch.from_numpy(a) for a in arrays))
        return [o.numpy() for o in (out if isinstance(out, tuple | list) else (out,))]
    return run


def onnx_runner(path: Path, inputs: list[str]) -> Runner:
    """Run an ONNX graph in ONNX Runtime on the CPU, feeding ``inputs`` in order."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda arrays: session.run(None, dict(zip(inputs, arrays, strict=True)))


def _runners(spec: ModelSpec, module: nn.Module, files: dict[str, Path]) -> dict[str, Runner]:
    return {
        "eager": torch_runner(module.eval()),
        "torchscript": torch_runner(load_torchscript(files["torchscript"])),
        "onnxruntime": onnx_runner(files["onnx"], _export_names(spec)[0]),
    }


def prove_parity(spec: ModelSpec, module: nn.Module, files: dict[str, Path],
                 batches: Iterable[tuple[np.ndarray, ...]],
                 chain_state: bool = False, tolerance: float = MAX_ABS_DIFF) -> dict[str, Any]:
    """Max |Δ| and label agreement of each exported runtime against eager, over all batches.

    ``chain_state`` (char-rnn): each batch's second input is replaced by the previous batch's
    returned state, so the comparison covers long sequences the way a server generates.
    Raises ParityError when a threshold is missed; returns the figures otherwise.
    """
    return compare_runtimes(spec.name, _runners(spec, module, files), batches,
                            enforce_labels=spec.is_classifier, chain_state=chain_state,
                            tolerance=tolerance)


def compare_runtimes(name: str, runners: dict[str, Runner], batches: Iterable[tuple[np.ndarray, ...]],
                     enforce_labels: bool, chain_state: bool = False,
                     tolerance: float = MAX_ABS_DIFF) -> dict[str, Any]:
    """The parity proof: every runner but ``eager`` against ``eager`` (see prove_parity).

    The labels of the first output (the serving label rule) must agree everywhere when
    ``enforce_labels`` (classifiers); otherwise their agreement is only reported.
    """
    worst = {runtime: 0.0 for runtime in runners if runtime != "eager"}
    agree = {runtime: 0 for runtime in worst}
    total = 0
    state: dict[str, np.ndarray] = {}
    for batch in batches:
        results = {}
        for runtime, run in runners.items():
            feed = batch
            if chain_state and runtime in state:
                feed = (batch[0], state[runtime])
            results[runtime] = run(feed)
            if chain_state:
                state[runtime] = results[runtime][-1]
        ref = results["eager"]
        ref_label = _labels(ref[0])
        total += ref_label.size
        for runtime in worst:
            for got, want in zip(results[runtime], ref, strict=True):
                worst[runtime] = max(worst[runtime], _max_abs_diff(got, want))
            label = _labels(results[runtime][0])
            if label.shape == ref_label.shape:  # else max |Δ| is already infinite
                agree[runtime] += int((label == ref_label).sum())
    figures: dict[str, Any] = {"threshold_max_abs_diff": tolerance, "compared": total}
    failures = []
    for runtime in worst:
        agreement = agree[runtime] / total if total else 0.0
        figures[runtime] = {"max_abs_diff": worst[runtime], "label_agreement": agreement}
        if not worst[runtime] <= tolerance:
            failures.append(f"{runtime}: max |Δ| {worst[runtime]:.3g} > {tolerance:g}")
        if enforce_labels and agreement < MIN_ARGMAX_AGREEMENT:
            failures.append(f"{runtime}: label agreement {agreement:.4%} < {MIN_ARGMAX_AGREEMENT:.0%}")
    figures["passed"] = not failures
    if failures:
        raise ParityError(f"{name}: parity failed, version not registered — " + "; ".join(failures))
    return figures


def _max_abs_diff(got: np.ndarray, want: np.ndarray) -> float:
    if got.shape != want.shape:  # e.g. an export that fixed the batch size of the example
        return float("inf")
    return float(np.abs(got.astype(np.float64) - want.astype(np.float64)).max(initial=0.0))


def _labels(output: np.ndarray) -> np.ndarray:
    """The label of every item (every time step of a sequence): the serving label rule."""
    return labels_of(output.reshape(-1, output.shape[-1]))
