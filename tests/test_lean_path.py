"""The lean data plane (issue 15, services/edge.py): the inference routes go from uvicorn to
Podium's hot app without entering BentoML's app (its middlewares, its routing, FastAPI), and
keep what those gave them — request metrics, the body limit, the drain, trace context.

In-process against the real service object (``services.service.Podium.to_asgi()``, the app each
BentoML worker serves) with a spy in every BentoML middleware, then against a real server."""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from services.edge import TRACEPARENT_MAX, Edge, RouteTemplates, hot_matcher
from services.launch import Server

TRACE = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
HOT = [("POST", "/v1/models/mnist-cnn/predict"), ("POST", "/v1/models/mnist-cnn/versions/v1/predict"),
       ("POST", "/v1/models/char-rnn/generate"), ("POST", "/v1/models/char-rnn/next"),
       ("POST", "/v2/models/mnist-cnn/infer"), ("POST", "/v2/models/mnist-cnn/versions/v1/infer")]
# Served behind BentoML's app.
NOT_HOT = [("GET", "/v1/models"), ("GET", "/v1/models/mnist-cnn"), ("GET", "/v2/models/mnist-cnn"),
           ("GET", "/v1/models/mnist-cnn/ready"), ("POST", "/v1/models/mnist-cnn/predictx"),
           ("POST", "/v2/models/mnist-cnn/predict"), ("GET", "/livez"), ("GET", "/docs.json")]
ANSWER_S = 10  # in-process: BentoML's timeout middleware hangs on an error of its app (no lifespan)


def _client(app: Any) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://t")


# -- in-process: the real service's app, BentoML's middlewares spied on ------------------------

def _spy(cls: type, entered: list[tuple[str, str]]) -> type:
    """``cls`` that records the path of every HTTP request it is entered with."""
    async def call(self: Any, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            entered.append((cls.__name__, scope.get("podium.path", scope["path"])))
        await cls.__call__(self, scope, receive, send)
    return type(f"Spy{cls.__name__}", (cls,), {"__call__": call})


@pytest.fixture(scope="module")
def spied(tmp_path_factory: pytest.TempPathFactory) -> tuple[Edge, list[tuple[str, str]]]:
    """The app a worker serves, every middleware of BentoML's app a spy. Nothing is loaded (no
    lifespan): the data plane answers 503 "loading", which is all the routing needs."""
    mp = pytest.MonkeyPatch()
    mp.setenv("BENTOML_HOME", str(tmp_path_factory.mktemp("bentoml-home")))
    from services import service

    edge = service.Podium.to_asgi()
    mp.undo()
    entered: list[tuple[str, str]] = []
    inner = edge.app
    assert isinstance(edge, Edge) and isinstance(inner, Starlette)
    assert len(inner.user_middleware) >= 3, inner.user_middleware  # metrics, tracing, context…
    inner.user_middleware = [Middleware(_spy(m.cls, entered), *m.args, **m.kwargs)
                             for m in inner.user_middleware]
    return edge, entered


@pytest.mark.parametrize(("method", "path"), HOT)
def test_the_hot_paths_never_enter_bentomls_app(spied: tuple[Edge, list], method: str,
                                                path: str) -> None:
    edge, entered = spied

    async def run() -> httpx.Response:
        async with _client(edge) as client:
            return await asyncio.wait_for(client.request(method, path, json={}), ANSWER_S)

    entered.clear()
    r = asyncio.run(run())
    assert (r.status_code, r.json()) == (503, {"error": "the server is still loading its models"})
    assert entered == [], f"{path} went through BentoML's middlewares: {entered}"


@pytest.mark.parametrize(("method", "path"), NOT_HOT)
def test_the_other_paths_still_pass_every_bentoml_middleware(spied: tuple[Edge, list], method: str,
                                                            path: str) -> None:
    edge, entered = spied

    async def run() -> httpx.Response:
        async with _client(edge) as client:
            body = {"json": {}} if method == "POST" else {}
            return await asyncio.wait_for(client.request(method, path, **body), ANSWER_S)

    entered.clear()
    r = asyncio.run(run())
    assert r.headers["content-type"].startswith(("application/json", "text/plain")), r.headers
    names = [name for name, p in entered if p == path]
    assert len(names) == len(edge.app.user_middleware), (path, entered)


def test_bentoml_metrics_label_the_fastapi_routes_by_template(spied: tuple[Edge, list]) -> None:
    """FastAPI (0.12x) keeps included routers as lazy ``_IncludedRouter`` entries without a path:
    they were all labelled ``/{unmatched}`` before (``/v1/models``, ``/v2/health/ready``...)."""
    templates = RouteTemplates(spied[0].app.routes)
    for path, template in (("/v1/models", "/v1/models"), ("/v2/health/ready", "/v2/health/ready"),
                           ("/v1/models/m/ready", "/v1/models/{name}/ready"),
                           ("/admin/rollout/m/start", "/admin/rollout/{name}/start")):
        assert templates(path) == template, path


def test_the_hot_matcher_takes_exactly_the_hot_apps_routes(spied: tuple[Edge, list]) -> None:
    is_hot = hot_matcher(spied[0].hot)  # the service's own hot app
    for _, path in HOT:
        assert is_hot(path), path
    for path in ("/v1/models", "/v1/models/a/b/predict", "/v1/models/a/predict/x", "/v2/models/a/infer/",
                 "/v1/models//predict", "/readyz", "/v1/models/a/ready", "/v2/models/a/versions/infer"):
        assert not is_hot(path), path
    with pytest.raises(ValueError):
        hot_matcher(Starlette())


# -- in-process: what the edge now gives the hot paths itself -----------------------------------

class _Plane:
    draining = False
    inflight = 0


def _hot_app() -> Starlette:
    async def ok(request):
        return JSONResponse({"ok": True})

    async def bad(request):
        return PlainTextResponse("plain", status_code=400)

    return Starlette(routes=[Route("/v1/models/{name}/predict", ok, methods=["POST"]),
                             Route("/v2/models/{name}/infer", bad, methods=["POST"])])


def test_traceparent_comes_back_on_every_answer_and_only_when_sent() -> None:
    async def run() -> None:
        async with _client(Edge(Starlette(), hot=_hot_app(), plane=_Plane())) as client:
            r = await client.post("/v1/models/m/predict", headers={"traceparent": TRACE})
            assert r.status_code == 200 and r.headers["traceparent"] == TRACE
            r = await client.post("/v2/models/m/infer", headers={"traceparent": TRACE})
            assert (r.status_code, r.json()) == (400, {"error": "plain"})
            assert r.headers["traceparent"] == TRACE
            r = await client.get("/v1/models/m/predict", headers={"traceparent": TRACE})  # 405
            assert r.status_code == 405 and r.headers["traceparent"] == TRACE
            r = await client.post("/nowhere", headers={"traceparent": TRACE})  # BentoML's side
            assert r.status_code == 404 and r.headers["traceparent"] == TRACE
            r = await client.post("/v1/models/m/predict")
            assert "traceparent" not in r.headers
            long = "0" * (TRACEPARENT_MAX + 1)
            r = await client.post("/v1/models/m/predict", headers={"traceparent": long})
            assert r.status_code == 200 and "traceparent" not in r.headers
            # Sent twice: the last one within the limit comes back.
            other = TRACE.replace("01", "00")
            for sent, back in (([TRACE, other], other), ([TRACE, long], TRACE),
                               ([long, TRACE], TRACE)):
                r = await client.post("/v1/models/m/predict",
                                      headers=[("traceparent", v) for v in sent])
                assert r.status_code == 200 and r.headers["traceparent"] == back, sent
    asyncio.run(run())


def test_the_drain_flag_is_the_data_planes() -> None:
    async def run() -> None:
        plane = _Plane()
        edge = Edge(Starlette(), hot=_hot_app(), plane=plane)
        async with _client(edge) as client:
            assert (await client.post("/v1/models/m/predict")).status_code == 200
            plane.draining = True  # what readiness reads is what refuses new work
            assert edge.draining
            r = await client.post("/v1/models/m/predict")
            assert r.status_code == 503 and r.headers["connection"] == "close"
            edge.draining = False
            assert not plane.draining
    asyncio.run(run())


# -- against a real server ----------------------------------------------------------------------

def _bentoml_endpoints(text: str) -> set[str]:
    return {m.group(1) for line in text.splitlines() if line.startswith("bentoml_service_request_total")
            for m in [re.search(r'endpoint="([^"]*)"', line)] if m}


def _podium_count(text: str, endpoint: str, model: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("podium_requests_total{") and f'endpoint="{endpoint}"' in line
               and f'model="{model}"' in line and 'status="200"' in line)


def test_a_real_server_counts_the_hot_paths_in_podiums_metrics_only(server: Server) -> None:
    """BentoML's request metrics (its outermost middleware) never see ``/v1`` predict or ``/v2``
    infer — they would if the hot path were behind BentoML's app again — while Podium's own
    ``podium_requests_total`` counts every one; ``GET /v1/models`` is still BentoML's."""
    image = {"instances": [[0.5] * 784]}
    oip = {"inputs": [{"name": "image", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": [0.5] * 784}]}
    with server.client() as client:
        before = client.get("/metrics").text
        for _ in range(5):
            r = client.post("/v1/models/mnist-cnn/predict", json=image, headers={"traceparent": TRACE})
            assert r.status_code == 200 and r.headers["traceparent"] == TRACE, r.text
            assert r.headers["x-content-type-options"] == "nosniff"
            assert client.post("/v2/models/mnist-cnn/infer", json=oip).status_code == 200
        assert client.get("/v1/models").status_code == 200
        after = client.get("/metrics").text
    endpoints = _bentoml_endpoints(after)
    assert "/v1/models" in endpoints, endpoints
    assert not [e for e in endpoints if e.endswith(("/predict", "/infer", "/generate", "/next"))], endpoints
    for endpoint in ("predict", "infer"):
        assert _podium_count(after, endpoint, "mnist-cnn") - _podium_count(before, endpoint, "mnist-cnn") == 5


def test_a_real_server_keeps_the_body_limit_on_the_hot_path(server: Server) -> None:
    """``max_request_bytes`` (8 MiB by default), declared or streamed: 413 with a JSON error."""
    too_big = b"[" + b"0," * (4 * 2**20 + 10)
    with server.client() as client:
        r = client.post("/v1/models/mnist-cnn/predict", content=too_big,
                        headers={"content-type": "application/json"})
        assert r.status_code == 413 and "max_request_bytes" in r.json()["error"]

        def chunks():
            for i in range(0, len(too_big), 2**20):
                yield too_big[i:i + 2**20]

        r = client.post("/v2/models/mnist-cnn/infer", content=chunks(),
                        headers={"content-type": "application/json"})
        assert r.status_code == 413 and "max_request_bytes" in r.json()["error"]


def test_a_real_server_answers_every_json_image_form_alike(server: Server) -> None:
    """A plain JSON body (decoded by simdjson, ``services.codecs.json_images_fast``), one with
    another key (orjson), its integer form, and ``.npy``: the same image, the same answer; a
    body the fast path declines still gets its named 400."""
    import io

    import numpy as np

    pixels = np.random.default_rng(15).integers(0, 256, (2, 1, 28, 28))
    floats = (pixels / 255).tolist()
    npy = io.BytesIO()
    np.save(npy, (pixels / 255).astype(np.float32))
    with server.client() as client:
        def ask(**kwargs: Any) -> list[Any]:
            r = client.post("/v1/models/mnist-cnn/predict", **kwargs)
            assert r.status_code == 200, r.text
            return [(p["digit"], round(p["probability"], 5)) for p in r.json()["predictions"]]

        plain = ask(json={"instances": floats})
        assert ask(json={"instances": floats, "top_k": 3}) == plain
        assert ask(json={"inputs": pixels.reshape(2, 784).tolist()}) == plain
        assert ask(content=npy.getvalue(), headers={"content-type": "application/x-npy"}) == plain
        r = client.post("/v1/models/mnist-cnn/predict", json={"instances": [[0.5] * 783 + [None]]})
        assert r.status_code == 400 and "numbers" in r.json()["error"], r.text


def test_a_real_server_refuses_one_bad_plain_body_among_a_batch_alone(server: Server) -> None:
    """Plain JSON bodies are parsed when their batch forms (``codecs.JsonImages``): sent
    together, a body with a pixel out of range gets its named 400 and every other one the answer
    it gets alone."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    rng = np.random.default_rng(16)
    bodies = [{"instances": (rng.integers(0, 256, (1 + i % 3, 784)) / 255).tolist()}
              for i in range(24)]
    for i in (3, 10, 17):
        bodies[i]["instances"][-1][-1] = 1.5

    def ask(body: dict[str, Any]) -> tuple[int, Any]:
        with server.client() as client:
            r = client.post("/v1/models/mnist-cnn/predict", json=body)
        return r.status_code, r.json()

    alone = [ask(b) for b in bodies]
    with ThreadPoolExecutor(12) as pool:
        together = list(pool.map(ask, bodies))
    for i, (status, answer) in enumerate(together):
        if i in (3, 10, 17):
            assert status == 400 and answer["field"] == "instances", answer
            assert "[0, 1]" in answer["error"]
        else:
            assert status == 200, answer
            assert [(p["digit"], round(p["probability"], 4)) for p in answer["predictions"]] == \
                [(p["digit"], round(p["probability"], 4)) for p in alone[i][1]["predictions"]]
    assert [s for s, _ in alone] == [s for s, _ in together]


def test_a_real_server_refuses_one_bad_oip_tensor_among_a_batch_alone(server: Server) -> None:
    """OIP binary image tensors are checked when their batch forms (``codecs.PixelsLater``):
    sent together, a tensor with a pixel out of range (or NaN) gets its named 400 and every other
    one the answer it gets alone — float32 and uint8 tensors in the same batches."""
    import json
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    rng = np.random.default_rng(15)
    tensors: list[np.ndarray] = []
    for i in range(24):
        pixels = rng.integers(0, 256, (1 + i % 3, 1, 28, 28))
        tensors.append(pixels.astype(np.uint8) if i % 4 == 1 else (pixels / 255).astype(np.float32))
    bad = {3: 1.5, 10: float("nan"), 18: -0.25}
    for i, value in bad.items():
        tensors[i][-1, 0, 27, 27] = value

    def ask(pixels: np.ndarray) -> tuple[int, Any]:
        header = json.dumps({"inputs": [{
            "name": "image", "shape": list(pixels.shape), "datatype": "UINT8" if pixels.dtype == np.uint8
            else "FP32", "parameters": {"binary_data_size": pixels.nbytes}}],
            "outputs": [{"name": "probabilities"}]}).encode()
        with server.client() as client:
            r = client.post("/v2/models/mnist-cnn/infer", content=header + pixels.tobytes(),
                            headers={"Inference-Header-Content-Length": str(len(header)),
                                     "Content-Type": "application/octet-stream"})
        return r.status_code, r.json()

    alone = [ask(t) for t in tensors]
    with ThreadPoolExecutor(12) as pool:
        together = list(pool.map(ask, tensors))
    for i, (status, answer) in enumerate(together):
        if i in bad:
            assert status == 400 and answer["field"] == "image", answer
            assert ("NaN" if i == 10 else "[0, 1]") in answer["error"]
        else:
            assert status == 200, answer
            got, want = (np.array(a["outputs"][0]["data"]) for a in (answer, alone[i][1]))
            np.testing.assert_allclose(got, want, atol=1e-5)
    assert [s for s, _ in alone] == [s for s, _ in together]


def test_a_real_server_answers_hot_path_mistakes_in_json(server: Server) -> None:
    with server.client() as client:
        r = client.get("/v1/models/mnist-cnn/predict")
        assert (r.status_code, r.json()) == (405, {
            "error": "method GET is not allowed on /v1/models/mnist-cnn/predict; allowed: POST"})
        r = client.head("/v2/models/mnist-cnn/infer")
        assert r.status_code == 405
        r = client.post("/v1/models/no-such-model/predict", json={"instances": [[0.0] * 784]})
        assert r.status_code == 404 and "no-such-model" in r.json()["error"]



# -- workers and threads chosen for the machine ------------------------------------------------

def test_usable_cores_follow_the_containers_cpu_limit(monkeypatch: pytest.MonkeyPatch,
                                                      tmp_path: Path) -> None:
    from services import config as cfg

    affinity = len(os.sched_getaffinity(0))
    cpu_max = tmp_path / "cpu.max"
    monkeypatch.setattr(cfg, "CGROUP_CPU_MAX", cpu_max)
    assert cfg.usable_cores() == affinity  # no cgroup file: the affinity alone
    for text, cores in (("max 100000\n", affinity), ("100000 100000\n", 1), ("150000 100000\n", 2),
                        ("50000 100000\n", 1), ("garbage\n", affinity)):
        cpu_max.write_text(text)
        assert cfg.usable_cores() == min(cores, affinity), text


def test_the_worker_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    from services import config as cfg

    cores = cfg.usable_cores()
    assert cfg.ServeConfig().workers == "auto"
    assert cfg.ServeConfig(device="cpu").worker_count() == min(cfg.AUTO_WORKERS_MAX, cores)
    assert cfg.ServeConfig(device="cuda").worker_count() == 1
    assert cfg.ServeConfig(workers=3, device="cuda").worker_count() == 3  # an explicit count wins
    monkeypatch.setenv("PODIUM_WORKERS", "2")
    assert cfg.load_config(path="/nonexistent.yaml").worker_count() == 2
    for bad in ("0", "many"):
        monkeypatch.setenv("PODIUM_WORKERS", bad)
        with pytest.raises(cfg.ConfigError, match="workers"):
            cfg.load_config(path="/nonexistent.yaml")


@pytest.mark.parametrize(("cores", "workers", "threads"), [(2, 1, 1), (2, 2, 1), (16, 1, 15), (16, 2, 7),
                                                           (16, 8, 1), (64, 8, 7)])
def test_runtime_threads_are_the_workers_share_of_the_cores_but_one(
        monkeypatch: pytest.MonkeyPatch, cores: int, workers: int, threads: int) -> None:
    from services import config as cfg

    monkeypatch.setattr(cfg, "usable_cores", lambda: cores)
    config = cfg.ServeConfig(workers=workers, device="cpu")
    assert (config.runtime_threads(), config.image_decode_threads()) == (threads, threads)
    assert cfg.ServeConfig(workers=workers, intra_op_threads=3).runtime_threads() == 3


def test_a_default_server_starts_one_worker_per_core(tiny_store: Path, tmp_path: Path) -> None:
    """``workers=auto`` under a real ``bentoml serve`` (test servers otherwise pin one worker)."""
    from services.config import AUTO_WORKERS_MAX, usable_cores
    from services.launch import process_tree, serve

    expected = min(usable_cores(), AUTO_WORKERS_MAX)
    image = {"instances": [[0.5] * 784]}
    with serve(tiny_store, tmp_path, env={"PODIUM_WORKERS": "auto", "PODIUM_MODELS": "mnist-cnn",
                                          "PODIUM_DEVICE": "cpu"}) as running:
        workers = [p for p in process_tree(running.proc.pid)
                   if "_bentoml_impl.worker.service" in " ".join(p.cmdline())]
        assert len(workers) == expected, [p.cmdline() for p in workers]
        with running.client() as client:
            for _ in range(4 * expected):
                assert client.post("/v1/models/mnist-cnn/predict", json=image).status_code == 200
