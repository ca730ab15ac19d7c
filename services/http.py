"""HTTP plumbing shared by the front doors: bounded body reading, JSON responses, the one place
where Podium errors become status codes, and what a route handler is given (``Exchange``)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import orjson
from starlette.datastructures import Headers
from starlette.requests import ClientDisconnect, Request, empty_send
from starlette.responses import Response

from services.errors import InvalidInput, PayloadTooLarge, PodiumError, Unauthorized
from services.metrics import UNKNOWN

if TYPE_CHECKING:
    from services.dataplane import DataPlane
    from services.repository import LoadedVersion

log = logging.getLogger("podium.http")

MODEL_HEADER = "Podium-Model"
VERSION_HEADER = "Podium-Model-Version"
MODEL_HEADER_BYTES, VERSION_HEADER_BYTES = b"podium-model", b"podium-model-version"
_JSON_TYPE = (b"content-type", b"application/json")


class JSON(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


async def send_json(send: Any, content: Any, headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    """A 200 JSON answer as two ASGI messages (what ``JSON`` sends, without building a ``Response``)."""
    body = orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)
    await _send_200(send, body, [_JSON_TYPE, (b"content-length", b"%d" % len(body)), *headers])


async def _send_200(send: Any, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    # Straight to Podium's worker when ``send`` is its cycle's (services.worker.CoalescingCycle):
    # one write, no ASGI messages; elsewhere (tests, a wrapped send) the two messages.
    whole = getattr(getattr(send, "__self__", None), "answer_whole", None)
    if whole is not None and whole(headers, body):
        return
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# -- pre-encoded answers (issue 15: OIP binary no slower than /v1 JSON) --------------------------

class Encoded(Response):
    """A handler's pre-encoded 200 answer: its body, content type and further headers, as bytes
    (e.g. an OIP answer with binary tensors). The hot app sends it like ``send_json``: two ASGI
    messages, the version headers appended (``send``); a ``Response`` all the same, so the
    documented FastAPI copies of the routes (``routes.wrap``) answer it unchanged.

    ``Response.__init__`` is skipped on purpose: it turns a ``str`` header mapping into bytes
    pairs, and setting the version headers afterwards goes through ``MutableHeaders`` — building
    and sending an OIP answer that way took 4.5 µs of event-loop CPU, this way 1.5 µs (the fields
    ``Response`` sends are all set here).
    """

    def __init__(self, body: bytes, content_type: bytes,
                 headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
        self.status_code, self.body, self.background = 200, body, None
        self.raw_headers = [(b"content-type", content_type), (b"content-length", b"%d" % len(body)),
                            *headers]

    async def send(self, send: Any, headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
        """This answer as two ASGI messages, ``headers`` (bytes pairs) added."""
        self.raw_headers.extend(headers)
        await _send_200(send, self.body, self.raw_headers)


class HotHeaders(Headers):
    """Starlette's ``Headers`` of one request, whose lookups (``get``, ``[]``, ``in``) are one
    dict lookup: Starlette scans every header and encodes the name per lookup (~1.3 µs), and a
    request on the data plane asks three or more (content type and length, ``Accept``, the
    rollout's pins — issue 15). A repeated header answers its first value, as Starlette's."""

    def __init__(self, scope: dict[str, Any]) -> None:
        raw = scope["headers"]
        self._list = raw if isinstance(raw, list) else list(raw)
        # bytes name → its first bytes value, built in C; a value is decoded when looked up
        self._first = dict(reversed(self._list))

    def __getitem__(self, key: str) -> str:
        try:
            return self._first[key.lower().encode("latin-1")].decode("latin-1")
        except KeyError:
            raise KeyError(key) from None

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        value = self._first.get(key.lower().encode("latin-1"))
        return default if value is None else value.decode("latin-1")

    def __contains__(self, key: Any) -> bool:
        return key.lower().encode("latin-1") in self._first


class HotRequest(Request):
    """A Starlette ``Request`` with ``HotHeaders`` and a ``body`` that does not copy (the hot
    app's). Its fields are set here, without ``Request.__init__``'s chain and asserts, and its
    headers are a plain attribute (every request on the data plane reads three or more of them),
    where Starlette's property checks ``hasattr`` at each read."""

    headers: Headers = None  # type: ignore[assignment]  # a plain attribute, set per request

    def __init__(self, scope: dict[str, Any], receive: Any) -> None:
        self.scope = scope
        self._receive = receive
        self._send = empty_send
        self._stream_consumed = self._is_disconnected = False
        self._form = None
        self.headers = HotHeaders(scope)

    async def body(self) -> bytes:
        """The whole body, as Starlette's ``body`` reads it, less its copy: that one joins its
        stream's chunks, and the stream always ends with an empty chunk, so a body that came as
        one ASGI message (the usual case: ``services.worker`` hands a declared body over whole)
        was copied once more — 3.2 MB for 1,024 MNIST images, ~0.3 ms — through an async
        generator per request (issue 15). Here one message's body is the body itself."""
        if hasattr(self, "_body"):
            return self._body
        if self._stream_consumed:
            raise RuntimeError("Stream consumed")
        chunks: list[bytes] = []
        while True:
            message = await self._receive()
            kind = message["type"]
            if kind == "http.request":
                chunk = message.get("body", b"")
                if chunk:
                    chunks.append(chunk)
                if not message.get("more_body", False):
                    break
            elif kind == "http.disconnect":
                self._is_disconnected = True
                raise ClientDisconnect()
        self._stream_consumed = True
        # One chunk is the body itself — a big one read in place (``services.worker``) is a
        # ``bytearray``, which ``b"".join`` would copy.
        self._body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        return self._body


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refusing with 413 as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise InvalidInput("Content-Length is not a number", field="Content-Length") from None
        if size > limit:
            raise PayloadTooLarge(f"request body of {size} bytes exceeds the {limit}-byte limit "
                                  f"(max_request_bytes)", field="body")
        return await request.body()
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise PayloadTooLarge(f"request body exceeds the {limit}-byte limit "
                                  f"(max_request_bytes)", field="body")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_json(body: bytes) -> Any:
    if not body:
        raise InvalidInput("empty body: expected a JSON object", field="body")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"malformed JSON: {exc}", field="body") from None


def query_param(request: Request, name: str) -> str | None:
    """A query parameter; most requests have no query string, and parsing an empty one still cost
    ~3 µs per request on the hot path (issue 15)."""
    return request.query_params.get(name) if request.scope.get("query_string") else None


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def error_response(exc: Exception) -> JSON:
    if isinstance(exc, Unauthorized):
        return JSON(exc.body(), status_code=exc.status, headers={"WWW-Authenticate": "Bearer"})
    if isinstance(exc, PodiumError):
        return JSON(exc.body(), status_code=exc.status)
    log.exception("internal error")
    return JSON({"error": f"internal error: {type(exc).__name__}"}, status_code=500)


# Documented on every Podium route (OpenAPI): every 4xx/5xx body is this object.
ERROR_SCHEMA = {"type": "object", "required": ["error"], "properties": {
    "error": {"type": "string", "description": "what was wrong, naming the field"},
    "field": {"type": "string", "description": "the field, header or tensor that was wrong"}}}
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"description": what, "content": {"application/json": {"schema": ERROR_SCHEMA}}}
    for code, what in (("4XX", "the client's mistake, named"), ("5XX", "overloaded, loading or failed"))}


class Timer:
    """Records one request in the metrics: model, version, endpoint, status and latency.

    The model and version labels come only from the version that answered (``answered_by``); a
    request no loaded version answered — an unknown name or version in the URL — is counted
    under ``UNKNOWN``, so clients cannot mint new series (at most models × versions × endpoints ×
    Podium's fixed set of statuses).
    """

    def __init__(self, metrics: Any, endpoint: str) -> None:
        self.metrics, self.endpoint = metrics, endpoint
        self.model = self.version = UNKNOWN
        self.started = time.perf_counter()

    def answered_by(self, loaded: Any) -> None:
        self.model, self.version = loaded.name, loaded.version

    def done(self, status: int) -> None:
        if self.metrics is not None:
            self.metrics.observe_request(self.model, self.version, self.endpoint, status,
                                         time.perf_counter() - self.started)


class Exchange:
    """One request as a route handler sees it: the data plane, the request, and — once the
    handler has picked it — the version that answers (its name and version go in the metrics
    and in the response headers, errors included)."""

    def __init__(self, plane: DataPlane, request: Request, timer: Timer | None = None) -> None:
        self.plane, self.request, self.timer = plane, request, timer
        self.loaded: LoadedVersion | None = None

    def answered_by(self, loaded: LoadedVersion) -> LoadedVersion:
        self.loaded = loaded
        if self.timer is not None:
            self.timer.answered_by(loaded)
        return loaded

    def select(self, name: str, version: str | None) -> LoadedVersion:
        """The version that answers (the rollout's choice when the URL names none)."""
        return self.answered_by(self.plane.select(name, version, self.request.headers))

    def get(self, name: str, version: str | None) -> LoadedVersion:
        """The named version, or the stable one (metadata routes: no rollout routing)."""
        return self.answered_by(self.plane.repo().get(name, version))
