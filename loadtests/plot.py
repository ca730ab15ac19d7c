"""Throughput-vs-p99 chart of a capacity sweep: ``python -m loadtests.plot OUT.png`` reading the
sweep rows as JSON on stdin (``[{"model", "target", "points": [[rps, p99_ms, users], ...]}]``).
Its own process, so matplotlib never loads into the runner or Locust."""

from __future__ import annotations

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)


def plot(rows: list[dict], path: str) -> None:
    fig, ax = plt.subplots(figsize=(9, 5.5))
    for row in rows:
        points = row["points"]
        if not points:
            continue
        line, = ax.plot([p[0] for p in points], [p[1] for p in points], marker="o",
                        label=f"{row['model']} (target {row['target']:.0f} ms)")
        for rps, p99, users in points:
            ax.annotate(str(users), (rps, p99), textcoords="offset points", xytext=(3, 3),
                        fontsize=7, color=line.get_color())
    for target in sorted({row["target"] for row in rows}):
        ax.axhline(target, linestyle="--", linewidth=0.8, color="grey")
    ax.set_xlabel("throughput (requests/s)")
    ax.set_ylabel("p99 latency (ms)")
    ax.set_yscale("log")
    ax.set_title("Podium capacity sweep: throughput vs p99 (labels = concurrent users)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    plot(json.load(sys.stdin), sys.argv[1])
