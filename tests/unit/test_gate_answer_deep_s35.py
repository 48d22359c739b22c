"""An answer nested deeper than the JSON parser goes is the model server's garbage whether its end is framed or only the
connection's close marks it (review s34r3): it was "not JSON" (the model's fault) framed, but "answer cut short"
(unavailable, retried) unframed. A real socket server on 127.0.0.1 answers each request as the test says."""

from __future__ import annotations

import asyncio

import aiohttp
import numpy as np
import pytest
from test_gate_support import run

from controller.gate.clients import CUT_ANSWER, InferenceClient, InferenceEndpoint, InferenceProtocol

DEEP = b"[" * 3000 + b"]" * 3000
SAMPLES = 100


def answer_with(body: bytes, framed: bool) -> bytes:
    length = f"Content-Length: {len(body)}\r\n" if framed else ""
    return (f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n{length}Connection: close\r\n\r\n").encode() + body


async def predict_against(answer: bytes) -> tuple[str | None, bool, int]:
    """(the batch's failure, unavailable?, requests the server got) for a client with one retry."""
    requests = [0]

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(int(v) for k, _, v in (line.partition(b":") for line in head.split(b"\r\n"))
                      if k.strip().lower() == b"content-length")
        await reader.readexactly(length)
        requests[0] += 1
        writer.write(answer)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with aiohttp.ClientSession() as session:
            endpoint = InferenceEndpoint(f"http://127.0.0.1:{port}", "nsfw", InferenceProtocol.V2)
            client = InferenceClient(endpoint, session, ["safe", "nsfw", "edge"], retries=1)
            result = await client.predict(np.zeros((SAMPLES, 4)))
        return result.failure, result.unavailable, requests[0]
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("framed", [True, False], ids=["content-length", "ended-by-close"])
def test_an_answer_nested_too_deep_is_the_models_garbage_however_its_end_is_marked(framed: bool) -> None:
    failure, unavailable, requests = run(predict_against(answer_with(DEEP, framed)))
    assert (failure, unavailable, requests) == ("not JSON", False, 1)


def test_a_shallow_answer_cut_short_is_still_asked_again_then_unavailable() -> None:
    """The control: what the close-ended path is for stays so."""
    failure, unavailable, requests = run(predict_against(answer_with(b'{"outputs": [{"name": "probabilities", "d',
                                                                     framed=False)))
    assert (failure, unavailable, requests) == (CUT_ANSWER, True, 2)
