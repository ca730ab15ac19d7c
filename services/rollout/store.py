"""Where the rollout state lives, shared by every worker of every replica: a file or Redis.

Both backends offer the same four things, all namespaced by the deployment name:

- the state, one JSON document, read whole and written with a compare-and-set on its revision
  (``swap``): two admin calls racing never lose one another's change;
- heartbeats: each worker's applied revision and outcome counts, which expire when it stops;
- a lease: which worker judges the candidate, so the verdict is made once for all replicas.

``FileStore`` (the default; one host, no extra service) keeps them in
``$BENTOML_HOME/podium-rollout/<deployment>.json`` (or ``rollout_state``) under a file lock.
``RedisStore`` (``rollout_store: redis://…``) keeps them under ``podium:<deployment>:…`` keys.
Every failure to reach or write the store is a ``StoreUnavailable`` (503) naming the cause.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from models.artifacts import store_home
from services.config import ServeConfig
from services.errors import PodiumError

BEAT_TTL_S = 5.0  # a worker unseen this long has stopped (or lost the store)


class StoreUnavailable(PodiumError):
    """The rollout store cannot be read or written right now."""

    status = 503


class StateUnreadable(StoreUnavailable):
    """The store answered, but what it holds is not a rollout state (a damaged file)."""


def revision_of(text: str | None) -> int | None:
    """The revision of a stored state: 0 when there is none, None when it is unreadable."""
    if text is None:
        return 0
    try:
        revision = json.loads(text).get("revision", 0)
    except (ValueError, AttributeError):
        return None
    return revision if isinstance(revision, int) and not isinstance(revision, bool) else None


class RolloutStore:
    """The interface; ``swap`` is shared, the backends provide ``_swap_if``."""

    where = ""

    def read(self) -> str | None:
        """The stored state as JSON text, None when there is none yet."""
        raise NotImplementedError

    def _swap_if(self, check: Callable[[str | None], bool], text: str) -> bool:
        """Atomically: write ``text`` if ``check(current text)``; say whether it was written."""
        raise NotImplementedError

    def swap(self, expected: int | None, state: dict[str, Any]) -> bool:
        """Write ``state`` if the stored revision is still ``expected``.

        ``expected=None`` replaces a stored state that is unreadable (and nothing else).
        """
        return self._swap_if(lambda text: revision_of(text) == expected, json.dumps(state))

    def beat(self, worker: str, beat: dict[str, Any]) -> None:
        raise NotImplementedError

    def beats(self) -> list[dict[str, Any]]:
        """The heartbeats of every live worker."""
        raise NotImplementedError

    def lease(self, holder: str, ttl_s: float) -> bool:
        """Take or renew the judging lease; True while ``holder`` holds it."""
        raise NotImplementedError


# -- the file -----------------------------------------------------------------------------------
def write_atomically(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class FileStore(RolloutStore):
    """One JSON file replaced atomically under a lock; heartbeats and the lease beside it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.where = str(path)
        self.lock_path = path.with_name(path.name + ".lock")
        self.lease_path = path.with_name(path.name + ".lease")
        self.beat_dir = path.with_name(path.name + ".workers")

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.lock_path, "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(lock, fcntl.LOCK_UN)
        except OSError as exc:
            raise StoreUnavailable(f"rollout state {self.path} cannot be written: {exc}") from None

    def read(self) -> str | None:
        try:
            return self.path.read_text()
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            raise StateUnreadable(f"rollout state {self.path} is unreadable: {exc}") from None

    def _swap_if(self, check: Callable[[str | None], bool], text: str) -> bool:
        with self._locked():
            try:
                current = self.read()
            except StateUnreadable:
                current = ""  # revision_of("") is None: only a repair may replace it
            if not check(current):
                return False
            write_atomically(self.path, text)
            return True

    def beat(self, worker: str, beat: dict[str, Any]) -> None:
        try:
            self.beat_dir.mkdir(parents=True, exist_ok=True)
            write_atomically(self.beat_dir / f"{worker}.json", json.dumps(beat))
        except OSError as exc:
            raise StoreUnavailable(f"heartbeat in {self.beat_dir} failed: {exc}") from None

    def beats(self) -> list[dict[str, Any]]:
        found = []
        for path in self.beat_dir.glob("*.json"):
            try:
                if time.time() - path.stat().st_mtime > BEAT_TTL_S:
                    path.unlink()  # a stopped worker
                    continue
                found.append(json.loads(path.read_text()))
            except (OSError, ValueError):
                continue
        return found

    def lease(self, holder: str, ttl_s: float) -> bool:
        with self._locked():
            try:
                current = json.loads(self.lease_path.read_text())
            except (OSError, ValueError):
                current = {}
            if current.get("holder") not in (None, holder) and current.get("until", 0) > time.time():
                return False
            write_atomically(self.lease_path, json.dumps({"holder": holder,
                                                          "until": time.time() + ttl_s}))
            return True


# -- Redis --------------------------------------------------------------------------------------
# Take the lease when it is free, renew it when it is ours: one round trip, atomic.
LEASE_SCRIPT = """
local holder = redis.call('GET', KEYS[1])
if holder == false or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""


def redacted(url: str) -> str:
    """``url`` without its password, for logs and status."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


class RedisStore(RolloutStore):
    """The state, heartbeats and lease in Redis (``redis-server`` 7; append-only file on)."""

    def __init__(self, url: str, deployment: str, timeout_s: float) -> None:
        import redis

        self._errors = (redis.RedisError, OSError)
        self._watch_error = redis.WatchError
        self.client = redis.Redis.from_url(url, socket_timeout=timeout_s,
                                           socket_connect_timeout=timeout_s, decode_responses=True)
        self.where = f"{redacted(url)} ({deployment})"
        prefix = f"podium:{deployment}:"
        self.state_key, self.lease_key, self.beat_prefix = (
            prefix + "state", prefix + "lease", prefix + "beat:")
        self._lease = self.client.register_script(LEASE_SCRIPT)

    @contextlib.contextmanager
    def _reach(self, what: str) -> Iterator[None]:
        try:
            yield
        except self._errors as exc:
            raise StoreUnavailable(f"rollout store {self.where}: {what} failed: {exc}") from None

    def read(self) -> str | None:
        with self._reach("read"):
            return self.client.get(self.state_key)

    def _swap_if(self, check: Callable[[str | None], bool], text: str) -> bool:
        with self._reach("write"), self.client.pipeline() as pipe:
            try:
                pipe.watch(self.state_key)
                if not check(pipe.get(self.state_key)):
                    return False
                pipe.multi()
                pipe.set(self.state_key, text)
                pipe.execute()
                return True
            except self._watch_error:  # written by someone else meanwhile
                return False

    def beat(self, worker: str, beat: dict[str, Any]) -> None:
        with self._reach("heartbeat"):
            self.client.set(self.beat_prefix + worker, json.dumps(beat), px=int(BEAT_TTL_S * 1000))

    def beats(self) -> list[dict[str, Any]]:
        with self._reach("heartbeats"):
            keys = list(self.client.scan_iter(match=self.beat_prefix + "*", count=1000))
            values = self.client.mget(keys) if keys else []
        found = []
        for value in values:
            with contextlib.suppress(TypeError, ValueError):
                found.append(json.loads(value))
        return found

    def lease(self, holder: str, ttl_s: float) -> bool:
        with self._reach("lease"):
            return bool(self._lease(keys=[self.lease_key], args=[holder, int(ttl_s * 1000)]))


def deployment_name(config: ServeConfig) -> str:
    """The namespace of this server's rollout: ``deployment``, else one per port."""
    return config.deployment or f"podium-{config.port}"


def open_store(config: ServeConfig) -> RolloutStore:
    """The store ``rollout_store`` names: a ``redis://`` URL, else the state file."""
    deployment = deployment_name(config)
    if config.rollout_store.startswith(("redis://", "rediss://", "unix://")):
        return RedisStore(config.rollout_store, deployment, config.rollout_store_timeout_s)
    if config.rollout_store not in ("", "file"):
        raise ValueError(f"rollout_store must be 'file' or a redis:// URL, not "
                         f"{redacted(config.rollout_store)!r}")
    if config.rollout_state:
        return FileStore(Path(config.rollout_state))
    return FileStore(store_home() / "podium-rollout" / f"{deployment}.json")
