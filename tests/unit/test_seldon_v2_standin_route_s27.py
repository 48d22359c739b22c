"""The Seldon Core v2 stand-in routes an Experiment whose candidate is not available as Seldon's scheduler does
(IncrementalProcessor.addModel reverts to the default model alone; addExperiment drops the
<experiment>.experiment route): the default Model's requests reach that Model alone, also after the experiment
was active, which is README's hazard after a promotion. Through the stand-in's real mesh proxy, to real HTTP
model servers on 127.0.0.1; the Experiment itself is read from and written to memory."""

from __future__ import annotations

import copy
import http.client
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from kubernetes import client

from controller.devstack.seldon_standin import ModelEndpoint, SeldonExperimentStandIn, SeldonMesh

Obj = dict[str, Any]


def model_server(identity: str) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            data = json.dumps({"server": identity, "path": self.path}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def servers() -> Iterator[dict[str, ThreadingHTTPServer]]:
    started = {name: model_server(name) for name in ("nsfw-v1", "nsfw-v2", "nsfw-v3")}
    yield started
    for server in started.values():
        server.shutdown()
        server.server_close()


def infer(mesh: SeldonMesh, model: str) -> str | int:
    """The server that answered a request for `model`, or the HTTP status when none did."""
    connection = http.client.HTTPConnection("127.0.0.1", mesh.port, timeout=10)
    try:
        connection.request("POST", f"/v2/models/{model}/infer", body=b"{}",
                           headers={"Content-Type": "application/json"})
        answer = connection.getresponse()
        data = answer.read()
    finally:
        connection.close()
    return str(json.loads(data)["server"]) if answer.status == 200 else answer.status


def test_a_candidate_not_available_leaves_the_default_model_alone(servers: dict[str, ThreadingHTTPServer]) -> None:
    available = {"nsfw-v1", "nsfw-v2"}

    def models(namespace: str, name: str) -> ModelEndpoint | None:
        if name not in available:
            return None
        return ModelEndpoint(f"http://127.0.0.1:{servers[name].server_address[1]}", f"{name}_1")

    # After a promotion: the default (the version before) kept at 0, as Seldon requires; users on nsfw-v2.
    obj: Obj = {"metadata": {"name": "nsfw", "namespace": "ns"},
                "spec": {"default": "nsfw-v1", "candidates": [{"name": "nsfw-v1", "weight": 0},
                                                               {"name": "nsfw-v2", "weight": 100}]}}
    standin = SeldonExperimentStandIn(client.ApiClient(), models=models)
    mesh = SeldonMesh("ns", models).start()
    try:
        standin.mesh = lambda namespace: mesh  # type: ignore[method-assign]
        standin._get = lambda namespace, name: copy.deepcopy(obj)  # type: ignore[method-assign]
        standin._write_status = lambda _, status: obj.__setitem__("status", status)  # type: ignore[method-assign]

        def ready() -> str:
            return next(c["status"] for c in obj["status"]["conditions"] if c["type"] == "Ready")

        standin.reconcile("ns", "nsfw")
        assert ready() == "True"
        assert {infer(mesh, "nsfw-v1") for _ in range(20)} == {"nsfw-v2"}
        assert {infer(mesh, "nsfw.experiment") for _ in range(20)} == {"nsfw-v2"}

        # The next version staged before its Model is loaded: Seldon serves the default, the older version.
        obj["spec"]["candidates"].append({"name": "nsfw-v3", "weight": 0})
        standin.reconcile("ns", "nsfw")
        assert ready() == "False"
        assert {infer(mesh, "nsfw-v1") for _ in range(20)} == {"nsfw-v1"}
        assert infer(mesh, "nsfw.experiment") == 404  # no route while the experiment is not active
        assert infer(mesh, "nsfw-v2") == "nsfw-v2"  # a Model by its own name still reaches it
        assert infer(mesh, "nsfw-v3") == 404

        available.add("nsfw-v3")  # loaded: the experiment is active again, the split back
        standin.reconcile("ns", "nsfw")
        assert ready() == "True"
        assert {infer(mesh, "nsfw-v1") for _ in range(20)} == {"nsfw-v2"}
    finally:
        mesh.stop()
