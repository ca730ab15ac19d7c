"""The GPU measurement script's CPU-side logic (benchmarks/gpu_check.py --dry-run), against the shared
real server of the tiny store: every figure is produced, nothing fails, the report names the
runtime and device really used. On a GPU machine the same code runs with longer, heavier plans."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from benchmarks import gpu_check
from services.launch import Server

ROOT = Path(__file__).resolve().parent.parent


def test_plans_fit_one_device_call() -> None:
    real = gpu_check.plan(dry_run=False)
    assert real["batches"] == (1, 64, 256, 1024) and real["json_c"] == 64 and real["gens"] == 64
    assert real["npy_items"] == 1024
    # raw points + two .npy runs + the JSON run + server start-up stay well inside 10 minutes
    budget = (len(real["batches"]) * len(gpu_check.RAW_MODELS) * (real["raw_s"] + 2)
              + len(gpu_check.NPY_MODELS) * real["npy_s"] + real["json_s"])
    assert budget < 180


def test_closed_loop_splits_clients_over_processes(server: Server) -> None:
    body = json.dumps({"rows": [[1, 85, 66, 29, 0, 26.6, 0.351, 31]]}).encode()
    r = gpu_check.closed_loop(server.url, "/v1/models/diabetes/predict", body,
                              {"content-type": "application/json"}, concurrency=3, seconds=1.0,
                              processes=2)
    assert r["concurrency"] == 3 and r["requests"] > 0 and r["errors"] == {}
    assert r["p99_ms"] >= r["p50_ms"] > 0
    bad = gpu_check.closed_loop(server.url, "/v1/models/diabetes/predict", b"{}",
                                {"content-type": "application/json"}, concurrency=1, seconds=0.3,
                                processes=1)
    assert bad["requests"] == 0 and bad["errors"].get("HTTP 400", 0) > 0  # errors are counted, not timed


def test_dry_run_produces_every_figure(server: Server, tiny_store: Path, tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--dry-run", "--url", server.url,
                           "--store", str(tiny_store), "--out", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=240,
                          env={**os.environ, "BENTOML_DO_NOT_TRACK": "true"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    assert result["dry_run"] and (result["runtime"], result["device"]) == ("onnx", "cpu")
    for name in gpu_check.RAW_MODELS:
        points = result["raw_runtime"][name]["points"]
        assert [p["batch"] for p in points] == [1, 64] and all(p["images_per_s"] > 0 for p in points)
    for name in gpu_check.NPY_MODELS:
        assert result[f"npy_{name}"]["items_per_s"] > 0 and result[f"npy_{name}"]["errors"] == {}
    assert result["json_mnist_cnn"]["req_per_s"] > 0 and result["json_mnist_cnn"]["p99_ms"] > 0
    assert result["char_rnn_generate"]["chars_per_s"] > 0
    assert result["served"]["mnist-cnn"]["providers"] == ["CPUExecutionProvider"]
    report = (tmp_path / "gpu_check.md").read_text()
    assert "DRY RUN" in report and "runtime **onnx on cpu**" in report
