"""The BentoML service: ``bentoml serve`` (the service named in bentofile.yaml) and
``podium serve`` both start this.

The Podium HTTP API is a FastAPI app mounted into the service, so BentoML keeps its own
``/livez``, ``/readyz``, ``/metrics`` and OpenAPI page, and our routes appear in that page.
Every configured model is loaded and warmed in ``__init__``; ``__is_ready__`` reports ready only
after that. BentoML's app is served behind ``services.edge`` (JSON errors, bounded metric labels),
which sends the inference routes straight to ``hot_app`` (the lean data plane), and each worker's
uvicorn gets ``services.worker`` (SIGTERM drain, slow-client limits).
"""

from __future__ import annotations

import gc
import logging
import os
from pathlib import Path
from typing import Annotated, Any

import bentoml
import click
import numpy as np
from bentoml._internal.configuration.containers import BentoMLContainer
from bentoml.validators import ContentType

from models.artifacts import store_home
from services import bento_api, edge, index_page, worker
from services.bento_api import NamedTensor
from services.config import get_config
from services.dataplane import DataPlane
from services.repository import preflight
from services.rollout.store import deployment_name
from services.routes import create_app, hot_app
from services.runtimes import DeviceUnavailable, check_device


def _adopt_command_line_port() -> None:
    """``bentoml serve --port N`` names the port on its command line only: make it the configured
    port (``PODIUM_PORT``, inherited by the workers), so that what is keyed by the port — the
    rollout namespace, the Prometheus directory — differs between two servers on one store."""
    context = click.get_current_context(silent=True)
    port = context.params.get("port") if context is not None else None
    if port:
        os.environ["PODIUM_PORT"] = str(port)


_adopt_command_line_port()
CONFIG = get_config()
# BentoML empties its Prometheus directory under BENTOML_HOME when a server starts: one per
# deployment, so a second server on the same store (a test server beside a dev server) does not
# wipe the first one's metrics (issue 11).
BentoMLContainer.prometheus_multiproc_dir.set(
    str(store_home() / "prometheus_multiproc_dir" / deployment_name(CONFIG)))
# This worker process's one data plane (issue 14: passed to the apps, no module-level global in
# the serving code); the service instance starts it and holds it as ``self.plane``.
PLANE = DataPlane(CONFIG)
app = create_app(PLANE)
inference_app = hot_app(PLANE)
# issue 14: Podium's own index page, Swagger UI and OpenAPI info (services.index_page); mounted
# last, so it costs the inference routes nothing.
pages = index_page.create_app(PLANE, lambda: Podium)
ImageFile = Annotated[Path, ContentType("image/*")]

# The container image: a Debian bookworm / Python 3.11 base built locally with debootstrap
# (deploy/container/build-base.sh). A distro name BentoML does not manage keeps its generated
# Dockerfile from adding a ~385 MB apt layer; serving needs no system packages.
IMAGE = bentoml.images.Image(
    base_image=os.environ.get("PODIUM_BASE_IMAGE", "localhost/podium-base:bookworm-py311"),
    distro="podium-debootstrap", python_version="3.11", lock_python_packages=False)


@bentoml.service(
    name="podium",
    image=IMAGE,
    workers=CONFIG.worker_count(),
    traffic={"timeout": 300},
    http={"host": CONFIG.host, "port": CONFIG.port},
    # Measured (results/bench): per-request access logs and OpenTelemetry spans cost more than
    # the inference itself; the data plane keeps its own Prometheus metrics instead.
    logging={"access": {"enabled": False}},
    tracing={"excluded_urls": ["/v1/models", "/v2"]},
)
@bentoml.asgi_app(pages, path="/")
@bentoml.asgi_app(app, path="/")
class Podium:
    """Podium: the models of its store behind /v1, the Open Inference Protocol (/v2) and these
    typed APIs, on one data plane. The page at / lists what is loaded."""

    def __init__(self) -> None:
        logging.getLogger("podium").setLevel(logging.INFO)
        self.plane = PLANE
        try:
            self.plane.start(CONFIG)
        except Exception as exc:
            if CONFIG.strict:  # a failure the pre-flight could not see (e.g. device=cuda, no GPU)
                worker.fail_start_up(exc)
            raise
        # Everything loaded so far (BentoML, FastAPI, ONNX Runtime, the models) lives as long as
        # the process: take it out of the cyclic GC, whose full passes over that heap otherwise
        # stall every in-flight request for ~0.2 s under load.
        gc.collect()
        gc.freeze()
        gc.set_threshold(50_000, 50, 100)  # fewer, cheaper passes over per-request garbage

    def __is_ready__(self) -> bool:
        return self.plane.ready

    # -- issue 14: typed BentoML APIs (services.bento_api) over the same data plane -----------
    # What bentoml.SyncHTTPClient/AsyncHTTPClient list and call; each method only delegates.

    def _plane(self) -> DataPlane:
        return self.plane

    @bentoml.api
    async def classify_images(self, images: list[ImageFile], model: str = "mnist-cnn",
                              top_k: int | None = None, version: str | None = None,
                              ctx: bentoml.Context = None) -> list[dict[str, Any]]:
        """Images of any size, mode and format (photos too, as /v1 predict) → per image the
        class (``digit`` for the MNIST models), its probability and the top_k (1–10) labels."""
        return await bento_api.classify_images(self._plane(), ctx, images, model, top_k, version)

    @bentoml.api
    async def classify_tensor(self, pixels: np.ndarray, model: str = "mnist-cnn",
                              top_k: int | None = None, version: str | None = None,
                              ctx: bentoml.Context = None) -> list[dict[str, Any]]:
        """A batch of MNIST images as a NumPy array: [N,1,28,28], [N,28,28] or [N,784]; floats
        in [0, 1] or integers 0–255 → the same answer as classify_images."""
        return await bento_api.classify_tensor(self._plane(), ctx, pixels, model, top_k, version)

    @bentoml.api
    async def predict_rows(self, rows: list[dict[str, float] | list[float]],
                           model: str = "diabetes", version: str | None = None,
                           ctx: bentoml.Context = None) -> list[dict[str, Any]]:
        """Rows of named features or 8-number lists → per row the probability and label."""
        return await bento_api.predict_rows(self._plane(), ctx, rows, model, version)

    @bentoml.api
    async def generate_text(self, prompt: str, max_new_chars: int = 200, temperature: float = 1.0,
                            top_k: int | None = None, seed: int | None = None,
                            model: str = "char-rnn", version: str | None = None,
                            ctx: bentoml.Context = None) -> str:
        """Text continuing the prompt; the same seed gives the same text as
        /v1/models/char-rnn/generate."""
        settings = {"max_new_chars": max_new_chars, "temperature": temperature, "top_k": top_k,
                    "seed": seed}
        return await bento_api.generate_text(self._plane(), ctx, prompt, settings, model, version)

    @bentoml.api
    async def next_chars(self, prompt: str, top_k: int = 5, model: str = "char-rnn",
                         version: str | None = None,
                         ctx: bentoml.Context = None) -> list[dict[str, Any]]:
        """The top_k most likely next characters after the prompt, with their probabilities."""
        return await bento_api.next_chars(self._plane(), ctx, prompt, top_k, model, version)

    @bentoml.api
    async def infer_tensors(self, model: str, inputs: list[NamedTensor],
                            version: str | None = None,
                            ctx: bentoml.Context = None) -> list[NamedTensor]:
        """Any non-text model: named input tensors → its numeric output tensors (names, shapes
        and datatypes as GET /v2/models/{model} lists them)."""
        return await bento_api.infer_tensors(self._plane(), ctx, model, inputs, version)

    # -- end of issue 14's typed APIs -------------------------------------------------------

    @bentoml.on_deployment
    def check_store() -> None:
        """Runs once in ``bentoml serve``'s own process before any worker starts. device=cuda
        without a usable GPU stops start-up here with one line naming the reason, strict or not
        (inside a worker the same error would only restart it forever). With ``strict``, a
        version that is missing or fails its checksums stops it too, and a worker's later load
        failure makes this process exit 1 (``services.worker``)."""
        try:
            check_device(CONFIG.device, CONFIG.runtime)
        except DeviceUnavailable as exc:
            raise SystemExit(f"podium: start-up failed: DeviceUnavailable: {exc}") from None
        if not CONFIG.strict:
            return
        if problems := preflight(CONFIG):
            raise SystemExit(f"podium: strict start-up failed: {'; '.join(problems)}")
        worker.watch_strict_failures()


bento_api.files_only()  # issue 14: the typed APIs fetch no URL given in place of a file


def _on_startup(front: edge.Edge) -> None:
    # issue 14: the typed APIs' routes after the fast mounted routes, their bodies bounded
    bento_api.behind_the_mounts(front.app, Podium.apis, CONFIG.max_request_bytes)
    worker.start(CONFIG, front)


# The inference routes are served by ``hot_app`` straight from the edge, outside BentoML's app
# and FastAPI (issue 15); FastAPI keeps documented copies of them for the OpenAPI page. No
# Starlette app or router around them: the edge already answers errors in JSON, Starlette's two
# app-level middlewares cost ~10 µs of ~33 µs per request in-process (the handlers catch their own
# errors), and its router matched every route's regex per request (routes.HotApp caches a path).
edge.install(Podium, on_startup=_on_startup, data_plane=lambda: inference_app, plane=PLANE)
