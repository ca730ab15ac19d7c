"""The outermost ASGI layer of every worker: what every answer gets, whichever route (or none)
produced it.

BentoML builds each worker's app — its own routes (``/readyz``, ``/metrics``, the OpenAPI page),
its middlewares and our mounted apps — in ``Service.to_asgi``. ``install`` makes the Podium
service object a ``Service`` subclass whose ``to_asgi`` wraps that app once, here:

- every 4xx/5xx body is JSON ``{"error": ...}``: the framework's own 404, 405, 500 and
  ``HTTPException`` answers are plain text (the hot app's answers are JSON already and pass
  unwrapped);
- ``HEAD`` works wherever ``GET`` does (uvicorn drops the body of a ``HEAD`` answer itself);
- HTTP/1.1 without ``Host`` gets 400 (RFC 9112 §3.2; httptools accepts it);
- while the worker drains (``services.worker``), new work — any method but GET/HEAD/OPTIONS —
  gets 503 with ``Connection: close``, so a client retries on another replica; the one drain
  flag is the data plane's (``DataPlane.draining``, which readiness reads too);
- a W3C ``traceparent`` a client sends comes back on the answer (and names the request in the log
  of an unhandled error), so a caller can match the answer to its trace;
- BentoML's request metrics label the *route template* (``/v1/models/{name}/predict``), or one
  fixed value for paths no route serves, never the raw path: random paths made ``/metrics``
  grow without bound (issue 10, item 1).

**The lean data plane (issue 15).** The inference paths (``/v1`` predict/generate/next, ``/v2``
infer: the routes of the *hot app* given to ``install``) go from here straight to that app,
never entering BentoML's Starlette app: its middlewares (request metrics, OpenTelemetry, the
request context, the traffic timeout) and routing were most of each request's cost on a
saturated event loop (results/bench/NOTES.md). What they gave these paths Podium gives itself:
request counts and latency per model, version, endpoint and status (``podium_requests_total``,
``podium_request_duration_seconds``, ``services.metrics``), the body limit
(``max_request_bytes``, ``services.http.read_body``), the queue deadline (``max_latency_ms``) and
the slow-client limits (``services.worker``); BentoML's tracing was already off for them. Health,
metrics, the OpenAPI page, the documented copies of the routes and the admin API stay behind
BentoML's app.

The wrapper sits on the hot path: a request costs one header scan (``Host``, ``traceparent``) and
one path match; other routes' error answers are buffered (at most ``ERROR_BODY_MAX``). uvicorn's
proxy-headers middleware (``X-Forwarded-For``/``-Proto`` from trusted proxies into the client
address and scheme) wraps BentoML's app only: ``services.worker`` moves it there from the outside
of the edge, and the hot paths, which read neither, skip it.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

import orjson
from _bentoml_sdk import Service
from starlette.middleware import Middleware
from starlette.routing import Mount, compile_path

from services.errors import clip

log = logging.getLogger("podium.edge")

Scope = dict[str, Any]
UNMATCHED = "/{unmatched}"  # the one metric label value of every path no route serves
ERROR_BODY_MAX = 64 * 1024  # a longer non-JSON error body is cut: it is replaced anyway
ECHO_MAX = 200  # characters of a client's path echoed in an error message
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
PATH_KEY = "podium.path"  # the real path while BentoML's metrics middleware sees the template
TRACEPARENT = b"traceparent"
TRACEPARENT_MAX = 128  # a W3C traceparent is 55 characters; a longer value is not echoed


def _json_start(status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None,
                close: bool = False) -> dict[str, Any]:
    out = [(k, v) for k, v in headers or () if k.lower() not in (b"content-type", b"content-length")]
    out += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if close:
        out.append((b"connection", b"close"))
    return {"type": "http.response.start", "status": status, "headers": out}


async def send_json_error(send: Any, status: int, message: str, close: bool = False,
                          headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = orjson.dumps({"error": message})
    await send(_json_start(status, body, headers, close))
    await send({"type": "http.response.body", "body": body, "more_body": False})


def _echo(scope: Scope) -> str:
    return clip(scope.get(PATH_KEY) or scope["path"], ECHO_MAX)


def no_route_message(scope: Scope) -> str:
    """A 404's message (the edge's for the framework's, the hot app's own)."""
    return f"no route for {scope['method']} {_echo(scope)}"


def not_allowed_message(scope: Scope, allow: str) -> str:
    """A 405's message, naming the methods the route takes."""
    return f"method {scope['method']} is not allowed on {_echo(scope)}" + (
        f"; allowed: {allow}" if allow else "")


class _Reply:
    """One request's ``send``: passes a success through; turns an error answer whose body is not
    ``{"error": ...}`` JSON (the framework's plain-text 404/405/500, FastAPI's ``{"detail": ...}``)
    into one. ``started``: whether an answer has gone downstream."""

    __slots__ = ("scope", "send", "trace", "start", "buffer", "started")

    def __init__(self, scope: Scope, send: Any, trace: bytes | None) -> None:
        self.scope, self.send, self.trace = scope, send, trace
        self.start: dict[str, Any] | None = None
        self.buffer: bytearray | None = None
        self.started = False

    async def __call__(self, message: dict[str, Any]) -> None:
        if self.buffer is None:
            if message["type"] == "http.response.start":
                if self.trace is not None:
                    message = {**message, "headers": [*message.get("headers", ()),
                                                      (TRACEPARENT, self.trace)]}
                if message["status"] >= 400:
                    self.start, self.buffer = message, bytearray()
                    return
                self.started = True
            await self.send(message)
            return
        body = message.get("body", b"")
        if not self.buffer and body.startswith(b'{"error"'):  # Podium's shape: stream it as it is
            await self._forward(body, message.get("more_body", False))
            return
        if len(self.buffer) < ERROR_BODY_MAX:
            self.buffer += body[:ERROR_BODY_MAX - len(self.buffer)]
        if message.get("more_body", False):
            return
        payload = _json_object(self.buffer)
        if payload is not None and "error" in payload:  # JSON with "error" in another place
            await self._forward(bytes(self.buffer), False)
            return
        self.started = True
        headers = list(self.start.get("headers", ()))
        await send_json_error(self.send, self.start["status"],
                              self._message(self.start["status"], headers, payload), headers=headers)

    async def _forward(self, body: bytes, more_body: bool) -> None:
        start, self.buffer, self.started = self.start, None, True
        await self.send(start)
        await self.send({"type": "http.response.body", "body": body, "more_body": more_body})

    def _message(self, status: int, headers: list[tuple[bytes, bytes]],
                 payload: dict[str, Any] | None) -> str:
        if status == 405:  # Starlette's and FastAPI's alike: name the methods the route takes
            allow = next((v.decode("latin-1") for k, v in headers if k.lower() == b"allow"), "")
            return not_allowed_message(self.scope, allow)
        if payload is not None and "detail" in payload:  # FastAPI's shape
            return str(payload["detail"])
        if status == 404:
            return no_route_message(self.scope)
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = f"HTTP {status}"
        text = bytes(self.buffer).decode("utf-8", "replace").strip()
        return text if text and text != phrase and payload is None else phrase.lower()


def _json_object(body: bytearray) -> dict[str, Any] | None:
    if not body.startswith(b"{"):
        return None
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return payload if isinstance(payload, dict) else None


def _scan(headers: list[tuple[bytes, bytes]]) -> tuple[bool, bytes | None]:
    """Whether ``Host`` was sent, and the ``traceparent`` to echo (the last one sent of at most
    ``TRACEPARENT_MAX`` bytes): one ``dict`` built in C, where a Python loop over the headers
    cost ~70 bytecodes a request (issue 15)."""
    last = dict(headers)  # each name's last value
    trace = last.get(TRACEPARENT)
    if trace is not None and len(trace) > TRACEPARENT_MAX:  # rare: an earlier short one counts
        trace = next((v for n, v in reversed(headers)
                      if n == TRACEPARENT and len(v) <= TRACEPARENT_MAX), None)
    return b"host" in last, trace


class _Flags:
    """The drain flag and request count of an ``Edge`` given no data plane (tests of the wrapper
    alone)."""

    draining = False
    inflight = 0

    def settle(self) -> None:
        pass


def hot_matcher(app: Any) -> Callable[[str], Any]:
    """One compiled match for every path template of ``app``'s routes (``{name}`` → one
    segment): whether a path is the hot app's, without asking its router."""
    templates = sorted(set(_templates(getattr(app, "routes", ()))))
    if not templates:
        raise ValueError("the hot app names no routes: nothing to dispatch to it")
    parts = [re.sub(r"\\\{[^}]*\\\}", "[^/]+", re.escape(t)) for t in templates]
    return re.compile(f"(?:{'|'.join(parts)})\\Z").match


class Edge:
    """The ASGI app uvicorn runs in a worker: ``app`` (BentoML's) behind the rules above, and the
    paths of ``hot`` (the data plane's ASGI app, if given) sent straight to it.

    ``plane`` holds the one drain flag (``draining``: set by ``services.worker`` on SIGTERM) and
    the count of HTTP requests inside either app now (``inflight``: read by the worker's drain,
    and by the batcher, which runs a request alone in the worker without a thread hand-off)."""

    def __init__(self, app: Any, on_startup: Any = None, hot: Any = None, plane: Any = None) -> None:
        self.app = app
        self.on_startup = on_startup
        self.hot = hot
        # The hot app's own cached match when it has one (routes.HotApp), else its routes' regex.
        self.is_hot = (getattr(hot, "match", None) or hot_matcher(hot)) if hot is not None else None
        self.plane = plane if plane is not None else _Flags()

    @property
    def draining(self) -> bool:
        return self.plane.draining

    @draining.setter
    def draining(self, value: bool) -> None:
        self.plane.draining = value

    @property
    def inflight(self) -> int:
        return self.plane.inflight

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan" and self.on_startup is not None:
                send = self._lifespan_send(send)
            await self.app(scope, receive, send)
            return
        # HTTP, inline: one coroutine per request is this wrapper's whole cost on the hot path.
        host, trace = _scan(scope["headers"])
        if not host and scope["http_version"] == "1.1":
            await send_json_error(send, 400, "an HTTP/1.1 request must send a Host header", close=True)
            return
        method = scope["method"]
        if method not in SAFE_METHODS and self.plane.draining:
            await send_json_error(send, 503, "the server is shutting down; retry on another replica",
                                  close=True)
            return
        if method == "HEAD":  # the app answers GET; uvicorn sends no body for the HEAD it parsed
            scope = {**scope, "method": "GET"}
        if self.is_hot is not None and self.is_hot(scope["path"]):
            # The hot app's answers are JSON already, errors included: no reply wrapper unless a
            # traceparent is to be echoed.
            app, reply = self.hot, send if trace is None else _Reply(scope, send, trace)
        else:
            app, reply = self.app, _Reply(scope, send, trace)
        plane = self.plane
        plane.inflight += 1
        try:
            await app(scope, receive, reply)
        except Exception:
            if reply is not send and reply.started:
                raise
            log.exception("unhandled error answering %s %s%s", method, _echo(scope),
                          f" (traceparent {trace.decode('latin-1')})" if trace else "")
            # RuntimeError: the hot app's answer had begun; uvicorn closes the connection.
            with contextlib.suppress(RuntimeError):
                await send_json_error(send, 500, "internal server error",
                                      headers=[(TRACEPARENT, trace)] if trace else None)
        finally:
            plane.inflight -= 1
            if not plane.inflight:  # idle: deferred metrics are written now (services.metrics)
                plane.settle()

    def _lifespan_send(self, send: Any) -> Any:
        async def lifespan_send(message: dict[str, Any]) -> None:
            if message["type"] == "lifespan.startup.complete":
                # After uvicorn installed its signal handlers and before it accepts connections.
                self.on_startup(self)
            await send(message)
        return lifespan_send


# -- route templates for BentoML's request metrics ------------------------------------------------
def _templates(routes: list[Any], prefix: str = "") -> list[str]:
    found = []
    for route in routes:
        included = getattr(route, "original_router", None)  # FastAPI's lazily included router
        if included is not None:
            context = getattr(route, "include_context", None)
            found += _templates(included.routes, prefix + getattr(context, "prefix", ""))
            continue
        path = prefix + getattr(route, "path", "")
        if isinstance(route, Mount):
            inner = route.routes
            found += _templates(inner, path) if inner else [path + "/{path:path}"]
        elif path:
            found.append(path)
    return found


class RouteTemplates:
    """The template of the route that serves a path, or ``UNMATCHED``: a bounded label value."""

    SEEN_MAX = 4096  # concrete paths remembered (one dict lookup on the hot path after the first)

    def __init__(self, routes: list[Any]) -> None:
        templates = sorted(set(_templates(routes)))
        self._seen = {t: t for t in templates if "{" not in t}
        self._patterns = [(compile_path(t)[0], t) for t in templates if "{" in t]

    def __call__(self, path: str) -> str:
        found = self._seen.get(path)
        if found is not None:
            return found
        for regex, template in self._patterns:
            if regex.match(path):
                if len(self._seen) < self.SEEN_MAX:
                    self._seen[path] = template
                return template
        return UNMATCHED


class _RestorePath:
    """Inside BentoML's metrics middleware: gives the routes the real path back."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if PATH_KEY in scope:
            scope["path"] = scope.pop(PATH_KEY)
        await self.app(scope, receive, send)


class TemplatedMetrics:
    """BentoML's traffic-metrics middleware, shown the route template instead of the path: it
    reads ``scope["path"]`` once, on entry, as the ``endpoint`` label of every series."""

    def __init__(self, app: Any, *, metrics_cls: type, templates: RouteTemplates,
                 **options: Any) -> None:
        self.inner = metrics_cls(_RestorePath(app), **options)
        self.templates = templates

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket"):
            path = scope["path"]
            scope[PATH_KEY] = path
            scope["path"] = self.templates(path)
        await self.inner(scope, receive, send)


def template_metrics(app: Any) -> bool:
    """Swap BentoML's metrics middleware of ``app`` (a Starlette app not yet started) for
    ``TemplatedMetrics``; False when metrics are off."""
    from bentoml._internal.server.http.instruments import RunnerTrafficMetricsMiddleware

    templates = RouteTemplates(app.routes)
    for i, middleware in enumerate(app.user_middleware):
        if middleware.cls is RunnerTrafficMetricsMiddleware:
            app.user_middleware[i] = Middleware(TemplatedMetrics, *middleware.args,
                                                metrics_cls=middleware.cls, templates=templates,
                                                **middleware.kwargs)
            return True
    return False


# -- the service hook ---------------------------------------------------------------------------
class EdgeService(Service):
    """The Podium service: BentoML's ``Service`` whose worker app is wrapped in ``Edge``."""

    __slots__ = ()
    # Set by ``install``; class attributes: Service instances have slots.
    on_startup: Any = None
    data_plane: Any = None
    plane: Any = None

    def to_asgi(self, is_main: bool = True) -> Any:
        app = super().to_asgi(is_main)
        if not template_metrics(app):
            log.info("BentoML metrics are off: no request metrics to template")
        cls = type(self)
        return Edge(app, on_startup=cls.on_startup, plane=cls.plane,
                    hot=cls.data_plane() if cls.data_plane is not None else None)


def install(service: Service, on_startup: Any = None, data_plane: Callable[[], Any] | None = None,
            plane: Any = None) -> Service:
    """Make ``service`` (what ``@bentoml.service`` returned) serve through ``Edge``:
    ``on_startup(edge)`` runs in each worker once the service is initialised; ``data_plane()``
    (called once per worker app) returns the ASGI app that serves the hot paths — its routes'
    paths — outside BentoML's app; ``plane`` holds the drain flag."""
    attributes = {"__slots__": (), "on_startup": staticmethod(on_startup),
                  "data_plane": staticmethod(data_plane) if data_plane is not None else None,
                  "plane": plane}
    service.__class__ = type("PodiumEdgeService", (EdgeService,), attributes)
    return service
