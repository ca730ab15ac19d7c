"""The kinds by name: each kind module registers its class here, and the catalog (or an imported
model's metadata) names the kind of each model."""

from __future__ import annotations

from typing import TypeVar

from models.catalog import ModelSpec
from services.kinds.base import Kind

KINDS: dict[str, type[Kind]] = {}
K = TypeVar("K", bound=type[Kind])


def register(cls: K) -> K:
    KINDS[cls.name] = cls
    return cls


def kind_for(spec: ModelSpec) -> Kind:
    """The kind object that serves ``spec``."""
    try:
        return KINDS[spec.kind](spec)
    except KeyError:
        raise ValueError(f"model {spec.name!r} names kind {spec.kind!r}; known kinds: "
                         f"{', '.join(sorted(KINDS))}") from None
