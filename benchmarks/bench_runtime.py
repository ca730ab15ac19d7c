"""Raw in-process ONNX Runtime throughput of every stored model (``make bench``).

Each model's newest version in the store (``$BENTOML_HOME``, default ``~/bentoml``) is opened with
exactly the session options the server uses (``services.runtimes.OnnxRuntime``) and run at
batch 1, 64 and 256 (256 is the serving ``max_batch_size`` of the MNIST models) on real inputs:
MNIST test images, Pima rows, and for char-rnn one recurrent step (``tokens`` [B,1] with its
``state``) where the batch is the number of sequences. No HTTP, no batcher: this is the ceiling
the model itself sets.

    .venv/bin/python -m benchmarks.bench_runtime [--seconds 1.0] [--json results/bench/runtime.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

MODELS = ("diabetes", "mnist-fc", "mnist-cnn", "mnist-googlenet", "mnist-resnet", "char-rnn")
BATCHES = (1, 64, 256)


def _mnist_images() -> np.ndarray:
    from training.data import load_mnist

    return load_mnist().test_x[:1024].astype(np.float32)[:, None] / 255.0


def _pima_rows() -> np.ndarray:
    try:
        from training.data import load_pima

        data = load_pima()
        rows = np.asarray(data.test_x, np.float32)
    except Exception:  # the data package is optional for a benchmark: plausible rows instead
        rows = np.random.default_rng(0).uniform(0, 100, (256, 8)).astype(np.float32)
    return np.resize(rows, (1024, 8)).astype(np.float32)


def feeds_for(name: str, batch: int, arch: dict[str, Any], cache: dict[str, np.ndarray]
              ) -> dict[str, np.ndarray]:
    """Real inputs for ``batch`` items of model ``name``."""
    if name == "diabetes":
        if "pima" not in cache:
            cache["pima"] = _pima_rows()
        return {"features": np.ascontiguousarray(np.resize(cache["pima"], (batch, 8)))}
    if name == "char-rnn":
        rng = np.random.default_rng(batch)
        vocab = int(arch.get("vocab_size", 64))
        return {"tokens": rng.integers(1, vocab, (batch, 1), dtype=np.int64),
                "state": np.zeros((arch["layers"], batch, arch["hidden"]), np.float32)}
    if "mnist" not in cache:
        cache["mnist"] = _mnist_images()
    images = cache["mnist"]
    return {"image": np.ascontiguousarray(np.resize(images, (batch, 1, 28, 28)))}


def time_runtime(runtime: Any, feeds: dict[str, np.ndarray], batch: int, seconds: float
                 ) -> dict[str, float]:
    """Samples/s and per-call latency of ``runtime.run(feeds)``, after a warm-up."""
    for _ in range(3):
        runtime.run(feeds)
    calls: list[float] = []
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        runtime.run(feeds)
        calls.append(time.perf_counter() - t0)
        if time.perf_counter() - start >= seconds and len(calls) >= 5:
            break
    elapsed = time.perf_counter() - start
    return {"batch": batch, "calls": len(calls), "samples_per_s": batch * len(calls) / elapsed,
            "p50_ms": float(np.percentile(calls, 50) * 1000),
            "p99_ms": float(np.percentile(calls, 99) * 1000)}


def open_model(name: str, threads: int = 0) -> tuple[Any, Any, Any]:
    """The newest stored version of ``name`` in a runtime with ``threads`` intra-op threads on the
    CPU (0: ONNX Runtime's default, one per core)."""
    from models.artifacts import get_version
    from models.catalog import get_spec
    from services.runtimes import DeviceSettings, OnnxRuntime

    stored = get_version(name)
    runtime = OnnxRuntime(stored.file("model.onnx"), DeviceSettings(cpu_threads=threads))
    return stored, runtime, get_spec(name)


def run(models: tuple[str, ...] = MODELS, batches: tuple[int, ...] = BATCHES, seconds: float = 1.0,
        extra: dict[str, tuple[int, ...]] | None = None, progress: bool = True,
        threads: int = 0) -> dict[str, Any]:
    """Runtime figures for ``models``; ``extra`` adds batches for some models (e.g. 1024);
    ``threads``: intra-op threads per session (0 = ONNX Runtime's default)."""
    cache: dict[str, np.ndarray] = {}
    out: dict[str, Any] = {"models": {}, "seconds_per_point": seconds, "threads": threads}
    for name in models:
        try:
            stored, runtime, _ = open_model(name, threads)
        except Exception as exc:  # a model missing from the store is reported, not fatal
            out["models"][name] = {"error": str(exc)}
            if progress:
                print(f"  runtime {name:16s} missing: {exc}", flush=True)
            continue
        arch = stored.metadata.get("preprocessing", {}).get("architecture", {})
        rows = []
        for batch in sorted(set(batches) | set((extra or {}).get(name, ()))):
            row = time_runtime(runtime, feeds_for(name, batch, arch, cache), batch, seconds)
            row["load_avg_1m"] = os.getloadavg()[0]
            rows.append(row)
            if progress:
                print(f"  runtime {name:16s} batch {batch:5d}: {row['samples_per_s']:10.0f} "
                      f"samples/s  (p50 {row['p50_ms']:.2f} ms/call)", flush=True)
        out["models"][name] = {"version": stored.version, "providers": runtime.providers,
                               "profile": stored.metadata.get("profile"), "points": rows}
    return out


def samples_per_s(result: dict[str, Any], name: str, batch: int) -> float | None:
    for row in result["models"].get(name, {}).get("points", []):
        if row["batch"] == batch:
            return row["samples_per_s"]
    return None


def table(result: dict[str, Any], batches: tuple[int, ...] = BATCHES) -> str:
    lines = ["| model | version | " + " | ".join(f"batch {b}" for b in batches) + " |",
             "|---|---|" + "---:|" * len(batches)]
    for name, info in result["models"].items():
        if "error" in info:
            lines.append(f"| {name} | missing | " + " | ".join("–" for _ in batches) + " |")
            continue
        cells = []
        for b in batches:
            value = samples_per_s(result, name, b)
            cells.append(f"{value:,.0f}" if value is not None else "–")
        lines.append(f"| {name} | {info['version']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="timed seconds per point")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--json", default="results/bench/runtime.json",
                        help="where to write the raw figures ('' = nowhere)")
    args = parser.parse_args()
    print(f"in-process ONNX Runtime, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.2f}", flush=True)
    result = run(tuple(m for m in args.models.split(",") if m), seconds=args.seconds)
    result.update(date=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                  machine=f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPUs",
                  python=sys.version.split()[0], command="make bench")
    print()
    print("samples/s, in-process ONNX Runtime (CPU)")
    print(table(result))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
        print(f"\nwritten {args.json}")


if __name__ == "__main__":
    main()
