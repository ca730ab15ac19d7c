"""Shared fixtures, each built once per run: a real BentoML store in a temporary BENTOML_HOME
holding tiny real versions of all six models, trained on small subsets of the real data through
the real `podium` CLI; one real server over it; the rollout tests' store (two trained versions of
diabetes and two broken copies); one real redis-server."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


# -- the rollout tests' store: two real versions of diabetes and two broken copies ---------------
def clone_version(home: Path, source: str, version: str, onnx: bytes,
                  keep_checksum: bool = False) -> str:
    """Copy ``diabetes:source`` as ``diabetes:version`` with a new model.onnx; its recorded
    checksum is updated (a well-formed but different model) unless ``keep_checksum``."""
    from models.artifacts import sha256_file

    folder = home / "models" / "diabetes"
    shutil.copytree(folder / source, folder / version)
    target = folder / version / "model.onnx"
    old = sha256_file(target)
    target.write_bytes(onnx)
    text = (folder / version / "model.yaml").read_text()
    text = text.replace(f"version: {source}", f"version: {version}", 1)
    if not keep_checksum:
        text = text.replace(old, sha256_file(target))
    (folder / version / "model.yaml").write_text(text)
    return version


def inverted(onnx_path: Path) -> bytes:
    """The same graph answering 1 − p: a candidate whose every label is wrong."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(onnx_path)
    out = model.graph.output[0].name
    for node in model.graph.node:
        node.output[:] = [f"{out}_raw" if o == out else o for o in node.output]
    model.graph.initializer.append(helper.make_tensor("podium_one", TensorProto.FLOAT, [], [1.0]))
    model.graph.node.append(helper.make_node("Sub", ["podium_one", f"{out}_raw"], [out]))
    return model.SerializeToString()


@pytest.fixture(scope="session")
def rollout_versions(tiny_store: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A BENTOML_HOME with diabetes v1 (tiny_store's), v2 (trained with another seed), a copy of
    v1 with a corrupted graph ("corrupt") and one answering 1 − p ("wrong"); test_rollout and
    test_rollout_replicas share it (the replicas add mnist-fc clones beside it)."""
    home = tmp_path_factory.mktemp("rollout-home")
    shutil.copytree(tiny_store / "models" / "diabetes", home / "models" / "diabetes")
    (v1,) = [p.name for p in (home / "models" / "diabetes").iterdir() if p.name != "latest"]
    run_podium("train", "diabetes", *TINY, "--seed", "1", store=home,
               runs_dir=tmp_path_factory.mktemp("rollout-runs"))
    (v2,) = [p.name for p in (home / "models" / "diabetes").iterdir()
             if p.name not in ("latest", v1)]
    onnx = home / "models" / "diabetes" / v1 / "model.onnx"
    broken = bytearray(onnx.read_bytes())
    broken[len(broken) // 2] ^= 0xFF
    return {"home": home, "v1": v1, "v2": v2,
            "corrupt": clone_version(home, v1, "corrupt0001", bytes(broken), keep_checksum=True),
            "wrong": clone_version(home, v1, "wrong0001", inverted(onnx))}


@pytest.fixture(scope="session")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One real redis-server (tests/redis_server.py) for every test that needs Redis; each uses
    its own deployment namespace in it."""
    from tests.redis_server import RedisServer

    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()
