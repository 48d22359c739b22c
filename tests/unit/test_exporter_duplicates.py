"""A response delivered again (CloudEvents delivery is at least once: a Knative broker retries) is answered 202 and
counted as a duplicate, never as predictions twice; the ids remembered for it are bounded in number and in time."""

from __future__ import annotations

import asyncio
import json

from aiohttp.test_utils import TestClient, TestServer

from controller.exporter.events import DecodeOptions
from controller.exporter.server import DUPLICATE_OUTCOME, PredictionExporter

NAMES = DecodeOptions(class_names=("safe", "suggestive", "nsfw"))


def headers(event_id: str, kind: str = "response", namespace: str = "r-dup", source: str = "http://localhost:9081/",
            ) -> dict[str, str]:
    return {"Ce-Id": event_id, "Ce-Type": f"org.kubeflow.serving.inference.{kind}", "Ce-Specversion": "1.0",
            "Ce-Source": source, "Ce-Namespace": namespace, "Ce-Inferenceservicename": "m",
            "Content-Type": "application/json"}


def nsfw(exporter: PredictionExporter, namespace: str = "r-dup") -> float | None:
    return exporter.metrics.registry.get_sample_value(
        "modelrollout_predictions_total", {"namespace": namespace, "inference_service": "m", "variant": "",
                                           "model_version": "7", "class": "nsfw"})


def outcomes(exporter: PredictionExporter, outcome: str) -> float | None:
    return exporter.metrics.registry.get_sample_value("modelrollout_exporter_events_total", {"outcome": outcome})


RESPONSE = json.dumps({"predictions": [[0.1, 0.1, 0.8]]}).encode()


def test_a_response_delivered_again_is_answered_202_and_counted_once_over_http() -> None:
    # The review's F-dup: the request, its response, the same response again (all ce-id req-42).
    exporter = PredictionExporter(NAMES)

    async def exchange() -> list[tuple[int, str]]:
        async with TestClient(TestServer(exporter.app())) as client:
            answers = []
            for kind, body in (("request", b'{"instances": [[1]]}'), ("response", RESPONSE), ("response", RESPONSE)):
                answer = await client.post("/?model_version=7", data=body, headers=headers("req-42", kind))
                answers.append((answer.status, (await answer.json())["outcome"]))
            return answers

    assert asyncio.run(exchange()) == [(202, "request"), (202, "counted"), (202, DUPLICATE_OUTCOME)]
    assert nsfw(exporter) == 1.0
    assert outcomes(exporter, "counted") == 1.0 and outcomes(exporter, DUPLICATE_OUTCOME) == 1.0


def test_the_same_id_from_another_source_namespace_or_model_or_with_other_bytes_is_another_event() -> None:
    exporter = PredictionExporter(NAMES)
    assert exporter.handle(headers("e1"), RESPONSE, "model_version=7") == "counted"
    assert exporter.handle(headers("e1", source="http://other:9081/"), RESPONSE, "model_version=7") == "counted"
    assert exporter.handle(headers("e1", namespace="r-other"), RESPONSE, "model_version=7") == "counted"
    assert exporter.handle(headers("e1"), RESPONSE, "model_version=8") == "counted"
    # KServe's agent takes the id from the client's Ce-Id header when it has one: another answer is another event.
    two = json.dumps({"predictions": [[0.1, 0.1, 0.8], [0.1, 0.1, 0.8]]}).encode()
    assert exporter.handle(headers("e1"), two, "model_version=7") == "counted"
    assert nsfw(exporter) == 4.0 and nsfw(exporter, "r-other") == 1.0
    assert exporter.handle(headers("e1", source="http://other:9081/"), RESPONSE, "model_version=7") == DUPLICATE_OUTCOME
    assert exporter.handle(headers("e1"), two, "model_version=7") == DUPLICATE_OUTCOME
    assert nsfw(exporter) == 4.0


def test_a_refused_response_is_not_remembered_so_its_retry_may_count() -> None:
    exporter = PredictionExporter(NAMES, max_models=1)
    assert exporter.handle(headers("a"), RESPONSE, "model_version=7") == "counted"
    assert exporter.handle(headers("b"), RESPONSE, "model_version=8") == "malformed"  # TooManyModels
    assert exporter._counted and len(exporter._counted) == 1


def test_counted_ids_are_bounded_in_number_and_expire() -> None:
    now = [0.0]
    exporter = PredictionExporter(NAMES, max_counted_ids=3, counted_id_seconds=600, clock=lambda: now[0])
    for n in range(4):
        assert exporter.handle(headers(f"e{n}"), RESPONSE, "model_version=7") == "counted"
    assert len(exporter._counted) == 3  # e0, the oldest, is forgotten: a copy of it now counts again
    assert exporter.handle(headers("e3"), RESPONSE, "model_version=7") == DUPLICATE_OUTCOME
    assert exporter.handle(headers("e0"), RESPONSE, "model_version=7") == "counted"
    now[0] = 601.0  # past the time a broker retries
    assert exporter.handle(headers("e3"), RESPONSE, "model_version=7") == "counted"
    assert len(exporter._counted) == 1  # the expired ones went
    assert nsfw(exporter) == 6.0
