"""Dataset sources: ConfigMaps (data vs binaryData), the https allow-list and redirects, MLflow URI mapping."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import ssl
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from aiohttp import web
from test_gate_support import http_server, run

from controller.gate.errors import ErrorKind, SourceError, SourcePolicyError
from controller.gate.mlflow_access import MlflowAccess, artifact_endpoint, copy_hashing
from controller.gate.sources import (
    ConfigMapContent,
    DatasetSources,
    FetchedDataset,
    check_https_uri,
    fetch_dataset,
    host_allowed,
    parse_config_map_uri,
)

BINARY = bytes(range(256)) * 4  # not UTF-8: must come from binaryData, byte for byte


class FakeConfigMaps:
    def __init__(self, maps: dict[tuple[str, str], ConfigMapContent]) -> None:
        self.maps = maps
        self.reads: list[tuple[str, str]] = []

    def read_config_map(self, namespace: str, name: str) -> ConfigMapContent | None:
        self.reads.append((namespace, name))
        return self.maps.get((namespace, name))


def fetch(uri: str, sources: DatasetSources, tmp_path: Path, namespace: str = "team-a") -> FetchedDataset:
    return run(fetch_dataset(uri, namespace, sources, tmp_path / "dataset"))


def test_configmap_data_and_binary_data_are_read_from_the_rollouts_namespace(tmp_path: Path) -> None:
    reader = FakeConfigMaps({("team-a", "golden"): ConfigMapContent(
        data={"set.jsonl": '{"classes": ["é"]}\n'},
        binary_data={"set.npz": base64.b64encode(BINARY).decode()})})
    sources = DatasetSources(config_maps=reader)
    text = fetch("configmap://golden/set.jsonl", sources, tmp_path)
    assert text.path.read_bytes() == '{"classes": ["é"]}\n'.encode()
    assert text.sha256 == hashlib.sha256('{"classes": ["é"]}\n'.encode()).hexdigest()
    binary = fetch("configmap://golden/set.npz", sources, tmp_path)
    assert binary.path.read_bytes() == BINARY and binary.sha256 == hashlib.sha256(BINARY).hexdigest()
    assert binary.size_bytes == len(BINARY) and "team-a/golden" in binary.source
    assert reader.reads == [("team-a", "golden"), ("team-a", "golden")]
    with pytest.raises(SourceError) as missing:
        fetch("configmap://golden/other", sources, tmp_path, namespace="team-a")
    assert missing.value.kind is ErrorKind.NOT_FOUND and "set.jsonl, set.npz" in missing.value.message
    with pytest.raises(SourceError) as elsewhere:
        fetch("configmap://golden/set.jsonl", sources, tmp_path, namespace="team-b")
    assert elsewhere.value.kind is ErrorKind.NOT_FOUND and "team-b/golden not found" in elsewhere.value.message


def test_configmap_uri_shape_and_bad_base64(tmp_path: Path) -> None:
    assert parse_config_map_uri("configmap://golden-sets.v1/nsfw_v3.jsonl") == ("golden-sets.v1", "nsfw_v3.jsonl")
    for bad in ("configmap://other-ns/golden/key", "configmap://Golden/key", "configmap://golden/", "configmap://x"):
        with pytest.raises(SourcePolicyError):
            parse_config_map_uri(bad)
    reader = FakeConfigMaps({("team-a", "g"): ConfigMapContent(binary_data={"k": "not base64!"})})
    with pytest.raises(SourceError) as bad_base64:
        fetch("configmap://g/k", DatasetSources(config_maps=reader), tmp_path)
    assert bad_base64.value.kind is ErrorKind.INVALID
    with pytest.raises(SourcePolicyError, match="no Kubernetes access"):
        fetch("configmap://g/k", DatasetSources(), tmp_path)


def test_unsupported_schemes_and_missing_configuration_are_policy_refusals(tmp_path: Path) -> None:
    for uri in ("file:///etc/passwd", "s3://bucket/key", "http://example.com/data.jsonl"):
        with pytest.raises(SourcePolicyError):
            fetch(uri, DatasetSources(https_allowed_hosts=["example.com"]), tmp_path)
    with pytest.raises(SourcePolicyError, match="no MLflow"):
        fetch("runs:/abc/golden.jsonl", DatasetSources(), tmp_path)


def test_https_allow_list() -> None:
    assert host_allowed("data.example.com", ["data.example.com"])
    assert host_allowed("DATA.example.com.", ["data.example.com"])
    assert host_allowed("a.data.example.com", ["*.example.com"])
    assert not host_allowed("example.com", ["*.example.com"])
    assert not host_allowed("evilexample.com", ["*.example.com"])
    assert not host_allowed("data.example.com.evil.io", ["data.example.com"])
    with pytest.raises(SourcePolicyError, match="not in the operator's allow-list"):
        check_https_uri("https://other.io/x.jsonl", ["data.example.com"])
    with pytest.raises(SourcePolicyError, match="credentials"):
        check_https_uri("https://user:pw@data.example.com/x.jsonl", ["data.example.com"])
    with pytest.raises(SourcePolicyError):
        check_https_uri("http://data.example.com/x.jsonl", ["data.example.com"])


@pytest.mark.parametrize("uri", [
    "https://x\\.data.example.com/golden.jsonl",  # a backslash: yarl refuses it
    "https://x..data.example.com/golden.jsonl",  # an empty label: IDNA refuses it
    "https://" + "a" * 64 + ".data.example.com/golden.jsonl",  # a label over 63 characters
    "https://data.example.com:99999/golden.jsonl",
    "https://[::1/golden.jsonl",
])
def test_a_url_that_cannot_be_fetched_is_a_policy_refusal_not_a_crash(uri: str) -> None:
    with pytest.raises(SourcePolicyError):
        check_https_uri(uri, ["*.data.example.com", "data.example.com"])


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=loopback",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    yield cert, key


@asynccontextmanager
async def https_server(cert: Path, key: Path) -> AsyncIterator[int]:
    payload = b'{"classes": ["safe"]}\n' * 1000

    async def data(request: web.Request) -> web.Response:
        return web.Response(body=payload)

    async def moved(request: web.Request) -> web.Response:
        return web.Response(status=302, headers={"Location": "/data.jsonl"})

    async def elsewhere(request: web.Request) -> web.Response:
        port = request.url.port
        return web.Response(status=301, headers={"Location": f"https://localhost:{port}/data.jsonl"})

    async def missing(request: web.Request) -> web.Response:
        return web.Response(status=404)

    async def nowhere(request: web.Request) -> web.Response:
        return web.Response(status=302, headers={"Location": "https://127.0.0.1:99999/data.jsonl"})

    async def echo(request: web.Request) -> web.Response:  # a reason phrase quoting the query, or one value of it
        if request.path == "/echo-query":
            return web.Response(status=403, reason=f"Forbidden for {request.query_string}")
        return web.Response(status=403, reason=f"signature {request.query.get('X-Amz-Signature')} does not match")

    async def stall(request: web.Request) -> web.StreamResponse:  # a first chunk, then nothing for a while
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(payload[:100])
        await asyncio.sleep(2)
        return response

    app = web.Application()
    app.router.add_get("/data.jsonl", data)
    app.router.add_get("/moved", moved)
    app.router.add_get("/elsewhere", elsewhere)
    app.router.add_get("/missing", missing)
    app.router.add_get("/nowhere", nowhere)
    app.router.add_get("/echo-query", echo)
    app.router.add_get("/echo-value", echo)
    app.router.add_get("/stall", stall)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    try:
        yield site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    finally:
        await runner.cleanup()


def test_https_fetch_streams_follows_same_host_redirects_and_refuses_others(tls_files: tuple[Path, Path],
                                                                           tmp_path: Path) -> None:
    cert, key = tls_files
    payload = b'{"classes": ["safe"]}\n' * 1000

    async def scenario() -> None:
        async with https_server(cert, key) as port:
            base = f"https://127.0.0.1:{port}"
            sources = DatasetSources(https_allowed_hosts=["127.0.0.1"], https_ca_file=str(cert))
            got = await fetch_dataset(f"{base}/data.jsonl", "ns", sources, tmp_path / "a")
            assert got.path.read_bytes() == payload and got.sha256 == hashlib.sha256(payload).hexdigest()
            got = await fetch_dataset(f"{base}/moved", "ns", sources, tmp_path / "b")
            assert got.sha256 == hashlib.sha256(payload).hexdigest()
            with pytest.raises(SourcePolicyError, match="redirect to https://localhost refused"):
                await fetch_dataset(f"{base}/elsewhere", "ns", sources, tmp_path / "c")
            with pytest.raises(SourceError) as missing:
                await fetch_dataset(f"{base}/missing", "ns", sources, tmp_path / "d")
            assert missing.value.kind is ErrorKind.NOT_FOUND
            with pytest.raises(SourceError, match="redirect's Location is not a usable URL") as nowhere:
                await fetch_dataset(f"{base}/nowhere", "ns", sources, tmp_path / "g")
            assert nowhere.value.kind is ErrorKind.INVALID
            with pytest.raises(SourcePolicyError, match="limit"):
                await fetch_dataset(f"{base}/data.jsonl", "ns", DatasetSources(
                    https_allowed_hosts=["127.0.0.1"], https_ca_file=str(cert), max_bytes=1000), tmp_path / "e")
            with pytest.raises(SourceError) as untrusted:  # no CA given: the self-signed cert is not trusted
                await fetch_dataset(f"{base}/data.jsonl", "ns", DatasetSources(https_allowed_hosts=["127.0.0.1"]),
                                    tmp_path / "f")
            assert untrusted.value.kind is ErrorKind.UNAVAILABLE

    run(scenario())


def test_a_download_past_its_time_limit_says_so(tls_files: tuple[Path, Path], tmp_path: Path) -> None:
    cert, key = tls_files

    async def scenario() -> SourceError:
        async with https_server(cert, key) as port:
            sources = DatasetSources(https_allowed_hosts=["127.0.0.1"], https_ca_file=str(cert),
                                     https_timeout_seconds=0.5)
            with pytest.raises(SourceError) as slow:
                await fetch_dataset(f"https://127.0.0.1:{port}/stall", "ns", sources, tmp_path / "a")
            return slow.value

    error = run(scenario())
    # It said "GET https://...: TimeoutError: ", and on-call read nothing more in status.
    assert error.kind is ErrorKind.UNAVAILABLE
    assert error.message.endswith("/stall: the download took over 0.5s"), error.message


def test_the_mlflow_source_named_in_status_carries_no_user_info(tmp_path: Path) -> None:
    # An operator's default tracking URI with user:password@ (requests sends it as basic auth): the download works,
    # and status.gate.report.dataset.source names the server without the password.
    payload = b'{"classes": ["safe"]}\n'
    authorizations: list[str | None] = []

    async def artifact(request: web.Request) -> web.Response:
        authorizations.append(request.headers.get("Authorization"))
        return web.Response(body=payload)

    async def scenario() -> tuple[FetchedDataset, str]:
        async with http_server(artifact, method="GET") as base:
            access = MlflowAccess(base.replace("http://", "http://admin:hunter2-pw@"), max_retries=0,
                                  timeout_seconds=5)
            got = await fetch_dataset("mlflow-artifacts:/golden/x.jsonl", "ns", DatasetSources(mlflow=access),
                                      tmp_path / "d")
            return got, base

    got, base = run(scenario())
    assert got.sha256 == hashlib.sha256(payload).hexdigest()
    assert authorizations == ["Basic " + base64.b64encode(b"admin:hunter2-pw").decode()]
    assert got.source == f"mlflow-artifacts:/golden/x.jsonl via {base}"


def test_mlflow_artifact_uris_map_to_the_tracking_servers_proxy_only() -> None:
    access = MlflowAccess("http://mlflow.mlops:5000", token="s3cret")
    assert artifact_endpoint(access, "mlflow-artifacts:/golden/nsfw v3.jsonl") == \
        "/api/2.0/mlflow-artifacts/artifacts/golden/nsfw%20v3.jsonl"
    assert artifact_endpoint(access, "mlflow-artifacts://mlflow.mlops:5000/1/abc/artifacts/d.npz") == \
        "/api/2.0/mlflow-artifacts/artifacts/1/abc/artifacts/d.npz"
    assert artifact_endpoint(access, "http://mlflow.mlops:5000/api/2.0/mlflow-artifacts/artifacts/1/x") == \
        "/api/2.0/mlflow-artifacts/artifacts/1/x"
    for refused in ("mlflow-artifacts://evil.io/x", "s3://bucket/x", "file:///etc/passwd",
                    "https://evil.io/api/2.0/mlflow-artifacts/artifacts/x", "mlflow-artifacts:/"):
        with pytest.raises(SourcePolicyError):
            artifact_endpoint(access, refused)
    assert "s3cret" not in repr(access)
    creds = access.host_creds()
    assert creds.token == "s3cret" and creds.host == "http://mlflow.mlops:5000"


def test_mlflow_access_from_registry_style_credentials() -> None:
    class Creds:
        token = None
        username = "alice"
        password = "pw"

    access = MlflowAccess.with_credentials("http://m:5000", Creds(), timeout_seconds=5)
    assert (access.username, access.password, access.token, access.timeout_seconds) == ("alice", "pw", None, 5)
    assert MlflowAccess.with_credentials("http://m:5000", None).token is None


def test_unreachable_mlflow_is_unavailable(tmp_path: Path) -> None:
    from controller.devstack.processes import free_port

    access = MlflowAccess(f"http://127.0.0.1:{free_port()}", max_retries=0, timeout_seconds=2)
    with pytest.raises(SourceError) as down:
        fetch("mlflow-artifacts:/golden/x.jsonl", DatasetSources(mlflow=access), tmp_path)
    assert down.value.kind is ErrorKind.UNAVAILABLE


def test_copy_hashing_writes_exactly_up_to_the_limit_and_refuses_one_byte_more() -> None:
    sink = io.BytesIO()
    assert copy_hashing([b"abc", b"", b"de"], sink, 5, "x") == (hashlib.sha256(b"abcde").hexdigest(), 5)
    assert sink.getvalue() == b"abcde"
    sink = io.BytesIO()
    with pytest.raises(SourcePolicyError, match=r"dataset\.bin is larger than the 5-byte limit"):
        copy_hashing([b"abc", b"def"], sink, 5, "dataset.bin")
    assert sink.getvalue() == b"abc"  # the chunk that crosses the limit is never written
