"""Content-Encoding, which aiohttp decoded itself before the exporter's code, and binary tensor framing (review
s32exporter). The exporter is served as `exporter run` serves it (connections.serve).

1. A request event's payload is never read, but was drained with release(): aiohttp inflated a gzip one on the event
   loop, without a read slot (four senders of a 4 GiB bomb made /metrics time out). aiohttp's decoding is now off: it
   is drained as sent, like any other request payload, and never inflated.
2. A body whose Content-Encoding does not decode was answered 500, counted nowhere, with two tracebacks logged each
   time (br and zstd: 400 from aiohttp, uncounted, with a traceback). The exporter inflates a body itself, as it did
   one compressed without saying so: it is answered 400 and counted as NotJSON, with the rate-limited log line.
3. A binary tensor response whose framing is wrong (BadTensor, found while parse_cloudevent splits the body, before
   the model version is known) was dropped without counting as its version's unreadable answer.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import logging
import struct
import time
import zlib
from typing import Any

import pytest
from aiohttp import compression_utils

from controller.exporter.connections import serve
from controller.exporter.events import DecodeOptions
from controller.exporter.server import PredictionExporter

LOOPBACK = "127.0.0.1"
TWO = DecodeOptions(("safe", "nsfw"))
RESPONSE = "org.kubeflow.serving.inference.response"
REQUEST = "org.kubeflow.serving.inference.request"
MALFORMED = "modelrollout_exporter_malformed_events_total"
UNREADABLE = "modelrollout_unreadable_predictions_total"
IDENTITY = {"namespace": "moderation", "inference_service": "nsfw", "variant": "canary", "model_version": "7"}


def headers(event_type: str = RESPONSE, event_id: str = "e1", **more: str) -> dict[str, str]:
    """As KServe's agent sends a binary-mode event."""
    return {"Ce-Id": event_id, "Ce-Type": event_type, "Ce-Specversion": "1.0", "Ce-Source": "http://localhost:9081/",
            "Content-Type": "application/json", "Ce-Inferenceservicename": "nsfw", "Ce-Namespace": "moderation",
            **more}


def sample(exporter: PredictionExporter, name: str, **labels: str) -> float | None:
    return exporter.metrics.registry.get_sample_value(name, labels)


def gzip_of_zeros(mib: int) -> bytes:
    """A gzip body that inflates to `mib` MiB (about a thousandth of that sent)."""
    deflater = zlib.compressobj(9, zlib.DEFLATED, 31)
    chunk = b"\0" * (1 << 20)
    return b"".join(deflater.compress(chunk) for _ in range(mib)) + deflater.flush()


async def exchange(port: int, head: dict[str, str], body: bytes, *, length: int | None = None,
                   path: str = "/?variant=canary&model_version=7") -> tuple[int, dict[str, Any], bool, float]:
    """POST over a fresh connection (its body possibly short of `length`): the status, the JSON answer, whether the
    exporter closed the connection after it, and how long the answer took."""
    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    started = time.perf_counter()
    lines = [f"POST {path} HTTP/1.1", "Host: exporter", f"Content-Length: {len(body) if length is None else length}",
             *(f"{k}: {v}" for k, v in head.items())]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    try:
        status_line = await asyncio.wait_for(reader.readline(), 30)
        took = time.perf_counter() - started
        answer_headers: dict[str, str] = {}
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            answer_headers[name.strip().lower()] = value.strip()
        answer = await reader.readexactly(int(answer_headers["content-length"]))
        try:
            closed = await asyncio.wait_for(reader.read(1), 0.3) == b""
        except TimeoutError:
            closed = False  # kept open for the next request
    finally:
        writer.close()
    return int(status_line.split()[1]), json.loads(answer), closed, took


def served(exporter: PredictionExporter, steps: Any) -> Any:
    """steps(port) against the exporter served as `exporter run` serves it."""
    async def run() -> Any:
        stop, ready = asyncio.Event(), asyncio.get_running_loop().create_future()
        server = asyncio.create_task(serve(exporter.app(), LOOPBACK, 0, stop=stop,
                                           started=lambda cap, listening: ready.set_result(listening)))
        listening = await ready
        try:
            return await steps(listening.sockets[0].getsockname()[1])
        finally:
            stop.set()
            await server
    return asyncio.run(run())


# 1. A compressed request event is never inflated.

def aiohttp_inflation(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The sizes aiohttp's own decompressor inflates from here on (none, with its decoding off)."""
    inflated: list[int] = []
    decompress = compression_utils.ZLibDecompressor.decompress_sync

    def counting(self: Any, data: bytes, max_length: int = 0) -> bytes:
        out = decompress(self, data, max_length)
        inflated.append(len(out))
        return out

    monkeypatch.setattr(compression_utils.ZLibDecompressor, "decompress_sync", counting)
    return inflated


def test_a_compressed_request_events_payload_is_never_inflated(monkeypatch: pytest.MonkeyPatch) -> None:
    """256 MiB of zeros in 256 KiB of gzip: draining it inflated all of it on the event loop. Now none of it is, and
    the request is still remembered for its response, on a connection kept open."""
    inflated = aiohttp_inflation(monkeypatch)
    exporter = PredictionExporter(TWO)
    bomb = gzip_of_zeros(256)

    async def steps(port: int) -> tuple[Any, ...]:
        request = await exchange(port, {**headers(REQUEST, "r1"), "Content-Encoding": "gzip",
                                        "Content-Type": "application/octet-stream"}, bomb)
        # Its response, without identity headers of its own, borrows the request's.
        bare = {k: v for k, v in headers(RESPONSE, "r1").items()
                if k not in ("Ce-Namespace", "Ce-Inferenceservicename")}
        response = await exchange(port, bare, b'{"predictions": ["nsfw"]}', path="/")
        return request, response

    request, response = served(exporter, steps)
    assert request[:3] == (202, {"outcome": "request"}, False), request
    assert sum(inflated) == 0, f"{sum(inflated) / 2**20:.0f} MiB inflated of a payload never read"
    assert response[:2] == (202, {"outcome": "counted"}), response
    assert sample(exporter, "modelrollout_predictions_total", namespace="moderation", inference_service="nsfw",
                  variant="", model_version="unknown", **{"class": "nsfw"}) == 1


def test_metrics_are_answered_while_request_bombs_are_drained_and_none_is_inflated(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Four senders of a request event of 1 GiB of gzip each at once: none of it is inflated (aiohttp inflated it on
    the event loop: /metrics took seconds, then timed out), and a scrape made meanwhile is answered. Not timed: the
    bytes inflated say whether the loop was given to them."""
    inflated = aiohttp_inflation(monkeypatch)
    exporter = PredictionExporter(TWO)
    bomb = gzip_of_zeros(1024)

    async def steps(port: int) -> list[Any]:
        senders = [asyncio.create_task(exchange(port, {**headers(REQUEST, f"b{i}"), "Content-Encoding": "gzip"},
                                                bomb)) for i in range(4)]
        await asyncio.sleep(0.2)  # their bodies are on the way
        reader, writer = await asyncio.open_connection(LOOPBACK, port)
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: exporter\r\nConnection: close\r\n\r\n")
        scraped = await asyncio.wait_for(reader.read(), 30)
        writer.close()
        assert scraped.startswith(b"HTTP/1.1 200"), scraped[:80]
        return list(await asyncio.gather(*senders))

    answers = served(exporter, steps)
    assert [a[:2] for a in answers] == [(202, {"outcome": "request"})] * 4
    assert sum(inflated) == 0, f"{sum(inflated) / 2**20:.0f} MiB inflated of payloads never read"


# 2. A body whose Content-Encoding does not decode.

@pytest.mark.parametrize(("encoding", "body"), [
    ("gzip", b"\x1f\x8b definitely not gzip"),
    ("deflate", b"garbage"),
    ("gzip", b"\x1f\x8bnot gzip" + b"x" * (128 * 1024)),  # past SMALL_BODY_BYTES: read with a slot
    ("deflate", zlib.compress(b'{"predictions": ["nsfw"]}')[:-3]),  # cut short
    ("br", b"garbage"),  # aiohttp cannot decode these (no Brotli, no zstd): it answered 400 itself, uncounted
    ("zstd", b"garbage"),
], ids=["gzip", "deflate", "gzip-large", "deflate-cut", "br", "zstd"])
def test_a_body_whose_content_encoding_does_not_decode_is_not_json(
        encoding: str, body: bytes, caplog: pytest.LogCaptureFixture) -> None:
    exporter = PredictionExporter(TWO, body_read_slots=1)
    caplog.set_level(logging.DEBUG)

    async def steps(port: int) -> list[Any]:
        answers = [await exchange(port, {**headers(RESPONSE, f"g{i}"), "Content-Encoding": encoding}, body)
                   for i in range(5)]
        # The read slot was given back: a large readable event is still counted.
        large = b'{"predictions": [' + b",".join([b'"safe"'] * 20_000) + b"]}"
        answers.append(await exchange(port, headers(RESPONSE, "ok"), large))
        return answers

    answers = served(exporter, steps)
    assert [a[:2] for a in answers[:5]] == [(400, {"outcome": "malformed"})] * 5, answers
    assert answers[5][:2] == (202, {"outcome": "counted"})
    assert sample(exporter, MALFORMED, reason="NotJSON") == 5
    assert sample(exporter, "modelrollout_exporter_events_total", outcome="malformed") == 5
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "NotJSON" in r.getMessage()]
    assert len(warned) == 1, warned  # rate-limited, like every other drop reason


@pytest.mark.parametrize(("encoding", "body", "answer", "reason"), [
    ("gzip", gzip.compress(b'{"predictions": ["nsfw"]}'), (202, {"outcome": "counted"}), None),
    ("deflate", zlib.compress(b'{"predictions": ["nsfw"]}'), (202, {"outcome": "counted"}), None),
    ("gzip", gzip_of_zeros(8), (400, {"outcome": "malformed"}), "TooLarge"),  # inflated to 4 MiB at most, in a thread
], ids=["gzip", "deflate", "bomb"])
def test_a_body_whose_content_encoding_decodes_is_read(encoding: str, body: bytes, answer: tuple[int, dict],
                                                       reason: str | None) -> None:
    exporter = PredictionExporter(TWO)

    async def steps(port: int) -> Any:
        return await exchange(port, {**headers(), "Content-Encoding": encoding}, body)

    assert served(exporter, steps)[:2] == answer
    if reason is None:
        assert sample(exporter, "modelrollout_predictions_total", **IDENTITY, **{"class": "nsfw"}) == 1
    else:
        assert sample(exporter, MALFORMED, reason=reason) == 1


# 3. A binary tensor response whose framing is wrong is its model version's unreadable answer.

def framed(extra: bytes = b"", size: int = 8) -> bytes:
    header = json.dumps({"model_name": "nsfw", "outputs": [
        {"name": "p", "datatype": "FP32", "shape": [1, 2], "parameters": {"binary_data_size": size}}]}).encode()
    return header + struct.pack("<2f", .2, .8) + extra


@pytest.mark.parametrize(("body", "more"), [
    (framed(size=9), {}),  # a binary_data_size past the end of the data
    (framed(b"\0"), {}),  # bytes left after the outputs' binary data
    (framed(), {"Inference-Header-Content-Length": "100000"}),  # a header length past the body
    (framed(), {"Inference-Header-Content-Length": "\N{SUPERSCRIPT TWO}"}),  # no length
], ids=["size-past-end", "trailing-bytes", "header-length-past-body", "header-length-no-number"])
def test_a_binary_tensor_response_whose_framing_is_wrong_is_an_unreadable_answer(body: bytes,
                                                                                 more: dict[str, str]) -> None:
    exporter = PredictionExporter(TWO)
    query = "variant=canary&model_version=7"
    assert exporter.handle({**headers(), **more}, body, query) == "malformed"
    assert sample(exporter, UNREADABLE, **IDENTITY) == 1
    assert sample(exporter, MALFORMED, reason="BadTensor") == 1
    # A redelivery is the same answer: counted once.
    assert exporter.handle({**headers(), **more}, body, query) == "duplicate"
    assert sample(exporter, UNREADABLE, **IDENTITY) == 1
    # As a structured event's data_base64 too.
    structured = {"specversion": "1.0", "id": "s1", "source": "x", "type": RESPONSE, "namespace": "moderation",
                  "inferenceservicename": "nsfw", "data_base64": base64.b64encode(body).decode()}
    if not more:
        assert exporter.handle({"Content-Type": "application/cloudevents+json"}, json.dumps(structured).encode(),
                               query) == "malformed"
        assert sample(exporter, UNREADABLE, **IDENTITY) == 2


def test_a_framing_error_without_a_model_identity_is_still_dropped_uncounted() -> None:
    """Who answered is unknown: nothing to count it against (MissingIdentity, as for any other answer)."""
    exporter = PredictionExporter(TWO)
    anonymous = {k: v for k, v in headers().items() if k not in ("Ce-Namespace", "Ce-Inferenceservicename")}
    assert exporter.handle(anonymous, framed(b"\0"), "") == "malformed"
    assert sample(exporter, MALFORMED, reason="MissingIdentity") == 1
    assert sample(exporter, MALFORMED, reason="BadTensor") is None


# Review s32r2a of the change above: what aiohttp decoded before must still be read.

def structured(event_id: str, data: dict[str, Any]) -> bytes:
    return json.dumps({"specversion": "1.0", "id": event_id, "type": RESPONSE, "source": "http://localhost:9081/",
                       "namespace": "moderation", "inferenceservicename": "nsfw", "data": data}).encode()


def test_a_structured_event_compressed_with_a_content_encoding_is_counted() -> None:
    exporter = PredictionExporter(TWO)
    ce_json = {"Content-Type": "application/cloudevents+json"}

    async def steps(port: int) -> list[Any]:
        return [await exchange(port, {**ce_json, "Content-Encoding": "gzip"},
                               gzip.compress(structured("s1", {"predictions": ["nsfw", "safe"]}))),
                await exchange(port, {**ce_json, "Content-Encoding": "deflate"},
                               zlib.compress(structured("s2", {"predictions": ["nsfw"]})))]

    answers = served(exporter, steps)
    assert [a[:2] for a in answers] == [(202, {"outcome": "counted"})] * 2, answers  # was 400 NotJSON
    assert sample(exporter, "modelrollout_predictions_total", **IDENTITY, **{"class": "nsfw"}) == 2


def test_a_redelivery_compressed_anew_counts_once() -> None:
    """gzip writes the time into its header: a sender compressing each try sends other bytes for the same answer."""
    exporter = PredictionExporter(TWO)
    answer = b'{"predictions": ["nsfw", NaN]}'
    unreadable = b'{"predictions": [[NaN, 1.0]]}'

    async def steps(port: int) -> list[Any]:
        sent = []
        for event_id, body in (("d1", answer), ("d2", unreadable)):
            for attempt in range(3):
                copy = body if attempt == 0 else gzip.compress(body, mtime=attempt)
                head = headers(RESPONSE, event_id, **({"Content-Encoding": "gzip"} if attempt else {}))
                sent.append((await exchange(port, head, copy))[:2])
        return sent

    answers = served(exporter, steps)
    # An all-unreadable answer is 400 (malformed), its redeliveries duplicates.
    assert [a[1]["outcome"] for a in answers] == ["counted", "duplicate", "duplicate", "malformed", "duplicate",
                                                  "duplicate"], answers
    assert sample(exporter, "modelrollout_predictions_total", **IDENTITY, **{"class": "nsfw"}) == 1  # was 3
    assert sample(exporter, UNREADABLE, **IDENTITY) == 2  # one per answer (was 5)


def test_a_gzip_body_of_several_members_is_read_whole() -> None:
    exporter = PredictionExporter(TWO)
    body = b'{"predictions": ["nsfw", "safe", "nsfw"]}'
    members = gzip.compress(body[:10]) + gzip.compress(body[10:])

    async def steps(port: int) -> Any:
        return await exchange(port, {**headers(RESPONSE, "m1"), "Content-Encoding": "gzip"}, members)

    assert served(exporter, steps)[:2] == (202, {"outcome": "counted"})
    assert sample(exporter, "modelrollout_predictions_total", **IDENTITY, **{"class": "nsfw"}) == 2


def test_a_gzip_body_of_many_members_is_not_json_at_once() -> None:
    """Review s32final: each member costs a copy of the rest of the body, so 4 MiB of empty members took 16 s of the
    decoding worker and held every other sender's compressed events behind it."""
    from controller.exporter.events import MAX_GZIP_MEMBERS

    exporter = PredictionExporter(TWO)
    body = b'{"predictions": ["nsfw"]}'
    empty = gzip.compress(b"", mtime=0)
    many = gzip.compress(body) + empty * 200_000  # about 4 MiB
    few = gzip.compress(body) + empty * (MAX_GZIP_MEMBERS - 1)

    async def steps(port: int) -> list[Any]:
        return [await exchange(port, {**headers(RESPONSE, "many"), "Content-Encoding": "gzip"}, many),
                await exchange(port, {**headers(RESPONSE, "few"), "Content-Encoding": "gzip"}, few)]

    (many_answer, few_answer) = served(exporter, steps)
    assert many_answer[:2] == (400, {"outcome": "malformed"}), many_answer  # was counted, after 16 s
    assert sample(exporter, MALFORMED, reason="NotJSON") == 1
    assert few_answer[:2] == (202, {"outcome": "counted"}), few_answer
    assert sample(exporter, "modelrollout_predictions_total", **IDENTITY, **{"class": "nsfw"}) == 1
