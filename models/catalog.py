"""The model catalog: one entry per Podium model name, the single source of truth for what each
model is (architecture, signature, data, labels, preprocessing) and how it is trained (recipes).

Torch-free on import: ``ModelSpec.build`` imports ``models.nets`` lazily.
"""

from __future__ import annotations

import importlib
from dataclasses import asdict, dataclass, field, replace
from typing import Any

PROFILES = ("quick", "full", "lecture")


@dataclass(frozen=True)
class TensorSpec:
    """One named tensor of a model's exported signature; -1 marks a variable dimension."""

    name: str
    dtype: str  # numpy dtype name: float32, int64
    shape: tuple[int, ...]
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape),
                "description": self.description}


@dataclass(frozen=True)
class Recipe:
    """How one training run is made. ``extra`` holds model-specific knobs (e.g. RNN sizes)."""

    epochs: int
    batch_size: int
    lr: float
    optimizer: str = "sgd"  # sgd | adam
    momentum: float = 0.0
    weight_decay: float = 0.0
    scheduler: str = "none"  # none | onecycle
    augment: bool = False
    train_subset: int | None = None  # None = the whole training split
    max_steps: int | None = None  # stop an epoch after this many optimiser steps
    extra: dict[str, Any] = field(default_factory=dict)

    def with_overrides(self, **overrides: Any) -> Recipe:
        known = {k: v for k, v in overrides.items() if v is not None}
        return replace(self, **known)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    kind: str  # the serving kind (services/kinds): tabular | image | text | tensor
    dataset: str
    description: str
    builder: str  # "module:attr" in models.nets
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    labels: tuple[str, ...]
    preprocessing: dict[str, Any]
    recipes: dict[str, Recipe]
    headline_metric: str
    is_classifier: bool = True
    # The batch axis of every tensor ({"inputs": {name: axis}, "outputs": {name: axis}}); None =
    # the serving kind's own rule (an imported model states it: contract A).
    batch_axes: dict[str, dict[str, int]] | None = None
    # Training-side export: ONNX dynamic axes of every tensor when more than the batch axis 0 of
    # one input varies (None = that rule), and whether the model carries its state from call to
    # call (the parity proof then chains it).
    export_axes: dict[str, dict[int, str]] | None = None
    recurrent: bool = False

    def build(self, **kwargs: Any) -> Any:
        module, attr = self.builder.split(":")
        return getattr(importlib.import_module(module), attr)(**kwargs)

    def recipe(self, profile: str) -> Recipe:
        if profile not in self.recipes:
            raise KeyError(f"model {self.name!r} has no recipe {profile!r}; "
                           f"choose one of {sorted(self.recipes)}")
        return self.recipes[profile]

    def signature(self) -> dict[str, Any]:
        return {"inputs": [t.to_dict() for t in self.inputs],
                "outputs": [t.to_dict() for t in self.outputs]}


DIABETES_FEATURES = ("pregnancies", "glucose", "blood_pressure", "skin_thickness", "insulin",
                     "bmi", "diabetes_pedigree", "age")
DIGITS = tuple(str(i) for i in range(10))

_MNIST_INPUTS = (TensorSpec("image", "float32", (-1, 1, 28, 28),
                            "grayscale pixels in [0, 1], white digit on black, MNIST-style"),)
_MNIST_OUTPUTS = (TensorSpec("logits", "float32", (-1, 10), "unnormalised class scores"),)
_MNIST_PRE = {"input_range": [0.0, 1.0], "normalize": {"mean": 0.1307, "std": 0.3081},
              "where": "inside the exported graph"}

# The lecture's recipe for every MNIST model: CrossEntropyLoss, SGD lr 0.01 momentum 0.5, batch 64.
_MNIST_LECTURE = Recipe(epochs=10, batch_size=64, lr=0.01, optimizer="sgd", momentum=0.5)
# Quick: one pass (over a subset for the larger nets), a usable model in seconds.
_MNIST_QUICK = Recipe(epochs=1, batch_size=64, lr=0.02, optimizer="sgd", momentum=0.9)


def _mnist_full(epochs: int, lr: float, augment: bool) -> Recipe:
    # Same architecture, modern schedule: one-cycle SGD with Nesterov-free momentum 0.9 and mild
    # affine augmentation reach the targets within ~15 epochs on a 2-core CPU.
    return Recipe(epochs=epochs, batch_size=128, lr=lr, optimizer="sgd", momentum=0.9,
                  weight_decay=5e-4, scheduler="onecycle", augment=augment)


def _mnist(name: str, builder: str, description: str, quick: Recipe, full: Recipe) -> ModelSpec:
    return ModelSpec(
        name=name, kind="image", dataset="mnist", description=description,
        builder=builder, inputs=_MNIST_INPUTS, outputs=_MNIST_OUTPUTS, labels=DIGITS,
        preprocessing=_MNIST_PRE,
        recipes={"quick": quick, "full": full, "lecture": _MNIST_LECTURE},
        headline_metric="test_accuracy",
    )


CHAR_RNN_QUICK = {"embed": 32, "hidden": 128, "layers": 2, "seq_len": 64}
CHAR_RNN_FULL = {"embed": 64, "hidden": 384, "layers": 2, "seq_len": 128}

CATALOG: dict[str, ModelSpec] = {
    "diabetes": ModelSpec(
        name="diabetes", kind="tabular", dataset="pima",
        description="Pima Indians diabetes: logistic 8-6-4-1 sigmoid net",
        builder="models.nets:DiabetesNet",
        inputs=(TensorSpec("features", "float32", (-1, 8),
                           "raw clinical features in the order of DIABETES_FEATURES"),),
        outputs=(TensorSpec("probability", "float32", (-1, 1), "P(diabetes)"),),
        labels=("negative", "positive"),
        preprocessing={"features": list(DIABETES_FEATURES),
                       "scaling": "standardise with training-split mean/std, inside the graph"},
        recipes={
            "quick": Recipe(epochs=100, batch_size=32, lr=0.1),
            # Longer overfits the 614 training rows (1000 epochs: 76.0 % held-out accuracy).
            "full": Recipe(epochs=300, batch_size=32, lr=0.1),
            "lecture": Recipe(epochs=100, batch_size=32, lr=0.1),
        },
        headline_metric="test_accuracy",
    ),
    "mnist-fc": _mnist("mnist-fc", "models.nets:MnistFC", "MNIST fully connected 784-512-256-128-64-10",
                       _MNIST_QUICK, _mnist_full(12, 0.05, augment=False)),
    "mnist-cnn": _mnist("mnist-cnn", "models.nets:MnistCNN", "MNIST two-conv CNN",
                        _MNIST_QUICK, _mnist_full(15, 0.05, augment=True)),
    "mnist-googlenet": _mnist("mnist-googlenet", "models.nets:MnistGoogLeNet",
                              "MNIST GoogLeNet-style net with two InceptionA blocks",
                              replace(_MNIST_QUICK, lr=0.01, train_subset=20000),
                              _mnist_full(8, 0.02, augment=True)),
    "mnist-resnet": _mnist("mnist-resnet", "models.nets:MnistResNet",
                           "MNIST ResNet-style net with two residual blocks",
                           replace(_MNIST_QUICK, lr=0.01, train_subset=20000),
                           _mnist_full(15, 0.03, augment=True)),
    "char-rnn": ModelSpec(
        name="char-rnn", kind="text", dataset="corpus",
        description="character-level GRU language model (Embedding → GRU → Linear)",
        builder="models.nets:CharRNN",
        inputs=(TensorSpec("tokens", "int64", (-1, -1), "character ids, batch × time"),
                TensorSpec("state", "float32", (-1, -1, -1), "GRU state, layers × batch × hidden")),
        outputs=(TensorSpec("logits", "float32", (-1, -1, -1), "next-character scores, batch × time × vocab"),
                 TensorSpec("state_out", "float32", (-1, -1, -1), "GRU state after the last step")),
        labels=(),
        preprocessing={"vocabulary": "vocab.json stored with the version; id 0 is <unk>"},
        recipes={
            "quick": Recipe(epochs=3, batch_size=32, lr=0.003, optimizer="adam", max_steps=100,
                            train_subset=400_000, extra=CHAR_RNN_QUICK),
            # 8 × 50 steps of 64 × 128 characters: about one pass over the 3.9 M training chars.
            "full": Recipe(epochs=8, batch_size=64, lr=0.003, optimizer="adam", scheduler="onecycle",
                           max_steps=50, extra=CHAR_RNN_FULL),
            "lecture": Recipe(epochs=1, batch_size=32, lr=0.001, optimizer="adam", max_steps=500,
                              extra=CHAR_RNN_QUICK),
        },
        headline_metric="val_bits_per_char",
        is_classifier=False,
        # The TorchScript-based exporter keeps a native ONNX GRU with both batch and time
        # symbolic; the dynamo exporter specialises the output's time axis to the example's.
        export_axes={"tokens": {0: "batch", 1: "time"}, "state": {1: "batch"},
                     "logits": {0: "batch", 1: "time"}, "state_out": {1: "batch"}},
        recurrent=True,
    ),
}

MODEL_NAMES: tuple[str, ...] = tuple(CATALOG)


class UnknownModel(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; we want it readable
        return str(self.args[0])


def get_spec(name: str) -> ModelSpec:
    try:
        return CATALOG[name]
    except KeyError:
        raise UnknownModel(f"unknown model {name!r}; known models: {', '.join(MODEL_NAMES)}") from None


def spec_from_metadata(name: str, metadata: dict[str, Any]) -> ModelSpec:
    """The spec of an imported model, from its stored metadata (contract A): the kind that
    serves it, its signature and batch axes, labels and how a photo becomes its input."""
    def tensors(key: str) -> tuple[TensorSpec, ...]:
        return tuple(TensorSpec(t["name"], t["dtype"], tuple(t["shape"]), t.get("description", ""))
                     for t in metadata["signature"][key])

    try:
        labels = tuple(str(label) for label in metadata.get("labels", ()))
        return ModelSpec(
            name=name, kind=str(metadata["kind"]), dataset="imported",
            description=str(metadata.get("description", f"imported model {name}")),
            builder="", inputs=tensors("inputs"), outputs=tensors("outputs"), labels=labels,
            preprocessing=dict(metadata.get("preprocessing") or {}), recipes={},
            headline_metric="", is_classifier=bool(labels),
            batch_axes={"inputs": dict(metadata["batch_axes"]["inputs"]),
                        "outputs": dict(metadata["batch_axes"]["outputs"])})
    except (KeyError, TypeError, ValueError) as exc:
        raise UnknownModel(f"model {name!r} is not in the catalog and its stored metadata is not "
                           f"an imported model's (missing or bad {exc})") from None


def imported_kinds() -> dict[str, str]:
    """The imported models in the store, name → kind: Podium versions whose metadata names a kind
    and a signature (contract A), under a name the catalog does not hold. Read from each model's
    newest ``model.yaml`` without BentoML, which fixes its store location on first use — so
    loading a configuration does not pin the store of the process."""
    import yaml

    from models.artifacts import PODIUM_LABEL, store_home

    root = store_home() / "models"
    found: dict[str, str] = {}
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        if folder.name in CATALOG:
            continue
        try:
            version = (folder / "latest").read_text().strip()
            info = yaml.safe_load((folder / version / "model.yaml").read_text())
            metadata = info.get("metadata") or {}
            if (info.get("labels") or {}).get(PODIUM_LABEL) == "true" and "signature" in metadata:
                found[folder.name] = str(metadata["kind"])
        except (OSError, yaml.YAMLError, AttributeError, KeyError):
            continue  # not a model folder, or not one of ours: nothing to serve by default
    return found


def default_models() -> list[str]:
    """What a server serves unless configured otherwise: the lecture models and every imported
    model in the store."""
    return [*MODEL_NAMES, *imported_kinds()]
