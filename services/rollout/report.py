"""What ``status`` and ``analysis`` answer, built from the stored state and every worker's
heartbeat: pure functions, so the admin answers are testable without a server."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import asdict
from typing import Any

from services.rollout.judge import Agreement, judge_beats, rollout_parts, summarize
from services.rollout.state import Limits, ModelRollout, State


def workers(beats: list[dict[str, Any]], revision: int) -> dict[str, Any]:
    """Which revision every live worker has applied, and whether all have applied ``revision``."""
    found = sorted(({"worker": b["worker"], "revision": b["revision"],
                     "age_s": round(max(0.0, time.time() - b["time"]), 2),
                     "refused": b.get("refused") or {}} for b in beats),
                   key=lambda w: w["worker"])
    return {"revision": revision, "workers": found,
            "applied_everywhere": all(w["revision"] == revision and not w["refused"]
                                      for w in found)}


def model_status(name: str, plan: ModelRollout, beats: list[dict[str, Any]],
                 loaded: Iterable[str], events: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """One model: roles and traffic shares, outcomes summed over every worker, the last events."""
    share = {plan.stable: 100.0}
    if plan.candidate and plan.mode == "canary":
        share = {plan.stable: 100.0 - plan.percent, plan.candidate: plan.percent}
    roles = {plan.stable: "stable", plan.candidate: "candidate", plan.previous: "previous"}
    versions = {}
    for version in dict.fromkeys([*plan.versions(), *loaded]):
        snaps = [b["models"][name]["versions"][version] for b in beats
                 if version in b.get("models", {}).get(name, {}).get("versions", {})]
        versions[version] = {"role": roles.get(version, "loaded"),
                             "share_percent": share.get(version, 0.0), **summarize(snaps)}
    info: dict[str, Any] = {
        "stable": plan.stable, "candidate": plan.candidate, "mode": plan.mode,
        "percent": plan.percent, "previous": plan.previous,
        "rollout_id": plan.rollout_id or None, "started": plan.started or None,
        "limits": asdict(plan.limits) if plan.limits and plan.candidate else None,
        "versions": versions, "events": [e for e in events if e.get("model") == name][-10:]}
    if plan.mode == "shadow":
        info["shadow"] = Agreement.total(
            p["agreement"] for p in rollout_parts(name, plan.rollout_id, beats)
            if "agreement" in p).to_json()
    return info


def analysis(name: str, state: State, beats: list[dict[str, Any]], defaults: Limits
             ) -> dict[str, Any]:
    """The verdict on ``name``'s candidate over every worker, with its figures and limits."""
    plan = state.models.get(name)
    out: dict[str, Any] = {"model": name, "revision": state.revision, "workers": len(beats)}
    if plan is None or plan.candidate is None:
        return {**out, "candidate": None, "verdict": "none", "healthy": True,
                "reason": "no rollout in progress", "figures": {}}
    return {**out, "stable": plan.stable, "candidate": plan.candidate, "mode": plan.mode,
            "percent": plan.percent, "rollout_id": plan.rollout_id,
            "limits": asdict(plan.limits or defaults),
            **judge_beats(name, plan, beats, defaults).to_json()}
