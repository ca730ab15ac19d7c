"""Experiment for issue 15: how much Python one ``/v1`` JSON or OIP binary request runs in a
serving worker, counted, not timed.

This machine's speed moves by a third from second to second (results/bench/NOTES.md), so a few
per cent of event-loop time per request cannot be timed reliably; the bytecodes the interpreter
executes per request can be counted exactly (``sys.settrace`` opcode events). The request goes
through what a worker runs — Podium's ``GuardedProtocol`` (uvicorn's httptools protocol, its
cycle and Podium's coalesced answer), the ``Edge``, the hot app, the data plane, the batcher and
the image kind — fed from memory: ``--connections`` connections each send the benchmark's own
request (``--form``: a real MNIST test digit as a JSON tensor or as OIP binary), all answered,
round after round, so batches form as under load. The model is a stand-in returning zeros
(``--real`` runs the stored mnist-cnn: the count is the same, the model's time is C). Prints
bytecodes and Python calls per request, by function::

    BENTOML_HOME=... .venv/bin/python -m benchmarks.experiments.request_bytecodes \
        [--form json|oip] [--real] [--top 40]

Needs a store with mnist-cnn (``podium train``) and a Redis-free default configuration. Compare
two commits by running it in each checkout: the figure depends only on the code (and on how the
rounds' requests fall into batches: a few bytecodes a request from run to run).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np

ROOT = str(Path(__file__).resolve().parents[2]) + "/"


def _request(form: str) -> bytes:
    """The benchmark's own request of its form (``bench_serve.make_bodies``: one real MNIST test
    digit as a ``/v1`` JSON tensor, or an OIP binary ``/v2`` infer asking for binary outputs), as
    the raw HTTP/1.1 bytes ``hey`` sends."""
    from benchmarks.bench_serve import make_bodies, path_for

    with tempfile.TemporaryDirectory() as folder:
        body = make_bodies(Path(folder))[0][form]
        raw = body.path.read_bytes()
    headers = [f"Content-Type: {body.content_type}", *body.headers]
    return (b"POST " + path_for("mnist-cnn", form).encode() + b" HTTP/1.1\r\n"
            b"Host: 127.0.0.1:3000\r\nUser-Agent: hey/0.0.1\r\nContent-Length: %d\r\n" % len(raw)
            + "".join(f"{h}\r\n" for h in headers).encode("latin-1")
            + b"Accept-Encoding: gzip\r\n\r\n" + raw)


class _Transport(asyncio.Transport):
    """A socket's transport that keeps nothing: each write is one answer."""

    def __init__(self, answered: Any) -> None:
        super().__init__()
        self.answered, self.closing = answered, False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 3000), "peername": ("127.0.0.1", 5555)}.get(name, default)

    def write(self, data: Any) -> None:
        self.answered()

    def writelines(self, data: Any) -> None:
        self.answered()

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--form", choices=("json", "oip"), default="json",
                        help="a /v1 JSON tensor or an OIP binary /v2 infer (binary outputs)")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=4, help="counted rounds (after 20 to warm)")
    parser.add_argument("--real", action="store_true", help="run the stored model, not a stand-in")
    parser.add_argument("--top", type=int, default=40)
    args = parser.parse_args(argv)

    import uvloop
    from uvicorn.config import Config
    from uvicorn.server import ServerState

    from services import worker
    from services.config import get_config
    from services.dataplane import DataPlane
    from services.edge import Edge
    from services.routes import hot_app

    request = _request(args.form)
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    cfg = get_config()
    plane = DataPlane(cfg)
    plane.start(cfg)
    plane.metrics.defer()  # as a serving worker does (services.worker)
    if not args.real:
        def zeros(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
            return [np.zeros((next(iter(feeds.values())).shape[0], 10), np.float32)]
        plane.repo().get("mnist-cnn").batcher.runner = zeros
    app = Edge(None, hot=hot_app(plane), plane=plane)
    uv = Config(app=app, http="httptools", loop="none", access_log=False, lifespan="off",
                log_level="warning")
    uv.load()
    uv.loaded_app = app
    worker.configure_protocol(cfg)
    state = ServerState()
    state.default_headers = [(b"date", b"Wed, 02 Dec 2026 08:00:00 GMT"), (b"server", b"uvicorn")]
    pending = {"left": 0, "done": None}

    def answered() -> None:
        pending["left"] -= 1
        if pending["left"] <= 0 and not pending["done"].done():
            pending["done"].set_result(None)

    protocols = []
    for _ in range(args.connections):
        protocol = worker.GuardedProtocol(config=uv, server_state=state, app_state={}, _loop=loop)
        protocol.connection_made(_Transport(answered))
        protocols.append(protocol)

    async def rounds(n: int) -> None:
        for _ in range(n):
            pending["left"], pending["done"] = len(protocols), loop.create_future()
            for protocol in protocols:
                protocol.data_received(request)
            await pending["done"]

    loop.run_until_complete(rounds(20))
    ops: collections.Counter[tuple[str, str]] = collections.Counter()
    calls: collections.Counter[tuple[str, str]] = collections.Counter()

    def where(frame: Any) -> tuple[str, str]:
        code = frame.f_code
        return code.co_filename.split("site-packages/")[-1].replace(ROOT, ""), code.co_name

    def tracer(frame: Any, event: str, arg: Any) -> Any:
        if event == "call":
            frame.f_trace_opcodes = True
            calls[where(frame)] += 1
        elif event == "opcode":
            ops[where(frame)] += 1
        return tracer

    sys.settrace(tracer)
    threading.settrace(tracer)
    try:
        loop.run_until_complete(rounds(args.rounds))
    finally:
        sys.settrace(None)
        threading.settrace(None)  # type: ignore[arg-type]
    n = args.rounds * args.connections
    print(f"{n} {args.form} requests ({args.connections} connections × {args.rounds} rounds, "
          f"{'the stored model' if args.real else 'a stand-in model'}): "
          f"{sum(ops.values()) / n:.0f} bytecodes and {sum(calls.values()) / n:.0f} Python calls "
          f"a request")
    for (filename, name), count in ops.most_common(args.top):
        print(f"{count / n:8.1f} bytecodes {calls[(filename, name)] / n:5.2f} calls  {filename}:{name}")
    plane.repo().get("mnist-cnn").batcher.close()


if __name__ == "__main__":
    main()
