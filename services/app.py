"""The friendly HTTP API (``/v1``): per-model endpoints whose requests the model's kind decodes
(rows, images, tensors, text — ``services.kinds``), and the model listing.

Handlers take an ``Exchange`` (plane, request, answering version) and return a JSON object or a
response; ``services.routes`` wraps each one once (errors → status, metrics, version headers).
"""

from __future__ import annotations

from typing import Any

from starlette.responses import Response

from services.http import Exchange
from services.kinds import Call


def kind_endpoint(endpoint: str) -> Any:
    """The handler of ``/v1/models/{name}[/versions/{version}]/<endpoint>``: the answering
    version's kind decodes, runs and encodes."""
    async def handler(ex: Exchange, name: str, version: str | None = None) -> dict[str, Any] | Response:
        loaded = ex.select(name, version)
        content = await loaded.kind.handler(endpoint)(Call(ex.plane, ex.request, loaded))
        if isinstance(content, Response):  # e.g. an .npy answer (Accept: application/x-npy)
            return content
        return {"model": name, "version": loaded.version, **content}

    handler.__name__ = endpoint
    return handler


async def list_models(ex: Exchange) -> dict[str, Any]:
    return {"models": ex.plane.repo().describe()}


async def model_info(ex: Exchange, name: str) -> dict[str, Any]:
    repo = ex.plane.repo()
    versions = repo.model(name)
    loaded = versions[repo.stable[name]]
    spec = loaded.spec
    return {"name": name, "stable": loaded.version, "versions": list(versions),
            "kind": spec.kind, "description": spec.description,
            "signature": spec.signature(), "labels": list(spec.labels),
            "metrics": loaded.stored.metadata.get("headline"),
            "loaded": [v.describe() for v in versions.values()]}


async def model_ready(ex: Exchange, name: str, version: str | None = None) -> dict[str, Any]:
    ex.plane.repo().get(name, version)
    return {"name": name, "ready": True}
