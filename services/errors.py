"""The handful of errors the data plane raises, each mapped to one HTTP status in one place.

Bodies are ``{"error": "...", "field": "..."}`` — the Open Inference Protocol's shape plus the
field that was wrong, when there is one. Messages quote what the client sent (a model name from
the URL, a tensor or file name), so both are clipped: an error body never grows with the request.
"""

from __future__ import annotations

from typing import Any

MAX_MESSAGE_CHARS = 1000
MAX_NAME_CHARS = 64


def clip(text: str, limit: int = MAX_NAME_CHARS) -> str:
    """``text`` cut to ``limit`` characters (marked with an ellipsis): a client-chosen string
    quoted back in an error stays small whatever the client sent."""
    return text if len(text) <= limit else f"{text[:limit - 1]}…"


class PodiumError(Exception):
    status = 500

    def __init__(self, message: str, field: str | None = None) -> None:
        message = clip(message, MAX_MESSAGE_CHARS)
        super().__init__(message)
        self.message = message
        self.field = clip(field) if field else field

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
