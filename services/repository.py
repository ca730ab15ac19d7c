"""The model repository: which versions are loaded, warm and ready, and which one answers.

At start-up every configured model is loaded — the pinned version(s) from the configuration, or
the newest in the store — its files verified against their recorded checksums, its runtime
created and warmed up at every batch size bucket the batcher will produce (powers of two up to the
device's maximum batch, and that maximum). Nothing loads lazily on a request.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from types import MappingProxyType
from typing import Any

import numpy as np

from models.artifacts import StoredVersion, get_version
from models.catalog import CATALOG, ModelSpec, get_spec, imported_kinds, spec_from_metadata
from services.batcher import Batcher
from services.config import ServeConfig
from services.errors import ModelNotFound, ModelNotReady
from services.http import MODEL_HEADER_BYTES, VERSION_HEADER_BYTES
from services.kinds import Kind, kind_for
from services.runtimes import Runtime, device_settings, load_runtime
from services.textloop import TextLoop

log = logging.getLogger("podium.repository")

@dataclass
class LoadedVersion:
    spec: ModelSpec
    stored: StoredVersion
    runtime: Runtime
    batcher: Batcher
    kind: Kind
    loaded_at: float = field(default_factory=time.time)
    vocab: list[str] = field(default_factory=list)
    index: dict[str, int] = field(default_factory=dict)
    textloop: TextLoop | None = None  # a text generator's generation loop (services.kinds.text)

    @cached_property  # read several times a request (rollout, metrics, headers): kept once read
    def name(self) -> str:
        return self.spec.name

    @cached_property
    def version(self) -> str:
        return self.stored.version

    @cached_property
    def answer_headers(self) -> tuple[tuple[bytes, bytes], tuple[bytes, bytes]]:
        """The model and version headers of this version's answers, as bytes: built once, not
        per request (issue 15)."""
        return ((MODEL_HEADER_BYTES, self.name.encode("latin-1")),
                (VERSION_HEADER_BYTES, self.version.encode("latin-1")))

    @property
    def architecture(self) -> dict[str, Any]:
        return self.stored.metadata.get("preprocessing", {}).get("architecture", {})

    async def infer(self, feeds: dict[str, np.ndarray],
                    alone: Callable[[], bool] | None = None) -> list[np.ndarray]:
        return await self.batcher.infer(feeds, alone)

    def describe(self) -> dict[str, Any]:
        md = self.stored.metadata
        return {"name": self.name, "version": self.version, "runtime": self.runtime.kind,
                "device": self.runtime.device, "providers": self.runtime.providers,
                "created": self.stored.creation_time, "headline": md.get("headline"),
                "profile": md.get("profile"), "max_batch_size": self.batcher.max_batch_size}


def warm_batch_sizes(max_batch: int) -> list[int]:
    """1, 2, 4, … below ``max_batch``, then ``max_batch``: the batch shapes the first requests
    will bring. ONNX Runtime's CUDA and TensorRT providers pay per new input shape (kernel and
    cuDNN algorithm choice, memory arena growth); every size in between reuses a warmed bucket's
    arena and kernels."""
    sizes, n = [], 1
    while n < max_batch:
        sizes.append(n)
        n *= 2
    return [*sizes, max_batch]


def served_kinds(names: Iterable[str]) -> dict[str, str]:
    """Model name → the name of its kind: the catalog's, or an imported model's (its newest
    stored metadata). A name with neither is left out (it fails to load, with its reason)."""
    imported = imported_kinds()
    return {name: CATALOG[name].kind if name in CATALOG else imported[name]
            for name in names if name in CATALOG or name in imported}


def spec_of(name: str, stored: StoredVersion) -> ModelSpec:
    """A lecture model's spec is the catalog's; any other stored model is described by its
    own metadata (an imported model, contract A)."""
    return get_spec(name) if name in CATALOG else spec_from_metadata(name, stored.metadata)


def _release(versions: list[LoadedVersion]) -> None:
    """Close drained versions and hand their memory back to the system: without the trim,
    glibc keeps a freed session's pages in its per-thread arenas and RSS grows with every
    version ever loaded (mnist-fc, 20 promote/rollback cycles: +57 MB without, see README)."""
    for loaded in versions:
        loaded.batcher.close()
        if loaded.textloop is not None:
            loaded.textloop.close()
    versions.clear()  # the last references: the sessions are freed here
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class Repository:
    """Loaded versions per model and the serving (stable) version of each."""

    def __init__(self, config: ServeConfig, metrics: Any = None) -> None:
        self.config = config
        self.metrics = metrics
        self.loaded: dict[str, dict[str, LoadedVersion]] = {}
        self._stable: dict[str, str] = {}  # the one owner of "stable" in this worker
        self.ready = False
        # model → version (or "newest") → why it did not load
        self.failed: dict[str, dict[str, str]] = {}
        self._lock = threading.Lock()

    @property
    def stable(self) -> Mapping[str, str]:
        """Model → the version that answers requests naming none (read-only: see set_stable)."""
        return MappingProxyType(self._stable)

    # -- loading ------------------------------------------------------------------------------
    def load_all(self) -> None:
        """Load every configured version. One that fails (a corrupt or missing file, a runtime
        that will not load it) is logged and recorded in ``failed`` and the others serve — or,
        with the ``strict`` setting, the first failure is raised."""
        started = time.perf_counter()
        for name in self.config.models:
            versions = self.config.pinned(name) or [None]
            for i, version in enumerate(versions):
                try:
                    loaded = self.load_version(name, version)
                except Exception as exc:
                    if self.config.strict:
                        raise
                    self.failed.setdefault(name, {})[version or "newest"] = str(exc)
                    log.error("%s failed to load and is not served: %s",
                              f"{name}:{version}" if version else name, exc)
                    if i == 0:
                        break  # without its stable version a model is not served at all
                    continue
                if i == 0:
                    self.set_stable(name, loaded.version)
        self.ready = True
        log.info("ready: %d model(s), %d version(s) loaded and warm in %.2fs%s",
                 len(self._stable), sum(len(v) for v in self.loaded.values()),
                 time.perf_counter() - started,
                 f"; not served: {', '.join(sorted(self.failed))}" if self.failed else "")

    def load_version(self, name: str, version: str | None = None) -> LoadedVersion:
        """Load, verify and warm ``name:version`` (newest when None); idempotent."""
        return self.load(self._find(name, version))

    def load(self, stored: StoredVersion) -> LoadedVersion:
        """Verify, load and warm the version ``stored`` (read from the store, or made by a
        test); idempotent."""
        name = stored.name
        with self._lock:
            existing = self.loaded.get(name, {}).get(stored.version)
        if existing is not None:
            return existing
        spec = spec_of(name, stored)
        kind = kind_for(spec)
        stored.verify()  # raises CorruptVersion: a broken version never starts serving
        settings = device_settings(self.config, name, kind.gpu_max_batch)
        runtime = load_runtime(self.config.runtime, spec, stored, settings)
        default = kind.gpu_max_batch if runtime.device == "cuda" else kind.max_batch
        max_batch = self.config.max_batch(name, runtime.device, default)
        input_axes, output_axes = kind.batch_axes()
        batcher = Batcher(name, stored.version, runtime.run, input_axes, output_axes,
                          max_batch_size=max_batch,
                          max_latency_s=self.config.max_latency_ms / 1000,
                          max_queue_items=self.config.max_queue_items,
                          wait_s=self.config.batch_wait_ms / 1000, enabled=self.config.batching,
                          metrics=self.metrics, inline_max_s=self.config.inline_max_ms / 1000,
                          split=self.config.split_batches,
                          # a GPU worker keeps parsing while the device runs: its batches take
                          # the inference thread (services.batcher)
                          inline_batch_max_s=self.config.inline_batch_max_ms / 1000
                          if runtime.device == "cpu" else 0.0)
        loaded = LoadedVersion(spec, stored, runtime, batcher, kind)
        kind.setup(loaded)
        warm = warm_batch_sizes(max_batch)
        # First-request costs paid now, and every size timed: what may run inline, which size
        # runs the most items per second (split batches).
        batcher.warm(lambda batch: kind.warm_feeds(loaded, batch), warm)
        with self._lock:
            self.loaded.setdefault(name, {})[stored.version] = loaded
        log.info("loaded %s (%s on %s, warmed at batch %s)", stored.tag, runtime.kind, runtime.device,
                 ", ".join(map(str, warm)))
        if batcher.costs:
            log.info("%s: measured batch costs %s (inline_max_ms %g, batches on the event loop "
                     "up to %g ms); runs of at most %s items", stored.tag,
                     ", ".join(f"{b}: {s * 1e3:.3f} ms" for b, s in batcher.costs.items()),
                     self.config.inline_max_ms, batcher.inline_batch_max_s * 1e3,
                     batcher.run_size or max_batch)
        return loaded

    def _find(self, name: str, version: str | None) -> StoredVersion:
        from bentoml.exceptions import BentoMLException, NotFound

        try:
            return get_version(name, version)
        except NotFound:
            what = f"version {version!r} of model {name!r}" if version else f"model {name!r}"
            raise ModelNotFound(f"{what} is not in the model store; train it with "
                                f"`podium train {name}`") from None
        except BentoMLException as exc:
            raise ModelNotFound(f"{name}:{version}: {exc}") from None

    def set_stable(self, name: str, version: str) -> None:
        """Make the loaded ``name:version`` the version that answers by default."""
        with self._lock:
            if version not in self.loaded.get(name, {}):
                raise ModelNotFound(f"{name}:{version} is not loaded")
            self._stable[name] = version

    def retain(self, name: str, keep: Iterable[str]) -> list[str]:
        """Unload every version of ``name`` but ``keep``, the stable one and the pinned ones.

        An unloaded version leaves the table at once (no new request selects it) and its batcher
        closes after a drain of ``max_latency_ms`` plus a second, by when every request queued
        before has been answered (or has timed out), so memory stays bounded to the versions a
        rollout needs."""
        with self._lock:
            wanted = {*keep, *self.config.pinned(name), self._stable.get(name)}
            versions = self.loaded.get(name, {})
            gone = [versions.pop(v) for v in list(versions) if v not in wanted]
        if gone:
            drain_s = self.config.max_latency_ms / 1000 + 1.0
            timer = threading.Timer(drain_s, _release, args=(gone,))
            timer.daemon = True
            timer.start()
            log.info("unloading %s (drained in %.1fs)", ", ".join(v.stored.tag for v in gone),
                     drain_s)
        return [v.version for v in gone]

    def resolve(self, name: str, version: str) -> str:
        """The full stored version ``version`` names (``latest``, a unique prefix or itself);
        404 when it names no version of ``name``."""
        return self._find(name, version).version

    # -- resolving ----------------------------------------------------------------------------
    def model(self, name: str) -> dict[str, LoadedVersion]:
        if not self.ready:
            raise ModelNotReady("the server is still loading its models")
        versions = self.loaded.get(name)
        if not versions and name in self.failed:
            raise ModelNotReady(f"model {name!r} failed to load: "
                                f"{'; '.join(self.failed[name].values())}")
        if not versions:
            known = ", ".join(sorted(self.loaded)) or "none"
            raise ModelNotFound(f"model {name!r} is not served here; served models: {known}")
        return versions

    def get(self, name: str, version: str | None = None) -> LoadedVersion:
        versions = self.model(name)
        if version is None:
            return versions[self._stable[name]]  # per request: no read-only view built
        found = versions.get(version)
        if found is None:
            why = self.failed.get(name, {}).get(version)
            if why is not None:
                raise ModelNotReady(f"version {version!r} of model {name!r} failed to load: {why}")
            raise ModelNotFound(f"version {version!r} of model {name!r} is not loaded; loaded "
                                f"versions: {', '.join(versions)}")
        return found

    def describe(self) -> list[dict[str, Any]]:
        out = []
        for name, versions in self.loaded.items():
            for version, loaded in versions.items():
                out.append({**loaded.describe(), "stable": self._stable.get(name) == version})
        return out



def preflight(config: ServeConfig) -> list[str]:
    """What would keep a configured version from loading, found without loading it: missing
    from the store, or a file missing or failing its checksum. Cheap enough to run before any
    worker starts (``strict``)."""
    from models.artifacts import CorruptVersion

    problems = []
    repository = Repository(config)
    for name in config.models:
        for version in config.pinned(name) or [None]:
            try:
                repository._find(name, version).verify()
            except (ModelNotFound, CorruptVersion) as exc:
                problems.append(str(exc))
    return problems
