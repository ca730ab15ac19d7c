"""The rollout state and its pure transitions: what every replica follows, with no I/O here.

A ``State`` holds, per model, a ``ModelRollout`` (stable, candidate, mode, share, previous stable,
limits) plus a revision and the last events. ``begin``, ``promote`` and ``rollback`` take the
current ``ModelRollout`` and return the next one with the event that describes the change, or
raise ``Conflict``/``InvalidInput``; the store writes the result with a compare-and-set on the
revision (``services.rollout.store``). Versions in a state are always full version strings that
were resolved against the model store before being written.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from services.config import ServeConfig
from services.errors import Conflict, InvalidInput

MODES = ("canary", "shadow")
KEEP_EVENTS = 100


class StateInvalid(ValueError):
    """A stored state that is not a Podium rollout state."""


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
class ModelRollout:
    """One model's routing: the stable version, and a candidate while a rollout runs."""

    stable: str
    candidate: str | None = None
    mode: str | None = None
    percent: float = 0.0
    previous: str | None = None
    rollout_id: str = ""
    started: float = 0.0
    limits: Limits | None = None

    def versions(self) -> list[str]:
        """Every version this rollout needs loaded: stable, candidate and the previous stable."""
        return [v for v in (self.stable, self.candidate, self.previous) if v]

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["limits"] = asdict(self.limits) if self.limits else None
        return out

    @classmethod
    def from_json(cls, entry: Any, defaults: Limits) -> ModelRollout:
        if not isinstance(entry, dict) or not isinstance(entry.get("stable"), str):
            raise StateInvalid(f"a model entry needs a 'stable' version: {entry!r:.200}")
        try:
            return cls(stable=entry["stable"], candidate=entry.get("candidate"),
                       mode=entry.get("mode"), percent=float(entry.get("percent") or 0.0),
                       previous=entry.get("previous"), rollout_id=entry.get("rollout_id") or "",
                       started=float(entry.get("started") or 0.0),
                       limits=defaults.updated(entry["limits"]) if entry.get("limits") else None)
        except (TypeError, ValueError, InvalidInput) as exc:
            raise StateInvalid(f"bad model entry {entry!r:.200}: {exc}") from None


@dataclass(frozen=True)
class State:
    """Every model's rollout, the revision that named it, and the last events."""

    revision: int = 0
    models: Mapping[str, ModelRollout] = field(default_factory=dict)
    events: tuple[dict[str, Any], ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"revision": self.revision,
                "models": {name: m.to_json() for name, m in self.models.items()},
                "events": list(self.events)}

    @classmethod
    def from_json(cls, raw: Any, defaults: Limits) -> State:
        if not isinstance(raw, dict) or not isinstance(raw.get("models"), dict):
            raise StateInvalid("not a Podium rollout state (no 'models' object)")
        revision = raw.get("revision", 0)
        if isinstance(revision, bool) or not isinstance(revision, int) or revision < 0:
            raise StateInvalid(f"bad revision {revision!r}")
        models = {name: ModelRollout.from_json(entry, defaults)
                  for name, entry in raw["models"].items()}
        events = raw.get("events") or []
        return cls(revision, models, tuple(e for e in events if isinstance(e, dict)))

    def changed(self, name: str, model: ModelRollout, event: dict[str, Any]) -> State:
        """The next revision, with ``name`` set to ``model`` and ``event`` logged."""
        revision = self.revision + 1
        event = {**event, "revision": revision}
        return State(revision, {**self.models, name: model},
                     (*self.events, event)[-KEEP_EVENTS:])


# -- transitions --------------------------------------------------------------------------------
def check_split(mode: Any, percent: Any) -> None:
    """Refuse a mode or canary share that cannot be applied."""
    if mode not in MODES:
        raise InvalidInput(f"mode must be one of {', '.join(MODES)}", field="mode")
    if isinstance(percent, bool) or not isinstance(percent, int | float) or not 0 <= percent <= 100:
        raise InvalidInput("percent must be a number from 0 to 100", field="percent")


def begin(current: ModelRollout, name: str, version: str, mode: str, percent: Any,
          limits: Limits, rollout_id: str, now: float) -> tuple[ModelRollout, dict[str, Any]]:
    """Start (or re-tune) a rollout of ``version`` as a canary or a shadow."""
    check_split(mode, percent)
    if version == current.stable:
        raise Conflict(f"{name}:{version} is already the stable version")
    if current.candidate not in (None, version):
        raise Conflict(f"a rollout of {name}:{current.candidate} is in progress; promote or roll "
                       f"it back first")
    fresh = current.candidate is None
    nxt = replace(current, candidate=version, mode=mode,
                  percent=float(percent) if mode == "canary" else 0.0, limits=limits,
                  rollout_id=rollout_id if fresh else current.rollout_id,
                  started=now if fresh else current.started)
    return nxt, {"action": "start" if fresh else "update", "model": name,
                 "stable": current.stable, "candidate": version, "mode": mode,
                 "percent": nxt.percent, "actor": "admin"}


def promote(current: ModelRollout, name: str, version: str | None
            ) -> tuple[ModelRollout, dict[str, Any]]:
    """Make the candidate (or ``version``) stable; the old stable is kept as ``previous``."""
    target = version or current.candidate
    if target is None:
        raise Conflict(f"no rollout of {name} is in progress; start one, or name the version "
                       f"to promote")
    if current.candidate not in (None, target):
        raise Conflict(f"a rollout of {name}:{current.candidate} is in progress; promote or roll "
                       f"back that one")
    if target == current.stable:
        raise Conflict(f"{name}:{target} is already the stable version")
    return (ModelRollout(stable=target, previous=current.stable),
            {"action": "promote", "model": name, "from": current.stable, "to": target,
             "actor": "admin"})


def rollback(current: ModelRollout, name: str, reason: str = "", actor: str = "admin",
             expect: str | None = None) -> tuple[ModelRollout, dict[str, Any]]:
    """Abort a rollout in progress, or else return to the previous stable version.

    ``expect`` (the automatic verdict) acts only while that rollout is still in progress, so a
    verdict reached twice changes the state once.
    """
    if expect is not None and current.rollout_id != expect:
        raise Conflict(f"the rollout {expect} of {name} is no longer in progress")
    if current.candidate is not None:
        return (ModelRollout(stable=current.stable, previous=current.previous),
                {"action": "rollback", "model": name, "from": current.candidate,
                 "to": current.stable, "reason": reason, "actor": actor})
    if not current.previous:
        raise Conflict(f"nothing to roll back for {name}: no rollout in progress and no previous "
                       f"stable version")
    return (ModelRollout(stable=current.previous),
            {"action": "rollback", "model": name, "from": current.stable, "to": current.previous,
             "reason": reason, "actor": actor})
