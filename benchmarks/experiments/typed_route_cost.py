"""Experiment for issue 14: what the typed ``@bentoml.api`` routes cost a ``/v1`` request's routing.

BentoML lists its API routes before the mounted apps, so every ``/v1``/``/v2`` request tries each
of them first; ``services.bento_api.behind_the_mounts`` moves them after the mounts. This times,
in-process, BentoML's app shape (its system routes, the six typed routes, Podium's fast routes in
a ``PassiveMount``) routing a ``POST /v1/models/mnist-cnn/predict`` to a trivial endpoint, in
three layouts, in alternating rounds (median ns per request):

    .venv/bin/python -m benchmarks.experiments.typed_route_cost
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

from _bentoml_impl.server.mount import PassiveMount
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from services.bento_api import BodyLimit

TYPED = ("classify_images", "classify_tensor", "predict_rows", "generate_text", "next_chars",
         "infer_tensors")
SCOPE = {"type": "http", "http_version": "1.1", "method": "POST", "path": "/v1/models/mnist-cnn/predict",
         "raw_path": b"/v1/models/mnist-cnn/predict", "root_path": "", "scheme": "http",
         "query_string": b"", "headers": [(b"host", b"x"), (b"content-length", b"2")],
         "server": ("127.0.0.1", 1), "client": ("127.0.0.1", 2)}


async def endpoint(request: Request) -> Response:
    return Response(b"{}")


def layouts() -> dict[str, Starlette]:
    hot = PassiveMount("/", Starlette(routes=[Route("/v1/models/{name}/predict", endpoint, methods=["POST"]),
                                               Route("/v2/models/{name}/infer", endpoint, methods=["POST"])]))
    system = [Route(p, endpoint) for p in ("/livez", "/healthz", "/readyz", "/metrics", "/schema.json")]
    typed = [Route(f"/{name}", endpoint, methods=["POST"]) for name in TYPED]
    limited = [Route(f"/{name}", BodyLimit(endpoint, 1024), methods=["POST"]) for name in TYPED]
    return {"no typed routes (937278d)": Starlette(routes=[*system, hot]),
            "typed routes first (BentoML's order)": Starlette(routes=[*system, *typed, hot]),
            "typed routes behind the mounts": Starlette(routes=[*system, hot, *limited])}


async def per_request_ns(app: Starlette, n: int) -> float:
    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        pass

    started = time.perf_counter_ns()
    for _ in range(n):
        await app(dict(SCOPE), receive, send)
    return (time.perf_counter_ns() - started) / n


async def main(rounds: int = 7, n: int = 10_000) -> None:
    apps = layouts()
    times: dict[str, list[float]] = {name: [] for name in apps}
    for r in range(rounds):
        for name in list(apps)[:: 1 if r % 2 == 0 else -1]:
            times[name].append(await per_request_ns(apps[name], n))
    for name, values in times.items():
        print(f"{name:40s} {statistics.median(values) / 1000:6.1f} µs per request")


if __name__ == "__main__":
    asyncio.run(main())
