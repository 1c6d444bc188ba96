"""Matrix errors: what every layer raises when a request cannot be served.

Services raise `MatrixError` subclasses; the HTTP layer turns them into the spec's error
JSON (`{"errcode": "M_...", "error": "..."}`) with the matching status. Kept at the top of
the package so the services never import the HTTP layer to report a failure.
"""

from __future__ import annotations

from typing import Any


class MatrixError(Exception):
    """An error with a Matrix errcode and an HTTP status."""

    def __init__(
        self,
        status: int,
        errcode: str,
        error: str,
        *,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(f"{errcode}: {error}")
        self.status = status
        self.errcode = errcode
        self.error = error
        self.headers = headers or {}
        self.extra = extra

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"errcode": self.errcode, "error": self.error}
        body.update(self.extra)
        return body


class ConflictError(Exception):
    """A write lost a race with a concurrent one (a unique constraint fired). Storage's
    UniqueViolation is one; the HTTP layer answers 409 so the client can retry, never 500.
    Services still catch the races they expect and answer precisely."""


def forbidden(msg: str = "Forbidden") -> MatrixError:
    return MatrixError(403, "M_FORBIDDEN", msg)


def bad_json(msg: str) -> MatrixError:
    return MatrixError(400, "M_BAD_JSON", msg)


def not_json(msg: str = "Content not JSON.") -> MatrixError:
    return MatrixError(400, "M_NOT_JSON", msg)


def missing_param(msg: str) -> MatrixError:
    return MatrixError(400, "M_MISSING_PARAM", msg)


def invalid_param(msg: str) -> MatrixError:
    return MatrixError(400, "M_INVALID_PARAM", msg)


def not_found(msg: str = "Not found") -> MatrixError:
    return MatrixError(404, "M_NOT_FOUND", msg)


def unrecognized(status: int = 404, msg: str = "Unrecognized request") -> MatrixError:
    return MatrixError(status, "M_UNRECOGNIZED", msg)


def too_large(msg: str = "Request body too large") -> MatrixError:
    return MatrixError(413, "M_TOO_LARGE", msg)


def limit_exceeded(retry_after_ms: int) -> MatrixError:
    return MatrixError(
        429,
        "M_LIMIT_EXCEEDED",
        "Too many requests",
        headers={"Retry-After": str(max(1, (retry_after_ms + 999) // 1000))},
        retry_after_ms=retry_after_ms,
    )


def unknown_token(msg: str = "Unknown access token", soft_logout: bool = False) -> MatrixError:
    return MatrixError(401, "M_UNKNOWN_TOKEN", msg, soft_logout=soft_logout)


def missing_token() -> MatrixError:
    return MatrixError(401, "M_MISSING_TOKEN", "Missing access token")
