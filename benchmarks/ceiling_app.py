"""The HTTP ceiling: a bare Starlette app on uvicorn (uvloop + httptools, no access log) whose one
endpoint only reads and parses the JSON body — no model, no batcher — and answers a small JSON
object. Whatever a serving stack reaches on the same body is measured against this.

    .venv/bin/uvicorn benchmarks.ceiling_app:app --loop uvloop --http httptools --no-access-log
"""

from __future__ import annotations

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


async def parse(request: Request) -> Response:
    payload = orjson.loads(await request.body())
    n = len(payload.get("instances", ())) if isinstance(payload, dict) else 0
    return Response(orjson.dumps({"items": n}), media_type="application/json")


app = Starlette(routes=[Route("/parse", parse, methods=["POST"])])
