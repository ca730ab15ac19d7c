"""Metrics and the pictures a person would rather look at than read (curves, confusion matrix)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np


def accuracy(pred: np.ndarray, target: np.ndarray) -> float:
    return float((pred == target).mean()) if len(target) else 0.0


def confusion_matrix(pred: np.ndarray, target: np.ndarray, n_classes: int) -> np.ndarray:
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (target, pred), 1)
    return matrix


def per_class_accuracy(matrix: np.ndarray, labels: tuple[str, ...]) -> dict[str, float]:
    totals = matrix.sum(axis=1)
    return {label: (float(matrix[i, i] / totals[i]) if totals[i] else 0.0)
            for i, label in enumerate(labels)}


def roc_auc(scores: np.ndarray, target: np.ndarray) -> float:
    """Area under the ROC curve via the rank-sum (Mann–Whitney U) form, ties averaged."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    target = np.asarray(target).ravel().astype(bool)
    n_pos, n_neg = int(target.sum()), int((~target).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):  # average ranks over runs of equal scores
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[target].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def bits_per_char(nats: float) -> float:
    return nats / math.log(2)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(history: list[dict[str, float]], path: Path, title: str) -> Path:
    """One panel of losses and one of every other metric, against the epoch."""
    plt = _pyplot()
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(10, 4))
    x = [row["epoch"] for row in history]
    keys = [k for k in history[0] if k != "epoch"] if history else []
    for key in keys:
        ax = ax_loss if "loss" in key or "nats" in key else ax_metric
        ax.plot(x, [row[key] for row in history], marker="o", label=key)
    for ax, label in ((ax_loss, "loss"), (ax_metric, "metric")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_confusion(matrix: np.ndarray, labels: tuple[str, ...], path: Path, title: str) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 5.5))
    shown = np.log1p(matrix)  # log scale so the off-diagonal errors are visible
    ax.imshow(shown, cmap="Blues")
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if shown[i, j] > shown.max() * 0.6 else "black")
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
