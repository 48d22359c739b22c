"""An MLflow artifact download cut short where the framing cannot show it (a body ended only by the connection's
close, or a gzip stream broken off mid-way) is a download to retry, as the https source's is: never hashed as a
changed dataset (`dataset.sha256` FAIL, rollback, "the data were changed or the pin is wrong"; review s34gate
finding 2). A real HTTP server on 127.0.0.1 plays the tracking server's artifact proxy, answering each connection
as the test scripts it; the gate runs for real against an in-process model server."""

from __future__ import annotations

import gzip
import hashlib
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from test_gate_sources_cut_s29 import data, unavailable  # noqa: F401 - a fixture
from test_gate_support import run

from controller.devstack.model_server import InProcessModelServer, ModelApp, demo_models
from controller.gate.clients import InferenceEndpoint
from controller.gate.mlflow_access import MlflowAccess
from controller.gate.runner import GateReport, run_gate
from controller.gate.sources import DatasetSources
from controller.verdict import Outcome

ARTIFACT = "/api/2.0/mlflow-artifacts/artifacts/golden/set.jsonl"


def unframed(body: bytes, *fields: str) -> bytes:
    """No Content-Length, no chunking: the body ends when the server closes."""
    return ("HTTP/1.1 200 OK\r\nConnection: close\r\n" + "".join(f"{f}\r\n" for f in fields) + "\r\n").encode() + body


def with_length(body: bytes, *fields: str) -> bytes:
    return unframed(body, f"Content-Length: {len(body)}", *fields)


@contextmanager
def artifact_proxy(script: list[bytes]) -> Iterator[tuple[str, list[bytes]]]:
    """Answers connection n with script[n] (the last one again after that), then closes; yields the server's URL
    and the requests it got (grows)."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)  # accept() wakes to see the test is over
    requests: list[bytes] = []
    done = threading.Event()

    def serve() -> None:
        while not done.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(10)
                try:
                    request = b""
                    while b"\r\n\r\n" not in request and (got := conn.recv(4096)):
                        request += got
                    requests.append(request)
                    conn.sendall(script[min(len(requests), len(script)) - 1])
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass  # the client left first

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}", requests
    finally:
        done.set()
        thread.join(timeout=10)
        listener.close()


def gate(golden: bytes, script: list[bytes]) -> tuple[GateReport, list[bytes]]:
    """The gate on a dataset pinned to `data`, served as scripted; (its report, the GETs the proxy answered)."""
    async def scenario() -> tuple[GateReport, list[bytes]]:
        server = InProcessModelServer(ModelApp(demo_models()["clean"], "nsfw", output="labels"))
        url = await server.start()
        try:
            with artifact_proxy(script) as (tracking, requests):
                sources = DatasetSources(mlflow=MlflowAccess(tracking, token="t0ken-s34", max_retries=0,
                                                             timeout_seconds=10))
                spec = {"uri": "mlflow-artifacts:/golden/set.jsonl", "sha256": hashlib.sha256(golden).hexdigest(),
                        "thresholds": {"minAccuracy": 0.8}}
                report = await run_gate(spec, InferenceEndpoint.from_url(f"{url}/v1/models/nsfw:predict", "nsfw",
                                                                         "v1"), None, namespace="ns", sources=sources)
                return report, list(requests)
        finally:
            await server.stop()

    return run(scenario())


def unavailable_not_changed(report: GateReport) -> str:
    assert "dataset.sha256" not in report.status.get("failedChecks", []), report.status
    return unavailable(report)


def test_a_body_cut_where_only_the_close_ends_it_is_read_again(data: bytes) -> None:  # noqa: F811
    report, gets = gate(data, [unframed(data[:len(data) // 2]), unframed(data)])
    assert report.outcome is Outcome.PASS and len(gets) == 2, report.reason
    assert all(get.startswith(f"GET {ARTIFACT} ".encode()) for get in gets), gets


def test_two_different_cuts_are_retried_later_not_a_changed_dataset(data: bytes) -> None:  # noqa: F811
    report, gets = gate(data, [unframed(data[:len(data) // 2]), unframed(data[:len(data) // 3])])
    assert len(gets) == 2
    message = unavailable_not_changed(report)
    assert message.startswith(f"MLflow GET {ARTIFACT}: two reads") and "cut short" in message, message
    assert f"({len(data) // 2} and {len(data) // 3} bytes)" in message, message


@pytest.mark.parametrize("framing", ["close", "length"])
def test_a_gzip_stream_cut_mid_way_is_a_download_that_broke_off(data: bytes, framing: str) -> None:  # noqa: F811
    whole = gzip.compress(data)
    answer = unframed if framing == "close" else with_length
    report, gets = gate(data, [answer(whole[:len(whole) // 2], "Content-Encoding: gzip")])
    message = unavailable_not_changed(report)
    assert "gzip body ended before its compressed stream did: the download broke off" in message, message
    assert b"accept-encoding: gzip, deflate\r\n" in gets[0].lower()  # no coding the gate cannot check is asked for


def test_the_same_other_data_twice_is_the_changed_dataset(data: bytes) -> None:  # noqa: F811
    changed = data.replace(b"nsfw", b"NSFW", 1)
    report, gets = gate(data, [unframed(changed)])
    assert len(gets) == 2 and report.outcome is Outcome.FAIL and report.error is None, report.reason
    assert f"({len(changed)} bytes); the data were changed" in report.reason, report.reason


def test_framed_other_data_is_the_changed_dataset_at_once(data: bytes) -> None:  # noqa: F811
    report, gets = gate(data, [with_length(data[:-10])])
    assert len(gets) == 1 and report.outcome is Outcome.FAIL and f"({len(data) - 10} bytes)" in report.reason


def test_whole_compressed_bodies_are_read(data: bytes) -> None:  # noqa: F811
    half = len(data) // 2
    for answer in (unframed(gzip.compress(data), "Content-Encoding: gzip"),
                   with_length(gzip.compress(data[:half]) + gzip.compress(data[half:]), "Content-Encoding: gzip")):
        report, gets = gate(data, [answer])
        assert report.outcome is Outcome.PASS and len(gets) == 1, report.reason
