"""Registry failures, split by what the operator should do about them.

`kind` uses the same words as the engine's AdapterErrorKind, so the operator maps an exception with
`AdapterErrorKind(error.kind)` without this package importing the engine. Messages never carry a secret:
they are built from the model name, version, host and HTTP status, and server text is redacted first.
"""

from __future__ import annotations

from typing import ClassVar


class RegistryError(Exception):
    """Base of every error the registry adapter raises."""

    kind: ClassVar[str] = "Error"
    retryable: ClassVar[bool] = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


class VersionNotFound(RegistryError):
    """The registered model, the version or the alias does not exist: retrying will not help."""

    kind: ClassVar[str] = "NotFound"

    def __init__(self, message: str, *, model_name: str, reference: str | None = None) -> None:
        super().__init__(message)
        self.model_name = model_name
        self.reference = reference  # "version 7", "alias @production", or None when the model is missing


class RegistryUnavailable(RegistryError):
    """Connection refused, timeout, TLS failure, HTTP 408/429/5xx: try again on a later reconcile."""

    kind: ClassVar[str] = "Unavailable"
    retryable: ClassVar[bool] = True


class RegistryAccessDenied(RegistryError):
    """HTTP 401/403: the credentials are missing, wrong, or lack a permission."""

    kind: ClassVar[str] = "Forbidden"


class RegistryRequestError(RegistryError):
    """The registry refused the request or answered in a way that is not MLflow's (wrong URI, proxy page)."""

    kind: ClassVar[str] = "Error"


class RegistryConfigError(RegistryError, ValueError):
    """The adapter's own configuration is unusable (tracking URI, credentials, alias name)."""

    kind: ClassVar[str] = "Invalid"


class StableAliasMoved(RegistryError):
    """promote() found the stable alias on a version that is neither the one the rollout expected nor its candidate:
    someone moved it meanwhile. Nothing was written; the engine's fresh read holds the promotion (StableMismatch)."""

    kind: ClassVar[str] = "Conflict"

    def __init__(self, message: str, *, found: str | None) -> None:
        super().__init__(message)
        self.found = found
