"""The admin API (``/admin``): version rollout — status, start (canary or shadow), promote,
rollback, and the aggregated verdict (``analysis``) — behind a bearer token.

``Authorization: Bearer <admin_token>`` is required: no header → 401, a wrong token → 403, and
with no token configured the whole admin API is off (403 saying how to turn it on). The
prediction endpoints are not affected. Actions that load a version (verify its checksums, warm
it) run in a thread, so serving goes on meanwhile. Every failure is a 4xx or a 503 with a JSON
body naming the problem (an unreachable or unwritable rollout store is 503).
"""

from __future__ import annotations

import asyncio
import hmac
from typing import Any

from starlette.requests import Request

from services.errors import Forbidden, InvalidInput, ModelNotReady, Unauthorized
from services.http import Exchange, parse_json, read_body
from services.rollout import Rollout

MAX_ADMIN_BODY = 64 * 1024


def _authorize(ex: Exchange) -> Rollout:
    plane, request = ex.plane, ex.request
    token = plane.config.admin_token if plane.config else None
    if not token:
        raise Forbidden("the admin API is disabled: set admin_token (PODIUM_ADMIN_TOKEN) to "
                        "enable it")
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise Unauthorized("admin API: send 'Authorization: Bearer <token>'",
                           field="Authorization")
    if not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise Forbidden("admin API: wrong token", field="Authorization")
    if plane.rollout is None:
        raise ModelNotReady("the server is still loading its models")
    return plane.rollout


async def _body(request: Request, allowed: set[str]) -> dict[str, Any]:
    raw = await read_body(request, MAX_ADMIN_BODY)
    if not raw.strip():
        return {}
    payload = parse_json(raw)
    if not isinstance(payload, dict):
        raise InvalidInput("expected a JSON object", field="body")
    unknown = set(payload) - allowed
    if unknown:
        raise InvalidInput(f"unknown field(s) {sorted(unknown)}; allowed: {sorted(allowed)}",
                           field=sorted(unknown)[0])
    return payload


def _optional_str(payload: dict[str, Any], key: str) -> str | None:
    value = payload.get(key)
    if value is not None and (not isinstance(value, str) or not value):
        raise InvalidInput(f"{key} must be a non-empty string", field=key)
    return value


async def _act(rollout: Rollout, name: str, action: Any, *args: Any) -> dict[str, Any]:
    """Run an admin action in a thread; answer with its event and the model's new status."""
    def run() -> dict[str, Any]:
        event = action(name, *args)
        return {"event": event, "status": rollout.status(name)["models"][name]}

    return await asyncio.to_thread(run)


async def status(ex: Exchange, name: str | None = None) -> dict[str, Any]:
    return await asyncio.to_thread(_authorize(ex).status, name)


async def analysis(ex: Exchange, name: str) -> dict[str, Any]:
    """The aggregated verdict on the candidate, for a mesh's analysis step (deploy/README.md)."""
    return await asyncio.to_thread(_authorize(ex).analysis, name)


async def start(ex: Exchange, name: str) -> dict[str, Any]:
    """Body: ``{"version": V, "mode": "canary"|"shadow", "percent": 10, "limits": {...}}``."""
    rollout = _authorize(ex)
    payload = await _body(ex.request, {"version", "mode", "percent", "limits"})
    version = _optional_str(payload, "version")
    if version is None:
        raise InvalidInput("version is required: the candidate to roll out", field="version")
    limits = payload.get("limits") or {}
    if not isinstance(limits, dict):
        raise InvalidInput("limits must be an object", field="limits")
    return await _act(rollout, name, rollout.begin, version, payload.get("mode", "canary"),
                      payload.get("percent", 10.0), limits)


async def promote(ex: Exchange, name: str) -> dict[str, Any]:
    """Body (optional): ``{"version": V}`` to promote a version without a rollout."""
    rollout = _authorize(ex)
    payload = await _body(ex.request, {"version"})
    return await _act(rollout, name, rollout.promote, _optional_str(payload, "version"))


async def rollback(ex: Exchange, name: str) -> dict[str, Any]:
    """Body (optional): ``{"reason": "..."}``, kept in the event log."""
    rollout = _authorize(ex)
    payload = await _body(ex.request, {"reason"})
    return await _act(rollout, name, rollout.rollback, _optional_str(payload, "reason") or "")
