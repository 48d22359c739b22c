"""A model server's answer cannot stall the operator's event loop, which every other rollout's gate and rollback share.

8 MiB of nested empty lists (within the byte cap for 128 samples) cost ~1.9 s of GIL-held decoding per batch; such an
answer is now refused unread, and what is read is decoded and interpreted in a worker thread."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

import aiohttp
import numpy as np
import pytest
from aiohttp import web
from test_gate_support import CLASSES, endpoint, http_server, run

from controller.gate.clients import TOO_LARGE, BatchAnswer, InferenceClient, decode_json

COUNT = 128
# Nested empty lists just under the byte cap of a 128-sample batch, one row a sample.
_ROW = b"[" + b"[]," * ((64 * 1024 + COUNT * 64 * 1024 - 300) // COUNT // 3 - 1) + b"[]]"
NESTED = b'{"predictions":[' + b",".join([_ROW] * COUNT) + b"]}"


async def _heartbeat(stop: asyncio.Event, lags: list[float]) -> None:
    while not stop.is_set():
        start = time.perf_counter()
        await asyncio.sleep(0.01)
        lags.append(time.perf_counter() - start - 0.01)


def _answering(body: bytes) -> Any:
    async def handler(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=body, content_type="application/json")

    return handler


async def _predict(url: str, protocol: str, features: np.ndarray, **options: Any) -> BatchAnswer:
    async with aiohttp.ClientSession() as session:
        client = InferenceClient(endpoint(url, protocol, **options), session, CLASSES, concurrency=1, retries=0)
        return await client.predict(features)


def test_an_answer_of_nested_empty_lists_is_refused_undecoded_and_the_loop_keeps_running(
        monkeypatch: pytest.MonkeyPatch) -> None:
    decoded: list[int] = []
    monkeypatch.setattr("controller.gate.clients.decode_json",
                        lambda payload: decoded.append(len(payload)) or decode_json(payload))

    async def scenario() -> tuple[BatchAnswer, float]:
        async with http_server(_answering(NESTED)) as url:
            stop, lags = asyncio.Event(), [0.0]
            beat = asyncio.create_task(_heartbeat(stop, lags))
            answer = await _predict(url, "v1", np.zeros((COUNT, 4)))
            stop.set()
            await beat
            return answer, max(lags)

    assert len(NESTED) <= 64 * 1024 + COUNT * 64 * 1024
    answer, lag = run(scenario())
    assert answer.failure == TOO_LARGE and answer.unavailable and answer.answered == 0
    containers, allowed = NESTED.count(b"[") + NESTED.count(b"{"), 1024 + COUNT * (1024 + len(CLASSES))
    assert answer.detail == f"{containers:,} lists or objects, over the {allowed:,} allowed for {COUNT} samples: " \
                            "not judged"
    assert decoded == [], "the answer was decoded"
    assert lag < 1.0, f"the event loop stalled for {lag:.2f} s"


def test_answers_are_decoded_and_read_off_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[int] = []
    monkeypatch.setattr("controller.gate.clients.decode_json",
                        lambda payload: threads.append(threading.get_ident()) or decode_json(payload))

    async def scenario() -> BatchAnswer:
        async with http_server(_answering(b'{"predictions": ["safe", "suggestive", "nsfw"]}')) as url:
            return await _predict(url, "v1", np.zeros((3, 4)))

    answer = run(scenario())
    assert answer.failure is None and answer.predicted.tolist() == [0, 1, 2]
    assert threads and threading.get_ident() not in threads


def test_a_score_vector_written_one_value_a_list_is_still_read() -> None:
    # V2 data nested [[[p], [p], ...], ...] under shape [n, classes]: one list a value, within the allowance.
    wide = tuple(f"class-{i}" for i in range(1000))
    rows = [[[1.0 if j == i else 0.0] for j in range(len(wide))] for i in range(COUNT)]
    body = json.dumps({"outputs": [{"name": "p", "shape": [COUNT, len(wide)], "datatype": "FP32",
                                    "data": rows}]}).encode()

    async def scenario() -> BatchAnswer:
        async with aiohttp.ClientSession() as session, http_server(_answering(body)) as url:
            client = InferenceClient(endpoint(url, "v2", output_classes=wide), session, wide, retries=0)
            return await client.predict(np.zeros((COUNT, 4)))

    answer = run(scenario())
    assert answer.failure is None and answer.predicted.tolist() == list(range(COUNT))
