"""The Open Inference Protocol (KServe v2) front door: /v2 (issue 4; being built)."""

from __future__ import annotations

from fastapi import APIRouter


def build_router() -> APIRouter:
    return APIRouter(prefix="/v2", tags=["Open Inference Protocol"])
