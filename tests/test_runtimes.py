"""Device and execution-provider choice (services/runtimes.py), GPU batch limits and warm-up sizes.

The provider list and the CUDA probe are faked (this machine has no GPU); sessions, I/O binding
and the served configuration are real: ONNX Runtime on a small real graph, and the shared real
server of the tiny store.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from services import runtimes
from services.config import load_config
from services.kinds import KINDS
from services.launch import Server
from services.repository import warm_batch_sizes
from services.runtimes import (
    CPU,
    CUDA,
    TENSORRT,
    DeviceSettings,
    DeviceUnavailable,
    IoBinding,
    OnnxRuntime,
    onnx_providers,
    provider_options,
    session_threads,
    triton_config,
)

ALL = [TENSORRT, CUDA, CPU]


@pytest.fixture(autouse=True)
def fresh_probes() -> None:
    """The probes and the fallback warning are once per process: start every test afresh."""
    for cached in (runtimes.cuda_device_present, runtimes.tensorrt_libraries_present,
                   runtimes._warn_once):
        cached.cache_clear()


def machine(monkeypatch: pytest.MonkeyPatch, available: list[str], gpu: bool,
            tensorrt_libs: bool = True) -> None:
    """Pretend this machine's onnxruntime offers ``available`` and a GPU is (not) visible."""
    monkeypatch.setattr(ort, "get_available_providers", lambda: list(available))
    monkeypatch.setattr(runtimes, "cuda_device_present", lambda: gpu)
    monkeypatch.setattr(runtimes, "tensorrt_libraries_present", lambda: tensorrt_libs)


@pytest.fixture(scope="module")
def graph(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real ONNX graph with a dynamic batch axis and two outputs: softmax(x·W) and relu(x)."""
    w = np.arange(12, dtype=np.float32).reshape(4, 3) / 10
    nodes = [helper.make_node("MatMul", ["x", "w"], ["xw"]),
             helper.make_node("Softmax", ["xw"], ["probabilities"], axis=1),
             helper.make_node("Relu", ["x"], ["relu"])]
    model = helper.make_model(
        helper.make_graph(nodes, "tiny",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
                          [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 3]),
                           helper.make_tensor_value_info("relu", TensorProto.FLOAT, ["batch", 4])],
                          [helper.make_tensor("w", TensorProto.FLOAT, [4, 3], w.ravel())]),
        opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    path = tmp_path_factory.mktemp("graph") / "tiny.onnx"
    onnx.save(model, path)
    return path


# ------------------------------------------------------------------------------ choice and order

def test_order_is_tensorrt_then_cuda_then_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    machine(monkeypatch, [CPU, CUDA, TENSORRT], gpu=True)  # onnxruntime lists them in any order
    assert onnx_providers(DeviceSettings("auto")) == ALL
    assert onnx_providers(DeviceSettings("cuda")) == ALL


def test_tensorrt_only_when_allowed_and_its_libraries_load(monkeypatch: pytest.MonkeyPatch) -> None:
    machine(monkeypatch, ALL, gpu=True, tensorrt_libs=False)
    assert onnx_providers(DeviceSettings("auto")) == [CUDA, CPU]
    machine(monkeypatch, ALL, gpu=True)
    assert onnx_providers(DeviceSettings("auto", tensorrt=False)) == [CUDA, CPU]
    machine(monkeypatch, [CUDA, CPU], gpu=True)
    assert onnx_providers(DeviceSettings("auto")) == [CUDA, CPU]


def test_device_cpu_is_cpu_even_with_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    machine(monkeypatch, ALL, gpu=True)
    assert onnx_providers(DeviceSettings("cpu")) == [CPU]


def test_device_cuda_without_a_cuda_runtime_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    machine(monkeypatch, [CPU], gpu=True)
    with pytest.raises(DeviceUnavailable, match="no CUDA provider.*install the gpu extra"):
        onnx_providers(DeviceSettings("cuda"))


def test_device_cuda_without_a_gpu_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    machine(monkeypatch, ALL, gpu=False)
    with pytest.raises(DeviceUnavailable, match="no CUDA device is visible"):
        onnx_providers(DeviceSettings("cuda"))


def test_auto_without_a_gpu_falls_back_with_one_warning(monkeypatch: pytest.MonkeyPatch,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    machine(monkeypatch, ALL, gpu=False)
    with caplog.at_level(logging.WARNING, logger="podium.runtime"):
        for _ in range(6):  # six models load: one warning, not six
            assert onnx_providers(DeviceSettings("auto")) == [CPU]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "no CUDA device is visible" in warnings[0].getMessage()


def test_auto_on_a_plain_cpu_runtime_is_silent(monkeypatch: pytest.MonkeyPatch,
                                              caplog: pytest.LogCaptureFixture) -> None:
    machine(monkeypatch, [CPU], gpu=False)
    with caplog.at_level(logging.WARNING, logger="podium.runtime"):
        assert onnx_providers(DeviceSettings("auto")) == [CPU]
    assert not caplog.records


def test_check_device_fails_fast_only_for_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    machine(monkeypatch, ALL, gpu=False)
    runtimes.check_device("auto")  # falls back later, with its warning
    runtimes.check_device("cpu")
    with pytest.raises(DeviceUnavailable, match="no CUDA device is visible"):
        runtimes.check_device("cuda")


def test_real_probe_answers_on_this_machine() -> None:
    assert isinstance(runtimes.cuda_device_present(), bool)
    assert isinstance(runtimes.tensorrt_libraries_present(), bool)


# ------------------------------------------------------------------------------ per-provider settings

def test_threads_per_provider() -> None:
    settings = DeviceSettings(cpu_threads=3, gpu_threads=1)
    assert session_threads(settings, [CPU]) == 3
    assert session_threads(settings, [CUDA, CPU]) == 1
    assert session_threads(settings, ALL) == 1


def test_cpu_session_gets_the_cpu_thread_setting(graph: Path) -> None:
    runtime = OnnxRuntime(graph, DeviceSettings("cpu", cpu_threads=1, gpu_threads=4))
    assert runtime.providers == [CPU] and runtime.device == "cpu" and runtime.threads == 1
    assert runtime.session.get_session_options().intra_op_num_threads == 1


def test_cuda_and_tensorrt_options(tmp_path: Path) -> None:
    cache = tmp_path / "trt-cache"
    settings = DeviceSettings(cuda_device_id=1, tensorrt_cache_dir=str(cache), gpu_max_batch=512,
                              max_sequence=100)
    inputs = [("tokens", ["batch", "time"]), ("state", [2, "batch", 64])]
    trt, cuda, cpu = provider_options(settings, ALL, inputs)
    assert cuda == {"device_id": 1, "cudnn_conv_algo_search": "HEURISTIC",
                    "arena_extend_strategy": "kSameAsRequested"}
    assert cpu == {}
    assert trt["device_id"] == 1 and trt["trt_fp16_enable"] is False
    # one profile from batch 1 to the GPU batch limit: no engine rebuild for a new batch size
    assert trt["trt_profile_min_shapes"] == "tokens:1x1,state:2x1x64"
    assert trt["trt_profile_opt_shapes"] == "tokens:512x1,state:2x512x64"
    assert trt["trt_profile_max_shapes"] == "tokens:512x100,state:2x512x64"
    # the engine cache lives in the configured folder, so a restart reuses the engines
    assert trt["trt_engine_cache_enable"] and trt["trt_engine_cache_path"] == str(cache)
    assert trt["trt_timing_cache_path"] == str(cache) and cache.is_dir()
    no_cache = provider_options(DeviceSettings(), [TENSORRT], [("image", ["batch", 1, 28, 28])])[0]
    assert "trt_engine_cache_enable" not in no_cache
    assert no_cache["trt_profile_max_shapes"] == "image:1024x1x28x28"


def test_tensorrt_cache_defaults_under_the_store(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("BENTOML_HOME", str(tmp_path))
    monkeypatch.delenv("PODIUM_TENSORRT_CACHE_DIR", raising=False)
    assert load_config("/nonexistent").tensorrt_cache_path() == str(tmp_path / "podium-trt-cache")
    monkeypatch.setenv("PODIUM_TENSORRT_CACHE_DIR", "/var/cache/trt")
    assert load_config("/nonexistent").tensorrt_cache_path() == "/var/cache/trt"


def test_batch_limits_per_device(monkeypatch: pytest.MonkeyPatch) -> None:
    # Issue 14: the defaults are the model kind's; the configuration overrides them per model.
    for kind in KINDS.values():
        assert kind.gpu_max_batch > kind.max_batch
    monkeypatch.setenv("PODIUM_GPU_MAX_BATCH_SIZE", '{"mnist-cnn": 2048}')
    config = load_config("/nonexistent")
    assert config.max_batch("mnist-cnn", "cuda", 1024) == 2048
    assert config.max_batch("mnist-fc", "cuda", 1024) == 1024


def test_warm_up_covers_every_batch_bucket() -> None:
    assert warm_batch_sizes(1) == [1]
    assert warm_batch_sizes(256) == [1, 2, 4, 8, 16, 32, 64, 128, 256]
    assert warm_batch_sizes(100) == [1, 2, 4, 8, 16, 32, 64, 100]
    for n in range(1, 1025):  # any batch the batcher forms has a warmed bucket at or above it
        assert any(size >= n for size in warm_batch_sizes(1024))


# ------------------------------------------------------------------------------ sessions

def test_io_binding_gives_what_run_gives(graph: Path) -> None:
    session = ort.InferenceSession(str(graph), providers=[CPU])
    x = np.random.default_rng(0).normal(size=(37, 4)).astype(np.float32)
    strided = np.asfortranarray(x)  # a batcher slice need not be contiguous
    expected = session.run(["probabilities", "relu"], {"x": x})
    got = IoBinding(session, "cpu").run({"x": strided}, ["probabilities", "relu"])
    assert len(got) == 2
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider' is not in available")
def test_cuda_provider_that_fails_to_start_is_not_silent(monkeypatch: pytest.MonkeyPatch, graph: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    """onnxruntime drops a provider it cannot start (here: a CPU build asked for CUDA, as the GPU
    image does when its CUDA libraries are broken): an error with device=cuda, a warning with auto."""
    machine(monkeypatch, [CUDA, CPU], gpu=True)
    monkeypatch.setattr(runtimes, "_preload_cuda_libraries", lambda: None)
    with pytest.raises(DeviceUnavailable, match="CUDA provider failed to start"):
        OnnxRuntime(graph, DeviceSettings("cuda"))
    with caplog.at_level(logging.WARNING, logger="podium.runtime"):
        runtime = OnnxRuntime(graph, DeviceSettings("auto"))
    assert runtime.device == "cpu" and runtime.providers == [CPU]
    assert any("failed to start" in r.getMessage() for r in caplog.records)
    out = runtime.run({"x": np.ones((2, 4), np.float32)})
    assert out[0].shape == (2, 3)


def test_triton_config_names_the_providers_in_use(graph: Path) -> None:
    cpu = OnnxRuntime(graph, DeviceSettings("cpu"))
    assert triton_config(cpu) == {
        "instance_group": [{"kind": "KIND_CPU", "count": 1}],
        "parameters": {"execution_providers": {"string_value": CPU}, "device": {"string_value": "cpu"}}}

    class OnGpu:
        kind, device, providers = "onnx", "cuda", ALL

    gpu = triton_config(OnGpu())
    assert gpu["instance_group"][0]["kind"] == "KIND_GPU"
    assert gpu["parameters"]["execution_providers"]["string_value"] == ",".join(ALL)
    accelerators = gpu["optimization"]["execution_accelerators"]
    assert accelerators["gpu_execution_accelerator"] == [{"name": "tensorrt"}]


# ------------------------------------------------------------------------------ the real server

def test_server_reports_and_logs_the_provider_used(server: Server) -> None:
    with server.client() as c:
        config = c.get("/v2/models/mnist-cnn/config").json()
        model = c.get("/v1/models/mnist-cnn").json()
    assert config["instance_group"] == [{"kind": "KIND_CPU", "count": 1}]
    assert config["parameters"]["execution_providers"]["string_value"] == CPU
    assert config["max_batch_size"] == KINDS["image"].max_batch
    assert [(v["device"], v["providers"]) for v in model["loaded"]] == [("cpu", [CPU])]
    logs = server.logs()
    assert "onnx runtime on cpu (providers: CPUExecutionProvider)" in logs
    # warmed at every batch bucket up to this device's limit before /readyz said ready
    warmed = r"loaded mnist-cnn:\S+ \(onnx on cpu, warmed at batch 1, 2, 4, 8, 16, 32, 64, 128, 256\)"
    assert re.search(warmed, logs)
