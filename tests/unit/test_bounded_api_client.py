"""The operator's Kubernetes client gives up on a server that accepts the connection and never answers."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator

import pytest
import urllib3
from kubernetes import client

from controller.operator.kubeapi import BoundedApiClient


@pytest.fixture()
def silent_server() -> Iterator[str]:
    """A listening socket that accepts connections (the kernel does) and never sends a byte."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    server.close()


def configuration(host: str) -> client.Configuration:
    c = client.Configuration()
    c.host = host
    c.retries = 0
    return c


def raised_within(call: Callable[[], object], seconds: float) -> BaseException | None:
    """What `call` raised, if it ended within `seconds` (None if it is still waiting: a daemon thread is left)."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            call()
            outcome.append(None)
        except BaseException as exc:  # handed to the test
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert outcome, f"still waiting after {seconds} s"
    return outcome[0]


def test_a_call_to_a_server_that_never_answers_times_out(silent_server: str) -> None:
    api = client.CoreV1Api(BoundedApiClient(configuration(silent_server), timeout=(1.0, 1.0)))
    assert isinstance(raised_within(lambda: api.read_namespace("default"), 10), urllib3.exceptions.HTTPError)


def test_a_call_that_sets_its_own_timeout_keeps_it(silent_server: str) -> None:
    api = client.CoreV1Api(BoundedApiClient(configuration(silent_server), timeout=(60.0, 60.0)))
    raised = raised_within(lambda: api.read_namespace("default", _request_timeout=(1.0, 1.0)), 10)
    assert isinstance(raised, urllib3.exceptions.HTTPError)
