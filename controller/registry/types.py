"""Plain data the registry adapter takes and returns, and the tag names it writes."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from controller.api.reach import short_service_refusal
from controller.engine.decide import PROMOTED_TIME_TAG as PROMOTED_TIME_TAG
from controller.engine.observations import REJECTED_TAG as REJECTED_TAG
from controller.engine.observations import REJECTED_TIME_TAG as REJECTED_TIME_TAG
from controller.registry.errors import RegistryConfigError

# Version tags written by the operator. The engine reads REJECTED_TAG, REJECTED_TIME_TAG (engine.observations, with
# the time's format, rejection_time) and PROMOTED_TIME_TAG (engine.decide): their names are defined there, once.
REJECTED_REASON_TAG = "modelrollout.rejected.reason"
REJECTED_EVIDENCE_TAG = "modelrollout.rejected.evidence"
REJECTED_ROLLOUT_TAG = "modelrollout.rejected.rollout"
REJECTED_BY_TAG = "modelrollout.rejected.by"
PREVIOUS_VERSION_TAG = "modelrollout.previous_version"  # on a promoted version: what the alias named before
PROMOTED_ROLLOUT_TAG = "modelrollout.promoted.rollout"

# Secret keys accepted for credentials: short names, or the names MLflow's own client reads from the env.
_TOKEN_KEYS = ("token", "MLFLOW_TRACKING_TOKEN")
_USERNAME_KEYS = ("username", "MLFLOW_TRACKING_USERNAME")
_PASSWORD_KEYS = ("password", "MLFLOW_TRACKING_PASSWORD")
# The registry the credentials are for (as Argo CD's repository Secrets carry their `url`): they are sent to
# no other, so whoever may edit a rollout's trackingUri cannot have the operator send them elsewhere.
_URI_KEYS = ("trackingUri", "MLFLOW_TRACKING_URI")


@dataclass(frozen=True, repr=False)
class Credentials:
    """Per-rollout registry credentials: a bearer token, or a username and password (HTTP basic).

    Held only by the adapter that uses them; never put in the environment, never printed.
    """

    token: str | None = None
    username: str | None = None
    password: str | None = None

    def __post_init__(self) -> None:
        if self.token is None and (self.username is None) != (self.password is None):
            raise RegistryConfigError("registry credentials need both a username and a password")

    @property
    def kind(self) -> str:
        """How the credentials authenticate, for messages: 'bearer token', 'basic' or 'none'."""
        if self.token:
            return "bearer token"
        if self.username and self.password:
            return "basic"
        return "none"

    def secrets(self) -> tuple[str, ...]:
        """The values that must never appear in output (the username is not a secret)."""
        return tuple(value for value in (self.token, self.password) if value)

    def __repr__(self) -> str:
        return f"Credentials(kind={self.kind!r})"

    __str__ = __repr__

    @classmethod
    def from_secret_data(cls, data: Mapping[str, str | bytes], *, base64_encoded: bool = True,
                         tracking_uri: str | None = None) -> Credentials:
        """Read a Kubernetes Secret's `data` (base64, the default) or `stringData` (plain) mapping.

        Keys: `token`, or `username` + `password` (MLFLOW_TRACKING_TOKEN / _USERNAME / _PASSWORD also work).
        With `tracking_uri` (the operator always passes the one it will call), the Secret must also name that
        registry in `trackingUri` (or MLFLOW_TRACKING_URI). Errors name the keys, never the values.
        """

        def first(keys: tuple[str, ...]) -> str | None:
            for key in keys:
                if key in data:
                    return _decode(key, data[key], base64_encoded)
            return None

        if tracking_uri is not None:
            scope = first(_URI_KEYS)
            if scope is None:
                raise RegistryConfigError(
                    "the registry credentials Secret has no 'trackingUri' key: name the MLflow tracking URI these "
                    "credentials are for (they are sent to no other)")
            if _endpoint(scope) is None:
                raise RegistryConfigError("the registry credentials Secret key 'trackingUri' is not an http(s) URL "
                                          "without user info")
            # Checked before the two are compared: the token would go to whoever answers the name.
            short = short_service_refusal(scope)
            if short:
                raise RegistryConfigError(f"the registry credentials Secret key 'trackingUri': {short}")
            if _endpoint(tracking_uri) is None:  # not echoed: it may hold a password
                raise RegistryConfigError("the tracking URI in use is not an http(s) URL without user info or "
                                          "backslashes: the registry credentials are sent to no such URL")
            if _endpoint(scope) != _endpoint(tracking_uri):
                raise RegistryConfigError(
                    "the registry credentials Secret is for another registry: its 'trackingUri' differs from the "
                    "tracking URI in use (spec.registry.trackingUri or the operator's default), and credentials "
                    "are sent only to the registry their Secret names")
        token = first(_TOKEN_KEYS)
        username = first(_USERNAME_KEYS)
        password = first(_PASSWORD_KEYS)
        if not token and not (username and password):
            raise RegistryConfigError(
                "the registry credentials Secret needs a non-empty 'token', or 'username' and 'password' "
                f"(keys present: {', '.join(sorted(data)) or 'none'})")
        return cls(token=token or None, username=username if not token else None,
                   password=password if not token else None)


def _endpoint(uri: str) -> tuple[str, str, int | None, str] | None:
    """What makes two tracking URIs the same registry: scheme, host, port (default filled in) and path.

    None for a URI with user info or a backslash: urlsplit and requests disagree on its host
    ("http://evil.com\\@mlflow.ml" is mlflow.ml to one and evil.com to the other), and the gate's MLflow client
    sends the credentials to whatever host requests connects to.
    """
    if "\\" in uri:
        return None
    try:
        parts = urlsplit(uri.strip())
        port = parts.port or {"http": 80, "https": 443}.get(parts.scheme.lower())
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname or "@" in parts.netloc:
        return None
    # The host exactly, root dot kept: "mlflow.ml" resolves through the pod's DNS search list (a Service),
    # "mlflow.ml." is absolute and may leave the cluster (a namespace named like a top-level domain).
    return parts.scheme.lower(), parts.hostname.lower(), port, parts.path.rstrip("/")


def _decode(key: str, raw: str | bytes, base64_encoded: bool) -> str:
    try:
        value = base64.b64decode(raw, validate=True) if base64_encoded else raw
        text = value.decode() if isinstance(value, bytes) else value
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise RegistryConfigError(f"the registry credentials Secret key {key!r} is not valid base64 text") from None
    # Secrets written with `echo` carry a trailing newline that would break the Authorization header.
    text = text.strip()
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in text):
        # A header with a control character is refused by the HTTP client with the header, secret and all,
        # in its message.
        raise RegistryConfigError(f"the registry credentials Secret key {key!r} holds a control character")
    if not text.isascii():
        # A header carries Latin-1 at most, and a proxy echoing its raw bytes back is decoded as UTF-8 (a letter
        # then no longer matches the value redaction looks for): ASCII only.
        raise RegistryConfigError(f"the registry credentials Secret key {key!r} holds a character an HTTP header "
                                  "cannot carry reliably (only ASCII is accepted)")
    return text


@dataclass(frozen=True)
class ResolvedVersion:
    """A registered model version as the registry reports it now.

    source: the version's source as registered (e.g. mlflow-artifacts:/..., s3://..., models:/m-...).
    lineage: dataset lineage of the version and its run: lineage/dataset tags, git source, run inputs.
    status: MLflow's registration status; only READY versions can be served.
    """

    name: str
    version: str
    run_id: str | None
    source: str | None
    status: str = "READY"
    tags: Mapping[str, str] = field(default_factory=dict)
    lineage: Mapping[str, str] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()

    @property
    def ready(self) -> bool:
        return self.status == "READY"

    @property
    def rejected(self) -> bool:
        return self.tags.get(REJECTED_TAG) == "true"


@dataclass(frozen=True)
class PromotionResult:
    """What promote() left in place.

    previous_version: what the stable alias named before this promotion (None on a first rollout).
    alias_moved: True when this call moved the alias; False when it already pointed at the candidate.
    """

    alias: str
    version: str
    previous_version: str | None
    alias_moved: bool


@dataclass(frozen=True)
class RollbackResult:
    """What rollback() left in place.

    alias_version: where the stable alias points now (None: it is not set, as on a first rollout).
    alias_restored: True when this call moved or removed the alias.
    tagged: True when this call wrote the rejection tags; False when they were already there.
    """

    alias: str
    alias_version: str | None
    alias_restored: bool
    tagged: bool
