"""The MLflow model registry over its REST API, with per-rollout credentials and short timeouts.

Why not MlflowClient / RestStore: they read the tracking URI, credentials, timeout (120 s) and retries
(7, exponential) from process-wide environment variables, and one operator process serves rollouts with
different registries and Secrets. mlflow-skinny's `http_request` takes all of them per call, so each
adapter carries its own MlflowHostCreds and RequestPolicy and nothing global is touched. The endpoints are
MLflow's documented REST API 2.0 (aliases and version tags only; stages are deprecated).
"""

from __future__ import annotations

import http.cookiejar
import json
import logging
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
import urllib3
from mlflow.exceptions import MlflowException
from mlflow.utils.request_utils import _get_request_session
from mlflow.utils.rest_utils import MlflowHostCreds, http_request

from controller.api.reach import short_service_refusal
from controller.api.spec import PREVIOUS_ALIAS_SUFFIX
from controller.http_deadline import AnswerTooSlow, Exchange, only_explicit_auth, transport_cause, watch_session
from controller.redaction import redact_credentials, redacted_url
from controller.registry.base import VERSION_NUMBER, DatasetInput, ModelRegistry, RunRecord, VersionRecord, bounded
from controller.registry.errors import (
    RegistryAccessDenied,
    RegistryConfigError,
    RegistryError,
    RegistryRequestError,
    RegistryUnavailable,
    VersionNotFound,
)
from controller.registry.types import Credentials

logger = logging.getLogger(__name__)

API_PREFIX = "/api/2.0/mlflow"
MAX_SERVER_MESSAGE_CHARS = 300
_DATASET_CONTEXT_TAG = "mlflow.data.context"
# An MLflow answer is a few KiB; a body past this is not one (and would be held in memory whole).
MAX_ANSWER_BYTES = 4 * 1024 * 1024
# Statuses worth retrying: the server is overloaded, restarting or behind a struggling proxy.
_TRANSIENT_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
# MLflow's error codes are names (RESOURCE_DOES_NOT_EXIST); any other error_code is a server's text.
_ERROR_CODE = re.compile(r"[A-Z][A-Z_]{0,63}")
# Asked for when a registered model lists no alias, only to learn whether the server has the alias API at all.
_PROBE_ALIAS = "modelrollout-alias-probe"
# A version's source and run id, kept whole in status (twice, with the stable version's) and the source in the
# target (storageUri and the router's annotations): a real one is well under this; MLflow on SQLite takes 2 MB.
MAX_VERSION_TEXT_CHARS = 8 * 1024
# MLflow's ModelVersionStatus; anything else is no MLflow answer (and would be quoted, unbounded, in a message).
_REGISTRATION_STATUSES = frozenset({"READY", "PENDING_REGISTRATION", "FAILED_REGISTRATION"})
# No cookie is kept or sent: mlflow's session is one per process, and a cookie one registry set for one rollout's
# credentials would go with every other rollout's request, to any host its domain matches.
_NO_COOKIES = http.cookiejar.DefaultCookiePolicy(allowed_domains=[])
MAX_PLAIN_MESSAGE_CHARS = 120
# MLflow's basic-auth permission each write needs on the registered model (reads need READ): deleting an alias
# needs MANAGE, which an EDIT user lacks although it may set the alias.
_WRITE_PERMISSIONS = {("DELETE", "registered-models/alias"): "MANAGE", ("POST", "registered-models/alias"): "EDIT",
                      ("POST", "model-versions/set-tag"): "EDIT"}


@dataclass(frozen=True)
class RequestPolicy:
    """Per-call limits. The operator backs off across reconciles, so a call gives up fast.

    Worst case per HTTP request: (1 + max_retries) * timeout_seconds, backoff sleeps included. requests' timeout
    bounds each wait for bytes only, so the request (all its tries, from sending to the whole body read) is cut at
    that total as a deadline (a server sending a byte a second would otherwise hold a worker for ever).
    """

    timeout_seconds: float = 5.0
    max_retries: int = 1
    backoff_seconds: float = 0.2
    server_cert_path: str | None = None  # CA bundle for an https registry with a private CA

    def __post_init__(self) -> None:
        if self.timeout_seconds <= 0 or not 0 <= self.max_retries <= 5 or self.backoff_seconds < 0:
            raise RegistryConfigError("registry request policy needs timeout > 0, 0-5 retries, backoff >= 0")


class _Missing(RegistryError):
    """MLflow said RESOURCE_DOES_NOT_EXIST; each primitive turns it into its own answer."""


class _Refused(RegistryRequestError):
    """Any other refusal, with its status and MLflow error code ("" when none) for a caller that tells them apart."""

    def __init__(self, message: str, *, status: int, error_code: str) -> None:
        super().__init__(message)
        self.status = status
        self.error_code = error_code


class MlflowRegistry(ModelRegistry):
    """One registry endpoint with one set of credentials; cheap to create per rollout and reconcile."""

    def __init__(self, tracking_uri: str, credentials: Credentials | None = None, *,
                 policy: RequestPolicy | None = None,
                 previous_alias_suffix: str | None = PREVIOUS_ALIAS_SUFFIX) -> None:
        self.tracking_uri = validated_tracking_uri(tracking_uri)
        self.policy = policy or RequestPolicy()
        self.previous_alias_suffix = previous_alias_suffix
        self._credentials = credentials or Credentials()
        self._host_creds = MlflowHostCreds(
            host=self.tracking_uri,
            token=self._credentials.token,
            username=None if self._credentials.token else self._credentials.username,
            password=None if self._credentials.token else self._credentials.password,
            server_cert_path=self.policy.server_cert_path,
        )

    def __repr__(self) -> str:
        return f"MlflowRegistry(tracking_uri={self.tracking_uri!r}, auth={self._credentials.kind!r})"

    __str__ = __repr__

    # --- primitives --------------------------------------------------------------------------------

    def _aliases(self, model_name: str) -> dict[str, str]:
        try:
            body = self._call("GET", "registered-models/get", {"name": model_name})
        except _Missing:
            raise VersionNotFound(f"registered model {model_name!r} does not exist in MLflow at {self.tracking_uri}",
                                  model_name=model_name) from None
        model = _object(body, "registered_model")
        aliases = model.get("aliases")
        if aliases is None:
            # MLflow leaves the list out when no alias is set, and so does an MLflow without aliases (< 2.3):
            # there "no stable alias" would be wrong (the first-rollout path: all traffic at once, no way back).
            self._check_alias_api(model_name)
            return {}
        entries = aliases if isinstance(aliases, list) else [aliases]
        if not all(isinstance(e, Mapping) and isinstance(e.get("alias"), str) and isinstance(e.get("version"), str)
                   for e in entries):
            # Read leniently, a broken list would say "no stable alias" and send the rollout down the
            # first-rollout path (no comparison, no way back).
            raise RegistryRequestError(f"MLflow's registered_model {model_name!r} has aliases that are not "
                                       "[{alias: string, version: string}]: is this an MLflow tracking server?")
        found: dict[str, str] = {}
        for entry in entries:
            alias, target = entry["alias"], entry["version"]
            if not VERSION_NUMBER.fullmatch(target):  # e.g. "latest" or "07": it would be asked for as a version
                raise RegistryRequestError(f"MLflow's registered_model {model_name!r} has alias {self._quoted(alias)} "
                                           f"naming version {self._quoted(target)}, not a version number (1, 2, ...):"
                                           " is this an MLflow tracking server?")
            if found.setdefault(alias, target) != target:  # which one the alias names is unknown
                raise RegistryRequestError(f"MLflow's registered_model {model_name!r} lists alias "
                                           f"{self._quoted(alias)} twice, naming versions "
                                           f"{self._quoted(found[alias])} and {self._quoted(target)}: "
                                           "is this an MLflow tracking server?")
        return found

    def _check_alias_api(self, model_name: str) -> None:
        """Raises RegistryRequestError unless the server answers MLflow's alias endpoint (one request)."""
        try:
            body = self._call("GET", "registered-models/alias", {"name": model_name, "alias": _PROBE_ALIAS})
        except _Missing:
            return  # how a registry may say the alias is not set
        except _Refused as error:
            if error.status == 400 and error.error_code == "INVALID_PARAMETER_VALUE":
                return  # MLflow's own answer for an alias that is not set ("Registered model alias ... not found")
            if error.status == 404:  # a web server's page (or ENDPOINT_NOT_FOUND): there is no such endpoint
                answer = error.error_code or "without an MLflow error"
                raise RegistryRequestError(f"MLflow at {self.tracking_uri} has no model-alias API (MLflow >= 2.3 is "
                                           f"needed): GET registered-models/alias answered HTTP 404 {answer}") from None
            raise
        # A success is MLflow's only as the alias's version (the probe set since the model was read); any other body
        # taken for "no stable alias" would roll the candidate out as a first rollout (review s34registry).
        found = _object(body, "model_version")
        version = found.get("version")
        if isinstance(version, int) and not isinstance(version, bool):
            version = str(version)  # a JSON number, as some implementations send it
        if found.get("name") != model_name or not isinstance(version, str) or not VERSION_NUMBER.fullmatch(version):
            raise RegistryRequestError(f"MLflow's alias probe answered with no version of {model_name!r}: is this an "
                                       "MLflow tracking server?")

    def _version(self, model_name: str, version: str) -> VersionRecord | None:
        try:
            body = self._call("GET", "model-versions/get", {"name": model_name, "version": version})
        except _Missing:
            return None
        found = _object(body, "model_version")
        # Each field lands in the rollout's status, where the CRD wants strings: a server answering other
        # types would make every status write fail, so the answer is refused here, naming the field.
        what = f"model_version of {model_name!r} version {version}"
        return VersionRecord(
            name=self._asked(found, "name", model_name, what), version=self._asked(found, "version", version, what),
            run_id=_short_string(found, "run_id", what) or None, source=_short_string(found, "source", what) or None,
            status=self._registration_status(found, what), tags=_string_tags(found, what),
            aliases=tuple(str(alias) for alias in _list(found, "aliases")))

    def _registration_status(self, found: Mapping[str, Any], what: str) -> str:
        status = _required_string(found, "status", what)
        if status not in _REGISTRATION_STATUSES:  # quoted bounded: any text could stand here
            raise RegistryRequestError(f"MLflow's {what} has 'status' {self._quoted(status)}, not one of "
                                       f"{', '.join(sorted(_REGISTRATION_STATUSES))}: is this an MLflow tracking "
                                       "server?")
        return status

    def _download_uri(self, model_name: str, version: str) -> str | None:
        try:
            body = self._call("GET", "model-versions/get-download-uri", {"name": model_name, "version": version})
        except _Missing:
            return None
        # Given to the target whole, as a source is: bounded and a string, or refused naming the field.
        return _short_string(body, "artifact_uri", f"get-download-uri of {model_name!r} version {version}") or None

    def _run(self, run_id: str) -> RunRecord | None:
        try:
            body = self._call("GET", "runs/get", {"run_id": run_id})
        except _Missing:
            return None
        except RegistryAccessDenied:
            # Registry and experiment permissions are separate in MLflow: lineage is a record, not a reason
            # to block the rollout.
            logger.warning("no read access to run %s on %s: resolving without its lineage", run_id, self.tracking_uri)
            return None
        run = _object(body, "run")
        data = run.get("data") if isinstance(run.get("data"), Mapping) else {}
        inputs = run.get("inputs") if isinstance(run.get("inputs"), Mapping) else {}
        datasets = []
        for entry in _list(inputs, "dataset_inputs"):
            dataset = entry.get("dataset") if isinstance(entry, Mapping) else None
            if not isinstance(dataset, Mapping):
                continue
            datasets.append(DatasetInput(
                name=str(dataset.get("name", "")), digest=str(dataset.get("digest", "")),
                source_type=str(dataset.get("source_type", "")), source=str(dataset.get("source", "")),
                context=_tags(entry).get(_DATASET_CONTEXT_TAG, "")))
        return RunRecord(tags=_tags(data), dataset_inputs=tuple(datasets))

    def _set_alias(self, model_name: str, alias: str, version: str) -> None:
        try:
            self._call("POST", "registered-models/alias", {"name": model_name, "alias": alias, "version": version})
        except _Missing:
            raise self._version_missing(model_name, version) from None

    def _delete_alias(self, model_name: str, alias: str) -> None:
        try:
            self._call("DELETE", "registered-models/alias", {"name": model_name, "alias": alias})
        except _Missing:
            return  # nothing to delete

    def _set_version_tags(self, model_name: str, version: str, tags: Mapping[str, str]) -> None:
        # One request per tag: MLflow has no batch endpoint for version tags. The caller orders them.
        for key, value in tags.items():
            try:
                self._call("POST", "model-versions/set-tag",
                           {"name": model_name, "version": version, "key": key, "value": value})
            except _Missing:
                raise self._version_missing(model_name, version) from None

    # --- HTTP --------------------------------------------------------------------------------------

    def _call(self, method: str, endpoint: str, payload: Mapping[str, str]) -> dict[str, Any]:
        location = "params" if method == "GET" else "json"
        policy = self.policy
        seconds = policy.timeout_seconds * (1 + policy.max_retries)
        deadline = time.monotonic() + seconds
        try:
            with Exchange(seconds):
                # Not followed: requests would send a redirected POST (and DELETE, on 302) on as a GET, body dropped.
                response = mlflow_request(
                    self._host_creds, f"{API_PREFIX}/{endpoint}", method,
                    max_retries=policy.max_retries, backoff_factor=policy.backoff_seconds, backoff_jitter=0.0,
                    timeout=policy.timeout_seconds, stream=True, allow_redirects=False, **{location: dict(payload)})
                text = self._bounded_text(response, deadline)
        except AnswerTooSlow:
            raise RegistryUnavailable(f"MLflow at {self.tracking_uri} is unreachable: its answer took over "
                                      f"{seconds:g}s") from None
        except (MlflowException, requests.RequestException, urllib3.exceptions.HTTPError, OSError) as error:
            # `from None`: the chained requests exception holds the prepared request, Authorization and all.
            raise RegistryUnavailable(f"MLflow at {self.tracking_uri} is unreachable: "
                                      f"{self._transport_cause(error)}") from None
        if 300 <= response.status_code < 400:
            raise RegistryRequestError(self._redirect_message(response, method, endpoint))
        return self._answer(response.status_code, text, method, endpoint)

    def _redirect_message(self, response: requests.Response, method: str, endpoint: str) -> str:
        """Reads too (a resolve, before any traffic moves), or they would work and the promotion's write fail."""
        return redirect_message(self.tracking_uri, method, f"{API_PREFIX}/{endpoint}", response,
                                self._quoted, shown=endpoint)

    def _bounded_text(self, response: requests.Response, deadline: float) -> str:
        try:
            return bounded_text(response, deadline)
        except AnswerTooLarge:
            raise RegistryRequestError(f"MLflow at {self.tracking_uri} sent an answer over "
                                       f"{MAX_ANSWER_BYTES // (1024 * 1024)} MiB: not an MLflow answer") from None

    def _answer(self, status: int, text: str, method: str, endpoint: str) -> dict[str, Any]:
        body = _json_object(text)
        if status == 200:
            if body is None:
                raise RegistryRequestError(f"{method} {endpoint} on {self.tracking_uri} answered HTTP 200 with a "
                                           "body that is not MLflow's JSON: is this an MLflow tracking server?")
            return body
        error_code = str(body.get("error_code", "")) if body else ""
        error_code = error_code if _ERROR_CODE.fullmatch(error_code) else ""  # never quote a server's text
        detail = self._server_message(body)
        if status in (401, 403):
            # MLflow's auth app answers in plain text ("Permission denied"): quoted, short, as its JSON message is.
            detail = detail or self._plain_message(text)
            raise RegistryAccessDenied(f"MLflow at {self.tracking_uri} refused {method} {endpoint} with HTTP {status} "
                                       f"(credentials: {self._credentials.kind}){detail}; "
                                       f"{_access_hint(status, method, endpoint)}")
        if status in _TRANSIENT_STATUSES or status >= 500:
            raise RegistryUnavailable(f"MLflow at {self.tracking_uri} answered HTTP {status} to "
                                      f"{method} {endpoint}{detail}")
        if error_code == "RESOURCE_DOES_NOT_EXIST":
            raise _Missing(detail)
        if status == 404:
            raise _Refused(f"{method} {endpoint} on {self.tracking_uri} answered HTTP 404 without an MLflow error: "
                           "is this an MLflow tracking server (check the URI's path)?",
                           status=status, error_code=error_code)
        raise _Refused(f"MLflow at {self.tracking_uri} refused {method} {endpoint} with HTTP {status}"
                       f"{' ' + error_code if error_code else ''}{detail}", status=status, error_code=error_code)

    def _server_message(self, body: Mapping[str, Any] | None) -> str:
        message = str(body.get("message", "")) if body else ""
        return f": {bounded(self._redacted(message), MAX_SERVER_MESSAGE_CHARS)}" if message else ""

    def _plain_message(self, text: str) -> str:
        """A refusal's plain-text body, its first line bounded and redacted; not a page (a proxy's HTML)."""
        line = text.strip().splitlines()[0].strip() if text.strip() else ""
        if not line or line.startswith("<"):
            return ""
        return f": {bounded(self._redacted(line), MAX_PLAIN_MESSAGE_CHARS)}"

    def _transport_cause(self, error: BaseException) -> str:
        return transport_cause(error, self.policy.timeout_seconds)

    def _redacted(self, text: str) -> str:
        credentials = self._credentials
        return redact_credentials(text, token=credentials.token, username=credentials.username,
                                  password=credentials.password)

    def _quoted(self, value: str, limit: int = 40) -> str:
        """A server's value for a message: redacted before it is cut (a cut token would not be found)."""
        return bounded(self._redacted(repr(value)), limit)

    def _asked(self, found: Mapping[str, Any], key: str, asked: str, what: str) -> str:
        """found's name or version: the one asked (also when left out). Another one is refused: the engine would
        stage, or call stable, a version the spec never named."""
        value = found.get(key)
        if key == "version" and isinstance(value, int) and not isinstance(value, bool):
            value = str(value)  # a JSON number, as some implementations send it
        answered = _string({key: value}, key, what)  # any other type is refused, naming it
        if answered is None or answered == asked:
            return asked
        raise RegistryRequestError(f"MLflow's {what} answered with {key} {self._quoted(answered)}, not the "
                                   f"{key} asked: is this an MLflow tracking server?")

    def _version_missing(self, model_name: str, version: str) -> VersionNotFound:
        return VersionNotFound(f"registered model {model_name!r} has no version {version} "
                               f"(or the model does not exist) in MLflow at {self.tracking_uri}",
                               model_name=model_name, reference=f"version {version}")


def _access_hint(status: int, method: str, endpoint: str) -> str:
    """What a 401/403 asks of the credentials, for whoever grants them."""
    if status == 401:
        return "the credentials were not accepted: check the Secret's username and password, or token"
    if endpoint == "runs/get":
        return "READ permission on the experiment of the version's run is needed"
    permission = _WRITE_PERMISSIONS.get((method, endpoint), "READ")
    return f"{permission} permission on the registered model is needed"


def mlflow_request(host_creds: MlflowHostCreds, endpoint: str, method: str, *, max_retries: int,
                   backoff_factor: float, backoff_jitter: float, timeout: float, **kwargs: Any) -> requests.Response:
    """mlflow's http_request, its connections cut by the current Exchange; an error status is returned after the
    last try, and a Retry-After (urllib3 would sleep up to 6 h of it) is not honoured. Shared by the registry adapter
    and the gate's MLflow client."""
    policy: dict[str, Any] = {"max_retries": max_retries, "backoff_factor": backoff_factor,
                              "backoff_jitter": backoff_jitter, "retry_codes": _TRANSIENT_STATUSES,
                              "raise_on_status": False, "respect_retry_after_header": False}
    # http_request takes no session: it uses the one mlflow keeps per retry policy (the same arguments find it).
    session = _get_request_session(**policy)
    session.cookies.set_policy(_NO_COOKIES)
    only_explicit_auth(session)
    watch_session(session)
    return http_request(host_creds, endpoint, method, timeout=timeout, **policy, **kwargs)


class AnswerTooLarge(Exception):
    """A body past its byte limit (counted after any Content-Encoding is undone)."""


def body_chunks(response: requests.Response, deadline: float, chunk_bytes: int = 65536) -> Iterator[bytes]:
    """A stream=True response's body as it arrives, decoded a chunk at a time (a gzip bomb is never inflated
    whole); AnswerTooSlow once a chunk arrives past `deadline` (time.monotonic()). requests' timeout bounds each
    wait for bytes only: a server sending a byte a second would otherwise hold the caller for ever. Reading
    errors (requests, urllib3, OSError) pass through for the caller to explain."""
    while chunk := response.raw.read1(chunk_bytes, decode_content=True):
        yield chunk
        if time.monotonic() > deadline:
            raise AnswerTooSlow


def bounded_text(response: requests.Response, deadline: float, max_bytes: int = MAX_ANSWER_BYTES) -> str:
    """A stream=True response's whole body as text, within max_bytes and the deadline (AnswerTooLarge,
    AnswerTooSlow otherwise); closes the response. Shared by the registry adapter and the gate's MLflow client."""
    chunks: list[bytes] = []
    size = 0
    try:
        for chunk in body_chunks(response, deadline):
            size += len(chunk)
            if size > max_bytes:
                raise AnswerTooLarge
            chunks.append(chunk)
    finally:
        response.close()
    data = b"".join(chunks)
    try:
        return data.decode(response.encoding or "utf-8", errors="replace")
    except LookupError:  # a charset Python does not know (utf8mb4): MLflow's JSON is UTF-8 anyway
        return data.decode("utf-8", errors="replace")


def validated_tracking_uri(uri: str) -> str:
    """An http(s) URI with a host and nothing that could carry a secret (no user info, query or fragment)."""
    try:
        parts = urlsplit(uri.strip())
        port = parts.port
    except ValueError:
        raise RegistryConfigError("the registry tracking URI is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        # Echo only the scheme: a malformed URI may still embed a password.
        raise RegistryConfigError(f"the registry tracking URI must be http:// or https:// with a host "
                                  f"(got scheme {parts.scheme or 'none'!r})")
    if port == 0:
        raise RegistryConfigError("the registry tracking URI must have a port from 1 to 65535")
    if parts.username is not None or parts.password is not None:
        raise RegistryConfigError("the registry tracking URI must not contain credentials: "
                                  "put them in the credentials Secret")
    if parts.query or parts.fragment:
        raise RegistryConfigError("the registry tracking URI must not have a query or fragment")
    short = short_service_refusal(uri)
    if short:
        raise RegistryConfigError(f"the registry tracking URI: {short}")
    return f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"


def _json_object(text: str) -> dict[str, Any] | None:
    try:
        parsed = json.loads(text) if text.strip() else {}
    except (ValueError, RecursionError):  # not JSON, or nested past the parser's depth
        return None
    return parsed if isinstance(parsed, dict) else None


def _object(body: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = body.get(key)
    if not isinstance(value, Mapping):
        raise RegistryRequestError(f"MLflow's answer has no {key!r} object: is this an MLflow tracking server?")
    return value


def json_type(value: Any) -> str:
    """The JSON name of a parsed value's type, for messages (the value itself is not echoed)."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list):
        return "an array"
    return "a string" if isinstance(value, str) else "null"


def _string(body: Mapping[str, Any], key: str, what: str) -> str | None:
    """body[key] when it is a string, None when absent or null; any other type is a malformed answer."""
    value = body.get(key)
    if value is None or isinstance(value, str):
        return value
    raise RegistryRequestError(f"MLflow's {what} has {key!r} as {json_type(value)}, not a string: "
                               "is this an MLflow tracking server?")


def _short_string(body: Mapping[str, Any], key: str, what: str) -> str | None:
    """_string, refused past MAX_VERSION_TEXT_CHARS: it goes into the rollout's status and the target whole."""
    value = _string(body, key, what)
    if value is not None and len(value) > MAX_VERSION_TEXT_CHARS:
        raise RegistryRequestError(f"MLflow's {what} has {key!r} of {len(value)} characters, over "
                                   f"{MAX_VERSION_TEXT_CHARS}: too long to record in status or give the target")
    return value


def _required_string(body: Mapping[str, Any], key: str, what: str) -> str:
    value = _string(body, key, what)
    if not value:  # e.g. a version's status: absent is not READY
        raise RegistryRequestError(f"MLflow's {what} has no {key!r}: is this an MLflow tracking server?")
    return value


def _string_tags(body: Mapping[str, Any], what: str) -> dict[str, str]:
    """Like _tags, but a tag list that is not [{key: string, value: string}] is a malformed answer."""
    tags = body.get("tags")
    if tags is None:
        return {}
    if not isinstance(tags, list):
        raise RegistryRequestError(f"MLflow's {what} has 'tags' as {json_type(tags)}, not an array: "
                                   "is this an MLflow tracking server?")
    found: dict[str, str] = {}
    for tag in tags:
        value = tag.get("value") if isinstance(tag, Mapping) else None
        if not isinstance(tag, Mapping) or not isinstance(tag.get("key"), str) \
                or not (value is None or isinstance(value, str)):
            raise RegistryRequestError(f"MLflow's {what} has 'tags' with an entry that is not "
                                       "{key: string, value: string}: is this an MLflow tracking server?")
        found[tag["key"]] = value or ""  # MLflow leaves out an empty value
    return found


def _list(body: Mapping[str, Any], key: str) -> list[Any]:
    value = body.get(key)
    return value if isinstance(value, list) else []


def _tags(body: Mapping[str, Any]) -> dict[str, str]:
    """MLflow's JSON tag list [{key, value}] as a dict (a missing value is an empty string)."""
    return {str(tag["key"]): str(tag.get("value", "")) for tag in _list(body, "tags")
            if isinstance(tag, Mapping) and "key" in tag}


def redirect_message(tracking_uri: str, method: str, path: str, response: requests.Response,
                     quoted: Callable[[str, int], str], shown: str | None = None) -> str:
    """Why a redirect from MLflow (the registry's or the gate's call to `path` under `tracking_uri`) is an error, and
    what to change: the same call moved to another base is a tracking URI to switch to; anything else (a sign-in
    page, a trailing slash added) is a proxy in the way."""
    target = response.headers.get("Location", "")
    where, moved = "no Location", False
    if target:
        url = urljoin(f"{tracking_uri.rstrip('/')}{path}", target)
        tail = url.find(path)  # the same call moved: its base is the tracking URI to use
        base = url[:tail] if tail > 0 else url
        moved = tail > 0 and base.rstrip("/") != tracking_uri.rstrip("/")
        where = quoted(redacted_url(base), 200)  # no user info, no query (a presigned URL's signature)
    advice = ("set the registry's trackingUri (and its credentials Secret's) to where it points" if moved else
              "a proxy in front of MLflow redirects its API (a sign-in page? a trailing slash added?): point "
              "trackingUri at MLflow's API itself")
    return (f"MLflow at {tracking_uri} answered {method} {shown or path} with HTTP {response.status_code}, a "
            f"redirect to {where}: redirects are not followed (a write would be sent on as a read); {advice}")

