"""How a worker's connections are written to and spread (issue 15, services.worker):

- one write per answer: uvicorn's cycle holds an answer's head and sends it with the first body
  chunk (fast, in-process, against a recording transport);
- balanced accept: under a real two-worker ``bentoml serve`` each worker accepts on its own
  ``SO_REUSEPORT`` listener, the shared socket no longer listens, and a client's connections are
  spread over both workers; ``balance_connections=false`` keeps BentoML's one shared socket;
- big bodies: a declared body within the limit is read without pauses and reaches the app whole,
  its rest past the HTTP parser and, with enough still to come, read in place over a real
  uvloop socket within ``body_in_place_bytes`` (given back on completion, disconnect, timeout).
"""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

from services.launch import process_tree, serve
from services.worker import CoalescingCycle, _HeldHead


class _Transport:
    """A transport that records each call that would be one ``send``/``writev`` syscall."""

    def __init__(self) -> None:
        self.calls: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.calls.append(bytes(data))

    def writelines(self, chunks: Any) -> None:
        self.calls.append(b"".join(chunks))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


class _Flow:
    write_paused = False


def _cycle(method: str = "POST", keep_alive: bool = True) -> tuple[CoalescingCycle, _Transport]:
    transport = _Transport()
    cycle = RequestResponseCycle(
        scope={"method": method, "path": "/", "http_version": "1.1", "type": "http"},
        transport=transport, flow=_Flow(), logger=None, access_logger=None, access_log=False,
        default_headers=[], message_event=asyncio.Event(), expect_100_continue=False,
        keep_alive=keep_alive, on_response=lambda: None)
    cycle.__class__ = CoalescingCycle  # what GuardedProtocol.on_headers_complete does
    cycle.transport = _HeldHead(transport)
    return cycle, transport


def _answer(cycle: CoalescingCycle, body: bytes, chunks: int = 1) -> None:
    async def run() -> None:
        await cycle.send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]})
        step = max(1, len(body) // chunks)
        parts = [body[i:i + step] for i in range(0, len(body), step)] or [b""]
        for i, part in enumerate(parts):
            await cycle.send({"type": "http.response.body", "body": part,
                              "more_body": i < len(parts) - 1})
    asyncio.run(run())


def test_an_answer_goes_out_in_one_write_head_first() -> None:
    cycle, transport = _cycle()
    _answer(cycle, b'{"ok":true}')
    assert len(transport.calls) == 1
    head, body = transport.calls[0].split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"content-length: 11" in head
    assert body == b'{"ok":true}' and cycle.response_complete


def test_a_streamed_answer_sends_its_head_with_the_first_chunk_only() -> None:
    cycle, transport = _cycle()
    _answer(cycle, b"abcdefgh", chunks=4)
    assert len(transport.calls) == 4
    assert transport.calls[0].endswith(b"\r\n\r\nab") and transport.calls[1:] == [b"cd", b"ef", b"gh"]


def test_an_answer_without_a_body_still_sends_its_head() -> None:
    cycle, transport = _cycle(method="HEAD")  # uvicorn writes no body for HEAD
    _answer(cycle, b"12345")
    assert len(transport.calls) == 1 and transport.calls[0].endswith(b"\r\n\r\n")
    cycle, transport = _cycle(keep_alive=False)  # the connection closes after the answer
    _answer(cycle, b"")
    assert len(transport.calls) == 1 and transport.calls[0].endswith(b"\r\n\r\n")
    assert transport.closed


def test_the_hot_apps_whole_answer_is_one_write_with_uvicorns_bookkeeping() -> None:
    """``send_json`` under Podium's worker: one write of head and body, uvicorn's default headers
    first, the cycle complete; a closing connection gets ``connection: close`` and is closed."""
    from services.http import send_json

    for keep_alive in (True, False):
        cycle, transport = _cycle(keep_alive=keep_alive)
        cycle.default_headers = [(b"date", b"Mon"), (b"x-content-type-options", b"nosniff")]
        done: list[bool] = []
        cycle.on_response = lambda done=done: done.append(True)
        asyncio.run(send_json(cycle.send, {"ok": True}, [(b"podium-model", b"m")]))
        assert len(transport.calls) == 1
        head, body = transport.calls[0].split(b"\r\n\r\n", 1)
        assert body == b'{"ok":true}'
        lines = head.split(b"\r\n")
        assert lines[:6] == [b"HTTP/1.1 200 OK", b"date: Mon", b"x-content-type-options: nosniff",
                             b"content-type: application/json", b"content-length: 11",
                             b"podium-model: m"]
        assert (b"connection: close" in lines) is (not keep_alive) and transport.closed is (not keep_alive)
        assert cycle.response_complete and done == [True] and cycle.message_event.is_set()


def test_uvicorns_path_takes_what_the_whole_answer_cannot() -> None:
    from services.http import send_json

    cycle, transport = _cycle(method="HEAD")  # no body for HEAD: uvicorn's own rules
    asyncio.run(send_json(cycle.send, {"ok": True}))
    assert len(transport.calls) == 1 and transport.calls[0].endswith(b"\r\n\r\n")
    cycle, transport = _cycle()
    cycle.flow.write_paused = True  # a full write buffer: uvicorn waits for it to drain
    assert not cycle.answer_whole([], b"x") and transport.calls == []
    cycle, transport = _cycle()
    cycle.response_started = True  # an answer already begun is never begun twice
    assert not cycle.answer_whole([], b"x") and transport.calls == []


# One whole request with a 2-byte JSON body.
SMALL_POST = b"POST /p HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\n{}"


def test_an_access_log_nobody_keeps_costs_nothing() -> None:
    """uvicorn turns its access log on whenever any logger up the tree has a handler (BentoML
    gives the root one), then formats each line's fields per answer and takes the slow answer
    path even though the line is dropped: live, that was ~70 µs of server CPU a request (issue
    15). Under Podium's protocol a dropped access log is off, and one that is kept still writes
    its line."""
    import logging

    from services.http import send_json

    async def app(scope: dict, receive: Any, send: Any) -> None:
        await _read_all(receive)
        await send_json(send, {"ok": True})

    access, root = logging.getLogger("uvicorn.access"), logging.getLogger()
    kept: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = kept.append  # type: ignore[method-assign]
    level = access.level
    root.addHandler(handler)
    try:
        for enabled in (False, True):
            access.setLevel(logging.INFO if enabled else logging.WARNING)
            kept.clear()

            async def run() -> tuple[Any, _Reading]:
                protocol, transport = _connected(app)
                protocol.data_received(SMALL_POST)
                for _ in range(10):
                    await asyncio.sleep(0)
                return protocol, transport

            protocol, transport = asyncio.run(run())
            assert protocol.access_log is enabled
            lines = [r for r in kept if r.name == "uvicorn.access"]
            assert len(lines) == (1 if enabled else 0)
            assert len(transport.calls) == 1 and transport.calls[0].endswith(b'{"ok":true}')
    finally:
        root.removeHandler(handler)
        access.setLevel(level)


def test_keep_alive_is_a_deadline_the_sweep_checks_not_a_timer_per_answer() -> None:
    """After an answer an idle connection has until ``timeout_keep_alive`` (uvicorn started and
    cancelled a timer per answer): the next request's first bytes clear the deadline, and the
    sweep closes a connection idle past it, not one within it."""
    async def app(scope: dict, receive: Any, send: Any) -> None:
        await _read_all(receive)
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def run() -> None:
        protocol, transport = _connected(app)
        loop = asyncio.get_running_loop()
        for answered in (1, 2):
            protocol.data_received(SMALL_POST)
            for _ in range(10):
                await asyncio.sleep(0)
            assert len(transport.calls) == answered and protocol.timeout_keep_alive_task is None
            idle = protocol.idle_deadline
            assert idle is not None and abs(idle - loop.time() - protocol.timeout_keep_alive) < 0.5
            protocol.check(idle - 0.01)
            assert not transport.closed
        protocol.data_received(SMALL_POST[:10])  # a next request begins: not idle
        assert protocol.idle_deadline is None
        protocol.check(idle + 0.01)  # past the idle deadline, within its header deadline
        assert not transport.closed
        protocol.data_received(SMALL_POST[10:])
        for _ in range(10):
            await asyncio.sleep(0)
        protocol.check(protocol.idle_deadline + 0.01)
        assert transport.closed and len(transport.calls) == 3

    asyncio.run(run())


def test_a_small_body_is_received_once_then_the_disconnect() -> None:
    """A complete small body goes to the app at once (without uvicorn's wait and resume); asked
    again, ``receive`` waits until the client goes and then says so — it never hands the body
    over twice nor answers at once (an app listening for the disconnect would spin)."""
    got: list[Any] = []

    async def app(scope: dict, receive: Any, send: Any) -> None:
        got.append(await receive())
        try:
            await asyncio.wait_for(receive(), 0.05)
        except TimeoutError:
            got.append("waiting")
        got.append(await receive())

    async def run() -> None:
        protocol, _ = _connected(app)
        protocol.data_received(SMALL_POST)
        for _ in range(200):
            await asyncio.sleep(0.001)
            if "waiting" in got:
                break
        protocol.connection_lost(None)
        for _ in range(10):
            await asyncio.sleep(0)

    asyncio.run(run())
    assert got == [{"type": "http.request", "body": b"{}", "more_body": False}, "waiting",
                   {"type": "http.disconnect"}]


# -- balanced accept under a real two-worker server ---------------------------------------------

def _workers(running: Any) -> list[psutil.Process]:
    return [p for p in process_tree(running.proc.pid)
            if "_bentoml_impl.worker.service" in " ".join(p.cmdline())]


def _tcp(proc: psutil.Process, port: int, status: str) -> list[Any]:
    return [c for c in proc.net_connections("tcp") if c.laddr and c.laddr.port == port
            and c.status == status]


def _listeners(port: int) -> int:
    """How many sockets listen on ``port`` (a connection to each would be accepted)."""
    return sum(1 for c in psutil.net_connections("tcp")
               if c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN)


@pytest.mark.parametrize("balanced", [True, False])
def test_connections_are_spread_over_the_workers(tiny_store: Path, tmp_path: Path, balanced: bool) -> None:
    env = {"PODIUM_WORKERS": "2", "PODIUM_MODELS": "diabetes", "PODIUM_DEVICE": "cpu",
           "PODIUM_BALANCE_CONNECTIONS": json.dumps(balanced)}
    with serve(tiny_store, tmp_path, env=env) as running:
        port = int(running.url.rsplit(":", 1)[1])
        workers = _workers(running)
        assert len(workers) == 2
        if not balanced:  # BentoML's one shared socket, listening in every process
            assert _listeners(port) == 1
            return
        # Each worker opens its listener once uvicorn serves and takes the shared socket out of the
        # port: until both have, a worker may show the shared socket, both, or for a moment none
        # (seen: (1, 1) with one listener on the port, then (0, 1), then (1, 1) with two, within
        # 75 ms). Wait for the end state, then check it.
        def settled() -> bool:
            return (all(len(_tcp(w, port, psutil.CONN_LISTEN)) == 1 for w in workers)
                    and _listeners(port) == 2)

        for _ in range(100):
            if settled():
                break
            asyncio.run(asyncio.sleep(0.05))
        assert all(len(_tcp(w, port, psutil.CONN_LISTEN)) == 1 for w in workers)
        assert _listeners(port) == 2  # the workers' own: the shared socket left the port
        connections = [http.client.HTTPConnection("127.0.0.1", port, timeout=30) for _ in range(40)]
        try:
            for conn in connections:  # one request each: every connection accepted and answered
                conn.request("POST", "/v1/models/diabetes/predict", body=json.dumps(
                    {"rows": [[0.0] * 8]}), headers={"Content-Type": "application/json"})
                answer = conn.getresponse()
                assert (answer.status, bool(answer.read())) == (200, True)
            counts = [len(_tcp(w, port, psutil.CONN_ESTABLISHED)) for w in workers]
            # 40 connections hashed over 2 listeners: fewer than 5 on one has p ≈ 1e-7
            assert sum(counts) == 40 and min(counts) >= 5, counts
        finally:
            for conn in connections:
                conn.close()
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass  # still accepting after all that
        # An idle kept-alive connection is closed by the worker's sweep at uvicorn's keep-alive
        # timeout (5 s, BentoML's default), within a quarter of it — not at once, not never.
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
        try:
            conn.request("POST", "/v1/models/diabetes/predict", json.dumps({"rows": [[0.0] * 8]}),
                         {"Content-Type": "application/json"})
            answer = conn.getresponse()
            answer.read()
            assert answer.status == 200 and not answer.will_close
            idle = time.monotonic()
            assert conn.sock.recv(1) == b""  # closed by the server
            assert 4.5 <= time.monotonic() - idle <= 7.5, time.monotonic() - idle
        finally:
            conn.close()


# -- big bodies: read without uvicorn's 64 KiB pauses when declared within max_request_bytes ----
class _Reading(_Transport):
    """A connection's transport counting the pauses of reading (uvicorn's flow control)."""

    def __init__(self) -> None:
        super().__init__()
        self.pauses = 0

    def pause_reading(self) -> None:
        self.pauses += 1

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 3000), "peername": ("127.0.0.1", 5555)}.get(name, default)


def _connected(app: Any, protocol_class: Any = None) -> tuple[Any, _Reading]:
    """A real ``GuardedProtocol`` (or ``protocol_class``, a subclass) serving ``app``, connected
    on a ``_Reading`` transport (inside a running event loop)."""
    import uvicorn
    from uvicorn.server import ServerState

    from services.worker import GuardedProtocol

    config = uvicorn.Config(app=app, http="httptools", log_config=None, lifespan="off")
    config.load()
    protocol = (protocol_class or GuardedProtocol)(
        config=config, server_state=ServerState(), app_state={}, _loop=asyncio.get_running_loop())
    transport = _Reading()
    protocol.connection_made(transport)
    return protocol, transport


async def _read_all(receive: Any) -> bytes:
    """An ASGI app's reading of its whole request body, message by message."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body


def _upload(head: bytes, chunks: list[bytes], limit: int = 1 << 20) -> tuple[int, bytes]:
    """Feed one request (``head`` then ``chunks``) to a real ``GuardedProtocol`` whose app reads
    nothing until the whole request has arrived: the pauses of reading, and the body the app
    then reads."""
    from services.worker import GuardedProtocol

    got: list[bytes] = []

    async def app(scope: dict, receive: Any, send: Any) -> None:
        await arrived.wait()
        body = await _read_all(receive)
        got.append(body)
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def run() -> int:
        nonlocal arrived
        arrived = asyncio.Event()
        protocol, transport = _connected(app)
        protocol.data_received(head)
        for chunk in chunks:
            protocol.data_received(chunk)
        arrived.set()
        for _ in range(100):
            if got:
                break
            await asyncio.sleep(0.01)
        return transport.pauses

    arrived: asyncio.Event
    saved = GuardedProtocol.whole_body_bytes
    GuardedProtocol.whole_body_bytes = limit
    try:
        pauses = asyncio.run(run())
    finally:
        GuardedProtocol.whole_body_bytes = saved
    return pauses, got[0] if got else b""


BIG = bytes(range(256)) * 1200  # 300 KiB: past uvicorn's 64 KiB pause threshold
PARTS = [BIG[i:i + 50_000] for i in range(0, len(BIG), 50_000)]


def test_a_declared_body_within_the_limit_is_read_without_pausing() -> None:
    head = b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % len(BIG)
    pauses, body = _upload(head, PARTS)
    assert pauses == 0 and body == BIG


def test_a_longer_or_undeclared_body_keeps_uvicorns_pauses() -> None:
    head = b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % len(BIG)
    pauses, body = _upload(head, PARTS, limit=len(BIG) - 1)  # declared past max_request_bytes
    assert pauses > 0 and body == BIG
    chunked = [b"%x\r\n%s\r\n" % (len(p), p) for p in PARTS] + [b"0\r\n\r\n"]
    head = b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    pauses, body = _upload(head, chunked)
    assert pauses > 0 and body == BIG


def _messages_while_arriving(head: bytes, chunks: list[bytes]) -> list[bytes]:
    """The bodies of the ``http.request`` messages an app gets when it reads at once, while the
    request's ``chunks`` are still arriving (one per turn of the event loop)."""
    messages: list[bytes] = []

    async def app(scope: dict, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            messages.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        done.set()
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def run() -> None:
        protocol, _ = _connected(app)
        protocol.data_received(head + chunks[0])
        for chunk in chunks[1:]:
            await asyncio.sleep(0)  # the app's task runs, and reads, between the parts
            protocol.data_received(chunk)
        for _ in range(100):
            if done.is_set():
                break
            await asyncio.sleep(0.01)

    done = threading.Event()
    asyncio.run(run())
    assert done.is_set(), "the app never read the whole body"
    return messages


def test_a_declared_body_within_the_limit_reaches_the_app_whole_as_one_message() -> None:
    """Issue 15: the app gets a big declared body in one message, joined once (it then needs no
    join of its own), though it began reading while the body still arrived; a chunked body
    still streams."""
    first = [BIG[:100_000], *(BIG[i:i + 50_000] for i in range(100_000, len(BIG), 50_000))]
    head = b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % len(BIG)
    assert _messages_while_arriving(head, first) == [BIG]
    chunked = [b"%x\r\n%s\r\n" % (len(p), p) for p in first] + [b"0\r\n\r\n"]
    head = b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    messages = _messages_while_arriving(head, chunked)
    assert len(messages) > 2 and b"".join(messages) == BIG


def _serve_reads(reads: list[bytes], answer_early: bool = False) -> tuple[list[bytes], bytes, int]:
    """Feed ``reads`` (one ``data_received`` each) to a real ``GuardedProtocol`` whose app echoes
    each request's body length (or, ``answer_early``, answers a POST 413 before reading it):
    the bodies the app read, what the client got back, and how many body reads the HTTP parser
    handed on (``on_body``)."""
    from services.worker import GuardedProtocol

    bodies: list[bytes] = []
    parsed = 0

    async def app(scope: dict, receive: Any, send: Any) -> None:
        if answer_early and scope["method"] == "POST":
            await send({"type": "http.response.start", "status": 413,
                        "headers": [(b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b""})
            return
        body = await _read_all(receive)
        bodies.append(body)
        answer = b"%d" % len(body)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"%d" % len(answer))]})
        await send({"type": "http.response.body", "body": answer})

    class Counting(GuardedProtocol):
        def on_body(self, body: bytes) -> None:
            nonlocal parsed
            parsed += 1
            super().on_body(body)

    async def run() -> bytes:
        protocol, transport = _connected(app, Counting)
        for data in reads:
            protocol.data_received(data)
            for _ in range(3):
                await asyncio.sleep(0)  # the app runs between reads, as on a real connection
        for _ in range(100):
            if b"".join(transport.calls).count(b"HTTP/1.1") >= 2:
                break
            await asyncio.sleep(0.01)
        return b"".join(transport.calls)

    answers = asyncio.run(run())
    return bodies, answers, parsed


def test_the_rest_of_a_declared_body_bypasses_the_parser_and_a_pipelined_request_follows() -> None:
    """Issue 15: once a declared body within the limit is read whole, its further reads are kept
    as they came, not copied again by the HTTP parser; the request then ends as the parser would
    end it, and a request pipelined in the same read as the body's tail is parsed and answered."""
    head = b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % len(BIG)
    following = b"GET /y HTTP/1.1\r\nHost: a\r\n\r\n"
    reads = [head + BIG[:100_000], *(BIG[i:i + 50_000] for i in range(100_000, len(BIG), 50_000))]
    reads[-1] += following
    bodies, answers, parsed = _serve_reads(reads)
    assert bodies == [BIG, b""]
    assert answers.count(b"HTTP/1.1 200") == 2 and answers.endswith(b"\r\n\r\n0")
    assert parsed == 1  # the parser handed on the first read only (past 64 KiB: read whole)


def test_a_body_answered_early_is_dropped_past_the_parser_and_the_connection_goes_on() -> None:
    head = b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % len(BIG)
    following = b"POST /y HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"
    reads = [head + BIG[:100_000], *(BIG[i:i + 50_000] for i in range(100_000, len(BIG), 50_000)),
             following]
    bodies, answers, _ = _serve_reads(reads, answer_early=True)
    assert bodies == [] and answers.count(b"HTTP/1.1 413") == 2  # the second one parsed too


HUGE = bytes(range(256)) * 4096  # 1 MiB: past IN_PLACE_MIN_BYTES after any first read


def _over_a_socket(client: Any, in_place_bytes: int = 32 << 20, body_timeout_s: float = 60.0
                   ) -> tuple[list[tuple[str, int]], Any]:
    """A real ``GuardedProtocol`` on a real uvloop TCP listener on 127.0.0.1 whose app reads each
    body (``HotRequest.body``) and answers its length; ``client(port)`` (a coroutine) talks to
    it (``client(port, server_state)``). Returns each body's type and length as the app read
    it, and what ``client`` returned."""
    import uvicorn
    import uvloop
    from uvicorn.server import ServerState

    from services.http import HotRequest
    from services.worker import GuardedProtocol

    bodies: list[tuple[str, int]] = []

    async def app(scope: dict, receive: Any, send: Any) -> None:
        body = await HotRequest(scope, receive).body()
        bodies.append((type(body).__name__, len(body)))
        answer = b"%d" % len(body)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"%d" % len(answer))]})
        await send({"type": "http.response.body", "body": answer})

    async def run() -> Any:
        config = uvicorn.Config(app=app, http="httptools", log_config=None, lifespan="off")
        config.load()
        loop, state = asyncio.get_running_loop(), ServerState()
        server = await loop.create_server(
            lambda: GuardedProtocol(config=config, server_state=state, app_state={}, _loop=loop),
            "127.0.0.1", 0)
        try:
            return await asyncio.wait_for(client(server.sockets[0].getsockname()[1], state), 20)
        finally:
            server.close()

    saved = GuardedProtocol.in_place_bytes, GuardedProtocol.body_timeout_s
    GuardedProtocol.in_place_bytes, GuardedProtocol.body_timeout_s = in_place_bytes, body_timeout_s
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            got = runner.run(run())
    finally:
        GuardedProtocol.in_place_bytes, GuardedProtocol.body_timeout_s = saved
    return bodies, got


async def _post_then_get(port: int, state: Any) -> bytes:
    """A 1 MiB POST written in 64 KiB pieces, then a pipelined GET on the same connection: both
    answers."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % len(HUGE))
    for i in range(0, len(HUGE), 65536):
        writer.write(HUGE[i:i + 65536])
        await writer.drain()
        await asyncio.sleep(0)
    writer.write(b"GET /y HTTP/1.1\r\nHost: a\r\n\r\n")
    got = b""
    while got.count(b"HTTP/1.1 200") < 2 or not got.endswith(b"\r\n\r\n0"):
        got += await reader.read(65536)
    writer.close()
    return got


def test_a_big_declared_body_is_read_in_place_over_a_real_socket() -> None:
    """Issue 15: the rest of a big declared body is read by the event loop straight into one
    buffer the app then gets whole (a ``bytearray``: no join, no copy per read); the request
    that follows on the connection is parsed as usual, and the buffer leaves the worker's
    ``in_place_bytes`` count."""
    from services.worker import GuardedProtocol

    bodies, answers = _over_a_socket(_post_then_get)
    assert bodies == [("bytearray", len(HUGE)), ("bytes", 0)]
    assert answers.count(b"\r\n\r\n%d" % len(HUGE)) == 1
    assert GuardedProtocol.in_place_held == 0
    # No room for it (in_place_bytes): the same body kept read by read, whole all the same.
    bodies, _ = _over_a_socket(_post_then_get, in_place_bytes=len(HUGE) - 1)
    assert bodies == [("bytes", len(HUGE)), ("bytes", 0)]


def test_a_big_body_sent_after_100_continue_is_read_in_place_whole() -> None:
    """``Expect: 100-continue``: the body is sent only once the app asks for it (uvicorn's
    ``receive`` writes the 100); read in place, the app still gets all of it, once."""
    from services.worker import GuardedProtocol

    async def expect(port: int, state: Any) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /x HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(HUGE))
        await writer.drain()
        got = await reader.readuntil(b"\r\n\r\n")
        assert got.startswith(b"HTTP/1.1 100"), got
        writer.write(HUGE)
        await writer.drain()
        while not got.endswith(b"\r\n\r\n%d" % len(HUGE)):
            got += await reader.read(65536)
        writer.close()
        return got

    bodies, answer = _over_a_socket(expect)
    assert bodies == [("bytes", len(HUGE))] and answer.count(b"HTTP/1.1 200") == 1
    assert GuardedProtocol.in_place_held == 0


def test_a_body_read_in_place_gives_its_room_back_when_the_client_leaves_or_stalls() -> None:
    from services.worker import GuardedProtocol

    async def part_of_the_body(port: int) -> tuple[Any, Any]:
        """A connection that has sent the headers and 400 kB of the 1 MiB body, now read in
        place."""
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % len(HUGE)
                     + HUGE[:400_000])
        await writer.drain()
        await asyncio.sleep(0.2)
        assert GuardedProtocol.in_place_held > 0
        return reader, writer

    async def leave(port: int, state: Any) -> None:
        _, writer = await part_of_the_body(port)
        writer.close()
        await asyncio.sleep(0.2)

    async def stall(port: int, state: Any) -> bytes:
        reader, writer = await part_of_the_body(port)
        for connection in list(state.connections):  # the worker's sweep, past the deadline
            connection.check(asyncio.get_running_loop().time() + 10)
        got = await reader.read(65536)
        writer.close()
        return got

    bodies, _ = _over_a_socket(leave)
    assert bodies == [] and GuardedProtocol.in_place_held == 0
    bodies, answer = _over_a_socket(stall, body_timeout_s=1.0)
    assert answer.startswith(b"HTTP/1.1 408") and b"body_timeout_s" in answer
    assert bodies == [] and GuardedProtocol.in_place_held == 0


def test_the_hot_requests_body_is_the_one_message_itself() -> None:
    """``HotRequest.body``: one message's body is returned as it is (no copy), several are
    joined, and a disconnect while reading is Starlette's ``ClientDisconnect``."""
    from starlette.requests import ClientDisconnect

    from services.http import HotRequest

    scope = {"type": "http", "method": "POST", "path": "/x", "headers": [], "query_string": b""}

    def feeding(*messages: dict) -> Any:
        queue = list(messages)

        async def receive() -> dict:
            return queue.pop(0)
        return receive

    async def read(*messages: dict) -> bytes:
        return await HotRequest(scope, feeding(*messages)).body()

    assert asyncio.run(read({"type": "http.request", "body": BIG, "more_body": False})) is BIG
    assert asyncio.run(read(*({"type": "http.request", "body": part, "more_body": True}
                              for part in PARTS),
                            {"type": "http.request", "body": b"", "more_body": False})) == BIG
    assert asyncio.run(read({"type": "http.request", "more_body": False})) == b""
    with pytest.raises(ClientDisconnect):
        asyncio.run(read({"type": "http.request", "body": b"ab", "more_body": True},
                         {"type": "http.disconnect"}))


def test_proxy_headers_wrap_bentomls_app_not_the_hot_paths() -> None:
    """uvicorn wraps the worker's app (the edge) in its proxy-headers middleware; the worker
    moves it inside, around BentoML's app: a request from a trusted proxy still gets its client
    address rewritten there, and the hot app sees the connection as it is."""
    import uvicorn
    from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

    from services.edge import Edge
    from services.worker import proxy_headers_inside

    seen: dict[str, Any] = {}

    def spy(name: str) -> Any:
        async def app(scope: dict, receive: Any, send: Any) -> None:
            seen[name] = scope["client"]
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b""})
        app.routes = []  # type: ignore[attr-defined]
        return app

    class Hot:
        def __init__(self) -> None:
            self.app = spy("hot")

        def match(self, path: str) -> Any:
            return path == "/v1/models/m/predict" or None

        async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
            await self.app(scope, receive, send)

    edge = Edge(spy("bentoml"), hot=Hot())
    config = uvicorn.Config(app=edge, proxy_headers=True, log_config=None, lifespan="off")
    config.load()
    assert isinstance(config.loaded_app, ProxyHeadersMiddleware)
    assert proxy_headers_inside(config, edge) and config.loaded_app is edge
    assert isinstance(edge.app, ProxyHeadersMiddleware)
    assert not proxy_headers_inside(config, edge)  # once

    async def call(path: str) -> None:
        scope = {"type": "http", "http_version": "1.1", "method": "POST", "path": path,
                 "query_string": b"", "client": ("127.0.0.1", 5555), "scheme": "http",
                 "headers": [(b"host", b"a"), (b"x-forwarded-for", b"203.0.113.7")]}

        async def receive() -> dict:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict) -> None:
            pass

        await config.loaded_app(scope, receive, send)

    asyncio.run(call("/readyz"))
    asyncio.run(call("/v1/models/m/predict"))
    assert seen["bentoml"][0] == "203.0.113.7"  # rewritten behind the edge, as before
    assert seen["hot"] == ("127.0.0.1", 5555)  # the hot path: untouched, no middleware
