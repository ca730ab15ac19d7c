"""Serving configuration: one home, documented defaults, a YAML file and environment variables.

Precedence (lowest first): the defaults below → the YAML file named by ``PODIUM_CONFIG``
(default ``podium.yaml`` in the working directory, if present) → ``PODIUM_<FIELD>`` environment
variables (``PODIUM_PORT=3001``; dict and list fields take JSON: ``PODIUM_VERSIONS='{"mnist-cnn":
"abc"}'``). Every field is documented in the README's serving section.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError

from models.catalog import MODEL_NAMES

DEFAULT_MAX_BATCH = {"diabetes": 1024, "mnist-fc": 256, "mnist-cnn": 256, "mnist-googlenet": 256,
                     "mnist-resnet": 256, "char-rnn": 64}


class ServeConfig(BaseModel):
    model_config = {"extra": "forbid"}

    host: str = "127.0.0.1"
    port: int = Field(3000, ge=1, le=65535)
    workers: int = Field(1, ge=1, description="server worker processes (each loads every model)")
    runtime: Literal["onnx", "torchscript"] = "onnx"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    intra_op_threads: int = Field(
        0, ge=0, description="runtime threads per model; 0 = auto: all cores but one, which the "
                             "event loop needs (1 on a 2-core machine)")
    models: list[str] = Field(default_factory=lambda: list(MODEL_NAMES))
    versions: dict[str, str | list[str]] = Field(
        default_factory=dict,
        description="model → pinned version, or a list of versions to load (first serves); "
                    "unlisted models serve their newest version")
    batching: bool = True
    max_batch_size: dict[str, int] = Field(default_factory=lambda: dict(DEFAULT_MAX_BATCH))
    batch_wait_ms: float = Field(0.0, ge=0, le=1000,
                                 description="extra wait for a fuller batch; 0 = the window "
                                             "closes as soon as the queue is empty")
    max_latency_ms: float = Field(5000.0, gt=0,
                                  description="a request queued longer than this gets 503")
    max_queue_items: int = Field(16384, ge=1, description="items queued per model before 503")
    max_request_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    max_items_per_request: int = Field(4096, ge=1)
    max_image_pixels: int = Field(4096 * 4096, ge=784)
    max_prompt_chars: int = Field(2000, ge=1)
    max_new_chars: int = Field(2000, ge=1)
    top_k_default: int = Field(3, ge=1, le=10)
    admin_token: str | None = Field(None, description="bearer token for /admin; unset = admin off")
    rollout_state: str = Field("", description="rollout state file; default BENTOML_HOME/podium-rollout.json")
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
    # -- process and connection hardening (issue 10, engineer proc) --------------------------
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

    def runtime_threads(self) -> int:
        """Threads per model runtime. Auto leaves a core to the event loop: on 2 cores, one
        ONNX Runtime thread served single images 1.3-1.5x faster at c=16/64 than two
        (results/bench/README.md, configuration experiment)."""
        if self.intra_op_threads:
            return self.intra_op_threads
        return max(1, (os.cpu_count() or 1) - 1)

    def max_batch(self, name: str) -> int:
        return self.max_batch_size.get(name, DEFAULT_MAX_BATCH.get(name, 64))

    def pinned(self, name: str) -> list[str]:
        value = self.versions.get(name)
        if value is None:
            return []
        return [value] if isinstance(value, str) else list(value)


class ConfigError(ValueError):
    pass


def _env_overrides() -> dict[str, Any]:
    found: dict[str, Any] = {}
    for field, info in ServeConfig.model_fields.items():
        raw = os.environ.get(f"PODIUM_{field.upper()}")
        if raw is None:
            continue
        annotation = str(info.annotation)
        if any(k in annotation for k in ("dict", "list")):
            try:
                found[field] = json.loads(raw)
            except json.JSONDecodeError:
                found[field] = [s for s in raw.split(",") if s] if "list" in annotation else raw
        else:
            found[field] = raw
    return found


def load_config(path: str | Path | None = None, **overrides: Any) -> ServeConfig:
    path = Path(path or os.environ.get("PODIUM_CONFIG", "podium.yaml"))
    values: dict[str, Any] = {}
    if path.is_file():
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of settings")
        values.update(loaded)
    values.update(_env_overrides())
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        config = ServeConfig(**values)
    except ValidationError as exc:
        raise ConfigError(f"invalid Podium configuration: {exc}") from None
    unknown = [m for m in config.models if m not in MODEL_NAMES]
    if unknown:
        raise ConfigError(f"unknown models in configuration: {unknown}; known: {list(MODEL_NAMES)}")
    return config


@functools.cache
def get_config() -> ServeConfig:
    return load_config()
