"""Shared fixtures: a real BentoML store in a temporary BENTOML_HOME holding tiny real versions of
all six models, trained on small subsets of the real data through the real `podium` CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PODIUM = [sys.executable, "-m", "podium.cli"]
# One epoch, a few steps, small held-out subsets: seconds per model, every stage real.
TINY = ["--epochs", "1", "--max-steps", "8", "--train-subset", "3000", "--test-subset", "600",
        "--no-progress"]


def run_podium(*args: str, store: Path | None = None, check: bool = True,
               timeout: float = 600, runs_dir: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if store is not None:
        env["BENTOML_HOME"] = str(store)
    cmd = [*PODIUM, *args]
    if runs_dir is not None and args and args[0] == "train":
        cmd += ["--runs-dir", str(runs_dir)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"podium {' '.join(args)} failed ({proc.returncode}):\n"
                             f"{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A BENTOML_HOME with one tiny version of every model."""
    store = tmp_path_factory.mktemp("bentoml-home")
    runs = tmp_path_factory.mktemp("runs")
    run_podium("train", "--all", *TINY, store=store, runs_dir=runs)
    return store


@pytest.fixture(scope="session")
def server(tiny_store: Path, tmp_path_factory: pytest.TempPathFactory):
    """One real `bentoml serve` of the tiny store, shared by the HTTP tests."""
    from services.launch import serve

    with serve(tiny_store, tmp_path_factory.mktemp("server-logs")) as running:
        yield running
