"""Model version rollout: canary and shadow traffic, promote, rollback and automatic rollback,
followed by every worker of every replica through one shared store.

- ``state``: the typed state and its pure transitions (begin, promote, rollback);
- ``router``: which side of a rollout answers a request;
- ``judge``: outcome counts (``Recorder``) and the automatic-rollback verdict over every worker;
- ``store``: where the state lives (a file, or Redis), with compare-and-set, heartbeats, a lease;
- ``report``: the ``status`` and ``analysis`` answers;
- ``controller``: ``Rollout``, one worker's glue between them and the repository.
"""

from services.rollout.controller import Rollout, VersionRefused
from services.rollout.judge import compare
from services.rollout.router import sticky_fraction
from services.rollout.state import Limits, ModelRollout, State
from services.rollout.store import FileStore, RedisStore, StoreUnavailable, open_store

__all__ = ["FileStore", "Limits", "ModelRollout", "RedisStore", "Rollout", "State",
           "StoreUnavailable", "VersionRefused", "compare", "open_store", "sticky_fraction"]
