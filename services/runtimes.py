"""Runtimes behind one small interface: ``run(feeds) -> outputs`` on NumPy arrays.

ONNX Runtime is the default. Its execution providers are chosen once per session, best first:
TensorRT (when allowed and its libraries load) → CUDA (``onnxruntime-gpu`` and a visible GPU) →
CPU. ``device=cuda`` on a machine that cannot give CUDA is a start-up error, never a silent CPU
fallback; ``device=auto`` falls back to the CPU with one logged warning when a GPU runtime is
installed but no GPU is visible. The providers ONNX Runtime really kept are what the runtime
reports (``providers``, ``device``), logged and shown by ``/v1/models`` and
``/v2/models/{m}/config``. On CUDA, batched inputs go through I/O binding. TorchScript is the
alternative runtime; only it imports torch.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from models.artifacts import ONNX_FILE, TORCHSCRIPT_FILE, StoredVersion
from models.catalog import ModelSpec

if TYPE_CHECKING:
    from services.config import ServeConfig

log = logging.getLogger("podium.runtime")

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
# The sonames TensorRT 10 and 8 install; ONNX Runtime's TensorRT provider needs one of them.
TENSORRT_LIBRARIES = ("libnvinfer.so.10", "libnvinfer.so.8")


class DeviceUnavailable(RuntimeError):
    """The configured device cannot be had on this machine: the server refuses to start."""


class Runtime(Protocol):
    kind: str
    device: str
    providers: list[str]

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]: ...


@dataclass(frozen=True)
class DeviceSettings:
    """Everything a runtime needs to pick and configure its device (from ``ServeConfig``)."""

    device: str = "auto"
    cpu_threads: int = 0          # intra-op threads on the CPU provider; 0 = ONNX Runtime's default
    gpu_threads: int = 1          # intra-op threads when a GPU provider runs the graph
    cuda_device_id: int = 0
    tensorrt: bool = True
    tensorrt_cache_dir: str = ""  # "" = no engine cache
    tensorrt_fp16: bool = False
    cudnn_conv_algo_search: str = "HEURISTIC"
    io_binding: bool = True
    gpu_max_batch: int = 1024     # the largest batch the batcher produces on a GPU
    max_sequence: int = 2000      # the longest time axis (char-rnn prompt)


def device_settings(config: ServeConfig, name: str, gpu_max_batch: int) -> DeviceSettings:
    """``gpu_max_batch``: the model kind's default, unless configured for ``name``."""
    return DeviceSettings(
        device=config.device, cpu_threads=config.runtime_threads(),
        gpu_threads=config.gpu_intra_op_threads, cuda_device_id=config.cuda_device_id,
        tensorrt=config.tensorrt, tensorrt_cache_dir=config.tensorrt_cache_path(),
        tensorrt_fp16=config.tensorrt_fp16, cudnn_conv_algo_search=config.cudnn_conv_algo_search,
        io_binding=config.io_binding, gpu_max_batch=config.max_batch(name, "cuda", gpu_max_batch),
        max_sequence=config.max_prompt_chars)


# ------------------------------------------------------------------------------ probes

@functools.cache
def cuda_device_present() -> bool:
    """Whether the CUDA driver is installed and sees at least one GPU (asked once per process)."""
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


@functools.cache
def tensorrt_libraries_present() -> bool:
    for name in TENSORRT_LIBRARIES:
        try:
            ctypes.CDLL(name)
            return True
        except OSError:
            continue
    return False


@functools.cache
def _warn_once(message: str) -> None:
    """Every model of every version asks for providers: the same warning is logged once."""
    log.warning(message)


@functools.cache
def _preload_cuda_libraries() -> None:
    """Load CUDA and cuDNN from the ``nvidia-*-cu12`` wheels (the GPU image has no system CUDA)."""
    import onnxruntime as ort

    ort.preload_dlls()


# ------------------------------------------------------------------------------ choice

def onnx_providers(settings: DeviceSettings) -> list[str]:
    """The execution providers to ask for, best first, given what this machine really has."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if settings.device == "cpu":
        return [CPU]
    if CUDA not in available:
        if settings.device == "cuda":
            raise DeviceUnavailable(
                "device=cuda was asked for, but this onnxruntime has no CUDA provider (providers: "
                f"{', '.join(available)}); install the gpu extra (onnxruntime-gpu and the "
                "nvidia-*-cu12 wheels) or set device=auto/cpu")
        return [CPU]
    if not cuda_device_present():
        if settings.device == "cuda":
            raise DeviceUnavailable("device=cuda was asked for, but no CUDA device is visible "
                                    "(no driver or no GPU); set device=auto to serve on the CPU")
        _warn_once("onnxruntime-gpu is installed but no CUDA device is visible: serving on the "
                   "CPU provider (device=auto)")
        return [CPU]
    chosen = [CUDA, CPU]
    if settings.tensorrt and TENSORRT in available and tensorrt_libraries_present():
        chosen.insert(0, TENSORRT)
    return chosen


def session_threads(settings: DeviceSettings, providers: list[str]) -> int:
    """Intra-op threads: on a GPU the host threads only launch kernels, so few are needed."""
    return settings.gpu_threads if providers[0] != CPU else settings.cpu_threads


def provider_options(settings: DeviceSettings, providers: list[str],
                     inputs: list[tuple[str, list[Any]]]) -> list[dict[str, Any]]:
    """Options per provider, in the order of ``providers``; ``inputs``: (name, shape) of the graph."""
    options: list[dict[str, Any]] = []
    for provider in providers:
        if provider == CUDA:
            options.append({
                "device_id": settings.cuda_device_id,
                # EXHAUSTIVE (ONNX Runtime's default) benchmarks every convolution again for
                # each new input shape, i.e. for each batch size the batcher happens to form.
                "cudnn_conv_algo_search": settings.cudnn_conv_algo_search,
                # Grow the memory arena by what is asked, not by doubling: bounded GPU memory.
                "arena_extend_strategy": "kSameAsRequested"})
        elif provider == TENSORRT:
            options.append(tensorrt_options(settings, inputs))
        else:
            options.append({})
    return options


def tensorrt_options(settings: DeviceSettings, inputs: list[tuple[str, list[Any]]]) -> dict[str, Any]:
    """One optimisation profile covering every batch the batcher forms, and a persistent engine
    cache, so neither a new batch size nor a restart rebuilds an engine."""
    def shapes(batch: int, time: int) -> str:
        dims = {"batch": batch, "time": time}
        return ",".join(f"{name}:" + "x".join(str(d if isinstance(d, int) else dims.get(d, 1))
                                             for d in shape) for name, shape in inputs)

    options: dict[str, Any] = {
        "device_id": settings.cuda_device_id,
        "trt_fp16_enable": settings.tensorrt_fp16,
        "trt_profile_min_shapes": shapes(1, 1),
        "trt_profile_opt_shapes": shapes(settings.gpu_max_batch, 1),
        "trt_profile_max_shapes": shapes(settings.gpu_max_batch, settings.max_sequence)}
    if settings.tensorrt_cache_dir:
        Path(settings.tensorrt_cache_dir).mkdir(parents=True, exist_ok=True)
        options.update({"trt_engine_cache_enable": True,
                        "trt_engine_cache_path": settings.tensorrt_cache_dir,
                        "trt_timing_cache_enable": True,
                        "trt_timing_cache_path": settings.tensorrt_cache_dir})
    return options


def check_device(device: str, runtime: str = "onnx") -> None:
    """Fail fast: a ``device=cuda`` this machine cannot give stops ``bentoml serve`` before any
    worker starts (BentoML restarts a worker that fails at start-up, over and over)."""
    if device != "cuda":
        return
    if runtime == "onnx":
        onnx_providers(DeviceSettings(device))
    else:
        _torch_device(device)


def _torch_device(device: str) -> str:
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailable("device=cuda was asked for, but torch sees no CUDA device; "
                                "set device=auto to serve on the CPU")
    return "cuda" if device == "cuda" or (device == "auto" and torch.cuda.is_available()) else "cpu"


# ------------------------------------------------------------------------------ runtimes

class OnnxRuntime:
    kind = "onnx"

    def __init__(self, path: Path, settings: DeviceSettings | None = None) -> None:
        import onnxruntime as ort

        settings = settings or DeviceSettings()
        wanted = onnx_providers(settings)
        if CUDA in wanted:
            _preload_cuda_libraries()
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        threads = session_threads(settings, wanted)
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            str(path), options, providers=wanted,
            provider_options=provider_options(settings, wanted, _graph_inputs(path, wanted)))
        self.providers = self.session.get_providers()
        if CUDA in wanted and CUDA not in self.providers:
            # onnxruntime-gpu drops a provider whose libraries fail to load and carries on.
            message = f"the CUDA provider failed to start (kept: {', '.join(self.providers)})"
            if settings.device == "cuda":
                raise DeviceUnavailable(f"device=cuda: {message}")
            _warn_once(f"{message}; serving on the CPU provider (device=auto)")
        self.device = "cuda" if CUDA in self.providers else "cpu"
        self.threads = threads
        self._outputs = [o.name for o in self.session.get_outputs()]
        self._bind = IoBinding(self.session, "cuda", settings.cuda_device_id) \
            if settings.io_binding and self.device == "cuda" else None

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        if self._bind is not None:
            return self._bind.run(feeds, self._outputs)
        return self.session.run(self._outputs, feeds)


def _graph_inputs(path: Path, providers: list[str]) -> list[tuple[str, list[Any]]]:
    """Input names and shapes (symbolic dims as names), needed only for TensorRT's profiles."""
    if TENSORRT not in providers:
        return []
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    probe = ort.InferenceSession(str(path), options, providers=[CPU])
    return [(i.name, list(i.shape)) for i in probe.get_inputs()]


class IoBinding:
    """Runs a session with its inputs copied once into device memory and its outputs allocated
    there by ONNX Runtime, then copied back in one step — instead of ``session.run`` staging
    every tensor through pageable host memory per call. ``device`` "cpu" runs the same code path
    on the CPU provider (the tests use it)."""

    def __init__(self, session: Any, device: str, device_id: int = 0) -> None:
        self.session, self.device, self.device_id = session, device, device_id

    def run(self, feeds: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
        import onnxruntime as ort

        binding = self.session.io_binding()
        for name, array in feeds.items():
            value = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), self.device,
                                                     self.device_id)
            binding.bind_ortvalue_input(name, value)
        for name in outputs:
            binding.bind_output(name, self.device, self.device_id)
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()


class TorchScriptRuntime:
    kind = "torchscript"

    def __init__(self, path: Path, settings: DeviceSettings | None = None) -> None:
        import torch

        settings = settings or DeviceSettings()
        self.device = _torch_device(settings.device)
        self.threads = settings.gpu_threads if self.device == "cuda" else settings.cpu_threads
        if self.threads:
            torch.set_num_threads(self.threads)
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


def triton_config(runtime: Runtime) -> dict[str, Any]:
    """How Triton's model configuration says where a model runs: the instance kind, the
    TensorRT accelerator when it is in use, and (a Podium parameter) the providers ONNX Runtime kept."""
    config: dict[str, Any] = {
        "instance_group": [{"kind": "KIND_GPU" if runtime.device == "cuda" else "KIND_CPU", "count": 1}],
        "parameters": {"execution_providers": {"string_value": ",".join(runtime.providers)},
                       "device": {"string_value": runtime.device}}}
    if TENSORRT in runtime.providers:
        config["optimization"] = {"execution_accelerators": {
            "gpu_execution_accelerator": [{"name": "tensorrt"}]}}
    return config


def load_runtime(kind: str, spec: ModelSpec, version: StoredVersion,
                 settings: DeviceSettings | None = None) -> Runtime:
    settings = settings or DeviceSettings()
    if kind == "onnx":
        runtime: Runtime = OnnxRuntime(version.file(ONNX_FILE), settings)
    elif kind == "torchscript":
        runtime = TorchScriptRuntime(version.file(TORCHSCRIPT_FILE), settings)
    else:
        raise ValueError(f"unknown runtime {kind!r}; use onnx or torchscript")
    log.info("%s: %s runtime on %s (providers: %s)", version.tag, runtime.kind, runtime.device,
             ", ".join(runtime.providers))
    return runtime
