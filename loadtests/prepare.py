"""Payload cache for the load tests: real test-split samples written once as plain files.

Run in its own process (it imports ``training.data``); the Locust process then reads only NumPy,
JSON and PNG bytes from the cache, so Locust and the training stack never share a process.

    python -m loadtests.prepare [--cache runs/loadtest-cache] [--force]

Contents: ``mnist.npz`` (test images uint8 [N,28,28] and labels), ``png/`` (the first images as
PNG files named ``{index}_{label}.png``), ``pima.json`` (test rows and labels), ``prompts.json``
(prompts cut from the validation text) and ``manifest.json`` (counts and data fingerprints).
"""

from __future__ import annotations

import argparse
import io
import json
import random
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CACHE = ROOT / "runs" / "loadtest-cache"
MANIFEST = "manifest.json"
FORMAT = 1  # bump when the cache layout changes
MNIST_SAMPLES = 2000
PNG_SAMPLES = 256
PROMPTS = 200


def _mnist(cache: Path, rng: np.random.Generator) -> dict[str, object]:
    from PIL import Image

    from training.data import load_mnist

    data = load_mnist()
    pick = np.sort(rng.choice(len(data.test_x), size=min(MNIST_SAMPLES, len(data.test_x)),
                              replace=False))
    x, y = data.test_x[pick], data.test_y[pick]
    np.savez_compressed(cache / "mnist.npz", x=x, y=y)
    png = cache / "png"
    png.mkdir(exist_ok=True)
    for i in range(min(PNG_SAMPLES, len(x))):
        buf = io.BytesIO()
        Image.fromarray(x[i], mode="L").save(buf, format="PNG")
        (png / f"{i:04d}_{int(y[i])}.png").write_bytes(buf.getvalue())
    return {"mnist": {"samples": len(x), "png": min(PNG_SAMPLES, len(x)), "split": "test",
                      "fingerprint": data.fingerprint}}


def _pima(cache: Path) -> dict[str, object]:
    from models.catalog import DIABETES_FEATURES
    from training.data import load_pima

    data = load_pima()
    rows = [[round(float(v), 4) for v in row] for row in data.test_x]
    (cache / "pima.json").write_text(json.dumps(
        {"features": list(DIABETES_FEATURES), "rows": rows,
         "labels": [int(v) for v in data.test_y]}))
    return {"pima": {"samples": len(rows), "split": "test", "fingerprint": data.fingerprint}}


def _prompts(cache: Path, seed: int) -> dict[str, object]:
    from training.data import load_corpus

    data = load_corpus()
    words = random.Random(seed)
    text = data.val
    prompts = []
    while len(prompts) < PROMPTS:
        start = text.find(" ", words.randrange(0, max(1, len(text) - 200))) + 1
        prompt = text[start:start + words.randint(12, 80)].strip()
        if prompt:
            prompts.append(prompt)
    (cache / "prompts.json").write_text(json.dumps(prompts))
    return {"prompts": {"samples": len(prompts), "split": "validation",
                        "fingerprint": data.fingerprint}}


def prepare(cache: Path = DEFAULT_CACHE, force: bool = False, seed: int = 0) -> Path:
    """Fill ``cache`` unless it already holds a complete cache of this format."""
    manifest = cache / MANIFEST
    if not force and manifest.is_file() \
            and json.loads(manifest.read_text()).get("format") == FORMAT:
        return cache
    cache.mkdir(parents=True, exist_ok=True)
    info: dict[str, object] = {"format": FORMAT, "seed": seed}
    info.update(_mnist(cache, np.random.default_rng(seed)))
    info.update(_pima(cache))
    info.update(_prompts(cache, seed))
    manifest.write_text(json.dumps(info, indent=2))  # written last: its presence means complete
    return cache


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--force", action="store_true", help="rebuild even if present")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(prepare(args.cache, args.force, args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
