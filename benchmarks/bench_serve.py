"""The serving benchmark (``make bench-serve``): every figure of issues 3 and 4 in one run.

1. raw in-process ONNX Runtime samples/s of each stored model at batch 1, 64, 256;
2. the HTTP ceiling: a bare Starlette/uvicorn endpoint that only parses the same JSON body;
3. ``bentoml serve`` of Podium twice — batching on and off (``PODIUM_BATCHING=false``), each over
   its own ``BENTOML_HOME`` holding a copy of the store's models — and the time from start to
   ``/readyz`` 200 with all six models loaded and warm;
4. single-image requests/s and p50/p99 at concurrency 1, 16, 64 for mnist-cnn in every input form
   (JSON tensor, ``.npy``, PNG upload, Open Inference Protocol binary tensors), and JSON for
   mnist-googlenet and mnist-resnet, batching on vs off (the two servers alternate per point);
5. one ``.npy`` request of 1024 images vs raw ONNX Runtime samples/s (mnist-cnn);
6. a plain BentoML 1.4 ``@bentoml.api(batchable=True)`` service on the same JSON;
7. where a target is missed and py-spy is installed, a 10 s py-spy profile of the batching-on
   worker under concurrency-64 JSON load, its top costs in the report.

``hey`` is the load generator (client and server share the machine, as in the issue's figures).
Writes ``serve.json`` (raw), ``README.md`` (the report) and ``latency_throughput.png`` to ``--out``.
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
from collections.abc import Iterator
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
# (model, input form) rows measured with batching on and off.
ROWS = [("mnist-cnn", "json"), ("mnist-cnn", "npy"), ("mnist-cnn", "png"), ("mnist-cnn", "oip"),
        ("mnist-googlenet", "json"), ("mnist-resnet", "json")]
FORM_NAMES = {"json": "JSON tensor", "npy": ".npy", "png": "PNG upload", "oip": "OIP binary"}
TARGETS = {"json_rps_c64": 2600.0, "json_p99_ms_c64": 60.0, "ceiling_fraction": 0.70,
           "npy1024_fraction": 0.80, "ready_s": 10.0}
REPRODUCE = "make bench-serve"
# An extra, informative configuration: batching on with one ONNX Runtime thread per model
# (PODIUM_INTRA_OP_THREADS=1), so that inference and the event loop do not fight for 2 cores.
VARIANT = "on-t1"
VARIANT_ENV = {"PODIUM_INTRA_OP_THREADS": "1"}
# Another: batching on with two server workers (PODIUM_WORKERS=2), mnist-cnn JSON only.
WORKERS2 = "on-w2"
WORKERS2_ENV = {"PODIUM_WORKERS": "2"}
EXTRA_ENV = {VARIANT: VARIANT_ENV, WORKERS2: WORKERS2_ENV}


def measured_on(name: str, model: str, form: str) -> bool:
    """Which (model, form) rows a server measures: the variants only JSON (w2: mnist-cnn)."""
    if name == VARIANT:
        return form == "json"
    if name == WORKERS2:
        return form == "json" and model == "mnist-cnn"
    return True


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
    requests): JSON tensor, .npy, PNG, OIP binary, and .npy batches of 1024 images."""
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
    write("npy1024.npy", buf.getvalue(), "application/x-npy")
    buf = io.BytesIO()
    np.save(buf, images)
    write("npy1024u8.npy", buf.getvalue(), "application/x-npy")
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


def post(port: int, path: str, body: Body, conn: http.client.HTTPConnection | None = None
         ) -> tuple[int, bytes, dict[str, str]]:
    own = conn is None
    conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    headers = {"Content-Type": body.content_type}
    for header in body.headers:
        key, value = header.split(":", 1)
        headers[key.strip()] = value.strip()
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


def npy_batch(server: Server, body: Body, repeats: int) -> dict[str, Any]:
    """Images/s of one .npy request of 1024 images (sequential requests on one connection)."""
    port = int(server.url.rsplit(":", 1)[1])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    for _ in range(2):
        status, data, _ = post(port, "/v1/models/mnist-cnn/predict", body, conn)
        if status != 200 or len(json.loads(data)["predictions"]) != 1024:
            raise RuntimeError(f"npy 1024 → {status}: {data[:300]!r}")
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        status, data, _ = post(port, "/v1/models/mnist-cnn/predict", body, conn)
        times.append(time.perf_counter() - t0)
        assert status == 200
    conn.close()
    best, median = min(times), float(np.median(times))
    return {"images": 1024, "bytes": body.path.stat().st_size, "repeats": repeats,
            "median_ms": median * 1000, "best_ms": best * 1000,
            "images_per_s": 1024 / median, "load_avg_1m": load_avg()}


# ------------------------------------------------------------------------------------ profiling

def find_py_spy() -> str | None:
    for candidate in (BIN / "py-spy", shutil.which("py-spy")):
        if candidate and Path(candidate).exists():
            return str(candidate)
    return None


def profile(server: Server, body: Body, out_dir: Path, seconds: int = 10) -> dict[str, Any]:
    """py-spy samples the Podium worker for ``seconds`` under concurrency-64 JSON load."""
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

def run(args: argparse.Namespace) -> dict[str, Any]:
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    store = Path(os.environ.get("BENTOML_HOME", Path.home() / "bentoml"))
    (ROOT / "results" / "tmp").mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-serve-", dir=ROOT / "results" / "tmp"))
    seconds = args.seconds
    points_total = len(ROWS) * len(CONCURRENCY) * 2 + 2 * len(CONCURRENCY) + (
        (sum(f == "json" for _, f in ROWS) + 1) * len(CONCURRENCY) if args.variant else 0)
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine(),
        "command": REPRODUCE, "argv": sys.argv[1:], "seconds_per_point": seconds,
        "load_avg_start": list(os.getloadavg()), "store": str(store), "targets": TARGETS}
    log(f"serving benchmark: {points_total} load points of {seconds:g} s; work dir {work}")
    log(f"reproduce with: {REPRODUCE}   (python -m benchmarks.bench_serve {' '.join(sys.argv[1:])})")
    wait_for_quiet(args.max_load, args.load_wait)
    result["load_avg_measuring"] = load_avg()
    result["busy_processes_start"] = busy_processes()
    result["code"] = code_revision()
    measuring = time.monotonic()
    bodies, _, label = make_bodies(work)
    result["bodies"] = {k: {"bytes": b.path.stat().st_size, "content_type": b.content_type}
                        for k, b in bodies.items()}
    done = 0

    def progress(text: str) -> None:
        nonlocal done
        done += 1
        log(f"[{done:2d}/{points_total}] {text}")

    # 1. raw runtime --------------------------------------------------------------------------
    log("1/6 raw in-process ONNX Runtime")
    result["runtime"] = bench_runtime.run(MODELS, seconds=args.runtime_seconds,
                                          extra={"mnist-cnn": (1024,)})
    bench_runtime_json = dict(result["runtime"], date=result["date"], command="make bench-serve")
    (out_dir / "runtime.json").write_text(json.dumps(bench_runtime_json, indent=1) + "\n")

    # 2. HTTP ceiling --------------------------------------------------------------------------
    log("2/6 HTTP ceiling: bare Starlette on uvicorn (uvloop, httptools), JSON parse only")
    port = free_port()
    ceiling_cmd = [str(BIN / "uvicorn"), "benchmarks.ceiling_app:app", "--host", "127.0.0.1",
                   "--port", str(port), "--loop", "uvloop", "--http", "httptools",
                   "--no-access-log", "--log-level", "warning"]
    result["ceiling"] = {}
    json_probe = ("application/json", bodies["json"].path.read_bytes())
    with launch("ceiling", ceiling_cmd, clean_env({}), work / "ceiling.log", "/parse", port,
                probe=json_probe) as ceiling:
        hey(f"{ceiling.url}/parse", bodies["json"], 16, 1)  # warm-up
        for c in CONCURRENCY:
            point = hey(f"{ceiling.url}/parse", bodies["json"], c, seconds)
            result["ceiling"][str(c)] = point
            progress(f"ceiling c={c:<3d} {point['ok_rps']:8.0f} req/s  p50 {point['p50_ms']:.1f} ms "
                     f"p99 {point['p99_ms']:.1f} ms  (load {point['load_avg_1m']:.2f})")

    # 3.–5. Podium, batching on and off ----------------------------------------------------------
    log("3/6 Podium: bentoml serve, batching on and off (one BENTOML_HOME each)")
    names = ("on", "off", VARIANT, WORKERS2) if args.variant else ("on", "off")
    for name in names:
        copy_store(store, work / f"home-{name}")
    result["podium"] = {name: {} for name in names}
    with contextlib.ExitStack() as stack:
        servers = {}
        for name in names:
            server = stack.enter_context(podium(
                f"podium-batching-{name}", work / f"home-{name}", work, name != "off",
                EXTRA_ENV.get(name)))
            servers[name] = server
            models = served_models(server)
            result["podium"][name]["ready_s"] = server.ready_s
            result["podium"][name]["models"] = models
            result["podium"][name]["checks"] = check_answers(server, bodies, label)
            log(f"podium batching {name}: ready in {server.ready_s:.2f} s with "
                f"{len(models)} models: {', '.join(models)}")
        result["ready_s"] = servers["on"].ready_s
        log("4/6 single-image requests, batching on vs off")
        for model, form in ROWS:
            key = f"{model}/{form}"
            for name, server in servers.items():  # warm-up of this route on every server
                if not measured_on(name, model, form):
                    continue
                hey(server.url + path_for(model, form), bodies[form], 16, 1)
            for i, c in enumerate(CONCURRENCY):
                order = ["on", "off"] if i % 2 == 0 else ["off", "on"]  # cancel drift
                order += [n for n in (VARIANT, WORKERS2)
                          if n in servers and measured_on(n, model, form)]
                for name in order:
                    point = hey(servers[name].url + path_for(model, form), bodies[form], c, seconds)
                    result["podium"][name].setdefault(key, {})[str(c)] = point
                    progress(f"{model:15s} {form:4s} batching {name:5s} c={c:<3d} "
                             f"{point['ok_rps']:8.0f} req/s  p50 {point['p50_ms']:6.1f} ms  "
                             f"p99 {point['p99_ms']:6.1f} ms  errors {point['error_count']}"
                             f"  (load {point['load_avg_1m']:.2f})")
        log("5/6 one .npy request of 1024 images (mnist-cnn, batching on)")
        result["npy1024"] = npy_batch(servers["on"], bodies["npy1024"], args.npy_repeats)
        result["npy1024_uint8"] = npy_batch(servers["on"], bodies["npy1024u8"], args.npy_repeats)
        log(f"npy 1024 float32: {result['npy1024']['images_per_s']:.0f} images/s; uint8: "
            f"{result['npy1024_uint8']['images_per_s']:.0f} images/s")
        verdicts = judge(result)
        if args.profile == "always" or (args.profile == "auto" and not all(
                v["met"] for v in verdicts if v["met"] is not None)):
            log("profiling the batching-on worker: py-spy, 10 s under c=64 JSON load")
            result["profile"] = profile(servers["on"], bodies["json"], out_dir)
            if "skipped" in result["profile"]:
                log(f"profile skipped: {result['profile']['skipped']}")

    # 6. plain BentoML ---------------------------------------------------------------------------
    log("6/6 plain BentoML 1.4 batchable service (mnist-cnn, ONNX Runtime), same JSON")
    from models.artifacts import get_version

    port = free_port()
    home = work / "home-plain"
    home.mkdir()
    onnx = get_version("mnist-cnn").file("model.onnx")
    env = clean_env({"BENTOML_HOME": str(home), "BENCH_ONNX": str(onnx)})
    result["plain_bentoml"] = {}
    with launch("plain-bentoml", [str(BIN / "bentoml"), "serve", "benchmarks.plain_bentoml:PlainOnnx",
                                  "--host", "127.0.0.1", "--port", str(port)], env,
                work / "plain-bentoml.log", "/readyz", port) as plain:
        status, data, _ = post(port, "/predict", bodies["json"])
        if status != 200:
            raise RuntimeError(f"plain BentoML → {status}: {data[:300]!r}")
        hey(f"{plain.url}/predict", bodies["json"], 16, 1)
        for c in CONCURRENCY:
            point = hey(f"{plain.url}/predict", bodies["json"], c, seconds)
            result["plain_bentoml"][str(c)] = point
            progress(f"plain BentoML c={c:<3d} {point['ok_rps']:8.0f} req/s  p50 "
                     f"{point['p50_ms']:.1f} ms p99 {point['p99_ms']:.1f} ms  errors "
                     f"{point['error_count']}  (load {point['load_avg_1m']:.2f})")
        result["plain_bentoml"]["ready_s"] = plain.ready_s
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


def raw_best(result: dict[str, Any], model: str) -> float:
    points = result["runtime"]["models"].get(model, {}).get("points", [])
    return max((p["samples_per_s"] for p in points), default=float("nan"))


def judge(result: dict[str, Any]) -> list[dict[str, Any]]:
    v: list[dict[str, Any]] = []
    cnn = _p(result, "on", "mnist-cnn/json", 64)
    ceiling = result.get("ceiling", {}).get("64")
    if cnn:
        v.append({"target": "mnist-cnn JSON c=64 ≥ 2,600 req/s", "measured": f"{cnn['ok_rps']:,.0f} req/s",
                  "met": cnn["ok_rps"] >= TARGETS["json_rps_c64"]})
        v.append({"target": "… with p99 ≤ 60 ms", "measured": f"{cnn['p99_ms']:.1f} ms",
                  "met": cnn["p99_ms"] <= TARGETS["json_p99_ms_c64"]})
    if cnn and ceiling:
        frac = cnn["ok_rps"] / ceiling["ok_rps"]
        v.append({"target": "… ≥ 70 % of the HTTP ceiling",
                  "measured": f"{100 * frac:.0f} % of {ceiling['ok_rps']:,.0f} req/s",
                  "met": frac >= TARGETS["ceiling_fraction"]})
    worst = None
    for model, form in ROWS:
        for c in CONCURRENCY:
            on, off = _p(result, "on", f"{model}/{form}", c), _p(result, "off", f"{model}/{form}", c)
            if on and off:
                ratio = on["ok_rps"] / off["ok_rps"]
                if worst is None or ratio < worst[0]:
                    worst = (ratio, model, form, c)
    if worst:
        # "Never slower": within 5 % counts as equal on a shared 2-core box.
        v.append({"target": "batching on never slower than off (any row, any c; ±5 % noise)",
                  "measured": f"worst on/off = {worst[0]:.2f} ({worst[1]} {worst[2]} c={worst[3]})",
                  "met": worst[0] >= 0.95})
    for model in ("mnist-googlenet", "mnist-resnet"):
        on, off = _p(result, "on", f"{model}/json", 64), _p(result, "off", f"{model}/json", 64)
        if on and off:
            ratio = on["ok_rps"] / off["ok_rps"]
            v.append({"target": f"{model}: batching on faster at c=64", "measured": f"on/off = {ratio:.2f}",
                      "met": ratio > 1.0})
    if "npy1024" in result:
        raw = raw_best(result, "mnist-cnn")
        frac = result["npy1024"]["images_per_s"] / raw
        v.append({"target": ".npy 1024 images ≥ 80 % of raw ONNX Runtime",
                  "measured": f"{result['npy1024']['images_per_s']:,.0f} images/s = {100 * frac:.0f} % "
                              f"of {raw:,.0f}", "met": frac >= TARGETS["npy1024_fraction"]})
    oip, js = _p(result, "on", "mnist-cnn/oip", 16), _p(result, "on", "mnist-cnn/json", 16)
    if oip and js:
        ratio = oip["ok_rps"] / js["ok_rps"]
        v.append({"target": "OIP binary no slower than friendly JSON at c=16 (issue 4)",
                  "measured": f"{oip['ok_rps']:,.0f} vs {js['ok_rps']:,.0f} req/s = {ratio:.2f}×",
                  "met": ratio >= 0.95})
    if result.get("ready_s") is not None:
        v.append({"target": "ready ≤ 10 s, all six models loaded and warm",
                  "measured": f"{result['ready_s']:.1f} s ({len(result['podium']['on']['models'])} models)",
                  "met": result["ready_s"] <= TARGETS["ready_s"]
                  and len(result["podium"]["on"]["models"]) == 6})
    plain = result.get("plain_bentoml", {}).get("64")
    if plain and cnn:
        v.append({"target": "Podium vs plain BentoML batchable, JSON c=64 (information)",
                  "measured": f"{cnn['ok_rps']:,.0f} vs {plain['ok_rps']:,.0f} req/s = "
                              f"{cnn['ok_rps'] / plain['ok_rps']:.1f}×", "met": None})
    return v


# ------------------------------------------------------------------------------------ reporting

def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2))
    colors = {"json": "C0", "npy": "C1", "png": "C2", "oip": "C3"}
    ax = axes[0]
    for form in ("json", "npy", "png", "oip"):
        for name, style in (("on", "-o"), ("off", ":x")):
            series = result["podium"][name].get(f"mnist-cnn/{form}", {})
            pts = [series[str(c)] for c in CONCURRENCY if str(c) in series]
            ax.plot([p["ok_rps"] for p in pts], [p["p99_ms"] for p in pts], style,
                    color=colors[form], label=f"{FORM_NAMES[form]}, batching {name}")
    w2 = result["podium"].get(WORKERS2, {}).get("mnist-cnn/json", {})
    if w2:
        pts = [w2[str(c)] for c in CONCURRENCY if str(c) in w2]
        ax.plot([p["ok_rps"] for p in pts], [p["p99_ms"] for p in pts], "--^", color="C0",
                label="JSON tensor, batching on, 2 workers")
    for label, source, style in (("HTTP ceiling (JSON parse only)", result.get("ceiling", {}), "k--s"),
                                 ("plain BentoML batchable (JSON)", result.get("plain_bentoml", {}), "m-.d")):
        pts = [source[str(c)] for c in CONCURRENCY if str(c) in source]
        ax.plot([p["ok_rps"] for p in pts], [p["p99_ms"] for p in pts], style, label=label)
    ax.set_title("mnist-cnn, one image per request (points: c = 1, 16, 64)")
    ax.set_xscale("log")  # the ceiling is an order of magnitude to the right
    ax2 = axes[1]
    for i, model in enumerate(("mnist-cnn", "mnist-googlenet", "mnist-resnet")):
        for name, style in (("on", "-o"), ("off", ":x"), (VARIANT, "--^")):
            series = result["podium"].get(name, {}).get(f"{model}/json", {})
            if not series:
                continue
            pts = [series[str(c)] for c in CONCURRENCY if str(c) in series]
            ax2.plot([p["ok_rps"] for p in pts], [p["p99_ms"] for p in pts], style, color=f"C{i}",
                     label=f"{model}, batching {name}" if name != VARIANT
                     else f"{model}, batching on, 1 ORT thread")
    ax2.set_title("JSON tensor, one image per request, batching on vs off")
    for a in (ax, ax2):
        a.set_xlabel("throughput (successful requests/s" + (", log)" if a is ax else ")"))
        a.set_ylabel("p99 latency (ms, log)")
        a.set_yscale("log")
        a.grid(True, which="both", alpha=0.3)
        a.legend(fontsize=7)
    fig.suptitle(f"Podium serving benchmark, {result['date']}, {result['machine']['cpus']} CPUs "
                 f"shared by client (hey) and server", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fmt(point: dict[str, Any] | None) -> str:
    if not point:
        return "– | – | –"
    err = f" ({point['error_count']} err)" if point.get("error_count") else ""
    return f"{point['ok_rps']:,.0f}{err} | {point['p50_ms']:.1f} | {point['p99_ms']:.1f}"


def report(result: dict[str, Any]) -> str:
    m = result["machine"]
    la = result["load_avg_start"]
    lines = [
        "# Serving benchmark results",
        "",
        f"- **Date:** {result['date']}",
        f"- **Machine:** {m['cpu']}, {m['cpus']} CPUs, {m['memory']} RAM, {m['os']}; Python "
        f"{m['python']}, BentoML {m['bentoml']}, ONNX Runtime {m['onnxruntime']} (CPU provider)",
        f"- **Load average (1/5/15 min) at start:** {la[0]:.2f} / {la[1]:.2f} / {la[2]:.2f}; when "
        f"measuring began: {result['load_avg_measuring']:.2f}; at the end: "
        f"{result['load_avg_end'][0]:.2f} (the benchmark itself keeps both cores busy, so the "
        f"1-minute figure in each row includes its own previous point; the machine is shared)",
        f"- **Reproduce:** `{result['command']}` (from the repository root, over the models in "
        f"`$BENTOML_HOME`, default `~/bentoml`; `BENCH_SECONDS={result['seconds_per_point']:g}` "
        "seconds per point)",
        "- **Load generator:** `hey -z <s> -c <c>`, keep-alive, on the same 2 cores as the server; "
        "req/s counts successful (200) responses only. Servers: `bentoml serve "
        "services.service:Podium` with default settings (1 worker), one `BENTOML_HOME` each.",
        "- **Bodies** (one real MNIST test image): JSON `{\"instances\": [[784 floats]]}` "
        f"({result['bodies']['json']['bytes']} B), `.npy` float32 [1,1,28,28] "
        f"({result['bodies']['npy']['bytes']} B), PNG 28×28 ({result['bodies']['png']['bytes']} B), "
        f"OIP binary FP32 [1,1,28,28] + JSON header, binary outputs ({result['bodies']['oip']['bytes']} B).",
        f"- **Other processes busy on the machine** (≥ 15 % of a core, sampled 2 s) at the start: "
        f"{'; '.join(result.get('busy_processes_start') or ['none'])}; at the end: "
        f"{'; '.join(result.get('busy_processes_end') or ['none'])}",
        f"- **Measuring took** {result.get('measure_s', 0) / 60:.1f} min.",
        f"- **Code measured:** commit `{result.get('code', {}).get('commit', '?')}`"
        + (f", with uncommitted changes to {', '.join(result['code']['dirty'])}"
           if result.get("code", {}).get("dirty") else ", clean working tree"),
        "- Raw data: `serve.json`, `runtime.json`; plot: `latency_throughput.png`; analysis and "
        "suggested fixes (hand-written, for the run it names): `NOTES.md`.",
        "",
        "## Targets",
        "",
        "| target | measured | met |",
        "|---|---|---|",
    ]
    for v in result["verdicts"]:
        met = "–" if v["met"] is None else ("yes" if v["met"] else "**no**")
        lines.append(f"| {v['target']} | {v['measured']} | {met} |")
    cnn1024 = bench_runtime.samples_per_s(result["runtime"], "mnist-cnn", 1024) or 0
    lines += ["", "## Raw ONNX Runtime, in process (samples/s)", "",
              bench_runtime.table(result["runtime"]), "",
              "char-rnn: one recurrent step (`tokens` [B,1] with its state), batch = sequences. "
              f"mnist-cnn at batch 1024: {cnn1024:,.0f} samples/s.",
              "", "## HTTP ceiling and plain BentoML vs Podium (mnist-cnn, the same JSON body)", "",
              "| server | c | req/s | p50 ms | p99 ms |", "|---|---:|---:|---:|---:|"]
    for label, src in (("bare Starlette/uvicorn, JSON parse only (ceiling)", result["ceiling"]),
                       ("Podium, batching on", result["podium"]["on"].get("mnist-cnn/json", {})),
                       ("plain BentoML 1.4 `batchable=True`, 1 worker", result["plain_bentoml"])):
        for c in CONCURRENCY:
            lines.append(f"| {label} | {c} | {_fmt(src.get(str(c)))} |")
    lines += ["", "## Podium, one image per request: batching on vs off", "",
              "| model | input | c | on req/s | on p50 ms | on p99 ms | off req/s | off p50 ms "
              "| off p99 ms | on/off | load 1m |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for model, form in ROWS:
        for c in CONCURRENCY:
            on, off = _p(result, "on", f"{model}/{form}", c), _p(result, "off", f"{model}/{form}", c)
            ratio = f"{on['ok_rps'] / off['ok_rps']:.2f}" if on and off else "–"
            load = f"{on['load_avg_1m']:.1f}/{off['load_avg_1m']:.1f}" if on and off else "–"
            lines.append(f"| {model} | {FORM_NAMES[form]} | {c} | {_fmt(on)} | {_fmt(off)} | "
                         f"{ratio} | {load} |")
    if VARIANT in result["podium"]:
        lines += ["", "## Configuration experiment: one ONNX Runtime thread per model", "",
                  "Batching on with `PODIUM_INTRA_OP_THREADS=1` (default 0 = one thread per core, "
                  "which on 2 cores competes with the event loop), JSON tensor, same run:", "",
                  "| model | c | req/s | p50 ms | p99 ms | vs batching on (default) | vs off |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for model, form in ROWS:
            if form != "json":
                continue
            for c in CONCURRENCY:
                t1 = _p(result, VARIANT, f"{model}/json", c)
                on, off = _p(result, "on", f"{model}/json", c), _p(result, "off", f"{model}/json", c)
                if not t1:
                    continue
                r_on = f"{t1['ok_rps'] / on['ok_rps']:.2f}" if on and on["ok_rps"] else "–"
                r_off = f"{t1['ok_rps'] / off['ok_rps']:.2f}" if off and off["ok_rps"] else "–"
                lines.append(f"| {model} | {c} | {_fmt(t1)} | {r_on} | {r_off} |")
    if WORKERS2 in result["podium"]:
        lines += ["", "Batching on with two server workers (`PODIUM_WORKERS=2`), mnist-cnn JSON, "
                      "same run:", "", "| c | req/s | p50 ms | p99 ms | vs 1 worker |",
                  "|---:|---:|---:|---:|---:|"]
        for c in CONCURRENCY:
            w2, on = _p(result, WORKERS2, "mnist-cnn/json", c), _p(result, "on", "mnist-cnn/json", c)
            if w2:
                ratio = f"{w2['ok_rps'] / on['ok_rps']:.2f}" if on and on["ok_rps"] else "–"
                lines.append(f"| {c} | {_fmt(w2)} | {ratio} |")
    oip, js = _p(result, "on", "mnist-cnn/oip", 16), _p(result, "on", "mnist-cnn/json", 16)
    if oip and js:
        lines += ["", "## Open Inference Protocol (binary) vs friendly JSON, mnist-cnn, c=16", "",
                  f"OIP binary tensors: {oip['ok_rps']:,.0f} req/s (p99 {oip['p99_ms']:.1f} ms); "
                  f"friendly JSON: {js['ok_rps']:,.0f} req/s (p99 {js['p99_ms']:.1f} ms); ratio "
                  f"{oip['ok_rps'] / js['ok_rps']:.2f}."]
    n, n8 = result["npy1024"], result["npy1024_uint8"]
    raw = raw_best(result, "mnist-cnn")
    lines += ["", "## One `.npy` request of 1024 images (mnist-cnn, batching on)", "",
              f"- float32 [1024,1,28,28] ({n['bytes'] / 1e6:.1f} MB): median {n['median_ms']:.1f} ms "
              f"→ **{n['images_per_s']:,.0f} images/s = {100 * n['images_per_s'] / raw:.0f} %** of raw "
              f"ONNX Runtime's best ({raw:,.0f} samples/s, same run)",
              f"- uint8 [1024,28,28] ({n8['bytes'] / 1e6:.1f} MB): median {n8['median_ms']:.1f} ms → "
              f"{n8['images_per_s']:,.0f} images/s = {100 * n8['images_per_s'] / raw:.0f} %",
              "", "## Start-up", "",
              f"`bentoml serve` start → `/readyz` 200 with all six models loaded and warm: "
              f"**{result['podium']['on']['ready_s']:.1f} s** (batching on), "
              f"{result['podium']['off']['ready_s']:.1f} s (off, started second); plain BentoML "
              f"(one model): {result['plain_bentoml']['ready_s']:.1f} s."]
    prof = result.get("profile")
    if prof and "skipped" not in prof:
        lines += ["", f"## Profile: py-spy, batching-on worker, 10 s under c=64 JSON load "
                      f"(`{prof['raw']}`)", "",
                  "Busy share of each thread (100 % = on CPU or runnable the whole 10 s; waiting "
                  "for the GIL counts as busy):", "", "| thread | busy % |", "|---|---:|"]
        lines += [f"| {k} | {v} |" for k, v in prof["threads_busy"]]
        lines += ["", "The event-loop thread (MainThread), by layer (the innermost recognised frame "
                      "of each sample):", "", "| layer | % of its samples |", "|---|---:|"]
        lines += [f"| {k} | {v} |" for k, v in prof["layers"]]
        lines += ["", "Event-loop thread, top functions by self time:", "", "| function | % |",
                  "|---|---:|"]
        lines += [f"| `{k}` | {v} |" for k, v in prof["self"]]
        lines += ["", "Event-loop thread, inclusive (below the server's own frames):", "",
                  "| function | % |", "|---|---:|"]
        lines += [f"| `{k}` | {v} |" for k, v in prof["inclusive"]]
    elif prof:
        lines += ["", f"Profile skipped: {prof['skipped']}."]
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
    parser.add_argument("--no-variant", dest="variant", action="store_false",
                        help="skip the extra batching-on, intra_op_threads=1 server")
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
    (out / "README.md").write_text(report(result))
    print()
    for v in result["verdicts"]:
        met = "  –  " if v["met"] is None else (" MET " if v["met"] else "MISSED")
        print(f"  [{met}] {v['target']}: {v['measured']}")
    log(f"done in {result['duration_s']:.0f} s; written {out}/README.md, serve.json, "
        f"latency_throughput.png")
    log(f"reproduce with: {REPRODUCE}")


if __name__ == "__main__":
    main()
