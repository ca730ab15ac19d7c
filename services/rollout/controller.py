"""One worker's rollout: follows the shared state, routes, records outcomes, judges, acts.

A watcher thread reads the store every ``rollout_poll_ms``. A new revision is applied only after
every version it names has been resolved to exactly that full version, verified and warmed in
this worker; a state naming anything else (``latest``, a prefix, a missing version) is refused,
logged, and the current routing kept. Then the routing table is replaced in one assignment, the
repository (the one owner of "stable" in a worker) switches, and versions no rollout needs any
more are drained and unloaded.

Every ``HEARTBEAT_S`` the worker publishes its applied revision and outcome counts; whichever
worker holds the lease sums the counts of every worker of every replica and rolls a failing
candidate back (a compare-and-set that names the rollout, so it happens once).

When the store cannot be reached the worker keeps its last plan; after ``rollout_store_grace_s``
a canary sends everything to stable until the store is back. A worker is not ready until it has
read the store once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from models.artifacts import CorruptVersion
from services.config import ServeConfig
from services.errors import Conflict, PodiumError
from services.repository import LoadedVersion, Repository
from services.rollout import report
from services.rollout import state as transitions
from services.rollout.judge import Recorder, judge_beats
from services.rollout.router import route
from services.rollout.state import Limits, ModelRollout, State, StateInvalid
from services.rollout.store import RolloutStore, StateUnreadable, StoreUnavailable, open_store

log = logging.getLogger("podium.rollout")

HEARTBEAT_S = 0.5
LEASE_S = 3.0  # a judge that stops is replaced after this long
COMMIT_TRIES = 5


class VersionRefused(PodiumError):
    """A version that cannot serve (its files fail their checksums, or it fails to load)."""

    status = 422


class Rollout:
    """This worker's view of the shared rollout state, its outcomes and the admin actions."""

    def __init__(self, config: ServeConfig, repository: Repository,
                 store: RolloutStore | None = None) -> None:
        self.config = config
        self.repository = repository
        self.store = store or open_store(config)
        self.defaults = Limits.from_config(config)
        self.worker = f"{socket.gethostname()}-{os.getpid()}"
        self.state = State()  # the last state applied here; replaced whole
        self.plans: dict[str, ModelRollout] = {}  # replaced whole: readers need no lock
        self.refused: dict[str, str] = {}  # model → why this worker refused the stored plan
        self.ready = threading.Event()  # set once the store has been read
        self._contact = time.monotonic()  # the last successful read of the store
        self._applied_text: str | None = None  # the stored text last seen and applied
        self._outage: str | None = None
        self._apply_lock = threading.Lock()  # one apply at a time (watcher and admin threads)
        self.outcomes = Recorder()  # guarded by its own lock
        self._unselectable: set[tuple[str, str]] = set()
        self._shadow_inflight = 0  # event loop only
        self._tasks: set[asyncio.Task] = set()
        self._stop = threading.Event()

    # -- following the store ------------------------------------------------------------------
    def start(self) -> None:
        """Apply the stored state now if the store answers, then follow it from a thread."""
        self._follow()
        threading.Thread(target=self._watch, name="podium-rollout", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def _watch(self) -> None:
        poll_s = self.config.rollout_poll_ms / 1000
        last_beat = 0.0
        while not self._stop.wait(poll_s):
            self._follow()
            if time.monotonic() - last_beat < HEARTBEAT_S:
                continue
            last_beat = time.monotonic()
            try:
                mine = self._snapshot()
                self.store.beat(self.worker, mine)
                self._judge_all(mine)
            except StoreUnavailable:
                pass  # reported by _follow
            except Exception:  # the watcher must outlive any one bad moment
                log.exception("rollout heartbeat")

    def _follow(self) -> None:
        try:
            self.sync()
        except StoreUnavailable as exc:
            if self._outage is None:
                log.error("rollout: %s; keeping revision %d (a canary falls back to stable after "
                          "%gs)", exc.message, self.state.revision, self.config.rollout_store_grace_s)
            self._outage = exc.message
            if isinstance(exc, StateUnreadable):
                self.ready.set()  # the store answered: serve the current routing
            return
        except Exception:
            log.exception("rollout: applying the state failed")
            return
        if self._outage is not None:
            log.warning("rollout: the store answers again (revision %d)", self.state.revision)
            self._outage = None

    def _read(self) -> State:
        return self._parse(self.store.read())

    def _parse(self, text: str | None) -> State:
        try:
            return State.from_json(json.loads(text), self.defaults) if text else State()
        except (ValueError, StateInvalid) as exc:
            raise StateUnreadable(f"rollout state in {self.store.where} is unreadable: {exc}") \
                from None

    def sync(self) -> None:
        """Apply the stored state if its revision is not the one applied here."""
        with self._apply_lock:
            text = self.store.read()
            self._contact = time.monotonic()
            if self.ready.is_set() and text == self._applied_text:
                return  # every poll of an unchanged state: no parse, no validation
            state = self._parse(text)
            if not self.ready.is_set() or state.revision != self.state.revision:
                self._apply(state)
            self._applied_text = text
            self.ready.set()

    def _load(self, name: str, plan: ModelRollout) -> None:
        """Load and warm every version ``plan`` names, each of which must be exactly a stored
        version. A candidate that fails to load here does not block the plan: its share is
        answered by stable and counted as its failures, so the verdict sees it."""
        for version in plan.versions():
            full = self.repository.resolve(name, version)
            if full != version:
                raise ValueError(f"{version!r} is not a full version of {name} (it means {full})")
        for version in plan.versions():
            try:
                self.repository.load_version(name, version)
            except Exception as exc:
                if version != plan.candidate:
                    raise
                log.error("rollout: candidate %s:%s cannot load here (%s); its share is answered "
                          "by stable and counted against it", name, version,
                          getattr(exc, "message", exc))

    def _apply(self, state: State) -> None:
        plans: dict[str, ModelRollout] = {}
        switched = []
        refused: dict[str, str] = {}
        for name, plan in state.models.items():
            if name not in self.repository.loaded:
                continue
            old = self.plans.get(name)
            if plan == old:
                plans[name] = plan
                continue
            try:
                self._load(name, plan)  # loaded and warm before any request sees it
            except Exception as exc:
                refused[name] = str(getattr(exc, "message", exc))
                log.error("rollout: revision %d of %s refused: %s; %s keeps serving",
                          state.revision, name, refused[name], self.repository.stable[name])
                if old is not None:
                    plans[name] = old
                continue
            plans[name] = plan
            switched.append((name, plan, old))
        self.plans = plans  # one assignment: a request sees the old table or the new one
        for name, plan, old in switched:
            self.repository.set_stable(name, plan.stable)
            if old is None or old.rollout_id != plan.rollout_id:
                self.outcomes.reset(name, plan.rollout_id)
            self.repository.retain(name, plan.versions())
            log.info("rollout: %s stable=%s candidate=%s mode=%s percent=%g (revision %d)",
                     name, plan.stable, plan.candidate, plan.mode, plan.percent, state.revision)
        self.refused = refused  # shown per worker in status: seen, but not applied
        self.state = state

    def stale(self) -> bool:
        """The store has not answered for longer than the grace period."""
        return time.monotonic() - self._contact > self.config.rollout_store_grace_s

    # -- the request path ----------------------------------------------------------------------
    def select(self, name: str, headers: Mapping[str, str] | None) -> LoadedVersion:
        """The version that answers a request that named none: stable, or the candidate.

        A candidate that cannot be selected counts as its failure and stable answers instead.
        """
        plan = self.plans.get(name)
        if plan is not None and plan.candidate is not None and self.stale():
            plan = None  # the store is gone: no canary on a plan nobody can judge or stop
        version = route(plan, headers)
        if version is None:
            return self.repository.get(name)
        try:
            return self.repository.get(name, version)
        except PodiumError as exc:
            if (name, version) not in self._unselectable:  # once, not once per request
                self._unselectable.add((name, version))
                log.warning("rollout: candidate %s:%s cannot be selected (%s); stable answers",
                            name, version, exc.message)
            self._add(name, version, 0.0, ok=False)
            return self.repository.get(name)

    def _limits(self, name: str) -> Limits:
        plan = self.plans.get(name)
        return plan.limits if plan is not None and plan.limits else self.defaults

    def _add(self, name: str, version: str, seconds: float, ok: bool) -> None:
        self.outcomes.add(name, version, seconds, ok, self._limits(name).max_p99_ms / 1000)

    def record(self, loaded: LoadedVersion, seconds: float, ok: bool) -> None:
        """One request's outcome (counted when the recorder is next drained: ``Recorder``)."""
        name = loaded.name
        plan = self.plans.get(name)  # ``_add``, inline: every request of every version comes here
        limits = plan.limits if plan is not None and plan.limits else self.defaults
        self.outcomes.add(name, loaded.version, seconds, ok, limits.max_p99_ms / 1000)

    def drain(self) -> None:
        """Count the outcomes recorded so far (``Recorder.drain``)."""
        self.outcomes.drain()

    def mirror(self, loaded: LoadedVersion, feeds: dict[str, Any], outputs: list[Any]) -> None:
        """In shadow mode, send a copy of a stable request to the candidate, off the response path."""
        plan = self.plans.get(loaded.name)
        if plan is None or plan.mode != "shadow" or plan.candidate is None \
                or loaded.version != plan.stable:
            return
        candidate = self.repository.loaded.get(loaded.name, {}).get(plan.candidate)
        if candidate is None:
            self._add(loaded.name, plan.candidate, 0.0, ok=False)
            return
        if self._shadow_inflight >= self.config.rollout_shadow_inflight:
            self.outcomes.skipped(loaded.name)
            return
        self._shadow_inflight += 1
        task = asyncio.get_running_loop().create_task(
            self._shadow(plan, candidate, feeds, outputs[0]))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _shadow(self, plan: ModelRollout, candidate: LoadedVersion, feeds: dict[str, Any],
                      stable_out: np.ndarray) -> None:
        started = time.perf_counter()
        try:
            (out, *_) = await candidate.infer(feeds)
        except Exception as exc:
            self.record(candidate, time.perf_counter() - started, ok=False)
            log.debug("shadow %s:%s failed: %s", candidate.name, candidate.version, exc)
        else:
            self.outcomes.agree(candidate.name, plan.rollout_id, stable_out, out)
            self.record(candidate, time.perf_counter() - started, ok=True)
        finally:
            self._shadow_inflight -= 1

    # -- heartbeats and the verdict ------------------------------------------------------------
    def _snapshot(self) -> dict[str, Any]:
        return {"worker": self.worker, "revision": self.state.revision, "time": time.time(),
                "refused": self.refused,
                "models": self.outcomes.snapshot(lambda name: self._limits(name).window_s)}

    def _beats(self, mine: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Every live worker's heartbeat, this worker's taken fresh (or the one just sent)."""
        mine = mine or self._snapshot()
        return [mine, *(b for b in self.store.beats() if b.get("worker") != self.worker)]

    def _judge_all(self, mine: dict[str, Any]) -> None:
        rollouts = [(n, p) for n, p in self.plans.items() if p.candidate is not None]
        if not rollouts or not self.store.lease(self.worker, LEASE_S):
            return
        beats = self._beats(mine)
        for name, plan in rollouts:
            found = judge_beats(name, plan, beats, self.defaults)
            if found.result != "fail":
                continue
            try:
                self.rollback(name, reason=f"automatic: {found.reason}", actor="auto",
                              expect=plan.rollout_id)
            except Conflict as exc:  # already rolled back or replaced
                log.info("automatic rollback of %s not needed: %s", name, exc.message)

    # -- admin actions (blocking: call from a thread) ------------------------------------------
    def _prepare(self, name: str, version: str) -> str:
        """Resolve ``version`` to a full stored version, load, verify and warm it here."""
        full = self.repository.resolve(name, version)
        try:
            self.repository.load_version(name, full)
        except CorruptVersion as exc:
            raise VersionRefused(f"refused: {exc}; {name}:{self.repository.stable[name]} keeps "
                                 f"serving", field="version") from None
        except PodiumError:
            raise
        except Exception as exc:
            raise VersionRefused(f"refused: {name}:{full} failed to load: {exc}; "
                                 f"{name}:{self.repository.stable[name]} keeps serving",
                                 field="version") from None
        return full

    def _commit(self, name: str,
                change: Callable[[ModelRollout], tuple[ModelRollout, dict[str, Any]]]
                ) -> dict[str, Any]:
        """Apply ``change`` to the stored state with a compare-and-set; retried on a race."""
        for _ in range(COMMIT_TRIES):
            try:
                current: State = self._read()
                expected: int | None = current.revision
            except StateUnreadable as exc:
                # Rollback must work whenever serving does: rebuild from what this worker applied.
                log.error("%s; rewriting it from revision %d applied here", exc.message,
                          self.state.revision)
                current, expected = self.state, None
            model = current.models.get(name) or ModelRollout(stable=self.repository.stable[name])
            nxt, event = change(model)
            new = current.changed(name, nxt, {**event, "time": time.time()})
            if self.store.swap(expected, new.to_json()):
                break
        else:
            raise Conflict("the rollout state kept changing during this call; retry")
        event = new.events[-1]
        level = logging.WARNING if event.get("actor") == "auto" else logging.INFO
        log.log(level, "rollout %s %s: %s", event["action"], name,
                {k: v for k, v in event.items() if k not in ("action", "model", "time")})
        self._follow()  # this worker switches before answering; the others within a poll
        return event

    def begin(self, name: str, version: str, mode: str = "canary", percent: float = 10.0,
              limits: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Start (or re-tune) a rollout of ``version`` as a canary or a shadow."""
        self.repository.model(name)
        transitions.check_split(mode, percent)
        checked = self.defaults.updated(limits or {})
        full = self._prepare(name, version)
        rollout_id = uuid.uuid4().hex[:12]
        return self._commit(name, lambda m: transitions.begin(
            m, name, full, mode, percent, checked, rollout_id, time.time()))

    def promote(self, name: str, version: str | None = None) -> dict[str, Any]:
        """Make the candidate (or ``version``) stable; the old stable is kept for rollback."""
        self.repository.model(name)
        full = self._prepare(name, version) if version is not None else None
        return self._commit(name, lambda m: transitions.promote(m, name, full))

    def rollback(self, name: str, reason: str = "", actor: str = "admin",
                 expect: str | None = None) -> dict[str, Any]:
        """Abort a rollout in progress, or else return to the previous stable version."""
        self.repository.model(name)
        return self._commit(name, lambda m: transitions.rollback(m, name, reason, actor, expect))

    # -- status and analysis -------------------------------------------------------------------
    def _view(self) -> tuple[State, list[dict[str, Any]], str | None]:
        """The stored state and every worker's heartbeat, or this worker's own when the store
        cannot be read (with the reason)."""
        try:
            return self._read(), self._beats(), None
        except StoreUnavailable as exc:
            return self.state, [self._snapshot()], exc.message

    def status(self, name: str | None = None) -> dict[str, Any]:
        """Per model: versions, roles, traffic shares, outcomes (all workers) and events; and
        which revision every worker of every replica has applied."""
        if name:
            self.repository.model(name)
        state, beats, error = self._view()
        models = {model: report.model_status(
                      model, state.models.get(model) or ModelRollout(stable=self.repository.stable[model]),
                      beats, self.repository.loaded.get(model, {}), state.events)
                  for model in ([name] if name else list(self.repository.loaded))}
        return {"store": self.store.where, **report.workers(beats, state.revision),
                "models": models, **({"error": error} if error else {})}

    def analysis(self, name: str) -> dict[str, Any]:
        """The aggregated verdict on ``name``'s candidate and its figures, for a mesh's
        analysis step (Argo Rollouts' web provider, Flagger's webhooks)."""
        self.repository.model(name)
        state, beats, error = self._view()
        return {**report.analysis(name, state, beats, self.defaults),
                **({"error": error} if error else {})}
