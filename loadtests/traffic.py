"""The traffic profile: which Locust user classes exist, their default weights and batch sizes,
and the ``--weights`` rules. Shared by the locustfile and the runner; imports neither Locust nor
torch."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import urlparse

from models.catalog import CATALOG

# Input forms by model kind; each (model, form) is one Locust user class.
FORMS = {"image": ("json", "npy", "image", "multipart", "oip"), "tabular": ("rows", "oip"),
         "text": ("generate", "next")}
# The default mixed-traffic profile, by form: mostly single JSON/row requests, some batches,
# uploads and text. Change it per run with --weights.
DEFAULT_WEIGHTS = {"json": 3, "npy": 1, "image": 2, "multipart": 1, "oip": 1, "rows": 3,
                   "generate": 1, "next": 2}
# Inputs per request where a form sends a batch (perf_analyzer's default batch is 1).
DEFAULT_BATCH = {"json": 1, "npy": 16, "multipart": 4, "oip": 1, "rows": 4}


@dataclass(frozen=True)
class UserSpec:
    name: str  # the Locust class name: MnistCnnJson, DiabetesRows, CharRnnGenerate
    model: str
    form: str


def class_name(model: str, form: str) -> str:
    return "".join(part.title() for part in (*model.split("-"), form))


def user_specs(models: list[str] | None = None, oip: bool = True) -> list[UserSpec]:
    """Every (model, form) user, optionally limited to ``models`` and without the OIP ones."""
    return [UserSpec(class_name(model, form), model, form)
            for model, spec in CATALOG.items() if models is None or model in models
            for form in FORMS[spec.kind] if oip or form != "oip"]


def parse_weights(spec: str) -> list[tuple[str, float]]:
    out = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        key, sep, value = item.partition("=")
        try:
            weight = float(value)
        except ValueError:
            weight = -1.0
        if not sep or weight < 0:
            raise ValueError(f"bad weight {item!r}: expected key=number (key: class, model, "
                             f"form or *)")
        out.append((key.strip(), weight))
    return out


def resolve_weights(users: list[UserSpec], spec: str) -> dict[str, float]:
    """Class name → weight: the form's default, then each matching rule in order."""
    rules = parse_weights(spec)
    known = {"*"} | {u.name for u in users} | {u.model for u in users} | {u.form for u in users}
    unknown = [k for k, _ in rules if k not in known]
    if unknown:
        raise ValueError(f"weights name nothing here: {unknown}; keys are class names, models, "
                         f"forms or *")
    weights = {}
    for user in users:
        weight = float(DEFAULT_WEIGHTS[user.form])
        for key, value in rules:
            if key in ("*", user.name, user.model, user.form):
                weight = value
        weights[user.name] = weight
    return weights


def is_loopback(url: str) -> bool:
    host = urlparse(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
