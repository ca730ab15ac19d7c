"""The stored-version format: what one Podium model version holds in the BentoML store.

Training writes it, serving reads it; both go through the names and helpers here. A version is a
BentoML model named after the Podium model (``mnist-cnn``), one version per training run, holding:

- ``model.onnx``  — the ONNX graph (preprocessing inside, dynamic batch axis);
- ``model.ts``    — the TorchScript module with the same signature;
- ``vocab.json``  — char-rnn only: the character vocabulary (id 0 = unknown);
- BentoML ``metadata`` — ``podium`` (format version), metrics, parity, data fingerprint, recipe and
  overrides, code revision, signature, labels and ``sha256`` of every file above.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FORMAT_VERSION = 1
ONNX_FILE = "model.onnx"
TORCHSCRIPT_FILE = "model.ts"
VOCAB_FILE = "vocab.json"
PODIUM_LABEL = "podium"  # BentoML label marking versions written by Podium


def store_home() -> Path:
    """The BentoML home (``BENTOML_HOME``, else ``~/bentoml``): the store, and what Podium keeps
    beside it (rollout state, Prometheus directories, TensorRT engines)."""
    return Path(os.environ.get("BENTOML_HOME") or Path.home() / "bentoml")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


class CorruptVersion(RuntimeError):
    """A stored version whose files are missing or fail their recorded checksums."""


@dataclass(frozen=True)
class StoredVersion:
    """A Podium model version as read back from the store (no framework loaded yet)."""

    name: str
    version: str
    path: Path
    metadata: dict[str, Any]
    creation_time: str

    @property
    def tag(self) -> str:
        return f"{self.name}:{self.version}"

    def file(self, filename: str) -> Path:
        return self.path / filename

    def verify(self) -> None:
        """Raise CorruptVersion unless every recorded file exists and matches its sha256."""
        recorded = self.metadata.get("sha256") or {}
        if not recorded:
            raise CorruptVersion(f"{self.tag}: no checksums recorded; not a Podium version")
        for filename, expected in recorded.items():
            path = self.file(filename)
            if not path.is_file():
                raise CorruptVersion(f"{self.tag}: file {filename} is missing")
            actual = sha256_file(path)
            if actual != expected:
                raise CorruptVersion(f"{self.tag}: file {filename} fails its checksum "
                                     f"(recorded {expected[:12]}…, found {actual[:12]}…)")

    def vocabulary(self) -> list[str]:
        return json.loads(self.file(VOCAB_FILE).read_text(encoding="utf-8"))["chars"]


def _from_bento_model(model: Any) -> StoredVersion:
    info = model.info
    return StoredVersion(name=str(model.tag.name), version=str(model.tag.version),
                         path=Path(model.path), metadata=dict(info.metadata or {}),
                         creation_time=info.creation_time.isoformat())


def get_version(name: str, version: str | None = None) -> StoredVersion:
    """The stored version ``name:version`` (newest when version is None or ``latest``).

    Raises ``bentoml.exceptions.NotFound`` when there is none.
    """
    import bentoml

    tag = f"{name}:{version or 'latest'}"
    return _from_bento_model(bentoml.models.get(tag))


def list_versions(name: str | None = None) -> list[StoredVersion]:
    """Every Podium version in the store (of one model when ``name`` is given), newest first."""
    import bentoml
    from bentoml.exceptions import NotFound

    try:
        models = bentoml.models.list(name)
    except NotFound:  # no version of that name yet
        return []
    found = []
    for model in models:
        if (model.info.labels or {}).get(PODIUM_LABEL) != "true":
            continue
        found.append(_from_bento_model(model))
    found.sort(key=lambda v: v.creation_time, reverse=True)
    return found
