"""Each batch's answer is capped by what its samples can need, and an answer past it is refused before it is decoded.

A tenant's candidate URL is the tenant's server: a flat 64 MiB cap let it make the operator decode ~16.7M floats
(~1 GiB of RSS) per batch. The cap is now 64 KiB plus 32 KiB a sample (a 1000-class score vector is ~23 KB)."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from aiohttp import web
from test_gate_runner import OneConfigMap, dataset, spec
from test_gate_support import CLASSES, endpoint, http_server, run

from controller.gate import DatasetSources, GateOptions, run_gate
from controller.gate.clients import BatchAnswer, InferenceClient, InferenceEndpoint, decode_json
from controller.verdict import Outcome

WIDE = tuple(f"class-{i}" for i in range(1000))
# ~8 MiB of "0.5,": far past a 4-sample batch's cap, far under the old flat 64 MiB.
FLOODED = b'{"predictions":[' + b"0.5," * (2 * 1024 * 1024) + b"0.5]}"


async def _predict(target: InferenceEndpoint, features: np.ndarray, classes: tuple[str, ...] = CLASSES,
                   **options: Any) -> BatchAnswer:
    async with aiohttp.ClientSession() as session:
        return await InferenceClient(target, session, classes, concurrency=1, retries=0, **options).predict(features)


def _streamed(body: bytes, with_length: bool) -> Any:
    """A handler sending body in 64 KiB writes (so the server itself holds little), with or without Content-Length."""
    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        if with_length:
            response.content_length = len(body)
        await response.prepare(request)
        try:
            for start in range(0, len(body), 64 * 1024):
                await response.write(body[start:start + 64 * 1024])
            await response.write_eof()
        except ConnectionError:  # the client hung up on an answer it refused
            pass
        return response

    return handler


@pytest.mark.parametrize("with_length", [True, False], ids=["content-length", "chunked"])
def test_an_answer_past_its_batch_cap_is_refused_unread_and_undecoded(with_length: bool,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    decoded: list[int] = []
    monkeypatch.setattr("controller.gate.clients.decode_json",
                        lambda payload: decoded.append(len(payload)) or decode_json(payload))

    async def scenario() -> tuple[BatchAnswer, int]:
        async with http_server(_streamed(FLOODED, with_length)) as url:
            tracemalloc.start()
            try:
                answer = await _predict(endpoint(url, "v1"), np.zeros((4, 4)))
                return answer, tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()

    answer, peak = run(scenario())
    assert answer.failure == "response too large" and answer.unavailable and answer.answered == 0
    assert answer.detail == f"over the {64 * 1024 + 4 * 64 * 1024:,} bytes allowed for 4 samples: not judged"
    assert decoded == [], "the oversized answer was decoded"
    assert peak < 2 * 1024 * 1024, f"{peak / 2**20:.1f} MiB held for a refused answer"


def _softmax_rows(count: int) -> np.ndarray:
    logits = np.random.default_rng(3).normal(scale=3, size=(count, len(WIDE)))
    scores = np.exp(logits - logits.max(axis=1, keepdims=True))
    return scores / scores.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("protocol", ["v1", "v2", "v2-with-logits"])
@pytest.mark.parametrize("values", ["softmax", "longest-floats"])
def test_a_realistic_1000_class_answer_for_128_samples_still_passes(protocol: str, values: str) -> None:
    scores = _softmax_rows(128)
    if values == "longest-floats":  # every score as long as a float64 gets in JSON (24 characters)
        scores = -2.2250738585072014e-308 * (1 + scores)
    rows = scores.tolist()  # Python floats, full precision, as a Python model server sends them
    if protocol == "v1":
        document: dict[str, Any] = {"predictions": rows}
    else:
        document = {"model_name": "imagenet-classifier", "model_version": "3", "id": "6f1c2a9e-3b7d-4c1e-9f0a",
                    "parameters": {"content_type": "np"},
                    "outputs": [{"name": "probabilities", "shape": [128, 1000], "datatype": "FP64",
                                 "parameters": {"content_type": "np"}, "data": scores.reshape(-1).tolist()},
                                {"name": "label", "shape": [128], "datatype": "INT64",
                                 "data": scores.argmax(axis=1).tolist()}]}
        if protocol == "v2-with-logits":  # a second score vector per sample, which the gate does not read
            document["outputs"].append({"name": "logits", "shape": [128, 1000], "datatype": "FP64",
                                        "data": (np.log(scores + 1e-300) * 1.000001).reshape(-1).tolist()})
        protocol = "v2"
    body = json.dumps(document).encode()  # the standard library's ", " separators: the larger form

    async def handler(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=body, content_type="application/json")

    async def scenario() -> BatchAnswer:
        async with http_server(handler) as url:
            return await _predict(endpoint(url, protocol, output_classes=WIDE), np.zeros((128, 4)), classes=WIDE)

    assert len(body) > 2_900_000
    answer = run(scenario())
    assert answer.failure is None and answer.answered == 128, (answer.failure, answer.detail, len(body))
    assert answer.predicted.tolist() == scores.argmax(axis=1).tolist()


def test_the_cap_scales_with_the_batch_and_the_model_and_never_passes_the_ceiling() -> None:
    async def caps() -> list[int]:
        async with aiohttp.ClientSession() as session:
            default = InferenceClient(endpoint("http://x", "v1"), session, CLASSES)
            huge = InferenceClient(endpoint("http://x", "v1", output_classes=tuple(map(str, range(21843)))),
                                   session, CLASSES)
            low = InferenceClient(endpoint("http://x", "v1"), session, CLASSES, max_response_bytes=100_000)
            return [default.response_cap(1), default.response_cap(128), huge.response_cap(1),
                    default.response_cap(10**6), low.response_cap(128)]

    assert run(caps()) == [128 * 1024, 64 * 1024 + 128 * 64 * 1024, 64 * 1024 + 21843 * 64, 64 * 1024 * 1024,
                           100_000]


def test_a_padded_answer_is_not_judged_the_gate_never_passes_nor_fails_on_it(tmp_path: Path) -> None:
    """Right predictions in an answer past the cap: refused, so the gate cannot pass on them; nor does it fail (and
    reject) the model, whose answer may be legal (several outputs): inconclusive, saying why."""
    path, sha = dataset(tmp_path, count=32)

    async def padded(request: web.Request) -> web.Response:
        tensor = json.loads(await request.read())["inputs"][0]
        features = np.asarray(tensor["data"]).reshape(tensor["shape"])
        labels = [CLASSES[i] for i in features[:, :3].argmax(axis=1)]  # all right: the identity model's answers
        return web.json_response({"outputs": [{"name": "label", "shape": [len(labels)], "datatype": "BYTES",
                                               "data": labels}], "padding": "x" * (4 * 1024 * 1024)})

    async def scenario() -> Any:
        async with http_server(padded) as url:
            return await run_gate(spec(sha), endpoint(url), None, namespace="team-a",
                                  sources=DatasetSources(config_maps=OneConfigMap(path)),
                                  options=GateOptions(batch_size=16, retries=0))

    report = run(scenario())
    assert report.outcome is Outcome.INCONCLUSIVE, report.reason
    assert "response too large" in json.dumps(report.status)
    assert f"over the {64 * 1024 + 16 * 64 * 1024:,} bytes allowed for 16 samples: not judged" in json.dumps(
        report.evidence)


def test_an_answer_of_more_values_than_its_batch_can_need_is_refused_undecoded(monkeypatch: pytest.MonkeyPatch) -> None:
    """4M one-digit values fit a 128-sample batch's byte cap; decoding four such answers held the GIL ~0.9 s."""
    decoded: list[int] = []
    monkeypatch.setattr("controller.gate.clients.decode_json",
                        lambda payload: decoded.append(len(payload)) or decode_json(payload))

    async def read(payload: bytes) -> BatchAnswer:
        async with aiohttp.ClientSession() as session:
            client = InferenceClient(endpoint("http://x", "v2"), session, CLASSES)
            assert len(payload) <= client.response_cap(128)
            return client.read_answer(payload, 128)

    allowed = 4096 + 128 * (4096 + 4 * len(CLASSES))
    flood = (b'{"outputs":[{"name":"o","datatype":"INT64","shape":[128,%d],"data":[' % (allowed // 128)
             + b",".join([b"1"] * (allowed // 128 * 128 + 128)) + b"]}]}")
    answer = run(read(flood))
    assert answer.failure == "response too large" and answer.unavailable and answer.answered == 0
    assert answer.detail == f"{flood.count(b','):,} values, over the {allowed:,} allowed for 128 samples: not judged"
    assert decoded == []
    labels = [CLASSES[i % len(CLASSES)] for i in range(128)]  # within the cap: read as ever
    usable = json.dumps({"outputs": [{"name": "label", "shape": [128], "datatype": "BYTES", "data": labels}]})
    assert run(read(usable.encode())).answered == 128 and len(decoded) == 1
