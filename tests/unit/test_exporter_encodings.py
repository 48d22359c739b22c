"""Bodies as model servers and loggers really send them: compressed, in the V2 binary tensor data extension, as a
structured event's data_base64, Seldon's feedback events; and how much of the exporter they may take."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import struct
import threading
import time
import zlib
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from test_exporter_memory import most_bodies_read_at_once

from controller.exporter.events import DecodeOptions, MalformedEvent, may_inflate, parse_cloudevent, predicted_classes
from controller.exporter.server import PredictionExporter

NAMES = DecodeOptions(class_names=("safe", "nsfw"))
THREE = DecodeOptions(class_names=("safe", "suggestive", "nsfw"))
RESPONSE = "org.kubeflow.serving.inference.response"
V2 = {"model_name": "nsfw", "model_version": "1",
      "outputs": [{"name": "probs", "datatype": "FP32", "shape": [2, 3], "data": [0.1, 0.1, 0.8, 0.7, 0.2, 0.1]}]}


def headers(event_type: str = RESPONSE, event_id: str = "e1", **more: str) -> dict[str, str]:
    """As KServe's agent sends a binary-mode event (and Seldon's executor, with its own types)."""
    return {"Ce-Id": event_id, "Ce-Type": event_type, "Ce-Specversion": "1.0", "Ce-Source": "http://localhost:9081/",
            "Content-Type": "application/json", "Ce-Inferenceservicename": "nsfw", "Ce-Namespace": "moderation", **more}


def sample(exporter: PredictionExporter, name: str, **labels: str) -> float | None:
    return exporter.metrics.registry.get_sample_value(name, labels)


def malformed(exporter: PredictionExporter, reason: str) -> float | None:
    return sample(exporter, "modelrollout_exporter_malformed_events_total", reason=reason)


def counted(exporter: PredictionExporter, cls: str) -> float | None:
    return sample(exporter, "modelrollout_predictions_total", namespace="moderation", inference_service="nsfw",
                  variant="", model_version="1", **{"class": cls})


def binary(outputs: list[tuple[dict, bytes]], **header: object) -> tuple[bytes, int]:
    """A V2 response in the binary tensor data extension, and its JSON header's length."""
    described = [{**output, "parameters": {"binary_data_size": len(raw)}} for output, raw in outputs]
    head = json.dumps({"model_name": "nsfw", **header, "outputs": described}).encode()
    return head + b"".join(raw for _, raw in outputs), len(head)


def v2_classes(body: bytes, options: DecodeOptions, **more: str) -> tuple[str, ...]:
    event = parse_cloudevent(headers(**more), body, max_bytes=4 * 1024 * 1024)
    return predicted_classes(event.data, options)


# 1. A compressed body takes a read slot, whatever its Content-Length.

def test_a_compressed_body_takes_a_read_slot_whatever_its_length(monkeypatch: pytest.MonkeyPatch) -> None:
    """aiohttp inflates a Content-Encoding itself, up to the event size: a 4 KiB gzip body is 4 MiB read. Two slow
    senders of one each, one slot: one is read (408 once too slow), the other waits and is answered 503."""
    exporter = PredictionExporter(THREE, body_read_slots=1, body_wait_seconds=0.3, body_read_seconds=1.0)
    most = most_bodies_read_at_once(monkeypatch)
    compressed = gzip.compress(b'{"predictions": ["' + b"a" * 1024 * 1024 + b'"]}')
    assert len(compressed) < 64 * 1024
    head = (f"POST /?model_version=1 HTTP/1.1\r\nHost: x\r\nce-id: a\r\nce-type: {RESPONSE}\r\nce-specversion: 1.0\r\n"
            f"Content-Type: application/json\r\nContent-Encoding: gzip\r\nContent-Length: {len(compressed)}\r\n\r\n")

    async def slow(port: int) -> int:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(head.encode() + compressed[:-8])  # the end held back
            return int((await asyncio.wait_for(reader.readline(), 5)).split()[1])
        finally:
            writer.close()

    async def steps() -> tuple[list[int], int]:
        async with TestClient(TestServer(exporter.app(), host="127.0.0.1")) as client:
            senders = asyncio.gather(slow(client.port), slow(client.port))
            await asyncio.sleep(0.1)
            # An ordinary small event still takes no slot.
            meanwhile = await client.post("/?model_version=1", data=b'{"predictions": ["nsfw"]}', headers=headers())
            return sorted(await senders), meanwhile.status

    assert asyncio.run(steps()) == ([408, 503], 202)
    assert most[0] == 2  # the slot's compressed body, and the small event beside it
    assert (malformed(exporter, "TooSlow"), malformed(exporter, "Busy")) == (1, 1)


def test_an_identity_content_encoding_is_no_compression() -> None:
    exporter = PredictionExporter(NAMES, body_read_slots=0, body_wait_seconds=0.1)

    async def post() -> int:
        async with TestClient(TestServer(exporter.app(), host="127.0.0.1")) as client:
            response = await client.post("/?model_version=1", data=b'{"predictions": ["nsfw"]}',
                                         headers={**headers(), "Content-Encoding": "identity"})
            return response.status

    assert asyncio.run(post()) == 202  # no slot to take, and none needed


# 2a. A response body the model server compressed (KServe's agent logs the bytes it wrote).

@pytest.mark.parametrize("compress", [gzip.compress, zlib.compress], ids=["gzip", "zlib"])
def test_a_compressed_response_body_is_inflated_and_counted(compress: object) -> None:
    exporter = PredictionExporter(THREE)
    body = compress(json.dumps(V2).encode())  # type: ignore[operator]
    assert exporter.handle(headers(), body, "model_version=1") == "counted"
    assert counted(exporter, "nsfw") == 1 and counted(exporter, "safe") == 1


def test_a_compressed_body_is_inflated_to_the_event_size_at_most() -> None:
    """A zip bomb: 8 MiB of JSON in ~8 KiB is dropped as TooLarge, never inflated whole."""
    bomb = gzip.compress(b'{"predictions": ["' + b"a" * 8 * 1024 * 1024 + b'"]}')
    assert len(bomb) < 64 * 1024
    with pytest.raises(MalformedEvent) as refused:
        parse_cloudevent(headers(), bomb, max_bytes=4 * 1024 * 1024)
    assert refused.value.reason == "TooLarge"
    exporter = PredictionExporter(THREE, max_event_bytes=1024)
    assert exporter.handle(headers(), gzip.compress(json.dumps(V2).encode() + b" " * 2000), "") == "malformed"
    assert malformed(exporter, "TooLarge") == 1


@pytest.mark.parametrize("body", [gzip.compress(json.dumps(V2).encode())[:-6],  # cut short
                                  gzip.compress(json.dumps(V2).encode()) + b"more",
                                  b"\x1f\x8b" + b"not gzip at all"])
def test_a_broken_compressed_body_is_not_json(body: bytes) -> None:
    exporter = PredictionExporter(THREE)
    assert exporter.handle(headers(), body, "model_version=1") == "malformed"
    assert malformed(exporter, "NotJSON") == 1


# 2b. The V2 binary tensor data extension (Triton's default with tritonclient).

@pytest.mark.parametrize(("output", "raw", "options", "expected"), [
    ({"name": "probs", "datatype": "FP32", "shape": [2, 3]}, struct.pack("<6f", .1, .1, .8, .7, .2, .1), THREE,
     ("nsfw", "safe")),
    ({"name": "probs", "datatype": "FP64", "shape": [1, 2]}, struct.pack("<2d", .3, .7), NAMES, ("nsfw",)),
    ({"name": "probs", "datatype": "FP16", "shape": [1, 2]}, struct.pack("<2e", .9, .1), NAMES, ("safe",)),
    ({"name": "cls", "datatype": "INT64", "shape": [3]}, struct.pack("<3q", 1, 0, 1), NAMES, ("nsfw", "safe", "nsfw")),
    ({"name": "cls", "datatype": "UINT8", "shape": [2, 1]}, bytes([0, 1]), NAMES, ("safe", "nsfw")),
    ({"name": "score", "datatype": "FP32", "shape": [2, 1]}, struct.pack("<2f", .9, .1), NAMES, ("nsfw", "safe")),
    ({"name": "label", "datatype": "BYTES", "shape": [2]},
     struct.pack("<I", 4) + b"safe" + struct.pack("<I", 4) + b"nsfw", DecodeOptions(), ("safe", "nsfw")),
], ids=["FP32-scores", "FP64-scores", "FP16-scores", "INT64-indexes", "UINT8-indexes", "FP32-one-score", "BYTES"])
def test_binary_tensor_outputs_are_read_by_their_datatype(output: dict, raw: bytes, options: DecodeOptions,
                                                          expected: tuple[str, ...]) -> None:
    body, length = binary([(output, raw)], model_version="1")
    assert v2_classes(body, options) == expected
    # The same when the header's length is given (Triton's Inference-Header-Content-Length).
    assert v2_classes(body, options, **{"Inference-Header-Content-Length": str(length)}) == expected


def test_the_chosen_binary_output_is_found_after_the_others() -> None:
    """Outputs' bytes follow in the outputs' order; a JSON output between them takes none, and an output the
    exporter does not read is never decoded (its datatype may be one it cannot)."""
    embedding = ({"name": "embedding", "datatype": "BF16", "shape": [1, 3]}, b"\x00" * 6)
    probs = ({"name": "probs", "datatype": "FP32", "shape": [1, 2]}, struct.pack("<2f", .2, .8))
    body, _ = binary([embedding, probs], model_name="modèle")  # not ASCII: the header's length is in bytes
    header_end = body.index(b"\x00" * 6)
    header = json.loads(body[:header_end])
    header["outputs"].insert(1, {"name": "json", "datatype": "INT64", "shape": [1], "data": [0]})
    body = json.dumps(header, ensure_ascii=False).encode() + body[header_end:]
    assert v2_classes(body, DecodeOptions(NAMES.class_names, v2_output="probs")) == ("nsfw",)
    assert v2_classes(body, DecodeOptions(NAMES.class_names, v2_output="json")) == ("safe",)
    with pytest.raises(MalformedEvent) as refused:
        v2_classes(body, DecodeOptions(NAMES.class_names, v2_output="embedding"))
    assert refused.value.reason == "UnsupportedDatatype" and "BF16" in str(refused.value)


@pytest.mark.parametrize(("body", "extra", "reason"), [
    (binary([({"name": "p", "datatype": "FP32", "shape": [1, 2]}, b"\x00" * 8)])[0] + b"\x00", {}, "BadTensor"),
    (binary([({"name": "p", "datatype": "FP32", "shape": [1, 2]}, b"\x00" * 7)])[0], {}, "BadTensor"),
    (binary([({"name": "p", "datatype": "BYTES", "shape": [1]}, struct.pack("<I", 9) + b"safe")])[0], {},
     "BadTensor"),
    (binary([({"name": "p", "datatype": "FP32", "shape": [1, 2]}, b"\x00" * 8)])[0],
     {"Inference-Header-Content-Length": "100000"}, "BadTensor"),
    (binary([({"name": "p", "datatype": "FP32", "shape": [1, 2]}, b"\x00" * 8)])[0],
     {"Inference-Header-Content-Length": "\N{SUPERSCRIPT TWO}"}, "BadTensor"),
    (json.dumps(V2).encode() + b"\x00\x01", {}, "NotJSON"),  # binary data no output claims
    (binary([({"name": "p", "datatype": "BOOL", "shape": [2]}, b"\x01\x00")])[0], {}, "BadPredictions"),
], ids=["bytes-left-over", "not-whole-values", "BYTES-element-too-long", "header-length-past-body",
        "header-length-no-number", "binary-data-no-output-claims", "BOOL-is-no-class"])
def test_a_binary_tensor_body_that_does_not_add_up_is_refused(body: bytes, extra: dict, reason: str) -> None:
    with pytest.raises(MalformedEvent) as refused:
        v2_classes(body, NAMES, **extra)
    assert refused.value.reason == reason


def test_a_compressed_binary_tensor_response_is_counted_over_http() -> None:
    exporter = PredictionExporter(THREE)
    body, _ = binary([({"name": "probs", "datatype": "FP32", "shape": [2, 3]},
                       struct.pack("<6f", .1, .1, .8, .7, .2, .1))])

    async def post() -> tuple[int, dict]:
        async with TestClient(TestServer(exporter.app(), host="127.0.0.1")) as client:
            response = await client.post("/?model_version=1", data=gzip.compress(body),
                                         headers={**headers(), "Content-Type": "application/octet-stream"})
            return response.status, await response.json()

    assert asyncio.run(post()) == (202, {"outcome": "counted"})
    assert counted(exporter, "nsfw") == 1 and counted(exporter, "safe") == 1


# 3. A large event is decoded off the event loop: /metrics answers meanwhile.

def test_metrics_and_small_events_are_answered_while_a_large_event_is_decoded() -> None:
    """A 4 MiB response of one row of scores per prediction takes seconds to decode: on the event loop, /metrics
    (and Prometheus' scrape, 10 s timeout) and every other team's events waited for it."""
    exporter = PredictionExporter(THREE)
    body = b'{"predictions": [' + b",".join([b"[0,0,1]"] * 520_000) + b"]}"
    assert len(body) <= exporter.max_event_bytes

    async def steps() -> tuple[float, bool, dict, dict]:
        async with TestClient(TestServer(exporter.app(), host="127.0.0.1")) as client:
            event = asyncio.create_task(client.post("/?model_version=1", data=body, headers=headers()))
            await asyncio.sleep(0.3)  # the body is read and being decoded (or, on the event loop, holds it)
            started = time.perf_counter()
            scrape = await client.get("/metrics")
            assert scrape.status == 200
            small = await client.post("/?model_version=1", data=b'{"predictions": ["safe"]}',
                                      headers={**headers(event_id="e2"), "Ce-Namespace": "payments"})
            took, pending = time.perf_counter() - started, not event.done()
            return took, pending, await small.json(), await (await event).json()

    started = time.perf_counter()
    took, pending, small, large = asyncio.run(steps())
    assert small == large == {"outcome": "counted"}
    # Both answered within a second, before the large event was: they did not wait for its decoding.
    assert pending and took < 1.0, (pending, took, time.perf_counter() - started)
    assert counted(exporter, "nsfw") == 520_000


# 5. A structured event's data_base64.

def test_a_structured_events_data_base64_is_read_like_a_binary_events_body() -> None:
    exporter = PredictionExporter(THREE)
    event = {"specversion": "1.0", "id": "s1", "type": RESPONSE, "source": "x", "namespace": "moderation",
             "inferenceservicename": "nsfw", "datacontenttype": "application/json"}
    structured = {"Content-Type": "application/cloudevents+json"}
    for i, data in enumerate((json.dumps(V2).encode(), gzip.compress(json.dumps(V2).encode()))):
        body = json.dumps({**event, "id": f"s{i}", "data_base64": base64.b64encode(data).decode()}).encode()
        assert exporter.handle(structured, body, "model_version=1") == "counted"
    assert counted(exporter, "nsfw") == 2
    assert exporter.handle(structured, json.dumps({**event, "data_base64": "not base64!"}).encode(), "") == "malformed"
    assert malformed(exporter, "NotCloudEvent") == 1
    # A request's payload is never read, whatever it holds.
    request = {**event, "type": "org.kubeflow.serving.inference.request", "data_base64": "iVBORw0KGgo="}  # a PNG
    assert exporter.handle(structured, json.dumps(request).encode(), "") == "request"


# 6. Seldon's feedback events.

def test_a_seldon_feedback_event_is_answered_and_counted_as_ignored() -> None:
    exporter = PredictionExporter(THREE)
    feedback = {**headers("io.seldon.serving.feedback"), "Ce-Modelid": "classifier", "Ce-Endpoint": "main"}

    async def post() -> tuple[int, dict]:
        async with TestClient(TestServer(exporter.app(), host="127.0.0.1")) as client:
            response = await client.post("/?model_version=1", json={"request": {}, "reward": 1}, headers=feedback)
            return response.status, await response.json()

    assert asyncio.run(post()) == (202, {"outcome": "ignored"})
    assert sample(exporter, "modelrollout_exporter_events_total", outcome="ignored") == 1
    assert not sample(exporter, "modelrollout_exporter_events_total", outcome="malformed")


def test_only_a_body_that_cannot_grow_is_decoded_on_the_event_loop() -> None:
    """A small body is decoded on the event loop, unless decoding it may read more than its size."""
    plain = json.dumps(V2).encode()
    assert not may_inflate(headers(), plain)
    assert may_inflate(headers(), gzip.compress(plain)) and may_inflate(headers(), zlib.compress(plain))
    structured = {"Content-Type": "application/cloudevents+json"}
    assert not may_inflate(structured, plain)  # its data is read as it is: another team's event waits for no turn
    assert may_inflate(structured, b'{"data_base64": "H4sI"}')  # may be gzip
    assert may_inflate(structured, b'{"data\\u005fbase64": "H4sI"}')  # the same key, spelt with an escape
    # An escape elsewhere (Go's encoding/json writes "&" in a source URI as \u0026) takes no slot and no turn.
    assert not may_inflate(structured, b'{"source": "http://x?a=1\\u0026b=2", "data": {"predictions": [0]}}')


def binary_body(datatype: str, shape: list[int], raw: bytes) -> bytes:
    """A V2 response in the binary tensor data extension: its JSON header, then the output's bytes."""
    header = json.dumps({"outputs": [{"name": "probs", "datatype": datatype, "shape": shape,
                                      "parameters": {"binary_data_size": len(raw)}}]}).encode()
    return header + raw


def test_a_few_kib_of_gzip_that_inflate_to_millions_of_values_are_too_large_not_half_a_gib_of_rows() -> None:
    """4 MiB of one-byte INT8 values in [n, 1] gzip to 4 KiB; read as a Python row list each, one event took the
    exporter to ~500 MiB (256Mi limit). The values are counted before any is read."""
    exporter = PredictionExporter(THREE)
    n = 4 * 1024 * 1024 - 200
    bomb = gzip.compress(binary_body("INT8", [n, 1], bytes(n)), 9)
    assert len(bomb) < 8 * 1024
    assert exporter.handle(headers(), bomb, "model_version=1") == "malformed"
    assert sample(exporter, "modelrollout_exporter_malformed_events_total", reason="TooLarge") == 1
    # One column within the bounds: each row is its value (class indices 2, 0, 2).
    assert exporter.handle(headers(event_id="e2"), binary_body("INT32", [3, 1], struct.pack("<3i", 2, 0, 2)),
                           "model_version=1") == "counted"
    assert sample(exporter, "modelrollout_predictions_total", namespace="moderation", inference_service="nsfw",
                  variant="", model_version="1", **{"class": "nsfw"}) == 2


def test_a_body_waiting_for_its_decoding_turn_keeps_its_read_slot(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bodies read but not yet decoded (one at a time) are held in memory: each keeps a read slot, so no more than
    the slots wait, and a sender past them is answered Busy. Before, every read body waited, 100 senders ~540 MiB."""
    exporter = PredictionExporter(THREE, body_read_slots=1, body_wait_seconds=0.3)
    decoding, release = threading.Event(), threading.Event()
    original = exporter.handle_with

    async def slow(run: Any, *args: Any) -> str:
        decoding.set()
        await asyncio.to_thread(release.wait, 5)
        return await original(run, *args)

    monkeypatch.setattr(exporter, "handle_with", slow)
    large = json.dumps({"predictions": ["safe"] * 20_000}).encode()
    assert len(large) > 64 * 1024

    async def steps() -> list[int]:
        async with TestClient(TestServer(exporter.app(), host="127.0.0.1")) as client:
            first = asyncio.create_task(client.post("/?model_version=1", data=large, headers=headers()))
            await asyncio.to_thread(decoding.wait, 5)
            second = await client.post("/?model_version=1", data=large, headers=headers(event_id="e2"))
            release.set()
            return [(await first).status, second.status]

    assert asyncio.run(steps()) == [202, 503]
    assert sample(exporter, "modelrollout_exporter_malformed_events_total", reason="Busy") == 1


def test_four_mib_of_nested_arrays_are_too_large_before_they_are_built() -> None:
    """15 KiB of gzip inflate to 4 MiB of "[[[...]]]" rows: each "[" a Python list of ~88 bytes, ~240 MiB before the
    event could be refused (256Mi limit). The arrays and objects are counted first."""
    exporter = PredictionExporter(THREE)
    row = b"[" * 400 + b"]" * 400
    body = b'{"predictions": [' + b",".join([row] * (4 * 1024 * 1024 // (len(row) + 1) - 1)) + b"]}"
    bomb = gzip.compress(body, 9)
    assert len(body) <= exporter.max_event_bytes and len(bomb) < 32 * 1024
    assert exporter.handle(headers(), bomb, "model_version=1") == "malformed"
    assert sample(exporter, "modelrollout_exporter_malformed_events_total", reason="TooLarge") == 1
