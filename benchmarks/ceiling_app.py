"""The HTTP ceiling: a bare Starlette app on uvicorn (uvloop + httptools, no access log) whose one
endpoint only reads the JSON body and parses it into a float32 array — no model, no batcher — and
answers a small JSON object. Whatever a serving stack reaches on the same body, with the same
number of workers, is measured against this.

    .venv/bin/uvicorn benchmarks.ceiling_app:app --loop uvloop --http httptools --no-access-log
"""

from __future__ import annotations

import numpy as np
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


async def parse(request: Request) -> Response:
    images = np.asarray(orjson.loads(await request.body())["instances"], np.float32)
    return Response(orjson.dumps({"items": len(images)}), media_type="application/json")


app = Starlette(routes=[Route("/parse", parse, methods=["POST"])])
