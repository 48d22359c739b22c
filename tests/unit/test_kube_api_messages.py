"""Kubernetes API error messages reach status conditions, Events and logs: a proxy in front of the API server that
echoes the request's Authorization header must not put the operator's token there."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from kubernetes import client

from controller.operator import kubeapi
from controller.operator.kubeapi import BoundedApiClient, RolloutStore
from controller.traffic.base import TrafficError
from controller.traffic.kube import INFERENCE_SERVICE, ObjectClient
from tests.http_stub import serving

TOKEN = "operator-SA-TOKEN-xyz"


class EchoingProxy:
    """Answers every request with `code` and a Status message quoting its Authorization header."""

    def __init__(self) -> None:
        self.code = 403
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                body = json.dumps({"kind": "Status", "status": "Failure", "code": owner.code,
                                   "message": f"upstream refused {self.headers.get('Authorization', '')}"}).encode()
                self.send_response(owner.code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_PATCH = do_POST = _answer

            def log_message(self, *_: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)


@pytest.fixture()
def proxy() -> Iterator[tuple[EchoingProxy, str]]:
    echo = EchoingProxy()
    with serving(echo.server) as url:
        yield echo, url


def configured(url: str, api_key: dict[str, str], prefix: dict[str, str] | None = None) -> client.Configuration:
    configuration = client.Configuration(host=url)
    configuration.api_key, configuration.api_key_prefix = api_key, prefix or {}
    configuration.retries = 0
    return configuration


# As load_kube_config / load_incluster_config leave it, and as a hand-made Configuration with a prefix.
CONFIGURATIONS = [({"BearerToken": f"Bearer {TOKEN}"}, None), ({"BearerToken": f"bearer {TOKEN}"}, None),
                  ({"authorization": TOKEN}, {"authorization": "Bearer"})]


@pytest.mark.parametrize(("api_key", "prefix"), CONFIGURATIONS)
@pytest.mark.parametrize("code", [403, 422, 503])
@pytest.mark.parametrize("verb", ["get", "apply"])
def test_a_traffic_error_never_quotes_the_operators_token(proxy: tuple[EchoingProxy, str], api_key: dict[str, str],
                                                          prefix: dict[str, str] | None, code: int, verb: str) -> None:
    echo, url = proxy
    echo.code = code
    target = ObjectClient(BoundedApiClient(configured(url, api_key, prefix)), INFERENCE_SERVICE, "team-a", "isvc")
    with pytest.raises(TrafficError) as caught:
        target.get() if verb == "get" else target.apply({"metadata": {}, "spec": {}})
    assert "upstream refused" in str(caught.value) and "***" in str(caught.value), str(caught.value)
    assert TOKEN not in str(caught.value)


def test_a_refused_event_logs_no_token(proxy: tuple[EchoingProxy, str], caplog: pytest.LogCaptureFixture) -> None:
    _, url = proxy
    store = RolloutStore(BoundedApiClient(configured(url, {"BearerToken": f"Bearer {TOKEN}"})))
    obj = {"metadata": {"namespace": "ns", "name": "r", "uid": "u-1", "resourceVersion": "4"}}
    with caplog.at_level(logging.WARNING):
        store.post_event(obj, {"time": "2026-01-01T00:00:00Z", "event": "RolledBack", "detail": "d", "seq": 1})
    assert "upstream refused" in caplog.text and TOKEN not in caplog.text, caplog.text


def test_a_kubeconfig_basic_auth_pair_is_redacted_encoded_and_decoded() -> None:
    """load_kube_config keeps a username/password as the Basic header value (Latin-1, as urllib3 encodes it)."""
    pair = "ops:pässwörd-SECRET"
    encoded = base64.b64encode(pair.encode("latin-1")).decode()
    configuration = client.Configuration()
    configuration.api_key = {"BearerToken": f"Basic {encoded}"}
    text = kubeapi.without_kube_credentials(f"saw Basic {encoded}; login {pair} failed; {encoded}", configuration)
    assert text == "saw ***; login ops:*** failed; ***"
    configuration = client.Configuration(username="ops", password="pw-SECRET")
    assert kubeapi.without_kube_credentials("login ops:pw-SECRET", configuration) == "login ops:***"


@pytest.mark.parametrize("password", ["a", "admin"])
def test_a_short_password_leaves_the_message_readable_and_its_header_redacted(password: str) -> None:
    """A password of a few characters would match all over a message: only its header forms are looked for."""
    encoded = base64.b64encode(f"admin:{password}".encode("latin-1")).decode()
    message = f'ModelRollout "team-a/fraud" is forbidden: User "admin" cannot patch; saw Basic {encoded} ({encoded})'
    expected = 'ModelRollout "team-a/fraud" is forbidden: User "admin" cannot patch; saw {} (***)'
    from_kubeconfig = client.Configuration()  # as load_kube_config keeps a username/password
    from_kubeconfig.api_key = {"BearerToken": f"Basic {encoded}"}
    assert kubeapi.without_kube_credentials(message, from_kubeconfig) == expected.format("***")
    hand_made = client.Configuration(username="admin", password=password)
    assert kubeapi.without_kube_credentials(message, hand_made) == expected.format("Basic ***")


def test_a_short_password_is_still_redacted_where_it_follows_its_user() -> None:
    configuration = client.Configuration(username="admin", password="S3cr#t7")
    message = "proxy: upstream https://admin:S3cr#t7@10.0.0.1:6443/apis refused"
    redacted = kubeapi.without_kube_credentials(message, configuration)
    assert redacted == "proxy: upstream https://***@10.0.0.1:6443/apis refused"
