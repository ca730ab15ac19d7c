"""Issue 15: the hot path's cheaper per-request code answers exactly like what it replaced: the
Python top-k like NumPy's, the plain-ASGI hot endpoint like the Starlette one (fast, in-process)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from services import codecs
from services.http import MODEL_HEADER
from services.kinds.image import ranked
from services.routes import create_app, hot_app
from tests.kinds_support import plane_of


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 12).flatmap(lambda classes: st.tuples(
    arrays(np.float32, st.tuples(st.integers(1, 40), st.just(classes)),
           elements=st.floats(-30, 30, width=32)),
    st.integers(1, classes))))
def test_ranked_is_softmax_then_top_k_in_either_path(case: tuple[np.ndarray, int]) -> None:
    scores, k = case  # up to 40 × 12 scores: both sides of codecs.SMALL_SCORES
    got = ranked(scores, k)
    probs = codecs.softmax(scores.astype(np.float64))
    best = -np.sort(-probs, axis=1)[:, :k]  # classes within rounding of each other may swap places
    np.testing.assert_allclose([p for _, p in got], best, rtol=1e-5, atol=1e-7)
    for (order, p), row in zip(got, probs, strict=True):
        assert len(set(order)) == k
        np.testing.assert_allclose(p, row[order], rtol=1e-5, atol=1e-7)
    assert all(isinstance(j, int) and isinstance(q, float)
               for row, p in got for j, q in zip(row, p, strict=True))


@pytest.mark.parametrize("rows", [1, codecs.SMALL_SCORES // 10 + 1])  # the Python path and the NumPy path
def test_ties_rank_the_lower_class_first_in_both_paths(rows: int) -> None:
    scores = np.zeros((rows, 10), np.float32)
    scores[:, [3, 7]] = 1.0
    for order, probs in ranked(scores, 3):
        assert order == [3, 7, 0]
        assert probs[0] == pytest.approx(probs[1])


class _Recorder:
    def __init__(self) -> None:
        self.requests: list[tuple[str, str, str, int]] = []

    def observe_request(self, model: str, version: str, endpoint: str, status: int, seconds: float) -> None:
        self.requests.append((model, version, endpoint, status))

    def observe_batch(self, *args: Any) -> None:
        pass


def test_the_hot_apps_plain_asgi_answers_like_the_documented_routes(tmp_path: Path) -> None:
    """``HotEndpoint`` (two ASGI messages) and ``wrap`` (a Starlette response): the same status,
    body, version headers and metrics, for an answer, a handler's error, an unknown model and
    query parameters."""
    digit = {"instances": [[[0.5] * 28] * 28], "top_k": 3}
    requests = [("/v1/models/mnist-fc/predict", {"json": digit}),
                ("/v1/models/mnist-fc/predict", {"json": {"instances": [[1, 2]]}}),
                ("/v1/models/nope/predict", {"json": digit}),
                ("/v1/models/mnist-fc/predict?top_k=2&preview=1",
                 {"json": {"instances": digit["instances"]}})]

    async def answers(app: Any) -> list[tuple[int, bytes, dict[str, str]]]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://p") as c:
            out = []
            for path, kwargs in requests:
                r = await c.post(path, **kwargs)
                out.append((r.status_code, r.content, {k: v for k, v in r.headers.items()
                                                       if k.startswith("podium") or k.startswith("content")}))
            return out

    with plane_of(tmp_path, _Recorder()) as plane:
        hot = asyncio.run(answers(hot_app(plane)))
        documented = asyncio.run(answers(create_app(plane)))
        recorded = plane.metrics.requests
    assert hot == documented
    assert [status for status, _, _ in hot] == [200, 400, 404, 200]
    (queried,) = orjson.loads(hot[3][1])["predictions"]  # the query string is read when there is one
    assert len(queried["top_k"]) == 2 and queried["preview"]
    assert hot[0][2][MODEL_HEADER.lower()] == "mnist-fc" and hot[0][2]["content-type"] == "application/json"
    assert recorded[:4] == recorded[4:] and [r[3] for r in recorded[:4]] == [200, 400, 404, 200]


def test_the_hot_app_dispatches_like_a_router_remembering_a_bounded_number_of_paths(
        tmp_path: Path) -> None:
    """``HotApp`` (no Starlette router): path parameters, 404 and 405 (with ``Allow``) as the router
    gave them; a path is matched once, and at most ``SEEN_MAX`` paths are remembered."""
    with plane_of(tmp_path, _Recorder()) as plane:
        app = hot_app(plane)
        endpoints, params = app.match("/v1/models/m/versions/v9/predict")
        assert params == {"name": "m", "version": "v9"} and list(endpoints) == ["POST"]
        for path in ("/v1/models/m/predict/x", "/v1/models//predict", "/v2/models/m/versions/infer"):
            assert app.match(path) is None, path
        app.SEEN_MAX = len(app._seen) + 3
        for i in range(10):  # random model names cannot grow the memory past the bound
            assert app.match(f"/v2/models/m{i}/infer")[1] == {"name": f"m{i}"}
        assert len(app._seen) == app.SEEN_MAX

        async def ask() -> list[httpx.Response]:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://p") as c:
                return [await c.get("/v1/models/mnist-fc/predict"), await c.post("/v1/models"),
                        await c.post("/v1/models/mnist-fc/versions/nope/predict", json={})]

        wrong_method, unknown, unknown_version = asyncio.run(ask())
    assert (wrong_method.status_code, wrong_method.headers["allow"]) == (405, "POST")
    assert unknown.status_code == 404
    assert unknown_version.status_code == 404 and "nope" in unknown_version.json()["error"]
