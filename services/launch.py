"""``podium serve``: run ``bentoml serve`` on the Podium service with the configured host,
port and workers, from the repository root so the service module resolves."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from services.config import load_config

ROOT = Path(__file__).resolve().parent.parent


def serve(host: str | None = None, port: int | None = None, workers: int | None = None) -> int:
    env = dict(os.environ)
    for key, value in (("HOST", host), ("PORT", port), ("WORKERS", workers)):
        if value is not None:
            env[f"PODIUM_{key}"] = str(value)
    cfg = load_config(host=host, port=port, workers=workers)
    cmd = [str(Path(sys.executable).parent / "bentoml"), "serve", "services.service:Podium",
           "--host", cfg.host, "--port", str(cfg.port)]
    print("podium: " + " ".join(cmd), flush=True)
    try:
        return subprocess.call(cmd, cwd=ROOT, env=env)
    except KeyboardInterrupt:
        return 130
