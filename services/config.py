"""Serving configuration: one home, documented defaults, a YAML file and environment variables.

``ServeConfig`` is a ``pydantic-settings`` class; its sources, highest precedence first: keyword
arguments (``load_config(port=...)``, the CLI's ``--host/--port/--workers``) → ``PODIUM_<FIELD>``
environment variables (``PODIUM_PORT=3001``; maps and lists are JSON, ``PODIUM_VERSIONS='{"mnist-cnn":
"abc"}'``; ``models`` also takes a comma list, ``PODIUM_MODELS=mnist-cnn,diabetes``) → the YAML file
named by ``PODIUM_CONFIG`` (default ``podium.yaml`` in the working directory, if present) → the
defaults below. An unknown key in the YAML file is an error; an unknown ``PODIUM_*`` variable is
not a setting and is ignored (``PODIUM_CONFIG`` and ``PODIUM_SERVER_VERSION`` are such). Every
field is documented in the README's serving section.
"""

from __future__ import annotations

import contextvars
import functools
import json
import math
import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    YamlConfigSettingsSource,
)

from models.artifacts import store_home
from models.catalog import MODEL_NAMES, default_models, imported_kinds

# -- issue 15: the cores a server may use -------------------------------------------------------
AUTO_WORKERS_MAX = 8  # the most worker processes workers=auto starts
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")  # cgroup v2: "<quota> <period>" or "max <period>"


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity, bounded by its container's CPU limit
    (a cgroup v2 quota, e.g. Kubernetes' ``resources.limits.cpu``, rounded up) — a 2-CPU pod on a
    64-core node has 2, not 64."""
    cores = len(os.sched_getaffinity(0))
    try:
        quota, period = CGROUP_CPU_MAX.read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):  # no cgroup v2 CPU controller here: the affinity alone
        pass
    return cores


def _cores_but_one(workers: int = 1) -> int:
    """The event loop keeps a core: the default for threads that compute beside it. With several
    workers, each has its share of the cores (no worker oversubscribes the machine)."""
    return max(1, usable_cores() // workers - 1)
# -- end of issue 15 -------------------------------------------------------------------------------


ENV_PREFIX = "PODIUM_"
CONFIG_FILE_ENV = "PODIUM_CONFIG"
DEFAULT_CONFIG_FILE = "podium.yaml"


class ServeConfig(BaseSettings):
    # extra="forbid" refuses unknown keys in the YAML file and in keyword arguments; the
    # environment source only ever reads PODIUM_<field> for the fields below.
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(3000, ge=1, le=65535)
    # -- issue 15: workers chosen for the machine (README "Workers and threads") ----------------
    workers: int | Literal["auto"] = Field(
        "auto", description="server worker processes (each loads every model); auto = "
                            "worker_count()'s rule: one per usable core (affinity and container "
                            "CPU limit), at most AUTO_WORKERS_MAX; "
                            "one with device=cuda")
    balance_connections: bool = Field(
        True, description="each worker accepts on its own SO_REUSEPORT socket, so the kernel "
                          "spreads connections evenly over the workers (services.worker)")
    # -- end of issue 15 -------------------------------------------------------------------------
    runtime: Literal["onnx", "torchscript"] = "onnx"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    intra_op_threads: int = Field(
        0, ge=0, description="runtime threads per model; 0 = auto: all cores but one, which the "
                             "event loop needs (1 on a 2-core machine)")
    # Issue 14: the lecture models and every imported model in the store. NoDecode: the comma
    # form is parsed by _models_list, JSON too (pydantic-settings would refuse ``PODIUM_MODELS=a,b``,
    # the form the README shows).
    models: Annotated[list[str], NoDecode] = Field(default_factory=default_models)
    versions: dict[str, str | list[str]] = Field(
        default_factory=dict,
        description="model → pinned version, or a list of versions to load (first serves); "
                    "unlisted models serve their newest version")
    batching: bool = True
    max_batch_size: dict[str, int] = Field(
        default_factory=dict, description="model → items per executed batch; unlisted models take "
                                          "their kind's default (services/kinds)")
    batch_wait_ms: float = Field(0.0, ge=0, le=1000,
                                 description="extra wait for a fuller batch; 0 = the window "
                                             "closes as soon as the queue is empty")
    max_latency_ms: float = Field(5000.0, gt=0,
                                  description="a request queued longer than this gets 503")
    max_queue_items: int = Field(16384, ge=1, description="items queued per model before 503")
    # -- issue 15 (inline): a lone cheap request runs without the batcher's thread hand-off ------
    inline_max_ms: float = Field(
        1.0, ge=0, le=100,
        description="a request alone in the worker (nothing queued or running, no other HTTP "
                    "request in flight) whose batch size costs at most this (measured at load) "
                    "runs on the event loop thread, no thread hand-off; 0 = never")
    inline_batch_max_ms: float = Field(
        2.0, ge=0, le=100,
        description="on a CPU runtime, a batch formed under load whose size costs at most this "
                    "(measured at load) runs on the event loop thread too, no thread hand-off; "
                    "the loop stalls at most this long; a costlier batch, and every batch on a "
                    "GPU, takes the inference thread; 0 = never")
    # -- end of issue 15 (inline) ----------------------------------------------------------------
    metrics_flush_ms: float = Field(
        250.0, ge=0, le=60000,
        description="a worker keeps its Prometheus observations in plain sums and writes them to "
                    "/metrics whenever it has no request in flight and at least this often "
                    "under load (~10 µs of event-loop time per request less), and counts the "
                    "rollout outcomes it queued then too; 0 = each observation at once (outcomes "
                    "then counted when idle or read)")
    split_batches: bool = Field(
        True, description="a batch of more items than the batch size that runs the most items per "
                          "second (each warm-up size timed at load) runs as consecutive runs of "
                          "that size in one inference-thread call (on a CPU, smaller runs stay in "
                          "cache); false = every batch runs whole")
    max_request_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    max_items_per_request: int = Field(4096, ge=1)
    max_image_pixels: int = Field(4096 * 4096, ge=784)
    max_prompt_chars: int = Field(2000, ge=1)
    max_new_chars: int = Field(2000, ge=1)
    # --- issue 10, request side: work and decode bounds per request ------------------------
    max_request_pixels: int = Field(
        4096 * 4096, ge=784, description="declared pixels of all images of one request, checked "
                                         "from their headers before any is decoded; more → 413")
    decode_threads: int = Field(
        0, ge=0, description="threads decoding images off the event loop; 0 = auto: all cores "
                             "but one (1 on a 2-core machine)")
    max_request_prompt_chars: int = Field(
        8192, ge=1, description="char-rnn: prompt characters of one request, all prompts "
                                "together; more → 413")
    max_request_generated_chars: int = Field(
        8192, ge=1, description="char-rnn: characters one request may generate (prompts × "
                                "max_new_chars); more → 413")
    # --- end of issue 10, request side --------------------------------------------------------
    top_k_default: int = Field(3, ge=1, le=10)
    admin_token: str | None = Field(None, description="bearer token for /admin; unset = admin off")
    rollout_state: str = Field("", description="rollout state file; default "
                                               "BENTOML_HOME/podium-rollout/<deployment>.json")
    rollout_poll_ms: float = Field(100.0, gt=0, le=60000,
                                   description="how often each worker looks for a new rollout state")
    rollout_window_s: float = Field(60.0, gt=0, description="automatic rollback judges this window")
    rollout_min_requests: int = Field(20, ge=1,
                                      description="candidate requests in the window before judging")
    rollout_max_error_rate: float = Field(0.05, ge=0, le=1,
                                          description="candidate error rate that rolls back; 0 = off")
    rollout_max_p99_ms: float = Field(1000.0, ge=0,
                                      description="candidate p99 latency that rolls back; 0 = off")
    rollout_min_agreement: float = Field(0.0, ge=0, le=1,
                                         description="shadow label agreement below which the "
                                                     "candidate rolls back; 0 = off")
    rollout_shadow_inflight: int = Field(64, ge=1,
                                         description="shadow copies in flight per worker; more "
                                                     "are skipped, never queued")
    # -- issue 11: one rollout across replicas (services/rollout/, README "Rolling out") --------
    deployment: str = Field("", description="namespace of the rollout state in its store; "
                                            "'' = podium-<port>")
    rollout_store: str = Field("", description="'' or 'file': the state file (one host); "
                                               "redis://[:password@]host:port/db: Redis, shared "
                                               "by every replica")
    rollout_store_timeout_s: float = Field(1.0, gt=0, le=30,
                                           description="a store call taking longer has failed")
    rollout_store_grace_s: float = Field(10.0, ge=0,
                                         description="store unreachable this long: a canary "
                                                     "sends everything to stable")

    # -- device and execution providers (issue 13; README "GPU serving") ------------------------
    gpu_max_batch_size: dict[str, int] = Field(
        default_factory=dict, description="model → items per executed batch when the model runs on "
                                          "a GPU; unlisted models take their kind's GPU default")
    gpu_intra_op_threads: int = Field(
        1, ge=0, description="runtime host threads per model on a GPU provider (they only launch "
                             "kernels); 0 = ONNX Runtime's default")
    cuda_device_id: int = Field(0, ge=0, description="the GPU a process uses")
    tensorrt: bool = Field(True, description="use the TensorRT provider first when its libraries load")
    tensorrt_cache_dir: str = Field(
        "", description="TensorRT engine and timing cache; default BENTOML_HOME/podium-trt-cache")
    tensorrt_fp16: bool = Field(False, description="let TensorRT run in FP16 (outside the parity "
                                                   "proof of the stored version)")
    cudnn_conv_algo_search: Literal["HEURISTIC", "EXHAUSTIVE", "DEFAULT"] = Field(
        "HEURISTIC", description="cuDNN convolution algorithm search; EXHAUSTIVE re-benchmarks on "
                                 "every new batch size")
    io_binding: bool = Field(True, description="CUDA: bind batched inputs and outputs in device memory")
    # -- issue 15 (.npy batches): big request buffers reused, not page-faulted in per request ----
    heap_keep_bytes: int = Field(
        64 * 1024 * 1024, ge=0, le=1024 * 1024 * 1024,
        description="freed C heap a worker keeps for the next request instead of returning it to "
                    "the kernel (glibc; allocations up to min(this, 32 MiB) come from the heap): "
                    "a big body's buffers are reused, not page-faulted in anew; 0 = glibc defaults")
    body_in_place_bytes: int = Field(
        32 * 1024 * 1024, ge=0,
        description="bytes a worker may allocate for declared request bodies (within "
                    "max_request_bytes) still arriving, to read them straight into place (no copy "
                    "per read, no join); a body past it is kept as its reads; 0 = never")
    # -- end of issue 15 (.npy batches) ----------------------------------------------------------
    # -- process and connection hardening (issue 10) -------------------------------------------
    strict: bool = Field(False, description="a model version that fails to load stops start-up "
                                            "(exit non-zero) instead of being served as not ready")
    drain_grace_s: float = Field(20.0, ge=0, le=3600,
                                 description="on SIGTERM, how long in-flight requests may run "
                                             "while readiness is 503 and new work is refused")
    header_timeout_s: float = Field(10.0, gt=0, le=3600,
                                    description="a request's headers must arrive within this "
                                                "time of its first byte (or of the connection)")
    body_timeout_s: float = Field(60.0, gt=0, le=3600,
                                  description="a request's whole body must arrive within this "
                                              "time of its headers")
    max_header_bytes: int = Field(64 * 1024, ge=1024, le=16 * 1024 * 1024,
                                  description="request line plus headers; more gets 431")

    @field_validator("models", mode="before")
    @classmethod
    def _models_list(cls, value: Any) -> Any:
        """A string is a JSON list or a comma list (``a,b``)."""
        if not isinstance(value, str):
            return value
        if value.lstrip().startswith("["):
            try:
                return json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError(f"not a JSON list: {exc}") from None
        return [name.strip() for name in value.split(",") if name.strip()]

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Keyword arguments > PODIUM_* variables > the YAML file > defaults; no .env or secrets
        directory (a setting has these three homes only)."""
        return init_settings, _EnvSource(settings_cls), _YamlSource(settings_cls, yaml_file=config_file())

    # -- issue 15: the worker rule -------------------------------------------------------------
    @field_validator("workers", mode="before")
    @classmethod
    def _workers(cls, value: Any) -> Any:
        """A count of at least 1 (a number or its digits) or "auto": one error naming both."""
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value)
        if value == "auto" or (type(value) is int and value >= 1):
            return value
        raise ValueError("expected a number of worker processes (at least 1) or 'auto'")

    def worker_count(self) -> int:
        """Worker processes. Auto: one per usable core (mnist-cnn JSON c=64 on 2 cores, client
        on the same cores: 2 workers 1.55-1.72x one before the lean data path, 1.01-1.07x one
        after it, 2026-12-02; README "Workers and threads"), since a
        saturated worker's event loop (HTTP, JSON, the handler) needs a core of its own; capped at
        ``AUTO_WORKERS_MAX`` (each worker loads every model: memory and start-up grow with the
        count, and its batches get smaller); one on a GPU, which one process's batcher feeds
        best (each process would hold its own CUDA context and send smaller batches)."""
        if self.workers != "auto":
            return self.workers
        if self.device == "cuda":
            return 1
        if self.device == "auto":
            from services.runtimes import cuda_device_present  # config is imported by runtimes

            if cuda_device_present():
                return 1
        return min(AUTO_WORKERS_MAX, usable_cores())
    # -- end of issue 15 -------------------------------------------------------------------------

    def runtime_threads(self) -> int:
        """Threads per model runtime. Auto leaves a core to the event loop: on 2 cores, one
        ONNX Runtime thread served single images 1.3-1.5x faster at c=16/64 than two
        (results/bench/README.md, configuration experiment)."""
        if self.intra_op_threads:
            return self.intra_op_threads
        return _cores_but_one(self.worker_count())

    def image_decode_threads(self) -> int:
        """Image decoding threads; auto leaves a core to the event loop, as runtime_threads."""
        return self.decode_threads or _cores_but_one(self.worker_count())

    def max_batch(self, name: str, device: str, default: int) -> int:
        """Items per executed batch of ``name`` on ``device`` (the runtime's: cpu or cuda):
        the configured value, else ``default`` (the model kind's, services/kinds)."""
        configured = self.gpu_max_batch_size if device == "cuda" else self.max_batch_size
        return configured.get(name, default)

    def tensorrt_cache_path(self) -> str:
        if self.tensorrt_cache_dir:
            return self.tensorrt_cache_dir
        return str(store_home() / "podium-trt-cache")

    def pinned(self, name: str) -> list[str]:
        value = self.versions.get(name)
        if value is None:
            return []
        return [value] if isinstance(value, str) else list(value)


class ConfigError(ValueError):
    """A setting that cannot be used; the message is one line naming the setting and its value."""


# The YAML file load_config(path) was given. pydantic-settings builds its sources in a classmethod
# and offers no per-instance file (pydantic/pydantic-settings#259): a context variable carries it
# there without a module-level mutable setting.
_config_path: contextvars.ContextVar[Path | None] = contextvars.ContextVar("podium_config_path",
                                                                           default=None)


def config_file() -> Path:
    """The YAML file read: load_config's ``path``, else ``PODIUM_CONFIG``, else ./podium.yaml."""
    return _config_path.get() or Path(os.environ.get(CONFIG_FILE_ENV) or DEFAULT_CONFIG_FILE)


class _EnvSource(EnvSettingsSource):
    """pydantic-settings' environment source (JSON for maps and lists), whose parse errors name
    the variable and its value."""

    def __init__(self, settings_cls: type[BaseSettings]) -> None:
        super().__init__(settings_cls, env_prefix=ENV_PREFIX)

    def decode_complex_value(self, field_name: str, field: FieldInfo, value: Any) -> Any:
        try:
            return super().decode_complex_value(field_name, field, value)
        except ValueError as exc:
            raise ConfigError(f"invalid Podium configuration: {_env_name(field_name)}={_clip(value)}: "
                              f"not JSON ({exc})") from None


class _YamlSource(YamlConfigSettingsSource):
    """pydantic-settings' YAML source; a file that is not YAML or not a mapping is one line."""

    def _read_file(self, file_path: Path) -> dict[str, Any]:
        try:
            data = super()._read_file(file_path)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{file_path}: not valid YAML: {' '.join(str(exc).split())}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{file_path}: expected a mapping of settings, got "
                              f"{type(data).__name__}")
        return data


def _env_name(field: str) -> str:
    return f"{ENV_PREFIX}{field.upper()}"


def _clip(value: Any, limit: int = 80) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= limit else text[:limit] + "..."


def _describe(exc: ValidationError, overrides: dict[str, Any]) -> str:
    """One line for every failed setting: its name, the value given, where it came from."""
    parts = []
    for error in exc.errors():
        loc = [str(part) for part in error["loc"]]
        field = loc[0] if loc else "?"
        if field in overrides:
            source = "argument"
        elif _env_name(field) in os.environ:
            source = _env_name(field)
        else:
            source = str(config_file())
        message = ("unknown setting" if error["type"] == "extra_forbidden"
                   else error["msg"].removeprefix("Value error, "))
        parts.append(f"{'.'.join(loc)}={_clip(error['input'])} ({source}): {message}")
    return "; ".join(parts)


def load_config(path: str | Path | None = None, **overrides: Any) -> ServeConfig:
    """The configuration from ``overrides`` (``None`` values ignored), the environment, the YAML
    file ``path`` (default: ``config_file()``) and the defaults; a bad setting → ConfigError."""
    given = {k: v for k, v in overrides.items() if v is not None}
    token = _config_path.set(Path(path) if path else None)
    try:
        config = ServeConfig(**given)
    except ValidationError as exc:
        raise ConfigError(f"invalid Podium configuration: {_describe(exc, given)}") from None
    except SettingsError as exc:
        # The environment source wraps our ConfigError (it is a ValueError): unwrap it.
        cause = exc.__cause__
        raise ConfigError(str(cause) if isinstance(cause, ConfigError) else str(exc)) from None
    finally:
        _config_path.reset(token)
    unknown = [m for m in config.models if m not in MODEL_NAMES]
    if unknown:  # issue 14: an imported model in the store is known too
        known = [*MODEL_NAMES, *imported_kinds()]
        if unknown := [m for m in unknown if m not in known]:
            raise ConfigError(f"unknown models in configuration: {unknown}; known: {known}")
    return config


@functools.cache
def get_config() -> ServeConfig:
    """The process's configuration, read once (the CLI's convenience; services take a config)."""
    return load_config()
