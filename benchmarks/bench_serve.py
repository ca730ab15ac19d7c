"""The serving benchmark (``make bench-serve``): every serving figure of issues 3, 4 and 15 in one
run, with the issue's targets judged at the end (a missed target makes the run exit 1, FAIL).

1. raw in-process ONNX Runtime samples/s of each stored model (batch 1, 64, 256; mnist-cnn also
   1024) with Podium's runtime threads;
2. ``bentoml serve`` of Podium in its default configuration (batching on) and with batching off
   (``PODIUM_BATCHING=false``), each over its own ``BENTOML_HOME`` holding a copy of the store, and
   the time from start to ``/readyz`` 200 with all six models loaded and warm;
3. the baselines on the same JSON body (mnist-cnn): the bare parse ceiling (Starlette parsing the
   body into a float32 array) and plain BentoML ``batchable=True`` at Podium's worker count, and
   the naive FastAPI + ONNX Runtime server (no batching) at 1 and 2 workers; the ceiling and
   naive targets themselves measured paired: Podium's default server and the other server (the
   ceiling; the naive server at each worker count) both up, each warmed by 2 s of the same load
   (not counted), then A B B A twice at c=64, each side's best run;
4. single-image requests/s and p50/p99 for mnist-cnn in every input form (JSON tensor, ``.npy``,
   PNG upload, Open Inference Protocol binary tensors) and JSON for mnist-googlenet and
   mnist-resnet, batching on vs off (the two servers alternate per point) at c = 1 and 64, and
   c = 16 for mnist-cnn JSON and OIP; at c=1 also both servers paired per request (one client
   alternating the same request between them: the c=1 target);
5. char-rnn generation throughput (characters/s) at 1, 8, 32 and 64 concurrent generations;
6. one ``.npy`` request of 1024 images with ``Accept: application/x-npy`` vs raw ONNX Runtime,
   paired: before each request, a raw pass over the same 1024 images (runs of the batch size with
   the run's best raw samples/s) in this process, the server idle; each side's median;
7. workers × runtime threads: Podium with 1, 2 and ``nproc`` workers × 1 and 2 ONNX Runtime
   threads, mnist-cnn JSON at c = 16 and 64;
8. where a target is missed and py-spy is installed, a 10 s py-spy profile of the default
   server's worker under concurrency-64 JSON load, its top costs in the report.

``hey`` is the load generator (client and server share the machine, as in the issue's figures).
Writes ``serve.json`` (raw), ``README.md`` (the report), ``latency_throughput.png`` and
``textgen_throughput.png`` to ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import io
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import bench_runtime
from services.launch import stop

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
CONCURRENCY = (1, 16, 64)
MODELS = bench_runtime.MODELS
# (model, input form) rows measured with batching on and off, at c = 1 and 64; the rows in
# FULL_ROWS at c = 16 too (the OIP-vs-JSON comparison of issue 4 is made there).
ROWS = [("mnist-cnn", "json"), ("mnist-cnn", "npy"), ("mnist-cnn", "png"), ("mnist-cnn", "oip"),
        ("mnist-googlenet", "json"), ("mnist-resnet", "json")]
FULL_ROWS = {("mnist-cnn", "json"), ("mnist-cnn", "oip")}
FORM_NAMES = {"json": "JSON tensor", "npy": ".npy", "png": "PNG upload", "oip": "OIP binary"}
# char-rnn: concurrent generations of GEN_CHARS characters each (issue 15).
GEN_CONCURRENCY = (1, 8, 32, 64)
GEN_CHARS = 64
MATRIX_CONCURRENCY = (16, 64)
TARGETS = {"naive_factor": 1.25, "ceiling_fraction": 0.80, "json_p99_ms_c64": 40.0,
           "npy1024_fraction": 0.80, "textgen_factor_c32": 10.0, "batching_c1": 0.95,
           "oip_vs_json_c16": 0.95, "ready_s": 10.0}
REPRODUCE = "make bench-serve"
NPY = "application/x-npy"


def concurrencies(model: str, form: str) -> tuple[int, ...]:
    return CONCURRENCY if (model, form) in FULL_ROWS else (1, 64)


def matrix_configs() -> list[tuple[int, int]]:
    """(workers, runtime threads) pairs: 1, 2 and ``nproc`` workers × 1 and 2 threads."""
    return [(w, t) for w in sorted({1, 2, os.cpu_count() or 1}) for t in (1, 2)]


# -------------------------------------------------------------------------------- utilities

def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def load_avg() -> float:
    return round(os.getloadavg()[0], 2)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = ""
    with contextlib.suppress(OSError, IndexError, ValueError):
        kb = int(Path("/proc/meminfo").read_text().split("\n")[0].split()[1])
        mem = f"{kb / 1024 / 1024:.0f} GiB"
    import bentoml
    import onnxruntime

    return {"host": platform.node(), "cpu": cpu, "cpus": os.cpu_count(), "memory": mem,
            "os": f"{platform.system()} {platform.release()}", "python": platform.python_version(),
            "bentoml": bentoml.__version__, "onnxruntime": onnxruntime.__version__,
            "hey": shutil.which("hey")}


def code_revision() -> dict[str, Any]:
    """The commit measured, and any uncommitted changes to the served code."""
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return done.stdout.strip()

    return {"commit": git("rev-parse", "--short", "HEAD"),
            "dirty": [line[3:] for line in git("status", "--porcelain", "--", "services", "models",
                                                "podium").splitlines()]}


def busy_processes(seconds: float = 2.0, threshold: float = 15.0) -> list[str]:
    """Other processes using more than ``threshold`` % of a core right now (sampled over
    ``seconds``): what else the shared machine was doing while this ran."""
    def times() -> dict[int, tuple[float, str]]:
        out = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError, IndexError, ValueError):
                    fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                    cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(
                        errors="replace").strip()
                    out[int(entry.name)] = (int(fields[11]) + int(fields[12]), cmd)
        return out

    tick = os.sysconf("SC_CLK_TCK")
    before = times()
    time.sleep(seconds)
    after = times()
    busy = []
    for pid, (ticks, cmd) in after.items():
        if pid in before and pid != os.getpid():
            pct = 100 * (ticks - before[pid][0]) / tick / seconds
            if pct >= threshold:
                busy.append((pct, cmd))
    return [f"{pct:.0f}% {cmd[:110]}" for pct, cmd in sorted(busy, reverse=True)]


def wait_for_quiet(max_load: float, wait_s: float) -> None:
    """Wait (polling every 30 s, at most ``wait_s``) until the 1-minute load average is below
    ``max_load``; measure anyway afterwards — every figure records the load it ran under."""
    deadline = time.monotonic() + wait_s
    while load_avg() >= max_load and time.monotonic() < deadline:
        log(f"load average {load_avg():.2f} ≥ {max_load}: waiting (until at most "
            f"{max(0, deadline - time.monotonic()):.0f} s more)")
        time.sleep(min(30, max(1, deadline - time.monotonic())))
    log(f"load average {load_avg():.2f}; measuring")


# ------------------------------------------------------------------------------------- bodies

@dataclass
class Body:
    path: Path
    content_type: str
    headers: list[str] = field(default_factory=list)


def make_bodies(folder: Path) -> tuple[dict[str, Body], np.ndarray, int]:
    """The request bodies, all built from real MNIST test images (the first one for single-image
    requests): JSON tensor, .npy, PNG, OIP binary, .npy batches of 1024 images; and a char-rnn
    generation request."""
    import orjson
    from PIL import Image

    from training.data import load_mnist

    data = load_mnist()
    images, label = data.test_x[:1024], int(data.test_y[0])
    one = images[0]
    floats = np.round(one.astype(np.float64) / 255.0, 4).reshape(1, 784)
    tensor = (one.astype(np.float32) / 255.0).reshape(1, 1, 28, 28)
    bodies: dict[str, Body] = {}

    def write(name: str, raw: bytes, content_type: str, headers: list[str] | None = None) -> None:
        path = folder / name
        path.write_bytes(raw)
        bodies[name.split(".")[0]] = Body(path, content_type, headers or [])

    write("json.json", orjson.dumps({"instances": floats.tolist()}), "application/json")
    buf = io.BytesIO()
    np.save(buf, tensor)
    write("npy.npy", buf.getvalue(), "application/x-npy")
    buf = io.BytesIO()
    Image.fromarray(one, mode="L").save(buf, format="PNG")
    write("png.png", buf.getvalue(), "image/png")
    raw = tensor.tobytes()
    header = orjson.dumps({"inputs": [{"name": "image", "shape": [1, 1, 28, 28], "datatype": "FP32",
                                       "parameters": {"binary_data_size": len(raw)}}],
                           "parameters": {"binary_data_output": True}})
    write("oip.bin", header + raw, "application/octet-stream",
          [f"Inference-Header-Content-Length: {len(header)}"])
    batch = (images.astype(np.float32) / 255.0).reshape(1024, 1, 28, 28)
    buf = io.BytesIO()
    np.save(buf, batch)
    accept = [f"Accept: {NPY}"]  # .npy out too; the report says what came back
    write("npy1024.npy", buf.getvalue(), NPY, accept)
    buf = io.BytesIO()
    np.save(buf, images)
    write("npy1024u8.npy", buf.getvalue(), NPY, accept)
    write("gen.json", orjson.dumps({"prompt": "In the beginning God created", "seed": 7,
                                    "max_new_chars": GEN_CHARS}), "application/json")
    return bodies, data.test_y[:1024], label


# ----------------------------------------------------------------------------------------- hey

_HEY_FIELDS = {"total_s": r"Total:\s+([\d.]+) secs", "slowest_s": r"Slowest:\s+([\d.]+) secs",
               "average_s": r"Average:\s+([\d.]+) secs", "rps": r"Requests/sec:\s+([\d.]+)"}


def parse_hey(text: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, pattern in _HEY_FIELDS.items():
        match = re.search(pattern, text)
        out[key] = float(match.group(1)) if match else None
    out["percentiles_ms"] = {int(p): float(s) * 1000
                             for p, s in re.findall(r"(\d+)%+ in ([\d.]+) secs", text)
                             if int(p) > 0}
    out["status"] = {int(code): int(n) for code, n in re.findall(r"\[(\d{3})\]\s+(\d+) responses", text)}
    errors = text.split("Error distribution:", 1)[1] if "Error distribution:" in text else ""
    out["errors"] = [line.strip() for line in errors.splitlines() if line.strip()][:10]
    out["error_count"] = sum(int(n) for n in re.findall(r"\[(\d+)\]\t", errors))
    ok = out["status"].get(200, 0)
    out["ok"] = ok
    # Successful responses per second: hey's own figure counts every finished request.
    out["ok_rps"] = ok / out["total_s"] if out["total_s"] else None
    out["p50_ms"] = out["percentiles_ms"].get(50)
    out["p99_ms"] = out["percentiles_ms"].get(99)
    if out["p99_ms"] is None and out["slowest_s"] and ok:  # hey omits p99 on very few samples
        out["p99_ms"] = out["slowest_s"] * 1000
    return out


def hey(url: str, body: Body, concurrency: int, seconds: float) -> dict[str, Any]:
    cmd = ["hey", "-z", f"{seconds}s", "-c", str(concurrency), "-m", "POST", "-T",
           body.content_type, "-D", str(body.path)]
    for header in body.headers:
        cmd += ["-H", header]
    cmd.append(url)
    before = load_avg()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    if done.returncode != 0:
        raise RuntimeError(f"hey failed ({done.returncode}): {done.stderr[-2000:]}")
    result = parse_hey(done.stdout)
    if not result["ok"] or result["p50_ms"] is None or result["p99_ms"] is None:
        result["hey_output"] = done.stdout[-3000:]  # keep the evidence of an odd point
        for key in ("p50_ms", "p99_ms"):
            if result[key] is None:
                result[key] = float("nan")
        result["ok_rps"] = result["ok_rps"] or 0.0
    result.update(concurrency=concurrency, seconds=seconds, load_avg_1m=before,
                  load_avg_1m_after=load_avg())
    return result


# -------------------------------------------------------------------------------------- servers

@dataclass
class Server:
    name: str
    url: str
    proc: subprocess.Popen
    log: Path
    ready_s: float | None = None

    def worker_pids(self) -> list[int]:
        """The BentoML worker processes of this server (descendants running a worker)."""
        parents: dict[int, int] = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError, IndexError, ValueError):
                    stat = (entry / "stat").read_text()
                    parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
        family, grew = {self.proc.pid}, True
        while grew:
            kids = {pid for pid, ppid in parents.items() if ppid in family} - family
            family |= kids
            grew = bool(kids)
        workers = []
        for pid in sorted(family - {self.proc.pid}):
            with contextlib.suppress(OSError):
                if b"worker" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    workers.append(pid)
        return workers


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    """The caller's environment without PODIUM_* settings: the benchmark runs the defaults."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PODIUM_")}
    env.update({"PYTHONUNBUFFERED": "1", "BENTOML_DO_NOT_TRACK": "true",
                "PODIUM_CONFIG": str(ROOT / "results" / "tmp" / "no-such-podium.yaml")}, **extra)
    return env


@contextlib.contextmanager
def launch(name: str, argv: list[str], env: dict[str, str], log_path: Path, ready_path: str,
           port: int, timeout: float = 180, probe: tuple[str, bytes] | None = None,
           cwd: Path = ROOT) -> Iterator[Server]:
    """Start ``argv`` (its own process group) in ``cwd``, time it until ``ready_path`` answers 200."""
    url = f"http://127.0.0.1:{port}"
    fh = open(log_path, "w")  # noqa: SIM115 - closed in finally
    started = time.monotonic()
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT,
                            start_new_session=True)
    server = Server(name, url, proc, log_path)
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}; log {log_path}:\n"
                                   + log_path.read_text(errors="replace")[-3000:])
            status = _status(port, ready_path, probe)
            if status == 200:
                server.ready_s = time.monotonic() - started
                break
            if time.monotonic() - started > timeout:
                raise RuntimeError(f"{name} not ready after {timeout}s; log {log_path}")
            time.sleep(0.05)
        yield server
    finally:
        stop(proc)
        fh.close()


def _status(port: int, path: str, probe: tuple[str, bytes] | None = None) -> int | None:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        if probe:
            conn.request("POST", path, body=probe[1], headers={"Content-Type": probe[0]})
        else:
            conn.request("GET", path)
        status = conn.getresponse().status
        conn.close()
        return status
    except OSError:
        return None


def request_headers(body: Body) -> dict[str, str]:
    """``body``'s Content-Type and its extra ``Name: value`` headers, as ``http.client`` takes
    them."""
    headers = {"Content-Type": body.content_type}
    for header in body.headers:
        key, value = header.split(":", 1)
        headers[key.strip()] = value.strip()
    return headers


def post(port: int, path: str, body: Body, conn: http.client.HTTPConnection | None = None
         ) -> tuple[int, bytes, dict[str, str]]:
    own = conn is None
    conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    headers = request_headers(body)
    conn.request("POST", path, body=body.path.read_bytes(), headers=headers)
    response = conn.getresponse()
    data = response.read()
    if own:
        conn.close()
    return response.status, data, dict(response.getheaders())


def copy_store(source: Path, home: Path) -> None:
    """A fresh BENTOML_HOME holding a copy of the store's models (``bentoml serve`` empties the
    Prometheus directory under its home, so servers must not share one)."""
    home.mkdir(parents=True)
    shutil.copytree(source / "models", home / "models", symlinks=True)


def podium(name: str, home: Path, log_dir: Path, batching: bool,
           extra: dict[str, str] | None = None) -> contextlib.AbstractContextManager:
    port = free_port()
    env = clean_env({"BENTOML_HOME": str(home), "PODIUM_BATCHING": "true" if batching else "false",
                     **(extra or {})})
    return launch(name, [str(BIN / "bentoml"), "serve", "services.service:Podium", "--host",
                         "127.0.0.1", "--port", str(port)], env, log_dir / f"{name}.log",
                  "/readyz", port)


# ------------------------------------------------------------------------------------ checking

def check_answers(server: Server, bodies: dict[str, Body], label: int) -> dict[str, Any]:
    """Every body gets a 200 and the right digit before anything is timed."""
    port = int(server.url.rsplit(":", 1)[1])
    seen = {}
    for model, form in ROWS:
        status, data, headers = post(port, path_for(model, form), bodies[form])
        if status != 200:
            raise RuntimeError(f"{server.name}: {model} {form} → {status}: {data[:300]!r}")
        if form == "oip":
            header_len = int(dict(_lower(headers)).get("inference-header-content-length",
                                                       len(data)))
            answer = json.loads(data[:header_len])
            seen[(model, form)] = [o["name"] for o in answer["outputs"]]
        else:
            digit = json.loads(data)["predictions"][0]["digit"]
            seen[(model, form)] = digit
            if model == "mnist-cnn" and digit != label:
                log(f"note: {server.name} {model} {form} predicted {digit}, label {label}")
    return {f"{m}/{f}": v for (m, f), v in seen.items()}


def _lower(headers: dict[str, str]) -> list[tuple[str, str]]:
    return [(k.lower(), v) for k, v in headers.items()]


def path_for(model: str, form: str) -> str:
    if form == "oip":
        return f"/v2/models/{model}/infer"
    return f"/v1/models/{model}/predict"


def served_models(server: Server) -> list[str]:
    port = int(server.url.rsplit(":", 1)[1])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/v1/models")
    rows = json.loads(conn.getresponse().read())["models"]
    conn.close()
    return sorted({r["name"] for r in rows})


def npy_batch(server: Server, body: Body, repeats: int,
              raw: Callable[[], float] | None = None) -> dict[str, Any]:
    """Images/s of one .npy request of 1024 images (sequential requests on one connection), and
    the answer's Content-Type: the body asks for ``.npy`` back and takes what it gets. ``raw``
    (seconds of one raw ONNX Runtime pass over 1024 images, in this process, the server idle)
    runs before every request: the two alternate, so the machine's drift over the minute hits
    both sides alike, and each side's median is kept."""
    port = int(server.url.rsplit(":", 1)[1])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    for _ in range(2):
        status, data, headers = post(port, "/v1/models/mnist-cnn/predict", body, conn)
        answered = dict(_lower(headers)).get("content-type", "?").split(";")[0]
        rows = (len(np.load(io.BytesIO(data), allow_pickle=False)) if answered == NPY
                else len(json.loads(data).get("predictions", ())) if status == 200 else 0)
        if status != 200 or rows != 1024:
            raise RuntimeError(f"npy 1024 → {status} {answered}, {rows} rows: {data[:300]!r}")
    times, raw_times = [], []
    for _ in range(repeats):
        if raw is not None:
            raw_times.append(raw())
        t0 = time.perf_counter()
        status, data, _ = post(port, "/v1/models/mnist-cnn/predict", body, conn)
        times.append(time.perf_counter() - t0)
        assert status == 200
    conn.close()
    best, median = min(times), float(np.median(times))
    out = {"images": 1024, "bytes": body.path.stat().st_size, "repeats": repeats,
           "response_type": answered, "response_bytes": len(data),
           "median_ms": median * 1000, "best_ms": best * 1000,
           "images_per_s": 1024 / median, "load_avg_1m": load_avg()}
    if raw_times:
        raw_median = float(np.median(raw_times))
        out.update(raw_median_ms=raw_median * 1000, raw_best_ms=min(raw_times) * 1000,
                   raw_images_per_s=1024 / raw_median)
    return out


def raw_pass(threads: int, run: int) -> Callable[[], float]:
    """Seconds of one raw ONNX Runtime pass of mnist-cnn over 1024 MNIST test images as
    consecutive runs of ``run`` images (the runtime measurement's best batch size), in a session
    opened as the server opens it (``threads`` intra-op threads): the raw side of the paired
    ``.npy`` comparison."""
    stored, runtime, _ = bench_runtime.open_model("mnist-cnn", threads)
    arch = stored.metadata.get("preprocessing", {}).get("architecture", {})
    images = bench_runtime.feeds_for("mnist-cnn", 1024, arch, {})["image"]
    feeds = [{"image": images[start:start + run]} for start in range(0, 1024, run)]
    for part in feeds[:2]:
        runtime.run(part)

    def once() -> float:
        t0 = time.perf_counter()
        for part in feeds:
            runtime.run(part)
        return time.perf_counter() - t0
    return once


def best_raw_batch(result: dict[str, Any], model: str) -> int:
    """The batch size of ``model``'s best raw samples/s in the run's runtime measurements."""
    points = _raw_points(result, model)
    return int(max(points, key=lambda p: p["samples_per_s"])["batch"]) if points else 64


def generation_check(server: Server, body: Body) -> str:
    """The generation request answers 200 with GEN_CHARS characters before it is timed."""
    port = int(server.url.rsplit(":", 1)[1])
    status, data, _ = post(port, "/v1/models/char-rnn/generate", body)
    text = json.loads(data).get("text", "") if status == 200 else ""
    if status != 200 or len(text) != GEN_CHARS:
        raise RuntimeError(f"char-rnn generate → {status}: {data[:300]!r}")
    return text


# ------------------------------------------------------------------------------------ profiling

def find_py_spy() -> str | None:
    for candidate in (BIN / "py-spy", shutil.which("py-spy")):
        if candidate and Path(candidate).exists():
            return str(candidate)
    return None


def profile(server: Server, body: Body, out_dir: Path, seconds: int = 10) -> dict[str, Any]:
    """py-spy samples the (first) Podium worker for ``seconds`` under concurrency-64 JSON load."""
    spy = find_py_spy()
    pids = server.worker_pids()
    if not spy or not pids:
        return {"skipped": "py-spy not installed" if not spy else "no worker process found"}
    raw = out_dir / "profile-json-c64.txt"
    load = subprocess.Popen(["hey", "-z", f"{seconds + 4}s", "-c", "64", "-m", "POST", "-T",
                             body.content_type, "-D", str(body.path),
                             f"{server.url}/v1/models/mnist-cnn/predict"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(2)
    spy_run = subprocess.run([spy, "record", "-p", str(pids[0]), "-d", str(seconds), "-r", "200",
                              "-f", "raw", "--threads", "-o", str(raw), "--nonblocking"],
                             capture_output=True, text=True)
    load.wait()
    if spy_run.returncode != 0 or not raw.exists():
        return {"skipped": f"py-spy failed: {spy_run.stderr[-500:]}"}
    return summarize_profile(raw, rate=200, seconds=seconds)


def _short(frame: str) -> str:
    """``func (path/to/module.py:12)`` → ``func (module.py)`` with the package kept readable."""
    match = re.match(r"(.*) \((.*?):(\d+)\)$", frame)
    if not match:
        return frame
    func, path = match.group(1), match.group(2)
    for marker in ("site-packages/", "lib/python3.11/", str(ROOT) + "/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{func} ({path})"


CATEGORIES = [  # the innermost frame that matches decides a sample's layer
    ("model (ONNX Runtime session.run)", ("onnxruntime",)),
    ("JSON parse/serialise (orjson)", ("orjson", "parse_json", "http.py)", "JSON.render")),
    ("Podium decode/encode (services/codecs.py)", ("services/codecs.py",)),
    ("Podium batcher", ("services/batcher.py",)),
    ("Podium rollout bookkeeping", ("services/rollout.py", "services/dataplane.py")),
    ("Podium handlers (services/*)", ("services/",)),
    ("Prometheus metrics", ("prometheus_client",)),
    ("BentoML middleware (context, timeout, metrics, tracing)", ("bentoml", "opentelemetry")),
    ("FastAPI/Starlette routing and middleware", ("fastapi", "starlette")),
    ("uvicorn/httptools HTTP protocol", ("uvicorn", "httptools", "h11")),
    ("asyncio event loop", ("asyncio", "uvloop")),
    ("threads / executor hand-off", ("threading", "concurrent/futures", "queue.py")),
]


def _layer(frames: list[str]) -> str:
    for frame in reversed(frames):
        for name, markers in CATEGORIES:
            if any(m in frame for m in markers):
                return name
    return "other"


def summarize_profile(raw: Path, top: int = 15, rate: int = 200, seconds: float = 10) -> dict[str, Any]:
    """Per-thread busy share, and for the event-loop thread (MainThread) the layers and
    functions it spends its time in (py-spy ``--threads`` raw output, idle samples excluded)."""
    threads: Counter[str] = Counter()
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    layers: Counter[str] = Counter()
    main = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        head, _, rest = stack.partition(";")
        thread = head.split(": ", 1)[1] if ": " in head else head
        group = "inference threads (infer-*)" if thread.startswith("infer-") else thread
        threads[group] += n
        if thread != "MainThread":
            continue
        frames = [_short(f) for f in rest.split(";") if f]
        if not frames:
            continue
        main += n
        self_time[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
        layers[_layer(frames)] += n

    def pct(counter: Counter[str], base: int) -> list[tuple[str, float]]:
        return [(k, round(100 * v / base, 1)) for k, v in counter.most_common(top)] if base else []

    full = rate * seconds  # samples of a thread busy the whole time
    return {"samples": sum(threads.values()), "main_samples": main, "raw": raw.name,
            "threads_busy": [(k, round(100 * v / full, 1)) for k, v in threads.most_common(8)],
            "layers": pct(layers, main), "self": pct(self_time, main),
            "inclusive": [(k, v) for k, v in pct(inclusive, main)
                          if not any(m in k for m in _ROOT_FRAMES)][:top]}


# The worker's own outermost frames, the same in every request sample: left out of the listing.
_ROOT_FRAMES = ("click/", "runpy", "Server.run", "asyncio_run", "Runner.run",
                "_bentoml_impl/worker/service.py")


# -------------------------------------------------------------------------------------- the run

class Progress:
    """Numbered log lines for the load points of the run."""

    def __init__(self, total: int) -> None:
        self.total, self.done = total, 0

    def point(self, label: str, point: dict[str, Any]) -> None:
        self.done += 1
        log(f"[{self.done:2d}/{self.total}] {label:34s} c={point['concurrency']:<3d} "
            f"{point['ok_rps']:8.0f} req/s  p50 {point['p50_ms']:6.1f} ms  p99 {point['p99_ms']:6.1f} ms"
            f"  errors {point['error_count']}  (load {point['load_avg_1m']:.2f})")


# A c=64 point of the JSON comparison is the best of this many runs, each with new connections:
# multi-worker servers sharing one listening socket (uvicorn --workers, BentoML) got anything from
# 32/32 to 64/0 of hey's connections per run, and a 64/0 run measures one worker. Best-of favours
# each server equally (Podium balances its own since balance_connections; the baselines do not).
BEST_OF = 3


def best_of(url: str, body: Body, concurrency: int, seconds: float, runs: int = BEST_OF
            ) -> dict[str, Any]:
    points = [hey(url, body, concurrency, seconds) for _ in range(runs)]
    best = max(points, key=lambda p: p["ok_rps"])
    return {**best, "best_of": runs, "runs_rps": [round(p["ok_rps"], 1) for p in points]}


def abba(urls: dict[str, str], body: Body | dict[str, Body], concurrency: int, seconds: float,
         rounds: int = 2, best: bool = False, warm_s: float = 2.0) -> dict[str, dict[str, Any]]:
    """``rounds`` rounds of A B B A: a drift over the runs (the machine warming, another process)
    weighs on both sides alike. Each side's figures are the medians of its runs: one run that
    lands badly on the cores (seen: a lone 7 % dip) does not decide a few-per-cent comparison;
    ``best``: each side's best run instead (a server sharing one listening socket over workers
    gets a different split of the connections every run — see ``BEST_OF``).
    ``body``: one for both sides, or each side's (by the names of ``urls``). First each side
    gets ``warm_s`` of the same load, not counted: a side measured right after its own sweep
    (the ceiling's) would otherwise meet one that has served nothing since its start."""
    a, b = urls
    bodies = body if isinstance(body, dict) else {a: body, b: body}
    if warm_s:
        for name in (a, b):
            hey(urls[name], bodies[name], concurrency, warm_s)
    runs: dict[str, list[dict[str, Any]]] = {a: [], b: []}
    for _ in range(rounds):
        for name in (a, b, b, a):
            runs[name].append(hey(urls[name], bodies[name], concurrency, seconds))
    out = {}
    for name, points in runs.items():
        if best:
            merged = dict(max(points, key=lambda p: p["ok_rps"]), best_of=len(points))
        else:
            merged = dict(points[-1])
            for key in ("ok_rps", "p50_ms", "p99_ms"):
                merged[key] = float(np.median([p[key] for p in points]))
        merged["runs_rps"] = [round(p["ok_rps"], 1) for p in points]
        out[name] = merged
    return out


# Request pairs per connection of ``paired_c1``: each new connection lands on a worker by the
# kernel's SO_REUSEPORT hash, so a side's sample spans its workers rather than one.
PAIRED_RECONNECT = 50


def paired_c1(urls: dict[str, str], body: Body, seconds: float, warm_s: float = 1.0,
              reconnect: int = PAIRED_RECONNECT) -> dict[str, Any]:
    """Two servers at c=1, interleaved request by request: one client sends the same request to
    A then B, then B then A, and so on, each side on its own kept-alive connection, timing each
    answer; every ``reconnect`` pairs both connections are opened anew. At c=1 both sides of the
    batching target run the same code (a request alone runs inline either way), and hey's runs of
    one side spread by up to a quarter on this machine (1,361–1,766 req/s over four 8 s runs,
    results/bench/NOTES.md): whole runs minutes apart compare the machine's moments, not the
    servers. Here both sides see the same moment. Per side: the requests, their mean, median and
    p99 latency and ``ok_rps`` = 1 / mean latency (the client's own time is in both sides:
    ``http.client`` costs more per request than hey, so these figures are lower than hey's);
    ``ratio`` = A's ``ok_rps`` / B's. A first ``warm_s`` of the same pairs is not counted."""
    from urllib.parse import urlsplit

    a, b = urls
    data = body.path.read_bytes()
    headers = request_headers(body)
    targets = {name: urlsplit(url) for name, url in urls.items()}
    conns: dict[str, http.client.HTTPConnection] = {}

    def ask(name: str) -> float:
        conn = conns.get(name)
        if conn is None:
            target = targets[name]
            conn = conns[name] = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
        started = time.perf_counter()
        conn.request("POST", targets[name].path, body=data, headers=headers)
        response = conn.getresponse()
        answer = response.read()
        took = time.perf_counter() - started
        if response.status != 200:
            raise RuntimeError(f"paired c=1: {urls[name]} answered {response.status}: {answer[:300]!r}")
        return took

    times: dict[str, list[float]] = {a: [], b: []}
    try:
        for counted, span in ((False, warm_s), (True, seconds)):
            end, pairs = time.monotonic() + span, 0
            while time.monotonic() < end:
                if pairs % reconnect == 0:
                    for conn in conns.values():
                        conn.close()
                    conns.clear()
                for name in ((a, b) if pairs % 2 == 0 else (b, a)):
                    took = ask(name)
                    if counted:
                        times[name].append(took)
                pairs += 1
    finally:
        for conn in conns.values():
            conn.close()
    out: dict[str, Any] = {}
    for name, samples in times.items():
        ms = np.asarray(samples) * 1000
        out[name] = {"requests": len(samples), "mean_ms": float(ms.mean()),
                     "p50_ms": float(np.median(ms)), "p99_ms": float(np.percentile(ms, 99)),
                     "ok_rps": 1000 / float(ms.mean())}
    out["ratio"] = out[a]["ok_rps"] / out[b]["ok_rps"]
    out.update(seconds=seconds, reconnect=reconnect, order=[a, b])
    return out


def sweep(url: str, body: Body, levels: tuple[int, ...], seconds: float, label: str,
          progress: Progress) -> dict[str, Any]:
    """A 1 s warm-up at c=16, then one point per concurrency level (c=64: the best of BEST_OF)."""
    hey(url, body, 16, 1)
    out = {}
    for c in levels:
        out[str(c)] = point = best_of(url, body, c, seconds) if c == 64 else hey(url, body, c, seconds)
        progress.point(label, point)
    return out


def uvicorn(name: str, app: str, workers: int, env: dict[str, str], work: Path, path: str,
            probe: tuple[str, bytes]) -> contextlib.AbstractContextManager:
    """A plain uvicorn server (uvloop, httptools, access log off) with ``workers`` workers."""
    port = free_port()
    argv = [str(BIN / "uvicorn"), app, "--host", "127.0.0.1", "--port", str(port), "--workers",
            str(workers), "--loop", "uvloop", "--http", "httptools", "--no-access-log",
            "--log-level", "warning"]
    return launch(name, argv, clean_env(env), work / f"{name}.log", path, port, probe=probe)


def baselines(result: dict[str, Any], bodies: dict[str, Body], workers: int, work: Path,
              seconds: float, progress: Progress, podium_url: str | None = None) -> None:
    """The parse ceiling and plain BentoML at Podium's worker count, the naive server at 1 and 2
    workers with Podium's runtime threads, all on the same JSON body, one at a time (Podium's
    servers idle meanwhile). With ``podium_url`` (the default server's mnist-cnn JSON route) the
    ceiling and naive targets are also measured paired (``ceiling_vs_podium``, and
    ``naive_vs_podium`` per naive worker count): A B B A twice at c=64 while both servers are up,
    each side's best run — the machine's speed drifted by up to a third within minutes on some
    days (results/bench/NOTES.md), and a baseline's row and Podium's were measured minutes apart
    (the 2026-12-02 03:11 run: Podium's row 2,967 req/s, its paired runs four minutes earlier
    3,137–3,922)."""
    from models.artifacts import get_version

    onnx = str(get_version("mnist-cnn").file("model.onnx"))
    body = bodies["json"]
    probe = (body.content_type, body.path.read_bytes())
    with uvicorn("ceiling", "benchmarks.ceiling_app:app", workers, {}, work, "/parse", probe) as srv:
        result["ceiling"] = sweep(f"{srv.url}/parse", body, CONCURRENCY, seconds,
                                  f"ceiling, {workers} worker(s)", progress)
        result["ceiling"]["workers"] = workers
        if podium_url is not None:
            result["ceiling_vs_podium"] = points = abba(
                {"podium": podium_url, "ceiling": f"{srv.url}/parse"}, body, 64, seconds, best=True)
            for name, point in points.items():
                progress.point(f"{name} JSON c=64 (paired)", point)
    result["naive"] = {}
    for n in (1, 2):
        env = {"NAIVE_ONNX": onnx, "NAIVE_THREADS": str(result["runtime_threads"])}
        with uvicorn(f"naive-w{n}", "benchmarks.naive_server:app", n, env, work, "/predict",
                     probe) as srv:
            result["naive"][str(n)] = sweep(f"{srv.url}/predict", body, (1, 64), seconds,
                                            f"naive FastAPI+ORT, {n} worker(s)", progress)
            result["naive"][str(n)]["ready_s"] = srv.ready_s
            if podium_url is not None:
                result.setdefault("naive_vs_podium", {})[str(n)] = points = abba(
                    {"podium": podium_url, "naive": f"{srv.url}/predict"}, body, 64, seconds,
                    best=True)
                for name, point in points.items():
                    progress.point(f"{name} JSON c=64 (paired, naive at {n} worker(s))", point)
    port = free_port()
    env = clean_env({"BENTOML_HOME": str(work / "home-plain"), "BENCH_ONNX": onnx,
                     "BENCH_WORKERS": str(workers)})
    (work / "home-plain").mkdir()
    with launch("plain-bentoml", [str(BIN / "bentoml"), "serve", "benchmarks.plain_bentoml:PlainOnnx",
                                  "--host", "127.0.0.1", "--port", str(port)], env,
                work / "plain-bentoml.log", "/readyz", port) as plain:
        status, data, _ = post(port, "/predict", body)
        if status != 200:
            raise RuntimeError(f"plain BentoML → {status}: {data[:300]!r}")
        result["plain_bentoml"] = sweep(f"{plain.url}/predict", body, (1, 64), seconds,
                                        f"plain BentoML, {workers} worker(s)", progress)
        result["plain_bentoml"].update(ready_s=plain.ready_s, workers=workers)


def podium_rows(result: dict[str, Any], servers: dict[str, Server], bodies: dict[str, Body],
                seconds: float, progress: Progress) -> None:
    """Every row, batching on vs off; the order alternates per point to cancel drift. At c=1 (the
    "never slower" target, a few per cent) each side runs twice, A B B A, medians, for the table,
    and the target is judged on ``paired_c1`` (``result["c1_paired"]``, 2 × ``seconds`` a row);
    the JSON comparison's c=64 point is the best of BEST_OF on each side, as for the baselines."""
    for model, form in ROWS:
        key = f"{model}/{form}"
        url = {name: server.url + path_for(model, form) for name, server in servers.items()}
        for server in servers.values():  # warm-up of this route on both servers
            hey(server.url + path_for(model, form), bodies[form], 16, 1)
        for i, c in enumerate(concurrencies(model, form)):
            order = ("on", "off") if i % 2 == 0 else ("off", "on")
            if c == 1:
                points = abba({name: url[name] for name in order}, bodies[form], c, seconds,
                              rounds=1)
                paired = result.setdefault("c1_paired", {})[key] = paired_c1(
                    {"on": url["on"], "off": url["off"]}, bodies[form], 2 * seconds)
                log(f"{model} {form} c=1 paired per request: on {paired['on']['ok_rps']:.0f} vs off "
                    f"{paired['off']['ok_rps']:.0f} req/s ({paired['on']['requests']} requests "
                    f"each) = {paired['ratio']:.3f}")
            elif c == 64 and key == "mnist-cnn/json":
                points = {name: best_of(url[name], bodies[form], c, seconds) for name in order}
            else:
                points = {name: hey(url[name], bodies[form], c, seconds) for name in order}
            for name in order:
                result["podium"][name].setdefault(key, {})[str(c)] = points[name]
                progress.point(f"{model} {form} batching {name}", points[name])


def oip_vs_json(result: dict[str, Any], server: Server, bodies: dict[str, Body], seconds: float,
                progress: Progress) -> None:
    """The OIP-binary-vs-JSON target (c=16, default server) as one paired comparison, A B B A
    twice, medians: its two sides were single points of two rows measured minutes apart, and
    on this machine one point can move ±10 % (results/bench/NOTES.md)."""
    urls = {form: server.url + path_for("mnist-cnn", form) for form in ("oip", "json")}
    result["oip_vs_json"] = points = abba(urls, {form: bodies[form] for form in urls}, 16, seconds)
    for form, point in points.items():
        progress.point(f"mnist-cnn {FORM_NAMES[form]} c=16 (paired)", point)


def textgen(result: dict[str, Any], server: Server, body: Body, seconds: float,
            progress: Progress) -> None:
    """char-rnn characters/s at 1, 8, 32, 64 concurrent generations of GEN_CHARS characters."""
    result["textgen"] = {"chars_per_request": GEN_CHARS, "text": generation_check(server, body),
                         "points": {}}
    url = f"{server.url}/v1/models/char-rnn/generate"
    hey(url, body, 8, 1)
    for c in GEN_CONCURRENCY:
        point = hey(url, body, c, seconds)
        point["chars_per_s"] = point["ok"] * GEN_CHARS / point["total_s"] if point["total_s"] else 0.0
        result["textgen"]["points"][str(c)] = point
        progress.point(f"char-rnn generate ({point['chars_per_s']:,.0f} chars/s)", point)


def workers_threads(result: dict[str, Any], store: Path, bodies: dict[str, Body], work: Path,
                    seconds: float, progress: Progress) -> None:
    """Podium (batching on) at every (workers, runtime threads) pair, mnist-cnn JSON; the servers
    run side by side and take turns per point."""
    result["matrix"] = {}
    path = path_for("mnist-cnn", "json")
    with contextlib.ExitStack() as stack:
        servers = {}
        for w, t in matrix_configs():
            name = f"w{w}-t{t}"
            copy_store(store, work / f"home-{name}")
            servers[name] = stack.enter_context(podium(
                f"podium-{name}", work / f"home-{name}", work, True,
                {"PODIUM_WORKERS": str(w), "PODIUM_INTRA_OP_THREADS": str(t)}))
            result["matrix"][name] = {"workers": w, "threads": t, "ready_s": servers[name].ready_s,
                                      "worker_pids": len(servers[name].worker_pids())}
            hey(servers[name].url + path, bodies["json"], 16, 1)
        for c in MATRIX_CONCURRENCY:
            for name, server in servers.items():
                result["matrix"][name][str(c)] = point = hey(server.url + path, bodies["json"], c,
                                                             seconds)
                progress.point(f"workers×threads {name}", point)


def podium_threads() -> int:
    """The ONNX Runtime threads per model of Podium's default configuration, as the servers see
    it: computed in a child with the servers' environment (no PODIUM_* settings, no config file)."""
    done = subprocess.run([sys.executable, "-c", "from services.config import ServeConfig; "
                           "print(ServeConfig().runtime_threads())"], cwd=ROOT, env=clean_env({}),
                          capture_output=True, text=True, check=True)
    return int(done.stdout.strip().splitlines()[-1])


def run(args: argparse.Namespace) -> dict[str, Any]:
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    store = Path(os.environ.get("BENTOML_HOME", Path.home() / "bentoml"))
    (ROOT / "results" / "tmp").mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-serve-", dir=ROOT / "results" / "tmp"))
    seconds = args.seconds
    threads = podium_threads()
    total = (len(CONCURRENCY) + 2 + 2 * (2 + 2) + 2 + 2 * sum(len(concurrencies(*row)) for row in ROWS)
             + 2 + len(GEN_CONCURRENCY) + len(matrix_configs()) * len(MATRIX_CONCURRENCY))
    progress = Progress(total)
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine(),
        "command": REPRODUCE, "argv": sys.argv[1:], "seconds_per_point": seconds,
        "load_avg_start": list(os.getloadavg()), "store": str(store), "targets": TARGETS,
        "runtime_threads": threads}
    log(f"serving benchmark: {total} load points of {seconds:g} s; work dir {work}")
    log(f"reproduce with: {REPRODUCE}   (python -m benchmarks.bench_serve {' '.join(sys.argv[1:])})")
    wait_for_quiet(args.max_load, args.load_wait)
    result["load_avg_measuring"] = load_avg()
    result["busy_processes_start"] = busy_processes()
    result["code"] = code_revision()
    measuring = time.monotonic()
    bodies, _, label = make_bodies(work)
    result["bodies"] = {k: {"bytes": b.path.stat().st_size, "content_type": b.content_type}
                        for k, b in bodies.items()}

    log(f"1/7 raw in-process ONNX Runtime, {threads} thread(s) per session (Podium's default)")
    result["runtime"] = bench_runtime.run(MODELS, seconds=args.runtime_seconds,
                                          extra={"mnist-cnn": (1024,)}, threads=threads)
    (out_dir / "runtime.json").write_text(json.dumps(
        dict(result["runtime"], date=result["date"], command=REPRODUCE), indent=1) + "\n")

    log("2/7 Podium: bentoml serve, default configuration (batching on) and batching off")
    result["podium"] = {"on": {}, "off": {}}
    with contextlib.ExitStack() as stack:
        servers = {}
        for name in ("on", "off"):
            copy_store(store, work / f"home-{name}")
            servers[name] = server = stack.enter_context(podium(
                f"podium-batching-{name}", work / f"home-{name}", work, name == "on"))
            models = served_models(server)
            result["podium"][name].update(ready_s=server.ready_s, models=models,
                                          workers=len(server.worker_pids()) or 1,
                                          checks=check_answers(server, bodies, label))
            log(f"podium batching {name}: ready in {server.ready_s:.2f} s, "
                f"{result['podium'][name]['workers']} worker(s), {len(models)} models")
        result["ready_s"] = servers["on"].ready_s
        workers = result["podium"]["on"]["workers"]
        log(f"3/7 baselines: parse ceiling and plain BentoML at {workers} worker(s), naive at 1 and 2")
        baselines(result, bodies, workers, work, seconds, progress,
                  podium_url=servers["on"].url + path_for("mnist-cnn", "json"))
        log("4/7 single-image requests, batching on vs off")
        podium_rows(result, servers, bodies, seconds, progress)
        oip_vs_json(result, servers["on"], bodies, seconds, progress)
        log(f"5/7 char-rnn: {', '.join(map(str, GEN_CONCURRENCY))} concurrent generations")
        textgen(result, servers["on"], bodies["gen"], seconds, progress)
        log("6/7 one .npy request of 1024 images, .npy answer asked for (mnist-cnn, default)")
        # Raw ONNX Runtime once more right beside it (the servers idle): the run's best raw batch
        # size, and the best raw figure the report also gives.
        result["runtime_adjacent"] = bench_runtime.run(
            ("mnist-cnn",), batches=(256, 1024), seconds=args.runtime_seconds, threads=threads,
            progress=False)
        # ... and a raw pass over the same 1024 images before every request (paired, medians).
        run = min(1024, best_raw_batch(result, "mnist-cnn"))
        raw = raw_pass(threads, run)
        for key, form in (("npy1024", "npy1024"), ("npy1024_uint8", "npy1024u8")):
            result[key] = dict(npy_batch(servers["on"], bodies[form], args.npy_repeats, raw),
                               raw_batch=run)
        log(f"npy 1024 float32: {result['npy1024']['images_per_s']:.0f} images/s, answered "
            f"{result['npy1024']['response_type']}; uint8: "
            f"{result['npy1024_uint8']['images_per_s']:.0f} images/s")
        if args.profile == "always" or (args.profile == "auto" and missed(judge(result))):
            log("profiling the default server's worker: py-spy, 10 s under c=64 JSON load")
            result["profile"] = profile(servers["on"], bodies["json"], out_dir)
            if "skipped" in result["profile"]:
                log(f"profile skipped: {result['profile']['skipped']}")
    log("7/7 workers × runtime threads (batching on, mnist-cnn JSON)")
    workers_threads(result, store, bodies, work, seconds, progress)
    result["load_avg_end"] = list(os.getloadavg())
    result["busy_processes_end"] = busy_processes()
    result["measure_s"] = round(time.monotonic() - measuring, 1)
    result["verdicts"] = judge(result)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return result


# ---------------------------------------------------------------------------------- judgement

def _p(result: dict[str, Any], server: str, key: str, c: int) -> dict[str, Any] | None:
    return result.get("podium", {}).get(server, {}).get(key, {}).get(str(c))


def npy_raw(result: dict[str, Any], npy: dict[str, Any]) -> tuple[float, bool]:
    """The raw images/s a ``.npy`` 1,024-image figure is judged against, and whether it was
    paired: the raw passes that alternated with its requests when the run made them, else
    (older runs) the best raw figure of the run."""
    if npy.get("raw_images_per_s"):
        return npy["raw_images_per_s"], True
    return raw_best(result, "mnist-cnn"), False


def _raw_points(result: dict[str, Any], model: str) -> list[dict[str, Any]]:
    """``model``'s raw points (one per batch size) of both runtime measurements."""
    return [p for key in ("runtime", "runtime_adjacent")
            for p in result.get(key, {}).get("models", {}).get(model, {}).get("points", [])]


def raw_best(result: dict[str, Any], model: str) -> float:
    """The best raw samples/s of ``model`` at any batch, in either runtime measurement."""
    return max((p["samples_per_s"] for p in _raw_points(result, model)), default=float("nan"))


def best_naive(result: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """The naive server's best worker count at c=64: (workers, point)."""
    points = [(n, runs["64"]) for n, runs in result.get("naive", {}).items() if "64" in runs]
    return max(points, key=lambda item: item[1]["ok_rps"]) if points else None


def best_matrix(result: dict[str, Any]) -> str | None:
    configs = {k: v for k, v in result.get("matrix", {}).items() if "64" in v}
    return max(configs, key=lambda k: configs[k]["64"]["ok_rps"]) if configs else None


def _row_name(key: str) -> str:
    """``model/form`` (a row's key) as the report names the row."""
    model, form = key.split("/", 1)
    return f"{model} {FORM_NAMES[form]}"


def worst_on_off(result: dict[str, Any], c: int) -> tuple[float, str] | None:
    """The lowest batching on/off req/s ratio over the rows at ``c``, and its row; at c=1 the
    paired per-request measurement (``paired_c1``) when the run made one."""
    paired = result.get("c1_paired") if c == 1 else None
    if paired:
        return min((p["ratio"], _row_name(key)) for key, p in paired.items())
    ratios = []
    for model, form in ROWS:
        key = f"{model}/{form}"
        on, off = _p(result, "on", key, c), _p(result, "off", key, c)
        if on and off and off["ok_rps"]:
            ratios.append((on["ok_rps"] / off["ok_rps"], _row_name(key)))
    return min(ratios) if ratios else None


def textgen_factor(result: dict[str, Any], c: int) -> float | None:
    points = result.get("textgen", {}).get("points", {})
    if "1" in points and str(c) in points and points["1"]["chars_per_s"]:
        return points[str(c)]["chars_per_s"] / points["1"]["chars_per_s"]
    return None


def oip_json_points(result: dict[str, Any]) -> tuple[dict[str, Any] | None, dict[str, Any] | None, bool]:
    """The OIP binary and JSON points the c=16 comparison uses: the paired measurement when the
    run made one (``oip_vs_json``), else the two rows' c=16 points; and whether it was paired."""
    paired = result.get("oip_vs_json")
    if paired:
        return paired.get("oip"), paired.get("json"), True
    return _p(result, "on", "mnist-cnn/oip", 16), _p(result, "on", "mnist-cnn/json", 16), False


def ceiling_points(result: dict[str, Any]) -> tuple[dict[str, Any] | None, dict[str, Any] | None,
                                                     bool]:
    """Podium's and the ceiling's points the ceiling target uses: the paired measurement when
    the run made one (``ceiling_vs_podium``), else the two rows' c=64 points; and whether it was
    paired."""
    paired = result.get("ceiling_vs_podium")
    if paired:
        return paired.get("podium"), paired.get("ceiling"), True
    return _p(result, "on", "mnist-cnn/json", 64), result.get("ceiling", {}).get("64"), False


def naive_points(result: dict[str, Any]) -> tuple[dict[str, Any] | None, dict[str, Any] | None,
                                                   str | None, bool]:
    """Podium's point, the naive server's point and its worker count the naive target uses, and
    whether they were paired: when the run paired Podium with the naive server at each worker
    count (``naive_vs_podium``), the pairing with the lower Podium/naive ratio — the naive server
    at its best against Podium at the same moment; else Podium's row and the naive server's best
    row at c=64 (measured minutes apart)."""
    paired = result.get("naive_vs_podium")
    if paired:
        n, pair = min(paired.items(), key=lambda item: item[1]["podium"]["ok_rps"]
                      / item[1]["naive"]["ok_rps"])
        return pair["podium"], pair["naive"], n, True
    naive = best_naive(result)
    return (_p(result, "on", "mnist-cnn/json", 64), naive[1] if naive else None,
            naive[0] if naive else None, False)


def missed(verdicts: list[dict[str, Any]]) -> bool:
    return any(v["met"] is False for v in verdicts)


def judge(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's "Done when" checks (``met`` True/False) and information (``met`` None)."""
    t = TARGETS
    v: list[dict[str, Any]] = []

    def add(target: str, measured: str, met: bool | None) -> None:
        v.append({"target": target, "measured": measured, "met": met})

    cnn = _p(result, "on", "mnist-cnn/json", 64)
    vs_naive, naive, naive_workers, naive_paired = naive_points(result)
    if vs_naive and naive:
        ratio = vs_naive["ok_rps"] / naive["ok_rps"]
        add(f"mnist-cnn JSON c=64, Podium default ≥ {t['naive_factor']}× the naive FastAPI+ORT "
            f"server at its best worker count", f"{vs_naive['ok_rps']:,.0f} vs {naive['ok_rps']:,.0f} "
            f"req/s ({naive_workers} worker(s)) = {ratio:.2f}×"
            + (" (paired: A B B A ×2, best run of each; the lower of the two worker counts' "
               "ratios)" if naive_paired else ""), ratio >= t["naive_factor"])
    mine, theirs, paired = ceiling_points(result)
    if mine and theirs:
        frac = mine["ok_rps"] / theirs["ok_rps"]
        add(f"… ≥ {100 * t['ceiling_fraction']:.0f} % of the bare parse ceiling (same body, "
            f"{result['ceiling']['workers']} worker(s))",
            f"{100 * frac:.1f} % ({mine['ok_rps']:,.0f} of {theirs['ok_rps']:,.0f} req/s"
            + (", paired: A B B A ×2, best run of each)" if paired else ")"),
            frac >= t["ceiling_fraction"])
    if judged := (vs_naive if naive_paired else cnn):
        add(f"… p99 ≤ {t['json_p99_ms_c64']:g} ms", f"{judged['p99_ms']:.1f} ms"
            + (" (the Podium run the naive factor is read from)" if naive_paired else ""),
            judged["p99_ms"] <= t["json_p99_ms_c64"])
    if "npy1024" in result:
        n = result["npy1024"]
        raw, paired = npy_raw(result, n)
        frac = n["images_per_s"] / raw
        add(f".npy 1,024 images in, .npy out ≥ {100 * t['npy1024_fraction']:.0f} % of raw ONNX "
            f"Runtime images/s ({result['runtime_threads']} thread(s))",
            f"{n['images_per_s']:,.0f} images/s = {100 * frac:.0f} % of {raw:,.0f}"
            + (f" (paired: a raw pass as runs of {n['raw_batch']} before each request, medians)"
               if paired else "") + f"; answered {n['response_type']}",
            frac >= t["npy1024_fraction"] and n["response_type"] == NPY)
    factor = textgen_factor(result, 32)
    if factor is not None:
        points = result["textgen"]["points"]
        add(f"char-rnn: 32 concurrent generations ≥ {t['textgen_factor_c32']:g}× the chars/s of "
            f"one at a time", f"{points['32']['chars_per_s']:,.0f} vs {points['1']['chars_per_s']:,.0f} "
            f"chars/s = {factor:.1f}×", factor >= t["textgen_factor_c32"])
    if worst := worst_on_off(result, 1):
        add("batching on never slower than off at c=1 (every row; ±5 %)",
            f"worst on/off = {worst[0]:.2f} ({worst[1]})"
            + (" (paired: requests alternating between the two servers, mean latency)"
               if result.get("c1_paired") else ""), worst[0] >= t["batching_c1"])
    if worst := worst_on_off(result, 64):
        add("batching on faster than off at c=64 (every row)",
            f"worst on/off = {worst[0]:.2f} ({worst[1]})", worst[0] > 1.0)
    oip, js, paired = oip_json_points(result)
    if oip and js:
        ratio = oip["ok_rps"] / js["ok_rps"]
        add("OIP binary no slower than friendly JSON at c=16 (issue 4)",
            f"{oip['ok_rps']:,.0f} vs {js['ok_rps']:,.0f} req/s = {ratio:.2f}×"
            + (" (paired, A B B A ×2, medians)" if paired else ""), ratio >= t["oip_vs_json_c16"])
    if result.get("ready_s") is not None:
        n_models = len(result["podium"]["on"]["models"])
        add(f"ready ≤ {t['ready_s']:g} s, all six models loaded and warm",
            f"{result['ready_s']:.1f} s ({n_models} models)",
            result["ready_s"] <= t["ready_s"] and n_models == 6)
    row_naive = best_naive(result)
    if naive_paired and cnn and row_naive:
        add("mnist-cnn JSON c=64, Podium default vs the naive server from the rows, each measured on "
            "its own minutes apart (information)",
            f"{cnn['ok_rps']:,.0f} vs {row_naive[1]['ok_rps']:,.0f} req/s ({row_naive[0]} "
            f"worker(s)) = {cnn['ok_rps'] / row_naive[1]['ok_rps']:.2f}×, p99 {cnn['p99_ms']:.1f} ms",
            None)
    plain = result.get("plain_bentoml", {}).get("64")
    if plain and cnn:
        add("Podium vs plain BentoML batchable, same workers, JSON c=64 (information)",
            f"{cnn['ok_rps']:,.0f} vs {plain['ok_rps']:,.0f} req/s = "
            f"{cnn['ok_rps'] / plain['ok_rps']:.2f}×", None)
    if best := best_matrix(result):
        m = result["matrix"][best]
        add("workers × runtime threads: best at JSON c=64 (information)",
            f"{m['workers']} worker(s), {m['threads']} thread(s): {m['64']['ok_rps']:,.0f} req/s", None)
    return v


# ------------------------------------------------------------------------------------ reporting

def _xy(points: list[dict[str, Any]]) -> tuple[list[float], list[float]]:
    return [p["ok_rps"] for p in points], [p["p99_ms"] for p in points]


def _series(source: dict[str, Any]) -> list[dict[str, Any]]:
    return [source[str(c)] for c in CONCURRENCY if str(c) in source]


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2))
    ax = axes[0]
    naive = best_naive(result)
    lines = [("bare parse ceiling", result.get("ceiling", {}), "k--s"),
             (f"naive FastAPI+ORT, {naive[0] if naive else '?'} worker(s)",
              result.get("naive", {}).get(naive[0] if naive else "", {}), "g-.v"),
             ("plain BentoML batchable", result.get("plain_bentoml", {}), "m-.d"),
             ("Podium default (batching on)", result["podium"]["on"].get("mnist-cnn/json", {}), "C0-o"),
             ("Podium batching off", result["podium"]["off"].get("mnist-cnn/json", {}), "C0:x")]
    for label, source, style in lines:
        ax.plot(*_xy(_series(source)), style, label=label)
    for config in result.get("matrix", {}).values():
        ax.plot(*_xy([config[str(c)] for c in MATRIX_CONCURRENCY if str(c) in config]), "--^",
                alpha=0.6, label=f"Podium {config['workers']} worker(s), {config['threads']} thread(s)")
    ax.set_title("mnist-cnn, the same JSON body, one image per request")
    ax.set_xscale("log")
    ax2 = axes[1]
    for i, (model, form) in enumerate(ROWS):
        for name, style in (("on", "-o"), ("off", ":x")):
            pts = _series(result["podium"][name].get(f"{model}/{form}", {}))
            ax2.plot(*_xy(pts), style, color=f"C{i}",
                     label=f"{model} {FORM_NAMES[form]}, batching {name}")
    ax2.set_title("Podium, batching on vs off (c = 1, 64; mnist-cnn JSON/OIP also 16)")
    for a in (ax, ax2):
        a.set_xlabel("throughput (successful requests/s, log)")
        a.set_ylabel("p99 latency (ms, log)")
        a.set_yscale("log")
        a.set_xscale("log")
        a.grid(True, which="both", alpha=0.3)
        a.legend(fontsize=6.5)
    fig.suptitle(f"Podium serving benchmark, {result['date']}, commit {result['code']['commit']}, "
                 f"{result['machine']['cpus']} CPUs shared by client (hey) and server", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_textgen(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = result["textgen"]["points"]
    levels = [c for c in GEN_CONCURRENCY if str(c) in points]
    rates = [points[str(c)]["chars_per_s"] for c in levels]
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    ax.plot(levels, rates, "-o", label="Podium, batching on (default)")
    ax.axhline(TARGETS["textgen_factor_c32"] * points["1"]["chars_per_s"], color="r", ls="--",
               label=f"target at c=32: {TARGETS['textgen_factor_c32']:g}× one at a time")
    ax.set_xscale("log", base=2)
    ax.set_xticks(levels, [str(c) for c in levels])
    ax.set_xlabel("concurrent generations")
    ax.set_ylabel("characters generated per second")
    ax.set_title(f"char-rnn, {GEN_CHARS} characters per request, {result['date']}", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fmt(point: dict[str, Any] | None) -> str:
    if not point:
        return "– | – | –"
    err = f" ({point['error_count']} err)" if point.get("error_count") else ""
    return f"{point['ok_rps']:,.0f}{err} | {point['p50_ms']:.1f} | {point['p99_ms']:.1f}"


def _header(result: dict[str, Any]) -> list[str]:
    m, la, code = result["machine"], result["load_avg_start"], result.get("code", {})
    verdict = "**FAIL**: at least one target missed" if missed(result["verdicts"]) else "**PASS**"
    return [
        "# Serving benchmark results", "",
        f"- **Verdict:** {verdict}",
        f"- **Command:** `{result['command']}` (from the repository root, over the models in "
        f"`$BENTOML_HOME`, default `~/bentoml`; `BENCH_SECONDS={result['seconds_per_point']:g}` "
        f"seconds per point; arguments: `{' '.join(result['argv'])}`)",
        f"- **Date:** {result['date']}",
        f"- **Code measured:** commit `{code.get('commit', '?')}`"
        + (f", with uncommitted changes to {', '.join(code['dirty'])}" if code.get("dirty")
           else ", clean working tree"),
        f"- **Machine:** {m['cpu']}, {m['cpus']} CPUs, {m['memory']} RAM, {m['os']}; Python "
        f"{m['python']}, BentoML {m['bentoml']}, ONNX Runtime {m['onnxruntime']} (CPU provider)",
        f"- **Load average (1/5/15 min) at start:** {la[0]:.2f} / {la[1]:.2f} / {la[2]:.2f}; when "
        f"measuring began: {result['load_avg_measuring']:.2f}; at the end: "
        f"{result['load_avg_end'][0]:.2f} (the benchmark itself keeps the cores busy, so each "
        f"row's 1-minute figure includes its own previous point)",
        f"- **Other processes busy on the machine** (≥ 15 % of a core, sampled 2 s) at the start: "
        f"{'; '.join(result.get('busy_processes_start') or ['none'])}; at the end: "
        f"{'; '.join(result.get('busy_processes_end') or ['none'])}",
        "- **Load generator:** `hey -z <s> -c <c>`, keep-alive, on the same cores as the servers; "
        "req/s counts successful (200) responses only. Podium: `bentoml serve "
        "services.service:Podium` with default settings unless a row names one "
        f"({result['podium']['on']['workers']} worker(s), {result['runtime_threads']} ONNX Runtime "
        "thread(s) per model), one `BENTOML_HOME` per server.",
        f"- **Repetitions:** every c=64 point of the mnist-cnn JSON comparison (ceiling, naive, plain "
        f"BentoML, Podium on and off) is the best of {BEST_OF} runs, each with new connections "
        "(servers sharing one listening socket split a client's connections unevenly, up to 64/0, "
        "run by run; `runs_rps` in serve.json); each c=1 batching on/off point is the median of two "
        "runs per side, in the order A B B A, and the c=1 target is judged paired: one client "
        "alternating requests between the two servers (A B, B A, ...; new connections every "
        f"{PAIRED_RECONNECT} pairs), each side's mean latency (`c1_paired` in serve.json); "
        "the parse-ceiling and naive targets are Podium and that server paired (both up, each "
        "first warmed by 2 s of the same load, not counted, then A B B A twice at c=64, each "
        "side's best of its four runs; the naive server so at 1 and at 2 workers, the lower "
        "ratio judged, the p99 target read from that Podium run); OIP vs JSON likewise, medians; "
        "each `.npy` 1,024-image request follows a raw ONNX Runtime pass over the same images "
        "(medians of both).",
        "- **Bodies** (one real MNIST test image): JSON `{\"instances\": [[784 floats]]}` "
        f"({result['bodies']['json']['bytes']} B), `.npy` float32 [1,1,28,28] "
        f"({result['bodies']['npy']['bytes']} B), PNG 28×28 ({result['bodies']['png']['bytes']} B), "
        f"OIP binary FP32 [1,1,28,28] + JSON header, binary outputs ({result['bodies']['oip']['bytes']} B).",
        f"- **Measuring took** {result.get('measure_s', 0) / 60:.1f} min.",
        "- Raw data: `serve.json`, `runtime.json`; plots: `latency_throughput.png`, "
        "`textgen_throughput.png`.",
        "", "## Targets", "", "| target | measured | met |", "|---|---|---|"]


def _section_baselines(result: dict[str, Any]) -> list[str]:
    workers = result["podium"]["on"]["workers"]
    lines = ["", "## mnist-cnn, the same JSON body: baselines vs Podium", "",
             "| server | workers | c | req/s | p50 ms | p99 ms |", "|---|---:|---:|---:|---:|---:|"]
    rows = [("bare Starlette parse into float32 (ceiling)", result["ceiling"]["workers"],
             result["ceiling"]),
            *[("naive FastAPI + ONNX Runtime, no batching", n, pts)
              for n, pts in sorted(result.get("naive", {}).items())],
            ("plain BentoML 1.4 `batchable=True`, access log off, route untraced",
             result["plain_bentoml"]["workers"], result["plain_bentoml"]),
            ("**Podium, default configuration**", workers, result["podium"]["on"]["mnist-cnn/json"]),
            ("Podium, batching off", result["podium"]["off"]["workers"],
             result["podium"]["off"]["mnist-cnn/json"])]
    for label, n, source in rows:
        for c in CONCURRENCY:
            if str(c) in source:
                lines.append(f"| {label} | {n} | {c} | {_fmt(source[str(c)])} |")
    return lines


def _section_matrix(result: dict[str, Any]) -> list[str]:
    best = best_matrix(result)
    if not best:
        return []
    lines = ["", "## Workers × ONNX Runtime threads (Podium, batching on, mnist-cnn JSON)", "",
             f"Same run; the servers side by side, taking turns per point; {os.cpu_count()} cores "
             "shared with the client.", "",
             "| workers | threads | c=16 req/s | p99 ms | c=64 req/s | p50 ms | p99 ms |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for name, m in result["matrix"].items():
        a, b = m.get("16"), m.get("64")
        mark = " (best)" if name == best else ""
        lines.append(f"| {m['workers']} | {m['threads']}{mark} | {a['ok_rps']:,.0f} | "
                     f"{a['p99_ms']:.1f} | {_fmt(b)} |")
    return lines


def _section_rows(result: dict[str, Any]) -> list[str]:
    lines = ["", "## Podium, one image per request: batching on vs off", "",
             "| model | input | c | on req/s | on p50 ms | on p99 ms | off req/s | off p50 ms "
             "| off p99 ms | on/off | load 1m |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for model, form in ROWS:
        for c in concurrencies(model, form):
            on, off = _p(result, "on", f"{model}/{form}", c), _p(result, "off", f"{model}/{form}", c)
            ratio = f"{on['ok_rps'] / off['ok_rps']:.2f}" if on and off and off["ok_rps"] else "–"
            load = f"{on['load_avg_1m']:.1f}/{off['load_avg_1m']:.1f}" if on and off else "–"
            lines.append(f"| {model} | {FORM_NAMES[form]} | {c} | {_fmt(on)} | {_fmt(off)} | "
                         f"{ratio} | {load} |")
    return lines


def _section_c1_paired(result: dict[str, Any]) -> list[str]:
    paired = result.get("c1_paired")
    if not paired:
        return []
    lines = ["", "## Batching on vs off at c=1, paired per request", "",
             f"One client (`http.client`, keep-alive) alternates the same request between the two "
             f"servers — on, off, then off, on — for {next(iter(paired.values()))['seconds']:g} s a "
             f"row after 1 s not counted, with new connections every {PAIRED_RECONNECT} pairs (so "
             "each side's sample spans its workers); req/s = 1 / mean latency. The client's own "
             "time is in both sides (more than hey's: these figures are lower than the table's).",
             "", "| model | input | requests each | on req/s | on p50 ms | on p99 ms | off req/s "
             "| off p50 ms | off p99 ms | on/off |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for key, p in paired.items():
        on, off = p["on"], p["off"]
        model, form = key.split("/", 1)
        lines.append(f"| {model} | {FORM_NAMES[form]} | {on['requests']:,} | {on['ok_rps']:,.0f} | "
                     f"{on['p50_ms']:.2f} | {on['p99_ms']:.2f} | {off['ok_rps']:,.0f} | "
                     f"{off['p50_ms']:.2f} | {off['p99_ms']:.2f} | {p['ratio']:.3f} |")
    return lines


def _section_textgen(result: dict[str, Any]) -> list[str]:
    tg = result["textgen"]
    lines = ["", "## char-rnn generation throughput (Podium default, batching on)", "",
             f"Each request generates {tg['chars_per_request']} characters (fixed prompt and seed); "
             "characters/s = successful requests × characters ÷ seconds.", "",
             "| concurrent generations | chars/s | × one at a time | req/s | p50 ms | p99 ms |",
             "|---:|---:|---:|---:|---:|---:|"]
    for c in GEN_CONCURRENCY:
        if point := tg["points"].get(str(c)):
            lines.append(f"| {c} | {point['chars_per_s']:,.0f} | {textgen_factor(result, c):.1f} | "
                         f"{_fmt(point)} |")
    return lines


def _section_npy(result: dict[str, Any]) -> list[str]:
    n, n8 = result["npy1024"], result["npy1024_uint8"]
    lines = ["", "## One `.npy` request of 1024 images (mnist-cnn, default configuration)", "",
             f"Sent with `Accept: {NPY}`; the answers came back as `{n['response_type']}` "
             f"({n['response_bytes']:,} B).", ""]
    for name, point in ((f"float32 [1024,1,28,28] ({n['bytes'] / 1e6:.1f} MB)", n),
                        (f"uint8 [1024,28,28] ({n8['bytes'] / 1e6:.1f} MB)", n8)):
        raw, paired = npy_raw(result, point)
        lines.append(
            f"- {name}: median {point['median_ms']:.1f} ms → **{point['images_per_s']:,.0f} "
            f"images/s = {100 * point['images_per_s'] / raw:.0f} %** of raw ONNX Runtime "
            + (f"({raw:,.0f} images/s: a raw pass over the same 1024 images as runs of "
               f"{point['raw_batch']}, {result['runtime_threads']} thread(s), in the benchmark's "
               f"process before each request, median {point['raw_median_ms']:.1f} ms)"
               if paired else
               f"({raw:,.0f} samples/s, {result['runtime_threads']} thread(s), same run: the better "
               "of the run's start and right before this request)"))
    best = raw_best(result, "mnist-cnn")
    lines.append(f"- the run's best raw figure, any batch: {best:,.0f} samples/s (float32: "
                 f"{100 * n['images_per_s'] / best:.0f} % of it)")
    return lines


def _section_profile(result: dict[str, Any]) -> list[str]:
    prof = result.get("profile")
    if not prof:
        return []
    if "skipped" in prof:
        return ["", f"Profile skipped: {prof['skipped']}."]
    lines = ["", f"## Profile: py-spy, default server's worker, 10 s under c=64 JSON load "
                 f"(`{prof['raw']}`)", "",
             "Busy share of each thread (100 % = on CPU or runnable the whole 10 s; waiting for "
             "the GIL counts as busy):", "", "| thread | busy % |", "|---|---:|"]
    lines += [f"| {k} | {v} |" for k, v in prof["threads_busy"]]
    lines += ["", "The event-loop thread (MainThread), by layer (the innermost recognised frame of "
                  "each sample):", "", "| layer | % of its samples |", "|---|---:|"]
    lines += [f"| {k} | {v} |" for k, v in prof["layers"]]
    lines += ["", "Event-loop thread, top functions by self time:", "", "| function | % |", "|---|---:|"]
    lines += [f"| `{k}` | {v} |" for k, v in prof["self"]]
    lines += ["", "Event-loop thread, inclusive (below the server's own frames):", "",
              "| function | % |", "|---|---:|"]
    lines += [f"| `{k}` | {v} |" for k, v in prof["inclusive"]]
    return lines


def _section_ceiling(result: dict[str, Any]) -> list[str]:
    mine, theirs, paired = ceiling_points(result)
    if not (mine and theirs and paired):
        return []
    return ["", "## Podium vs the parse ceiling, paired (mnist-cnn JSON, c=64)", "",
            f"Both servers up, each warmed by 2 s of the load, then A B B A twice, each side's "
            f"best run (runs: Podium "
            f"{mine['runs_rps']}, ceiling {theirs['runs_rps']} req/s): Podium "
            f"{mine['ok_rps']:,.0f} req/s (p99 {mine['p99_ms']:.1f} ms), ceiling "
            f"{theirs['ok_rps']:,.0f} req/s (p99 {theirs['p99_ms']:.1f} ms) = "
            f"{100 * mine['ok_rps'] / theirs['ok_rps']:.1f} %. The rows above measured each "
            f"server on its own, minutes apart."]


def _section_naive(result: dict[str, Any]) -> list[str]:
    paired = result.get("naive_vs_podium")
    if not paired:
        return []
    lines = ["", "## Podium vs the naive server, paired (mnist-cnn JSON, c=64)", "",
             "Both servers up, each warmed by 2 s of the load, then A B B A twice, each side's best "
             "run; once per naive worker count. The rows above measured each server on its own, "
             "minutes apart.", "",
             "| naive workers | Podium req/s (runs) | Podium p99 ms | naive req/s (runs) | naive p99 ms "
             "| Podium / naive |", "|---:|---|---:|---|---:|---:|"]
    for n, pair in sorted(paired.items()):
        mine, theirs = pair["podium"], pair["naive"]
        lines.append(f"| {n} | {mine['ok_rps']:,.0f} ({mine['runs_rps']}) | {mine['p99_ms']:.1f} | "
                     f"{theirs['ok_rps']:,.0f} ({theirs['runs_rps']}) | {theirs['p99_ms']:.1f} | "
                     f"{mine['ok_rps'] / theirs['ok_rps']:.2f}× |")
    return lines


def report(result: dict[str, Any]) -> str:
    lines = _header(result)
    for v in result["verdicts"]:
        met = "–" if v["met"] is None else ("yes" if v["met"] else "**no**")
        lines.append(f"| {v['target']} | {v['measured']} | {met} |")
    cnn1024 = bench_runtime.samples_per_s(result["runtime"], "mnist-cnn", 1024) or 0
    lines += ["", f"## Raw ONNX Runtime, in process, {result['runtime_threads']} thread(s) per "
                  "session (samples/s)", "", bench_runtime.table(result["runtime"]), "",
              "char-rnn: one recurrent step (`tokens` [B,1] with its state), batch = sequences. "
              f"mnist-cnn at batch 1024: {cnn1024:,.0f} samples/s."]
    lines += _section_baselines(result) + _section_matrix(result) + _section_rows(result)
    lines += _section_c1_paired(result) + _section_ceiling(result) + _section_naive(result)
    oip, js, paired = oip_json_points(result)
    if oip and js:
        how = (f"Measured side by side on the default server, each form warmed by 2 s, then A B B "
               f"A twice, medians (runs: OIP "
               f"{oip['runs_rps']}, JSON {js['runs_rps']} req/s). " if paired else "")
        lines += ["", "## Open Inference Protocol (binary) vs friendly JSON, mnist-cnn, c=16", "",
                  f"{how}OIP binary tensors: {oip['ok_rps']:,.0f} req/s (p99 {oip['p99_ms']:.1f} ms); "
                  f"friendly JSON: {js['ok_rps']:,.0f} req/s (p99 {js['p99_ms']:.1f} ms); ratio "
                  f"{oip['ok_rps'] / js['ok_rps']:.2f}."]
    lines += _section_textgen(result) + _section_npy(result)
    lines += ["", "## Start-up", "",
              f"`bentoml serve` start → `/readyz` 200 with all six models loaded and warm: "
              f"**{result['podium']['on']['ready_s']:.1f} s** (default), "
              f"{result['podium']['off']['ready_s']:.1f} s (batching off, started second); plain "
              f"BentoML (one model): {result['plain_bentoml']['ready_s']:.1f} s."]
    lines += _section_profile(result)
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description="Podium serving benchmark (make bench-serve)")
    parser.add_argument("--out", default="results/bench")
    parser.add_argument("--seconds", type=float, default=8, help="seconds per load point")
    parser.add_argument("--runtime-seconds", type=float, default=1.5)
    parser.add_argument("--npy-repeats", type=int, default=15)
    parser.add_argument("--max-load", type=float, default=2.5,
                        help="wait for the 1-minute load average to fall below this")
    parser.add_argument("--load-wait", type=float, default=300,
                        help="the longest wait for a quiet machine (s); then measure anyway")
    parser.add_argument("--profile", choices=("auto", "always", "never"), default="auto",
                        help="py-spy profile: when a target is missed (auto), always, never")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs, homes)")
    args = parser.parse_args()
    if not shutil.which("hey"):
        sys.exit("hey is not installed: apt-get install -y hey (make bench-serve does this)")
    started = time.monotonic()
    result = run(args)
    result["duration_s"] = round(time.monotonic() - started, 1)
    out = Path(args.out)
    (out / "serve.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    plot(result, out / "latency_throughput.png")
    plot_textgen(result, out / "textgen_throughput.png")
    (out / "README.md").write_text(report(result))
    print()
    for v in result["verdicts"]:
        met = "  –  " if v["met"] is None else (" MET " if v["met"] else "MISSED")
        print(f"  [{met}] {v['target']}: {v['measured']}")
    failed = missed(result["verdicts"])
    log(f"{'FAIL' if failed else 'PASS'}: done in {result['duration_s']:.0f} s; written "
        f"{out}/README.md, serve.json, latency_throughput.png, textgen_throughput.png")
    log(f"reproduce with: {REPRODUCE}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
