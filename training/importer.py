"""Bring your own model: check an ONNX or TorchScript file and register it as a Podium version.

``podium import`` reads the signature from the graph, settles the batch axes and the serving kind,
runs the graph in ONNX Runtime on random batches (and, for TorchScript, proves the ONNX export
equal to the TorchScript module with the training pipeline's parity proof) — all before the store
is touched, so a refused import stores nothing. The stored version follows the imported-model
format (``kind``, ``signature``, ``batch_axes``, ``labels``, ``preprocessing``, ``source``,
``check``) that ``models.catalog.spec_from_metadata`` turns back into a serving spec.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from models.artifacts import ONNX_FILE, TORCHSCRIPT_FILE, sha256_file
from models.catalog import CATALOG, TensorSpec
from training.register import code_revision, register

KINDS = ("image", "tabular", "tensor")
CHECK_BATCH = 3  # the random check runs batch 1 and this: a batch axis that is really variable
FREE_DIM = 16  # size of a variable non-batch axis in the random check when no example gives one
SOURCE_LABEL = {"podium.source": "import"}
SUPPORTED_DTYPES = frozenset({"bool", "float16", "float32", "float64", "int8", "int16", "int32",
                              "int64", "uint8", "uint16", "uint32", "uint64"})
# BentoML's tag rule (lowercase alphanumerics, '-', '_', '.'; at most 63 characters).
_NAME = re.compile(r"[a-z0-9](?:[a-z0-9._-]{0,61}[a-z0-9])?")
_ZIP_MAGIC = b"PK\x03\x04"  # TorchScript archives are zip files; ONNX is a bare protobuf
_MAX_MESSAGE = 300


class ImportRefused(Exception):
    """The file cannot be imported; the message is one line naming the problem."""


@dataclass(frozen=True)
class ImportRequest:
    """What ``podium import`` was asked to do (the CLI flags, parsed)."""

    path: Path
    name: str
    kind: str | None = None  # None: inferred from the signature
    labels_file: Path | None = None
    batch_axes: dict[str, int] = field(default_factory=dict)  # tensor name → axis, from the flags
    examples: tuple[Path, ...] = ()  # one .npy per input, in input order
    description: str = ""
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    parity_tolerance: float | None = None  # None: the training pipeline's threshold
    pad_channels: bool = True  # False (--keep-layout): the graph stored as given


@dataclass
class _Graph:
    """An ONNX model under inspection, with its signature and batch axes settled."""

    model: Any  # onnx.ModelProto
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    axes: dict[str, int]  # every input and output name → its batch axis


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= _MAX_MESSAGE else text[:_MAX_MESSAGE] + "…"


def import_model(request: ImportRequest) -> str:
    """Check ``request.path`` and register it as a new version of ``request.name``; returns the tag.

    The store (BENTOML_HOME) must already be chosen (``training.register.use_store``).
    Raises ImportRefused, with nothing stored, when any check fails.
    """
    with tempfile.TemporaryDirectory(prefix="podium-import-") as work:
        files, metadata = prepare(request, Path(work))
        return register(request.name, files, metadata, labels=SOURCE_LABEL)


def prepare(request: ImportRequest, work: Path) -> tuple[dict[str, Path], dict[str, Any]]:
    """Every check of an import, writing the files to store into ``work``; touches no store."""
    _check_name(request.name)
    if request.kind is not None and request.kind not in KINDS:
        raise ImportRefused(f"--kind must be one of {', '.join(KINDS)}, not {request.kind!r}")
    try:
        data = request.path.read_bytes()
    except OSError as exc:
        raise ImportRefused(f"{request.path}: {exc.strerror or exc}") from None
    examples = [_load_npy(p) for p in request.examples]
    source = {"filename": request.path.name, "sha256": sha256_file(request.path)}
    files: dict[str, Path] = {"onnx": work / ONNX_FILE}
    module, parity = None, None
    if data.startswith(_ZIP_MAGIC):
        source["format"] = "torchscript"
        files["torchscript"] = Path(shutil.copy2(request.path, work / TORCHSCRIPT_FILE))
        module, data = _export_torchscript(files["torchscript"], examples, request.batch_axes,
                                           work / ONNX_FILE)
    else:
        source["format"] = "onnx"
    graph = _inspect(data, request.batch_axes)
    kind = _kind(graph, request.kind)
    labels = _labels(graph, request.labels_file)
    preprocessing = _preprocessing(graph, kind, request.mean, request.std)
    files["onnx"].write_bytes(graph.model.SerializeToString())
    run = _run_checks(graph, files["onnx"], examples)
    layout = _pad_layout(request, graph, files["onnx"], examples)
    if module is not None:
        parity = _prove_parity(request, module, graph, files["onnx"], examples, kind)
    source.update(opset=_opset(graph.model),
                  producer=f"{graph.model.producer_name} {graph.model.producer_version}".strip()
                  or "unknown")
    metadata: dict[str, Any] = {
        "kind": kind,
        "signature": {"inputs": [t.to_dict() for t in graph.inputs],
                      "outputs": [t.to_dict() for t in graph.outputs]},
        "batch_axes": {"inputs": {t.name: graph.axes[t.name] for t in graph.inputs},
                       "outputs": {t.name: graph.axes[t.name] for t in graph.outputs}},
        "labels": labels,
        "description": request.description or f"imported from {request.path.name}",
        "preprocessing": preprocessing,
        "source": source,
        "check": {"random_batch": CHECK_BATCH, "outputs_finite": True, "runs": run,
                  "parity_max_abs": parity["onnxruntime"]["max_abs_diff"] if parity else None},
        "parity": parity,
        "layout": layout,
        "code_revision": code_revision(),
    }
    return files, metadata


def _check_name(name: str) -> None:
    if name in CATALOG:
        raise ImportRefused(f"{name!r} is a lecture model of the catalog; choose another --name")
    if not _NAME.fullmatch(name):
        raise ImportRefused(f"--name {name!r} is not a valid model name: lowercase letters, digits, "
                            "'-', '_' and '.', starting and ending with a letter or digit, "
                            "at most 63 characters")


def _load_npy(path: Path) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ImportRefused(f"--example-input {path}: not a readable .npy array ({_one_line(exc)})") from None
    if not isinstance(array, np.ndarray) or array.dtype.name not in SUPPORTED_DTYPES:
        raise ImportRefused(f"--example-input {path}: unsupported dtype {getattr(array, 'dtype', '?')}")
    return array


# --- TorchScript: export to ONNX ------------------------------------------------------------


def _export_torchscript(path: Path, examples: list[np.ndarray], flags: dict[str, int],
                        onnx_path: Path) -> tuple[Any, bytes]:
    """Load the TorchScript module and export it to ONNX with a dynamic batch on every tensor."""
    import torch

    from training.export import load_torchscript, torch_runner, write_onnx

    try:
        module = load_torchscript(path)
    except Exception as exc:  # torch raises RuntimeError or its own C++ errors for foreign zips
        raise ImportRefused(f"{path.name} is a zip archive but not a TorchScript module "
                            f"(torch.save'd weights cannot be imported: script or trace the model): "
                            f"{_one_line(exc)}") from None
    names = [arg.name for arg in module.forward.schema.arguments[1:]]  # [0] is self
    if len(examples) != len(names):
        raise ImportRefused(f"a TorchScript model needs one --example-input .npy per forward "
                            f"argument ({', '.join(names)}); got {len(examples)}")
    try:
        outputs = torch_runner(module)(tuple(examples))
    except Exception as exc:  # whatever the user's forward raises
        raise ImportRefused(f"the TorchScript module fails on the example input: {_one_line(exc)}") from None
    out_names = ["output"] if len(outputs) == 1 else [f"output{i}" for i in range(len(outputs))]
    axes = {n: flags.get(n, 0) for n in [*names, *out_names]}
    for n, array in zip([*names, *out_names], [*examples, *outputs], strict=True):
        if not 0 <= axes[n] < array.ndim:
            raise ImportRefused(f"{n!r} has {array.ndim} axes, so it has no batch axis {axes[n]}; "
                                f"state it with --batch-axis {n}=AXIS")
    try:
        write_onnx(module, tuple(torch.from_numpy(a) for a in examples), onnx_path, names,
                   out_names, dynamic_axes={n: {axis: "batch"} for n, axis in axes.items()})
    except Exception as exc:  # the exporter's errors name the unsupported construct
        raise ImportRefused(f"the ONNX export of the TorchScript module failed: {_one_line(exc)}") from None
    return module, onnx_path.read_bytes()


def _prove_parity(request: ImportRequest, module: Any, graph: _Graph, onnx_path: Path,
                  examples: list[np.ndarray], kind: str) -> dict[str, Any]:
    """The training pipeline's parity proof: ONNX Runtime against the TorchScript module."""
    from training.export import MAX_ABS_DIFF, ParityError, compare_runtimes, onnx_runner, torch_runner

    names = [t.name for t in graph.inputs]
    batches = [tuple(examples), _random_feed(graph, CHECK_BATCH, examples)]
    runners = {"eager": torch_runner(module), "onnxruntime": onnx_runner(onnx_path, names)}
    try:
        return compare_runtimes(request.name, runners, batches,
                                enforce_labels=kind != "tensor",
                                tolerance=request.parity_tolerance or MAX_ABS_DIFF)
    except ParityError as exc:
        raise ImportRefused(str(exc)) from None


def _pad_layout(request: ImportRequest, graph: _Graph, onnx_path: Path,
                examples: list[np.ndarray]) -> dict[str, Any]:
    """The convolution channel padding of Podium's own exports (``training.onnx_layout``) on the
    graph at ``onnx_path`` (already checked as given), kept only when ONNX Runtime answers the
    check's batches (random 1 and CHECK_BATCH, and the examples) the same with it as without:
    every output within the training pipeline's max |Δ|, integer and boolean outputs exactly.
    Otherwise the graph stays as given and the record says why. TorchScript imports then prove
    the stored (padded) file against the module as well."""
    from training.export import MAX_ABS_DIFF, onnx_runner
    from training.onnx_layout import note, pad_file

    if not request.pad_channels:
        return {"padded": [], "kept_as_given": "--keep-layout"}
    trial = Path(shutil.copy2(onnx_path, onnx_path.with_name("padded-" + onnx_path.name)))
    names = [t.name for t in graph.inputs]
    worst = 0.0
    try:
        changes = pad_file(trial)  # rewritten (and checked) only if anything was padded
        if not changes:
            return {"padded": []}
        given, padded = onnx_runner(onnx_path, names), onnx_runner(trial, names)
        feeds = [_random_feed(graph, 1, examples), _random_feed(graph, CHECK_BATCH, examples)]
        for feed in feeds + ([tuple(examples)] if examples else []):
            for want, got in zip(given(feed), padded(feed), strict=True):
                if want.dtype.kind not in "fc":
                    worst = worst if np.array_equal(want, got) else float("inf")
                elif want.size:
                    worst = max(worst, float(np.max(np.abs(want.astype(np.float64) - got))))
        if not worst <= MAX_ABS_DIFF:
            return {"padded": [], "kept_as_given": f"padded graph differs: max |Δ| {worst:.3g}"}
        trial.replace(onnx_path)
    except Exception as exc:  # the checker's or ONNX Runtime's own error types
        return {"padded": [], "kept_as_given": f"padding failed: {_one_line(exc)}"}
    finally:
        trial.unlink(missing_ok=True)  # gone already when it replaced the graph
    for change in changes:
        print(note(request.name, change), file=sys.stderr, flush=True)
    return {"padded": changes, "max_abs_diff": worst}


# --- ONNX: signature, batch axes, kind ----------------------------------------------------


def _inspect(data: bytes, flags: dict[str, int]) -> _Graph:
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load_model_from_string(data)
        onnx.checker.check_model(model)
    except (DecodeError, onnx.checker.ValidationError, ValueError) as exc:
        raise ImportRefused(f"not an ONNX model or a TorchScript archive ({_one_line(exc)})") from None
    if not model.graph.output:
        raise ImportRefused("not an ONNX model or a TorchScript archive (the graph has no outputs)")
    if any(onnx.external_data_helper.uses_external_data(t)
           for t in onnx.external_data_helper._get_all_tensors(model)):
        raise ImportRefused("the model keeps its weights in external data files; export it as one "
                            "file (torch.onnx.export(..., external_data=False))")
    initialisers = {t.name for t in model.graph.initializer}
    graph_inputs = [v for v in model.graph.input if v.name not in initialisers]
    if not graph_inputs:
        raise ImportRefused("the graph has no inputs: there is nothing to serve")
    inputs = [_tensor_spec(v, "input") for v in graph_inputs]
    outputs = [_tensor_spec(v, "output") for v in model.graph.output]
    axes = _batch_axes(inputs, outputs, flags)
    if any(_dims(v)[axes[v.name]] != -1 for v in [*graph_inputs, *model.graph.output]):
        _make_batch_symbolic(model, graph_inputs, axes)
        inputs = [_tensor_spec(v, "input") for v in graph_inputs]
        outputs = [_tensor_spec(v, "output") for v in model.graph.output]
    return _Graph(model, inputs, outputs, axes)


def _dims(value: Any) -> list[int]:
    return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1
            for d in value.type.tensor_type.shape.dim]


def _tensor_spec(value: Any, role: str) -> TensorSpec:
    import onnx

    if value.type.WhichOneof("value") != "tensor_type":
        raise ImportRefused(f"{role} {value.name!r} is not a tensor (sequences and maps are not served)")
    tensor = value.type.tensor_type
    try:
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)).name
    except (KeyError, TypeError, ValueError):  # element types NumPy has no dtype for
        dtype = ""
    if dtype not in SUPPORTED_DTYPES:
        onnx_type = onnx.TensorProto.DataType.Name(tensor.elem_type)
        raise ImportRefused(f"{role} {value.name!r} has element type {onnx_type}; supported: "
                            f"{', '.join(sorted(SUPPORTED_DTYPES))}")
    if not tensor.HasField("shape"):
        raise ImportRefused(f"{role} {value.name!r} has no declared shape (its rank is unknown)")
    return TensorSpec(value.name, dtype, tuple(_dims(value)), f"{role} of the imported graph")


def _batch_axes(inputs: list[TensorSpec], outputs: list[TensorSpec], flags: dict[str, int]) -> dict[str, int]:
    """Axis 0 where it is variable on every tensor, or the axis ``--batch-axis`` states."""
    tensors = {t.name: t for t in [*inputs, *outputs]}
    unknown = sorted(set(flags) - set(tensors))
    if unknown:
        raise ImportRefused(f"--batch-axis names no tensor of the model: {', '.join(unknown)} "
                            f"(inputs: {', '.join(t.name for t in inputs)}; "
                            f"outputs: {', '.join(t.name for t in outputs)})")
    axes = {}
    for t in tensors.values():
        axis = flags.get(t.name)
        if axis is None and t.shape and t.shape[0] == -1:
            axis = 0
        if axis is None:
            role = "input" if t in inputs else "output"
            raise ImportRefused(f"no batch axis: {role} {t.name!r} has shape {list(t.shape)} with a "
                                f"fixed axis 0; state it with --batch-axis {t.name}=AXIS")
        if not 0 <= axis < len(t.shape):
            raise ImportRefused(f"--batch-axis {t.name}={axis}: {t.name!r} has {len(t.shape)} axes")
        axes[t.name] = axis
    return axes


def _make_batch_symbolic(model: Any, graph_inputs: list[Any], axes: dict[str, int]) -> None:
    """A batch axis stated on a fixed dimension becomes the symbolic ``batch`` in the graph."""
    for value in [*graph_inputs, *model.graph.output]:
        dim = value.type.tensor_type.shape.dim[axes[value.name]]
        dim.Clear()
        dim.dim_param = "batch"
    # Shapes inferred inside the graph still carry the fixed size; ONNX Runtime infers them again.
    del model.graph.value_info[:]


def _kind(graph: _Graph, stated: str | None) -> str:
    image = _image_shape(graph)
    if stated is None:
        return "image" if image and image[0] in (1, 3) else "tensor"
    if stated == "image" and image is None:
        raise ImportRefused("--kind image needs one float32 input [N,C,H,W] and one output [N,K] "
                            f"with the batch on axis 0; the model has {_describe(graph)}")
    if stated == "tabular" and not _is_tabular(graph):
        raise ImportRefused("--kind tabular needs one float32 input [N,F] and one output [N,K] "
                            f"with the batch on axis 0; the model has {_describe(graph)}")
    return stated


def _describe(graph: _Graph) -> str:
    def one(t: TensorSpec) -> str:
        return f"{t.name} {t.dtype}{list(t.shape)}"
    return (f"inputs {', '.join(map(one, graph.inputs))} and "
            f"outputs {', '.join(map(one, graph.outputs))}")


def _classes(graph: _Graph) -> int | None:
    """K when the model has exactly one output, [N,K] with the batch first and K fixed."""
    if len(graph.outputs) != 1:
        return None
    out = graph.outputs[0]
    if len(out.shape) == 2 and graph.axes[out.name] == 0 and out.shape[1] > 0:
        return out.shape[1]
    return None


def _image_shape(graph: _Graph) -> tuple[int, int, int] | None:
    """(C, H, W) of an image classifier: one float32 input [N,C,H,W], one output [N,K]."""
    if len(graph.inputs) != 1 or _classes(graph) is None:
        return None
    x = graph.inputs[0]
    if x.dtype != "float32" or len(x.shape) != 4 or graph.axes[x.name] != 0 or min(x.shape[1:]) < 1:
        return None
    return x.shape[1], x.shape[2], x.shape[3]


def _is_tabular(graph: _Graph) -> bool:
    if len(graph.inputs) != 1 or _classes(graph) is None:
        return False
    x = graph.inputs[0]
    return x.dtype == "float32" and len(x.shape) == 2 and graph.axes[x.name] == 0 and x.shape[1] > 0


def _labels(graph: _Graph, path: Path | None) -> list[str]:
    if path is None:
        return []
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ImportRefused(f"--labels {path}: {_one_line(exc)}") from None
    if text.lstrip().startswith("["):
        try:
            labels = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ImportRefused(f"--labels {path}: not a JSON list ({exc})") from None
        if not all(isinstance(label, str) for label in labels):
            raise ImportRefused(f"--labels {path}: the JSON list must hold strings only")
    else:
        labels = [line.strip() for line in text.splitlines() if line.strip()]
    classes = _classes(graph)
    if classes is None:
        raise ImportRefused(f"--labels needs a model with one output [N,K]; it has {_describe(graph)}")
    # A single-probability output [N,1] (like the diabetes model) names its two outcomes.
    if len(labels) != classes and not (classes == 1 and len(labels) == 2):
        raise ImportRefused(f"--labels {path} has {len(labels)} labels but output "
                            f"{graph.outputs[0].name!r} has K={classes} classes")
    return labels


def _preprocessing(graph: _Graph, kind: str, mean: Sequence[float] | None,
                   std: Sequence[float] | None) -> dict[str, Any]:
    if kind != "image":
        if mean is not None or std is not None:
            raise ImportRefused("--mean and --std describe image inputs; this model is of kind " + kind)
        return {}
    channels, height, width = _image_shape(graph) or (0, 0, 0)
    for flag, values in (("--mean", mean), ("--std", std)):
        if values is not None and len(values) != channels:
            raise ImportRefused(f"{flag} has {len(values)} values; the input has {channels} channels")
    if std is not None and min(std) <= 0:
        raise ImportRefused("--std values must be positive")
    return {"image": {"channels": channels, "height": height, "width": width,
                      "mean": list(mean) if mean is not None else None,
                      "std": list(std) if std is not None else None,
                      "digits": (channels, height, width) == (1, 28, 28)}}


def _opset(model: Any) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


# --- the load-and-run check -----------------------------------------------------------------


def _random_feed(graph: _Graph, batch: int, examples: list[np.ndarray]) -> tuple[np.ndarray, ...]:
    """Random inputs of ``batch`` rows; other variable axes take the example's size, else FREE_DIM."""
    rng = np.random.default_rng(0)
    feed = []
    for i, t in enumerate(graph.inputs):
        like = examples[i].shape if i < len(examples) else None
        shape = [batch if axis == graph.axes[t.name] else
                 (size if size > 0 else (like[axis] if like else FREE_DIM))
                 for axis, size in enumerate(t.shape)]
        dtype = np.dtype(t.dtype)
        if dtype.kind == "f":
            feed.append(rng.standard_normal(shape).astype(dtype))
        elif dtype == np.uint8:  # pixels
            feed.append(rng.integers(0, 256, shape, dtype=dtype))
        else:  # 0 and 1 are valid ids for any embedding or index input
            feed.append(rng.integers(0, 2, shape).astype(dtype))
    return tuple(feed)


def _run_checks(graph: _Graph, onnx_path: Path, examples: list[np.ndarray]) -> list[int]:
    """Load the graph in ONNX Runtime (CPU) and run batch 1, CHECK_BATCH and the examples.

    Every output must be finite and carry the batch size on its batch axis. Returns the batch
    sizes that ran.
    """
    from training.export import onnx_runner

    names = [t.name for t in graph.inputs]
    if examples and len(examples) != len(names):
        raise ImportRefused(f"--example-input: one .npy per input ({', '.join(names)}); "
                            f"got {len(examples)}")
    for t, array in zip(graph.inputs, examples, strict=False):
        if array.dtype.name != t.dtype or array.ndim != len(t.shape):
            raise ImportRefused(f"--example-input for {t.name!r} is {array.dtype.name}{list(array.shape)}; "
                                f"the input is {t.dtype}{list(t.shape)}")
    try:
        run = onnx_runner(onnx_path, names)
    except Exception as exc:  # ORT's own error types (Fail, InvalidGraph, NotImplemented…)
        raise ImportRefused(f"ONNX Runtime cannot load the model: {_one_line(exc)}") from None
    feeds = [_random_feed(graph, 1, examples), _random_feed(graph, CHECK_BATCH, examples)]
    if examples:
        feeds.append(tuple(examples))
    sizes = []
    for feed in feeds:
        size = feed[0].shape[graph.axes[names[0]]]
        try:
            outputs = run(feed)
        except Exception as exc:  # ORT's own error types
            raise ImportRefused(f"ONNX Runtime fails on a batch of {size}: {_one_line(exc)}") from None
        for t, out in zip(graph.outputs, outputs, strict=True):
            axis = graph.axes[t.name]
            if out.ndim <= axis or out.shape[axis] != size:
                raise ImportRefused(f"output {t.name!r} has shape {list(out.shape)} for a batch of "
                                    f"{size}: its axis {axis} does not follow the batch")
            if out.dtype.kind in "fc" and not np.isfinite(out).all():
                raise ImportRefused(f"output {t.name!r} is not finite (NaN or inf) on a random "
                                    f"batch of {size}")
        sizes.append(int(size))
    return sizes
