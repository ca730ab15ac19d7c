"""Experiment for NOTES.md fix 1: Podium's own handlers behind plain Starlette routes.

The same data plane, handlers, batcher and BentoML settings as ``services.service:Podium``; only
the hot paths (``/v1/models/{name}[/versions/{version}]/predict``, ``/v2/models/{name}/infer``) are
Starlette ``Route``s matched before the FastAPI app, which keeps every other route.

    bentoml serve benchmarks.experiments.fast_routes:PodiumFastRoutes --port 3000
    .venv/bin/python -m benchmarks.experiments.fast_routes   # A/B against Podium, JSON c=16/64
"""

from __future__ import annotations

import bentoml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route

from services import protocol
from services.app import create_app, predict
from services.config import get_config
from services.dataplane import PLANE


async def fast_predict(request: Request) -> Response:
    return await predict(request, **request.path_params)


async def fast_infer(request: Request) -> Response:
    return await protocol.infer(request, **request.path_params)


CONFIG = get_config()
app = Starlette(routes=[
    Route("/v1/models/{name}/predict", fast_predict, methods=["POST"]),
    Route("/v1/models/{name}/versions/{version}/predict", fast_predict, methods=["POST"]),
    Route("/v2/models/{name}/infer", fast_infer, methods=["POST"]),
    Route("/v2/models/{name}/versions/{version}/infer", fast_infer, methods=["POST"]),
    Mount("/", app=create_app()),
])


@bentoml.service(name="podium-fast-routes", workers=CONFIG.worker_count(), traffic={"timeout": 300},
                 http={"host": CONFIG.host, "port": CONFIG.port},
                 logging={"access": {"enabled": False}},
                 tracing={"excluded_urls": ["/v1/models", "/v2"]})
@bentoml.asgi_app(app, path="/")
class PodiumFastRoutes:
    def __init__(self) -> None:
        PLANE.start(CONFIG)

    def __is_ready__(self) -> bool:
        return PLANE.ready


def main() -> None:
    import contextlib
    import shutil
    import tempfile
    from pathlib import Path

    from benchmarks import bench_serve as b

    work = Path(tempfile.mkdtemp(prefix="fast-routes-", dir=b.ROOT / "results" / "tmp"))
    bodies, _, _ = b.make_bodies(work)
    targets = {"podium": "services.service:Podium",
               "fast-routes": "benchmarks.experiments.fast_routes:PodiumFastRoutes"}
    with contextlib.ExitStack() as stack:
        servers = {}
        for name, target in targets.items():
            b.copy_store(Path.home() / "bentoml", work / name)
            port = b.free_port()
            env = b.clean_env({"BENTOML_HOME": str(work / name)})
            servers[name] = stack.enter_context(b.launch(
                name, [str(b.BIN / "bentoml"), "serve", target, "--port", str(port)], env,
                work / f"{name}.log", "/readyz", port))
        for form in ("json", "oip"):
            for s in servers.values():  # warm-up
                b.hey(s.url + b.path_for("mnist-cnn", form), bodies[form], 16, 2)
            for c in (1, 16, 64):
                for _round in range(2):
                    for name, s in servers.items():
                        r = b.hey(s.url + b.path_for("mnist-cnn", form), bodies[form], c, 6)
                        print(f"{form} c={c:<3d} {name:12s} {r['ok_rps']:7.0f} req/s  p50 "
                              f"{r['p50_ms']:6.1f}  p99 {r['p99_ms']:6.1f} ms  load "
                              f"{r['load_avg_1m']}", flush=True)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
