"""The GPU figures of issue 13, measured in one run on a lent GPU machine (benchmarks/gpu_check.sh).

1. raw runtime images/s of mnist-resnet and mnist-googlenet at batch 1/64/256/1024 (in-process,
   exactly the server's session options, no HTTP);
2. Podium over HTTP, served on the GPU: `.npy` requests of 1024 images (images/s), mnist-cnn JSON
   single images at 64 concurrent clients (req/s, p50/p99), char-rnn with 64 concurrent
   generations (characters/s);
3. the conditions: GPU model, driver, runtime and providers really used, package versions, load.

The runtime is ONNX Runtime when its CUDA provider is there (onnxruntime-gpu), else Podium's
TorchScript runtime on CUDA (torch), else — `--dry-run` on a CPU machine — ONNX Runtime on the
CPU, which checks this script's logic with short runs. Every figure is measured independently: one
that fails is recorded with its error and the rest still run. Writes gpu_check.json and
gpu_check.md to --out.

    python -m benchmarks.gpu_check --store STORE --out DIR [--dry-run] [--url URL]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np

RAW_MODELS = ("mnist-resnet", "mnist-googlenet")
NPY_MODELS = ("mnist-resnet", "mnist-googlenet")


def plan(dry_run: bool) -> dict[str, Any]:
    """How long and how hard: the real run fits one device call (< 10 min); a dry run is seconds."""
    if dry_run:
        return {"batches": (1, 64), "raw_s": 0.5, "npy_s": 2.0, "npy_items": 256, "npy_c": 2,
                "json_c": 8, "json_s": 2.0, "procs": 1, "gens": 4, "gen_chars": 16}
    return {"batches": (1, 64, 256, 1024), "raw_s": 3.0, "npy_s": 15.0, "npy_items": 1024, "npy_c": 4,
            "json_c": 64, "json_s": 20.0, "procs": 4, "gens": 64, "gen_chars": 256}


# ------------------------------------------------------------------------------ conditions

def gpu_facts() -> dict[str, Any]:
    if not shutil.which("nvidia-smi"):
        return {"gpu": None, "note": "no nvidia-smi: no GPU here"}
    out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                          "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
    name, driver, memory = ([s.strip() for s in out.stdout.splitlines()[0].split(",")]
                            if out.returncode == 0 and out.stdout.strip() else (None, None, None))
    return {"gpu": name, "driver": driver, "memory": memory}


def choose_runtime(dry_run: bool) -> tuple[str, str]:
    """(runtime, device): ONNX Runtime on CUDA, else TorchScript on CUDA, else (dry run) CPU."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        return "onnx", "cuda"
    try:
        import torch

        if torch.cuda.is_available():
            return "torchscript", "cuda"
    except ImportError:
        pass
    if dry_run:
        return "onnx", "cpu"
    raise SystemExit("no GPU runtime: neither onnxruntime-gpu's CUDA provider nor torch with CUDA")


def versions() -> dict[str, str | None]:
    import importlib.metadata as md

    found: dict[str, str | None] = {"python": platform.python_version()}
    for name in ("onnxruntime", "onnxruntime-gpu", "torch", "bentoml", "numpy"):
        try:
            found[name] = md.version(name)
        except md.PackageNotFoundError:
            found[name] = None
    return found


# ------------------------------------------------------------------------------ 1. raw runtime

def images(n: int) -> np.ndarray:
    """Digit-like inputs: sparse bright strokes on black, in [0, 1] (throughput does not depend on
    the pixels; the real test digits need the training data package, absent on the GPU machine)."""
    rng = np.random.default_rng(n)
    x = (rng.random((n, 1, 28, 28)) > 0.8).astype(np.float32)
    return x * rng.uniform(0.5, 1.0, x.shape).astype(np.float32)


def raw_runtime(runtime: str, device: str, p: dict[str, Any]) -> dict[str, Any]:
    from benchmarks.bench_runtime import time_runtime
    from models.artifacts import ONNX_FILE, TORCHSCRIPT_FILE, get_version
    from services.runtimes import DeviceSettings, OnnxRuntime, TorchScriptRuntime

    settings = DeviceSettings(device=device, gpu_max_batch=max(p["batches"]))
    out: dict[str, Any] = {}
    for name in RAW_MODELS:
        stored = get_version(name)
        rt = (OnnxRuntime(stored.file(ONNX_FILE), settings) if runtime == "onnx"
              else TorchScriptRuntime(stored.file(TORCHSCRIPT_FILE), settings))
        points = [time_runtime(rt, {"image": images(b)}, b, p["raw_s"]) for b in p["batches"]]
        out[name] = {"version": stored.version, "providers": rt.providers,
                     "points": [{"batch": r["batch"], "images_per_s": round(r["samples_per_s"], 1),
                                 "p50_ms": round(r["p50_ms"], 3)} for r in points]}
        print(f"  raw {name}: " + ", ".join(f"b{r['batch']} {r['images_per_s']:.0f}/s"
                                            for r in out[name]["points"]), flush=True)
    return out


# ------------------------------------------------------------------------------ 2. HTTP load

def _closed_loop(url: str, path: str, body: bytes, headers: dict[str, str], concurrency: int,
                 seconds: float) -> dict[str, Any]:
    """One process: ``concurrency`` clients, each sending its next request when the last is answered."""
    import httpx

    async def main() -> dict[str, Any]:
        latencies: list[float] = []
        errors: dict[str, int] = {}
        deadline = time.perf_counter() + seconds
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60, trust_env=False) as c:
            async def client() -> None:
                while time.perf_counter() < deadline:
                    t0 = time.perf_counter()
                    try:
                        r = await c.post(path, content=body, headers=headers)
                        key = None if r.status_code == 200 else f"HTTP {r.status_code}"
                    except httpx.HTTPError as exc:
                        key = type(exc).__name__
                    if key is None:
                        latencies.append(time.perf_counter() - t0)
                    else:
                        errors[key] = errors.get(key, 0) + 1

            started = time.perf_counter()
            await asyncio.gather(*(client() for _ in range(concurrency)))
            return {"latencies": latencies, "errors": errors, "elapsed": time.perf_counter() - started}

    return asyncio.run(main())


def closed_loop(url: str, path: str, body: bytes, headers: dict[str, str], concurrency: int,
                seconds: float, processes: int, items: int = 1) -> dict[str, Any]:
    """``concurrency`` clients spread over ``processes`` (one Python process cannot load a GPU server)."""
    per = [concurrency // processes + (i < concurrency % processes) for i in range(processes)]
    if processes == 1:
        parts = [_closed_loop(url, path, body, headers, concurrency, seconds)]
    else:
        with ProcessPoolExecutor(processes) as pool:
            parts = list(pool.map(_closed_loop, *zip(*[(url, path, body, headers, n, seconds)
                                                        for n in per], strict=True)))
    latencies = np.array([x for p in parts for x in p["latencies"]])
    elapsed = max(p["elapsed"] for p in parts)
    errors: dict[str, int] = {}
    for p in parts:
        for k, v in p["errors"].items():
            errors[k] = errors.get(k, 0) + v
    ok = len(latencies)
    return {"concurrency": concurrency, "seconds": round(elapsed, 2), "requests": ok, "errors": errors,
            "req_per_s": round(ok / elapsed, 1), "items_per_s": round(ok * items / elapsed, 1),
            "p50_ms": round(float(np.percentile(latencies, 50)) * 1000, 2) if ok else None,
            "p99_ms": round(float(np.percentile(latencies, 99)) * 1000, 2) if ok else None}


def npy(array: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def generations(url: str, concurrency: int, chars: int) -> dict[str, Any]:
    """``concurrency`` char-rnn generations at once (they share batched model steps)."""
    import httpx

    async def main() -> dict[str, Any]:
        limits = httpx.Limits(max_connections=concurrency)
        async with httpx.AsyncClient(base_url=url, limits=limits, timeout=300, trust_env=False) as c:
            async def one(seed: int) -> int:
                r = await c.post("/v1/models/char-rnn/generate", json={
                    "prompt": "And God said", "max_new_chars": chars, "temperature": 0.8, "seed": seed})
                r.raise_for_status()
                return len(r.json()["text"])

            await one(0)  # warm
            t0 = time.perf_counter()
            produced = await asyncio.gather(*(one(s) for s in range(concurrency)))
            elapsed = time.perf_counter() - t0
        return {"concurrency": concurrency, "chars_each": chars, "seconds": round(elapsed, 2),
                "chars_per_s": round(sum(produced) / elapsed, 1)}

    return asyncio.run(main())


def served(url: str) -> dict[str, Any]:
    import httpx

    listed = httpx.get(f"{url}/v1/models", timeout=30, trust_env=False).json()["models"]
    return {m["name"]: {"version": m["version"], "device": m["device"], "providers": m["providers"],
                        "max_batch_size": m["max_batch_size"]} for m in listed}


# ------------------------------------------------------------------------------ run

def measure(what: str, results: dict[str, Any], fn: Callable[[], Any]) -> None:
    """One figure; a failure is recorded and the others still run."""
    t0 = time.perf_counter()
    try:
        results[what] = fn()
    except Exception as exc:  # recorded in the results file, which is what comes back
        results[what] = {"error": f"{type(exc).__name__}: {exc}"}
    print(f"{what}: {time.perf_counter() - t0:.1f}s {json.dumps(results[what])[:300]}", flush=True)


def run(args: argparse.Namespace) -> dict[str, Any]:
    p = plan(args.dry_run)
    runtime, device = choose_runtime(args.dry_run)
    results: dict[str, Any] = {
        "when": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), "dry_run": args.dry_run,
        "runtime": runtime, "device": device, "machine": {
            **gpu_facts(), "cpus": os.cpu_count(), "load_avg_1m": os.getloadavg()[0]},
        "versions": versions(), "plan": {k: list(v) if isinstance(v, tuple) else v for k, v in p.items()},
        "command": " ".join(sys.argv)}
    print(f"gpu_check: runtime {runtime} on {device}; {results['machine']}", flush=True)
    measure("raw_runtime", results, lambda: raw_runtime(runtime, device, p))
    env = {"PODIUM_RUNTIME": runtime, "PODIUM_DEVICE": device, "PODIUM_MODELS":
           ",".join(sorted({*NPY_MODELS, "mnist-cnn", "char-rnn"}))}
    if args.url:
        context: Any = nullcontext(args.url)
    else:
        from services.launch import serve

        logs = Path(args.out) / "server"
        logs.mkdir(parents=True, exist_ok=True)
        context = serve(Path(args.store), logs, env=env, ready_timeout=300)
    with context as server:
        url = server if isinstance(server, str) else server.url
        measure("served", results, lambda: served(url))
        for name in NPY_MODELS:
            body = npy((images(p["npy_items"]) * 255).astype(np.uint8))
            measure(f"npy_{name}", results, lambda name=name, body=body: closed_loop(
                url, f"/v1/models/{name}/predict", body, {"content-type": "application/x-npy"},
                p["npy_c"], p["npy_s"], 1, items=p["npy_items"]))
        single = json.dumps({"instances": images(1).tolist()}).encode()
        measure("json_mnist_cnn", results, lambda: closed_loop(
            url, "/v1/models/mnist-cnn/predict", single, {"content-type": "application/json"},
            p["json_c"], p["json_s"], p["procs"]))
        measure("char_rnn_generate", results, lambda: generations(url, p["gens"], p["gen_chars"]))
    results["load_avg_1m_after"] = os.getloadavg()[0]
    return results


def report(r: dict[str, Any]) -> str:
    m = r["machine"]
    lines = [f"# GPU check ({'DRY RUN, not GPU figures' if r['dry_run'] else 'lent GPU'}): {r['when']}", "",
             f"GPU: {m.get('gpu')} (driver {m.get('driver')}, {m.get('memory')}); {m['cpus']} CPUs; "
             f"runtime **{r['runtime']} on {r['device']}**; versions {r['versions']}.", "",
             f"Command: `{r['command']}`; load average {m['load_avg_1m']:.1f} before, "
             f"{r.get('load_avg_1m_after', 0):.1f} after.", ""]
    raw = r.get("raw_runtime", {})
    if "error" in raw:
        lines += [f"Raw runtime: error {raw['error']}", ""]
    else:
        batches = r["plan"]["batches"]
        lines += ["| raw runtime, images/s | providers | " + " | ".join(f"batch {b}" for b in batches) + " |",
                  "|---|---|" + "---:|" * len(batches)]
        for name, row in raw.items():
            lines.append(f"| {name} | {', '.join(row['providers'])} | "
                         + " | ".join(f"{pt['images_per_s']:.0f}" for pt in row["points"]) + " |")
        lines.append("")
    lines += ["| served over HTTP | result |", "|---|---|"]
    for key, label in [*((f"npy_{n}", f"{n}: .npy requests of {r['plan']['npy_items']} images")
                         for n in NPY_MODELS),
                       ("json_mnist_cnn", f"mnist-cnn JSON single image, c={r['plan']['json_c']}"),
                       ("char_rnn_generate", f"char-rnn, {r['plan']['gens']} concurrent generations")]:
        v = r.get(key, {})
        if "error" in v:
            text = f"error: {v['error']}"
        elif key.startswith("npy"):
            text = (f"{v['items_per_s']:.0f} images/s (c={v['concurrency']}, p99 {v['p99_ms']} ms, "
                    f"errors {v['errors']})")
        elif key == "json_mnist_cnn":
            text = (f"{v['req_per_s']:.0f} req/s, p50 {v['p50_ms']} ms, p99 {v['p99_ms']} ms, "
                    f"errors {v['errors']}")
        else:
            text = f"{v['chars_per_s']:.0f} characters/s ({v['chars_each']} each, {v['seconds']} s)"
        lines.append(f"| {label} | {text} |")
    lines += ["", f"Served: {json.dumps(r.get('served'))}", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default=os.environ.get("BENTOML_HOME", ""), help="BENTOML_HOME to serve")
    parser.add_argument("--out", default="results/tmp/gpu-check")
    parser.add_argument("--dry-run", action="store_true", help="short runs; the CPU when there is no GPU")
    parser.add_argument("--url", help="measure a running server instead of starting one")
    args = parser.parse_args(argv)
    if args.store:
        os.environ["BENTOML_HOME"] = str(Path(args.store).resolve())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = run(args)
    (out / "gpu_check.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "gpu_check.md").write_text(report(results))
    print(report(results))
    failed = [k for k, v in results.items() if isinstance(v, dict) and "error" in v]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
