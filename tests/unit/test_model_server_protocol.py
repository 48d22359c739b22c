"""The devstack model server speaks the Open Inference Protocol (V2) and KServe V1 as written, and a server
started as a process is reached on the port it bound itself, never on one another server holds."""

from __future__ import annotations

import asyncio
import json
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import aiohttp
import pytest

import controller.devstack.model_server as model_server
import controller.devstack.seldon_standin as seldon_standin
from controller.devstack.model_server import InProcessModelServer, ModelApp, ModelServerProcess, demo_models
from controller.devstack.processes import StackError
from controller.devstack.seldon_standin import SeldonMesh
from tests.http_stub import serving

INPUT = {"name": "input-0", "shape": [1, 6], "datatype": "FP32", "data": [0, 0, 3, 0, 0, 0]}


def exchange(version: str | None, calls: list[tuple[str, str, Any]]) -> list[tuple[int, Any]]:
    """(status, JSON body or None) for each (method, path, body) against an in-process server for "nsfw"."""

    async def go() -> list[tuple[int, Any]]:
        server = InProcessModelServer(ModelApp(demo_models()["stable"], "nsfw", version))
        url = await server.start()
        answers: list[tuple[int, Any]] = []
        try:
            async with aiohttp.ClientSession() as session:
                for method, path, body in calls:
                    async with session.request(method, url + path, json=body) as response:
                        json_body = response.content_type == "application/json"
                        answers.append((response.status, await response.json() if json_body else None))
        finally:
            await server.stop()
        return answers

    return asyncio.run(go())


def test_v2_infer_echoes_the_request_id_and_leaves_out_what_it_does_not_have() -> None:
    with_id, without_id, bad_id = exchange("2", [
        ("POST", "/v2/models/nsfw/infer", {"id": "req-42", "inputs": [INPUT]}),
        ("POST", "/v2/models/nsfw/versions/2/infer", {"inputs": [INPUT]}),
        ("POST", "/v2/models/nsfw/infer", {"id": 42, "inputs": [INPUT]})])
    assert with_id[0] == 200 and with_id[1]["id"] == "req-42" and with_id[1]["model_version"] == "2"
    assert without_id[0] == 200 and "id" not in without_id[1]
    assert bad_id[0] == 400 and "id" in bad_id[1]["error"]
    [(status, unversioned)] = exchange(None, [("POST", "/v2/models/nsfw/infer", {"id": "r", "inputs": [INPUT]})])
    assert status == 200 and "model_version" not in unversioned  # optional: absent, never null
    assert unversioned["model_name"] == "nsfw" and unversioned["id"] == "r"


def test_v2_server_metadata_and_versioned_model_routes() -> None:
    server, metadata, ready, wrong, wrong_ready, other = exchange("2", [
        ("GET", "/v2", None),
        ("GET", "/v2/models/nsfw/versions/2", None),
        ("GET", "/v2/models/nsfw/versions/2/ready", None),
        ("GET", "/v2/models/nsfw/versions/3", None),
        ("GET", "/v2/models/nsfw/versions/3/ready", None),
        ("GET", "/v2/models/other/versions/2/ready", None)])
    assert server[0] == 200 and set(server[1]) == {"name", "version", "extensions"}
    assert isinstance(server[1]["name"], str) and isinstance(server[1]["version"], str)
    assert server[1]["extensions"] == []
    assert metadata[0] == 200 and metadata[1]["name"] == "nsfw" and metadata[1]["versions"] == ["2"]
    assert metadata[1]["inputs"][0]["shape"] == [-1, 6]
    assert ready == (200, {"name": "nsfw", "ready": True})
    assert wrong[0] == wrong_ready[0] == other[0] == 404


def test_v1_lists_its_models() -> None:
    [(status, body)] = exchange("2", [("GET", "/v1/models", None)])
    assert (status, body) == (200, {"models": ["nsfw"]})


# --- the server as a process: it must be reached on the port it bound -----------------------------------


class _Squatter(BaseHTTPRequestHandler):
    """Another server on the loopback: answers 200 to everything, as a stable model server would."""

    def do_GET(self) -> None:
        body = json.dumps({"name": "nsfw", "versions": ["1"], "ready": True}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def squatter() -> Iterator[int]:
    with serving(ThreadingHTTPServer(("127.0.0.1", 0), _Squatter)) as url:
        yield int(url.rsplit(":", 1)[1])


class _FakeMlflow(BaseHTTPRequestHandler):
    """Just enough MLflow for load_registered_model("models:/nsfw/2"); other versions do not exist."""

    def do_GET(self) -> None:
        if self.path.startswith("/api/2.0/mlflow/model-versions/get-download-uri?") and "version=2" in self.path:
            status, body = 200, json.dumps({"artifact_uri": "mlflow-artifacts:/nsfw/2"}).encode()
        elif self.path == "/api/2.0/mlflow-artifacts/artifacts/nsfw/2/linear_model.npz":
            status, body = 200, demo_models()["clean"].to_bytes()
        else:
            status, body = 404, json.dumps({"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "no"}).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def tracking_uri() -> Iterator[str]:
    with serving(ThreadingHTTPServer(("127.0.0.1", 0), _FakeMlflow)) as url:
        yield url


def test_a_port_another_server_holds_never_passes_for_the_model_server(
        squatter: int, tracking_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The race, forced: a port picked for the child is taken by another server before the child binds it...
    monkeypatch.setattr(model_server, "free_port", lambda: squatter, raising=False)
    server = ModelServerProcess.launch("models:/nsfw/2", tracking_uri, tmp_path / "b.log", model_name="nsfw")
    try:
        # ...and a port file left by another process (here, this one) names that server's port.
        (tmp_path / "b.log.port").write_text(f"{os.getpid()} {squatter}\n")
        server.wait_ready(60)
        assert server.port != squatter and server.process.alive()
        with urllib.request.urlopen(f"{server.url}/v2/models/nsfw", timeout=10) as response:  # noqa: S310
            assert json.loads(response.read())["versions"] == ["2"]
    finally:
        server.stop()


def test_a_model_server_that_cannot_load_its_model_fails_fast(tracking_uri: str, tmp_path: Path) -> None:
    with pytest.raises(StackError, match="exited during start-up"):
        ModelServerProcess.start("models:/nsfw/9", tracking_uri, tmp_path / "bad.log", timeout=60)


def test_seldon_mesh_binds_a_port_of_its_own(squatter: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(seldon_standin, "free_port", lambda: squatter, raising=False)
    mesh = SeldonMesh("ns", lambda namespace, name: None).start()
    try:
        assert mesh.port not in (0, squatter)
        request = urllib.request.Request(f"{mesh.url}/v2/models/absent/ready")  # noqa: S310 - loopback
        with pytest.raises(urllib.error.HTTPError) as refused:  # the mesh itself: no route to that Model
            urllib.request.urlopen(request, timeout=10)  # noqa: S310 - loopback
        assert refused.value.code == 404
    finally:
        mesh.stop()
