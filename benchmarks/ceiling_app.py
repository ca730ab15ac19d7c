"""The HTTP ceiling: a bare Starlette app on uvicorn (uvloop + httptools, no access log) whose one
endpoint only reads the JSON body and parses it into a float32 array — no model, no batcher — and
answers a small JSON object. Whatever a serving stack reaches on the same body, with the same
number of workers, is measured against this (``/parse``: orjson → ``np.asarray``, the issue's
ceiling). ``/parse-simdjson`` parses with the simdjson parser Podium's JSON decoding uses, minus
its checks: the ceiling a stack with that decoder would have (information, results/bench/NOTES.md).

    .venv/bin/uvicorn benchmarks.ceiling_app:app --loop uvloop --http httptools --no-access-log
"""

from __future__ import annotations

import numpy as np
import orjson
import simdjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


async def parse(request: Request) -> Response:
    images = np.asarray(orjson.loads(await request.body())["instances"], np.float32)
    return Response(orjson.dumps({"items": len(images)}), media_type="application/json")


_parser = simdjson.Parser()


async def parse_simdjson(request: Request) -> Response:
    """The same parse with Podium's JSON decoder's parser (simdjson's flat buffer), without its
    checks: what the ceiling would be with the decoder Podium uses since issue 15's ninth pass."""
    flat = _parser.parse(await request.body())["instances"].as_buffer(of_type="d")
    images = np.frombuffer(flat, np.float64).astype(np.float32).reshape(-1, 784)
    return Response(orjson.dumps({"items": len(images)}), media_type="application/json")


app = Starlette(routes=[Route("/parse", parse, methods=["POST"]),
                        Route("/parse-simdjson", parse_simdjson, methods=["POST"])])
