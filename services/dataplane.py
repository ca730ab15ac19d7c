"""The one data plane behind every front door (the friendly /v1 API, the Open Inference
Protocol /v2, the admin API): configuration, loaded versions, metrics, and version selection.

A worker process has one ``DataPlane``: ``services.service`` creates it, passes it to the HTTP
apps (``services.routes``) and starts it in the service's ``__init__`` (so every model is loaded
and warm before ``/readyz`` says ready). Nothing reads a module-level plane: tests build their own.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from services.config import ServeConfig, get_config
from services.errors import InvalidInput, ModelNotReady
from services.repository import LoadedVersion, Repository
from services.rollout import Rollout

log = logging.getLogger("podium")


class DataPlane:
    def __init__(self, config: ServeConfig | None = None) -> None:
        self.config: ServeConfig | None = config
        self.repository: Repository | None = None
        self.metrics: Any = None
        self.rollout: Rollout | None = None
        self.draining = False  # set on SIGTERM (services.worker): readiness turns 503 at once
        # HTTP requests inside this worker's apps now (counted by services.edge; event loop only)
        self.inflight = 0

    @property
    def ready(self) -> bool:
        """Readiness (``/readyz``, ``/v2/health/ready``): loading finished, at least one model
        serves (a version that failed to load is "not ready" on its own), the rollout state read
        once (issue 11: a replica that has not seen the shared state must not take traffic), and
        not draining."""
        repository = self.repository
        return (repository is not None and repository.ready and bool(repository.stable)
                and self.rollout is not None and self.rollout.ready.is_set() and not self.draining)

    def start(self, config: ServeConfig | None = None, metrics: Any = None) -> None:
        """Load and warm every configured model and apply the stored rollout state. ``metrics``:
        where requests and batches are recorded (default: the process's Prometheus metrics)."""
        from services.metrics import get_metrics

        self.config = config or self.config or get_config()
        self.metrics = metrics or get_metrics()
        repository = Repository(self.config, self.metrics)
        repository.load_all()
        rollout = Rollout(self.config, repository)
        rollout.start()  # the stored rollout state is applied before the server says ready
        self.rollout = rollout
        self.repository = repository

    def alone(self) -> bool:
        """Whether at most one HTTP request (the asking one) is inside this worker's apps."""
        return self.inflight <= 1

    def settle(self) -> None:
        """The worker has no request in flight, or its periodic flush is due: write the metrics
        it deferred (``services.metrics``) and count the rollout outcomes it recorded
        (``services.rollout.judge.Recorder``)."""
        if getattr(self.metrics, "deferred", False):  # (a test's recorder defers nothing)
            self.metrics.flush()
        if self.rollout is not None:
            self.rollout.drain()

    def repo(self) -> Repository:
        if self.repository is None or not self.repository.ready:
            raise ModelNotReady("the server is still loading its models")
        return self.repository

    def select(self, name: str, version: str | None = None,
               headers: dict[str, str] | None = None) -> LoadedVersion:
        """The version that answers this request: an explicit version, else the rollout's
        choice (stable, or the candidate for a canary's share / a pinned client), else stable."""
        repository = self.repo()
        if version is None and self.rollout is not None:
            return self.rollout.select(name, headers)
        return repository.get(name, version)

    async def infer(self, loaded: LoadedVersion, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run ``feeds`` on ``loaded`` through its batcher (the one path every front door uses),
        recording the outcome for the rollout and mirroring it to a shadow candidate. A request
        that is the worker's only one in flight may run without the batcher's thread hand-off
        (``Batcher.infer``'s ``alone``)."""
        alone = self.alone
        rollout = self.rollout
        if rollout is None:
            return await loaded.infer(feeds, alone)
        started = time.perf_counter()
        try:
            outputs = await loaded.infer(feeds, alone)
        except InvalidInput:  # the client's fault, not the version's
            raise
        except Exception:
            rollout.record(loaded, time.perf_counter() - started, ok=False)
            raise
        rollout.record(loaded, time.perf_counter() - started, ok=True)
        if loaded.kind.shadowed:
            rollout.mirror(loaded, feeds, outputs)
        return outputs
