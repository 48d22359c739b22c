"""The exporter's memory has a ceiling within its limit (256Mi): the prediction series are bounded in all (a render
holds little more than twice its text), and so are pending requests and the bodies read at once."""

from __future__ import annotations

import asyncio
import gc
import json
import tracemalloc
import uuid

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from controller.exporter.events import MAX_LABEL_LENGTH, DecodeOptions
from controller.exporter.server import (
    MAX_NAMESPACE_SERIES,
    MAX_TOTAL_SERIES,
    PREDICTIONS_METRIC,
    UNREADABLE_METRIC,
    PredictionExporter,
)

RENDER_BUDGET = 64 * 1024 * 1024


def most_bodies_read_at_once(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """A one-element list that holds the most request bodies aiohttp has read at the same time."""
    reading, most = [0], [0]
    original = web.BaseRequest.read

    async def read(self: web.BaseRequest) -> bytes:
        reading[0] += 1
        most[0] = max(most[0], reading[0])
        try:
            return await original(self)
        finally:
            reading[0] -= 1

    monkeypatch.setattr(web.BaseRequest, "read", read)
    return most


def label(prefix: str) -> str:
    """As long as a label may be, in characters of 4 bytes in UTF-8 (and 4 in a Python string): the longest text."""
    return prefix.ljust(MAX_LABEL_LENGTH, "\N{GRINNING FACE}")


def send(exporter: PredictionExporter, namespace: int, version: int, classes: list[str],
         service: str = label("s")) -> str:
    # Each its own event: one id delivered again is counted once.
    headers = {"Ce-Id": f"{namespace}-{version}-{uuid.uuid4()}", "Ce-Type": "org.kubeflow.serving.inference.response",
               "Ce-Specversion": "1.0", "Ce-Namespace": label(f"ns{namespace}-"), "Ce-Inferenceservicename": service}
    body = json.dumps({"predictions": classes}).encode()
    return exporter.handle(headers, body, "variant=canary&model_version=" + label(f"v{version}-"))


def fill(exporter: PredictionExporter) -> None:
    """Four namespaces, each 63 classes and an unreadable series for 24 model versions: each its share, and
    MAX_TOTAL_SERIES in all."""
    classes = [label(f"c{c}-") for c in range(63)]
    outcomes = [send(exporter, namespace, version, classes) for namespace in range(4) for version in range(24)]
    assert outcomes == ["counted"] * 96
    assert exporter._series(label("ns0-")) == MAX_NAMESPACE_SERIES == 24 * (63 + 1)
    assert exporter._series() == MAX_TOTAL_SERIES == 4 * 24 * (63 + 1)


def test_a_render_at_every_bound_with_the_longest_labels_stays_within_budget() -> None:
    exporter = PredictionExporter(DecodeOptions())
    fill(exporter)
    exporter.render()  # every series scraped once: the next render shows the counts
    gc.collect()
    tracemalloc.start()
    try:
        body = exporter.render()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < RENDER_BUDGET, (peak, len(body))
    text = body.decode()
    assert "_created" not in text  # a creation time for each series would double the text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    predictions, unreadable = families[PREDICTIONS_METRIC], families[UNREADABLE_METRIC]
    assert len(predictions.samples) == 4 * 24 * 63 and {s.value for s in predictions.samples} == {1.0}
    assert len(predictions.samples) + len(unreadable.samples) == MAX_TOTAL_SERIES
    assert text.count(f"# TYPE {PREDICTIONS_METRIC}_total ") == 1  # rendered in chunks, introduced once


def test_the_series_bound_refuses_the_next_identity_and_the_next_class() -> None:
    # Each identity has a series per class and one for its unreadable answers.
    exporter = PredictionExporter(DecodeOptions(), max_total_series=9, max_namespace_series=9)
    assert send(exporter, 0, 1, ["safe", "nsfw"], "svc") == "counted"
    assert send(exporter, 0, 2, ["safe"], "svc") == "counted"  # and nsfw at 0: 6 series
    assert send(exporter, 1, 1, ["safe", "nsfw"], "svc") == "counted"  # 9
    assert send(exporter, 0, 3, ["safe"], "svc") == "malformed"  # a version would bring three
    assert send(exporter, 0, 1, ["safe", "suggestive"], "svc") == "malformed"  # a class, one per version
    assert send(exporter, 0, 1, ["safe", "nsfw"], "svc") == "counted"  # known series: counted
    registry = exporter.metrics.registry
    assert registry.get_sample_value("modelrollout_exporter_malformed_events_total", {"reason": "TooManySeries"}) == 2
    assert exporter._series() == 9
    # The refused event counted nothing, not even its known class.
    assert registry.get_sample_value("modelrollout_predictions_total", {
        "namespace": label("ns0-"), "inference_service": "svc", "variant": "canary",
        "model_version": label("v1-"), "class": "safe"}) == 2


def test_idle_identities_give_their_series_to_a_new_one() -> None:
    now = [0.0]
    exporter = PredictionExporter(DecodeOptions(("safe", "nsfw")), max_total_series=6, max_namespace_series=6,
                                  model_idle_seconds=100,
                                  clock=lambda: now[0])
    assert [send(exporter, 0, v, ["nsfw"], "svc") for v in (1, 2, 3)] == ["counted", "counted", "malformed"]
    now[0] = 50.0
    assert send(exporter, 0, 2, ["nsfw"], "svc") == "counted"
    now[0] = 120.0  # 1 idle for 120 s, 2 for 70 s
    assert send(exporter, 0, 3, ["nsfw"], "svc") == "counted"
    assert sorted(identity[3] for identity in exporter._seen[label("ns0-")]) == [label("v2-"), label("v3-")]


def test_one_namespace_cannot_take_every_series() -> None:
    """A team's flood of versions stops at its share; another team's first version is still counted."""
    exporter = PredictionExporter(DecodeOptions(("safe", "nsfw")), max_total_series=12, max_namespace_series=6)
    assert [send(exporter, 0, v, ["nsfw"], "svc") for v in (1, 2, 3)] == ["counted", "counted", "malformed"]
    assert send(exporter, 0, 1, ["suggestive"], "svc") == "malformed"  # a class would add one per version
    assert send(exporter, 1, 1, ["nsfw"], "svc") == "counted"
    assert (exporter._series(label("ns0-")), exporter._series()) == (6, 9)


def test_classes_are_shared_within_an_inference_service_not_a_namespace() -> None:
    """48 teams each serving 4 models of their own 8 labels (and an unreadable series each): 1728 series, not 4x as
    many zero ones for classes the other services predict; a 49th team's stable and canary are still counted."""
    exporter = PredictionExporter(DecodeOptions())
    outcomes = [send(exporter, namespace, 3, [f"{service}-label-{c}" for c in range(8)], f"model-{service}")
                for namespace in range(48) for service in range(4)]
    assert outcomes == ["counted"] * 192
    assert exporter._series() == 48 * 4 * (8 + 1)
    assert send(exporter, 49, 6, ["safe"], "nsfw") == "counted"
    assert send(exporter, 49, 7, ["nsfw"], "nsfw") == "counted"  # and safe at 0 for it, nsfw at 0 for 6
    assert exporter._series(label("ns49-")) == 2 * (2 + 1)
    assert not exporter.metrics.registry.get_sample_value("modelrollout_exporter_malformed_events_total",
                                                          {"reason": "TooManySeries"})
    text = exporter.render().decode()
    assert 'inference_service="model-0",variant="canary",model_version="' + label("v3-") + '",class="1-label-0"' \
        not in text  # another service's class is not made at 0 for this one


def test_an_idle_service_forgets_its_classes_and_the_others_keep_theirs() -> None:
    now = [0.0]
    exporter = PredictionExporter(DecodeOptions(), model_idle_seconds=100, clock=lambda: now[0])
    assert send(exporter, 0, 1, ["a", "b"], "old") == "counted"
    now[0] = 50.0
    assert send(exporter, 0, 1, ["safe"], "kept") == "counted"
    now[0] = 120.0
    exporter._evict_idle(now[0])
    assert set(exporter._known_classes) == {(label("ns0-"), "kept")}
    assert exporter._series() == 1 + 1  # safe, and its unreadable answers
    assert "old" not in exporter.render().decode()  # nor its series


def test_pending_requests_are_bounded_by_their_kept_bytes() -> None:
    """10,000 pending requests of the longest 4-byte labels held ~78 MiB; the oldest now make way past 8 MiB."""
    exporter = PredictionExporter(DecodeOptions())
    gc.collect()
    tracemalloc.start()
    try:
        for i in range(10_000):
            headers = {"Ce-Id": label(f"{i:06d}-"), "Ce-Type": "org.kubeflow.serving.inference.request",
                       "Ce-Specversion": "1.0",
                       **{f"Ce-{name}": label(f"{name[:3]}{i:06d}-") for name in (
                           "Namespace", "Inferenceservicename", "Modelid", "Endpoint", "Component", "Modelversion")}}
            assert exporter.handle(headers, b"", "") == "request"
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert held < 16 * 1024 * 1024, held
    pending_ids = {key[1] for key in exporter._requests}  # (keyed by source, id, namespace and component)
    assert label("009999-") in pending_ids and label("000000-") not in pending_ids  # oldest went
    assert exporter._pending_bytes == sum(size for _, _, size in exporter._requests.values()) <= 8 * 1024 * 1024
    response = {"Ce-Id": label("009999-"), "Ce-Type": "org.kubeflow.serving.inference.response",
                "Ce-Specversion": "1.0"}
    exporter.handle(response, b'{"predictions": ["nsfw"]}', "")  # its request is no longer pending
    assert exporter._pending_bytes == sum(size for _, _, size in exporter._requests.values())


def test_concurrent_body_reads_are_bounded_and_slow_ones_give_up_their_place(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Six senders each a byte short of their body: two are read at once (each may hold 4 MiB), the others are
    answered 503 (Busy) once the wait is over, the two read 408 (TooSlow); then an event is counted again."""
    exporter = PredictionExporter(DecodeOptions(), body_read_slots=2, body_wait_seconds=0.3, body_read_seconds=1.0)
    most = most_bodies_read_at_once(monkeypatch)
    head = (b"POST / HTTP/1.1\r\nHost: x\r\nce-id: a\r\nce-type: org.kubeflow.serving.inference.response\r\n"
            b"ce-specversion: 1.0\r\nContent-Type: application/json\r\nContent-Length: 70000\r\n\r\n")

    async def slow(port: int) -> int:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(head + b" " * 69999)
            status = await asyncio.wait_for(reader.readline(), 5)
            return int(status.split()[1])
        finally:
            writer.close()

    async def steps() -> tuple[list[int], int, int]:
        async with TestClient(TestServer(exporter.app(), host="127.0.0.1")) as client:
            senders = asyncio.gather(*(slow(client.port) for _ in range(6)))
            await asyncio.sleep(0.1)  # every slot taken by a slow sender
            headers = {"Ce-Id": "b", "Ce-Type": "org.kubeflow.serving.inference.response", "Ce-Specversion": "1.0",
                       "Ce-Namespace": "moderation", "Ce-Inferenceservicename": "nsfw"}
            # Another team's small event is read without a slot, at once.
            meanwhile = await client.post("/", data=b'{"predictions": ["nsfw"]}', headers=headers)
            statuses = await senders
            response = await client.post("/", data=b'{"predictions": ["safe"]}', headers={**headers, "Ce-Id": "c"})
            return sorted(statuses), meanwhile.status, response.status

    assert asyncio.run(steps()) == ([408, 408, 503, 503, 503, 503], 202, 202)
    assert most[0] == 3  # the two slots, and the small event read beside them
    registry = exporter.metrics.registry
    for reason, n in (("Busy", 4), ("TooSlow", 2)):
        assert registry.get_sample_value("modelrollout_exporter_malformed_events_total", {"reason": reason}) == n
