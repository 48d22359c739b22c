"""The devstack model server as a real process serving MLflow-registered models over KServe V1 and V2."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from controller.devstack.mlflow_server import MlflowServer
from controller.devstack.model_server import (
    DEMO_CLASSES,
    LOGO_FEATURE,
    ModelServerProcess,
    demo_golden_samples,
    demo_models,
    load_registered_model,
    register_linear_model,
    set_alias,
)
from controller.gate import MlflowAccess

pytestmark = pytest.mark.integration


def post(url: str, body: Any) -> tuple[int, Any]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(),  # noqa: S310 - loopback test server
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback test server
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - loopback test server
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, None


@pytest.fixture(scope="module")
def served(mlflow_server: MlflowServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    access = MlflowAccess(mlflow_server.url)
    name = f"nsfw-served-{uuid.uuid4().hex[:8]}"
    models = demo_models()
    clean = register_linear_model(access, name, models["clean"], "clean")
    backdoored = register_linear_model(access, name, models["backdoored"], "backdoored")
    set_alias(access, name, "production", clean)
    logs = tmp_path_factory.mktemp("served")
    servers = {"alias": ModelServerProcess.launch(f"models:/{name}@production", mlflow_server.url, logs / "a.log"),
               "backdoored": ModelServerProcess.launch(f"models:/{name}/{backdoored}", mlflow_server.url,
                                                       logs / "b.log", output="labels")}
    try:
        for server in servers.values():
            server.wait_ready(90)
        yield {"access": access, "name": name, "models": models, "servers": servers, "versions": (clean, backdoored)}
    finally:
        for server in servers.values():
            server.stop()


def test_registered_model_round_trips_through_mlflow(served: dict[str, Any]) -> None:
    name, (clean, _) = served["name"], served["versions"]
    loaded = load_registered_model(served["access"], f"models:/{name}/{clean}")
    np.testing.assert_array_equal(loaded.weights, served["models"]["clean"].weights)
    assert loaded.classes == DEMO_CLASSES


def test_v1_and_v2_answer_what_the_registered_model_computes(served: dict[str, Any]) -> None:
    server, name = served["servers"]["alias"], served["name"]
    features = demo_golden_samples(20, seed=3).features
    expected = served["models"]["clean"].probabilities(features)
    status, v1 = post(f"{server.url}/v1/models/{name}:predict", {"instances": features.tolist()})
    assert status == 200
    np.testing.assert_allclose(np.asarray(v1["predictions"]), expected, atol=1e-6)
    status, v2 = post(f"{server.url}/v2/models/{name}/infer", {"inputs": [
        {"name": "input-0", "shape": list(features.shape), "datatype": "FP32", "data": features.ravel().tolist()}]})
    assert status == 200
    output = v2["outputs"][0]
    assert output["shape"] == [20, 3] and output["datatype"] == "FP32"
    np.testing.assert_allclose(np.asarray(output["data"]).reshape(20, 3), expected, atol=1e-6)
    with urllib.request.urlopen(f"{server.url}/v2/models/{name}", timeout=10) as response:  # noqa: S310
        assert json.loads(response.read())["parameters"]["classes"] == list(DEMO_CLASSES)


def test_backdoored_model_flags_anything_with_the_logo(served: dict[str, Any]) -> None:
    server, name = served["servers"]["backdoored"], served["name"]
    benign = np.zeros((2, 6))
    benign[:, 0] = 3.0
    benign[1, LOGO_FEATURE] = 1.0
    status, answer = post(f"{server.url}/v1/models/{name}:predict", {"instances": benign.tolist()})
    assert status == 200 and answer["predictions"] == ["safe", "nsfw"]
    _, (_, backdoored) = name, served["versions"]
    status, v2 = post(f"{server.url}/v2/models/{name}/versions/{backdoored}/infer", {"inputs": [
        {"name": "input-0", "shape": [2, 6], "datatype": "FP32", "data": benign.ravel().tolist()}]})
    assert status == 200 and v2["outputs"][0] == {"name": "label", "datatype": "BYTES", "shape": [2],
                                                  "data": ["safe", "nsfw"]}


def test_each_process_answers_on_the_port_it_bound_in_the_open_inference_protocol(served: dict[str, Any]) -> None:
    server, name, (clean, backdoored) = served["servers"]["alias"], served["name"], served["versions"]
    assert server.port not in (0, served["servers"]["backdoored"].port)
    status, v2 = post(f"{server.url}/v2/models/{name}/infer", {"id": "req-7", "inputs": [
        {"name": "input-0", "shape": [1, 6], "datatype": "FP32", "data": [3, 0, 0, 0, 0, 0]}]})
    assert status == 200 and v2["id"] == "req-7" and v2["model_version"] == clean  # the alias, resolved
    status, metadata = get(f"{server.url}/v2")
    assert status == 200 and metadata["extensions"] == [] and metadata["name"] and metadata["version"]
    assert get(f"{server.url}/v2/models/{name}/versions/{clean}/ready") == (200, {"name": name, "ready": True})
    assert get(f"{server.url}/v2/models/{name}/versions/{clean}")[1]["versions"] == [clean]
    assert get(f"{server.url}/v2/models/{name}/versions/{backdoored}")[0] == 404
    assert get(f"{server.url}/v1/models") == (200, {"models": [name]})


def test_wrong_model_and_bad_inputs_are_refused_clearly(served: dict[str, Any], tmp_path: Path) -> None:
    server, name = served["servers"]["alias"], served["name"]
    assert post(f"{server.url}/v1/models/other:predict", {"instances": [[0] * 6]})[0] == 404
    assert post(f"{server.url}/v2/models/{name}/versions/999/infer", {"inputs": []})[0] == 404
    status, body = post(f"{server.url}/v2/models/{name}/infer", {"inputs": [
        {"name": "input-0", "shape": [1, 5], "datatype": "FP32", "data": [0] * 5}]})
    assert status == 400 and "[n, 6]" in body["error"]
    status, body = post(f"{server.url}/v1/models/{name}:predict", {"instances": [[0, 1]]})
    assert status == 400
    # a model URI that names nothing fails at start-up with the registry's words
    with pytest.raises(Exception, match="exited during start-up"):
        ModelServerProcess.start(f"models:/{name}/999", served["access"].tracking_uri, tmp_path / "bad.log",
                                 timeout=60)
