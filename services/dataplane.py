"""The one data plane behind every front door (the friendly /v1 API, the Open Inference
Protocol /v2, the admin API): configuration, loaded versions, metrics, and version selection.

A process has one ``DataPlane``; the BentoML service starts it in its ``__init__`` (so every
model is loaded and warm before ``/readyz`` says ready) and the HTTP routes read it.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from services.config import ServeConfig, get_config
from services.errors import ModelNotReady
from services.repository import LoadedVersion, Repository

log = logging.getLogger("podium")


class DataPlane:
    def __init__(self) -> None:
        self.config: ServeConfig | None = None
        self.repository: Repository | None = None
        self.metrics: Any = None

    @property
    def ready(self) -> bool:
        return self.repository is not None and self.repository.ready

    def start(self, config: ServeConfig | None = None) -> None:
        from services.metrics import get_metrics

        self.config = config or get_config()
        self.metrics = get_metrics()
        repository = Repository(self.config, self.metrics)
        repository.load_all()
        self.repository = repository

    def repo(self) -> Repository:
        if self.repository is None or not self.repository.ready:
            raise ModelNotReady("the server is still loading its models")
        return self.repository

    def select(self, name: str, version: str | None = None,
               headers: dict[str, str] | None = None) -> LoadedVersion:
        """The version that answers this request: an explicit version, else the stable one."""
        return self.repo().get(name, version)

    async def infer(self, loaded: LoadedVersion, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run ``feeds`` on ``loaded`` through its batcher (the one path every front door uses)."""
        return await loaded.infer(feeds)


PLANE = DataPlane()
