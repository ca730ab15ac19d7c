"""The edge of every worker (services/edge.py, services/worker.py): JSON error bodies from the
framework's own answers, HEAD, Host, nosniff, bounded BentoML metric labels, and the time and size
limits on reading a request — in-process for the pure logic, then against a real server."""

from __future__ import annotations

import asyncio
import contextlib
import re
import selectors
import socket
import time
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Mount, Route

from services.edge import UNMATCHED, Edge, RouteTemplates
from services.launch import Server, serve

# -- in-process: the wrapper's rules ------------------------------------------------------------


async def _boom(request):
    raise RuntimeError("boom")


def _inner() -> Starlette:
    async def ok(request):
        return PlainTextResponse("ok")

    async def detail(request):
        return JSONResponse({"detail": "a FastAPI-style error"}, status_code=422)

    async def podium(request):
        return JSONResponse({"error": "already Podium's", "field": "x"}, status_code=400)

    async def unknown_model(request):  # "error" not first: still passed on as it is
        return JSONResponse({"ready": False, "error": "model 'm' is not served"}, status_code=404)

    return Starlette(routes=[Route("/ok", ok, methods=["GET", "POST"]),
                             Route("/detail", detail), Route("/podium", podium),
                             Route("/unknown-model", unknown_model),
                             Route("/post-only", ok, methods=["POST"])])


def _client(edge: Edge) -> httpx.AsyncClient:
    # Starlette re-raises an error after its 500 answer, for the server's log: not ours to test.
    transport = httpx.ASGITransport(app=edge, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://t")


async def _raw_boom(scope, receive, send) -> None:  # a bare ASGI app: no 500 of its own
    raise RuntimeError("boom")


def test_framework_errors_become_json_and_podium_errors_pass_unchanged() -> None:
    async def run() -> None:
        async with _client(Edge(_inner())) as client:
            r = await client.get("/nowhere")
            assert (r.status_code, r.json()) == (404, {"error": "no route for GET /nowhere"})
            r = await client.get("/post-only")
            assert r.status_code == 405
            assert r.json() == {"error": "method GET is not allowed on /post-only; allowed: POST"}
            r = await client.get("/detail")
            assert (r.status_code, r.json()) == (422, {"error": "a FastAPI-style error"})
            r = await client.get("/podium")
            assert (r.status_code, r.json()) == (400, {"error": "already Podium's", "field": "x"})
            assert r.headers["content-type"] == "application/json"
            r = await client.get("/unknown-model")
            assert (r.status_code, r.json()) == (404, {"ready": False, "error": "model 'm' is not served"})
            r = await client.get("/" + "x" * 5000)  # the echoed path is clipped
            assert r.status_code == 404 and len(r.json()["error"]) < 300
    asyncio.run(run())


def test_head_answers_like_get_and_an_unhandled_error_is_a_json_500() -> None:
    async def run() -> None:
        for app in (Starlette(routes=[Route("/boom", _boom)]), _raw_boom):
            async with _client(Edge(app)) as client:
                r = await client.get("/boom")
                assert r.status_code == 500 and r.headers["content-type"] == "application/json"
                assert r.json() == {"error": "internal server error"}
        async with _client(Edge(_inner())) as client:
            assert (await client.head("/ok")).status_code == 200
    asyncio.run(run())


def test_draining_refuses_new_work_but_answers_reads() -> None:
    async def run() -> None:
        edge = Edge(_inner())
        edge.draining = True
        async with _client(edge) as client:
            r = await client.post("/ok")
            assert r.status_code == 503 and r.headers["connection"] == "close"
            assert "shutting down" in r.json()["error"]
            assert (await client.get("/ok")).status_code == 200
        assert edge.inflight == 0
    asyncio.run(run())


def test_route_templates_are_a_bounded_label() -> None:
    app = Starlette(routes=[Route("/readyz", _boom), Mount("/", app=Starlette(routes=[
        Route("/v1/models/{name}/predict", _boom),
        Route("/v1/models/{name}/versions/{version}/predict", _boom)]))])
    templates = RouteTemplates(app.routes)
    assert templates("/readyz") == "/readyz"
    assert templates("/v1/models/mnist-cnn/predict") == "/v1/models/{name}/predict"
    assert templates("/v1/models/a/versions/b/predict") == "/v1/models/{name}/versions/{version}/predict"
    assert templates("/x1") == templates("/v1/models/a/b/c/d/e") == UNMATCHED
    for i in range(2 * RouteTemplates.SEEN_MAX):  # what is remembered stays bounded
        templates(f"/v1/models/m{i}/predict")
    assert len(templates._seen) <= RouteTemplates.SEEN_MAX


# -- against a real server ----------------------------------------------------------------------
HEADER_TIMEOUT_S = 2.0
BODY_TIMEOUT_S = 2.0


@pytest.fixture(scope="module")
def edge_server(tiny_store: Path, tmp_path_factory: pytest.TempPathFactory):
    """A real server with short read timeouts, so the slow-client tests take seconds."""
    env = {"PODIUM_MODELS": "diabetes,mnist-cnn",
           "PODIUM_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
           "PODIUM_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S)}
    # tiny_store itself: it only reads the store, and its Prometheus directory is its own (one
    # per port, services/service.py), so the session server's metrics are left alone.
    with serve(tiny_store, tmp_path_factory.mktemp("edge-logs"), env=env) as running:
        yield running


def _raw(server: Server, data: bytes, timeout: float = 5) -> bytes:
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def _status(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def test_every_error_answer_is_json_with_nosniff(edge_server: Server) -> None:
    with edge_server.client() as client:
        for method, path, status in [("GET", "/nope", 404), ("POST", "/v1/nope/x", 404),
                                     ("DELETE", "/readyz", 405), ("PUT", "/metrics", 405),
                                     ("GET", "/v2/models/mnist-cnn/infer", 405),
                                     ("GET", "/v1/models/mnist-cnn/predict", 405)]:
            r = client.request(method, path)
            assert r.status_code == status, (method, path, r.text)
            assert r.headers["content-type"] == "application/json", (method, path)
            assert isinstance(r.json()["error"], str) and r.json()["error"], (method, path)
            assert r.headers["x-content-type-options"] == "nosniff"
        for path in ("/readyz", "/livez", "/metrics", "/v1/models", "/v2/health/ready", "/v2"):
            head, get = client.head(path), client.get(path)
            assert head.status_code == get.status_code == 200, path
            assert head.content == b"" and get.headers["x-content-type-options"] == "nosniff"


def test_http11_without_host_is_400(edge_server: Server) -> None:
    answer = _raw(edge_server, b"GET /readyz HTTP/1.1\r\n\r\n")
    assert _status(answer) == 400 and b'"error"' in answer and b"Host" in answer
    assert _status(_raw(edge_server, b"GET /readyz HTTP/1.0\r\n\r\n")) == 200  # Host is 1.1's rule


def test_slowloris_connections_are_closed_after_the_header_timeout(edge_server: Server) -> None:
    """200 connections sending a header byte per second: each gets 408 and is closed once
    header_timeout_s has passed since its first byte — within one sweep tick of it."""
    selector = selectors.DefaultSelector()
    socks = []
    for _ in range(200):
        sock = socket.create_connection(("127.0.0.1", edge_server.port), timeout=5)
        sock.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
        socks.append(sock)
    started, answers, open_ = time.monotonic(), {}, set(socks)
    try:
        while open_ and time.monotonic() - started < HEADER_TIMEOUT_S + 8:
            for sock in list(open_):
                with contextlib.suppress(OSError):
                    sock.send(b"a")
            for key, _ in selector.select(timeout=1.0):  # an answer or EOF: the server gave up
                try:
                    answers[key.fileobj] = key.fileobj.recv(4096)
                except OSError:
                    answers[key.fileobj] = b""
                selector.unregister(key.fileobj)
                open_.discard(key.fileobj)
        elapsed = time.monotonic() - started
    finally:
        for sock in socks:
            sock.close()
    assert not open_, f"{len(open_)} of 200 slow connections still open after {elapsed:.1f}s"
    assert sum(1 for data in answers.values() if data.startswith(b"HTTP/1.1 408")) >= 190
    assert elapsed >= HEADER_TIMEOUT_S - 0.5


def test_a_trickled_body_gets_408_after_the_body_timeout(edge_server: Server) -> None:
    with socket.create_connection(("127.0.0.1", edge_server.port), timeout=1) as sock:
        sock.sendall(b"POST /v1/models/diabetes/predict HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{")
        started, answer = time.monotonic(), b""
        while not answer and time.monotonic() - started < BODY_TIMEOUT_S + 8:
            try:
                sock.sendall(b" ")
                answer = sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                break
        elapsed = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408"), answer[:100]
    assert b"body_timeout_s" in answer
    assert BODY_TIMEOUT_S - 0.5 <= elapsed < BODY_TIMEOUT_S + 3


def test_a_200_mb_header_gets_431_before_much_is_read(edge_server: Server) -> None:
    chunk, sent, answer = b"a" * 65536, 0, b""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", edge_server.port), timeout=5) as sock:
        sock.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\nX-Big: ")
        sock.settimeout(0.05)
        while sent < 200 * 2**20 and not answer and time.monotonic() - started < 20:
            try:
                sock.sendall(chunk)
                sent += len(chunk)
            except OSError:
                break
            with contextlib.suppress(TimeoutError):
                answer = sock.recv(4096)
        sock.settimeout(5)
        answer = answer or sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 431"), answer[:100]
    assert time.monotonic() - started < 5 and sent < 4 * 2**20


def test_random_paths_leave_bentoml_metrics_bounded(edge_server: Server) -> None:
    """5,000 requests to random paths (GET and POST, /x$i and /v1/models/x$i/predict): BentoML's
    request series label only route templates, so they hardly grow (before the fix: 20 → 100,020
    lines, 3.9 KB → 20.7 MB of /metrics)."""
    def bentoml_lines(text: str) -> list[str]:
        return [line for line in text.splitlines() if line.startswith("bentoml_service_request")]

    async def flood() -> None:
        limits = httpx.Limits(max_connections=32)
        async with httpx.AsyncClient(base_url=edge_server.url, timeout=60, limits=limits) as client:
            sem = asyncio.Semaphore(32)

            async def one(i: int) -> None:
                path = f"/x{i}" if i % 4 < 2 else f"/v1/models/x{i}/predict"
                async with sem:
                    r = await (client.get(path) if i % 2 else client.post(path, json={}))
                assert r.status_code in (404, 405), (path, r.status_code)

            await asyncio.gather(*(one(i) for i in range(5000)))

    with edge_server.client() as client:
        before = bentoml_lines(client.get("/metrics").text)
        asyncio.run(flood())
        after = bentoml_lines(client.get("/metrics").text)
    endpoints = {m.group(1) for line in after for m in [re.search(r'endpoint="([^"]*)"', line)] if m}
    assert not [e for e in endpoints if re.search(r"/x\d", e)], endpoints
    assert UNMATCHED in endpoints
    assert len(after) < len(before) + 200 and sum(map(len, after)) < 64 * 1024, (len(before), len(after))
