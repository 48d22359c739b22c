"""Registry credentials go only to the registry their Secret names.

A rollout names its tracking URI and its credentials Secret separately, and whoever may edit a rollout need
not be able to read the Secret. Without a scope, `trackingUri: http://anywhere/` would have the operator send
the team's token there. The Secret carries `trackingUri` (as Argo CD's repository Secrets carry `url`), read
here from a real API server, and a real HTTP listener plays the registry each spec names.
"""

from __future__ import annotations

import base64
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from controller.api.spec import parse_spec
from controller.engine.observations import AdapterErrorKind
from controller.operator.kubeapi import load_client_config
from controller.operator.runtime import OperatorConfig, RolloutRuntime

TOKEN = "team-token-7f3a9c"


class Listener:
    """An HTTP server on loopback that records the Authorization header of every request (None: none sent)."""

    def __init__(self) -> None:
        seen: list[str | None] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                seen.append(self.headers.get("Authorization"))
                self.send_response(404)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "no such model"}')

            do_POST = do_PATCH = do_DELETE = do_GET  # writes too: "no request at all" must see every method

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.seen = seen
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    served = Listener()
    yield served
    served.close()


def observe(kubeconfig: Path, namespace: str, tracking_uri: str, secret_data: dict[str, str]) -> RolloutRuntime:
    api = load_client_config(str(kubeconfig))
    encoded = {key: base64.b64encode(value.encode()).decode() for key, value in secret_data.items()}
    client.CoreV1Api(api).create_namespaced_secret(namespace, client.V1Secret(
        metadata=client.V1ObjectMeta(name="mlflow-token"), data=encoded))
    raw = {"model": {"name": "nsfw", "version": "2"},
           "registry": {"trackingUri": tracking_uri, "credentialsSecretRef": {"name": "mlflow-token"}},
           "target": {"kserve": {"inferenceService": "nsfw"}},
           "canary": {"steps": [{"setWeight": 10}]},
           "goldenDataset": {"uri": "mlflow-artifacts:/golden/set.jsonl", "sha256": "0" * 64,
                             "thresholds": {"minAccuracy": 0.9}}}
    return RolloutRuntime({"metadata": {"namespace": namespace, "name": "r", "uid": "u"}, "spec": raw},
                          parse_spec(raw), api, OperatorConfig())


def test_credentials_reach_the_registry_their_secret_names(kubeconfig: Path, namespace: str,
                                                           listener: Listener) -> None:
    runtime = observe(kubeconfig, namespace, listener.url + "/",  # same registry, trailing slash
                      {"token": TOKEN, "trackingUri": listener.url})
    runtime.observe_registry()
    assert listener.seen and set(listener.seen) == {f"Bearer {TOKEN}"}


@pytest.mark.parametrize(("secret_uri", "said"), [
    ("http://mlflow.team-a.svc.cluster.local:5000", "is for another registry"),
    (None, "has no 'trackingUri' key"),
])
def test_credentials_are_never_sent_to_another_registry(kubeconfig: Path, namespace: str, listener: Listener,
                                                        secret_uri: str | None, said: str) -> None:
    data = {"token": TOKEN} | ({"trackingUri": secret_uri} if secret_uri else {})
    runtime = observe(kubeconfig, namespace, listener.url, data)
    observed = runtime.observe_registry()
    assert observed.error is not None and observed.error.kind is AdapterErrorKind.INVALID
    assert said in observed.error.message and TOKEN not in observed.error.message
    # Refused before a registry client exists (RolloutRuntime.registry reads the credentials first): not one
    # request, with the token or without.
    assert listener.seen == [], listener.seen
