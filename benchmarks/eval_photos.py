"""``make eval-photos``: how well the served MNIST models read photos of digits.

Generates the photo set (``training/photos.py``, fixed seed), turns every photo into a model input
with the serving preprocessing (``services.codecs.mnist_from_image`` unless ``--preprocess``
names another function, e.g. an older one for a before/after comparison), runs the newest stored
version of each model with ONNX Runtime and writes to ``--out``:

- ``README.md``: top-1 accuracy per model (overall, per digit source, light-on-dark), the
  per-image preprocessing cost and the command and conditions that produced them;
- ``results.json``: the same figures, machine-readable;
- ``contact.png``: the hardest photos (misread by the most models), each beside the 28×28 input
  the models saw and what they answered.

``--mnist-http N`` also checks the HTTP image path against the tensor path on the first N MNIST
test images: a real server over the store, each image sent as a PNG file, against the same
images sent as a tensor.
"""

from __future__ import annotations

import argparse
import importlib
import io
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from services.codecs import open_image
from services.digits import NoDigit
from training import photos

MNIST_MODELS = ("mnist-cnn", "mnist-resnet", "mnist-fc", "mnist-googlenet")
MAX_PIXELS = 4096 * 4096
SHEET_CASES = 24
TILE = 96


def _function(spec: str) -> Callable[[Image.Image], np.ndarray]:
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def preprocess(items: list[photos.Photo], fn: Callable[[Image.Image], np.ndarray],
               repeats: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Model inputs [N,1,28,28] (zeros where no digit was found), found flags, and each photo's
    best-of-``repeats`` preprocessing time in ms (decoding excluded)."""
    inputs = np.zeros((len(items), 1, 28, 28), np.float32)
    found = np.ones(len(items), bool)
    cost = np.empty(len(items))
    for i, item in enumerate(items):
        image = open_image(item.data, f"photo {item.index}", MAX_PIXELS)
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            try:
                inputs[i] = fn(image)
            except NoDigit:
                found[i] = False
            best = min(best, time.perf_counter() - start)
        cost[i] = best * 1e3
    return inputs, found, cost


def load_sessions(names: list[str]) -> dict[str, object]:
    import onnxruntime as ort
    from bentoml.exceptions import NotFound

    from models.artifacts import ONNX_FILE, get_version

    sessions = {}
    for name in names:
        try:
            version = get_version(name)
        except NotFound:
            print(f"{name}: no version in the store, skipped", flush=True)
            continue
        md = version.metadata
        profile = md.get("profile", "?") + ("+overrides" if md.get("overrides") else "")
        mnist = md.get("metrics", {}).get("test_accuracy", float("nan"))
        sessions[f"{name}:{version.version} ({profile}, MNIST {mnist:.2%})"] = ort.InferenceSession(
            str(version.path / ONNX_FILE), providers=["CPUExecutionProvider"])
    return sessions


def probabilities(session: object, inputs: np.ndarray) -> np.ndarray:
    logits = session.run(None, {session.get_inputs()[0].name: inputs})[0]
    z = np.exp(logits - logits.max(1, keepdims=True))
    return z / z.sum(1, keepdims=True)


def contact_sheet(items: list[photos.Photo], inputs: np.ndarray, answers: dict[str, np.ndarray],
                  path: Path) -> None:
    """The hardest photos: most models wrong first, then the lowest mean probability of the truth."""
    labels = np.array([p.label for p in items])
    preds = np.stack([a.argmax(1) for a in answers.values()])
    truth_p = np.stack([a[np.arange(len(items)), labels] for a in answers.values()]).mean(0)
    order = np.lexsort((truth_p, -(preds != labels).sum(0)))[:SHEET_CASES]
    cols = 4
    cell_w, cell_h = 2 * TILE + 100, TILE + 8
    sheet = Image.new("L", (cols * cell_w, -(-len(order) // cols) * cell_h), 255)
    draw = ImageDraw.Draw(sheet)
    short = [name.split(":")[0].removeprefix("mnist-") for name in answers]
    for k, i in enumerate(order.tolist()):
        x, y = (k % cols) * cell_w, (k // cols) * cell_h
        original = Image.open(io.BytesIO(items[i].data)).convert("L")
        original.thumbnail((TILE, TILE))
        sheet.paste(original, (x, y))
        seen = Image.fromarray(np.rint(inputs[i, 0] * 255).astype(np.uint8)).resize((TILE, TILE),
                                                                                   Image.Resampling.NEAREST)
        sheet.paste(seen, (x + TILE + 2, y))
        lines = [f"#{i} true {labels[i]}", items[i].source] + [
            f"{n} {int(preds[j, i])} {answers_p:.2f}"
            for j, (n, answers_p) in enumerate(zip(short, (a[i].max() for a in answers.values()),
                                                   strict=True))]
        draw.multiline_text((x + 2 * TILE + 6, y), "\n".join(lines), fill=0, spacing=1)
    sheet.save(path)


def mnist_http(store: Path, names: list[str], count: int, log_dir: Path) -> dict[str, dict[str, float]]:
    """Test-set accuracy of each model through the HTTP image path (PNG files) and the tensor
    path (the same pixels as a JSON tensor), on a real server over ``store``."""
    import httpx

    from services.launch import serve
    from training import data

    mnist = data.load_mnist()
    images, labels = mnist.test_x[:count], mnist.test_y[:count]
    pngs = []
    for image in images:
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, "PNG")
        pngs.append(buf.getvalue())
    batch = 500
    out = {}
    with serve(store, log_dir, env={"PODIUM_MODELS": json.dumps(names)}) as server, \
            httpx.Client(base_url=server.url, timeout=300) as client:
        for name in names:
            by_image, by_tensor = [], []
            for start in range(0, count, batch):
                files = [("images", (f"{i}.png", pngs[i], "image/png"))
                         for i in range(start, min(start + batch, count))]
                answer = client.post(f"/v1/models/{name}/predict", files=files)
                answer.raise_for_status()
                by_image += [p["digit"] for p in answer.json()["predictions"]]
                answer = client.post(f"/v1/models/{name}/predict",
                                     json={"instances": images[start: start + batch].tolist()})
                answer.raise_for_status()
                by_tensor += [p["digit"] for p in answer.json()["predictions"]]
            out[name] = {"images": count,
                         "image_path_accuracy": float((np.array(by_image) == labels).mean()),
                         "tensor_path_accuracy": float((np.array(by_tensor) == labels).mean()),
                         "agreement": float((np.array(by_image) == np.array(by_tensor)).mean())}
            print(f"{name}: HTTP image path {out[name]['image_path_accuracy']:.2%}, tensor path "
                  f"{out[name]['tensor_path_accuracy']:.2%}, same answer {out[name]['agreement']:.2%}",
                  flush=True)
    return out


def report(figures: dict, command: str) -> str:
    lines = ["# Photos of digits: what the MNIST models read", "",
             f"Command: `{command}`", "",
             f"Conditions: {figures['conditions']}", "",
             f"Set: {figures['set']['count']} photos, seed {figures['set']['seed']} "
             f"(sources: {figures['set']['sources']}; {figures['set']['light_on_dark']} light on "
             f"dark); generator `training/photos.py`.", "",
             "| preprocessing | model | top-1 | " + " | ".join(figures["set"]["source_names"])
             + " | light on dark | no digit found |",
             "|---|---|---|" + "---|" * (len(figures["set"]["source_names"]) + 2)]
    for run in figures["runs"]:
        for model, acc in run["accuracy"].items():
            per = " | ".join(f"{acc['by_source'][s]:.1%}" for s in figures["set"]["source_names"])
            lines.append(f"| `{run['preprocess']}` | {model} | **{acc['top1']:.1%}** | {per} | "
                         f"{acc['light_on_dark']:.1%} | {run['no_digit']} |")
    lines += ["", "Preprocessing cost per image (decoded image → 28×28; best of "
              f"{figures['repeats']} per image, in-process):", "",
              "| preprocessing | median, all | median, ≥ 350 px | p95, ≥ 350 px |", "|---|---|---|---|"]
    for run in figures["runs"]:
        c = run["cost_ms"]
        lines.append(f"| `{run['preprocess']}` | {c['median']:.2f} ms | {c['median_large']:.2f} ms | "
                     f"{c['p95_large']:.2f} ms |")
    if figures.get("mnist_http"):
        lines += ["", "MNIST test set through HTTP: each image a PNG file vs the same pixels as a "
                  "JSON tensor, real server:", "",
                  "| model | images | image path | tensor path | difference | same answer |",
                  "|---|---|---|---|---|---|"]
        for model, r in figures["mnist_http"].items():
            lines.append(f"| {model} | {r['images']} | {r['image_path_accuracy']:.2%} | "
                         f"{r['tensor_path_accuracy']:.2%} | "
                         f"{100 * (r['image_path_accuracy'] - r['tensor_path_accuracy']):+.2f} points | "
                         f"{r['agreement']:.2%} |")
    lines += ["", "`contact.png`: the hardest photos (most models wrong first), each beside the 28×28 "
              "input the models saw and each model's answer and its probability.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="eval_photos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", default=os.environ.get("BENTOML_HOME", str(Path.home() / "bentoml")),
                        help="BentoML home holding the models (default: $BENTOML_HOME or ~/bentoml)")
    parser.add_argument("--models", nargs="+", default=list(MNIST_MODELS))
    parser.add_argument("--count", type=int, default=photos.SET_SIZE)
    parser.add_argument("--seed", type=int, default=photos.SEED)
    parser.add_argument("--preprocess", nargs="+", default=["services.codecs:mnist_from_image"],
                        help="module:function(s) turning a PIL image into [1,28,28]; the first "
                             "one draws the contact sheet")
    parser.add_argument("--repeats", type=int, default=3, help="timing repeats per photo")
    parser.add_argument("--mnist-http", type=int, default=0, metavar="N",
                        help="also compare HTTP image vs tensor path on N MNIST test images")
    parser.add_argument("--out", type=Path, default=Path("results/photos"))
    args = parser.parse_args(argv)
    os.environ["BENTOML_HOME"] = args.store  # before BentoML is first imported

    from training import data

    mnist = data.load_mnist()
    items = list(photos.photo_set(args.count, args.seed, (mnist.test_x, mnist.test_y)))
    labels = np.array([p.label for p in items])
    sources = np.array([p.source for p in items])
    dark = np.array([p.light_on_dark for p in items])
    sessions = load_sessions(args.models)
    if not sessions:
        parser.error(f"none of {args.models} has a version in {args.store}")
    figures: dict = {
        "conditions": f"{os.cpu_count()} cores, 1-minute load average {os.getloadavg()[0]:.1f} "
                      f"at the start (a shared machine: other work ran beside it)",
        "repeats": args.repeats,
        "set": {"count": len(items), "seed": args.seed, "source_names": sorted(set(sources)),
                "sources": ", ".join(f"{s} {int((sources == s).sum())}" for s in sorted(set(sources))),
                "light_on_dark": int(dark.sum())},
        "runs": []}
    large = np.array([p.side >= 350 for p in items])
    for n, spec in enumerate(args.preprocess):
        inputs, found, cost = preprocess(items, _function(spec), args.repeats)
        answers = {name: probabilities(s, inputs) for name, s in sessions.items()}
        accuracy = {}
        for name, probs in answers.items():
            right = (probs.argmax(1) == labels) & found
            accuracy[name] = {"top1": float(right.mean()),
                              "by_source": {s: float(right[sources == s].mean()) for s in set(sources)},
                              "light_on_dark": float(right[dark].mean())}
            print(f"{spec} {name}: {right.mean():.1%}", flush=True)
        figures["runs"].append({
            "preprocess": spec, "accuracy": accuracy, "no_digit": int((~found).sum()),
            "cost_ms": {"median": float(np.median(cost)), "median_large": float(np.median(cost[large])),
                        "p95_large": float(np.percentile(cost[large], 95))}})
        if n == 0:
            args.out.mkdir(parents=True, exist_ok=True)
            contact_sheet(items, inputs, answers, args.out / "contact.png")
    if args.mnist_http:
        with tempfile.TemporaryDirectory(prefix="eval-photos-") as logs:
            figures["mnist_http"] = mnist_http(Path(args.store), [k.split(":")[0] for k in sessions],
                                               args.mnist_http, Path(logs))
    command = "python -m benchmarks.eval_photos " + " ".join(argv if argv is not None else sys.argv[1:])
    (args.out / "results.json").write_text(json.dumps(figures, indent=2) + "\n")
    (args.out / "README.md").write_text(report(figures, command))
    print(f"wrote {args.out}/README.md, results.json, contact.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
