"""Response checks for the load tests: a 200 is not enough, the body must answer the request.

Each check takes what the client saw (status, headers, parsed body) and what was sent, and
raises ``Invalid`` with the reason on the first thing wrong. Locust-free, so the checks are
tested on their own and the Locust users stay thin.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

VERSION_HEADER = "Podium-Model-Version"
DIGITS = tuple(str(i) for i in range(10))
DIABETES_LABELS = ("negative", "positive")


class Invalid(ValueError):
    """The response does not answer the request that was sent."""


def _require(ok: bool, reason: str) -> None:
    if not ok:
        raise Invalid(reason)


def _probability(value: Any, where: str) -> float:
    _require(isinstance(value, int | float) and not isinstance(value, bool)
             and math.isfinite(value) and 0.0 <= value <= 1.0,
             f"{where}: probability {value!r} is not a number in [0, 1]")
    return float(value)


def _header(headers: Mapping[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name.lower():
            return value
    return None


def check_envelope(status: int, headers: Mapping[str, str], body: Any, model: str) -> str:
    """Status 200, a JSON object for ``model``, and a version header that matches the body."""
    _require(status == 200, f"HTTP {status}: {body.get('error') if isinstance(body, dict) else body!r}")
    _require(isinstance(body, dict), f"body is {type(body).__name__}, not a JSON object")
    _require(body.get("model") == model, f"answered by model {body.get('model')!r}, not {model!r}")
    version = _header(headers, VERSION_HEADER)
    _require(bool(version), f"no {VERSION_HEADER} header")
    _require(body.get("version") == version,
             f"body version {body.get('version')!r} != header version {version!r}")
    return version


def check_digits(body: dict[str, Any], count: int, top_k: int) -> list[int]:
    """``count`` MNIST predictions, each a digit with its label, probability and top-k list."""
    preds = body.get("predictions")
    _require(isinstance(preds, list), "no 'predictions' list")
    _require(len(preds) == count, f"{len(preds)} predictions for {count} inputs")
    digits = []
    for i, pred in enumerate(preds):
        where = f"predictions[{i}]"
        _require(isinstance(pred, dict), f"{where} is not an object")
        digit = pred.get("digit")
        _require(isinstance(digit, int) and not isinstance(digit, bool) and 0 <= digit <= 9,
                 f"{where}: digit {digit!r} is not 0-9")
        _require(pred.get("label") == DIGITS[digit], f"{where}: label {pred.get('label')!r} "
                                                     f"does not name digit {digit}")
        top = _probability(pred.get("probability"), where)
        ranked = pred.get("top_k")
        _require(isinstance(ranked, list) and len(ranked) == top_k,
                 f"{where}: top_k has {len(ranked) if isinstance(ranked, list) else 'no'} "
                 f"entries, expected {top_k}")
        probs = [_probability(r.get("probability") if isinstance(r, dict) else None,
                              f"{where}.top_k") for r in ranked]
        _require(ranked[0].get("label") == DIGITS[digit] and math.isclose(probs[0], top),
                 f"{where}: top_k[0] is not the predicted digit")
        _require(all(a >= b for a, b in zip(probs, probs[1:], strict=False)), f"{where}: top_k not ranked")
        _require(sum(probs) <= 1.0 + 1e-4, f"{where}: top_k probabilities sum past 1")
        digits.append(digit)
    return digits


def check_diabetes(body: dict[str, Any], count: int) -> list[int]:
    """``count`` diabetes predictions whose label agrees with the probability (cut at 0.5)."""
    preds = body.get("predictions")
    _require(isinstance(preds, list), "no 'predictions' list")
    _require(len(preds) == count, f"{len(preds)} predictions for {count} rows")
    labels = []
    for i, pred in enumerate(preds):
        where = f"predictions[{i}]"
        _require(isinstance(pred, dict), f"{where} is not an object")
        p = _probability(pred.get("probability"), where)
        label = pred.get("label")
        _require(label in DIABETES_LABELS, f"{where}: label {label!r} is not one of "
                                           f"{DIABETES_LABELS}")
        _require(label == DIABETES_LABELS[int(p >= 0.5)],
                 f"{where}: label {label!r} disagrees with probability {p:.3f}")
        labels.append(DIABETES_LABELS.index(label))
    return labels


def check_generate(body: dict[str, Any], prompt: str, max_new_chars: int) -> None:
    _require(body.get("prompt") == prompt, "the prompt was not echoed back")
    text = body.get("text")
    _require(isinstance(text, str), "no generated 'text'")
    # Every step emits one vocabulary entry: a character, or the <unk> token (several chars).
    _require(len(text) >= max_new_chars, f"{len(text)} characters generated, asked for "
                                         f"{max_new_chars}")
    _require(isinstance(body.get("unknown_chars"), list), "no 'unknown_chars' list")


def check_next(body: dict[str, Any], prompt: str, top_k: int) -> None:
    _require(body.get("prompt") == prompt, "the prompt was not echoed back")
    nxt = body.get("next")
    _require(isinstance(nxt, list) and len(nxt) == top_k,
             f"'next' has {len(nxt) if isinstance(nxt, list) else 'no'} entries, expected {top_k}")
    probs = []
    for i, entry in enumerate(nxt):
        _require(isinstance(entry, dict) and isinstance(entry.get("char"), str)
                 and entry["char"] != "", f"next[{i}] has no character")
        probs.append(_probability(entry.get("probability"), f"next[{i}]"))
    _require(all(a >= b for a, b in zip(probs, probs[1:], strict=False)), "'next' is not ranked")
    _require(sum(probs) <= 1.0 + 1e-4, "'next' probabilities sum past 1")


def check_oip(status: int, headers: Mapping[str, str], body: Any, model: str, output: str,
              shape: list[int]) -> list[float]:
    """An Open Inference Protocol answer for ``model`` with one ``output`` tensor of ``shape``."""
    _require(status == 200, f"HTTP {status}: {body.get('error') if isinstance(body, dict) else body!r}")
    _require(isinstance(body, dict), f"body is {type(body).__name__}, not a JSON object")
    _require(body.get("model_name") == model,
             f"answered by model {body.get('model_name')!r}, not {model!r}")
    version = body.get("model_version")
    _require(isinstance(version, str) and bool(version), "no model_version")
    header = _header(headers, VERSION_HEADER)
    _require(header is None or header == version,
             f"model_version {version!r} != header version {header!r}")
    outputs = body.get("outputs")
    _require(isinstance(outputs, list), "no 'outputs' list")
    found = [o for o in outputs if isinstance(o, dict) and o.get("name") == output]
    _require(len(found) == 1, f"no output named {output!r} in "
                              f"{[o.get('name') for o in outputs if isinstance(o, dict)]}")
    tensor = found[0]
    _require(tensor.get("shape") == shape, f"output shape {tensor.get('shape')} != {shape}")
    _require(tensor.get("datatype") == "FP32", f"output datatype {tensor.get('datatype')!r} "
                                               f"is not FP32")
    data = tensor.get("data")
    flat = _flatten(data) if isinstance(data, list) else None
    _require(flat is not None and len(flat) == math.prod(shape),
             f"output data has {len(flat) if flat is not None else 'no'} values, "
             f"expected {math.prod(shape)}")
    _require(all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
                 for v in flat), "output data holds non-finite or non-numeric values")
    return flat


def _flatten(data: list[Any]) -> list[Any]:
    out: list[Any] = []
    for item in data:
        if isinstance(item, list):
            out.extend(_flatten(item))
        else:
            out.append(item)
    return out
