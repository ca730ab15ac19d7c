"""Model version rollout: canary and shadow traffic, promote, rollback and automatic rollback.

The rollout state of every model lives in one JSON file (``rollout_state``, default
``$BENTOML_HOME/podium-rollout.json``), written atomically under a file lock by whichever worker
takes an admin action. Every worker process watches it (a background thread looks every
``rollout_poll_ms``), loads, verifies and warms the versions it names *before* switching, then
swaps its routing table in one assignment: a promote or rollback reaches every worker without a
restart, and no request is ever routed to a version that is not loaded and warm. The state is
applied at start-up before the server reports ready, so it survives a restart.

Routing: with no rollout, the stable version answers. In a canary, ``percent`` of requests go to
the candidate — sticky per ``Podium-Client-Key`` when a client sends one (a hash of key and
rollout, the same in every worker), random otherwise; ``Podium-Pin: stable|candidate`` picks a
side. In shadow mode the stable version answers everything and the candidate gets a copy of each
request off the response path; agreement (same label, max |Δ|) is recorded.

Each worker keeps per-version outcomes (requests, errors, recent latencies) and judges the
candidate over ``rollout_window_s``: an error rate, p99 or shadow agreement past its limit rolls
the rollout back by itself, and the event is logged and kept in the state file. Workers also
write a heartbeat (applied revision and outcomes) beside the state file, so status covers them
all.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import random
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from models.artifacts import CorruptVersion
from services.config import ServeConfig
from services.errors import Conflict, InvalidInput, PodiumError
from services.repository import LoadedVersion, Repository

log = logging.getLogger("podium.rollout")

MODES = ("canary", "shadow")
PIN_HEADER = "podium-pin"
CLIENT_KEY_HEADER = "podium-client-key"
HEARTBEAT_S = 1.0
HEARTBEAT_STALE_S = 5.0
KEEP_EVENTS = 100
SAMPLES_PER_HEARTBEAT = 1000


class VersionRefused(PodiumError):
    """A version that cannot serve (its files fail their checksums, or it fails to load)."""

    status = 422


class StateError(RuntimeError):
    """The rollout state file cannot be read."""


@dataclass(frozen=True)
class Limits:
    """When a candidate is rolled back by itself; 0 turns a check off."""

    window_s: float
    min_requests: int
    max_error_rate: float
    max_p99_ms: float
    min_agreement: float

    @classmethod
    def from_config(cls, config: ServeConfig) -> Limits:
        return cls(config.rollout_window_s, config.rollout_min_requests,
                   config.rollout_max_error_rate, config.rollout_max_p99_ms,
                   config.rollout_min_agreement)

    def updated(self, values: Mapping[str, Any]) -> Limits:
        bounds = {"window_s": (1e-3, 86400.0), "min_requests": (1, 10**9),
                  "max_error_rate": (0.0, 1.0), "max_p99_ms": (0.0, 3.6e6),
                  "min_agreement": (0.0, 1.0)}
        changes: dict[str, Any] = {}
        for key, value in values.items():
            if key not in bounds:
                raise InvalidInput(f"unknown limit {key!r}; known: {', '.join(bounds)}", field=key)
            low, high = bounds[key]
            if isinstance(value, bool) or not isinstance(value, int | float) \
                    or not low <= value <= high:
                raise InvalidInput(f"{key} must be a number in [{low}, {high}]", field=key)
            changes[key] = int(value) if key == "min_requests" else float(value)
        return replace(self, **changes)


@dataclass(frozen=True)
class Plan:
    """How one model's traffic is routed: the applied form of its entry in the state file."""

    stable: str
    candidate: str | None = None
    mode: str | None = None
    percent: float = 0.0
    previous: str | None = None
    rollout_id: str = ""
    started: float = 0.0
    limits: Limits | None = None

    @classmethod
    def from_entry(cls, entry: dict[str, Any], defaults: Limits) -> Plan:
        limits = defaults.updated(entry.get("limits") or {})
        return cls(stable=entry["stable"], candidate=entry.get("candidate"),
                   mode=entry.get("mode"), percent=float(entry.get("percent") or 0.0),
                   previous=entry.get("previous"), rollout_id=entry.get("rollout_id") or "",
                   started=float(entry.get("started") or 0.0), limits=limits)

    def versions(self) -> list[str]:
        return [v for v in (self.stable, self.candidate, self.previous) if v]


# -- the state file ----------------------------------------------------------------------------
def empty_state() -> dict[str, Any]:
    return {"revision": 0, "models": {}, "events": []}


class StateStore:
    """The one JSON file holding every model's rollout, written atomically under a lock."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock_path = path.with_name(path.name + ".lock")
        self.heartbeat_dir = path.with_name(path.name + ".workers")

    def signature(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    def read(self) -> dict[str, Any]:
        try:
            state = json.loads(self.path.read_text())
        except FileNotFoundError:
            return empty_state()
        except (OSError, ValueError) as exc:
            raise StateError(f"rollout state {self.path} is unreadable: {exc}") from None
        if not isinstance(state, dict) or not isinstance(state.get("models"), dict):
            raise StateError(f"rollout state {self.path} is not a Podium rollout state")
        return state

    @contextlib.contextmanager
    def transaction(self) -> Iterator[dict[str, Any]]:
        """Read, let the caller change, and write back the state, holding the lock throughout."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                state = self.read()
                yield state
                state["revision"] = int(state.get("revision", 0)) + 1
                state["events"] = state.get("events", [])[-KEEP_EVENTS:]
                write_atomically(self.path, json.dumps(state, indent=1))
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


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


def default_state_path(config: ServeConfig) -> Path:
    if config.rollout_state:
        return Path(config.rollout_state)
    home = os.environ.get("BENTOML_HOME") or Path.home() / "bentoml"
    return Path(home) / "podium-rollout.json"


# -- outcomes ----------------------------------------------------------------------------------
class Outcomes:
    """One version's outcomes: counts since the rollout began and a bounded recent window."""

    def __init__(self) -> None:
        self.requests = 0
        self.errors = 0
        self.recent: deque[tuple[float, float, bool]] = deque(maxlen=4096)

    def add(self, seconds: float, ok: bool) -> None:
        self.requests += 1
        self.errors += not ok
        self.recent.append((time.time(), seconds, ok))

    def snapshot(self, window_s: float) -> dict[str, Any]:
        since = time.time() - window_s
        recent = [list(r) for r in list(self.recent) if r[0] >= since]
        return {"requests": self.requests, "errors": self.errors,
                "recent": recent[-SAMPLES_PER_HEARTBEAT:]}


def summarize(snapshots: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts summed over workers; error rate and latency percentiles over the window."""
    recent = [r for s in snapshots for r in s["recent"]]
    latencies = np.array([r[1] for r in recent]) * 1000
    window_errors = sum(1 for r in recent if not r[2])
    out: dict[str, Any] = {"requests": sum(s["requests"] for s in snapshots),
                           "errors": sum(s["errors"] for s in snapshots),
                           "window_requests": len(recent),
                           "window_error_rate": window_errors / len(recent) if recent else 0.0}
    for q in (50, 90, 99):
        out[f"p{q}_ms"] = round(float(np.percentile(latencies, q)), 3) if len(recent) else None
    return out


@dataclass
class Agreement:
    """Shadow mode: how the candidate's answers compare with the stable version's."""

    compared: int = 0  # requests mirrored and answered
    items: int = 0
    agreed: int = 0  # items with the same label
    max_abs_diff: float = 0.0
    skipped: int = 0  # not mirrored: too many shadow copies already in flight

    def add(self, stable: np.ndarray, candidate: np.ndarray) -> None:
        agreed, items, diff = compare(stable, candidate)
        self.compared += 1
        self.items += items
        self.agreed += agreed
        self.max_abs_diff = max(self.max_abs_diff, diff)

    @property
    def rate(self) -> float | None:
        return self.agreed / self.items if self.items else None


def merge_agreements(parts: list[dict[str, Any]]) -> dict[str, Any]:
    total = Agreement(**{k: sum(p[k] for p in parts) for k in ("compared", "items", "agreed",
                                                                "skipped")},
                      max_abs_diff=max((p["max_abs_diff"] for p in parts), default=0.0))
    return {**asdict(total), "agreement": total.rate}


def labels_of(output: np.ndarray) -> np.ndarray:
    flat = output.reshape(output.shape[0], -1)
    if flat.shape[1] == 1:  # a probability of the positive class
        return flat[:, 0] >= 0.5
    return flat.argmax(axis=1)


def compare(stable: np.ndarray, candidate: np.ndarray) -> tuple[int, int, float]:
    """(items with the same label, items, max |Δ|) between two answers to the same request."""
    items = int(stable.shape[0])
    if stable.shape != candidate.shape:
        return 0, items, float("inf")
    if not stable.size:
        return items, items, 0.0
    diff = float(np.max(np.abs(stable.astype(np.float64) - candidate.astype(np.float64))))
    return int((labels_of(stable) == labels_of(candidate)).sum()), items, diff


def _header(headers: Mapping[str, str] | None, name: str) -> str | None:
    if not headers:
        return None
    return headers.get(name) or headers.get(name.title())


def sticky_fraction(key: str, rollout_id: str) -> float:
    """A number in [0, 1) fixed by client key and rollout: the same in every worker process."""
    digest = hashlib.blake2b(f"{rollout_id}\0{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


# -- the per-process rollout controller --------------------------------------------------------
class Rollout:
    """One worker's view of the rollout state: routing, outcomes, shadowing and admin actions."""

    def __init__(self, config: ServeConfig, repository: Repository) -> None:
        self.config = config
        self.repository = repository
        self.store = StateStore(default_state_path(config))
        self.defaults = Limits.from_config(config)
        self.plans: dict[str, Plan] = {}  # replaced whole, never mutated: readers need no lock
        self.revision = 0
        self.outcomes: dict[tuple[str, str], Outcomes] = {}
        self.agreement: dict[str, Agreement] = {}
        self._signature: tuple[int, int, int] | None = None
        self._apply_lock = threading.Lock()
        self._last_check: dict[str, float] = {}
        self._rolling_back: set[str] = set()
        self._shadow_inflight = 0
        self._tasks: set[asyncio.Task] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- watching the state file --------------------------------------------------------------
    def start(self) -> None:
        """Apply the stored state now (before ready), then watch it from a background thread."""
        self.sync()
        self._thread = threading.Thread(target=self._watch, name="podium-rollout", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _watch(self) -> None:
        poll_s = self.config.rollout_poll_ms / 1000
        last_beat = 0.0
        while not self._stop.wait(poll_s):
            try:
                self.sync()
                # Judge on a clock too, not only when a request arrives: a burst that ends
                # inside the judging throttle would otherwise never get its verdict.
                for name, plan in list(self.plans.items()):
                    if plan.candidate is not None:
                        self._judge(name, plan)
                if time.monotonic() - last_beat >= HEARTBEAT_S:
                    last_beat = time.monotonic()
                    self._heartbeat()
            except Exception:  # the watcher must outlive any one bad moment
                log.exception("rollout watcher")

    def sync(self) -> None:
        """Apply the state file if it changed since this worker last applied it."""
        signature = self.store.signature()
        if signature == self._signature:
            return
        with self._apply_lock:
            try:
                state = self.store.read()
            except StateError as exc:
                log.error("%s; keeping the current routing", exc)
                self._signature = signature
                return
            plans = dict(self.plans)
            for name, entry in state["models"].items():
                if name not in self.repository.loaded:
                    continue
                try:
                    plan = Plan.from_entry(entry, self.defaults)
                    if plans.get(name) == plan:
                        continue
                    for version in plan.versions():  # loaded and warm before any request sees it
                        self.repository.load_version(name, version)
                except Exception as exc:
                    log.error("rollout: cannot apply the state of %s (%s); %s keeps serving",
                              name, exc, self.repository.stable.get(name))
                    continue
                old = plans.get(name)
                if old is None or old.rollout_id != plan.rollout_id:
                    self._reset(name)
                plans[name] = plan
                log.info("rollout: %s stable=%s candidate=%s mode=%s percent=%g (revision %s)",
                         name, plan.stable, plan.candidate, plan.mode, plan.percent,
                         state.get("revision"))
            self.plans = plans  # one assignment: a request sees the old table or the new one
            for name, plan in plans.items():
                self.repository.stable[name] = plan.stable
            self.revision = int(state.get("revision", 0))
            self._signature = signature

    def _reset(self, name: str) -> None:
        for key in [k for k in self.outcomes if k[0] == name]:
            del self.outcomes[key]
        self.agreement.pop(name, None)

    # -- the request path ----------------------------------------------------------------------
    def route(self, name: str, headers: Mapping[str, str] | None) -> str | None:
        """The version that answers a request that named none (None: no rollout state)."""
        plan = self.plans.get(name)
        if plan is None:
            return None
        if plan.candidate is None:
            return plan.stable
        pin = _header(headers, PIN_HEADER)
        if pin:
            side = pin.strip().lower()
            if side not in ("stable", "candidate"):
                raise InvalidInput(f"{PIN_HEADER.title()} must be 'stable' or 'candidate'",
                                   field=PIN_HEADER.title())
            return plan.candidate if side == "candidate" else plan.stable
        if plan.mode != "canary":
            return plan.stable
        key = _header(headers, CLIENT_KEY_HEADER)
        u = sticky_fraction(key, plan.rollout_id) if key else random.random()
        return plan.candidate if u * 100 < plan.percent else plan.stable

    def record(self, loaded: LoadedVersion, seconds: float, ok: bool) -> None:
        key = (loaded.name, loaded.version)
        outcomes = self.outcomes.get(key)
        if outcomes is None:
            outcomes = self.outcomes[key] = Outcomes()
        outcomes.add(seconds, ok)
        plan = self.plans.get(loaded.name)
        if plan is not None and plan.candidate == loaded.version:
            self._judge(loaded.name, plan)

    def mirror(self, loaded: LoadedVersion, feeds: dict[str, Any], outputs: list[Any]) -> None:
        """In shadow mode, send a copy of a stable request to the candidate, off the response path."""
        plan = self.plans.get(loaded.name)
        if plan is None or plan.mode != "shadow" or plan.candidate is None \
                or loaded.version != plan.stable:
            return
        candidate = self.repository.loaded.get(loaded.name, {}).get(plan.candidate)
        if candidate is None:
            return
        agreement = self.agreement.setdefault(loaded.name, Agreement())
        if self._shadow_inflight >= self.config.rollout_shadow_inflight:
            agreement.skipped += 1
            return
        self._shadow_inflight += 1
        task = asyncio.get_running_loop().create_task(
            self._shadow(plan, candidate, feeds, outputs[0]))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _shadow(self, plan: Plan, candidate: LoadedVersion, feeds: dict[str, Any],
                      stable_out: np.ndarray) -> None:
        started = time.perf_counter()
        try:
            (out, *_) = await candidate.infer(feeds)
        except Exception as exc:
            self.record(candidate, time.perf_counter() - started, ok=False)
            log.debug("shadow %s:%s failed: %s", candidate.name, candidate.version, exc)
        else:
            if self.plans.get(candidate.name) is plan:
                self.agreement.setdefault(candidate.name, Agreement()).add(stable_out, out)
            self.record(candidate, time.perf_counter() - started, ok=True)
        finally:
            self._shadow_inflight -= 1

    def _judge(self, name: str, plan: Plan) -> None:
        """Roll the candidate back by itself when it passes a limit over the window."""
        now = time.monotonic()
        if now - self._last_check.get(name, 0.0) < 0.2 or name in self._rolling_back:
            return
        self._last_check[name] = now
        assert plan.limits is not None and plan.candidate is not None
        limits = plan.limits
        outcomes = self.outcomes.get((name, plan.candidate))
        if outcomes is None:
            return
        seen = summarize([outcomes.snapshot(limits.window_s)])
        reason = None
        if seen["window_requests"] >= limits.min_requests:
            if limits.max_error_rate and seen["window_error_rate"] > limits.max_error_rate:
                reason = (f"error rate {seen['window_error_rate']:.1%} > "
                          f"{limits.max_error_rate:.1%} over {seen['window_requests']} requests")
            elif limits.max_p99_ms and seen["p99_ms"] > limits.max_p99_ms:
                reason = (f"p99 {seen['p99_ms']:.1f} ms > {limits.max_p99_ms:g} ms over "
                          f"{seen['window_requests']} requests")
        agreement = self.agreement.get(name)
        if reason is None and plan.mode == "shadow" and limits.min_agreement and agreement \
                and agreement.items >= limits.min_requests \
                and (agreement.rate or 0.0) < limits.min_agreement:
            reason = (f"shadow agreement {agreement.rate:.1%} < {limits.min_agreement:.1%} "
                      f"over {agreement.items} items")
        if reason is not None:
            self._rolling_back.add(name)
            threading.Thread(target=self._auto_rollback, args=(name, plan.candidate, reason),
                             name="podium-auto-rollback", daemon=True).start()

    def _auto_rollback(self, name: str, candidate: str, reason: str) -> None:
        try:
            self.rollback(name, reason=f"automatic: {reason}", actor="auto", expect=candidate)
        except PodiumError as exc:  # another worker got there first
            log.info("automatic rollback of %s:%s not needed: %s", name, candidate, exc.message)
        except Exception:
            log.exception("automatic rollback of %s:%s failed", name, candidate)
        finally:
            self._rolling_back.discard(name)

    # -- admin actions (blocking: call from a thread) ------------------------------------------
    def _prepare(self, name: str, version: str) -> None:
        """Load, verify and warm a version in this worker, or refuse it with a clear error."""
        try:
            self.repository.load_version(name, version)
        except CorruptVersion as exc:
            raise VersionRefused(f"refused: {exc}; {name}:{self.repository.stable[name]} keeps "
                                 f"serving", field="version") from None
        except PodiumError:
            raise
        except Exception as exc:
            raise VersionRefused(f"refused: {name}:{version} failed to load: {exc}; "
                                 f"{name}:{self.repository.stable[name]} keeps serving",
                                 field="version") from None

    def _entry(self, state: dict[str, Any], name: str) -> dict[str, Any]:
        entry = state["models"].get(name)
        if entry is None:
            entry = state["models"][name] = {"stable": self.repository.stable[name]}
        return entry

    def _commit(self, change: Any) -> dict[str, Any]:
        with self.store.transaction() as state:
            event = change(state)
            event["time"] = time.time()
            state.setdefault("events", []).append(event)
        level = logging.WARNING if event.get("actor") == "auto" else logging.INFO
        log.log(level, "rollout %s %s: %s", event["action"], event["model"],
                {k: v for k, v in event.items() if k not in ("action", "model", "time")})
        self.sync()  # this worker switches before answering; the others within a poll
        return event

    def begin(self, name: str, version: str, mode: str = "canary", percent: float = 10.0,
              limits: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Start (or re-tune) a rollout of ``version`` as a canary or a shadow."""
        self.repository.model(name)
        if mode not in MODES:
            raise InvalidInput(f"mode must be one of {', '.join(MODES)}", field="mode")
        if isinstance(percent, bool) or not isinstance(percent, int | float) \
                or not 0 <= percent <= 100:
            raise InvalidInput("percent must be a number from 0 to 100", field="percent")
        checked = self.defaults.updated(limits or {})
        self._prepare(name, version)

        def change(state: dict[str, Any]) -> dict[str, Any]:
            entry = self._entry(state, name)
            if version == entry["stable"]:
                raise Conflict(f"{name}:{version} is already the stable version")
            current = entry.get("candidate")
            if current not in (None, version):
                raise Conflict(f"a rollout of {name}:{current} is in progress; promote or roll "
                               f"it back first")
            if current is None:
                entry.update(rollout_id=uuid.uuid4().hex[:12], started=time.time())
            entry.update(candidate=version, mode=mode,
                         percent=float(percent) if mode == "canary" else 0.0,
                         limits=asdict(checked))
            return {"action": "start" if current is None else "update", "model": name,
                    "stable": entry["stable"], "candidate": version, "mode": mode,
                    "percent": entry["percent"], "actor": "admin"}

        return self._commit(change)

    def promote(self, name: str, version: str | None = None) -> dict[str, Any]:
        """Make the candidate (or ``version``) the stable version; the old one is kept for rollback."""
        self.repository.model(name)
        if version is not None:
            self._prepare(name, version)

        def change(state: dict[str, Any]) -> dict[str, Any]:
            entry = self._entry(state, name)
            target = version or entry.get("candidate")
            if target is None:
                raise Conflict(f"no rollout of {name} is in progress; start one, or name the "
                               f"version to promote")
            if entry.get("candidate") not in (None, target):
                raise Conflict(f"a rollout of {name}:{entry['candidate']} is in progress; "
                               f"promote or roll back that one")
            if target == entry["stable"]:
                raise Conflict(f"{name}:{target} is already the stable version")
            old = entry["stable"]
            entry.update(stable=target, previous=old, candidate=None, mode=None, percent=0.0,
                         rollout_id="", limits=None)
            return {"action": "promote", "model": name, "from": old, "to": target,
                    "actor": "admin"}

        return self._commit(change)

    def rollback(self, name: str, reason: str = "", actor: str = "admin",
                 expect: str | None = None) -> dict[str, Any]:
        """Abort a rollout in progress, or else return to the previous stable version.

        ``expect`` (automatic rollback): act only while that version is still the candidate.
        """
        self.repository.model(name)

        def change(state: dict[str, Any]) -> dict[str, Any]:
            entry = self._entry(state, name)
            candidate = entry.get("candidate")
            if expect is not None and candidate != expect:
                raise Conflict(f"{name}:{expect} is no longer the candidate")
            if candidate is not None:
                entry.update(candidate=None, mode=None, percent=0.0, rollout_id="", limits=None)
                return {"action": "rollback", "model": name, "from": candidate,
                        "to": entry["stable"], "reason": reason, "actor": actor}
            previous = entry.get("previous")
            if not previous:
                raise Conflict(f"nothing to roll back for {name}: no rollout in progress and no "
                               f"previous stable version")
            old = entry["stable"]
            entry.update(stable=previous, previous=None)
            return {"action": "rollback", "model": name, "from": old, "to": previous,
                    "reason": reason, "actor": actor}

        return self._commit(change)

    # -- status --------------------------------------------------------------------------------
    def _snapshot(self) -> dict[str, Any]:
        window = {name: (p.limits or self.defaults).window_s for name, p in self.plans.items()}
        stats: dict[str, dict[str, Any]] = {}
        for (name, version), outcomes in list(self.outcomes.items()):
            snap = outcomes.snapshot(window.get(name, self.defaults.window_s))
            stats.setdefault(name, {})[version] = snap
        return {"pid": os.getpid(), "revision": self.revision, "time": time.time(),
                "stats": stats,
                "agreement": {n: asdict(a) for n, a in list(self.agreement.items())}}

    def _heartbeat(self) -> None:
        directory = self.store.heartbeat_dir
        directory.mkdir(parents=True, exist_ok=True)
        write_atomically(directory / f"{os.getpid()}.json", json.dumps(self._snapshot()))
        for old in directory.glob("*.json"):  # workers of earlier runs
            with contextlib.suppress(OSError):
                if time.time() - old.stat().st_mtime > 60:
                    old.unlink()

    def _workers(self) -> list[dict[str, Any]]:
        mine = self._snapshot()
        found = [mine]
        for path in self.store.heartbeat_dir.glob("*.json"):
            try:
                beat = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if beat.get("pid") != mine["pid"] and time.time() - beat.get("time", 0) \
                    < HEARTBEAT_STALE_S:
                found.append(beat)
        return found

    def status(self, name: str | None = None) -> dict[str, Any]:
        """Per model: versions, roles, traffic shares, outcomes (all workers) and events."""
        try:
            state = self.store.read()
        except StateError as exc:
            state = {**empty_state(), "error": str(exc)}
        names = [name] if name else list(self.repository.loaded)
        if name:
            self.repository.model(name)
        workers = self._workers()
        models = {}
        for model in names:
            plan = self.plans.get(model) or Plan(stable=self.repository.stable[model])
            share = {plan.stable: 100.0}
            if plan.candidate and plan.mode == "canary":
                share = {plan.stable: 100.0 - plan.percent, plan.candidate: plan.percent}
            versions = {}
            for version in self.repository.loaded.get(model, {}):
                role = ("stable" if version == plan.stable else
                        "candidate" if version == plan.candidate else
                        "previous" if version == plan.previous else "loaded")
                snaps = [w["stats"][model][version] for w in workers
                         if version in w.get("stats", {}).get(model, {})]
                versions[version] = {"role": role, "share_percent": share.get(version, 0.0),
                                     **summarize(snaps)}
            info: dict[str, Any] = {
                "stable": plan.stable, "candidate": plan.candidate, "mode": plan.mode,
                "percent": plan.percent, "previous": plan.previous,
                "started": plan.started or None,
                "limits": asdict(plan.limits) if plan.limits and plan.candidate else None,
                "versions": versions,
                "events": [e for e in state.get("events", []) if e.get("model") == model][-10:]}
            if plan.mode == "shadow":
                parts = [w["agreement"][model] for w in workers if model in w.get("agreement", {})]
                info["shadow"] = merge_agreements(parts)
            models[model] = info
        return {"state_file": str(self.store.path), "revision": state.get("revision", 0),
                "workers": [{"pid": w["pid"], "revision": w["revision"]} for w in workers],
                "models": models, **({"error": state["error"]} if "error" in state else {})}


__all__ = ["Limits", "Plan", "Rollout", "StateStore", "VersionRefused", "compare",
           "sticky_fraction"]
