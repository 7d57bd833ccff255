"""API errors: one exception type the handlers raise, turned into the error body at the edge."""
from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """An HTTP error with a machine-readable code; ``details`` name the fields at fault."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details or []
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}


def invalid_field(field: str, reason: str, code: str = "invalid_request") -> ApiError:
    return ApiError(400, code, f"{field}: {reason}", [{"field": field, "reason": reason}])
