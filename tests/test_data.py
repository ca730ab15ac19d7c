"""Real offline data: the packaged sets, the layouts users already have, and bad data."""

from __future__ import annotations

import gzip
import hashlib
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import run_podium
from training import data
from training.data import DataError


@pytest.fixture(scope="module")
def mnist() -> data.MnistData:
    return data.load_mnist()


def test_packaged_mnist_is_the_original(mnist: data.MnistData) -> None:
    folder = data.mnist_folder()
    digest = hashlib.md5((folder / "train-images-idx3-ubyte.gz").read_bytes()).hexdigest()
    assert digest.startswith("f68b3c2d")
    assert mnist.train_x.shape == (60000, 28, 28) and mnist.test_x.shape == (10000, 28, 28)
    assert mnist.train_x.dtype == np.uint8
    assert sorted(np.unique(mnist.test_y)) == list(range(10))
    assert len(mnist.fingerprint) == 64


def test_torchvision_and_folder_layouts_give_the_same_data(tmp_path: Path,
                                                           mnist: data.MnistData) -> None:
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for stem in data.MNIST_FILES.values():
        # torchvision keeps both the .gz and the extracted file; give it the extracted one.
        with gzip.open(data.mnist_folder() / f"{stem}.gz") as src:
            (raw / stem).write_bytes(src.read())
    tv = data.load_mnist("torchvision", tmp_path)
    folder = data.load_mnist("folder", raw)
    assert tv.fingerprint == folder.fingerprint == mnist.fingerprint


def test_packaged_pima() -> None:
    pima = data.load_pima()
    assert len(pima.train_x) + len(pima.test_x) == 768
    assert pima.train_y.sum() + pima.test_y.sum() == 268
    assert pima.train_x.shape[1] == 8
    # Deterministic, stratified split
    again = data.load_pima()
    assert np.array_equal(pima.test_x, again.test_x)
    assert abs(pima.test_y.mean() - 268 / 768) < 0.01


def test_pima_csv_with_header(tmp_path: Path) -> None:
    rows = data.pima_path().read_text().splitlines()
    csv = tmp_path / "diabetes.csv"
    body = [r.replace("positive", "1").replace("negative", "0") for r in rows]
    csv.write_text("Pregnancies,Glucose,BloodPressure,SkinThickness,Insulin,BMI,"
                   "DiabetesPedigreeFunction,Age,Outcome\n" + "\n".join(body) + "\n")
    assert data.load_pima(csv).fingerprint == data.load_pima().fingerprint


def test_packaged_corpus_is_the_kjv() -> None:
    corpus = data.load_corpus()
    text = corpus.train + corpus.val
    assert 4_000_000 < len(text) < 4_300_000
    assert len(set(text)) == 63
    assert corpus.train.startswith("In the beginning God created the heaven and the earth.")
    assert 0.04 < len(corpus.val) / len(text) < 0.06


def test_any_utf8_text_file(tmp_path: Path) -> None:
    path = tmp_path / "poem.txt"
    path.write_text("Ünïcode lines of verse, over and over.\n" * 40, encoding="utf-8")
    corpus = data.load_corpus(path)
    assert corpus.train and corpus.val and "Ü" in corpus.train + corpus.val


# ----------------------------------------------------------------------------------- bad data

def _copy_mnist(tmp_path: Path) -> Path:
    folder = tmp_path / "mnist"
    shutil.copytree(data.mnist_folder(), folder)
    return folder


def test_missing_mnist_file(tmp_path: Path) -> None:
    folder = _copy_mnist(tmp_path)
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.*not found"):
        data.load_mnist("folder", folder)


def test_truncated_idx_gzip(tmp_path: Path) -> None:
    folder = _copy_mnist(tmp_path)
    path = folder / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(DataError, match="t10k-images.*not a readable IDX file"):
        data.load_mnist("folder", folder)


def test_corrupt_gzip(tmp_path: Path) -> None:
    folder = _copy_mnist(tmp_path)
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(b"this is not gzip at all")
    with pytest.raises(DataError, match="not a readable IDX file"):
        data.load_mnist("folder", folder)


def test_idx_with_fewer_bytes_than_its_header_promises(tmp_path: Path) -> None:
    folder = _copy_mnist(tmp_path)
    with gzip.open(folder / "t10k-labels-idx1-ubyte.gz", "wb") as fh:
        fh.write(struct.pack(">II", 2049, 10000) + bytes(9000))
    with pytest.raises(DataError, match="header promises 10000 bytes"):
        data.load_mnist("folder", folder)


def test_wrong_magic(tmp_path: Path) -> None:
    folder = _copy_mnist(tmp_path)
    with gzip.open(folder / "t10k-labels-idx1-ubyte.gz", "wb") as fh:
        fh.write(struct.pack(">II", 2051, 1) + bytes(1))
    with pytest.raises(DataError, match="bad IDX magic"):
        data.load_mnist("folder", folder)


@pytest.mark.parametrize(("content", "message"), [
    ("a,b,c,d,e,f,g,h,outcome\n1,2,3\n", "has 3 columns, expected 9"),
    ("1,2,3,4,5,6,7,8,1\n1,2,x,4,5,6,7,8,0\n", "non-numeric cell 'x'"),
    ("1,2,3,4,5,6,7,8,maybe\n", "outcome 'maybe'"),
    ("h1,h2,h3,h4,h5,h6,h7,h8,y\n", "no data rows"),
])
def test_bad_tabular_csv(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        data.load_pima(path)


def test_empty_corpus(tmp_path: Path) -> None:
    path = tmp_path / "empty.txt"
    path.write_text("  \n\n")
    with pytest.raises(DataError, match="the corpus is empty"):
        data.load_corpus(path)


def test_non_utf8_corpus(tmp_path: Path) -> None:
    path = tmp_path / "latin1.txt"
    path.write_bytes("caf\xe9 ".encode("latin-1") * 100)
    with pytest.raises(DataError, match="not UTF-8"):
        data.load_corpus(path)


@pytest.mark.parametrize(("args", "message"), [
    (["diabetes", "--data", "/nonexistent/diabetes.csv"], "file not found"),
    (["char-rnn", "--data", "EMPTY"], "the corpus is empty"),
    (["mnist-cnn", "--data-source", "folder", "--data", "/nonexistent"], "MNIST folder not found"),
])
def test_cli_bad_data_fails_early_with_a_clear_message(tmp_path: Path, args: list[str],
                                                       message: str) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    args = [str(empty) if a == "EMPTY" else a for a in args]
    proc = run_podium("train", *args, "--no-progress", store=tmp_path / "store", check=False,
                      runs_dir=tmp_path / "runs")
    assert proc.returncode == 1
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert not list((tmp_path / "store" / "models").glob("*/*"))
