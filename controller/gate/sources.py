"""Fetch the golden dataset into a local file, hashing it on the way; the caller verifies before parsing.

Sources (DESIGN.md section 3, `goldenDataset.uri`):
- `mlflow-artifacts:/...`, `runs:/<run_id>/<path>`, `models:/<name>/<version>/<path>` (or `@<alias>`):
  through the tracking server with the rollout's own MLflow credentials;
- `configmap://<name>/<key>`: only in the rollout's own namespace (the URI has no namespace part), read
  through a `ConfigMapReader` the operator provides; `binaryData` is base64-decoded, `data` is UTF-8;
- `https://host/...`: only when the operator's allow-list names the host; redirects are followed only
  within the same scheme, host and port, never to another host. A gzip or deflate body must reach its
  stream's end, and a body only the connection's close ended that is not the pinned one is read once more:
  a cut connection is retried, the same other bytes twice are the changed dataset.

The file lands on the operator's scratch disk (in a pod, the /tmp emptyDir, which the kubelet evicts the pod
for outgrowing). `max_bytes` (`operator run --max-dataset-bytes`) bounds one dataset and, with a shared
`ScratchLedger`, all the datasets of the gates in flight together: a dataset larger than `max_bytes` is refused
by policy even while other gates hold part of it, and only one that fits it but not what is free now is
retried. The filesystem's free space is checked before the fetch and before each write, so a full disk is an
explained, retried gate error.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import errno
import io
import re
import shutil
import ssl
import threading
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol, cast
from urllib.parse import parse_qsl, urlparse

import aiohttp
from yarl import URL

from controller.api.reach import is_dns_name
from controller.gate.bodies import (
    ACCEPTED_ENCODINGS,
    DECODED_PIECE_BYTES,
    BodyDecoder,
    BodyRead,
    content_encoding,
    is_framed,
    needs_second_read,
    settled,
)
from controller.gate.errors import ErrorKind, SourceError, SourcePolicyError, kind_for_http_status
from controller.gate.mlflow_access import HashingWriter, MlflowAccess, copy_hashing, download_artifact
from controller.redaction import redact_credentials, redacted_url

DEFAULT_MAX_DATASET_BYTES = 4 * 1024**3
# Left free on the scratch filesystem: the operator and its libraries write a little there too.
DEFAULT_MIN_FREE_BYTES = 16 * 1024**2
_CONFIGMAP_URI = re.compile(r"configmap://([a-z0-9]([-a-z0-9.]*[a-z0-9])?)/([-._a-zA-Z0-9]+)")
_MLFLOW_SCHEMES = ("mlflow-artifacts:", "runs:/", "models:/")
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_MAX_REDIRECTS = 5


@dataclass(frozen=True)
class ConfigMapContent:
    """A ConfigMap's two maps as the API returns them: `binary_data` values are base64 text."""

    data: Mapping[str, str] = field(default_factory=dict)
    binary_data: Mapping[str, str] = field(default_factory=dict)


class ConfigMapReader(Protocol):
    """Reads one ConfigMap; None when it does not exist. Raise SourceError for other failures."""

    def read_config_map(self, namespace: str, name: str) -> ConfigMapContent | None: ...


class KubernetesConfigMapReader:
    """ConfigMapReader over the official kubernetes client (blocking; the gate calls it in a thread)."""

    def __init__(self, api_client: Any) -> None:
        from kubernetes import client

        self._core = client.CoreV1Api(api_client)

    def read_config_map(self, namespace: str, name: str) -> ConfigMapContent | None:
        from kubernetes.client.exceptions import ApiException

        try:
            found = self._core.read_namespaced_config_map(name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise SourceError(kind_for_http_status(exc.status or 500),
                              f"reading ConfigMap {namespace}/{name}: HTTP {exc.status} {exc.reason}") from None
        except Exception as exc:  # urllib3 connection errors and the like
            raise SourceError(ErrorKind.UNAVAILABLE, f"reading ConfigMap {namespace}/{name}: {exc}") from None
        return ConfigMapContent(data=dict(found.data or {}), binary_data=dict(found.binary_data or {}))


class ScratchLedger:
    """The dataset files on the scratch disk, by path, with the bytes written to each: the gates in flight share
    one budget, because they share one volume. A file counts until it is deleted (the gate's scratch directory
    goes when the gate ends), so an entry needs no explicit release."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # MLflow downloads write from worker threads
        self._held: dict[Path, int] = {}

    def start(self, path: Path) -> None:
        with self._lock:
            self._held[path] = 0  # opened for writing: truncated

    def claim(self, path: Path, size: int, limit: int) -> int | None:
        """Count `size` more bytes for `path` if every file together stays within `limit`; otherwise count
        nothing and return the bytes the other files hold."""
        with self._lock:
            self._held = {p: n for p, n in self._held.items() if p == path or p.exists()}
            others = sum(n for p, n in self._held.items() if p != path)
            if others + self._held.get(path, 0) + size > limit:
                return others
            self._held[path] = self._held.get(path, 0) + size
            return None


# One per operator process: every gate's DatasetSources names it, so concurrent gates share the budget.
GATE_SCRATCH = ScratchLedger()


@dataclass(frozen=True)
class DatasetSources:
    """What the operator lets the gate read, and with which credentials (per rollout, never global)."""

    mlflow: MlflowAccess | None = None
    config_maps: ConfigMapReader | None = None
    # Host names (optionally "*.example.com" for subdomains) that https:// datasets may come from.
    https_allowed_hosts: Collection[str] = ()
    https_ca_file: str | None = None
    https_timeout_seconds: float = 300.0
    # One dataset's limit and, with `scratch`, the limit of all datasets on the scratch disk at once.
    max_bytes: int = DEFAULT_MAX_DATASET_BYTES
    scratch: ScratchLedger | None = None
    min_free_bytes: int = DEFAULT_MIN_FREE_BYTES


@dataclass(frozen=True)
class FetchedDataset:
    path: Path
    sha256: str
    size_bytes: int
    source: str  # where it came from, for messages (no credentials)


async def fetch_dataset(uri: str, namespace: str, sources: DatasetSources, destination: Path,
                        expected_sha256: str | None = None) -> FetchedDataset:
    """Fetch uri into the file destination, hashing while writing. Raises SourceError / SourcePolicyError.

    expected_sha256 (the pin): an https or MLflow body whose end only the connection's close marked, and that does
    not match it, is read once more before it is taken as the changed dataset (a cut connection looks the same)."""
    shown = redacted_url(uri)  # for messages: a presigned URL's query is its credential
    _check_free_space(destination.parent, 0, 0, sources, shown)  # a full disk fails before anything is fetched
    try:
        # Unbuffered: a full disk fails the write that meets it, never a flush in close() that would hide why.
        file = open(destination, "wb", buffering=0)  # noqa: SIM115 - closed below, after the fetch
    except OSError as exc:
        raise _write_error(exc, destination, shown) from None
    with file:
        scratch_sink = _ScratchSink(file, destination, sources, shown)
        sink = cast(IO[bytes], scratch_sink)
        if uri.startswith(_MLFLOW_SCHEMES):
            source, (sha256, size) = await _fetch_mlflow(uri, sources, sink, expected_sha256)
        elif uri.startswith("configmap://"):
            source, (sha256, size) = await _fetch_config_map(uri, namespace, sources, sink)
        elif uri.startswith("https://"):
            source, (sha256, size) = await _fetch_https(uri, sources, scratch_sink, expected_sha256)
        else:
            scheme = uri.split(":", 1)[0] if ":" in uri else uri
            raise SourcePolicyError(f"dataset URI scheme {scheme!r} is not supported: use mlflow-artifacts:/, "
                                    "runs:/, models:/, configmap://<name>/<key> or an allow-listed https:// host")
    if scratch_sink.crowded is not None:  # read to the end within max_bytes: it fits the budget, just not now
        raise SourceError(ErrorKind.UNAVAILABLE, scratch_sink.crowded)
    return FetchedDataset(path=destination, sha256=sha256, size_bytes=size, source=source)


class _ScratchSink:
    """The dataset file, checked before each write: the filesystem keeps `min_free_bytes` free, and all datasets
    on the scratch disk stay within `max_bytes` (the pod's volume is sized for that, and the kubelet evicts a
    pod whose emptyDir outgrows its sizeLimit: a statfs of a disk-backed emptyDir shows the node's disk, not
    that limit, so the budget is what keeps the volume within it)."""

    def __init__(self, file: io.FileIO, path: Path, sources: DatasetSources, uri: str) -> None:
        self._file, self._path, self._sources, self._uri = file, path, sources, uri
        self._written = 0
        self._fits = False  # the source declared a size within max_bytes
        self.crowded: str | None = None  # why the dataset is not kept, once other gates left it no room
        if sources.scratch is not None:
            sources.scratch.start(path)

    def restart(self) -> None:
        """Empty again, for a second read of the same source."""
        try:
            self._file.truncate(0)
            self._file.seek(0)
        except OSError as exc:
            raise _write_error(exc, self._path, self._uri) from None
        self._written, self._fits = 0, False
        if self._sources.scratch is not None:
            self._sources.scratch.start(self._path)

    def declare(self, size: int) -> None:
        """The size the source announces before sending: past max_bytes it can never fit, so it is refused
        now, with HashingWriter's words, rather than retried while other gates hold part of the budget."""
        if size > self._sources.max_bytes:
            raise SourcePolicyError(f"{self._uri} is larger than the {self._sources.max_bytes}-byte limit for "
                                    "golden datasets")
        self._fits = True

    def write(self, chunk: bytes) -> int:
        if self.crowded is not None:
            return len(chunk)  # only counted, by HashingWriter, which refuses a dataset past max_bytes
        sources = self._sources
        _check_free_space(self._path.parent, len(chunk), self._written, sources, self._uri)
        if sources.scratch is not None:
            others = sources.scratch.claim(self._path, len(chunk), sources.max_bytes)
            if others is not None:
                crowded = (f"{self._uri}: the golden datasets of other gates in flight hold {_mib(others)} of the "
                           f"{_mib(sources.max_bytes)} the operator keeps for datasets on its scratch disk "
                           "(--max-dataset-bytes); retrying once they end")
                if self._fits:
                    raise SourceError(ErrorKind.UNAVAILABLE, crowded)
                # Its size is unknown: read on without keeping it, so that one larger than the whole budget
                # is refused by policy (it never fits) and only one that fits alone is retried (fetch_dataset).
                self.crowded = crowded
                try:
                    self._file.truncate(0)  # the part written no longer holds budget the other gates need
                except OSError as exc:
                    raise _write_error(exc, self._path, self._uri) from None
                sources.scratch.start(self._path)
                return len(chunk)
        view = memoryview(chunk)
        try:
            while view:  # a raw write may take part of the chunk
                done = self._file.write(view)
                if not done:  # nothing taken, no error: a full disk, rather than a loop for ever
                    raise OSError(errno.ENOSPC, "no byte written")
                view = view[done:]
        except OSError as exc:
            raise _write_error(exc, self._path, self._uri) from None
        self._written += len(chunk)
        return len(chunk)


def _check_free_space(directory: Path, size: int, written: int, sources: DatasetSources, uri: str) -> None:
    try:
        free = shutil.disk_usage(directory).free
    except OSError as exc:
        raise _write_error(exc, directory, uri) from None
    if free - size < sources.min_free_bytes:
        raise SourceError(ErrorKind.UNAVAILABLE, f"{uri}: the gate's scratch disk ({directory}) has {_mib(free)} "
                          f"free after {_mib(written)} of the dataset, and the gate leaves "
                          f"{_mib(sources.min_free_bytes)} free; free space there (in a pod: its /tmp volume) "
                          "and the gate retries")


def _write_error(exc: OSError, path: Path, uri: str) -> SourceError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return SourceError(ErrorKind.UNAVAILABLE, f"{uri}: the gate's scratch disk is full ({path.parent}: "
                                                  f"{exc.strerror}); the gate retries")
    return SourceError(ErrorKind.ERROR, f"{uri}: cannot write the dataset to {path}: "
                                        f"{exc.strerror or type(exc).__name__}")


def _mib(size: int) -> str:
    return f"{size / 1024**2:.1f} MiB"


async def _fetch_mlflow(uri: str, sources: DatasetSources, sink: IO[bytes],
                        expected_sha256: str | None = None) -> tuple[str, tuple[str, int]]:
    if sources.mlflow is None:
        raise SourcePolicyError(f"{uri}: no MLflow tracking server is configured for this rollout")
    result = await asyncio.to_thread(download_artifact, sources.mlflow, uri, sink, sources.max_bytes, expected_sha256)
    # Status shows it: never the user info an operator's default tracking URI might carry.
    return f"{uri} via {redacted_url(sources.mlflow.tracking_uri)}", result


def parse_config_map_uri(uri: str) -> tuple[str, str]:
    match = _CONFIGMAP_URI.fullmatch(uri)
    if not match:
        raise SourcePolicyError(f"{uri}: expected configmap://<name>/<key> (a ConfigMap in the rollout's namespace)")
    return match.group(1), match.group(3)


async def _fetch_config_map(uri: str, namespace: str, sources: DatasetSources,
                            sink: IO[bytes]) -> tuple[str, tuple[str, int]]:
    name, key = parse_config_map_uri(uri)
    if sources.config_maps is None:
        raise SourcePolicyError(f"{uri}: the operator has no Kubernetes access configured for ConfigMaps")
    content = await asyncio.to_thread(sources.config_maps.read_config_map, namespace, name)
    where = f"ConfigMap {namespace}/{name}"
    if content is None:
        raise SourceError(ErrorKind.NOT_FOUND, f"{where} not found")
    if key in content.binary_data:
        try:
            payload = base64.b64decode(content.binary_data[key], validate=True)
        except (binascii.Error, ValueError):
            raise SourceError(ErrorKind.INVALID, f"{where} binaryData[{key}] is not valid base64") from None
    elif key in content.data:
        payload = content.data[key].encode("utf-8")
    else:
        keys = sorted({*content.data, *content.binary_data})
        raise SourceError(ErrorKind.NOT_FOUND, f"{where} has no key {key!r} in data or binaryData "
                                               f"(keys: {', '.join(keys) or 'none'})")
    return f"{where} key {key}", copy_hashing([payload], sink, sources.max_bytes, uri)


def host_allowed(host: str, allowed: Collection[str]) -> bool:
    host = host.lower().rstrip(".")
    for entry in allowed:
        entry = entry.lower().rstrip(".")
        if entry.startswith("*."):
            if is_dns_name(host) and host.endswith(entry[1:]) and host != entry[2:]:
                return True
        elif host == entry:
            return True
    return False


def check_https_uri(uri: str, allowed: Collection[str]) -> URL:
    try:
        parsed = urlparse(uri)
        hostname, _ = parsed.hostname, parsed.port  # the port raises ValueError when out of range
    except ValueError:
        raise SourcePolicyError("the https dataset URL cannot be parsed") from None
    if parsed.scheme != "https" or not hostname:
        raise SourcePolicyError(f"{redacted_url(uri)}: only https:// URLs with a host are accepted")
    if parsed.username or parsed.password:
        raise SourcePolicyError("https dataset URL carries credentials in it; refusing (they would end up in status)")
    if not host_allowed(hostname, allowed):
        raise SourcePolicyError(f"https host {hostname} is not in the operator's allow-list for golden datasets")
    try:
        return URL(uri, encoded=True)
    except (ValueError, UnicodeError):
        raise SourcePolicyError(f"{redacted_url(uri)}: not a usable URL") from None


async def _fetch_https(uri: str, sources: DatasetSources, sink: _ScratchSink,
                       expected_sha256: str | None = None) -> tuple[str, tuple[str, int]]:
    url = check_https_uri(uri, sources.https_allowed_hosts)
    shown = redacted_url(uri)  # what messages and status name: the query may be a presigned URL's signature
    context = ssl.create_default_context(cafile=sources.https_ca_file)
    timeout = aiohttp.ClientTimeout(total=sources.https_timeout_seconds)
    try:
        # Decoded here, not by aiohttp: its decoder takes a gzip stream cut mid-way for the whole body.
        async with aiohttp.ClientSession(timeout=timeout, trust_env=False, auto_decompress=False,
                                         headers={"Accept-Encoding": ACCEPTED_ENCODINGS}) as session:
            first = await _get_https(session, url, uri, shown, context, sources, sink)
            if not needs_second_read(first, expected_sha256, crowded=sink.crowded is not None):
                return shown, (first.sha256, first.size)
            sink.restart()
            second = await _get_https(session, url, uri, shown, context, sources, sink)
            return shown, settled(first, second, expected_sha256, f"GET {shown}")
    except TimeoutError:  # the session's total limit (its message is empty), or a read that stalled
        raise SourceError(ErrorKind.UNAVAILABLE, f"GET {shown}: the download took over "
                                                 f"{sources.https_timeout_seconds:g}s") from None
    except (aiohttp.ClientError, ssl.SSLError) as exc:
        raise SourceError(ErrorKind.UNAVAILABLE,
                          f"GET {shown}: {type(exc).__name__}: {_without(str(exc), uri, shown)}") from None
    except (ValueError, UnicodeError) as exc:  # what aiohttp could not use of a URL
        raise SourceError(ErrorKind.INVALID, f"GET {shown}: {type(exc).__name__}") from None


async def _get_https(session: aiohttp.ClientSession, url: URL, uri: str, shown: str, context: ssl.SSLContext,
                     sources: DatasetSources, sink: _ScratchSink) -> BodyRead:
    """One GET, following redirects within the same scheme, host and port, into sink."""
    origin = (url.scheme, (url.host or "").lower(), url.port)
    for _ in range(_MAX_REDIRECTS + 1):
        async with session.get(url, allow_redirects=False, ssl=context) as response:
            if response.status in _REDIRECTS:
                try:
                    target = url.join(URL(response.headers.get("Location", "")))
                    where = (target.scheme, (target.host or "").lower(), target.port)
                except (ValueError, UnicodeError):  # e.g. a port past 65535
                    raise SourceError(ErrorKind.INVALID, f"GET {shown}: the redirect's Location is not "
                                                         "a usable URL") from None
                if where != origin:
                    raise SourcePolicyError(f"{shown}: redirect to {target.scheme}://{target.host} refused: "
                                            "redirects are followed only within the same host")
                url = target
                continue
            if response.status != 200:
                # The reason phrase is the server's text: it may echo the query, a presigned signature (the
                # spec's, or a same-host redirect's).
                reason = _without(_without(response.reason or "", uri, shown), str(url), shown)
                raise SourceError(kind_for_http_status(response.status),
                                  f"GET {shown}: HTTP {response.status} {reason}".strip())
            encoding = content_encoding(response.headers)
            # An encoded body's length is not the dataset's size.
            if response.content_length is not None and encoding == "identity":
                sink.declare(response.content_length)
            decoder = BodyDecoder(encoding, f"GET {shown}")
            sha256, size = await _copy_stream(response, decoder, cast(IO[bytes], sink), sources.max_bytes, shown)
            return BodyRead(sha256, size, unframed=not is_framed(response.headers))
    raise SourceError(ErrorKind.ERROR, f"GET {shown}: more than {_MAX_REDIRECTS} redirects")


def _without(text: str, uri: str, shown: str) -> str:
    """text (an error's, a server's reason phrase) without the URL's query: whole, or any value of it of 8 characters
    or more (a signature), as it is or escaped. aiohttp's errors may quote the URL or its query; a server, anything."""
    text, query = text.replace(uri, shown), uri.partition("?")[2]
    if len(query) >= 8:
        text = text.replace(query, "<redacted>")
    raw = {part.partition("=")[2] for part in re.split("[&;]", query)}
    values = raw | {value for _, value in parse_qsl(query, keep_blank_values=True)}
    for value in sorted((value for value in values if len(value) >= 8), key=len, reverse=True):
        text = redact_credentials(text, token=value)
    return text


async def _copy_stream(response: aiohttp.ClientResponse, decoder: BodyDecoder, sink: IO[bytes], max_bytes: int,
                       what: str) -> tuple[str, int]:
    writer = HashingWriter(sink, max_bytes, what)
    async for chunk in response.content.iter_chunked(DECODED_PIECE_BYTES):
        for decoded in decoder.feed(chunk):
            writer.write(decoded)
    decoder.finish()
    return writer.result()
