"""`podium import`: models the tests build themselves (a tiny CNN exported as ONNX and as
TorchScript, hand-made ONNX graphs), registered through the real CLI into a real store; every
refusal is one line, exit 1, and leaves the store byte for byte as it was. The importer's rules
(kind, labels, batch axes, the run check) are also checked in-process, and so is the one line
that replaces torch.jit's FutureWarnings."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import yaml
from onnx import numpy_helper
from torch import nn

from models.artifacts import sha256_file
from tests.conftest import run_podium
from tests.import_support import build_user_models
from training import export, onnx_layout
from training.importer import ImportRefused, ImportRequest, prepare
from training.onnx_layout import note


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_user_models(tmp_path_factory.mktemp("user-models"))


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, files: dict[str, Path]) -> Path:
    """A store that already holds an imported model, so a refusal has something to leave alone."""
    home = tmp_path_factory.mktemp("bentoml-home")
    run_podium("import", str(files["two.onnx"]), "--name", "pair", "--store", str(home))
    return home


def _snapshot(home: Path) -> dict[str, str]:
    return {str(p.relative_to(home)): sha256_file(p) if p.is_file() else "dir"
            for p in sorted(home.rglob("*"))}


def _versions(home: Path, name: str) -> list[dict]:
    """Stored versions of ``name`` (model.yaml as BentoML wrote it), oldest first."""
    infos = [yaml.safe_load(p.read_text()) | {"dir": p.parent}
             for p in (home / "models" / name).glob("*/model.yaml")]
    return sorted(infos, key=lambda info: str(info["creation_time"]))


def _import(home: Path, path: Path, name: str, *flags: str, check: bool = True):
    return run_podium("import", str(path), "--name", name, *flags, "--store", str(home), check=check)


def test_onnx_image_classifier_twice_is_two_versions(store: Path, files: dict[str, Path]) -> None:
    first = _import(store, files["cnn.onnx"], "tiny-cnn", "--labels", str(files["five.txt"]),
                    "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25")
    second = _import(store, files["cnn.onnx"], "tiny-cnn", "--description", "again")
    assert first.stdout.startswith("registered tiny-cnn:") and first.stdout != second.stdout
    one, two = _versions(store, "tiny-cnn")
    assert one["labels"] == {"podium": "true", "podium.source": "import"}
    meta = one["metadata"]
    assert meta["kind"] == "image"
    assert meta["labels"] == ["cat", "dog", "bird", "fish", "frog"]
    assert meta["signature"]["inputs"][0] | {"description": ""} == {
        "name": "pixels", "dtype": "float32", "shape": [-1, 3, 32, 32], "description": ""}
    assert meta["batch_axes"] == {"inputs": {"pixels": 0}, "outputs": {"logits": 0}}
    assert meta["preprocessing"]["image"] == {"channels": 3, "height": 32, "width": 32,
                                              "mean": [0.5] * 3, "std": [0.25] * 3, "digits": False}
    assert meta["source"] | {"producer": ""} == {
        "format": "onnx", "filename": "cnn.onnx", "sha256": sha256_file(files["cnn.onnx"]),
        "opset": 18, "producer": ""}
    assert meta["check"] == {"random_batch": 3, "outputs_finite": True, "runs": [1, 3]}
    assert meta["sha256"] == {"model.onnx": sha256_file(one["dir"] / "model.onnx")}
    assert two["metadata"]["description"] == "again" and two["metadata"]["labels"] == []
    listed = json.loads(run_podium("models", "tiny-cnn", "--json", store=store).stdout)
    assert sorted(row["version"] for row in listed) == sorted(v["version"] for v in (one, two))


def test_torchscript_is_exported_with_the_parity_proof(store: Path, files: dict[str, Path]) -> None:
    proc = _import(store, files["cnn.pt"], "tiny-cnn-ts", "--example-input", str(files["cnn-x.npy"]))
    # torch.jit's FutureWarnings (trace, load) are replaced by exactly one line.
    assert proc.stderr.splitlines() == [export.TORCHSCRIPT_NOTE]
    (version,) = _versions(store, "tiny-cnn-ts")
    meta = version["metadata"]
    assert meta["files"] == {"onnx": "model.onnx", "torchscript": "model.ts"}
    assert sha256_file(version["dir"] / "model.ts") == sha256_file(files["cnn.pt"])
    assert meta["source"]["format"] == "torchscript"
    assert meta["parity"]["passed"] and meta["parity"]["compared"] == 2 + 3
    assert meta["check"]["parity_max_abs"] <= export.MAX_ABS_DIFF
    # The stored ONNX graph answers like the TorchScript module, at a batch size never exported.
    x = np.random.default_rng(1).standard_normal((7, 3, 32, 32)).astype(np.float32)
    session = ort.InferenceSession(str(version["dir"] / "model.onnx"), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {meta["signature"]["inputs"][0]["name"]: x})
    with torch.no_grad():
        want = export.load_torchscript(files["cnn.pt"])(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_two_inputs_two_outputs_of_different_dtypes_is_a_tensor_model(store: Path) -> None:
    (version,) = _versions(store, "pair")
    meta = version["metadata"]
    assert meta["kind"] == "tensor" and "preprocessing" in meta and not meta["preprocessing"]
    sig = {t["name"]: (t["dtype"], t["shape"]) for t in [*meta["signature"]["inputs"],
                                                          *meta["signature"]["outputs"]]}
    assert sig == {"a": ("float32", [-1, 3]), "b": ("int64", [-1, 2]),
                   "total": ("float32", [-1, 3]), "count": ("int64", [-1, 2])}
    assert meta["batch_axes"] == {"inputs": {"a": 0, "b": 0}, "outputs": {"total": 0, "count": 0}}


def test_no_batch_axis_is_refused_and_works_when_stated(store: Path, files: dict[str, Path]) -> None:
    before = _snapshot(store)
    proc = _import(store, files["fixed.onnx"], "fixed", check=False)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.splitlines() == [
        "podium import: no batch axis: input 'x' has shape [2, 3] with a fixed axis 0; "
        "state it with --batch-axis x=AXIS"]
    assert _snapshot(store) == before
    _import(store, files["fixed.onnx"], "fixed", "--batch-axis", "x=0", "--batch-axis", "y=0")
    (version,) = _versions(store, "fixed")
    stored = onnx.load(version["dir"] / "model.onnx")
    assert stored.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert version["metadata"]["signature"]["inputs"][0]["shape"] == [-1, 3]
    assert version["metadata"]["check"]["runs"] == [1, 3]


@pytest.mark.parametrize(("model", "flags", "message"), [
    ("garbage.onnx", (), "not an ONNX model or a TorchScript archive"),
    ("unknown-op.onnx", (), "ONNX Runtime cannot load the model: "),
    ("noisy.pt", ("--example-input", "noisy-x.npy"), "parity failed, version not registered"),
])
def test_refusals_are_one_line_and_store_nothing(store: Path, files: dict[str, Path], model: str,
                                                 flags: tuple[str, ...], message: str) -> None:
    before = _snapshot(store)
    flags = tuple(str(files[f]) if f in files else f for f in flags)
    proc = _import(store, files[model], "refused", *flags, check=False)
    errors = [line for line in proc.stderr.splitlines() if line != export.TORCHSCRIPT_NOTE]
    assert proc.returncode == 1 and proc.stdout == "" and len(errors) == 1, proc.stderr
    assert errors[0].startswith("podium import: ") and message in errors[0]
    assert _snapshot(store) == before


def test_store_not_writable(tmp_path: Path, files: dict[str, Path]) -> None:
    not_a_dir = tmp_path / "store"
    not_a_dir.write_text("a file where the store should be")
    proc = _import(not_a_dir, files["two.onnx"], "pair", check=False)
    assert proc.returncode == 1
    assert proc.stderr.startswith("podium import: model store") and "not writable" in proc.stderr
    assert not_a_dir.read_text() == "a file where the store should be"


# --- in-process: the importer's rules (no store is touched by prepare) -----------------------


def _prepare(tmp_path: Path, path: Path, **fields) -> dict:
    return prepare(ImportRequest(path=path, name=fields.pop("name", "mine"), **fields), tmp_path)[1]


def test_digits_input_is_an_image_model_on_the_mnist_pipeline(tmp_path: Path, files: dict[str, Path]) -> None:
    meta = _prepare(tmp_path, files["digits.onnx"])
    assert meta["kind"] == "image"
    assert meta["preprocessing"] == {"image": {"channels": 1, "height": 28, "width": 28,
                                               "mean": None, "std": None, "digits": True}}


def test_tabular_only_when_stated(tmp_path: Path, files: dict[str, Path]) -> None:
    assert _prepare(tmp_path, files["rows.onnx"])["kind"] == "tensor"
    meta = _prepare(tmp_path, files["rows.onnx"], kind="tabular")
    assert meta["kind"] == "tabular" and meta["preprocessing"] == {}


@pytest.mark.parametrize(("model", "fields", "message"), [
    ("cnn.onnx", {"labels_file": "three.json"}, "has 3 labels but output 'logits' has K=5 classes"),
    ("two.onnx", {"labels_file": "three.json"}, "--labels needs a model with one output [N,K]"),
    ("cnn.onnx", {"kind": "tabular"}, "--kind tabular needs one float32 input [N,F]"),
    ("two.onnx", {"kind": "image"}, "--kind image needs one float32 input [N,C,H,W]"),
    ("cnn.onnx", {"mean": (0.5,)}, "--mean has 1 values; the input has 3 channels"),
    ("two.onnx", {"std": (1.0,)}, "--mean and --std describe image inputs"),
    ("two.onnx", {"name": "mnist-cnn"}, "'mnist-cnn' is a lecture model"),
    ("two.onnx", {"name": "Bad Name"}, "is not a valid model name"),
    ("two.onnx", {"batch_axes": {"z": 0}}, "--batch-axis names no tensor of the model: z"),
    ("two.onnx", {"batch_axes": {"a": 2}}, "--batch-axis a=2: 'a' has 2 axes"),
    ("cnn.pt", {}, "needs one --example-input .npy per forward argument"),
    ("collapse.onnx", {"batch_axes": {"x": 0, "y": 0}}, "its axis 0 does not follow the batch"),
    ("log.onnx", {}, "output 'y' is not finite"),
    ("constant.onnx", {}, "the graph has no inputs"),
    ("words.onnx", {}, "input 'text' has element type STRING; supported: bool, float16"),
    ("cnn.onnx", {"examples": ("noisy-x.npy",)}, "--example-input for 'pixels' is float32[2, 4]"),
    ("missing.onnx", {}, "No such file"),
])
def test_rules(tmp_path: Path, files: dict[str, Path], model: str, fields: dict, message: str) -> None:
    def resolve(value):
        if isinstance(value, str) and value in files:
            return files[value]
        if isinstance(value, tuple) and all(v in files for v in value):
            return tuple(files[v] for v in value)
        return value

    path = files.get(model, tmp_path / model)
    with pytest.raises(ImportRefused) as refused:
        _prepare(tmp_path, path, **{k: resolve(v) for k, v in fields.items()})
    assert message in str(refused.value) and "\n" not in str(refused.value)


# --- convolution channel padding (training.onnx_layout), as Podium's own exports get it ------


def _conv_widths(path: Path) -> list[int]:
    """Output channels of each convolution of the ONNX file at ``path``, in graph order."""
    graph = onnx.load(str(path)).graph
    weights = {t.name: t for t in graph.initializer}
    return [weights[node.input[1]].dims[0] for node in graph.node if node.op_type == "Conv"]


def _answer(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def test_an_imported_graph_is_padded_as_an_export_is_and_answers_the_same(
        store: Path, files: dict[str, Path]) -> None:
    proc = _import(store, files["lenet.onnx"], "lenet")
    (version,) = _versions(store, "lenet")
    stored, layout = version["dir"] / "model.onnx", version["metadata"]["layout"]
    assert _conv_widths(files["lenet.onnx"]) == [10, 20] and _conv_widths(stored) == [16, 20]
    assert [(c["channels"], c["padded"]) for c in layout["padded"]] == [(10, 16)]
    assert 0 <= layout["max_abs_diff"] <= export.MAX_ABS_DIFF
    assert proc.stderr.splitlines() == [note("lenet", layout["padded"][0])]
    assert version["metadata"]["sha256"] == {"model.onnx": sha256_file(stored)}
    x = np.random.default_rng(3).standard_normal((5, 1, 28, 28)).astype(np.float32)
    np.testing.assert_allclose(_answer(stored, x), _answer(files["lenet.onnx"], x), atol=1e-4)
    # --keep-layout: the graph as given, and the record says so.
    _import(store, files["lenet.onnx"], "lenet", "--keep-layout")
    kept = _versions(store, "lenet")[1]
    assert _conv_widths(kept["dir"] / "model.onnx") == [10, 20]
    assert kept["metadata"]["layout"] == {"padded": [], "kept_as_given": "--keep-layout"}


def test_a_torchscript_import_is_padded_and_proven_against_the_module(
        tmp_path: Path, files: dict[str, Path]) -> None:
    stored, meta = prepare(ImportRequest(path=files["lenet.pt"], name="lenet-ts",
                                         examples=(files["lenet-x.npy"],)), tmp_path)
    assert _conv_widths(stored["onnx"]) == [16, 20]
    assert [(c["channels"], c["padded"]) for c in meta["layout"]["padded"]] == [(10, 16)]
    assert meta["parity"]["passed"] and meta["check"]["parity_max_abs"] <= export.MAX_ABS_DIFF


def test_a_padding_that_changes_the_answers_is_not_kept(tmp_path: Path, files: dict[str, Path],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The guard: were the padding pass wrong (here it also doubles the second convolution's
    weights), the import keeps the graph as given and says why."""
    real = onnx_layout.pad_conv_channels

    def wrong(model: onnx.ModelProto, *args) -> list[dict]:
        changes = real(model, *args)
        second = next(t for t in model.graph.initializer if list(t.dims) == [20, 16, 5, 5])
        second.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(second) * 2, second.name))
        return changes

    monkeypatch.setattr(onnx_layout, "pad_conv_channels", wrong)
    stored, meta = prepare(ImportRequest(path=files["lenet.onnx"], name="lenet"), tmp_path)
    assert meta["layout"]["padded"] == []
    assert meta["layout"]["kept_as_given"].startswith("padded graph differs: max |Δ| ")
    assert _conv_widths(stored["onnx"]) == [10, 20]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # the trial file is gone


# --- torch.jit's deprecation warnings -------------------------------------------------------


def test_torchscript_export_says_one_line_and_hides_no_other_warning(tmp_path: Path, capsys) -> None:
    export._note_torchscript_once.cache_clear()
    module = nn.Linear(3, 2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i in range(2):  # two exports: still one line
            path = export.export_torchscript(module, (torch.zeros(1, 3),), tmp_path / f"{i}.ts")
            export.load_torchscript(path)
        with export.deliberate_torchscript():
            warnings.warn("an unrelated FutureWarning", FutureWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["an unrelated FutureWarning"]
    assert capsys.readouterr().err.splitlines() == [export.TORCHSCRIPT_NOTE]
