"""The handful of errors the data plane raises, each mapped to one HTTP status in one place.

Bodies are ``{"error": "...", "field": "..."}`` — the Open Inference Protocol's shape plus the
field that was wrong, when there is one.
"""

from __future__ import annotations

from typing import Any


class PodiumError(Exception):
    status = 500

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.message}
        if self.field:
            body["field"] = self.field
        return body


class InvalidInput(PodiumError):
    status = 400


class Unauthorized(PodiumError):
    status = 401


class Forbidden(PodiumError):
    status = 403


class ModelNotFound(PodiumError):
    status = 404


class Conflict(PodiumError):
    status = 409


class PayloadTooLarge(PodiumError):
    status = 413


class UnsupportedMediaType(PodiumError):
    status = 415


class InferenceError(PodiumError):
    status = 500


class ServiceOverloaded(PodiumError):
    status = 503


class ModelNotReady(PodiumError):
    status = 503
