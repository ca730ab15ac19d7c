"""Experiment for issue 15: how much Python one ``/v1`` JSON request runs in a serving worker,
counted, not timed.

This machine's speed moves by a third from second to second (results/bench/NOTES.md), so a few
per cent of event-loop time per request cannot be timed reliably; the bytecodes the interpreter
executes per request can be counted exactly (``sys.settrace`` opcode events). The request goes
through what a worker runs — Podium's ``GuardedProtocol`` (uvicorn's httptools protocol, its
cycle and Podium's coalesced answer), the ``Edge``, the hot app, the data plane, the batcher and
the image kind — fed from memory: ``--connections`` connections each send one request of the
benchmark's body (a real MNIST test digit as a JSON tensor), all answered, round after round, so
batches form as under load. The model is a stand-in returning zeros (``--real`` runs the stored
mnist-cnn: the count is the same, the model's time is C). Prints bytecodes and Python calls per
request, by function::

    BENTOML_HOME=... .venv/bin/python -m benchmarks.experiments.request_bytecodes [--real] [--top 40]

Needs a store with mnist-cnn (``podium train``) and a Redis-free default configuration. Compare
two commits by running it in each checkout: the figure depends only on the code (and on how the
rounds' requests fall into batches: a few bytecodes a request from run to run).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np

ROOT = str(Path(__file__).resolve().parents[2]) + "/"


def _request(form: str) -> bytes:
    """The benchmark's request (``bench_serve.make_bodies``) of one real MNIST test digit: a
    ``/v1`` JSON tensor, or an OIP binary ``/v2`` infer asking for binary outputs."""
    import orjson

    from training.data import load_mnist

    one = load_mnist().test_x[0]
    if form == "json":
        floats = np.round(one.astype(np.float64) / 255.0, 4).reshape(1, 784)
        path, body = b"/v1/models/mnist-cnn/predict", orjson.dumps({"instances": floats.tolist()})
        extra = b"Content-Type: application/json\r\n"
    else:
        raw = (one.astype(np.float32) / 255.0).reshape(1, 1, 28, 28).tobytes()
        header = orjson.dumps({"inputs": [{"name": "image", "shape": [1, 1, 28, 28],
                                           "datatype": "FP32",
                                           "parameters": {"binary_data_size": len(raw)}}],
                               "parameters": {"binary_data_output": True}})
        path, body = b"/v2/models/mnist-cnn/infer", header + raw
        extra = (b"Content-Type: application/octet-stream\r\n"
                 b"Inference-Header-Content-Length: %d\r\n" % len(header))
    return (b"POST " + path + b" HTTP/1.1\r\nHost: 127.0.0.1:3000\r\nUser-Agent: hey/0.0.1\r\n"
            b"Content-Length: %d\r\n" % len(body) + extra + b"Accept-Encoding: gzip\r\n\r\n" + body)


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
