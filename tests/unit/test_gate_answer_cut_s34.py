"""An inference answer cut short where only the connection's close marks its end (no Content-Length, no chunking: an
HTTP/1.0-style server or proxy) is the transport's failure, retried like a reset connection and then unavailable
(INCONCLUSIVE): never the model's garbage ("not JSON"), which failed `candidate.responses` and rejected a clean
candidate (review s34gate finding 3). Real devstack model servers on 127.0.0.1; the candidate sits behind a TCP
relay that takes its answers' framing away and, on the requests the test names, passes half the answer and
closes, as a server dying mid-answer does."""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from pathlib import Path
from typing import Any

import pytest
from test_gate_support import run

from controller.devstack.model_server import (
    InProcessModelServer,
    ModelApp,
    demo_golden_samples,
    demo_models,
    write_demo_dataset,
)
from controller.gate.clients import InferenceEndpoint, InferenceProtocol
from controller.gate.runner import GateOptions, GateReport, evaluate_dataset_file
from controller.verdict import Outcome

THRESHOLDS = {"minAccuracy": 0.93, "maxAccuracyDrop": 0.02, "maxDisagreement": 0.01}
BATCH = 100
SAMPLES = 1200


def _length(head: bytes) -> int:
    fields = (line.partition(b":") for line in head.split(b"\r\n"))
    return next(int(value) for name, _, value in fields if name.strip().lower() == b"content-length")


async def relay(target_port: int, cut: Collection[int] | None) -> tuple[asyncio.Server, int, list[int]]:
    """A relay that sends every answer without Content-Length (its end is the close); answers to the requests
    numbered in `cut` (from 1; None: all) get half their body. Returns the server, its port, the request count."""
    served = [0]

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            body = await reader.readexactly(_length(head))
            served[0] += 1
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target_port)
            up_writer.write(head + body)
            await up_writer.drain()
            answer_head = await up_reader.readuntil(b"\r\n\r\n")
            answer = await up_reader.readexactly(_length(answer_head))
            up_writer.close()
            kept = [line for line in answer_head.split(b"\r\n")
                    if line and not line.lower().startswith((b"content-length", b"connection"))]
            if cut is None or served[0] in cut:
                answer = answer[:len(answer) // 2]
            writer.write(b"\r\n".join(kept) + b"\r\nConnection: close\r\n\r\n" + answer)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], served


def gate(tmp_path: Path, cut: Collection[int] | None, retries: int = 2) -> tuple[GateReport, int]:
    """The gate of the demo's clean candidate (behind the relay) against stable: (its report, requests relayed)."""
    async def scenario() -> tuple[GateReport, int]:
        path, sha = write_demo_dataset(tmp_path, demo_golden_samples(SAMPLES))
        models = demo_models()
        candidate = InProcessModelServer(ModelApp(models["clean"], "nsfw"))
        stable = InProcessModelServer(ModelApp(models["stable"], "nsfw"))
        await candidate.start()
        await stable.start()
        server, port, served = await relay(candidate.port, cut)
        try:
            report = await evaluate_dataset_file(
                path, {"uri": "configmap://golden/d", "sha256": sha, "thresholds": THRESHOLDS},
                InferenceEndpoint(f"http://127.0.0.1:{port}", "nsfw", InferenceProtocol.V2),
                InferenceEndpoint(stable.url, "nsfw", InferenceProtocol.V2),
                options=GateOptions(batch_size=BATCH, concurrency=1, retries=retries))
            return report, served[0]
        finally:
            server.close()
            await candidate.stop()
            await stable.stop()

    return run(scenario())


def responses(report: GateReport) -> dict[str, Any]:
    return report.status["candidate"]["responses"]


def test_whole_answers_ended_by_the_close_are_the_models_answers(tmp_path: Path) -> None:
    report, served = gate(tmp_path, cut=())
    assert report.outcome is Outcome.PASS and served == SAMPLES // BATCH, report.reason


def test_an_answer_cut_short_is_asked_again_not_counted_as_garbage(tmp_path: Path) -> None:
    report, served = gate(tmp_path, cut={3})
    assert report.outcome is Outcome.PASS, report.reason
    assert served == SAMPLES // BATCH + 1 and responses(report)["answered"] == SAMPLES, responses(report)


@pytest.mark.parametrize("retries", [0, 1])
def test_answers_cut_short_every_time_are_unavailable_never_the_models_fault(tmp_path: Path, retries: int) -> None:
    report, _ = gate(tmp_path, cut=None, retries=retries)
    assert report.outcome is Outcome.INCONCLUSIVE, report.reason
    assert "candidate.responses" not in report.status["failedChecks"], report.status["failedChecks"]
    by_reason = responses(report)["unansweredByReason"]
    assert by_reason and all(reason.startswith("unavailable: answer cut short") for reason in by_reason), by_reason
