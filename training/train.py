"""One generic training run: load data → train (with progress and checkpoints) → evaluate →
export → prove parity → register a new version.

Each model kind (tabular, image, text) is a small ``Task`` with ``train_step``/``evaluate``;
the loop, checkpointing, export and registration are shared.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from models import nets, textcodec
from models.artifacts import VOCAB_FILE
from models.catalog import ModelSpec, Recipe, get_spec
from models.labels import labels_of
from training import data as datasets
from training.evaluate import (
    accuracy,
    bits_per_char,
    confusion_matrix,
    per_class_accuracy,
    plot_confusion,
    plot_curves,
    roc_auc,
)
from training.export import MAX_ABS_DIFF, export_all, prove_parity
from training.register import code_revision, register

EVAL_BATCH = 1000


@dataclass
class RunConfig:
    """Everything one run needs; the recipe comes from the catalog, these override it."""

    name: str
    profile: str = "quick"
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    max_steps: int | None = None
    train_subset: int | None = None
    seed: int = 0
    data: str | None = None
    data_source: str = "package"  # MNIST: package | torchvision | folder
    test_subset: int | None = None  # evaluate and prove parity on the first N held-out examples
    runs_dir: str = "runs"
    resume: str | None = None
    register: bool = True
    parity_tolerance: float = MAX_ABS_DIFF

    def overrides(self) -> dict[str, Any]:
        keys = ("epochs", "batch_size", "lr", "max_steps", "train_subset")
        return {k: getattr(self, k) for k in keys if getattr(self, k) is not None}


@dataclass
class RunResult:
    name: str
    tag: str | None
    metrics: dict[str, Any]
    parity: dict[str, Any]
    run_dir: Path
    seconds: float
    files: dict[str, Path] = field(default_factory=dict)


def _optimizer(recipe: Recipe, params: Any) -> torch.optim.Optimizer:
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum,
                               weight_decay=recipe.weight_decay)
    if recipe.optimizer == "adam":
        return torch.optim.Adam(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    raise ValueError(f"unknown optimizer {recipe.optimizer!r}")


class Task:
    """A model kind's data, module and steps. Subclasses set ``module`` and ``steps_per_epoch``."""

    module: nn.Module
    steps_per_epoch: int

    def __init__(self, spec: ModelSpec, recipe: Recipe, cfg: RunConfig) -> None:
        self.spec, self.recipe, self.cfg = spec, recipe, cfg
        self.gen = torch.Generator().manual_seed(cfg.seed)

    def limit_steps(self, natural: int) -> int:
        steps = max(1, natural)
        return min(steps, self.recipe.max_steps) if self.recipe.max_steps else steps

    def train_step(self, step: int) -> tuple[float, float]:
        raise NotImplementedError

    def evaluate(self) -> dict[str, float]:
        raise NotImplementedError

    def final_metrics(self, run_dir: Path) -> tuple[dict[str, Any], dict[str, Path]]:
        raise NotImplementedError

    def export_example(self) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    def parity_batches(self) -> list[tuple[np.ndarray, ...]]:
        raise NotImplementedError

    def extra_files(self, run_dir: Path) -> dict[str, Path]:
        return {}

    def describe(self) -> dict[str, Any]:
        return {}

    @property
    def data_info(self) -> dict[str, Any]:
        raise NotImplementedError


def _batches(n: int, size: int, gen: torch.Generator) -> list[torch.Tensor]:
    return list(torch.randperm(n, generator=gen).split(size))


def random_affine(x: torch.Tensor, gen: torch.Generator, degrees: float = 10.0,
                  translate: float = 0.1, scale: float = 0.1) -> torch.Tensor:
    """Per-sample random rotation, scaling and shift of a batch [B,1,H,W], zero background."""
    b = x.size(0)
    angle = (torch.rand(b, generator=gen) * 2 - 1) * math.radians(degrees)
    factor = 1 + (torch.rand(b, generator=gen) * 2 - 1) * scale
    shift = (torch.rand(b, 2, generator=gen) * 2 - 1) * translate
    cos, sin = torch.cos(angle) / factor, torch.sin(angle) / factor
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1),
                         torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, padding_mode="zeros", align_corners=False)


class ImageTask(Task):
    def __init__(self, spec: ModelSpec, recipe: Recipe, cfg: RunConfig) -> None:
        super().__init__(spec, recipe, cfg)
        mnist = datasets.load_mnist(cfg.data_source, cfg.data)
        train_x, train_y = mnist.train_x, mnist.train_y
        if recipe.train_subset:
            keep = np.random.default_rng(datasets.SPLIT_SEED).permutation(len(train_x))
            keep = np.sort(keep[: recipe.train_subset])
            train_x, train_y = train_x[keep], train_y[keep]
        test_x, test_y = mnist.test_x, mnist.test_y
        if cfg.test_subset:
            test_x, test_y = test_x[: cfg.test_subset], test_y[: cfg.test_subset]
        self.train_x = torch.from_numpy(train_x.astype(np.float32) / 255.0).unsqueeze(1)
        self.train_y = torch.from_numpy(train_y)
        self.test_x = torch.from_numpy(test_x.astype(np.float32) / 255.0).unsqueeze(1)
        self.test_y = test_y
        self._data = {"source": mnist.source, "fingerprint": mnist.fingerprint,
                      "train_size": len(train_x), "test_size": len(test_x),
                      "split_seed": datasets.SPLIT_SEED}
        self.module = nets.ServingWrapper(nets.mnist_standardize(), spec.build())
        self.steps_per_epoch = self.limit_steps(math.ceil(len(self.train_x) / recipe.batch_size))
        self.loss_fn = nn.CrossEntropyLoss()
        self._order: list[torch.Tensor] = []

    @property
    def data_info(self) -> dict[str, Any]:
        return self._data

    def train_step(self, step: int) -> tuple[float, float]:
        if step % self.steps_per_epoch == 0:
            self._order = _batches(len(self.train_x), self.recipe.batch_size, self.gen)
        idx = self._order[step % self.steps_per_epoch]
        x, y = self.train_x[idx], self.train_y[idx]
        if self.recipe.augment:
            x = random_affine(x, self.gen)
        logits = self.module(x)
        loss = self.loss_fn(logits, y)
        loss.backward()
        return loss.item(), float((logits.detach().argmax(1) == y).float().mean())

    def _logits(self) -> np.ndarray:
        self.module.eval()
        with torch.no_grad():
            out = [self.module(chunk).numpy() for chunk in self.test_x.split(EVAL_BATCH)]
        self.module.train()
        return np.concatenate(out)

    def evaluate(self) -> dict[str, float]:
        logits = self._logits()
        loss = float(F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(self.test_y)))
        return {"test_loss": loss, "test_accuracy": accuracy(logits.argmax(1), self.test_y)}

    def final_metrics(self, run_dir: Path) -> tuple[dict[str, Any], dict[str, Path]]:
        logits = self._logits()
        pred = labels_of(logits)
        matrix = confusion_matrix(pred, self.test_y, 10)
        png = plot_confusion(matrix, self.spec.labels, run_dir / "confusion.png",
                             f"{self.spec.name}: test confusion matrix")
        metrics = {"test_accuracy": accuracy(pred, self.test_y),
                   "per_class_accuracy": per_class_accuracy(matrix, self.spec.labels),
                   "confusion_matrix": matrix.tolist()}
        return metrics, {"confusion_png": png}

    def export_example(self) -> tuple[torch.Tensor, ...]:
        return (self.test_x[:2].clone(),)

    def parity_batches(self) -> list[tuple[np.ndarray, ...]]:
        return [(chunk.numpy(),) for chunk in self.test_x.split(EVAL_BATCH)]


class TabularTask(Task):
    def __init__(self, spec: ModelSpec, recipe: Recipe, cfg: RunConfig) -> None:
        super().__init__(spec, recipe, cfg)
        pima = datasets.load_pima(cfg.data)
        self.train_x = torch.from_numpy(pima.train_x)
        self.train_y = torch.from_numpy(pima.train_y).unsqueeze(1)
        self.test_x = torch.from_numpy(pima.test_x)
        self.test_y = pima.test_y
        mean = self.train_x.mean(0)
        std = self.train_x.std(0).clamp_min(1e-6)
        self.scaling = {"mean": mean.tolist(), "std": std.tolist()}
        self._data = {"source": pima.source, "fingerprint": pima.fingerprint,
                      "train_size": len(pima.train_x), "test_size": len(pima.test_x),
                      "split_seed": pima.seed, "test_fraction": datasets.PIMA_TEST_FRACTION}
        self.module = nets.ServingWrapper(nets.Standardize(mean, std), spec.build())
        self.steps_per_epoch = self.limit_steps(math.ceil(len(self.train_x) / recipe.batch_size))
        self.loss_fn = nn.BCELoss()
        self._order: list[torch.Tensor] = []

    @property
    def data_info(self) -> dict[str, Any]:
        return self._data

    def describe(self) -> dict[str, Any]:
        return {"scaling": self.scaling}

    def train_step(self, step: int) -> tuple[float, float]:
        if step % self.steps_per_epoch == 0:
            self._order = _batches(len(self.train_x), self.recipe.batch_size, self.gen)
        idx = self._order[step % self.steps_per_epoch]
        prob = self.module(self.train_x[idx])
        loss = self.loss_fn(prob, self.train_y[idx])
        loss.backward()
        return loss.item(), float(((prob.detach() >= 0.5).float() == self.train_y[idx]).float().mean())

    def _probs(self) -> np.ndarray:
        self.module.eval()
        with torch.no_grad():
            prob = self.module(self.test_x).numpy().reshape(-1)
        self.module.train()
        return prob

    def evaluate(self) -> dict[str, float]:
        prob = self._probs()
        loss = float(F.binary_cross_entropy(torch.from_numpy(prob), torch.from_numpy(self.test_y)))
        return {"test_loss": loss, "test_accuracy": accuracy(prob >= 0.5, self.test_y >= 0.5),
                "test_roc_auc": roc_auc(prob, self.test_y)}

    def final_metrics(self, run_dir: Path) -> tuple[dict[str, Any], dict[str, Path]]:
        prob = self._probs()
        pred = labels_of(prob)
        matrix = confusion_matrix(pred, self.test_y.astype(np.int64), 2)
        png = plot_confusion(matrix, self.spec.labels, run_dir / "confusion.png",
                             f"{self.spec.name}: held-out confusion matrix")
        metrics = {"test_accuracy": accuracy(pred, self.test_y.astype(np.int64)),
                   "test_roc_auc": roc_auc(prob, self.test_y),
                   "per_class_accuracy": per_class_accuracy(matrix, self.spec.labels),
                   "confusion_matrix": matrix.tolist()}
        return metrics, {"confusion_png": png}

    def export_example(self) -> tuple[torch.Tensor, ...]:
        return (self.test_x[:2].clone(),)

    def parity_batches(self) -> list[tuple[np.ndarray, ...]]:
        return [(self.test_x.numpy(),)]


class TextTask(Task):
    """Character language model on random windows; an "epoch" is ``max_steps`` windows' worth."""

    def __init__(self, spec: ModelSpec, recipe: Recipe, cfg: RunConfig) -> None:
        super().__init__(spec, recipe, cfg)
        corpus = datasets.load_corpus(cfg.data)
        train_text = corpus.train[: recipe.train_subset] if recipe.train_subset else corpus.train
        self.chars = ["<unk>"] + sorted(set(train_text))
        self.index = {c: i for i, c in enumerate(self.chars)}
        self.train_ids = torch.from_numpy(self.encode(train_text))
        val_chars = int(recipe.extra.get("val_chars", 0)) or len(corpus.val)
        if cfg.test_subset:
            val_chars = min(val_chars, cfg.test_subset)
        self.val_ids = self.encode(corpus.val[:val_chars])
        self.seq_len = int(recipe.extra["seq_len"])
        self.arch = {"vocab_size": len(self.chars), "embed": int(recipe.extra["embed"]),
                     "hidden": int(recipe.extra["hidden"]), "layers": int(recipe.extra["layers"]),
                     "cell": "GRU"}
        self.module = spec.build(vocab_size=len(self.chars), embed=self.arch["embed"],
                                 hidden=self.arch["hidden"], layers=self.arch["layers"])
        windows = len(self.train_ids) // (recipe.batch_size * self.seq_len)
        self.steps_per_epoch = self.limit_steps(windows)
        self._data = {"source": corpus.source, "fingerprint": corpus.fingerprint,
                      "train_chars": len(train_text), "val_chars": len(self.val_ids),
                      "val_fraction": datasets.CORPUS_VAL_FRACTION, "vocab_size": len(self.chars)}
        self.loss_fn = nn.CrossEntropyLoss()
        self.sample: str = ""

    @property
    def data_info(self) -> dict[str, Any]:
        return self._data

    def describe(self) -> dict[str, Any]:
        return {"architecture": self.arch}

    def encode(self, text: str) -> np.ndarray:
        return textcodec.encode_text(text, self.index)[0]

    def train_step(self, step: int) -> tuple[float, float]:
        b, t = self.recipe.batch_size, self.seq_len
        starts = torch.randint(0, len(self.train_ids) - t - 1, (b,), generator=self.gen)
        window = torch.stack([self.train_ids[s: s + t + 1] for s in starts.tolist()])
        x, y = window[:, :-1], window[:, 1:]
        logits, _ = self.module(x, self.module.initial_state(b))
        loss = self.loss_fn(logits.reshape(-1, logits.size(-1)), y.reshape(-1))
        loss.backward()
        nn.utils.clip_grad_norm_(self.module.parameters(), 1.0)
        return loss.item(), float((logits.detach().argmax(-1) == y).float().mean())

    def _streams(self, n_streams: int = 16, max_len: int | None = None) -> np.ndarray:
        per = (len(self.val_ids) - 1) // n_streams
        if max_len:
            per = min(per, max_len + 1)
        return np.stack([self.val_ids[i * per: (i + 1) * per + 1] for i in range(n_streams)])

    def evaluate(self) -> dict[str, float]:
        """Validation cross-entropy over the whole split, as parallel streams carrying state."""
        streams = torch.from_numpy(self._streams())
        self.module.eval()
        total, count = 0.0, 0
        state = self.module.initial_state(streams.size(0))
        with torch.no_grad():
            for s in range(0, streams.size(1) - 1, self.seq_len * 4):
                x = streams[:, s: s + self.seq_len * 4]
                y = streams[:, s + 1: s + 1 + self.seq_len * 4]
                x = x[:, : y.size(1)]
                logits, state = self.module(x, state)
                total += float(F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1),
                                               reduction="sum"))
                count += y.numel()
        self.module.train()
        nats = total / max(count, 1)
        return {"val_nats": nats, "val_bits_per_char": bits_per_char(nats)}

    def generate(self, prompt: str, n: int = 240, temperature: float = 0.8, seed: int = 0) -> str:
        """``prompt`` and ``n`` characters drawn by the served sampler (models/textcodec.py), so
        the run's sample text is what the service would generate with this seed."""
        rng = np.random.default_rng(seed)
        self.module.eval()
        out = prompt
        with torch.no_grad():
            ids = torch.from_numpy(self.encode(prompt)).unsqueeze(0)
            logits, state = self.module(ids, self.module.initial_state(1))
            for _ in range(n):
                nxt = textcodec.sample_next(logits[0, -1].numpy(), rng, temperature)
                out += self.chars[nxt]
                logits, state = self.module(torch.tensor([[nxt]]), state)
        self.module.train()
        return out

    def final_metrics(self, run_dir: Path) -> tuple[dict[str, Any], dict[str, Path]]:
        metrics: dict[str, Any] = dict(self.evaluate())
        self.sample = self.generate("And God said", seed=self.cfg.seed)
        metrics["sample"] = self.sample
        (run_dir / "sample.txt").write_text(self.sample, encoding="utf-8")
        return metrics, {}

    def export_example(self) -> tuple[torch.Tensor, ...]:
        return (torch.from_numpy(self.val_ids[:14].reshape(2, 7).copy()),
                self.module.initial_state(2))

    def parity_batches(self) -> list[tuple[np.ndarray, ...]]:
        streams = self._streams(n_streams=4, max_len=4 * 64)
        state = self.module.initial_state(4).numpy()
        return [(np.ascontiguousarray(streams[:, s: s + 64]), state)
                for s in range(0, streams.shape[1] - 1, 64)]

    def extra_files(self, run_dir: Path) -> dict[str, Path]:
        path = run_dir / VOCAB_FILE
        path.write_text(json.dumps({"chars": self.chars, "unknown_id": 0}, ensure_ascii=False),
                        encoding="utf-8")
        return {"vocab": path}


TASKS: dict[str, type[Task]] = {"image": ImageTask, "tabular": TabularTask, "text": TextTask}


def _scheduler(recipe: Recipe, opt: torch.optim.Optimizer, total: int) -> Any:
    if recipe.scheduler == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe.lr, total_steps=total)
    if recipe.scheduler == "none":
        return None
    raise ValueError(f"unknown scheduler {recipe.scheduler!r}")


def _run_dir(cfg: RunConfig) -> Path:
    if cfg.resume:
        return Path(cfg.resume).parent
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S-%f")
    path = Path(cfg.runs_dir) / cfg.name / f"{stamp}-seed{cfg.seed}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def train(cfg: RunConfig, progress: bool = True) -> RunResult:
    """Run the whole pipeline for one model; returns the registered tag (None if not registered)."""
    started = time.perf_counter()
    spec = get_spec(cfg.name)
    recipe = spec.recipe(cfg.profile).with_overrides(**cfg.overrides())
    torch.manual_seed(cfg.seed)
    task = TASKS[spec.kind](spec, recipe, cfg)
    run_dir = _run_dir(cfg)
    module = task.module
    opt = _optimizer(recipe, module.parameters())
    total_steps = recipe.epochs * task.steps_per_epoch
    sched = _scheduler(recipe, opt, total_steps)
    history: list[dict[str, float]] = []
    start_epoch = 0
    checkpoint_path = run_dir / "checkpoint.pt"
    if cfg.resume:
        ckpt = torch.load(cfg.resume, weights_only=False)
        if ckpt["config"]["name"] != cfg.name:
            raise ValueError(f"checkpoint {cfg.resume} is for {ckpt['config']['name']!r}, "
                             f"not {cfg.name!r}")
        module.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        if sched is not None and ckpt.get("scheduler"):
            sched.load_state_dict(ckpt["scheduler"])
        task.gen.set_state(ckpt["generator"])
        start_epoch, history = ckpt["epoch"], ckpt["history"]
    checkpoint_every = max(1, recipe.epochs // 20)
    module.train()
    bar = tqdm(total=total_steps, initial=start_epoch * task.steps_per_epoch, disable=not progress,
               desc=f"{cfg.name} [{cfg.profile}]", unit="step", dynamic_ncols=True)
    for epoch in range(start_epoch, recipe.epochs):
        losses, accs = [], []
        for step in range(task.steps_per_epoch):
            opt.zero_grad(set_to_none=True)
            loss, acc = task.train_step(epoch * task.steps_per_epoch + step)
            if not math.isfinite(loss):
                raise FloatingPointError(f"{cfg.name}: training loss became {loss} at epoch "
                                         f"{epoch + 1}; lower the learning rate")
            opt.step()
            if sched is not None:
                sched.step()
            losses.append(loss)
            accs.append(acc)
            bar.update(1)
        row = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)),
               "train_accuracy": float(np.mean(accs)), **task.evaluate()}
        history.append(row)
        bar.set_postfix({k: f"{v:.4f}" for k, v in row.items() if k != "epoch"})
        if (epoch + 1) % checkpoint_every == 0 or epoch + 1 == recipe.epochs:
            torch.save({"model": module.state_dict(), "optimizer": opt.state_dict(),
                        "scheduler": sched.state_dict() if sched is not None else None,
                        "generator": task.gen.get_state(), "epoch": epoch + 1,
                        "history": history, "config": asdict(cfg), "recipe": recipe.to_dict()},
                       checkpoint_path)
    bar.close()
    train_seconds = time.perf_counter() - started

    module.eval()
    metrics, pictures = task.final_metrics(run_dir)
    pictures["curves_png"] = plot_curves(history, run_dir / "curves.png",
                                         f"{cfg.name} [{cfg.profile}]")
    example = task.export_example()
    files = export_all(spec, module, example, run_dir / "export")
    files.update(task.extra_files(run_dir))
    parity = prove_parity(spec, module, files, task.parity_batches(),
                          chain_state=spec.recurrent, tolerance=cfg.parity_tolerance)
    metrics["train_seconds"] = round(train_seconds, 2)
    headline = {"name": spec.headline_metric, "value": metrics[spec.headline_metric]}
    metadata = {
        "model": spec.name, "kind": spec.kind, "profile": cfg.profile, "seed": cfg.seed,
        "recipe": recipe.to_dict(), "overrides": cfg.overrides(), "headline": headline,
        "metrics": metrics, "history": history[:: max(1, len(history) // 100)],
        "parity": parity, "data": task.data_info,
        "signature": spec.signature(), "labels": list(spec.labels),
        "preprocessing": {**spec.preprocessing, **task.describe()},
        "code_revision": code_revision(), "torch_version": torch.__version__,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    (run_dir / "metadata.json").write_text(json.dumps(metadata, indent=2, ensure_ascii=False))
    files.update(pictures)
    tag = None
    if cfg.register:
        tag = register(spec.name, files, metadata, labels={"profile": cfg.profile})
    return RunResult(name=spec.name, tag=tag, metrics=metrics, parity=parity, run_dir=run_dir,
                     seconds=time.perf_counter() - started, files=files)
