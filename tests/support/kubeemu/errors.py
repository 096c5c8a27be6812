"""A write the API server refuses, with the code, reason and message of its Status."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """What the API server would answer instead of the object: a ``Status``.

    `status` is the HTTP code (409 for an apply conflict, 400 for a bad
    quantity), `reason` the Status's reason (``Conflict``, ``BadRequest``),
    `message` its message, worded as the real server words it, and
    `details` its details (the conflicts' causes).
    """

    def __init__(
        self, status: int, reason: str, message: str, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message
        self.details = details or {}
