"""Runtimes behind one small interface: ``run(feeds) -> outputs`` on NumPy arrays.

ONNX Runtime is the default: CUDA (and TensorRT, where its libraries are installed) execution
providers when a GPU and ``onnxruntime-gpu`` are present, the CPU provider otherwise — chosen
automatically and logged. TorchScript is the alternative; only it imports torch.
"""

from __future__ import annotations

import ctypes.util
import logging
from pathlib import Path
from typing import Protocol

import numpy as np

from models.artifacts import ONNX_FILE, TORCHSCRIPT_FILE, StoredVersion
from models.catalog import ModelSpec

log = logging.getLogger("podium.runtime")


class Runtime(Protocol):
    kind: str
    device: str
    providers: list[str]

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]: ...


def onnx_providers(device: str) -> list[str]:
    """The execution providers to ask for, best first, given what this machine really has."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device == "cpu" or "CUDAExecutionProvider" not in available:
        if device == "cuda":
            raise RuntimeError("device=cuda was asked for, but this onnxruntime has no CUDA "
                               "provider; install the gpu extra (onnxruntime-gpu)")
        return ["CPUExecutionProvider"]
    if not _cuda_device_present():
        if device == "cuda":
            raise RuntimeError("device=cuda was asked for, but no CUDA device is visible")
        return ["CPUExecutionProvider"]
    chosen = []
    if "TensorrtExecutionProvider" in available and ctypes.util.find_library("nvinfer"):
        chosen.append("TensorrtExecutionProvider")
    return [*chosen, "CUDAExecutionProvider", "CPUExecutionProvider"]


def _cuda_device_present() -> bool:
    lib = ctypes.util.find_library("cuda")
    if not lib:
        return False
    try:
        cuda = ctypes.CDLL(lib)
        count = ctypes.c_int(0)
        return cuda.cuInit(0) == 0 and cuda.cuDeviceGetCount(ctypes.byref(count)) == 0 \
            and count.value > 0
    except OSError:
        return False


class OnnxRuntime:
    kind = "onnx"

    def __init__(self, path: Path, device: str = "auto", threads: int = 0) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=onnx_providers(device))
        self.providers = self.session.get_providers()
        self.device = "cuda" if "CUDAExecutionProvider" in self.providers else "cpu"
        self._outputs = [o.name for o in self.session.get_outputs()]

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run(self._outputs, feeds)


class TorchScriptRuntime:
    kind = "torchscript"

    def __init__(self, path: Path, device: str = "auto", threads: int = 0) -> None:
        import torch

        if threads:
            torch.set_num_threads(threads)
        use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
        self.device = "cuda" if use_cuda else "cpu"
        self.providers = [f"torch-{self.device}"]
        self._torch = torch
        self.module = torch.jit.load(str(path), map_location=self.device).eval()

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        torch = self._torch
        with torch.inference_mode():
            args = [torch.from_numpy(a).to(self.device) for a in feeds.values()]
            out = self.module(*args)
        out = out if isinstance(out, tuple) else (out,)
        return [o.cpu().numpy() for o in out]


def load_runtime(kind: str, spec: ModelSpec, version: StoredVersion, device: str = "auto",
                 threads: int = 0) -> Runtime:
    if kind == "onnx":
        runtime: Runtime = OnnxRuntime(version.file(ONNX_FILE), device, threads)
    elif kind == "torchscript":
        runtime = TorchScriptRuntime(version.file(TORCHSCRIPT_FILE), device, threads)
    else:
        raise ValueError(f"unknown runtime {kind!r}; use onnx or torchscript")
    log.info("%s: %s runtime on %s (providers: %s)", version.tag, runtime.kind, runtime.device,
             ", ".join(runtime.providers))
    return runtime
