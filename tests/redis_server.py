"""A real ``redis-server`` for the rollout tests: a free 127.0.0.1 port, a temporary directory,
the append-only file on (as in deploy/k8s/redis.yaml), stopped when the block ends. Stop and
start it again to test an outage; its state survives in the AOF."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

from services.launch import free_port

INSTALL_HINT = "redis-server is missing: apt-get install -y redis-server (make test installs it)"


class RedisServer:
    def __init__(self, directory: Path) -> None:
        if shutil.which("redis-server") is None:
            raise RuntimeError(INSTALL_HINT)
        self.directory = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None
        self.log = self.directory / "redis.log"

    def start(self) -> RedisServer:
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(
                ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir",
                 str(self.directory), "--appendonly", "yes", "--appendfsync", "always", "--save", "",
                 "--protected-mode", "yes"], stdout=log, stderr=subprocess.STDOUT)
        import redis

        client = redis.Redis(port=self.port, socket_timeout=1)
        deadline = time.monotonic() + 20
        while True:
            try:
                client.ping()
                return self
            except redis.ConnectionError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(self.log.read_text()) from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=20)
        self.proc = None
