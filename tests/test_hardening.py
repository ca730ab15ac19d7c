"""Hostile requests against a real `bentoml serve` (issue 10, the request side): every one is
answered with a clear 4xx in JSON or served, the worker keeps answering its health checks, and
neither its memory nor ``/metrics`` grows with what clients send.

The server is this module's own (its own BENTOML_HOME, three models), so the memory bound at the
end compares with this server's own start; the tests run in file order, the bound last.
"""

from __future__ import annotations

import asyncio
import io
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from PIL import Image, ImageDraw

from services.launch import Server, serve

MODELS = ("mnist-cnn", "char-rnn", "diabetes")
# The worker's RSS after the whole matrix may exceed its start by this much: decode buffers and
# allocator arenas that stay mapped. Before the fixes the matrix added ~640 MB (a 4096² RGBA PNG
# alone: +590 MB, the random-name flood: +370 MB of metric series).
RSS_MARGIN_MB = 150
# /metrics after the random-name flood may exceed its size before it by this much (new series
# of the fixed "unknown" label and histogram buckets). Before: 72 KB → 28.6 MB.
METRICS_MARGIN_BYTES = 128 * 1024
# Health checks must answer within this while big images decode. Generous on purpose (the
# target is 100 ms; the machine is shared): only a stalled event loop misses it — before the fix,
# /livez waited the whole decode, 3 s per 4096² image.
HEALTH_BOUND_S = 1.0


@pytest.fixture(scope="module")
def hserver(tiny_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    # tiny_store itself: it only reads the store, and its Prometheus directory is its own (one
    # per port, services/service.py), so the session server's /metrics is left alone.
    with serve(tiny_store, tmp_path_factory.mktemp("hardening-logs"),
               env={"PODIUM_MODELS": ",".join(MODELS)}) as running:
        running.start_rss = _worker_rss(running)  # type: ignore[attr-defined]
        yield running


def _worker(server: Server) -> psutil.Process:
    """The process that serves: the child of `bentoml serve` that loaded ONNX Runtime."""
    for child in psutil.Process(server.proc.pid).children(recursive=True):
        if "onnxruntime" in Path(f"/proc/{child.pid}/maps").read_text():
            return child
    raise AssertionError("no worker process of `bentoml serve` runs ONNX Runtime")


def _worker_rss(server: Server) -> int:
    return _worker(server).memory_info().rss


def _png(mode: str, size: tuple[int, int], color: Any = 0, stroke: Any = None) -> bytes:
    """A PNG of one colour, or with a ``stroke``-coloured bar in the middle (a "1")."""
    image = Image.new(mode, size, color)
    if stroke is not None:
        w, h = size
        ImageDraw.Draw(image).rectangle((w * 9 // 20, h // 5, w * 11 // 20, h * 4 // 5), fill=stroke)
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def _tracebacks(server: Server) -> int:
    return server.logs().count("Traceback")


def _error(r: httpx.Response, status: int, *words: str) -> str:
    """The JSON error of ``r``, checked to have ``status`` and to name each of ``words``."""
    assert r.status_code == status, r.text[:500]
    assert r.headers["content-type"].startswith("application/json"), r.headers
    message = r.json()["error"]
    for word in words:
        assert word in message, message
    return message


# --------------------------------------------------------------------------- 2: image decoding

def test_request_pixel_budget_is_checked_before_decoding(hserver: Server) -> None:
    """250 blank 4096² PNGs (4 MB): each under max_image_pixels, 4.2 G pixels in all. Before:
    decoded one by one on the event loop for ~47 s. Now: 413 from the headers alone."""
    gray = _png("L", (4096, 4096), 255)
    files = [("images", (f"g{i}.png", gray, "image/png")) for i in range(250)]
    with hserver.client() as c:
        started = time.perf_counter()
        r = c.post("/v1/models/mnist-cnn/predict", files=files)
        took = time.perf_counter() - started
    _error(r, 413, "max_request_pixels", "250 images")
    assert took < 10, f"the refusal took {took:.1f}s: the images were decoded first"


def _health_during(server: Server, work: Callable[[], list[httpx.Response]]
                   ) -> tuple[list[httpx.Response], float]:
    """``work()``'s answers and the slowest /livez or /readyz answer while it ran."""
    stop, timings, statuses = threading.Event(), [], []

    def probe() -> None:
        with server.client() as c:
            while not stop.is_set():
                for path in ("/livez", "/readyz"):
                    started = time.perf_counter()
                    statuses.append(c.get(path).status_code)
                    timings.append(time.perf_counter() - started)
                time.sleep(0.02)

    prober = threading.Thread(target=probe)
    prober.start()
    try:
        answers = work()
    finally:
        stop.set()
        prober.join(timeout=60)
    assert len(statuses) >= 4 and set(statuses) == {200}, statuses[:20]
    return answers, max(timings)


def test_health_answers_while_big_images_decode(hserver: Server) -> None:
    """Four concurrent 4096² RGBA PNGs (within the budget, ~70 KB each): decoded off the loop,
    so /livez and /readyz keep answering. Before: each blocked the loop ~3 s."""
    big = _png("RGBA", (4096, 4096), (0, 0, 0, 0), stroke=(0, 0, 0, 255))

    def work() -> list[httpx.Response]:
        async def send() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=hserver.url, timeout=120) as c:
                return await asyncio.gather(*(c.post("/v1/models/mnist-cnn/predict", content=big,
                                                     headers={"content-type": "image/png"})
                                              for _ in range(4)))
        return asyncio.run(send())

    answers, worst = _health_during(hserver, work)
    assert [r.status_code for r in answers] == [200] * 4, answers[0].text
    print(f"slowest health answer while 4 × 4096² RGBA decoded: {worst * 1000:.0f} ms")
    assert worst < HEALTH_BOUND_S


# ------------------------------------------------------------------------------ 3: multipart

def _multipart_body() -> bytes:
    request = httpx.Request("POST", "http://x/", files=[("images", ("a.png", _png("L", (28, 28))))])
    return request.read()


MULTIPART = [
    ("too many files", {"files": [("images", (f"f{i}.png", b"x")) for i in range(4097)]}, 413,
     ("Too many files",)),
    ("too many fields", {"files": [("images", ("a.png", _png("L", (28, 28))))],
                         "data": {f"k{i}": "v" for i in range(65)}}, 413, ("Too many fields",)),
    ("missing boundary", {"content": b"--x\r\n\r\n",
                          "headers": {"content-type": "multipart/form-data"}}, 400, ("boundary",)),
    ("empty boundary", {"content": b"--x\r\n\r\n",
                        "headers": {"content-type": "multipart/form-data; boundary="}}, 400,
     ("boundary",)),
    ("wrong boundary", {"content": _multipart_body(),
                        "headers": {"content-type": "multipart/form-data; boundary=wrongwrong"}},
     400, ("multipart",)),
]


@pytest.mark.parametrize(("kwargs", "status", "words"), [m[1:] for m in MULTIPART],
                         ids=[m[0] for m in MULTIPART])
def test_multipart_errors_are_4xx_without_a_traceback(hserver: Server, kwargs: dict, status: int,
                                                      words: tuple[str, ...]) -> None:
    before = _tracebacks(hserver)
    with hserver.client() as c:
        _error(c.post("/v1/models/mnist-cnn/predict", **kwargs), status, *words)
    assert _tracebacks(hserver) == before


# ------------------------------------------------------------------ 4, 6: char-rnn arithmetic, work

def _oip_prompts(prompts: list[str], **parameters: Any) -> dict[str, Any]:
    return {"inputs": [{"name": "prompt", "datatype": "BYTES", "shape": [len(prompts)],
                        "data": prompts}], "parameters": parameters}


def test_tiny_temperature_samples_instead_of_failing(hserver: Server) -> None:
    """The smallest positive double: logits / temperature overflowed to inf - inf = NaN (500
    "Probabilities contain NaN"); now it is greedy decoding, on /v1 and /v2."""
    with hserver.client() as c:
        v1 = c.post("/v1/models/char-rnn/generate",
                    json={"prompt": "And God", "max_new_chars": 8, "temperature": 5e-324})
        v2 = c.post("/v2/models/char-rnn/infer",
                    json=_oip_prompts(["And God"], max_new_chars=8, temperature=5e-324))
    assert v1.status_code == 200, v1.text
    assert v2.status_code == 200, v2.text
    assert v2.json()["outputs"][0]["data"] == [v1.json()["text"]]  # both greedy: the same text


@pytest.mark.parametrize(("body", "words"), [
    (_oip_prompts(["a" * 2000] * 64, max_new_chars=1), ("max_request_prompt_chars", "128000")),
    (_oip_prompts(["a"] * 64, max_new_chars=2000), ("max_request_generated_chars", "128000")),
], ids=["prompt chars", "generated chars"])
def test_char_rnn_work_per_request_is_bounded(hserver: Server, body: dict, words: tuple) -> None:
    """Before: 64 prompts × 2,000 characters took 1.9-5.7 s, 64 × 2,000 new characters 12 s."""
    with hserver.client() as c:
        _error(c.post("/v2/models/char-rnn/infer", json=body), 413, *words)
        ok = c.post("/v2/models/char-rnn/infer", json=_oip_prompts(["a"] * 4, max_new_chars=4))
        assert ok.status_code == 200, ok.text


# ------------------------------------------------------------------------------------ 5: .npy

def _npy_header(shape: tuple[int, ...], descr: str = "<f4") -> bytes:
    header = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}"
    header += " " * (118 - len(header) - 1) + "\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode()


@pytest.mark.parametrize(("body", "status", "words"), [
    (_npy_header((10**11, 28, 28)) + b"\0" * 100, 413, ("100000000000 images",)),
    (_npy_header((4096, 28, 28)) + b"\0" * 100, 400, ("12845056 bytes", "100 bytes")),
    (_npy_header((1, 10**12), "<f8") + b"\0" * 100, 400, ("8000000000000 bytes",)),
], ids=["10^11 images", "short body", "one huge image"])
def test_npy_declared_shape_is_checked_before_allocating(hserver: Server, body: bytes, status: int,
                                                         words: tuple) -> None:
    """Before: 10^11×28×28 in a 100-byte body → 500 MemoryError (a 71 TiB allocation)."""
    with hserver.client() as c:
        _error(c.post("/v1/models/mnist-cnn/predict", content=body,
                      headers={"content-type": "application/x-npy"}), status, *words)


# ------------------------------------------------------------------------ 10: JSON errors, HEAD

@pytest.mark.parametrize(("method", "path", "allowed"), [
    ("GET", "/v2/models/mnist-cnn/infer", "POST"),
    ("GET", "/v2/models/mnist-cnn/versions/x/infer", "POST"),
    ("GET", "/v1/models/mnist-cnn/predict", "POST"),
    ("PUT", "/v1/models/char-rnn/generate", "POST"),
    ("POST", "/v1/models", "GET"),
    ("DELETE", "/v2/models/mnist-cnn", "GET"),
])
def test_wrong_method_on_a_podium_route_is_a_json_405(hserver: Server, method: str, path: str,
                                                      allowed: str) -> None:
    with hserver.client() as c:
        r = c.request(method, path)
    _error(r, 405, "not allowed", allowed)
    assert allowed in r.headers["allow"]


@pytest.mark.parametrize("path", ["/v1/models", "/v1/models/mnist-cnn", "/v1/models/mnist-cnn/ready",
                                  "/v2", "/v2/health/ready", "/v2/models/mnist-cnn",
                                  "/v2/models/mnist-cnn/config", "/readyz", "/livez"])
def test_head_answers_like_get_without_a_body(hserver: Server, path: str) -> None:
    with hserver.client() as c:
        get, head = c.get(path), c.head(path)
    assert get.status_code == 200
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-type"] == get.headers["content-type"]


# ---------------------------------------------------------------------- 12: bounded echoes

@pytest.mark.parametrize(("path", "kwargs", "status"), [
    ("/v1/models/mnist-cnn/predict", {"files": [("images", ("n" * 20000 + ".png", b"no image"))]}, 400),
    ("/v2/models/mnist-cnn/infer", {"json": {"inputs": [{"name": "z" * 100000, "datatype": "FP32",
                                                         "shape": [1], "data": [1]}]}}, 400),
    ("/v1/models/" + "m" * 4000 + "/predict", {"json": {}}, 404),
    ("/v2/models/mnist-cnn/versions/" + "v" * 4000 + "/infer", {"json": {}}, 404),
], ids=["filename", "tensor name", "model name", "version"])
def test_client_strings_are_clipped_in_errors(hserver: Server, path: str, kwargs: dict,
                                              status: int) -> None:
    """Before: a 100,000-character tensor name came back twice, a 200 KB error body."""
    with hserver.client() as c:
        r = c.post(path, **kwargs)
    _error(r, status)
    assert len(r.content) < 2500, len(r.content)


# ------------------------------------------------------------- 1 and the memory bound (last)

def test_random_names_do_not_grow_podium_series(hserver: Server) -> None:
    """5,000 requests to random model names and versions on every inference route. Before: one
    series per name (podium_* lines alone: 9 MB). Now: one shared "unknown" label value."""
    # The matrix so far (images, multipart, .npy, char-rnn) is Podium's alone: bounded already.
    rss = _worker_rss(hserver)
    start = hserver.start_rss  # type: ignore[attr-defined]
    print(f"worker RSS: {start / 2**20:.0f} MiB at start, {rss / 2**20:.0f} MiB before the flood")
    assert rss < start + RSS_MARGIN_MB * 2**20
    with hserver.client() as c:
        before = c.get("/metrics").text

    async def flood() -> None:
        paths = ("/v1/models/x{i}/predict", "/v1/models/x{i}/generate", "/v2/models/x{i}/infer",
                 "/v1/models/mnist-cnn/versions/v{i}/predict", "/v2/models/x{i}/versions/{i}/infer")
        async with httpx.AsyncClient(base_url=hserver.url, timeout=60) as c:
            gate = asyncio.Semaphore(16)

            async def one(i: int) -> None:
                async with gate:
                    r = await c.post(paths[i % len(paths)].format(i=i), json={})
                    assert r.status_code == 404, r.text

            await asyncio.gather(*(one(i) for i in range(5000)))

    asyncio.run(flood())
    with hserver.client() as c:
        after = c.get("/metrics").text
    podium = [line for line in after.splitlines() if line.startswith("podium_requests_total{")]
    models = {line.split('model="', 1)[1].split('"', 1)[0] for line in podium}
    assert models <= {*MODELS, "unknown"}, sorted(models)[:10]
    grown = sum(map(len, podium)) - sum(len(line) for line in before.splitlines()
                                        if line.startswith("podium_requests_total{"))
    assert grown < 4096, grown
    # The whole page too, BentoML's own bentoml_service_request_* series included (services/edge.py
    # labels them by route template).
    size = len(after.encode())
    print(f"/metrics: {len(before.encode())} bytes before 5,000 random-name requests, {size} after")
    assert size < len(before.encode()) + METRICS_MARGIN_BYTES


def test_worker_memory_is_bounded_after_the_matrix(hserver: Server) -> None:
    rss = _worker_rss(hserver)
    start = hserver.start_rss  # type: ignore[attr-defined]
    print(f"worker RSS: {start / 2**20:.0f} MiB at start, {rss / 2**20:.0f} MiB after the matrix")
    assert rss < start + RSS_MARGIN_MB * 2**20
    with hserver.client() as c:
        assert c.get("/readyz").status_code == 200
