"""The one route table of Podium's HTTP API, and the apps built from it.

Each ``Route`` names its path, its handler and how it is documented. From the table come

- ``hot_app(plane)``: the inference routes (``/v1`` predict/generate/next, ``/v2`` infer) as one
  plain ASGI app (``HotApp``: no FastAPI, no Starlette router), which ``services.edge`` serves
  ahead of BentoML's app — FastAPI's per-request machinery (parameter solving, its middlewares)
  was over a quarter of the event loop under load (results/bench/NOTES.md);
- ``create_app(plane)``: every route, as a FastAPI app (BentoML reads its OpenAPI schema for
  ``/docs.json`` and the index page; it serves the routes the hot app does not match). In
  tests, the whole API in-process.

Every handler is wrapped once (``wrap``; ``HotEndpoint`` in the hot app): it takes an
``Exchange`` and returns a JSON object or a response; the wrapper maps errors to their status
(``services.http.error_response``), records the request in the metrics (routes with a ``metric``)
and adds the answering version's headers.
The OpenAPI schema names the served models as an enum per route and takes each kind's request
bodies (``Kind.request_bodies``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route as StarletteRoute
from starlette.routing import compile_path
from starlette.types import Receive, Scope, Send

from services import admin, app, protocol
from services.edge import no_route_message, not_allowed_message, send_json_error
from services.http import (
    ERROR_RESPONSES,
    JSON,
    MODEL_HEADER,
    VERSION_HEADER,
    Encoded,
    Exchange,
    HotRequest,
    Timer,
    error_response,
    send_json,
)
from services.kinds import KINDS

if TYPE_CHECKING:
    from services.dataplane import DataPlane

Handler = Callable[..., Awaitable[Any]]
ALL = "*"  # a route about any served model (its name enum lists them all)


@dataclass(frozen=True)
class Route:
    path: str
    method: str
    handler: Handler
    tag: str
    summary: str
    description: str = ""
    metric: str | None = None  # the endpoint label of its requests in the metrics; None: not recorded
    hot: bool = False  # served by the hot app (HotApp), ahead of BentoML's app and FastAPI
    serves: str | None = None  # the /v1 endpoint of the kinds (predict, ...) or ALL: a model route

    def openapi(self, served: dict[str, str]) -> dict[str, Any]:
        """This route's OpenAPI additions: its path parameters (the model names it serves as an
        enum) and the request bodies of the kinds that serve it."""
        if self.serves is None:
            return {}
        kinds = {kind for kind in served.values()
                 if self.serves == ALL or self.serves in KINDS[kind].endpoints}
        names = [name for name, kind in served.items() if kind in kinds]
        name_schema: dict[str, Any] = {"type": "string", **({"enum": names} if names else {})}
        parameters = [{"name": "name", "in": "path", "required": True, "schema": name_schema,
                       "description": "a served model"}]
        if "{version}" in self.path:
            parameters.append({"name": "version", "in": "path", "required": True,
                               "schema": {"type": "string"},
                               "description": "a loaded version (a unique prefix will do)"})
        extra: dict[str, Any] = {"parameters": parameters}
        if self.serves != ALL:
            content: dict[str, Any] = {}
            answers: dict[str, Any] = {}
            for kind in sorted(kinds):
                for media, body in KINDS[kind].request_bodies(self.serves).items():
                    content.setdefault(media, body)  # the first kind's example per media type
                answers.update(KINDS[kind].answers(self.serves))
            if content:
                extra["requestBody"] = {"required": True, "content": content}
            if answers:
                extra["responses"] = {"200": {"description": "the answer", "content": answers}}
        return extra


def _model_routes(prefix: str, tag: str, items: list[tuple[str, str, Handler, str, dict[str, Any]]]
                  ) -> list[Route]:
    """Each (suffix, method, handler, summary, options) for a model and for one of its versions."""
    return [Route(f"{prefix}/models/{{name}}{version}{suffix}", method, handler, tag, summary, **options)
            for version in ("", "/versions/{version}")
            for suffix, method, handler, summary, options in items]


V1, V2, ADMIN = "Podium", "Open Inference Protocol", "Admin"
TABLE: list[Route] = [
    *_model_routes("/v1", V1, [
        ("/predict", "POST", app.kind_endpoint("predict"),
         "Predict: rows, images (JSON tensors, .npy, image/*, multipart), or named tensors",
         {"metric": "predict", "hot": True, "serves": "predict", "description":
          "diabetes: `{\"rows\": [...]}` (named fields or 8-number lists). Image models: JSON "
          "`{\"instances\": [N,C,H,W]}` (MNIST also [N,28,28] or [N,784]; floats in [0,1] or "
          "0–255 integers), an `.npy` body, one `image/*` body, or multipart `images` of any "
          "size; optional `top_k` (1–10); `?preview=1` (MNIST) adds each model input as a base64 "
          "PNG. Tensor models: `{\"inputs\": {name: tensor}}`, `{\"instances\": tensor}` or `.npy` "
          "(one input)."}),
        ("/generate", "POST", app.kind_endpoint("generate"), "Text models: generate text from a prompt",
         {"metric": "generate", "hot": True, "serves": "generate", "description":
          "`prompt`, `max_new_chars`, `temperature` in (0, 5], `top_k`, `seed` (the same seed gives "
          "the same text)."}),
        ("/next", "POST", app.kind_endpoint("next"),
         "Text models: the next-character distribution after a prompt",
         {"metric": "next", "hot": True, "serves": "next"}),
        ("/ready", "GET", app.model_ready, "Per-model readiness (200 ready, 404 unknown, 503 loading)",
         {"serves": ALL}),
    ]),
    Route("/v1/models", "GET", app.list_models, V1, "Loaded models and versions"),
    Route("/v1/models/{name}", "GET", app.model_info, V1,
          "A model's kind, signature, labels, versions and headline metric", serves=ALL),
    Route("/v2", "GET", protocol.server_metadata, V2, "Server metadata: name, version, protocol extensions"),
    Route("/v2/health/live", "GET", protocol.live, V2, "Liveness (200 = live)"),
    Route("/v2/health/ready", "GET", protocol.ready, V2,
          "Readiness: 200 once every model is loaded and warm, else 503"),
    *_model_routes("/v2", V2, [
        ("", "GET", protocol.model_metadata, "Model metadata: platform, versions, input and output tensors",
         {"serves": ALL}),
        ("/ready", "GET", protocol.model_ready, "Model readiness (200 ready, 404 unknown, 503 loading)",
         {"serves": ALL}),
        ("/config", "GET", protocol.model_config, "Triton-style model configuration (for perf_analyzer)",
         {"serves": ALL}),
        ("/infer", "POST", protocol.infer, "Inference: JSON tensors or the binary tensor extension",
         {"metric": "infer", "hot": True, "serves": ALL, "description":
          "OIP request `{\"id\", \"inputs\": [{\"name\", \"datatype\", \"shape\", \"data\"}], "
          "\"outputs\": [{\"name\"}], \"parameters\"}`; binary tensors follow the JSON header "
          "(`Inference-Header-Content-Length`, `parameters.binary_data_size`). Text models take "
          "`max_new_chars`, `temperature`, `top_k`, `seed` as request parameters; "
          "`GET /v2/models/{name}` lists each model's tensors."}),
    ]),
    Route("/admin/rollout", "GET", admin.status, ADMIN,
          "Rollout status of every served model (token required)"),
    Route("/admin/rollout/{name}", "GET", admin.status, ADMIN,
          "A model's versions, traffic shares, outcomes and events", serves=ALL),
    Route("/admin/rollout/{name}/analysis", "GET", admin.analysis, ADMIN,
          "The automatic-rollback verdict over every replica, as JSON", serves=ALL),
    Route("/admin/rollout/{name}/start", "POST", admin.start, ADMIN,
          "Start a canary (percent of traffic) or shadow rollout", serves=ALL),
    Route("/admin/rollout/{name}/promote", "POST", admin.promote, ADMIN,
          "Make the candidate (or a named version) the stable version", serves=ALL),
    Route("/admin/rollout/{name}/rollback", "POST", admin.rollback, ADMIN,
          "Abort the rollout, or return to the previous stable version", serves=ALL),
]


def _exchange(plane: DataPlane, route: Route, request: Request) -> Exchange:
    """``request`` as ``route``'s handler takes it, timed for the metrics if the route is."""
    return Exchange(plane, request, Timer(plane.metrics, route.metric) if route.metric else None)


async def _run(plane: DataPlane, route: Route, request: Request, path_params: dict[str, Any]
               ) -> tuple[Any, Exchange]:
    """The handler's result (a JSON object or a response; errors → their status) and its exchange."""
    ex = _exchange(plane, route, request)
    try:
        return await route.handler(ex, **path_params), ex
    except Exception as exc:  # mapped to one status in services.http
        return error_response(exc), ex


def _finish(response: Response, ex: Exchange) -> Response:
    """A handler's own response (or an error's): the version headers, and the request recorded."""
    if ex.loaded is not None:
        response.headers[MODEL_HEADER] = ex.loaded.name
        response.headers[VERSION_HEADER] = ex.loaded.version
    if ex.timer is not None:
        ex.timer.done(response.status_code)
    return response


def wrap(plane: DataPlane, route: Route) -> Callable[[Request], Awaitable[Response]]:
    """``route``'s handler as a Starlette endpoint: errors → their status, metrics, version headers."""

    async def endpoint(request: Request) -> Response:
        result, ex = await _run(plane, route, request, request.path_params)
        if isinstance(result, Response):
            return _finish(result, ex)
        loaded = ex.loaded  # the common case: headers given, not set after
        response = JSON(result, headers=None if loaded is None else {
            MODEL_HEADER: loaded.name, VERSION_HEADER: loaded.version})
        if ex.timer is not None:
            ex.timer.done(response.status_code)
        return response

    return endpoint


class HotEndpoint:
    """``route``'s handler as a plain ASGI app (the hot app): what ``wrap`` does, but a JSON answer
    goes out as two ASGI messages with its headers as bytes — Starlette's endpoint wrapper and
    ``Response`` cost ~7 µs of event-loop time per request (issue 15). A class, not a function:
    Starlette's ``Route`` takes a function for ``func(request) -> response``."""

    def __init__(self, plane: DataPlane, route: Route) -> None:
        self.plane, self.route = plane, route

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self.route  # _run, inline: one coroutine less per request
        ex = _exchange(self.plane, route, HotRequest(scope, receive))
        try:
            result = await route.handler(ex, **scope["path_params"])
        except Exception as exc:  # mapped to one status in services.http
            result = error_response(exc)
        encoded = isinstance(result, Encoded)  # a 200 with its body ready (an OIP answer)
        if isinstance(result, Response) and not encoded:
            await _finish(result, ex)(scope, receive, send)
            return
        if ex.timer is not None:
            ex.timer.done(200)
        loaded = ex.loaded
        headers = () if loaded is None else loaded.answer_headers
        await (result.send(send, headers) if encoded else send_json(send, result, headers))


class HotApp:
    """The inference routes as one plain ASGI app: a path seen before is one dict lookup to its
    endpoint per method and its path parameters (Starlette's router matched every route's regex
    and copied the scope per request). ``routes`` lists them as Starlette routes, for the edge's
    matcher and the metrics' route templates. A path it does not serve gets a JSON 404, a method a
    path does not take a JSON 405 with ``Allow`` (the edge's wording: it passes these answers on
    unwrapped)."""

    SEEN_MAX = 4096  # concrete paths remembered; past it a path is matched every time

    def __init__(self, plane: DataPlane) -> None:
        hot = [r for r in TABLE if r.hot]
        self.routes = [StarletteRoute(r.path, HotEndpoint(plane, r), methods=[r.method]) for r in hot]
        by_path: dict[str, dict[str, HotEndpoint]] = {}
        for route, starlette_route in zip(hot, self.routes, strict=True):
            by_path.setdefault(route.path, {})[route.method] = starlette_route.app
        self._patterns = [(compile_path(path)[0], endpoints) for path, endpoints in by_path.items()]
        self._seen: dict[str, tuple[dict[str, HotEndpoint], dict[str, str]] | None] = {}

    def match(self, path: str) -> tuple[dict[str, HotEndpoint], dict[str, str]] | None:
        """The endpoints (by method) serving ``path`` and its path parameters, or None."""
        try:
            return self._seen[path]
        except KeyError:
            pass
        found = None
        for regex, endpoints in self._patterns:
            if (m := regex.match(path)) is not None:
                found = (endpoints, m.groupdict())
                break
        if len(self._seen) < self.SEEN_MAX:
            self._seen[path] = found
        return found

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":  # in-process clients (TestClient) send one
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        found = self.match(scope["path"])
        if found is None:
            await send_json_error(send, 404, no_route_message(scope))
            return
        endpoints, params = found
        endpoint = endpoints.get(scope["method"])
        if endpoint is None:
            allow = ", ".join(endpoints)
            await send_json_error(send, 405, not_allowed_message(scope, allow),
                                  headers=[(b"allow", allow.encode("latin-1"))])
            return
        scope["path_params"] = dict(params)
        await endpoint(scope, receive, send)


def hot_app(plane: DataPlane) -> HotApp:
    """The inference routes without FastAPI or a router: ``services.edge`` dispatches their paths
    straight to this app, outside BentoML's app (issue 15); ``create_app`` documents them."""
    return HotApp(plane)


def create_app(plane: DataPlane, served: dict[str, str] | None = None) -> FastAPI:
    """Every route of the table, documented. ``served``: model name → kind, for the OpenAPI
    enums and bodies (default: the plane's configured models, their kinds read from the
    catalog or the store)."""
    from services.repository import served_kinds

    if served is None:
        served = served_kinds(plane.config.models) if plane.config is not None else {}
    api = FastAPI(title="Podium", version="1", docs_url=None, redoc_url=None, openapi_url=None)
    for route in TABLE:
        api.add_api_route(route.path, wrap(plane, route), methods=[route.method], tags=[route.tag],
                          summary=route.summary, description=route.description,
                          responses=ERROR_RESPONSES, openapi_extra=route.openapi(served) or None)
    return api
