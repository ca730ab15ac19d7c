"""A server's life as an operator sees it, on real processes: SIGTERM drains (readiness 503, new
work refused, in-flight work finished, exit 0), stopping stops the whole process tree, and a
corrupt model version is "not ready" on its own — or, with ``strict``, stops start-up at once."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest
import yaml

from services.config import load_config
from services.launch import BENTOML, ROOT, free_port, process_tree, serve, stop
from services.repository import preflight

# Two models keep start-up short; char-rnn for long in-flight generations, mnist-cnn for images.
MODELS = {"PODIUM_MODELS": "mnist-cnn,char-rnn"}


def _alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    return [p for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def _port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def _wait_gone(procs: list[psutil.Process], port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while (_alive(procs) or _port_open(port)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(procs), f"still running: {[p.pid for p in _alive(procs)]}"
    assert not _port_open(port)


# -- SIGTERM drain ------------------------------------------------------------------------------
def _load(url: str, sent: list[int]) -> list[object]:
    """16 long char-rnn generations and 48 image batches at once; their outcomes."""
    async def run() -> list[object]:
        async def count(_request: httpx.Request) -> None:
            sent.append(1)

        async with httpx.AsyncClient(base_url=url, timeout=120, event_hooks={"request": [count]},
                                     limits=httpx.Limits(max_connections=100)) as client:
            async def one(path: str, body: dict) -> object:
                try:
                    return (await client.post(path, json=body)).status_code
                except httpx.HTTPError as exc:
                    return type(exc).__name__

            gen = {"prompt": "And God said", "max_new_chars": 2000, "seed": 1}
            images = {"instances": [[0.0] * 784] * 64}
            return await asyncio.gather(
                *[one("/v1/models/char-rnn/generate", gen) for _ in range(16)],
                *[one("/v1/models/mnist-cnn/predict", images) for _ in range(48)])
    return asyncio.run(run())


def _in_flight(url: str) -> tuple[threading.Thread, list[object]]:
    """Start the 64 requests of ``_load`` in a thread; return once all were sent (or after 30 s)."""
    sent: list[int] = []
    outcomes: list[object] = []
    loader = threading.Thread(target=lambda: outcomes.extend(_load(url, sent)))
    loader.start()
    deadline = time.monotonic() + 30
    while len(sent) < 64 and time.monotonic() < deadline:
        time.sleep(0.05)
    return loader, outcomes


def test_sigterm_drains_in_flight_work_then_exits_0(tiny_store: Path, tmp_path: Path) -> None:
    """Before: the 64 requests in flight failed with read errors and /readyz was refused."""
    with serve(tiny_store, tmp_path, env={**MODELS, "PODIUM_DRAIN_GRACE_S": "60"}) as server:
        tree = process_tree(server.proc.pid)
        loader, outcomes = _in_flight(server.url)
        time.sleep(0.3)  # all 64 are in the worker (16 generations take seconds on 2 cores)
        server.proc.send_signal(signal.SIGTERM)
        ready, refused = [], None
        while server.proc.poll() is None and len(ready) < 200:
            path = "/readyz" if len(ready) % 2 else "/v2/health/ready"
            try:
                ready.append(httpx.get(f"{server.url}{path}", timeout=2).status_code)
                if refused is None and ready[-1] == 503:  # the worker has the signal: draining
                    refused = httpx.post(f"{server.url}/v1/models/mnist-cnn/predict", timeout=2,
                                         json={"instances": [[0.0] * 784]})
            except httpx.HTTPError:
                ready.append("closed")
            time.sleep(0.1)
        loader.join(120)
        assert server.proc.wait(60) == 0
    assert outcomes == [200] * 64, outcomes
    # The arbiter passes the signal on within milliseconds: at most the first poll may precede it.
    assert 503 in ready and ready.index(503) <= 1 and 200 not in ready[ready.index(503):], ready
    assert refused is not None and refused.status_code == 503
    assert refused.headers["connection"] == "close" and "shutting down" in refused.json()["error"]
    _wait_gone(tree, server.port, 10)


# -- the process tree ---------------------------------------------------------------------------
def test_sigterm_to_podium_serve_stops_the_wholeprocess_tree(tiny_store: Path, tmp_path: Path) -> None:
    """Before: `podium serve` died of the signal and left `bentoml serve` and its worker serving."""
    podium_serve = [sys.executable, "-m", "podium.cli", "serve"]
    with serve(tiny_store, tmp_path, env=MODELS, command=podium_serve) as server:
        tree = process_tree(server.proc.pid)
        assert len(tree) >= 3  # podium serve → bentoml serve → worker
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(60) == 0
        _wait_gone(tree, server.port, 10)


def test_stop_kills_the_whole_tree_when_a_drain_outlasts_its_grace(tiny_store: Path,
                                                                   tmp_path: Path) -> None:
    """stop() with a grace shorter than the drain SIGKILLs every process of the tree, the worker
    included (before: a process-group SIGKILL missed the worker, which kept answering)."""
    with serve(tiny_store, tmp_path, env=MODELS) as server:
        tree = process_tree(server.proc.pid)
        loader, outcomes = _in_flight(server.url)
        stop(server.proc, grace_s=0.2)  # the 64 requests need seconds: the drain cannot finish
        _wait_gone(tree, server.port, 5)
        loader.join(60)
    assert len(outcomes) == 64 and any(outcome != 200 for outcome in outcomes)


def test_an_orphaned_worker_stops_itself(tiny_store: Path, tmp_path: Path) -> None:
    """SIGKILL to `bentoml serve`'s process group alone: its worker (in its own group) notices
    the parent is gone, drains and exits, closing the port."""
    with serve(tiny_store, tmp_path, env=MODELS) as server:
        tree = process_tree(server.proc.pid)
        assert any(os.getpgid(p.pid) != os.getpgid(server.proc.pid) for p in tree)
        os.killpg(server.proc.pid, signal.SIGKILL)
        _wait_gone(tree, server.port, 15)


# -- a corrupt version ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def broken_store(tiny_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny store with a flipped byte in mnist-cnn's model.onnx, char-rnn's vocab.json gone
    and mnist-resnet's model.onnx truncated."""
    store = tmp_path_factory.mktemp("broken") / "store"
    shutil.copytree(tiny_store / "models", store / "models")

    def version_dir(name: str) -> Path:
        return next(p for p in (store / "models" / name).iterdir() if p.is_dir())

    onnx = version_dir("mnist-cnn") / "model.onnx"
    data = bytearray(onnx.read_bytes())
    data[len(data) // 2] ^= 0xFF
    onnx.write_bytes(bytes(data))
    (version_dir("char-rnn") / "vocab.json").unlink()
    resnet = version_dir("mnist-resnet") / "model.onnx"
    resnet.write_bytes(resnet.read_bytes()[:1000])
    return store


def test_preflight_names_every_broken_version(broken_store: Path, monkeypatch) -> None:
    monkeypatch.setenv("BENTOML_HOME", str(broken_store))
    problems = preflight(load_config())
    assert len(problems) == 3, problems
    assert any("mnist-cnn" in p and "checksum" in p for p in problems)
    assert any("char-rnn" in p and "vocab.json is missing" in p for p in problems)
    assert any("mnist-resnet" in p and "checksum" in p for p in problems)


def test_broken_versions_are_not_ready_and_the_rest_serve(broken_store: Path, tmp_path: Path) -> None:
    """Before: every model refused, the worker restarted every 8-10 s and /readyz timed out."""
    with serve(broken_store, tmp_path, ready_timeout=120) as server, server.client() as client:
        assert client.get("/readyz").status_code == 200  # ready: every model that could load did
        for name, why in (("mnist-cnn", "checksum"), ("char-rnn", "vocab.json is missing"),
                          ("mnist-resnet", "checksum")):
            for path in (f"/v1/models/{name}/ready", f"/v2/models/{name}/ready",
                         f"/v1/models/{name}", f"/v2/models/{name}"):
                r = client.get(path)
                assert r.status_code == 503 and why in r.json()["error"], (path, r.text)
        r = client.post("/v1/models/mnist-fc/predict", json={"instances": [[0.0] * 784]})
        assert r.status_code == 200
        time.sleep(3)  # a restart loop would show as a second initialisation
        logs = server.logs()
    assert logs.count("Service podium initialized") == 1
    assert "mnist-cnn failed to load and is not served" in logs and "checksum" in logs


def _strict_serve(store: Path, **env: str) -> tuple[subprocess.CompletedProcess, float]:
    full_env = {**os.environ, "BENTOML_HOME": str(store), "PODIUM_STRICT": "true",
                "BENTOML_DO_NOT_TRACK": "true", **env}
    started = time.monotonic()
    proc = subprocess.run([BENTOML, "serve", "services.service:Podium", "--port", str(free_port())],
                          cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=120)
    return proc, time.monotonic() - started


def test_strict_start_up_fails_fast_with_one_line(broken_store: Path) -> None:
    """Checked before any worker starts: exit 1, one line, no traceback."""
    proc, seconds = _strict_serve(broken_store)
    assert proc.returncode == 1 and seconds < 60
    output = (proc.stdout + proc.stderr).strip().splitlines()
    failed = [line for line in output if "strict start-up failed" in line]
    assert len(failed) == 1 and "mnist-cnn" in failed[0] and "checksum" in failed[0], output[-5:]
    assert "Traceback" not in proc.stderr


def _unloadable(store: Path, name: str) -> None:
    """Make ``name``'s model.onnx garbage that still matches its recorded checksum: the files
    pass every check, only loading it shows the failure."""
    (version,) = [p for p in (store / "models" / name).iterdir() if p.is_dir()]
    graph = version / "model.onnx"
    graph.write_bytes(b"not an ONNX graph")
    meta = yaml.safe_load((version / "model.yaml").read_text())
    meta["metadata"]["sha256"]["model.onnx"] = hashlib.sha256(graph.read_bytes()).hexdigest()
    (version / "model.yaml").write_text(yaml.safe_dump(meta))


def test_strict_stops_on_a_failure_only_loading_shows(tiny_store: Path, tmp_path: Path) -> None:
    """Files fine, the runtime refuses the graph: the worker stops the server, which exits 1
    with the one line last — no restart loop."""
    home = tmp_path / "home"  # a copy, of the one model it serves: this test breaks it
    shutil.copytree(tiny_store / "models" / "diabetes", home / "models" / "diabetes")
    _unloadable(home, "diabetes")
    proc, seconds = _strict_serve(home, PODIUM_MODELS="diabetes")
    assert proc.returncode == 1 and seconds < 60
    last = (proc.stdout + proc.stderr).strip().splitlines()[-1]
    assert last.startswith("podium: strict start-up failed: "), last
    assert "checksum" not in last and "diabetes" in last, last  # from loading, not the pre-flight


def test_device_cuda_without_a_gpu_runtime_stops_with_one_line(tiny_store: Path) -> None:
    """device=cuda is checked in `bentoml serve`'s own process, strict or not: exit 1, one
    line last, no traceback, no worker started."""
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has a CUDA provider")
    proc, seconds = _strict_serve(tiny_store, PODIUM_MODELS="diabetes", PODIUM_DEVICE="cuda",
                                  PODIUM_STRICT="false")
    assert proc.returncode == 1 and seconds < 60
    last = (proc.stdout + proc.stderr).strip().splitlines()[-1]
    assert last.startswith("podium: start-up failed: DeviceUnavailable: device=cuda was asked for"), last
    assert "Traceback" not in proc.stderr


# -- Kubernetes ------------------------------------------------------------------------------------
@pytest.mark.parametrize("manifest", ["deployment.yaml", "deployment-gpu.yaml"])
def test_manifests_leave_time_for_the_drain(manifest: str) -> None:
    """Deployments (validated in test_rollout_k8s) whose shutdown fits: preStop sleep +
    drain_grace_s + 10 s for the workers to exit ≤ terminationGracePeriodSeconds (after which
    Kubernetes sends SIGKILL)."""
    (deployment,) = yaml.safe_load_all((ROOT / "deploy" / "k8s" / manifest).read_text())
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    env = {e["name"]: e.get("value") for e in container["env"]}
    grace = float(env.get("PODIUM_DRAIN_GRACE_S") or load_config().drain_grace_s)
    assert float(pre_stop[1]) + grace + 10 <= pod["terminationGracePeriodSeconds"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"


# -- two servers on one store --------------------------------------------------------------------
def test_a_second_server_on_the_same_store_leaves_the_first_ones_metrics(tiny_store: Path,
                                                                         tmp_path: Path) -> None:
    """BentoML empties the Prometheus directory under BENTOML_HOME at start; each server (one
    per port, or per `deployment`) has its own, so starting a second one wipes nothing."""
    env = {"PODIUM_MODELS": '["mnist-cnn"]'}
    body = {"instances": [[0.0] * 784]}

    def counted(client: httpx.Client) -> list[str]:
        return [line for line in client.get("/metrics").text.splitlines()
                if line.startswith('podium_requests_total{endpoint="predict",model="mnist-cnn"')]

    with serve(tiny_store, tmp_path, env=env) as first, first.client() as client:
        for _ in range(3):
            assert client.post("/v1/models/mnist-cnn/predict", json=body).status_code == 200
        before = counted(client)
        assert before and before[0].endswith(" 3.0"), before
        with serve(tiny_store, tmp_path, env=env) as second:
            assert counted(client) == before
            with second.client() as other:
                assert counted(other) == []  # its own directory, its own counts
