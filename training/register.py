"""Register an exported run as a new version in the BentoML model store.

Uses ``bentoml.models.create`` (the non-deprecated API in 1.4). Everything slow — training, export,
parity — happens before; inside ``create`` we only copy finished files, and BentoML moves the
version into the store only when the block completes, so a failed or interrupted run leaves no
half-written version behind.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from models.artifacts import FORMAT_VERSION, PODIUM_LABEL, sha256_file, store_home


class StoreError(RuntimeError):
    """The model store cannot be used (not writable, not a directory…)."""


def use_store(path: str | Path | None) -> Path:
    """Point BentoML at ``path`` (or keep BENTOML_HOME / ~/bentoml) and check it is writable.

    Must run before bentoml is imported, since BentoML reads BENTOML_HOME once.
    """
    if path is not None:
        os.environ["BENTOML_HOME"] = str(Path(path).resolve())
    home = store_home()
    try:
        (home / "models").mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=home / "models", prefix=".podium-write-check"):
            pass
    except OSError as exc:
        raise StoreError(f"model store {home} is not writable: {exc.strerror or exc}") from None
    return home


def code_revision() -> str:
    """The git commit the code came from, with ``-dirty`` when the tree had local changes."""
    here = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                             text=True, check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return rev + ("-dirty" if dirty else "")


def _clean(value: Any) -> Any:
    """BentoML metadata takes basic types only, and no None: drop Nones, lists for tuples."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value if v is not None]
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if isinstance(value, str):  # str subclasses (torch.__version__) do not serialise
        return str(value)
    return value


def register(name: str, files: dict[str, Path], metadata: dict[str, Any],
             labels: dict[str, str] | None = None) -> str:
    """Create one new version of ``name`` holding ``files`` and returns its tag."""
    import bentoml

    checksums = {path.name: sha256_file(path) for path in files.values()}
    metadata = {**_clean(metadata), "podium": FORMAT_VERSION, "sha256": checksums,
                "files": {key: path.name for key, path in files.items()}}
    all_labels = {PODIUM_LABEL: "true", **(labels or {})}
    with bentoml.models.create(name, labels=all_labels, metadata=metadata) as model:
        for path in files.values():
            shutil.copy2(path, model.path_of(path.name))
    return str(model.tag)
