"""A prediction series is scraped at 0 before its first count: increase() and rate() never count a first sample."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from controller.exporter import server
from controller.exporter.events import DecodeOptions
from controller.exporter.server import OTHER_CLASS, PredictionExporter

Scrape = dict[tuple[str, str], float]  # (model version, class): the value /metrics shows


def send(exporter: PredictionExporter, version: str, *labels: str, namespace: str = "moderation") -> None:
    # Each its own event: one id delivered again is counted once.
    headers = {"Ce-Id": f"e-{version}-{labels}-{uuid.uuid4()}", "Ce-Type": "org.kubeflow.serving.inference.response",
               "Ce-Specversion": "1.0", "Content-Type": "application/json", "Ce-Namespace": namespace,
               "Ce-Inferenceservicename": "nsfw", "Ce-Component": "predictor"}
    body = json.dumps({"predictions": list(labels)}).encode()
    assert exporter.handle(headers, body, f"model_version={version}") == "counted"


async def scrape(client: TestClient) -> Scrape:
    response = await client.get("/metrics")
    assert response.status == 200
    return {(s.labels["model_version"], s.labels["class"]): s.value
            for family in text_string_to_metric_families(await response.text())
            for s in family.samples if s.name == "modelrollout_predictions_total"}


def served(exporter: PredictionExporter, steps: Callable[[TestClient], Awaitable[list[Scrape]]]) -> list[Scrape]:
    async def run() -> list[Scrape]:
        async with TestClient(TestServer(exporter.app(), host="127.0.0.1")) as client:
            return await steps(client)

    return asyncio.run(run())


@pytest.mark.parametrize("options", [DecodeOptions(), DecodeOptions(("safe", "nsfw"))])
def test_a_new_series_is_scraped_at_zero_then_at_its_count(options: DecodeOptions) -> None:
    exporter = PredictionExporter(options)

    async def steps(client: TestClient) -> list[Scrape]:
        before = await scrape(client)
        send(exporter, "8", "nsfw")  # the canary's first prediction, between two scrapes
        return [before, await scrape(client), await scrape(client)]

    before, first, second = served(exporter, steps)
    assert ("8", "nsfw") not in before
    assert first[("8", "nsfw")] == 0  # Prometheus' first sample of the series: increase() counts from here
    assert second[("8", "nsfw")] == 1  # so increase() over the two is 1, not 0


def test_a_class_stable_predicts_first_is_at_zero_for_the_canary_before_its_own() -> None:
    exporter = PredictionExporter(DecodeOptions(), max_classes=2)  # the chart's default: no --class-names

    async def steps(client: TestClient) -> list[Scrape]:
        send(exporter, "6", "safe")
        send(exporter, "7", "safe")
        scrapes = [await scrape(client)]
        send(exporter, "6", "nsfw")  # stable's first nsfw: the canary's nsfw series is created with it
        send(exporter, "6", "free text")  # past the class cap: stable's __other__, and the canary's at 0
        scrapes.append(await scrape(client))
        send(exporter, "7", "nsfw")  # the canary's first nsfw
        send(exporter, "8", "safe")  # a new version gets every class its namespace has seen, at 0
        scrapes.append(await scrape(client))
        scrapes.append(await scrape(client))
        return scrapes

    _, created, canary_counted, later = served(exporter, steps)
    assert created[("7", "nsfw")] == 0 and created[("7", OTHER_CLASS)] == 0
    assert canary_counted[("7", "nsfw")] == 1  # shown at the next scrape: its 0 was already scraped
    assert {k: v for k, v in canary_counted.items() if k[0] == "8"} == {
        ("8", "safe"): 0, ("8", "nsfw"): 0, ("8", OTHER_CLASS): 0}
    assert later[("8", "safe")] == 1 and later[("8", "nsfw")] == 0
    assert later[("6", "nsfw")] == 1 and later[("6", OTHER_CLASS)] == 1


def test_held_counts_are_neither_lost_nor_applied_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    exporter = PredictionExporter(DecodeOptions())
    render = server.generate_latest
    failures = [1]

    def flaky(registry: object) -> bytes:
        if failures[0]:
            failures[0] -= 1
            raise RuntimeError("the scrape fails midway")
        return render(registry)  # type: ignore[arg-type]

    monkeypatch.setattr(server, "generate_latest", flaky)

    async def steps(client: TestClient) -> list[Scrape]:
        for _ in range(3):
            send(exporter, "7", "nsfw", "nsfw")
        assert (await client.get("/metrics")).status == 500  # nothing rendered: nothing counts as scraped
        scrapes = [await scrape(client)]
        send(exporter, "7", "nsfw")
        scrapes.extend(await asyncio.gather(scrape(client), scrape(client)))  # concurrent scrapes
        scrapes.append(await scrape(client))
        return scrapes

    first, *again, last = served(exporter, steps)
    assert first[("7", "nsfw")] == 0
    assert [s[("7", "nsfw")] for s in again] == [7, 7] and last[("7", "nsfw")] == 7
    assert exporter.metrics.registry.get_sample_value("modelrollout_predictions_total", {
        "namespace": "moderation", "inference_service": "nsfw", "variant": "", "model_version": "7",
        "class": "nsfw"}) == 7


def test_a_series_evicted_and_back_is_scraped_at_zero_again() -> None:
    now = [0.0]
    exporter = PredictionExporter(DecodeOptions(), max_models=1, model_idle_seconds=100, clock=lambda: now[0])

    async def steps(client: TestClient) -> list[Scrape]:
        send(exporter, "1", "nsfw")
        scrapes = [await scrape(client), await scrape(client)]
        now[0] = 200.0
        send(exporter, "2", "safe")  # evicts 1, idle for 200 s
        now[0] = 400.0
        send(exporter, "1", "nsfw")  # evicts 2: 1 comes back, a new series
        scrapes.extend([await scrape(client), await scrape(client)])
        return scrapes

    first, second, back, after = served(exporter, steps)
    assert (first[("1", "nsfw")], second[("1", "nsfw")]) == (0, 1)
    assert back[("1", "nsfw")] == 0 and after[("1", "nsfw")] == 1
    assert not any(series[3] == "2" for series in exporter._scraped)
