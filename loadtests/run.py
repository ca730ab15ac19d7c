"""Headless, time-bounded Podium load runs against loopback: one test, a capacity sweep, a soak.

    python -m loadtests.run once  [--host URL] [--users 8] [--run-time 30]
    python -m loadtests.run sweep [--host URL] [--p99-ms 100,char-rnn=400] [--step-s 12]
    python -m loadtests.run soak  [--host URL] [--capacity sweep.json | --rps N] [--duration 600]

Without ``--host`` a server is started over the store in ``--store`` (default ``$BENTOML_HOME``
or ``~/bentoml``) serving the models present there, and stopped afterwards. Locust always runs
in its own process (``locust -f loadtests/locustfile.py --headless``); this process never
imports Locust or torch. Results (Locust's CSV and HTML, summaries, plots) go to ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import platform
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx

from loadtests.prepare import DEFAULT_CACHE, prepare
from loadtests.traffic import is_loopback, user_specs
from models.catalog import CATALOG, MODEL_NAMES

ROOT = Path(__file__).resolve().parent.parent
LOCUSTFILE = ROOT / "loadtests" / "locustfile.py"
LOCUST = str(Path(sys.executable).parent / "locust")
# The request each model's capacity is measured with: one input per request, like
# perf_analyzer's default; char-rnn generates a short continuation.
SWEEP_USER = {"diabetes": "DiabetesRows", "char-rnn": "CharRnnGenerate"}
MIXED = "mixed"
MIXED_USER = "MixedTraffic"


@dataclass
class Target:
    url: str
    pid: int | None  # the server's root process, for RSS sampling; None if unknown
    models: list[str]
    versions: dict[str, str]
    oip: bool
    started_here: bool


# ------------------------------------------------------------------------------ the server

def store_models(store: Path) -> list[str]:
    """Catalog models with at least one version in ``store`` (no BentoML import needed)."""
    return [m for m in MODEL_NAMES
            if any(p.is_dir() for p in (store / "models" / m).glob("*"))]


def _listening_pid(url: str) -> int | None:
    """The root of the server's process tree: the listener, then up through its bentoml
    parents (BentoML's supervisor holds the socket for its workers)."""
    import psutil

    port = urlparse(url).port or 80
    try:
        pids = [c.pid for c in psutil.net_connections(kind="tcp") if c.pid and c.laddr
                and c.status == psutil.CONN_LISTEN and c.laddr.port == port]
    except psutil.AccessDenied:
        return None
    if not pids:
        return None
    proc = psutil.Process(pids[0])
    while (parent := proc.parent()) is not None and "bentoml" in " ".join(parent.cmdline()):
        proc = parent
    return proc.pid


def _describe(url: str) -> tuple[list[str], dict[str, str], bool]:
    """Served models, their stable versions, and whether /v2 (OIP) answers."""
    with httpx.Client(base_url=url, timeout=10) as client:
        rows = client.get("/v1/models").raise_for_status().json()["models"]
        oip = client.get("/v2").status_code == 200
    versions = {r["name"]: r["version"] for r in rows if r.get("stable", True)}
    return [m for m in MODEL_NAMES if m in versions], versions, oip


@contextlib.contextmanager
def target(host: str | None, store: Path, log_dir: Path) -> Iterator[Target]:
    if host:
        if not is_loopback(host):
            raise SystemExit(f"refusing {host}: load runs target loopback addresses only")
        models, versions, oip = _describe(host)
        yield Target(host.rstrip("/"), _listening_pid(host), models, versions, oip, False)
        return
    from services.launch import serve  # the same real `bentoml serve` the test suite uses

    models = store_models(store)
    if not models:
        raise SystemExit(f"no models in the store {store}; train some with `podium train`")
    print(f"loadtest: starting a server over {store} with {', '.join(models)}", flush=True)
    with serve(store, log_dir, env={"PODIUM_MODELS": json.dumps(models)}, ready_timeout=300) as srv:
        served, versions, oip = _describe(srv.url)
        yield Target(srv.url, srv.proc.pid, served, versions, oip, True)


def mix_weights(tgt: Target, weights: str, models: list[str] | None = None) -> str:
    """``weights`` plus weight 0 for what ``tgt`` cannot answer (or ``models`` leaves out):
    unserved models, and the OIP forms while /v2 does not answer. Appended last, so they win."""
    off = [f"{m}=0" for m in MODEL_NAMES
           if m not in tgt.models or (models is not None and m not in models)]
    if not tgt.oip:
        off.append("oip=0")
    return ",".join(filter(None, [weights, *off]))


# ------------------------------------------------------------------------------ locust

@dataclass
class Step:
    label: str
    users: int
    requests: int = 0
    failures: int = 0
    rps: float = 0.0
    p50_ms: float = 0.0
    p95_ms: float = 0.0
    p99_ms: float = 0.0
    avg_ms: float = 0.0
    exit_code: int = 0
    rows: list[dict[str, Any]] = field(default_factory=list)


def run_locust(url: str, classes: list[str], users: int, seconds: float, prefix: Path,
               weights: str = "", extra: list[str] | None = None, html: bool = True,
               label: str = "") -> Step:
    """One headless Locust process, bounded by ``seconds`` (and killed if it overruns)."""
    prefix.parent.mkdir(parents=True, exist_ok=True)
    cmd = [LOCUST, "-f", str(LOCUSTFILE), "--headless", "--host", url, "-u", str(users),
           "-r", str(users), "-t", f"{int(seconds)}s", "--stop-timeout", "10",
           "--reset-stats", "--only-summary", "--csv", str(prefix),
           "--logfile", f"{prefix}.log", "--weights", weights, *(extra or [])]
    if "--interval-log" not in cmd:  # it also carries the accuracy-under-load counts
        cmd += ["--interval-log", f"{prefix}_intervals.jsonl"]
    if html:
        cmd += ["--html", f"{prefix}.html"]
    cmd += classes
    (prefix.parent / f"{prefix.name}.cmd").write_text(shlex.join(cmd) + "\n")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=seconds + 120)
    step = read_stats(Path(f"{prefix}_stats.csv"), label or prefix.name, users)
    step.exit_code = proc.returncode
    if not step.requests and proc.returncode:
        raise RuntimeError(f"locust failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return step


def _ms(value: str) -> float:
    return 0.0 if value in ("", "N/A") else float(value)  # N/A: no requests, no percentile


def read_stats(path: Path, label: str, users: int) -> Step:
    step = Step(label, users)
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            entry = {"name": row["Name"], "requests": int(row["Request Count"]),
                     "failures": int(row["Failure Count"]), "rps": float(row["Requests/s"]),
                     "p50_ms": _ms(row["50%"]), "p95_ms": _ms(row["95%"]),
                     "p99_ms": _ms(row["99%"]), "avg_ms": _ms(row["Average Response Time"])}
            if row["Name"] == "Aggregated":
                for key, value in entry.items():
                    if key != "name":
                        setattr(step, key, value)
            else:
                step.rows.append(entry)
    return step


# ------------------------------------------------------------------------------ machine

def machine() -> dict[str, Any]:
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()
    return {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "host": platform.node(), "cpus": os.cpu_count(), "cpu": cpu,
            "python": platform.python_version(), "commit": commit,
            "loadavg": [round(v, 2) for v in os.getloadavg()]}


class RssSampler(threading.Thread):
    """Samples the RSS of the server's whole process tree every ``every`` seconds."""

    def __init__(self, pid: int, path: Path, every: float = 5.0) -> None:
        super().__init__(daemon=True)
        self.pid, self.path, self.every = pid, path, every
        self.samples: list[tuple[float, int, int, float]] = []  # t, rss bytes, procs, load1
        self.stopping = threading.Event()

    def sample(self) -> tuple[int, int]:
        import psutil

        root = psutil.Process(self.pid)
        procs = [root, *root.children(recursive=True)]
        rss = 0
        for proc in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                rss += proc.memory_info().rss
        return rss, len(procs)

    def run(self) -> None:
        started = time.monotonic()
        with open(self.path, "w") as fh:
            fh.write("t_s,rss_mib,processes,load1\n")
            while not self.stopping.is_set():
                rss, n = self.sample()
                t, load = time.monotonic() - started, os.getloadavg()[0]
                self.samples.append((t, rss, n, load))
                fh.write(f"{t:.1f},{rss / 2**20:.1f},{n},{load:.2f}\n")
                fh.flush()
                self.stopping.wait(self.every)

    def stop(self) -> None:
        self.stopping.set()
        self.join()


# ------------------------------------------------------------------------------ modes

def parse_targets(spec: str) -> dict[str, float]:
    """``100,char-rnn=400`` → {"*": 100, "char-rnn": 400}."""
    out: dict[str, float] = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        key, sep, value = item.rpartition("=")
        out[key if sep else "*"] = float(value)
    out.setdefault("*", 100.0)
    return out


def mode_once(args: argparse.Namespace, tgt: Target, out: Path) -> int:
    classes, weights = [MIXED_USER], mix_weights(tgt, args.weights, args.models)
    step = run_locust(tgt.url, classes, args.users, args.run_time, out / "locust", weights,
                      label=MIXED)
    summary = {"mode": "once", "url": tgt.url, "users": args.users, "run_time_s": args.run_time,
               "classes": classes, "weights": weights, "versions": tgt.versions,
               "machine": machine(), "result": asdict(step),
               "accuracy_pct": accuracy(out / "locust_intervals.jsonl")}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"loadtest: {step.requests} requests, {step.failures} failed, {step.rps:.1f} req/s, "
          f"p50 {step.p50_ms:.0f} ms, p99 {step.p99_ms:.0f} ms → {out}")
    return 0 if step.failures == 0 and step.requests > 0 and step.exit_code == 0 else 1


def request_for(tgt: Target, row: str, args: argparse.Namespace) -> tuple[list[str], str, list[str]]:
    """Locust classes, weights and extra arguments for a sweep or soak row: the mixed profile,
    or one model's single-input request."""
    if row == MIXED:
        return [MIXED_USER], mix_weights(tgt, args.weights, args.models), []
    if row not in tgt.models:
        raise SystemExit(f"{row!r} is not served at {tgt.url}; served: {', '.join(tgt.models)}")
    return [SWEEP_USER.get(row) or user_specs([row])[0].name], "", ["--batch", "1"]


def sweep_model(tgt: Target, model: str, out: Path, args: argparse.Namespace,
                target_ms: float) -> dict[str, Any]:
    classes, weights, extra = request_for(tgt, model, args)
    steps: list[Step] = []
    best: Step | None = None
    reason = f"reached --max-users {args.max_users}"
    users, flat = 1, 0
    while users <= args.max_users:
        step = run_locust(tgt.url, classes, users, args.step_s, out / "steps" / f"{model}-u{users}",
                          weights, extra, html=False, label=model)
        steps.append(step)
        print(f"  {model:16s} users {users:3d}: {step.rps:8.1f} req/s  p50 {step.p50_ms:6.0f}  "
              f"p99 {step.p99_ms:6.0f} ms  failures {step.failures}", flush=True)
        if step.failures:
            reason = f"{step.failures} failures at {users} users"
            break
        if step.p99_ms > target_ms:
            reason = f"p99 {step.p99_ms:.0f} ms > {target_ms:.0f} ms at {users} users"
            break
        # Saturated: twice in a row no better than 3 % over the best so far; more users only queue.
        flat = flat + 1 if best and step.rps < best.rps * 1.03 else 0
        if best is None or step.rps > best.rps:
            best = step
        if flat >= 2:
            reason = f"throughput flat from {best.users} users (saturated)"
            break
        users *= 2
    return {"model": model, "classes": classes, "p99_target_ms": target_ms, "reason": reason,
            "best": asdict(best) if best else None, "steps": [asdict(s) for s in steps]}


def sweep_table(rows: list[dict[str, Any]], versions: dict[str, str]) -> str:
    lines = ["| model | request | p99 target | users | throughput (req/s) | p50 ms | p95 ms | "
             "p99 ms | stopped because |", "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        best = row["best"]
        request = "mixed profile" if row["model"] == MIXED else row["classes"][0]
        if best is None:
            lines.append(f"| {row['model']} | {request} | {row['p99_target_ms']:.0f} ms | – | "
                         f"none met the target | | | | {row['reason']} |")
            continue
        lines.append(f"| {row['model']} | {request} | {row['p99_target_ms']:.0f} ms | "
                     f"{best['users']} | {best['rps']:.1f} | {best['p50_ms']:.0f} | "
                     f"{best['p95_ms']:.0f} | {best['p99_ms']:.0f} | {row['reason']} |")
    if versions:
        lines.append("")
        lines.append("Versions: " + ", ".join(f"{m} `{v}`" for m, v in versions.items()))
    return "\n".join(lines) + "\n"


def sweep_plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Throughput vs p99, one line per model, in a child process (matplotlib stays out of
    this one)."""
    data = [{"model": r["model"], "target": r["p99_target_ms"],
             "points": [(s["rps"], s["p99_ms"], s["users"]) for s in r["steps"]]} for r in rows]
    subprocess.run([sys.executable, "-m", "loadtests.plot", str(path)], input=json.dumps(data),
                   text=True, check=True, cwd=ROOT, timeout=120)


def mode_sweep(args: argparse.Namespace, tgt: Target, out: Path) -> int:
    targets = parse_targets(args.p99_ms)
    models = [m for m in (args.models or tgt.models) if m in tgt.models]
    if args.mixed:
        models.append(MIXED)
    started = machine()
    rows = []
    for model in models:
        rows.append(sweep_model(tgt, model, out, args, targets.get(model, targets["*"])))
        (out / "sweep.json").write_text(json.dumps(
            {"mode": "sweep", "url": tgt.url, "step_s": args.step_s, "max_users": args.max_users,
             "versions": tgt.versions, "machine_start": started, "rows": rows}, indent=2))
    table = sweep_table(rows, tgt.versions)
    (out / "sweep.md").write_text(table)
    sweep_plot(rows, out / "sweep.png")
    summary = json.loads((out / "sweep.json").read_text())
    summary["machine_end"] = machine()
    (out / "sweep.json").write_text(json.dumps(summary, indent=2))
    print(table)
    return 0


def _capacity(path: Path, row: str) -> tuple[float, int]:
    rows = {r["model"]: r for r in json.loads(path.read_text())["rows"]}
    if row not in rows or rows[row]["best"] is None:
        raise SystemExit(f"{path}: no capacity measured for {row!r}; have {sorted(rows)}")
    best = rows[row]["best"]
    return best["rps"], best["users"]


def accuracy(path: Path) -> dict[str, Any]:
    """Accuracy under load per request name, from the locustfile's interval log."""
    if not path.is_file():
        return {}
    found = [r["accuracy"] for r in map(json.loads, path.read_text().splitlines()) if "accuracy" in r]
    return {name: round(100 * c["correct"] / max(c["inputs"], 1), 2)
            for name, c in (found[-1] if found else {}).items()}


def _windows(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [w for w in map(json.loads, path.read_text().splitlines()) if "t" in w]


def mode_soak(args: argparse.Namespace, tgt: Target, out: Path) -> int:
    if tgt.pid is None:
        raise SystemExit("soak needs the server's process to sample RSS; could not find the "
                         f"process listening at {tgt.url}")
    capacity_users = args.users
    if args.rps:
        rps = args.rps
    elif args.capacity:
        capacity, capacity_users = _capacity(args.capacity, args.row)
        rps = round(capacity * args.fraction, 1)
    else:
        raise SystemExit("soak needs --rps or --capacity (a sweep.json)")
    users = args.users or max(4, capacity_users)
    row = args.row
    classes, weights, extra = request_for(tgt, row, args)
    extra += ["--rps", str(rps), "--interval-log", str(out / "intervals.jsonl"),
              "--interval-s", str(args.interval_s)]
    sampler = RssSampler(tgt.pid, out / "rss.csv", args.sample_s)
    started = machine()
    sampler.start()
    try:
        step = run_locust(tgt.url, classes, users, args.duration, out / "locust", weights, extra,
                          label=row)
    finally:
        sampler.stop()
    windows = _windows(out / "intervals.jsonl")
    after = [s for s in sampler.samples if s[0] >= args.warmup]
    rss_base = after[0][1] if after else 0
    rss_end, rss_max = (after[-1][1], max(s[1] for s in after)) if after else (0, 0)
    growth = 100 * (rss_end - rss_base) / rss_base if rss_base else float("nan")
    settled = [w for w in windows if w["t"] > args.warmup and w["requests"]]
    first, last = (settled[0], settled[-1]) if settled else ({}, {})
    summary = {
        "mode": "soak", "url": tgt.url, "row": row, "classes": classes, "users": users,
        "weights": weights, "target_rps": rps, "fraction_of_capacity": None if args.rps else args.fraction,
        "duration_s": args.duration, "warmup_s": args.warmup, "versions": tgt.versions,
        "machine_start": started, "machine_end": machine(), "result": asdict(step),
        "accuracy_pct": accuracy(out / "intervals.jsonl"),
        "rss_mib": {"after_warmup": round(rss_base / 2**20, 1), "end": round(rss_end / 2**20, 1),
                    "max": round(rss_max / 2**20, 1),
                    "first": round(sampler.samples[0][1] / 2**20, 1) if sampler.samples else None},
        "rss_growth_pct_after_warmup": round(growth, 2),
        "latency_drift": {"first_window": first, "last_window": last},
        "load1": {"min": min((s[3] for s in sampler.samples), default=None),
                  "max": max((s[3] for s in sampler.samples), default=None),
                  "mean": round(sum(s[3] for s in sampler.samples) / max(len(sampler.samples), 1), 2)},
    }
    ok = step.failures == 0 and step.requests > 0 and growth < args.max_growth
    summary["passed"] = ok
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    line = (f"soak {row}: {step.requests} requests, {step.failures} failed, "
                       f"{step.rps:.1f} req/s (target {rps}), p50 {step.p50_ms:.0f} ms, p99 "
                       f"{step.p99_ms:.0f} ms; p99 first/last window {first.get('p99_ms')}/"
                       f"{last.get('p99_ms')} ms; RSS {rss_base / 2**20:.0f} → "
                       f"{rss_end / 2**20:.0f} MiB ({growth:+.2f} % after {args.warmup:.0f} s "
                       f"warm-up) → {'PASS' if ok else 'FAIL'}")
    print(line)
    return 0 if ok else 1


# ------------------------------------------------------------------------------ main

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m loadtests.run",
                                     description=__doc__.split("\n\n")[0])
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--host",
                        help="a running server (loopback only); default: start one")
    common.add_argument("--store", type=Path,
                        default=Path(os.environ.get("BENTOML_HOME", Path.home() / "bentoml")),
                        help="model store for the server started here")
    common.add_argument("--out", type=Path, help="results folder (default results/tmp/loadtest/…)")
    common.add_argument("--models", type=lambda s: [m for m in s.split(",") if m],
                        help="limit to these models (comma-separated)")
    common.add_argument("--weights", default="", help="mixed-traffic weights (see locustfile)")
    common.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="payload cache")
    sub = parser.add_subparsers(dest="mode", required=True)
    once = sub.add_parser("once", parents=[common], help="one bounded mixed-traffic test")
    once.add_argument("--users", type=int, default=8)
    once.add_argument("--run-time", type=float, default=30, help="seconds")
    sweep = sub.add_parser("sweep", parents=[common], help="capacity sweep per model")
    sweep.add_argument("--p99-ms", default="100,char-rnn=400,mixed=400",
                       help="p99 target in ms, then per-row overrides (a model, or mixed)")
    sweep.add_argument("--step-s", type=float, default=12, help="seconds per user step")
    sweep.add_argument("--max-users", type=int, default=64)
    sweep.add_argument("--no-mixed", dest="mixed", action="store_false",
                       help="skip the mixed-profile row")
    soak = sub.add_parser("soak", parents=[common], help="fixed load for a set time")
    soak.add_argument("--duration", type=float, default=600, help="seconds")
    soak.add_argument("--rps", type=float, default=0, help="total request rate")
    soak.add_argument("--capacity", type=Path, help="sweep.json to take capacity from")
    soak.add_argument("--fraction", type=float, default=0.7, help="of capacity (with --capacity)")
    soak.add_argument("--row", default=MIXED, help="sweep row / model to soak (default mixed)")
    soak.add_argument("--users", type=int, default=0, help="default: the capacity step's, ≥ 4")
    soak.add_argument("--warmup", type=float, default=60, help="seconds excluded from growth")
    soak.add_argument("--sample-s", type=float, default=5, help="RSS sampling period")
    soak.add_argument("--interval-s", type=float, default=30, help="latency window")
    soak.add_argument("--max-growth", type=float, default=10, help="RSS growth limit, %%")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.models:
        unknown = [m for m in args.models if m not in CATALOG]
        if unknown:
            raise SystemExit(f"unknown models {unknown}; known: {', '.join(MODEL_NAMES)}")
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out = args.out or ROOT / "results" / "tmp" / "loadtest" / f"{args.mode}-{stamp}"
    out.mkdir(parents=True, exist_ok=True)
    prepare(args.cache)
    os.environ["PODIUM_LOAD_CACHE"] = str(args.cache)
    (out / "command.txt").write_text(shlex.join(["python", "-m", "loadtests.run",
                                                 *(argv if argv is not None else sys.argv[1:])]) + "\n")
    with target(args.host, args.store, out) as tgt:
        if not tgt.oip:
            print("loadtest: /v2 (Open Inference Protocol) does not answer here; its user classes "
                  "are left out of this run", flush=True)
        modes = {"once": mode_once, "sweep": mode_sweep, "soak": mode_soak}
        return modes[args.mode](args, tgt, out)


if __name__ == "__main__":
    raise SystemExit(main())
