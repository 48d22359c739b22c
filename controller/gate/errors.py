"""Why the gate could not get its dataset: retryable trouble versus a refusal that retrying cannot fix."""

from __future__ import annotations

from enum import StrEnum


class ErrorKind(StrEnum):
    """Same values as controller.engine.observations.AdapterErrorKind, so the operator can map 1:1."""

    UNAVAILABLE = "Unavailable"  # connection refused, timeout, 5xx: try again later
    NOT_FOUND = "NotFound"
    FORBIDDEN = "Forbidden"  # 401/403: credentials or RBAC
    INVALID = "Invalid"
    ERROR = "Error"


class SourceError(Exception):
    """The dataset (or a model artifact) could not be read now; the operator reports it and retries."""

    def __init__(self, kind: ErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


class SourcePolicyError(SourceError):
    """Refused by configuration or policy (host not allow-listed, unsupported scheme, too large).

    Retrying changes nothing until a human changes the spec or the operator's configuration, so the gate
    turns this into an inconclusive verdict instead of an error that is retried.
    """

    def __init__(self, message: str) -> None:
        super().__init__(ErrorKind.INVALID, message)


def kind_for_http_status(status: int) -> ErrorKind:
    if status == 404:
        return ErrorKind.NOT_FOUND
    if status in (401, 403):
        return ErrorKind.FORBIDDEN
    if status == 429 or status >= 500:
        return ErrorKind.UNAVAILABLE
    if status in (400, 422):
        return ErrorKind.INVALID
    return ErrorKind.ERROR
