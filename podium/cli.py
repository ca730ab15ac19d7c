"""The ``podium`` command: train models into the store, list versions, serve, roll out.

Heavy imports (torch, bentoml) happen inside each command, after the store location is set,
so ``podium --help`` is instant and BENTOML_HOME is honoured.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from models.catalog import MODEL_NAMES, PROFILES, UnknownModel, get_spec

INTERRUPTED = 130  # the shell's status for a run ended by SIGINT


class CliError(Exception):
    """A user-facing failure: printed as one line, exit status 1."""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be positive")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive finite number")
    return value


def _add_store(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", metavar="PATH",
                   help="BentoML home holding the model store (default: $BENTOML_HOME or ~/bentoml)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="podium", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="train, export, prove parity and register new versions")
    t.add_argument("names", nargs="*", metavar="NAME", help=f"models: {', '.join(MODEL_NAMES)}")
    t.add_argument("--all", action="store_true", help="every model in the catalog")
    t.add_argument("--missing", action="store_true",
                   help="only the models that have no version in the store yet")
    t.add_argument("--profile", choices=PROFILES, default="quick",
                   help="training recipe (default: quick)")
    t.add_argument("--epochs", type=_positive_int)
    t.add_argument("--batch-size", type=_positive_int)
    t.add_argument("--lr", type=_positive_float, help="learning rate")
    t.add_argument("--max-steps", type=_positive_int, help="optimiser steps per epoch at most")
    t.add_argument("--train-subset", type=_positive_int,
                   help="train on this many examples (characters for char-rnn)")
    t.add_argument("--test-subset", type=_positive_int,
                   help="evaluate and prove parity on the first N held-out examples only")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--parity-tolerance", type=_positive_float, default=1e-4,
                   help="largest |Δ| allowed between exported and eager outputs (default: 1e-4)")
    t.add_argument("--data", metavar="PATH", help="data location instead of the packaged data")
    t.add_argument("--data-source", choices=("package", "torchvision", "folder"), default="package",
                   help="MNIST layout of --data: torchvision root or a folder of IDX files")
    t.add_argument("--runs-dir", default="runs", help="checkpoints, plots and exports (default: runs)")
    t.add_argument("--resume", metavar="CHECKPOINT", help="continue a run from its checkpoint.pt")
    t.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_store(t)

    m = sub.add_parser("models", help="list stored versions")
    m.add_argument("names", nargs="*", metavar="NAME")
    m.add_argument("--json", action="store_true", help="machine-readable output")
    _add_store(m)

    s = sub.add_parser("serve", help="serve the stored models over HTTP (bentoml serve)")
    s.add_argument("--host", help="bind address (default from config: 127.0.0.1)")
    s.add_argument("--port", type=_positive_int, help="port (default from config: 3000)")
    s.add_argument("--workers", type=_positive_int, help="worker processes")
    _add_store(s)

    from podium import rollout_cli

    rollout_cli.add_parser(sub)
    _add_import_parser(sub)
    return parser


def _train(args: argparse.Namespace) -> int:
    from training.register import use_store

    if args.all and args.names:
        raise CliError("give model names or --all, not both")
    names = list(MODEL_NAMES) if (args.all or (args.missing and not args.names)) else args.names
    if not names:
        raise CliError("name at least one model, or use --all")
    for name in names:
        get_spec(name)  # unknown names fail before any work starts
        get_spec(name).recipe(args.profile)
    if args.resume and len(names) != 1:
        raise CliError("--resume continues one run: name exactly one model")
    home = use_store(args.store)
    from models.artifacts import list_versions

    if args.missing:
        names = [n for n in names if not list_versions(n)]
        if not names:
            print(f"every model already has a version in {home}; nothing to train")
            return 0
    from training.train import RunConfig, train

    for name in names:
        cfg = RunConfig(name=name, profile=args.profile, epochs=args.epochs,
                        batch_size=args.batch_size, lr=args.lr, max_steps=args.max_steps,
                        train_subset=args.train_subset, test_subset=args.test_subset,
                        seed=args.seed, data=args.data, data_source=args.data_source,
                        runs_dir=args.runs_dir, resume=args.resume,
                        parity_tolerance=args.parity_tolerance)
        result = train(cfg, progress=not args.no_progress)
        headline = get_spec(name).headline_metric
        print(f"registered {result.tag}  {headline}={result.metrics[headline]:.4f}  "
              f"parity max|Δ| onnx={result.parity['onnxruntime']['max_abs_diff']:.2e}  "
              f"({result.seconds:.1f}s, run {result.run_dir})", flush=True)
    return 0


def _models(args: argparse.Namespace) -> int:
    from training.register import use_store

    home = use_store(args.store)
    from models.artifacts import list_versions
    from models.catalog import default_models

    known = default_models()  # imported models (podium import) are listed too
    for name in args.names:
        if name not in known:
            get_spec(name)  # raises UnknownModel, naming the catalog's models
    rows: list[dict[str, Any]] = []
    for name in args.names or known:
        for v in list_versions(name):
            head = v.metadata.get("headline", {})
            rows.append({"name": v.name, "version": v.version, "created": v.creation_time,
                         "profile": v.metadata.get("profile"), "metric": head.get("name"),
                         "value": head.get("value")})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"no Podium models in {home}; run `podium train --all`")
        return 0
    print(f"{'NAME':<16} {'VERSION':<18} {'CREATED (UTC)':<20} {'PROFILE':<8} HEADLINE")
    for r in rows:
        value = f"{r['metric']}={r['value']:.4f}" if isinstance(r["value"], float) else ""
        print(f"{r['name']:<16} {r['version']:<18} {r['created'][:19]:<20} "
              f"{r['profile'] or '':<8} {value}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from training.register import use_store

    use_store(args.store)
    from services.launch import run_server

    return run_server(host=args.host, port=args.port, workers=args.workers)


def _rollout(args: argparse.Namespace) -> int:
    from podium import rollout_cli

    return rollout_cli.run(args)


# --- podium import (issue 14: bring your own model) ----------------------------------------


def _batch_axis(text: str) -> tuple[str, int]:
    name, sep, axis = text.rpartition("=")
    if not sep or not name or not axis.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not TENSOR=AXIS (e.g. input=0)")
    return name, int(axis)


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None


def _add_import_parser(sub: Any) -> None:
    i = sub.add_parser("import", help="register your own ONNX or TorchScript model as a new version",
                       description="Check an ONNX file (or a TorchScript file with an example input, "
                       "exported to ONNX with a parity proof) and register it as a new version.")
    i.add_argument("path", metavar="PATH", help="model.onnx, or a TorchScript archive (.pt/.ts)")
    i.add_argument("--name", required=True, help="model name in the store, the URLs and the metrics")
    i.add_argument("--kind", choices=("image", "tabular", "tensor"),
                   help="how it is served (default: image for [N,C,H,W] → [N,K], else tensor)")
    i.add_argument("--labels", metavar="FILE", help="class names: one per line, or a JSON list")
    i.add_argument("--batch-axis", metavar="TENSOR=AXIS", type=_batch_axis, action="append",
                   default=[], help="the batch axis of a tensor whose axis 0 is not variable")
    i.add_argument("--example-input", metavar="FILE.npy", action="append", default=[],
                   help="one per input, in order; required for TorchScript (export and parity)")
    i.add_argument("--description", default="", help="one line shown with the model")
    i.add_argument("--mean", type=_floats, metavar="M,...", help="image kinds: per-channel mean")
    i.add_argument("--std", type=_floats, metavar="S,...", help="image kinds: per-channel std")
    i.add_argument("--parity-tolerance", type=_positive_float,
                   help="TorchScript: largest |Δ| allowed between ONNX and TorchScript (default: 1e-4)")
    i.add_argument("--keep-layout", action="store_true",
                   help="store the ONNX graph as given: no convolution channel padding")
    _add_store(i)


def _import(args: argparse.Namespace) -> int:
    from pathlib import Path

    from training.importer import ImportRefused, ImportRequest, import_model
    from training.register import StoreError, use_store

    try:
        use_store(args.store)
        request = ImportRequest(
            path=Path(args.path), name=args.name, kind=args.kind,
            labels_file=Path(args.labels) if args.labels else None,
            batch_axes=dict(args.batch_axis), examples=tuple(Path(p) for p in args.example_input),
            description=args.description, mean=args.mean, std=args.std,
            parity_tolerance=args.parity_tolerance, pad_channels=not args.keep_layout)
        tag = import_model(request)
    except (StoreError, ImportRefused, OSError) as exc:
        print(f"podium import: {exc}", file=sys.stderr)
        return 1
    print(f"registered {tag}")
    return 0


COMMANDS = {"train": _train, "models": _models, "serve": _serve, "rollout": _rollout,
            "import": _import}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        # A signal arriving again while the interpreter shuts down (torch's threads, a data
        # loader) would end the process by SIGINT (-2) instead of this exit status: ignore it.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        print("podium: interrupted; nothing was registered for the unfinished run", file=sys.stderr)
        return INTERRUPTED
    except (CliError, UnknownModel, KeyError, ValueError, OSError, RuntimeError) as exc:
        # DataError, StoreError and ParityError are RuntimeErrors with readable messages.
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"podium: error: {message}", file=sys.stderr)
        return 1


def run() -> NoReturn:
    """The process entry (``podium``, ``python -m podium.cli``): ``main``'s status as the exit
    status. An interrupted run ends with 130 through ``os._exit`` once the exit handlers have run
    and the streams are flushed: CPython replaces an ordinary exit with death by SIGINT (-2) when
    a KeyboardInterrupt passed through a C-level ``PyRun_*`` call on its way to ``main`` (a flag
    the ``except`` there does not clear), and a second SIGINT that lands before ``main`` ignores
    them escapes it — a CI run exited -2 right after printing "interrupted"."""
    try:
        status = main()
    except KeyboardInterrupt:  # a second one, before main ignored SIGINT
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        status = INTERRUPTED
    if status != INTERRUPTED:
        sys.exit(status)
    atexit._run_exitfuncs()  # what the interpreter's exit would run (temporary directories, ...)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(INTERRUPTED)


if __name__ == "__main__":
    run()
