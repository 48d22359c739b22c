"""MLflow over REST with credentials passed on every call, never through the process environment.

The operator serves many namespaces, each with its own tracking server and token, so nothing here reads
or sets MLFLOW_TRACKING_* variables: every request gets an explicit `MlflowHostCreds` built from an
`MlflowAccess`. Requests go through mlflow-skinny's `http_request` with a short, explicit retry policy
(its default policy retries for minutes, too long for a judge that must answer within a reconcile).

Artifacts are read through the tracking server's artifact proxy (`mlflow-artifacts:`), which is how the
local stack and most shared MLflow deployments serve them; an artifact store the gate cannot reach with
these credentials (s3:, gs:, file:) is refused with a message that says so.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import posixpath
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import quote, urlparse

import requests
import urllib3

from controller.gate.bodies import (
    ACCEPTED_ENCODINGS,
    BodyDecoder,
    BodyRead,
    content_encoding,
    is_framed,
    needs_second_read,
    settled,
)
from controller.gate.errors import ErrorKind, SourceError, SourcePolicyError, kind_for_http_status
from controller.http_deadline import Exchange, transport_cause
from controller.redaction import redact_credentials, redacted_url, without_userinfo
from controller.registry.base import bounded
from controller.registry.mlflow_rest import (
    MAX_ANSWER_BYTES,
    AnswerTooLarge,
    AnswerTooSlow,
    bounded_text,
    json_type,
    mlflow_request,
    redirect_message,
)

if TYPE_CHECKING:
    from mlflow.utils.rest_utils import MlflowHostCreds

ARTIFACTS_API = "/api/2.0/mlflow-artifacts/artifacts"
_CHUNK_BYTES = 1024 * 1024
_MAX_SERVER_TEXT_CHARS = 300
_LOGGED_MODEL_URI = re.compile(r"^models:/(m-[0-9a-f]+)/?(.*)$")
# What reading a body may raise once the headers are in: the server broke off, reset or stalled.
_BODY_FAILURES = (requests.RequestException, urllib3.exceptions.HTTPError, OSError)
_BACKOFF_JITTER_SECONDS = 1.0  # mlflow's default, added at random to each backoff sleep


@dataclass(frozen=True)
class MlflowAccess:
    """Where the tracking server is and how to authenticate to it; secrets stay out of repr()."""

    tracking_uri: str
    token: str | None = field(default=None, repr=False)
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    insecure_tls: bool = False
    ca_bundle: str | None = None
    timeout_seconds: float = 30.0
    max_retries: int = 2
    # A whole artifact download, as DatasetSources.https_timeout_seconds bounds an https one: timeout_seconds
    # bounds each wait for bytes only, and a server dripping a byte at a time would hold a gate slot for ever.
    download_timeout_seconds: float = 300.0

    @classmethod
    def with_credentials(cls, tracking_uri: str, credentials: Any | None, **options: Any) -> MlflowAccess:
        """From anything with token / username / password attributes (e.g. controller.registry Credentials)."""
        token = getattr(credentials, "token", None)
        return cls(tracking_uri, token=token, username=None if token else getattr(credentials, "username", None),
                   password=None if token else getattr(credentials, "password", None), **options)

    def redacted(self, text: str) -> str:
        """text without the token, the password or the basic-auth pair (a server may echo them back)."""
        return redact_credentials(text, token=self.token, username=self.username, password=self.password)

    def host_creds(self) -> MlflowHostCreds:
        from mlflow.utils.rest_utils import MlflowHostCreds

        return MlflowHostCreds(host=self.tracking_uri.rstrip("/"), token=self.token, username=self.username,
                               password=self.password, ignore_tls_verification=self.insecure_tls,
                               server_cert_path=self.ca_bundle)


class MlflowRest:
    """A thin, blocking MLflow REST client (call it from a worker thread in async code)."""

    def __init__(self, access: MlflowAccess) -> None:
        self.access = access

    def _call_seconds(self, retries: int | None = None) -> float:
        """A JSON call's total time, as the registry adapter's: every attempt's timeout."""
        return self.access.timeout_seconds * (1 + (self.access.max_retries if retries is None else retries))

    def _read_answer(self, response: requests.Response, deadline: float, what: str, seconds: float) -> str:
        """The body of a JSON call's answer (or error), within MAX_ANSWER_BYTES and the deadline (`seconds` after
        the call began)."""
        try:
            return bounded_text(response, deadline)
        except AnswerTooLarge:
            raise SourceError(ErrorKind.ERROR, f"MLflow {what}: the answer is over "
                              f"{MAX_ANSWER_BYTES // (1024 * 1024)} MiB: not an MLflow answer") from None
        except AnswerTooSlow:
            raise SourceError(ErrorKind.UNAVAILABLE,
                              f"MLflow {what}: the answer took over {seconds:g}s") from None
        except _BODY_FAILURES as exc:  # `from None`: requests' exceptions carry the Authorization header
            raise SourceError(ErrorKind.UNAVAILABLE, f"MLflow {what}: the answer broke off: "
                              f"{transport_cause(exc, self.access.timeout_seconds)}") from None

    @contextlib.contextmanager
    def _within(self, seconds: float, too_slow: str) -> Iterator[None]:
        """Cuts the requests and reads inside at `seconds` (requests' timeout bounds each wait for bytes only: a
        server trickling its headers would hold a gate slot for ever): SourceError UNAVAILABLE `too_slow`."""
        try:
            with Exchange(seconds):
                yield
        except AnswerTooSlow:
            raise SourceError(ErrorKind.UNAVAILABLE, too_slow) from None

    def _request(self, method: str, endpoint: str, retries: int | None = None, **kwargs: Any) -> Any:
        """Run inside _within: it bounds the call as a whole."""
        from mlflow.exceptions import MlflowException

        retries = self.access.max_retries if retries is None else retries
        try:
            # Redirects not followed (as the registry adapter): a dataset would come from, and evidence go to, a
            # host the gate never named, and a PUT's success be reported from there.
            response = mlflow_request(self.access.host_creds(), endpoint, method, max_retries=retries,
                                      backoff_factor=1, backoff_jitter=_BACKOFF_JITTER_SECONDS,
                                      timeout=self.access.timeout_seconds, allow_redirects=False, **kwargs)
        except MlflowException as exc:
            # Connection refused, DNS failure, timeout, or retries used up: all "try again later".
            raise SourceError(ErrorKind.UNAVAILABLE,
                              f"MLflow at {self.access.tracking_uri}: {self.access.redacted(exc.message)}") from None
        if 300 <= response.status_code < 400:
            response.close()
            raise SourceError(kind_for_http_status(response.status_code),
                              redirect_message(self.access.tracking_uri, method, endpoint, response, self._quoted))
        return response

    def _quoted(self, value: str, limit: int) -> str:
        return bounded(self.access.redacted(repr(value)), limit)

    def call(self, method: str, endpoint: str, *, params: Mapping[str, str] | None = None,
             body: Mapping[str, Any] | None = None, retry: bool = True) -> dict[str, Any]:
        """One JSON call; raises SourceError with the server's own error message on failure. `retry=False` for a
        call not safe to send twice (runs/create): mlflow's session retries POSTs too, on a timeout or a 5xx, and
        a server that did it but answered late would do it again. Sent once, within one attempt's time."""
        retries = None if retry else 0
        seconds = self._call_seconds(retries)
        kwargs: dict[str, Any] = {}
        if params is not None:
            kwargs["params"] = dict(params)
        if body is not None:
            kwargs["json"] = dict(body)
        deadline = time.monotonic() + seconds
        # Streamed and read bounded: the tracking URI is the tenant's, and so is what answers it.
        with self._within(seconds, f"MLflow {method} {endpoint}: the answer took over {seconds:g}s"):
            response = self._request(method, endpoint, retries, stream=True, **kwargs)
            text = self._read_answer(response, deadline, f"{method} {endpoint}", seconds)
        if response.status_code != 200:
            raise SourceError(kind_for_http_status(response.status_code), f"MLflow {method} {endpoint}: "
                              f"HTTP {response.status_code}: {_error_text(text, response.reason, self.access)}")
        try:
            parsed = json.loads(text) if text.strip() else {}
        except (ValueError, RecursionError):  # not JSON, or nested past the parser's depth
            raise SourceError(ErrorKind.ERROR, f"MLflow {method} {endpoint}: response is not JSON") from None
        if not isinstance(parsed, dict):
            raise SourceError(ErrorKind.ERROR, f"MLflow {method} {endpoint}: response is JSON but not an object")
        return parsed

    def stream_to(self, endpoint: str, sink: IO[bytes], max_bytes: int) -> tuple[str, int]:
        """GET endpoint into sink, hashing as it goes; returns (sha256 hex, size in bytes)."""
        read = self.read_to(endpoint, sink, max_bytes)
        return read.sha256, read.size

    def read_to(self, endpoint: str, sink: IO[bytes], max_bytes: int) -> BodyRead:
        """stream_to, saying also whether only the connection's close ended the body (then a cut looks whole).
        A compressed body is decoded here, as the https source does: urllib3's decoder takes a gzip stream cut
        mid-way for the whole body, and the hash of a cut file for a changed dataset."""
        def broke_off(exc: BaseException) -> SourceError:
            # The body broke off (closed early, reset, stalled): retry on a later reconcile. Raised `from None`:
            # requests' exceptions carry the prepared request, Authorization header and all.
            return SourceError(ErrorKind.UNAVAILABLE, f"MLflow GET {endpoint}: the download broke off: "
                               f"{transport_cause(exc, self.access.timeout_seconds)}")

        started = time.monotonic()
        deadline = started + self.access.download_timeout_seconds
        took_too_long = f"MLflow GET {endpoint}: the download took over {self.access.download_timeout_seconds:g}s"
        with self._within(self.access.download_timeout_seconds, took_too_long), \
                self._request("GET", endpoint, stream=True,
                              extra_headers={"Accept-Encoding": ACCEPTED_ENCODINGS}) as response:
            if response.status_code != 200:
                text = self._read_answer(response, started + self._call_seconds(), f"GET {endpoint}",
                                         self._call_seconds())
                raise SourceError(kind_for_http_status(response.status_code), f"MLflow GET {endpoint}: "
                                  f"HTTP {response.status_code}: {_error_text(text, response.reason, self.access)}")
            encoding = content_encoding(response.headers)
            decoder = BodyDecoder(encoding, f"MLflow GET {endpoint}")
            declare = getattr(sink, "declare", None)  # the scratch sink: a size past the limit is refused now
            length = response.headers.get("Content-Length", "")
            # An encoded body's length is not the dataset's size.
            if declare is not None and length.isdigit() and encoding == "identity":
                declare(int(length))
            writer = HashingWriter(sink, max_bytes, endpoint)
            while True:
                try:  # only reading is guarded: a sink that fails to write is not the server's fault
                    # Read as it arrives (iter_content would wait for a whole chunk), undecoded: decoded below.
                    chunk = response.raw.read1(_CHUNK_BYTES, decode_content=False)
                except _BODY_FAILURES as exc:
                    raise broke_off(exc) from None
                if not chunk:
                    decoder.finish()
                    sha256, size = writer.result()
                    return BodyRead(sha256, size, unframed=not is_framed(response.headers))
                for piece in decoder.feed(chunk):
                    writer.write(piece)
                if time.monotonic() > deadline:
                    raise SourceError(ErrorKind.UNAVAILABLE, took_too_long)

    def upload(self, endpoint: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        deadline = time.monotonic() + self._call_seconds()
        with self._within(self._call_seconds(), f"MLflow PUT {endpoint}: the answer took over "
                                                f"{self._call_seconds():g}s"):
            response = self._request("PUT", endpoint, data=data, extra_headers={"Content-Type": content_type},
                                     stream=True)
            text = self._read_answer(response, deadline, f"PUT {endpoint}", self._call_seconds())
        if response.status_code not in (200, 201, 204):
            raise SourceError(kind_for_http_status(response.status_code), f"MLflow PUT {endpoint}: "
                              f"HTTP {response.status_code}: {_error_text(text, response.reason, self.access)}")


class HashingWriter:
    """Writes byte chunks to a sink while hashing them; refuses (and stops) past max_bytes."""

    def __init__(self, sink: IO[bytes], max_bytes: int, what: str) -> None:
        self._sink, self._max_bytes, self._what = sink, max_bytes, what
        self._digest = hashlib.sha256()
        self.size = 0

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self._max_bytes:
            raise SourcePolicyError(f"{self._what} is larger than the {self._max_bytes}-byte limit for golden datasets")
        self._digest.update(chunk)
        self._sink.write(chunk)

    def result(self) -> tuple[str, int]:
        """(sha256 hex digest, size in bytes) of everything written."""
        return self._digest.hexdigest(), self.size


def copy_hashing(chunks: Any, sink: IO[bytes], max_bytes: int, what: str) -> tuple[str, int]:
    """Write byte chunks to sink while hashing them; stop (and refuse) past max_bytes."""
    writer = HashingWriter(sink, max_bytes, what)
    for chunk in chunks:
        if chunk:
            writer.write(chunk)
    return writer.result()


def _error_text(body_text: str, reason: str | None, access: MlflowAccess) -> str:
    """The server's own explanation, redacted before it is cut short (a cut could leave half a secret)."""
    text = ""
    try:
        body = json.loads(body_text)
        if isinstance(body, dict) and body.get("message"):
            text = str(body.get("error_code", "")) + ": " + str(body["message"])
    except (ValueError, RecursionError):
        pass
    text = text or body_text.strip() or reason or "no detail"
    return access.redacted(text)[:_MAX_SERVER_TEXT_CHARS]


# --- resolving artifact URIs -------------------------------------------------------------------------


def resolve_artifact_uri(rest: MlflowRest, uri: str) -> str:
    """Turn runs:/..., models:/... or mlflow-artifacts:/... into the artifact store URI it names."""
    if uri.startswith("runs:/"):
        run_id, _, path = uri.removeprefix("runs:/").strip("/").partition("/")
        if not run_id:
            raise SourcePolicyError(f"{uri}: expected runs:/<run_id>/<path>")
        run = rest.call("GET", "/api/2.0/mlflow/runs/get", params={"run_id": run_id})
        root = _text_at(run, "run.info.artifact_uri", f"{uri}: MLflow's answer for run {run_id}")
        if not root:
            raise SourceError(ErrorKind.ERROR, f"{uri}: MLflow returned no artifact_uri for run {run_id}")
        return _join(root, path)
    if uri.startswith("models:/"):
        return _resolve_model_uri(rest, uri)
    return uri


def _resolve_model_uri(rest: MlflowRest, uri: str) -> str:
    logged = _LOGGED_MODEL_URI.match(uri)
    if logged:
        return _join(_logged_model_root(rest, logged.group(1)), logged.group(2))
    rest_of_uri = uri.removeprefix("models:/").strip("/")
    head, _, tail = rest_of_uri.partition("/")
    if "@" in head:  # models:/<name>@<alias>/<path>
        name, _, alias = head.partition("@")
        path = tail
        found = rest.call("GET", "/api/2.0/mlflow/registered-models/alias", params={"name": name, "alias": alias})
        version = _text_at(found, "model_version.version", f"{uri}: MLflow's answer for alias @{alias} of {name}",
                           numbers=True)
        if not version:
            # A missing alias is an HTTP 404 (raised by call); a 200 without a version is a malformed answer.
            raise SourceError(ErrorKind.ERROR, f"{uri}: MLflow's answer for alias @{alias} of model {name} "
                              "names no version")
    else:  # models:/<name>/<version>/<path>
        name = head
        version, _, path = tail.partition("/")
        if not name or not version.isdigit():
            raise SourcePolicyError(f"{uri}: expected models:/<name>/<version>/<path> or models:/<name>@<alias>/<path>")
    found = rest.call("GET", "/api/2.0/mlflow/model-versions/get-download-uri",
                      params={"name": name, "version": version})
    root = _text_at(found, "artifact_uri", f"{uri}: MLflow's download URI answer for {name} version {version}")
    if not root:
        raise SourceError(ErrorKind.ERROR, f"{uri}: MLflow returned no download URI for {name} version {version}")
    logged = _LOGGED_MODEL_URI.match(root)
    if logged:  # MLflow 3 registers logged models by their models:/m-... id
        root = _join(_logged_model_root(rest, logged.group(1)), logged.group(2))
    return _join(root, path)


def _logged_model_root(rest: MlflowRest, model_id: str) -> str:
    found = rest.call("GET", f"/api/2.0/mlflow/logged-models/{quote(model_id)}")
    root = _text_at(found, "model.info.artifact_uri", f"MLflow's answer for logged model {model_id}")
    if not root:
        raise SourceError(ErrorKind.ERROR, f"MLflow returned no artifact location for logged model {model_id}")
    return root


def _text_at(answer: Mapping[str, Any], path: str, what: str, *, numbers: bool = False) -> str | None:
    """The string at a dotted path of an MLflow answer; None when a level is missing or null.

    Any other shape (a level that is not an object, a value that is not a string) is a malformed answer,
    reported as such: a raw AttributeError or KeyError would escape the reconcile and crash-loop it.
    """
    value: Any = answer
    walked: list[str] = []
    for key in path.split("."):
        if value is None:
            return None
        if not isinstance(value, Mapping):
            raise SourceError(ErrorKind.ERROR, f"{what}: {'.'.join(walked)} is {json_type(value)}, not an object")
        value = value.get(key)
        walked.append(key)
    if value is None or isinstance(value, str):
        return value
    if numbers and isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise SourceError(ErrorKind.ERROR, f"{what}: {path} is {json_type(value)}, not a string")


def _join(root: str, path: str) -> str:
    path = path.strip("/")
    return f"{root.rstrip('/')}/{path}" if path else root.rstrip("/")


def artifact_endpoint(access: MlflowAccess, artifact_uri: str) -> str:
    """The tracking-server path that serves artifact_uri through the artifact proxy.

    Only the tracking server itself is ever sent the credentials: an artifact URI naming another host is
    refused rather than followed.
    """
    parsed = urlparse(artifact_uri)
    tracking = urlparse(access.tracking_uri)
    # The location is the registered version's source, anyone's to write: quoted without user info or query.
    shown = redacted_url(artifact_uri)
    if parsed.scheme == "mlflow-artifacts":
        if parsed.netloc and parsed.netloc.lower() != tracking.netloc.lower():
            raise SourcePolicyError(f"{shown}: names artifact server {without_userinfo(parsed.netloc)}, not the "
                                    f"tracking server {without_userinfo(tracking.netloc)}; refusing to send it the "
                                    "credentials")
        path = parsed.path
    elif parsed.scheme in ("http", "https"):
        if parsed.netloc.lower() != tracking.netloc.lower() or ARTIFACTS_API not in parsed.path:
            raise SourcePolicyError(f"{shown}: not served by the tracking server's artifact proxy")
        path = parsed.path.split(ARTIFACTS_API, 1)[1]
    else:
        raise SourcePolicyError(
            f"{shown}: artifact store scheme {parsed.scheme or 'file'}: is not readable by the gate; "
            "serve artifacts through the tracking server (mlflow server --artifacts-destination, mlflow-artifacts:)")
    clean = posixpath.normpath("/" + path.lstrip("/"))
    if clean in ("/", "."):
        raise SourcePolicyError(f"{shown}: names the artifact root, not a file")
    # Relative to the tracking URI, which MlflowHostCreds already carries (path prefix included).
    return f"{ARTIFACTS_API}{quote(clean)}"


def download_artifact(access: MlflowAccess, uri: str, sink: IO[bytes], max_bytes: int,
                      expected_sha256: str | None = None) -> tuple[str, int]:
    """Download the file named by uri (any MLflow artifact form) into sink; returns (sha256, size).

    expected_sha256 (the pin): a body only the connection's close ended that does not match it is read once more
    into a sink that can `restart()` (the gate's scratch file), as an https one is: two different reads are a
    connection cut short (SourceError UNAVAILABLE), the same bytes twice are what the server holds."""
    rest = MlflowRest(access)
    endpoint = artifact_endpoint(access, resolve_artifact_uri(rest, uri))
    first = rest.read_to(endpoint, sink, max_bytes)
    restart = getattr(sink, "restart", None)
    if restart is None or not needs_second_read(first, expected_sha256, getattr(sink, "crowded", None) is not None):
        return first.sha256, first.size
    restart()
    return settled(first, rest.read_to(endpoint, sink, max_bytes), expected_sha256, f"MLflow GET {endpoint}")


def upload_artifact(access: MlflowAccess, artifact_uri: str, data: bytes,
                    content_type: str = "application/octet-stream") -> None:
    MlflowRest(access).upload(artifact_endpoint(access, artifact_uri), data, content_type)


def json_bytes(value: Any) -> bytes:
    # Compact: `indent` makes json use its pure-Python encoder and gives every number its own line (a 1000-class
    # report took 195 MiB and over 1 GiB of memory to build, past the operator's limit).
    return json.dumps(value, separators=(",", ":"), sort_keys=True, allow_nan=False).encode()


def experiment_id_for(rest: MlflowRest, name: str) -> str:
    """The id of the experiment called name, created if missing (safe against a concurrent creator)."""
    get_by_name = "/api/2.0/mlflow/experiments/get-by-name"
    try:
        found = rest.call("GET", get_by_name, params={"experiment_name": name})
    except SourceError as exc:
        if exc.kind is not ErrorKind.NOT_FOUND:
            raise
    else:
        return _live_experiment_id(found, name, f"MLflow GET {get_by_name} for {name!r}")
    try:
        created = rest.call("POST", "/api/2.0/mlflow/experiments/create", body={"name": name})
        return _experiment_id(created, "experiment_id", f"MLflow POST /api/2.0/mlflow/experiments/create for {name!r}")
    except SourceError as exc:
        if "RESOURCE_ALREADY_EXISTS" not in exc.message:
            raise
    found = rest.call("GET", get_by_name, params={"experiment_name": name})
    return _live_experiment_id(found, name, f"MLflow GET {get_by_name} for {name!r}")


def _live_experiment_id(answer: Mapping[str, Any], name: str, what: str) -> str:
    """The experiment's id, unless it is deleted: MLflow finds deleted experiments by name, but creates no run
    in them. Refused rather than restored: someone deleted it on purpose, and may be about to purge it."""
    experiment_id = _experiment_id(answer, "experiment.experiment_id", what)
    if _text_at(answer, "experiment.lifecycle_stage", what) == "deleted":
        raise SourceError(ErrorKind.INVALID, f"MLflow experiment {name!r} (id {experiment_id}) is deleted, so gate "
                          f"evidence cannot be recorded in it: restore it (mlflow experiments restore "
                          f"--experiment-id {experiment_id}), or purge it (mlflow gc --experiment-ids "
                          f"{experiment_id}) for the operator to create it afresh")
    return experiment_id


def _experiment_id(answer: Mapping[str, Any], path: str, what: str) -> str:
    experiment_id = _text_at(answer, path, what, numbers=True)
    if not experiment_id:
        raise SourceError(ErrorKind.ERROR, f"{what}: the answer has no {path}")
    return experiment_id
