"""A/B serving benchmark: this checkout against an earlier commit, in one run (``make bench-ab``).

Issues that change the request path must show the happy path is not slower ("A/B against
7688e6a in the same run, ≥ 0.97×"). This starts two real ``bentoml serve`` processes — one from
this checkout, one from ``git archive BASE`` unpacked in a temporary folder — each over its own
copy of the store, then measures the same body with ``hey`` on both, alternating the order every
round so that drift of the shared machine falls on both sides. The verdict is the ratio of the
median requests/s; it fails (exit status 1, FAIL in the report) below ``--min-ratio``.

    make bench-ab BASE=7688e6a                      # mnist-cnn JSON c=64, 3 rounds of 8 s
    python -m benchmarks.ab_serve --base 7688e6a --form oip --concurrency 16
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import bench_serve as b


def unpack(rev: str, dest: Path) -> str:
    """The tree of ``rev`` under ``dest``; returns its full commit hash."""
    full = subprocess.run(["git", "rev-parse", rev], cwd=b.ROOT, capture_output=True, text=True,
                          check=True).stdout.strip()
    archive = subprocess.run(["git", "archive", "--format=tar", full], cwd=b.ROOT,
                             capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(dest, filter="data")
    return full


def run(args: argparse.Namespace) -> dict[str, Any]:
    store = Path(os.environ.get("BENTOML_HOME", Path.home() / "bentoml"))
    (b.ROOT / "results" / "tmp").mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-ab-", dir=b.ROOT / "results" / "tmp"))
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": b.machine(),
        "argv": sys.argv[1:], "model": args.model, "form": args.form,
        "concurrency": args.concurrency, "seconds": args.seconds, "rounds": args.rounds,
        "min_ratio": args.min_ratio, "store": str(store)}
    try:
        base_dir = work / "base-tree"
        result["base"] = unpack(args.base, base_dir)
        result["code"] = b.code_revision()
        b.wait_for_quiet(args.max_load, args.load_wait)
        result["load_avg_start"] = list(os.getloadavg())
        result["busy_processes_start"] = b.busy_processes()
        bodies, _, label = b.make_bodies(work)
        body, path = bodies[args.form], b.path_for(args.model, args.form)
        sides = {"base": base_dir, "head": b.ROOT}
        models = {"PODIUM_MODELS": json.dumps(args.models.split(","))} if args.models else {}
        points: dict[str, list[dict[str, Any]]] = {name: [] for name in sides}
        with contextlib.ExitStack() as stack:
            servers = {}
            for name, tree in sides.items():
                b.copy_store(store, work / f"home-{name}")
                port = b.free_port()
                env = b.clean_env({"BENTOML_HOME": str(work / f"home-{name}"),
                                   "PYTHONPATH": str(tree), **models})
                servers[name] = stack.enter_context(b.launch(
                    f"podium-{name}", [str(b.BIN / "bentoml"), "serve", "services.service:Podium",
                                       "--host", "127.0.0.1", "--port", str(port)],
                    env, work / f"{name}.log", "/readyz", port, cwd=tree))
                result.setdefault("ready_s", {})[name] = servers[name].ready_s
                status, data, _ = b.post(port, path, body)
                if status != 200:
                    raise RuntimeError(f"{name}: {path} answered {status}: {data[:300]!r}")
            for server in servers.values():  # warm-up of the route on both
                b.hey(server.url + path, body, 16, 2)
            for i in range(args.rounds):
                order = list(sides) if i % 2 == 0 else list(reversed(sides))
                for name in order:
                    point = b.hey(servers[name].url + path, body, args.concurrency, args.seconds)
                    points[name].append(point)
                    b.log(f"round {i + 1}/{args.rounds} {name:4s} {point['ok_rps']:8.0f} req/s  "
                          f"p50 {point['p50_ms']:6.1f} ms  p99 {point['p99_ms']:6.1f} ms  errors "
                          f"{point['error_count']}  (load {point['load_avg_1m']:.2f})")
        result["points"] = points
        result["label"] = label
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    med = {name: statistics.median(p["ok_rps"] for p in pts) for name, pts in points.items()}
    p99 = {name: statistics.median(p["p99_ms"] for p in pts) for name, pts in points.items()}
    errors = sum(p["error_count"] for pts in points.values() for p in pts)
    ratio = med["head"] / med["base"] if med["base"] else 0.0
    result.update(median_rps=med, median_p99_ms=p99, ratio=ratio, errors=errors,
                  passed=ratio >= args.min_ratio and errors == 0,
                  load_avg_end=list(os.getloadavg()))
    return result


def report(result: dict[str, Any], reproduce: str) -> str:
    verdict = "PASS" if result["passed"] else "FAIL"
    head = result["code"].get("commit", "?")
    lines = [
        f"# A/B serving benchmark — {verdict}", "",
        f"{result['date']}, {result['machine'].get('cpu', '?')}, {result['machine'].get('cpus', '?')} "
        f"cores; `{result['model']}` {b.FORM_NAMES.get(result['form'], result['form'])} "
        f"c={result['concurrency']}, {result['rounds']} rounds × {result['seconds']:g} s, order "
        f"alternating; client (`hey`) on the same cores.", "",
        f"Reproduce: `{reproduce}`", "",
        "| side | commit | median req/s | median p99 ms | rounds (req/s) |", "|---|---|---:|---:|---|"]
    for name, commit in (("base", result["base"]), ("head", head)):
        rounds = ", ".join(f"{p['ok_rps']:.0f}" for p in result["points"][name])
        lines.append(f"| {name} | `{commit[:10]}` | {result['median_rps'][name]:.0f} | "
                     f"{result['median_p99_ms'][name]:.1f} | {rounds} |")
    ready = result.get("ready_s", {})
    lines += ["", "Start (`bentoml serve` → `/readyz` 200, every configured model loaded and warm): "
              + ", ".join(f"{name} {ready[name]:.2f} s" for name in ("base", "head") if name in ready)
              + " (the two servers start one after the other).",
              "", f"Ratio head/base: **{result['ratio']:.3f}** (needs ≥ {result['min_ratio']}); "
              f"errors: {result['errors']}; load average start {result['load_avg_start'][0]:.2f}, "
              f"end {result['load_avg_end'][0]:.2f}."]
    if result["code"].get("dirty"):
        lines.append("The head checkout had uncommitted changes when measured.")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description="A/B serving benchmark against an earlier commit")
    parser.add_argument("--base", required=True, help="the commit to compare against")
    parser.add_argument("--model", default="mnist-cnn")
    parser.add_argument("--form", default="json", choices=sorted(b.FORM_NAMES))
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--models", default="",
                        help="comma-separated models both servers load (default: every model)")
    parser.add_argument("--min-ratio", type=float, default=0.97)
    parser.add_argument("--max-load", type=float, default=2.5)
    parser.add_argument("--load-wait", type=float, default=120)
    parser.add_argument("--out", default="results/bench/ab")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs, homes)")
    args = parser.parse_args()
    if not shutil.which("hey"):
        sys.exit("hey is not installed: apt-get install -y hey (make bench-ab does this)")
    reproduce = (f"python -m benchmarks.ab_serve --base {args.base} --model {args.model} --form "
                 f"{args.form} --concurrency {args.concurrency} --seconds {args.seconds:g} "
                 f"--rounds {args.rounds}")
    b.log(f"reproduce with: {reproduce}")
    result = run(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{result['model']}-{result['form']}-c{result['concurrency']}"
    (out / f"{stem}.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    (out / f"{stem}.md").write_text(report(result, reproduce))
    print(report(result, reproduce))
    sys.exit(0 if result["passed"] else 1)


if __name__ == "__main__":
    main()
