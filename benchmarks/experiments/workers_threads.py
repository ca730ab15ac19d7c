"""Issue 15: which server workers × ONNX Runtime threads to run by default, measured.

Podium (batching on) with 1, 2 and ``nproc`` workers × 1 and 2 runtime threads per model, all
servers up side by side, mnist-cnn JSON (the bench-serve body) at c = 1, 16 and 64 with ``hey`` on
the same cores; ``--rounds`` rounds, the servers taking turns within each point so that machine
noise hits all of them alike; the median of the rounds is reported.

    BENTOML_HOME=... .venv/bin/python -m benchmarks.experiments.workers_threads --rounds 3 --seconds 5
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import tempfile
from pathlib import Path

from benchmarks import bench_serve as b


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5)
    args = parser.parse_args()
    store = Path(os.environ.get("BENTOML_HOME", Path.home() / "bentoml"))
    work = Path(tempfile.mkdtemp(prefix="workers-threads-"))
    bodies, _, _ = b.make_bodies(work)
    path = b.path_for("mnist-cnn", "json")
    levels = (1, 16, 64)
    rps: dict[tuple[str, int], list[float]] = {}
    p99: dict[tuple[str, int], list[float]] = {}
    b.log(f"load average {b.load_avg()}; busy: {'; '.join(b.busy_processes()) or 'none'}")
    with contextlib.ExitStack() as stack:
        servers = {}
        for w, t in b.matrix_configs():
            name = f"{w} worker(s), {t} thread(s)"
            b.copy_store(store, work / f"home-w{w}-t{t}")
            servers[name] = stack.enter_context(b.podium(
                f"w{w}-t{t}", work / f"home-w{w}-t{t}", work, True,
                {"PODIUM_WORKERS": str(w), "PODIUM_INTRA_OP_THREADS": str(t)}))
            b.hey(servers[name].url + path, bodies["json"], 16, 1)
        for r in range(args.rounds):
            for c in levels:
                order = list(servers.items())
                for name, server in order if r % 2 == 0 else reversed(order):
                    point = b.hey(server.url + path, bodies["json"], c, args.seconds)
                    rps.setdefault((name, c), []).append(point["ok_rps"])
                    p99.setdefault((name, c), []).append(point["p99_ms"])
                    b.log(f"round {r + 1} c={c:<3d} {name}: {point['ok_rps']:,.0f} req/s, p99 "
                          f"{point['p99_ms']:.1f} ms (load {point['load_avg_1m']:.2f})")
    b.log(f"load average at the end {b.load_avg()}")
    print("\n| workers, threads | " + " | ".join(f"c={c} req/s (p99 ms)" for c in levels) + " |")
    print("|---|" + "---:|" * len(levels))
    for name in servers:
        cells = [f"{statistics.median(rps[name, c]):,.0f} ({statistics.median(p99[name, c]):.1f})"
                 for c in levels]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
