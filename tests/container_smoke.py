"""The checks `make container-smoke` runs against a running Podium container (deploy/container/smoke.sh).

One real request per model on 127.0.0.1, each answer checked:

- diabetes: 64 rows of the held-out Pima split (two sent as named fields) → probabilities in [0, 1],
  labels consistent with them, accuracy against the real outcomes;
- each MNIST model: digits of the real MNIST test set, each model through another input form
  (JSON tensor, multipart PNG uploads, .npy batch, one raw PNG) → accuracy against the real labels;
- char-rnn: seeded generation → the asked length, mostly the corpus's alphabet.

When the served version also exists in the host's store ($BENTOML_HOME), every answer must equal
what ONNX Runtime gives offline for that version. When SMOKE_BENTO names a bento, the served
versions must be exactly the ones it carries. Every model must run on SMOKE_DEVICE (default cpu),
and /v2/models/{m}/config must name the same providers as /v1/models. /v2/health/ready and /v2
(server metadata) must answer 200. Every check is strict: any failure fails the run. Prints one
line per check; exit status 1 on failure; SMOKE_REPORT=path writes the results as JSON.

Environment: BASE_URL (default http://127.0.0.1:3000), SMOKE_BENTO, SMOKE_REPORT, SMOKE_DEVICE,
SMOKE_MIN_ACCURACY (MNIST, default 0.85), SMOKE_MIN_DIABETES_ACCURACY (default 0.6),
SMOKE_MIN_PLAIN_TEXT (char-rnn: share of letters, spaces and punctuation, default 0.9).
Run: python -m tests.container_smoke
"""

from __future__ import annotations

import io
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
from PIL import Image

from models.catalog import DIABETES_FEATURES
from training import data

MNIST_MODELS = ["mnist-fc", "mnist-cnn", "mnist-googlenet", "mnist-resnet"]
ALL_MODELS = ["diabetes", *MNIST_MODELS, "char-rnn"]


class SmokeFailure(AssertionError):
    pass


def check(condition: bool, message: str) -> None:
    if not condition:
        raise SmokeFailure(message)


def png(digit: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(digit).save(buf, "PNG")
    return buf.getvalue()


def npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def offline(name: str, version: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray] | None:
    """ONNX Runtime on the host's copy of name:version, or None if the host store lacks it."""
    try:
        from models.artifacts import get_version

        stored = get_version(name, version)
    except Exception:  # not in this store (the image may come from another one)
        return None
    import onnxruntime as ort

    session = ort.InferenceSession(str(stored.file("model.onnx")), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def answer(response: httpx.Response, name: str) -> dict[str, Any]:
    check(response.status_code == 200, f"{name}: HTTP {response.status_code}: {response.text[:300]}")
    check(response.headers.get("Podium-Model") == name, f"{name}: Podium-Model header is "
          f"{response.headers.get('Podium-Model')!r}")
    return response.json()


# ----------------------------------------------------------------------------------- per model

def diabetes(c: httpx.Client) -> dict[str, Any]:
    pima = data.load_pima()
    x, y = pima.test_x[:64], pima.test_y[:64]
    named = [dict(zip(DIABETES_FEATURES, map(float, row), strict=True)) for row in x[:2]]
    r = c.post("/v1/models/diabetes/predict", json={"rows": named + x[2:].tolist()})
    preds = answer(r, "diabetes")["predictions"]
    check(len(preds) == len(x), f"diabetes: {len(preds)} answers for {len(x)} rows")
    probs = np.array([p["probability"] for p in preds])
    check(bool(((probs >= 0) & (probs <= 1)).all()), "diabetes: probabilities outside [0, 1]")
    labels = [p["label"] for p in preds]
    check(labels == ["positive" if p >= 0.5 else "negative" for p in probs],
          "diabetes: labels disagree with probabilities")
    accuracy = float(((probs >= 0.5) == (y >= 0.5)).mean())
    floor = float(os.environ.get("SMOKE_MIN_DIABETES_ACCURACY", "0.6"))
    check(accuracy >= floor, f"diabetes: accuracy {accuracy:.3f} on real rows < {floor}")
    version = r.headers["Podium-Model-Version"]
    ref = offline("diabetes", version, {"features": x.astype(np.float32)})
    if ref is not None:
        check(np.allclose(probs, ref[0].ravel(), atol=1e-5), "diabetes: differs from offline ONNX")
    return {"version": version, "items": len(x), "accuracy": accuracy, "offline_equal": ref is not None}


def _mnist_request(c: httpx.Client, name: str, x: np.ndarray) -> httpx.Response:
    """Each MNIST model through a different input form."""
    if name == "mnist-fc":  # JSON tensor [N, 784], integers 0-255
        return c.post(f"/v1/models/{name}/predict", json={"instances": x.reshape(len(x), 784).tolist()})
    if name == "mnist-cnn":  # multipart image uploads
        files = [("images", (f"{i}.png", png(d), "image/png")) for i, d in enumerate(x)]
        return c.post(f"/v1/models/{name}/predict", files=files)
    if name == "mnist-googlenet":  # .npy batch
        return c.post(f"/v1/models/{name}/predict", content=npy(x),
                      headers={"content-type": "application/x-npy"})
    return c.post(f"/v1/models/{name}/predict", content=png(x[0]),  # one raw PNG
                  headers={"content-type": "image/png"})


MNIST_COUNTS = {"mnist-fc": 32, "mnist-cnn": 8, "mnist-googlenet": 128, "mnist-resnet": 1}


def mnist_model(name: str, mnist: data.MnistData) -> Callable[[httpx.Client], dict[str, Any]]:
    def run(c: httpx.Client) -> dict[str, Any]:
        n = MNIST_COUNTS[name]
        x, y = mnist.test_x[:n], mnist.test_y[:n]
        r = _mnist_request(c, name, x)
        preds = answer(r, name)["predictions"]
        check(len(preds) == n, f"{name}: {len(preds)} answers for {n} images")
        digits = np.array([p["digit"] for p in preds])
        for p in preds:
            check(0.0 <= p["probability"] <= 1.0 and p["top_k"][0]["label"] == p["label"],
                  f"{name}: malformed answer {p}")
        accuracy = float((digits == y).mean())
        floor = float(os.environ.get("SMOKE_MIN_ACCURACY", "0.85"))
        check(accuracy >= floor,
              f"{name}: {int((digits == y).sum())}/{n} real test digits right (labels {y.tolist()[:16]}, "
              f"answers {digits.tolist()[:16]})")
        version = r.headers["Podium-Model-Version"]
        equal = False
        if name in ("mnist-fc", "mnist-googlenet"):  # tensor forms: exact pixels, compare offline
            ref = offline(name, version, {"image": (x.astype(np.float32) / 255.0)[:, None]})
            if ref is not None:
                probs = softmax(ref[0])
                check(np.array_equal(digits, probs.argmax(1)), f"{name}: digits differ from offline ONNX")
                check(np.allclose([p["probability"] for p in preds], probs.max(1), atol=1e-5),
                      f"{name}: probabilities differ from offline ONNX")
                equal = True
        return {"version": version, "items": n, "accuracy": accuracy, "offline_equal": equal}
    return run


def char_rnn(c: httpx.Client) -> dict[str, Any]:
    body = {"prompt": "And God said", "max_new_chars": 80, "temperature": 0.8, "top_k": 10, "seed": 7}
    r = c.post("/v1/models/char-rnn/generate", json=body)
    text = answer(r, "char-rnn")["text"]
    check(isinstance(text, str) and len(text) == body["max_new_chars"],
          f"char-rnn: asked for {body['max_new_chars']} characters, got {text!r}")
    again = answer(c.post("/v1/models/char-rnn/generate", json=body), "char-rnn")["text"]
    check(again == text, "char-rnn: the same seed gave different text")
    plain = sum(ch.isalpha() or ch in " \n,.;:'" for ch in text) / len(text)
    floor = float(os.environ.get("SMOKE_MIN_PLAIN_TEXT", "0.9"))
    check(plain >= floor, f"char-rnn: generated text is not the corpus's alphabet: {text!r}")
    return {"version": r.headers["Podium-Model-Version"], "items": 1, "text": text}


# --------------------------------------------------------------------------------------- main

def expected_versions(bento_tag: str) -> dict[str, list[str]]:
    import bentoml

    carried: dict[str, list[str]] = {}
    for model in bentoml.get(bento_tag).info.models:
        carried.setdefault(str(model.tag.name), []).append(str(model.tag.version))
    return carried


def served_on(c: httpx.Client, name: str, served: dict[str, Any], device: str) -> dict[str, Any]:
    """Where the model runs, as /v1/models and /v2/models/{m}/config say: the same providers in
    both, and the expected device (SMOKE_DEVICE)."""
    listed = served[name]
    r = c.get(f"/v2/models/{name}/config")
    check(r.status_code == 200, f"{name}: /v2/models/{name}/config: HTTP {r.status_code}: {r.text[:200]}")
    params = r.json().get("parameters", {})
    providers = params.get("execution_providers", {}).get("string_value", "")
    check(providers == ",".join(listed.get("providers", [])),
          f"{name}: /v2 config says providers {providers!r}, /v1/models says {listed.get('providers')}")
    check(listed.get("device") == device, f"{name}: runs on {listed.get('device')} ({providers}), "
          f"expected {device}")
    return {"device": listed.get("device"), "providers": providers}


def endpoint(c: httpx.Client, path: str, keys: tuple[str, ...]) -> dict[str, Any]:
    r = c.get(path)
    check(r.status_code == 200, f"{path}: HTTP {r.status_code}: {r.text[:200]}")
    body = r.json()
    check(all(k in body for k in keys), f"{path}: {body} lacks one of {keys}")
    return {"status": r.status_code}


def main() -> int:
    """Every check is strict: any that fails (an error status, a wrong answer, an exception) fails
    the smoke test and the report."""
    base = os.environ.get("BASE_URL", "http://127.0.0.1:3000")
    device = os.environ.get("SMOKE_DEVICE", "cpu")
    mnist = data.load_mnist()
    checks: dict[str, Callable[[httpx.Client], dict[str, Any]]] = {
        "diabetes": diabetes, **{n: mnist_model(n, mnist) for n in MNIST_MODELS}, "char-rnn": char_rnn}
    results: dict[str, Any] = {}
    failed: list[str] = []

    def record(name: str, run: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
        t0 = time.perf_counter()
        try:
            result = {"ok": True, **run(), "ms": round((time.perf_counter() - t0) * 1000, 1)}
        except Exception as exc:  # any failure, expected or not, fails the smoke test
            failed.append(name)
            results[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            print(f"  {name:<16} FAIL {results[name]['error']}")
            return None
        results[name] = result
        return result

    with httpx.Client(base_url=base, timeout=60, trust_env=False) as c:
        listed: list[dict[str, Any]] = []

        def listing() -> dict[str, Any]:
            listed.extend(c.get("/v1/models").raise_for_status().json()["models"])
            return {"versions": len(listed)}

        record("listing", listing)
        served = {m["name"]: m for m in listed}
        print("serving:", ", ".join(f"{n}:{m.get('version')} on {m.get('device')}"
                                    for n, m in served.items()))
        wanted = [n for n in os.environ.get("PODIUM_MODELS", "").split(",") if n] or ALL_MODELS
        missing = [n for n in wanted if n not in served]
        if missing:
            failed.append("listing")
            print(f"  models missing from /v1/models: {missing}")
        carried = expected_versions(os.environ["SMOKE_BENTO"]) if os.environ.get("SMOKE_BENTO") else {}

        def model_check(name: str, run: Callable[[httpx.Client], dict[str, Any]]) -> dict[str, Any]:
            result = run(c)
            if carried:
                check(result["version"] in carried.get(name, []),
                      f"{name}: serves {result['version']}, the bento carries {carried.get(name)}")
            check(served[name].get("runtime") == "onnx", f"{name}: runtime {served[name].get('runtime')}")
            return {**result, **served_on(c, name, served, device)}

        for name, run in checks.items():
            if name not in served:
                continue  # counted above as missing when it should be served
            result = record(name, lambda name=name, run=run: model_check(name, run))
            if result is not None:
                extra = (f"accuracy {result['accuracy']:.3f}" if "accuracy" in result
                         else f"text {result['text'][:40]!r}")
                print(f"  {name:<16} OK   {result['version']}  {result['items']:>4} item(s)  {extra}"
                      f"{'  = offline ONNX' if result.get('offline_equal') else ''}  on {result['device']} "
                      f"({result['providers']})  {result['ms']} ms")
        for name, path, keys in (("oip-ready", "/v2/health/ready", ()),
                                 ("oip-server-metadata", "/v2", ("name", "version", "extensions"))):
            if record(name, lambda path=path, keys=keys: endpoint(c, path, keys)) is not None:
                print(f"  {path:<16} OK")
    if os.environ.get("SMOKE_REPORT"):
        with open(os.environ["SMOKE_REPORT"], "w") as fh:
            json.dump({"base_url": base, "device": device, "ok": not failed, "failed": failed,
                       "models": results}, fh, indent=2)
    print("container smoke:", "FAIL " + ", ".join(failed) if failed else "PASS")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
