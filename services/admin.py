"""The admin API: version rollout (issue 5; being built)."""

from __future__ import annotations

from fastapi import APIRouter


def build_router() -> APIRouter:
    return APIRouter(prefix="/admin", tags=["Admin"])
