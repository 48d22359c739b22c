"""Review s32gate: a netrc file on the operator's host is never sent for a rollout. requests fills a session's
missing auth from ~/.netrc (or $NETRC) and that replaced the Authorization header a rollout's Secret gave: every
rollout then acted in MLflow as the netrc's identity, and a `default` entry went to any tracking server or
Prometheus a spec named. Real HTTP servers on 127.0.0.1 record what they are sent."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from controller.analysis.prometheus import PrometheusProvider
from controller.registry.errors import VersionNotFound
from controller.registry.mlflow_rest import MlflowRegistry
from controller.registry.types import Credentials

NETRC_SECRET = "OPERATOR-HOST-NETRC-SECRET"


class Recorder(BaseHTTPRequestHandler):
    seen: list[str | None]

    def _answer(self) -> None:
        self.seen.append(self.headers.get("Authorization"))
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path.startswith("/api/v1/"):  # Prometheus
            status, body = 200, {"status": "success", "data": {"resultType": "vector",
                                                                "result": [{"metric": {}, "value": [1, "1"]}]}}
        else:  # MLflow: no such model
            status, body = 404, {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "no such model"}
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = _answer

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[str, list[str | None]]]:
    seen: list[str | None] = []
    handler = type("Handler", (Recorder,), {"seen": seen})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_port}", seen
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(autouse=True)
def netrc_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    netrc = tmp_path / "netrc"
    netrc.write_text(f"default login operator-host password {NETRC_SECRET}\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))


def resolve(registry: MlflowRegistry) -> None:
    with pytest.raises(VersionNotFound):
        registry.resolve("some-model", version="1")


def test_a_registry_without_a_secret_sends_no_credentials(server: tuple[str, list[str | None]]) -> None:
    url, seen = server
    resolve(MlflowRegistry(url))
    assert seen and seen == [None] * len(seen), seen  # was: Basic of operator-host:OPERATOR-HOST-NETRC-SECRET


def test_a_registry_sends_the_rollout_s_token_not_the_netrc_s(server: tuple[str, list[str | None]]) -> None:
    url, seen = server
    resolve(MlflowRegistry(url, Credentials(token="tenant-token")))
    assert seen and set(seen) == {"Bearer tenant-token"}, seen


def test_prometheus_gets_only_the_headers_the_rollout_gave(server: tuple[str, list[str | None]]) -> None:
    url, seen = server
    assert PrometheusProvider(url).scalar("vector(1)", check_stale=False).value == 1.0
    assert PrometheusProvider(url, headers={"Authorization": "Bearer prom-token"}).scalar(
        "vector(1)", check_stale=False).value == 1.0
    assert seen == [None, "Bearer prom-token"], seen


def test_an_address_s_user_info_is_still_sent_as_basic_auth_and_not_the_netrc_s(
        server: tuple[str, list[str | None]]) -> None:
    url, seen = server
    assert PrometheusProvider(url.replace("http://", "http://team:team-pw@")).scalar(
        "vector(1)", check_stale=False).value == 1.0
    assert seen == ["Basic " + base64.b64encode(b"team:team-pw").decode()], seen
