"""Starting the Podium service: ``podium serve`` (blocking, for people) and ``serve()`` (a
context manager for programs — the test suite, the load tests, the benchmarks — that starts a real
``bentoml serve`` on a free 127.0.0.1 port, waits for ``/readyz`` and stops it afterwards)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

from services.config import load_config

ROOT = Path(__file__).resolve().parent.parent
BENTOML = str(Path(sys.executable).parent / "bentoml")


FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def run_server(host: str | None = None, port: int | None = None, workers: int | None = None) -> int:
    """``bentoml serve`` in the foreground; the signals that stop us (SIGTERM from an init
    system or Kubernetes, SIGINT from Ctrl+C in another process group) are passed on to it, so
    it drains and stops instead of being orphaned. Returns its exit status."""
    env = dict(os.environ)
    for key, value in (("HOST", host), ("PORT", port), ("WORKERS", workers)):
        if value is not None:
            env[f"PODIUM_{key}"] = str(value)
    cfg = load_config(host=host, port=port, workers=workers)
    cmd = [BENTOML, "serve", "services.service:Podium",
           "--host", cfg.host, "--port", str(cfg.port)]
    print("podium: " + " ".join(cmd), flush=True)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env)

    def forward(sig: int, _frame: object) -> None:
        if proc.poll() is None:
            proc.send_signal(sig)

    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED}
    try:
        return proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def process_tree(pid: int) -> list[psutil.Process]:
    """``pid`` and every process under it (empty once it is gone)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def stop(proc: subprocess.Popen, grace_s: float = 20) -> None:
    """Stop a server and every process under it: SIGTERM to the server (``bentoml serve`` drains
    its workers), then after ``grace_s`` SIGKILL to every process of the tree as it was before.

    The tree is listed first because circus starts each worker in its own process group (a
    process-group kill misses it) and a worker outlives a killed parent."""
    tree = process_tree(proc.pid)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        with suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace_s)
    if proc.poll() is None:  # once reaped, its pid may already belong to another process
        tree += [p for p in process_tree(proc.pid) if p not in tree]  # started during the grace period
    for p in tree:
        with suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(tree, timeout=10)
    proc.wait()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    url: str
    port: int
    proc: subprocess.Popen
    log: Path

    def client(self, **kwargs: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60, **kwargs)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def logs(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def serve(store: Path, log_dir: Path, env: dict[str, str] | None = None,
          ready_timeout: float = 120, command: list[str] | None = None) -> Iterator[Server]:
    """A running server over ``store``; PODIUM_* settings come through ``env``. ``command`` is
    what starts it, given ``--host`` and ``--port`` (default ``bentoml serve``; the tests of
    ``podium serve``'s signal handling pass that). One worker unless ``env`` or the environment
    names ``PODIUM_WORKERS``: a test server's behaviour, memory and start-up should not depend on
    the machine's core count (``workers=auto``)."""
    port = free_port()
    log = log_dir / f"server-{port}.log"
    full_env = {"PODIUM_WORKERS": "1", **os.environ, "BENTOML_HOME": str(store), "PYTHONUNBUFFERED": "1",
                "BENTOML_DO_NOT_TRACK": "true", **(env or {})}
    cmd = [*(command or [BENTOML, "serve", "services.service:Podium"]),
           "--host", "127.0.0.1", "--port", str(port)]
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)
    server = Server(f"http://127.0.0.1:{port}", port, proc, log)
    try:
        deadline = time.monotonic() + ready_timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}:\n{server.logs()}")
            try:
                if httpx.get(f"{server.url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not ready after {ready_timeout}s:\n{server.logs()}")
            time.sleep(0.2)
        yield server
    finally:
        stop(proc)
