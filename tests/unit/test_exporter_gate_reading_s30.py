"""Review s30inference: the exporter and the golden gate read one answer by one rule (datatype case, a bad row's
loss, strings and booleans among scores, ragged data), and a response pairs only with its own request."""

from __future__ import annotations

import json
import math
import struct
from typing import Any

import numpy as np
import pytest
from test_gate_clients import predict, scripted
from test_gate_support import CLASSES, endpoint, http_server, run

from controller.exporter.events import (
    HEADER_LENGTH,
    DecodeOptions,
    MalformedEvent,
    parse_cloudevent,
    predicted_classes,
)
from controller.exporter.server import PredictionExporter
from controller.gate.clients import BatchAnswer

THREE = DecodeOptions(CLASSES)  # safe, suggestive, nsfw
BINARY = ("safe", "nsfw")
RESPONSE = "org.kubeflow.serving.inference.response"
REQUEST = "org.kubeflow.serving.inference.request"


def gate_reads(protocol: str, body: Any, count: int, output_classes: tuple[str, ...] | None = None) -> BatchAnswer:
    """The real gate client against a real server answering `body`."""
    handler, _ = scripted((200, body))

    async def scenario() -> BatchAnswer:
        async with http_server(handler) as url:
            return await predict(endpoint(url, protocol, output_classes=output_classes), np.zeros((count, 4)))

    return run(scenario())


def gate_classes(answer: BatchAnswer) -> list[str | None]:
    return [CLASSES[i] if i >= 0 else None for i in answer.predicted]


def v2(datatype: str, shape: list[int], data: list[Any]) -> dict[str, Any]:
    return {"outputs": [{"name": "p", "shape": shape, "datatype": datatype, "data": data}]}


def headers(event_id: str = "e1", event_type: str = RESPONSE, **extensions: str) -> dict[str, str]:
    kept = {"Ce-Id": event_id, "Ce-Type": event_type, "Ce-Specversion": "1.0", "Ce-Source": "http://localhost:9081/",
            "Content-Type": "application/json", "Ce-Inferenceservicename": "nsfw", "Ce-Namespace": "moderation"}
    kept.update({f"Ce-{name.capitalize()}": value for name, value in extensions.items()})
    return {name: value for name, value in kept.items() if value}


def sample(exporter: PredictionExporter, name: str, **labels: str) -> float | None:
    return exporter.metrics.registry.get_sample_value(name, labels)


def counted(exporter: PredictionExporter, cls: str, namespace: str = "moderation", service: str = "nsfw") -> float:
    return sample(exporter, "modelrollout_predictions_total", namespace=namespace, inference_service=service,
                  variant="", model_version="unknown", **{"class": cls}) or 0.0


@pytest.mark.parametrize("datatype", ["fp32", "Fp16", "fp64", "bf16"])
def test_a_score_datatype_in_any_case_is_scores_for_the_exporter_as_for_the_gate(datatype: str) -> None:
    """[2, 1] of 1.0 and 0.0: scores, never the indexes 1 and 0 (which name suggestive and safe of three)."""
    body = v2(datatype, [2, 1], [1.0, 0.0])
    with pytest.raises(MalformedEvent) as caught:
        predicted_classes(body, THREE)
    assert caught.value.reason == "AmbiguousScore"
    answer = gate_reads("v2", body, 2)
    assert gate_classes(answer) == [None, None] and answer.sample_problems == {"ambiguous score": 2}
    # Two classes: each a sigmoid's probability of the second, in both.
    assert predicted_classes(body, DecodeOptions(BINARY)) == ("nsfw", "safe")
    assert gate_classes(gate_reads("v2", body, 2, output_classes=BINARY)) == ["nsfw", "safe"]


def test_a_lower_case_datatype_in_the_binary_extension_is_read() -> None:
    header = json.dumps({"outputs": [{"name": "p", "shape": [2, 1], "datatype": "fp32",
                                      "parameters": {"binary_data_size": 8}}]}).encode()
    body = header + struct.pack("<2f", 1.0, 0.0)
    event = parse_cloudevent({**headers(), HEADER_LENGTH: str(len(header))}, body, max_bytes=1 << 20)
    assert predicted_classes(event.data, DecodeOptions(BINARY)) == ("nsfw", "safe")


# A batch of three with one bad row, the reason the exporter counts it by, and the gate's problem for it.
ONE_BAD_ROW = [
    (v2("FP32", [3, 3], [0.1, 0.2, 0.7, math.nan, 0.2, 0.1, 0.7, 0.2, 0.1]), "v2", "BadPredictions",
     "non-finite scores"),
    ({"predictions": ["nsfw", "NSFW", "safe"]}, "v1", "UnknownClass", "unknown label"),
    ({"predictions": [[0.1, 0.2, 0.7], [0.5, 0.5], [0.9, 0.05, 0.05]]}, "v1", "ScoreWidth",
     "wrong score vector length"),
    (v2("INT64", [3], [2, 3, 0]), "v2", "UnknownClass", "class index out of range"),
    ({"predictions": [[0.1, 0.2, 0.7], ["0.1", "0.2", "0.7"], [0.9, 0.05, 0.05]]}, "v1", "BadPredictions",
     "unreadable prediction"),
    ({"predictions": [[0.1, 0.2, 0.7], [0.1, True, 0.2], [0.9, 0.05, 0.05]]}, "v1", "BadPredictions",
     "unreadable prediction"),
    ({"predictions": [2, True, 0]}, "v1", "BadPredictions", "unreadable prediction"),
    (v2("FP32", [3, 3], [0.1, 0.2, 0.7, "0.7", "0.2", "0.1", 0.7, 0.2, 0.1]), "v2", "BadPredictions",
     "unreadable prediction"),
    (v2("FP32", [3, 3], [0.1, 0.2, 0.7, 0.7, False, 0.1, 0.7, 0.2, 0.1]), "v2", "BadPredictions",
     "unreadable prediction"),
]


@pytest.mark.parametrize(("body", "protocol", "reason", "problem"), ONE_BAD_ROW)
def test_one_bad_row_loses_that_row_alone_in_the_exporter_as_in_the_gate(
        body: dict[str, Any], protocol: str, reason: str, problem: str) -> None:
    answer = gate_reads(protocol, body, 3)
    assert gate_classes(answer) == ["nsfw", None, "safe"] and answer.sample_problems == {problem: 1}, answer
    exporter = PredictionExporter(THREE)
    assert exporter.handle(headers(), json.dumps(body).encode(), "") == "counted"
    assert (counted(exporter, "nsfw"), counted(exporter, "safe")) == (1, 1)
    assert sample(exporter, "modelrollout_exporter_malformed_events_total", reason=reason) == 1
    assert sample(exporter, "modelrollout_exporter_events_total", outcome="counted") == 1
    assert sample(exporter, "modelrollout_exporter_events_total", outcome="malformed") is None


def test_an_event_of_bad_rows_only_is_dropped_once_for_its_first_rows_reason() -> None:
    exporter = PredictionExporter(THREE)
    body = {"predictions": [[0.5, 0.5], "NSFW", [math.nan, 0.0, 1.0]]}
    assert exporter.handle(headers(), json.dumps(body).encode(), "") == "malformed"
    assert sample(exporter, "modelrollout_exporter_malformed_events_total", reason="ScoreWidth") == 1
    assert sample(exporter, "modelrollout_exporter_malformed_events_total", reason="UnknownClass") is None
    assert sample(exporter, "modelrollout_exporter_events_total", outcome="malformed") == 1


@pytest.mark.parametrize("data", [
    [[0.1, 0.2, 0.7, 0.7], [0.2, 0.1]],  # the shape's 6 values, in rows of 4 and 2
    [[0.1, 0.2, 0.7], 0.7, 0.2, 0.1],  # a row beside values
    [[[0.1, 0.2, 0.7]], [0.7, 0.2, 0.1]],  # rows of unequal depths
])
def test_ragged_data_is_refused_by_both_even_when_its_total_fills_the_shape(data: list[Any]) -> None:
    body = v2("FP32", [2, 3], data)
    answer = gate_reads("v2", body, 2)
    assert answer.failure == "bad output" and "ragged" in answer.detail, answer
    with pytest.raises(MalformedEvent) as caught:
        predicted_classes(body, THREE)
    assert caught.value.reason == "BadTensor" and "ragged" in str(caught.value)


def test_rectangular_nesting_of_any_split_is_read_by_both() -> None:
    body = v2("FP32", [2, 3], [[0.1, 0.2], [0.7, 0.7], [0.2, 0.1]])  # 3 x 2: row-major, as numpy reshapes it
    assert predicted_classes(body, THREE) == ("nsfw", "safe")
    assert gate_classes(gate_reads("v2", body, 2)) == ["nsfw", "safe"]


def bare_response(event_id: str) -> dict[str, str]:
    """CloudEvent core attributes only: who predicted comes from the paired request."""
    return {"Ce-Id": event_id, "Ce-Type": RESPONSE, "Ce-Specversion": "1.0", "Ce-Source": "http://localhost:9081/",
            "Content-Type": "application/json"}


PREDICTIONS = json.dumps({"predictions": ["nsfw", "safe"]}).encode()


def test_a_response_never_borrows_another_namespaces_request_of_the_same_id() -> None:
    """Two teams' clients chose the same Ce-Id: a response naming neither namespace is not counted for either (the
    newest request, another team's, took it before)."""
    exporter = PredictionExporter(THREE)
    assert exporter.handle(headers("client-id", REQUEST, namespace="team-d"), b"", "") == "request"
    assert exporter.handle(headers("client-id", REQUEST, namespace="team-e", inferenceservicename="evil"),
                           b"", "") == "request"
    assert exporter.handle(bare_response("client-id"), PREDICTIONS, "") == "malformed"
    assert sample(exporter, "modelrollout_exporter_malformed_events_total", reason="MissingIdentity") == 1
    assert counted(exporter, "nsfw", "team-e", "evil") == 0
    # A response naming its namespace takes that namespace's request.
    assert exporter.handle({**bare_response("client-id"), "Ce-Namespace": "team-d"}, PREDICTIONS, "") == "counted"
    assert counted(exporter, "nsfw", "team-d") == 1 and counted(exporter, "nsfw", "team-e", "evil") == 0


def test_a_transformers_response_leaves_the_predictors_request_waiting() -> None:
    exporter = PredictionExporter(THREE)
    assert exporter.handle(headers("r1", REQUEST, namespace="pc", component="predictor"), b"", "") == "request"
    assert exporter.handle(headers("r1", namespace="pc", component="transformer"), PREDICTIONS, "") == "malformed"
    assert sample(exporter, "modelrollout_exporter_malformed_events_total", reason="NotPredictor") == 1
    assert exporter.handle(bare_response("r1"), PREDICTIONS, "") == "counted"
    assert counted(exporter, "nsfw", "pc") == 1
    assert sample(exporter, "modelrollout_exporter_malformed_events_total", reason="MissingIdentity") is None


def test_a_response_pairs_with_its_predictors_request_beside_its_transformers() -> None:
    exporter = PredictionExporter(THREE)
    assert exporter.handle(headers("r2", REQUEST, namespace="pf", component="predictor"), b"", "") == "request"
    assert exporter.handle(headers("r2", REQUEST, namespace="pf", component="transformer"), b"", "") == "request"
    assert exporter.handle(bare_response("r2"), PREDICTIONS, "") == "counted"  # the predictor's, not the newest
    assert counted(exporter, "nsfw", "pf") == 1
    assert [key[3] for key in exporter._requests] == ["transformer"]
