"""Which side of a rollout answers a request: pure functions of the rollout and the headers.

With no rollout the stable version answers. In a canary, ``percent`` of requests go to the
candidate — sticky per ``Podium-Client-Key`` when a client sends one (a hash of key and rollout,
the same in every worker of every replica), random otherwise; ``Podium-Pin: stable|candidate``
picks a side. In shadow mode stable answers and the candidate gets a copy (``Rollout.mirror``).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping

from services.errors import InvalidInput
from services.rollout.state import ModelRollout

PIN_HEADER = "podium-pin"
CLIENT_KEY_HEADER = "podium-client-key"


def _header(headers: Mapping[str, str] | None, name: str) -> str | None:
    if not headers:
        return None
    return headers.get(name) or headers.get(name.title())


def sticky_fraction(key: str, rollout_id: str) -> float:
    """A number in [0, 1) fixed by client key and rollout: the same in every process."""
    digest = hashlib.blake2b(f"{rollout_id}\0{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def route(plan: ModelRollout | None, headers: Mapping[str, str] | None) -> str | None:
    """The candidate's version when it should answer this request; None means stable."""
    if plan is None or plan.candidate is None:
        return None
    pin = _header(headers, PIN_HEADER)
    if pin:
        side = pin.strip().lower()
        if side not in ("stable", "candidate"):
            raise InvalidInput(f"{PIN_HEADER.title()} must be 'stable' or 'candidate'",
                               field=PIN_HEADER.title())
        return plan.candidate if side == "candidate" else None
    if plan.mode != "canary":
        return None
    key = _header(headers, CLIENT_KEY_HEADER)
    u = sticky_fraction(key, plan.rollout_id) if key else random.random()
    return plan.candidate if u * 100 < plan.percent else None
