"""A worker process's life around uvicorn, which BentoML runs in each worker: a visible drain on
SIGTERM, a watchdog that stops an orphaned worker, and time and size limits on every connection.

BentoML's worker (``_bentoml_impl.worker.service``) builds ``uvicorn.Config`` itself and offers
no way in; what it does give is the app's lifespan, which runs after uvicorn installed its signal
handlers (``uvicorn.Server.handle_exit``) and before it creates the listening servers. ``start``
runs there (``services.edge`` calls it) and finds the ``uvicorn.Server`` through that handler:

- **Drain.** uvicorn's own SIGTERM handling closes the listening socket at once, so ``/readyz``
  can only be refused, never answer 503, and a load balancer keeps sending work. Here the first
  SIGTERM/SIGINT marks the worker draining (readiness 503, new work 503 + ``Connection: close``,
  ``services.edge``), waits until the requests in flight finish or ``drain_grace_s`` passes, and
  only then lets uvicorn shut down; the worker then exits 0. A second signal stops at once.
- **Orphan watchdog.** A worker whose parent (the ``bentoml serve`` arbiter) died drains and
  exits instead of serving on unsupervised: a process-group kill of the arbiter misses the
  workers, which circus starts in their own process groups.
- **One write per answer.** uvicorn writes an answer's head when the app sends
  ``http.response.start`` and its body with the next message: two ``send`` syscalls and two TCP
  segments for every small answer, so the client wakes twice. ``CoalescingCycle`` holds the head
  and writes it with the first body chunk in one ``writelines`` (one ``writev``); a ``HEAD``
  answer, a connection closing or the end of an answer without a body flush it.
- **No access log nobody keeps.** uvicorn's access log is on whenever any logger up the tree has
  a handler (BentoML gives the root one), even with ``uvicorn.access`` below INFO: each answer
  then built the line's fields for nothing and took uvicorn's slow answer path. Here it is on
  only when ``uvicorn.access`` would keep the line.
- **Slow clients.** uvicorn has keep-alive timeouts but none for reading a request:
  ``GuardedProtocol`` gives each request ``header_timeout_s`` for its headers and
  ``body_timeout_s`` for its body (408), and ``max_header_bytes`` for its headers (431). One
  periodic sweep checks the deadlines, and uvicorn's keep-alive timeout (``timeout_keep_alive``,
  within a quarter of it): no timer per request.
- **Big bodies read at once, copied once.** uvicorn stops reading a connection whenever 64 KiB
  of body wait for the app (``HIGH_WATER_LIMIT``) and starts again when the app takes them (a
  3.2 MB ``.npy`` body of 1,024 images took 15 such rounds), and it gathers the body by growing
  one ``bytearray``, which copies what it holds each time it grows. A body whose declared
  ``Content-Length`` is within ``max_request_bytes`` is read without pausing — the data plane
  buffers that much of it anyway (``services.http.read_body``) — and its reads are kept as a
  list (``_Chunks``), joined once and handed to the app as one message when the body is complete;
  once it is read that way, its further reads bypass the HTTP parser (which copied each read
  again) and a fresh parser takes the next request; with ``IN_PLACE_MIN_BYTES`` or more still to
  come, the event loop reads them straight into one buffer of the body's size (``_BodyInPlace``,
  counted against ``body_in_place_bytes``). A longer or undeclared (chunked) body keeps uvicorn's
  pauses and its parser.
- **Balanced accept.** BentoML's workers all accept on one socket the arbiter bound; whichever
  worker wakes first takes every connection waiting, and a client opening 64 keep-alive
  connections at once could find all 64 on one worker while the other idled (seen in 1 of 4 runs
  here). With ``balance_connections`` each worker, once serving, opens its own ``SO_REUSEPORT``
  listener on the same address, stops listening on the shared socket and takes that socket out of
  the port's group (``shutdown``): the kernel then hashes each new connection to one worker.
  A worker restarted later re-listens on the shared socket for a moment and does the same.
- **Strict start-up.** A worker that cannot load a version under ``strict`` leaves why in a file
  the server process named and stops the server, which then exits 1 with that one line
  (BentoML's arbiter itself exits 0 once stopped, and circus would restart the worker forever).
"""

from __future__ import annotations

import asyncio
import atexit
import errno
import logging
import os
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httptools
import orjson
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware
from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT
from uvicorn.protocols.http.httptools_impl import (
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)

from services import memory
from services.config import ServeConfig

log = logging.getLogger("podium.worker")

NOSNIFF = (b"x-content-type-options", b"nosniff")
IN_PLACE_MIN_BYTES = 256 * 1024  # a body with less still to come is kept as its reads
LINGER_S = 2.0  # after refusing a request, keep reading (and dropping) so the client sees why
DRAIN_POLL_S = 0.05
SHUTDOWN_CANCEL_S = 1.0  # once drained, what uvicorn may still wait before cancelling tasks


class _HeldHead:
    """A request's transport as its ``CoalescingCycle`` sees it: while ``holding``, a write (the
    answer's head) is kept; the next write sends it and that data in one call. Everything else
    is the connection's own transport."""

    __slots__ = ("transport", "head", "holding")

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.head: bytes | None = None
        self.holding = False

    def write(self, data: bytes) -> None:
        if self.holding:
            self.head = data
        elif self.head is not None:
            head, self.head = self.head, None
            self.transport.writelines((head, data))
        else:
            self.transport.write(data)

    def flush(self) -> None:
        if self.head is not None:
            head, self.head = self.head, None
            if not self.transport.is_closing():
                self.transport.write(head)

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def __getattr__(self, name: str) -> Any:  # is_closing, get_extra_info, ...: the transport's
        return getattr(self.transport, name)


class _Chunks:
    """A request body's reads not yet taken by the app, for uvicorn's cycle (its ``body``): kept
    as a list and joined once when the app takes them (``bytes()``, in uvicorn's ``receive``),
    where uvicorn's ``bytearray`` copied what it held each time it grew."""

    __slots__ = ("parts", "size")

    def __init__(self, first: bytes | bytearray) -> None:
        self.parts: list[bytes] = [bytes(first)] if first else []
        self.size = len(first)

    def __iadd__(self, data: bytes) -> _Chunks:
        self.parts.append(data)
        self.size += len(data)
        return self

    def __len__(self) -> int:
        return self.size

    def __bytes__(self) -> bytes:
        whole = self.whole()
        return whole if type(whole) is bytes else bytes(whole)

    def whole(self) -> bytes | bytearray:
        """The body as one object: a lone part itself — a body read in place
        (``_BodyInPlace``) is its ``bytearray`` — else the parts joined once."""
        parts = self.parts
        return parts[0] if len(parts) == 1 else b"".join(parts)


class _BodyInPlace(asyncio.BufferedProtocol):
    """The rest of a big declared body, read by the event loop straight into the body's own
    buffer (uvloop reads into ``get_buffer``'s memory: no ``bytes`` per read, no join after),
    standing in for the connection's ``GuardedProtocol`` until the body is complete. The buffer
    ends where the declared body ends, so no byte of a following request lands in it: what is
    still to come (the owner's ``body_left``) is its end."""

    def __init__(self, owner: GuardedProtocol, buffer: bytearray) -> None:
        self.owner, self.buffer = owner, buffer
        self.view = memoryview(buffer)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.view[len(self.buffer) - self.owner.body_left:]

    def buffer_updated(self, nbytes: int) -> None:
        self.owner.body_arrived(nbytes)

    def eof_received(self) -> bool | None:
        return self.owner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.owner.pause_writing()

    def resume_writing(self) -> None:
        self.owner.resume_writing()


class CoalescingCycle(RequestResponseCycle):
    """uvicorn's request/response cycle, writing an answer's head with its first body chunk."""

    transport: _HeldHead
    # uvicorn's default headers (a list it replaces once a second) and the 200 status line with
    # them encoded: the same bytes for every answer of that second (event-loop thread only).
    _head_200: tuple[Any, bytes] = (None, b"")

    def answer_whole(self, headers: list[tuple[bytes, bytes]], body: bytes) -> bool:
        """A whole 200 answer of the hot app (``services.http``) written at once: ``headers``
        Podium's own (lowercase, valid, a ``content-length`` among them), so none of uvicorn's
        per-header checks and two ``send`` calls; what uvicorn's ``send`` does at the end of an
        answer is done here. False, nothing written: uvicorn's path must take it (an answer
        already begun, a client gone, a full write buffer to wait for, an access log to write,
        a ``HEAD``)."""
        if (self.response_started or self.disconnected or self.flow.write_paused
                or self.access_log or self.scope["method"] == "HEAD"):
            return False
        self.response_started = True
        self.waiting_for_100_continue = False
        defaults, head = CoalescingCycle._head_200
        if defaults is not self.default_headers:  # uvicorn's new list: a new ``date``, once a second
            defaults = self.default_headers
            head = STATUS_LINE[200] + b"".join(b"%s: %s\r\n" % pair for pair in defaults)
            CoalescingCycle._head_200 = (defaults, head)
        content = [head]
        for name, value in headers:
            content += (name, b": ", value, b"\r\n")
        if not self.keep_alive:
            content.append(b"connection: close\r\n")
        content += (b"\r\n", body)
        self.transport.write(b"".join(content))
        self.expected_content_length, self.chunked_encoding = 0, False
        self.response_complete = True
        self.message_event.set()
        if not self.keep_alive:
            self.transport.close()
        self.on_response()
        return True

    async def receive(self) -> Any:
        """uvicorn's ``receive``, but a body read whole (``_Chunks``: declared within
        ``max_request_bytes``) goes to the app as one message once it is complete, joined once,
        instead of as whatever had arrived at each call (which the app then joined again). A
        body timeout or a disconnect still ends the wait (``disconnected``)."""
        body = self.body
        if type(body) is _Chunks and not self.waiting_for_100_continue:
            while self.more_body and not (self.disconnected or self.response_complete):
                await self.message_event.wait()
                self.message_event.clear()
            if not (self.disconnected or self.response_complete):
                # without uvicorn's ``bytes()`` of the body (a copy of a body read in place)
                return self._last_message(body.whole())
        elif not (self.more_body or self.waiting_for_100_continue or self.disconnected
                  or self.response_complete) and len(body) <= HIGH_WATER_LIMIT \
                and self.message_event.is_set():
            # A small body already complete (the usual JSON request), not yet taken (the event
            # set): without uvicorn's wait on the set event and its resuming of reads, which only
            # a body past its 64 KiB pause needs (that one is a ``_Chunks`` or took uvicorn's
            # path). Asked again, uvicorn's path waits for the disconnect.
            return self._last_message(body)
        return await super().receive()

    def _last_message(self, body: bytes | bytearray) -> dict[str, Any]:
        """uvicorn's last ``http.request`` message of a complete body; the event is left clear
        and the body taken, as uvicorn leaves them."""
        self.message_event.clear()
        self.body = b""
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(self, message: Any) -> None:
        held = self.transport
        if message["type"] == "http.response.start" and not self.response_started:
            held.holding = True
            try:
                await super().send(message)
            finally:
                held.holding = False
            return
        await super().send(message)
        if self.response_complete:  # an answer without a body (HEAD, 204) has its head still held
            held.flush()


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with per-request header/body deadlines and a header size cap.

    A request is in its header phase from its first byte (for a new connection: from the connect)
    until its headers are parsed, then in its body phase until its body is complete.
    """

    header_timeout_s = 10.0
    body_timeout_s = 60.0
    max_header_bytes = 64 * 1024
    whole_body_bytes = 8 * 1024 * 1024  # max_request_bytes: a declared body up to it is read unpaused
    in_place_bytes = 32 * 1024 * 1024  # body_in_place_bytes: what bodies read in place may hold
    in_place_held = 0  # ... and hold now, in this worker (the event loop's thread alone counts)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if self.access_log and not self.access_logger.isEnabledFor(logging.INFO):
            # uvicorn turns its access log on whenever any handler is installed up the logger
            # tree (BentoML's), and then formats each line's fields per answer and takes the
            # slow answer path (``answer_whole`` declines) even though the line is dropped.
            self.access_log = False
        self.refused = False
        self.in_headers = True
        self.header_bytes = 0
        self.body_seen = 0  # body bytes of the current request the parser has passed on
        self.body_left = 0  # body bytes still to come past the parser (``_past_parser``)
        self.in_place: _BodyInPlace | None = None  # reading the body in place (``_read_in_place``)
        self.deadline: float | None = self.loop.time() + self.header_timeout_s
        self.idle_deadline: float | None = None  # kept alive, idle, until then (``on_response_complete``)

    def data_received(self, data: bytes) -> None:
        if self.refused:  # lingering after a refusal: drop what the client still sends
            return
        if self.body_left:
            self._past_parser(data)
            return
        super().data_received(data)
        if self.in_headers:
            if self.refused:
                return
            # Counted per read (≤ 256 KiB), after parsing: a read that completes the headers is
            # not counted, so the cap holds to within one read.
            self.header_bytes += len(data)
            if self.header_bytes > self.max_header_bytes:
                self.refuse(431, f"request headers exceed {self.max_header_bytes} bytes "
                                 f"(max_header_bytes)")
        elif self.deadline is not None and not self.refused:  # a body still to come
            self._read_rest_past_parser()

    def _read_rest_past_parser(self) -> None:
        """After a read that left the current request's body incomplete: if the body is
        declared (``Content-Length``, not chunked) within ``whole_body_bytes``, it goes to the
        app whole (``_Chunks``) and the rest of it bypasses the parser — read in place
        (``_BodyInPlace``) when at least ``IN_PLACE_MIN_BYTES`` are still to come and
        ``in_place_bytes`` allows, else kept read by read (``_past_parser``). httptools hands
        each body read to ``on_body`` as a new copy: 3.2 MB of ``.npy`` body cost 0.5–2 ms of
        event-loop time that way (issue 15)."""
        cycle = self.cycle
        if cycle is None or not cycle.more_body or cycle.response_complete:
            return
        declared = self._declared_length()  # None when chunked: httptools refuses both
        if declared is None or declared <= self.body_seen:
            return
        if type(cycle.body) is not _Chunks:  # under 64 KiB so far (``on_body``)
            if self.parser.should_upgrade() and self._should_upgrade():
                return
            cycle.body = _Chunks(cycle.body)
        self.body_left = declared - self.body_seen
        if self.body_left >= IN_PLACE_MIN_BYTES and hasattr(self.transport, "set_protocol"):
            self._read_in_place(cycle.body)

    def _read_in_place(self, chunks: _Chunks) -> None:
        """Read the rest of the body into one buffer (``_BodyInPlace``) of what the app has still
        to take — its reads so far, copied in first, and what is to come — counted in
        ``in_place_bytes`` until the body is complete or the connection is done with it."""
        size = len(chunks) + self.body_left
        if GuardedProtocol.in_place_held + size > self.in_place_bytes:
            return  # kept read by read
        buffer = bytearray(size)
        filled = 0
        for part in chunks.parts:
            buffer[filled:filled + len(part)] = part
            filled += len(part)
        chunks.parts, chunks.size = [buffer], size  # complete once the rest is in place
        GuardedProtocol.in_place_held += size
        self.in_place = _BodyInPlace(self, buffer)
        self.transport.set_protocol(self.in_place)

    def _leave_in_place(self) -> None:
        """The body read in place is complete, or the connection is refused or lost: this
        protocol reads again, and the buffer no longer counts against ``in_place_bytes``."""
        reader, self.in_place = self.in_place, None
        GuardedProtocol.in_place_held -= len(reader.buffer)
        if not self.transport.is_closing():
            self.transport.set_protocol(self)

    def body_arrived(self, nbytes: int) -> None:
        """``nbytes`` more of a body read in place (``_BodyInPlace``)."""
        self._unset_keepalive_if_required()  # as uvicorn's data_received (an early answer arms it)
        self.body_seen += nbytes
        self.body_left -= nbytes
        if self.body_left:
            return
        self._leave_in_place()
        self._end_past_parser()

    def _end_past_parser(self) -> None:
        """A body read past the parser is complete: the request ends as the parser would have
        ended it, and a fresh parser takes what follows (a pipelined request). The parser given
        up expected the body still: it is not used again."""
        self.parser = httptools.HttpRequestParser(self)
        self.on_message_complete()

    def _past_parser(self, data: bytes) -> None:
        """Body bytes of a declared body, appended as they came (``_end_past_parser`` once it is
        complete)."""
        self._unset_keepalive_if_required()  # as uvicorn's data_received (an early answer arms it)
        left = self.body_left
        rest = b""
        if len(data) > left:
            data, rest = data[:left], data[left:]
        self.body_left = left - len(data)
        self.body_seen += len(data)
        cycle = self.cycle
        if not cycle.response_complete:  # answered already (an early error): dropped, as on_body
            cycle.body += data
            cycle.message_event.set()
        if self.body_left:
            return
        self._end_past_parser()
        if rest:
            self.data_received(rest)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if not self.in_headers:  # the next request on a kept-alive connection
            self.in_headers = True
            self.header_bytes = 0
            self.deadline = self.loop.time() + self.header_timeout_s

    def on_headers_complete(self) -> None:
        self.in_headers = False
        self.body_seen = 0
        self.deadline = self.loop.time() + self.body_timeout_s
        super().on_headers_complete()
        cycle = self.cycle  # just made by uvicorn; its task has not run yet
        if cycle is not None and type(cycle) is RequestResponseCycle:
            cycle.__class__ = CoalescingCycle
            cycle.transport = _HeldHead(cycle.transport)

    def on_body(self, body: bytes) -> None:
        self.body_seen += len(body)
        cycle = self.cycle
        if len(cycle.body) + len(body) > HIGH_WATER_LIMIT and self._declared_length() is not None \
                and not cycle.response_complete \
                and not (self.parser.should_upgrade() and self._should_upgrade()):
            if type(cycle.body) is not _Chunks:  # uvicorn's on_body without its pause, and
                cycle.body = _Chunks(cycle.body)  # without growing a bytearray (module docstring)
            cycle.body += body
            cycle.message_event.set()
            return
        super().on_body(body)

    def _declared_length(self) -> int | None:
        """The ``Content-Length`` this request declared if it is at most ``whole_body_bytes``,
        else None (asked only once a body is past uvicorn's pause threshold or longer than one
        read: small bodies never scan)."""
        for name, value in self.headers:
            if name == b"content-length":
                return int(value) if value.isdigit() and int(value) <= self.whole_body_bytes else None
        return None

    def on_message_complete(self) -> None:
        self.deadline = None
        super().on_message_complete()

    def on_response_complete(self) -> None:
        """uvicorn's, but an idle kept-alive connection gets a deadline the periodic sweep checks
        (``check``) instead of a timer of its own: uvicorn started one after every answer and
        cancelled it at the next request's first read, ~2 µs of event-loop time a request."""
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self._unset_keepalive_if_required()
        self.flow.resume_reading()
        if self.pipeline:  # a pipelined request waits: it starts now
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
        else:
            self.idle_deadline = self.loop.time() + self.timeout_keep_alive

    def _unset_keepalive_if_required(self) -> None:
        self.idle_deadline = None  # a read, an answer or the end: not idle
        super()._unset_keepalive_if_required()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.in_place is not None:
            self._leave_in_place()
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        self.refuse(400, f"invalid HTTP request: {msg}")

    def check(self, now: float) -> None:
        """Refuse the request whose header or body deadline has passed, close a kept-alive
        connection idle past ``timeout_keep_alive`` (the periodic sweep)."""
        if self.idle_deadline is not None and now >= self.idle_deadline:
            self.idle_deadline = None
            self.timeout_keep_alive_handler()
            return
        if self.deadline is None or now < self.deadline or self.refused:
            return
        if self.in_headers:
            self.refuse(408, f"request headers not received within {self.header_timeout_s:g} s "
                             f"(header_timeout_s)")
            return
        cycle = self.cycle
        if cycle is not None and cycle.response_started:
            self.transport.close()
            return
        if cycle is not None:  # the app reading the body sees a disconnect
            cycle.disconnected = True
            cycle.message_event.set()
        self.refuse(408, f"request body not received within {self.body_timeout_s:g} s "
                         f"(body_timeout_s)")

    def refuse(self, status: int, message: str) -> None:
        """Answer ``status`` with a JSON error, then close: the write side at once, the
        connection after ``LINGER_S`` (closing with unread input would reset the connection
        and the client might never read the answer)."""
        self.refused = True
        self.deadline = None
        if self.in_place is not None:
            self._leave_in_place()  # what the client still sends is dropped here
        body = orjson.dumps({"error": message})
        head = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head += [b"content-type: application/json\r\ncontent-length: ", str(len(body)).encode(),
                 b"\r\nconnection: close\r\n\r\n", body]
        transport = self.transport
        if transport.is_closing():
            return
        transport.write(b"".join(head))
        if transport.can_write_eof():
            transport.write_eof()
        self.loop.call_later(LINGER_S, transport.close)


def configure_protocol(config: ServeConfig) -> None:
    GuardedProtocol.header_timeout_s = config.header_timeout_s
    GuardedProtocol.body_timeout_s = config.body_timeout_s
    GuardedProtocol.max_header_bytes = config.max_header_bytes
    GuardedProtocol.whole_body_bytes = config.max_request_bytes
    GuardedProtocol.in_place_bytes = config.body_in_place_bytes


def proxy_headers_inside(uv: Any, edge: Any) -> bool:
    """Move uvicorn's proxy-headers middleware from around ``edge`` to around the app behind it
    (BentoML's): the hot paths read neither the client address nor the scheme it rewrites.
    ``uv.loaded_app`` is read by each connection's protocol when it is made, so this runs before
    any is (at lifespan start-up). False when the edge is not wrapped that way."""
    outer = uv.loaded_app
    if not (isinstance(outer, ProxyHeadersMiddleware) and outer.app is edge):
        return False
    outer.app, edge.app = edge.app, outer
    uv.loaded_app = edge
    return True


def uvicorn_server() -> Any:
    """The ``uvicorn.Server`` running this process, through the SIGTERM handler it installed
    (its bound ``handle_exit``); None when there is none (not under uvicorn, not the main
    thread)."""
    handler = signal.getsignal(signal.SIGTERM)
    server = getattr(handler, "__self__", None)
    if server is not None and hasattr(server, "should_exit") and hasattr(server, "server_state"):
        return server
    return None


class Lifecycle:
    """Drain, orphan watchdog and connection sweep for one worker's ``Edge``."""

    def __init__(self, config: ServeConfig, edge: Any, server: Any) -> None:
        self.config, self.edge, self.server = config, edge, server
        self.loop = asyncio.get_running_loop()
        self.parent = os.getppid()
        self.tasks: set[asyncio.Task] = set()
        self.metrics: Any = None  # deferred Prometheus observations (``defer_metrics``)

    def start(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self.on_signal)
        self._spawn(self.watch())

    def _spawn(self, coro: Any) -> None:
        task = self.loop.create_task(coro)
        self.tasks.add(task)  # a strong reference: the loop keeps only weak ones
        task.add_done_callback(self.tasks.discard)

    def on_signal(self, sig: int, frame: Any) -> None:
        if self.edge.draining:  # a second signal: uvicorn's own handling, at once
            self.server.handle_exit(sig, frame)
            return
        self.loop.call_soon_threadsafe(self.begin_drain, signal.Signals(sig).name)

    def begin_drain(self, reason: str) -> None:
        if self.edge.draining:
            return
        self.edge.draining = True  # the data plane's flag: readiness reads it too
        log.warning("draining (%s): readiness 503, new work refused; %d request(s) in flight, "
                    "grace %g s (drain_grace_s)", reason, self.edge.inflight, self.config.drain_grace_s)
        self._spawn(self.drain())

    async def drain(self) -> None:
        started = time.monotonic()
        deadline = started + self.config.drain_grace_s
        while self.edge.inflight and time.monotonic() < deadline:
            await asyncio.sleep(DRAIN_POLL_S)
        if self.edge.inflight:
            log.error("drain grace period over: cancelling %d request(s)", self.edge.inflight)
        else:
            log.info("drained in %.2f s; stopping", time.monotonic() - started)
        if self.metrics is not None:
            self.edge.plane.settle()  # what this worker observed last reaches /metrics before it exits
        self.server.config.timeout_graceful_shutdown = SHUTDOWN_CANCEL_S
        self.server.should_exit = True  # not handle_exit: that would re-raise SIGTERM at exit

    def defer_metrics(self, metrics: Any) -> None:
        """Keep ``metrics``' observations until the worker is idle (the edge flushes then) or
        ``metrics_flush_ms`` has passed (``services.metrics``)."""
        metrics.defer()
        self.metrics = metrics
        self._spawn(self.flush_metrics(self.config.metrics_flush_ms / 1000))

    async def flush_metrics(self, every_s: float) -> None:
        while True:
            await asyncio.sleep(every_s)
            self.edge.plane.settle()  # the metrics, and the rollout outcomes recorded (under load)

    async def watch(self) -> None:
        cfg = self.config
        keep_alive = getattr(self.server.config, "timeout_keep_alive", None) or 5
        tick = max(0.05, min(1.0, cfg.header_timeout_s / 4, cfg.body_timeout_s / 4, keep_alive / 4))
        while True:
            await asyncio.sleep(tick)
            now = self.loop.time()
            for connection in list(self.server.server_state.connections):
                if isinstance(connection, GuardedProtocol):
                    connection.check(now)
            if os.getppid() != self.parent:
                self.begin_drain("the parent process exited")


async def balance(server: Any, backlog: int) -> None:
    """This worker's own ``SO_REUSEPORT`` listener on the shared socket's address, serving what
    uvicorn serves; then the shared socket leaves the port (see the module docstring)."""
    while not server.started:  # uvicorn creates its listeners after the lifespan start-up
        if server.should_exit:
            return
        await asyncio.sleep(0.01)
    uv, loop = server.config, asyncio.get_running_loop()
    listening = [sock for listener in server.servers for sock in listener.sockets]
    if len(listening) != 1 or not hasattr(socket, "SO_REUSEPORT"):
        return  # BentoML hands its worker one socket (``--fd``); anything else is left alone
    shared = socket.socket(fileno=os.dup(listening[0].fileno()))
    try:
        if shared.family not in (socket.AF_INET, socket.AF_INET6) or shared.type != socket.SOCK_STREAM:
            return
        shared.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # the group admits its port
        own = socket.socket(shared.family, socket.SOCK_STREAM)
        own.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        own.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if shared.family == socket.AF_INET6:  # dual-stack or not, as the shared socket is
            own.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY,
                           shared.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY))
        own.bind(shared.getsockname())
        own.listen(backlog)
        own.setblocking(False)

        def create_protocol(_loop: Any = None) -> asyncio.Protocol:  # what uvicorn's startup makes
            return uv.http_protocol_class(config=uv, server_state=server.server_state,
                                          app_state=server.lifespan.state, _loop=_loop)

        mine = await loop.create_server(create_protocol, sock=own, ssl=uv.ssl, backlog=backlog)
        for listener in server.servers:  # stop polling the shared socket, then take it out
            listener.close()
        server.servers = [mine]
        try:
            shared.shutdown(socket.SHUT_RDWR)
        except OSError as exc:  # ENOTCONN: another worker took it out first
            if exc.errno != errno.ENOTCONN:
                raise
        log.info("accepting on this worker's own SO_REUSEPORT listener (balance_connections)")
    except OSError as exc:
        log.warning("connections not balanced over workers (balance_connections): %s", exc)
    finally:
        shared.close()


def start(config: ServeConfig, edge: Any) -> Lifecycle | None:
    """Called once per worker at lifespan start-up (``services.edge``)."""
    memory.keep_heap(config.heap_keep_bytes)  # issue 15 (.npy batches): services.memory
    server = uvicorn_server()
    if server is None:
        log.warning("no uvicorn server found: no drain on SIGTERM, no slow-client limits")
        return None
    uv = server.config
    if issubclass(GuardedProtocol, uv.http_protocol_class):
        configure_protocol(config)
        uv.http_protocol_class = GuardedProtocol  # read per connection: none is open yet
    else:
        log.warning("uvicorn runs %s, not httptools: no slow-client limits",
                    uv.http_protocol_class.__name__)
    proxy_headers_inside(uv, edge)
    if NOSNIFF not in uv.encoded_headers:
        uv.encoded_headers.append(NOSNIFF)  # uvicorn's default headers: on every answer it sends
    lifecycle = Lifecycle(config, edge, server)
    lifecycle.start()
    metrics = getattr(edge.plane, "metrics", None)
    if config.metrics_flush_ms > 0 and metrics is not None:
        lifecycle.defer_metrics(metrics)
    if config.balance_connections:
        lifecycle._spawn(balance(server, uv.backlog))
    return lifecycle


# -- strict start-up across processes ------------------------------------------------------------
STRICT_FAILURE_ENV = "PODIUM_STRICT_FAILURE_FILE"


def watch_strict_failures() -> None:
    """In ``bentoml serve``'s own process, before it starts workers (they inherit the variable):
    exit 1 with a worker's start-up failure once the server has stopped."""
    handle, name = tempfile.mkstemp(prefix="podium-strict-")
    os.close(handle)
    os.unlink(name)  # it exists only if a worker failed
    os.environ[STRICT_FAILURE_ENV] = name
    atexit.register(_exit_if_a_worker_failed, Path(name))


def _exit_if_a_worker_failed(path: Path) -> None:
    if path.is_file():
        line = path.read_text()
        path.unlink()
        print(line, file=sys.stderr, flush=True)
        os._exit(1)


def fail_start_up(exc: Exception) -> None:
    """In a worker under ``strict``: log one line, leave it for the server process, stop it."""
    line = f"podium: strict start-up failed: {exc}"
    log.critical(line)
    if name := os.environ.get(STRICT_FAILURE_ENV):
        Path(name).write_text(line)
    os.kill(os.getppid(), signal.SIGTERM)
