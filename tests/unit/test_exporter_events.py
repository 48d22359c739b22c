"""Reading predicted classes from KServe V1/V2 and Seldon logger events; garbage is refused by reason."""

from __future__ import annotations

import asyncio
import json
import logging
import tracemalloc

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import generate_latest

from controller.exporter import events, server
from controller.exporter.events import DecodeOptions, MalformedEvent, predicted_classes
from controller.exporter.server import OTHER_CLASS, PredictionExporter

NAMES = DecodeOptions(class_names=("safe", "nsfw"))


def kserve_headers(event_type: str = "org.kubeflow.serving.inference.response", event_id: str = "e1",
                   **extensions: str) -> dict[str, str]:
    headers = {"Ce-Id": event_id, "Ce-Type": event_type, "Ce-Specversion": "1.0",
               "Ce-Source": "http://localhost:9081/", "Content-Type": "application/json",
               "Ce-Inferenceservicename": "nsfw", "Ce-Namespace": "moderation"}
    headers.update({f"Ce-{k.capitalize()}": v for k, v in extensions.items()})
    return headers


@pytest.mark.parametrize(("body", "expected"), [
    ({"predictions": ["nsfw", "safe"]}, ("nsfw", "safe")),
    ({"predictions": [1, 0, 1]}, ("nsfw", "safe", "nsfw")),
    ({"predictions": [[0.9, 0.1], [0.2, 0.8]]}, ("safe", "nsfw")),
    ({"model_name": "nsfw", "model_version": "7",
      "outputs": [{"name": "probabilities", "shape": [2, 2], "datatype": "FP32", "data": [0.1, 0.9, 0.7, 0.3]}]},
     ("nsfw", "safe")),
    ({"outputs": [{"name": "label", "shape": [2], "datatype": "BYTES", "data": ["safe", "nsfw"]}]}, ("safe", "nsfw")),
    ({"outputs": [{"name": "cls", "shape": [3], "datatype": "INT64", "data": [1, 1, 0]}]}, ("nsfw", "nsfw", "safe")),
    ({"data": {"names": ["safe", "nsfw"], "ndarray": [[0.3, 0.7]]}}, ("nsfw",)),
    ({"data": {"tensor": {"shape": [1, 2], "values": [0.8, 0.2]}}}, ("safe",)),
])
def test_classes_from_v1_v2_and_seldon(body: dict, expected: tuple[str, ...]) -> None:
    assert predicted_classes(body, NAMES) == expected


@pytest.mark.parametrize(("body", "reason"), [
    ([1, 2], "UnknownPayload"),
    ({"nothing": 1}, "UnknownPayload"),
    ({"predictions": "nsfw"}, "BadPredictions"),
    ({"predictions": [True]}, "BadPredictions"),
    ({"predictions": [5]}, "UnknownClass"),
    ({"outputs": []}, "BadV2Output"),
    ({"outputs": [{"shape": [2, 2], "datatype": "FP32", "data": [0.1, 0.9, 0.7]}]}, "BadTensor"),
    ({"outputs": [{"shape": [2, 2, 2], "datatype": "FP32", "data": [0.0] * 8}]}, "BadTensor"),
    ({"outputs": [{"shape": [-2, -1], "datatype": "FP32", "data": [0.1, 0.9]}]}, "BadTensor"),
    ({"predictions": [[float("nan"), 0.9]]}, "BadPredictions"),  # argmax over NaN would depend on its place
    ({"predictions": [[float("inf"), float("inf")]]}, "BadPredictions"),
    ({"predictions": [[10**400, 0.5]]}, "BadPredictions"),  # JSON allows an integer past any float
    ({"outputs": [{"shape": [1, 2], "datatype": "FP32", "data": [0.5, 10**400]}]}, "BadPredictions"),
])
def test_garbage_payloads_are_refused_with_a_reason(body: object, reason: str) -> None:
    with pytest.raises(MalformedEvent) as caught:
        predicted_classes(body, NAMES)
    assert caught.value.reason == reason


def test_exporter_counts_by_variant_and_version_and_drops_malformed() -> None:
    exporter = PredictionExporter(NAMES)
    body = json.dumps({"predictions": [1, 0, 1]}).encode()
    assert exporter.handle(kserve_headers(), body, "variant=canary&model_version=7") == "counted"
    assert exporter.handle(kserve_headers(endpoint="default"), body, "model_version=6") == "counted"
    assert exporter.handle(kserve_headers(), b"{not json", "variant=canary") == "malformed"
    assert exporter.handle({"Content-Type": "application/json"}, body, "variant=canary") == "malformed"
    assert exporter.handle(kserve_headers(), body, "variant=blue") == "malformed"
    # No variant at all (a real KServe revision: only the version the router wrote into its logger URL).
    assert exporter.handle(kserve_headers(), body, "model_version=8") == "counted"
    registry = exporter.metrics.registry

    def count(variant: str, version: str, cls: str) -> float | None:
        return registry.get_sample_value("modelrollout_predictions_total", {
            "namespace": "moderation", "inference_service": "nsfw", "variant": variant,
            "model_version": version, "class": cls})

    assert count("canary", "7", "nsfw") == 2 and count("canary", "7", "safe") == 1
    assert count("stable", "6", "nsfw") == 2
    assert count("", "8", "nsfw") == 2
    assert registry.get_sample_value("modelrollout_exporter_malformed_events_total", {"reason": "NotJSON"}) == 1
    assert registry.get_sample_value("modelrollout_exporter_malformed_events_total",
                                     {"reason": "NotCloudEvent"}) == 1
    assert registry.get_sample_value("modelrollout_exporter_malformed_events_total",
                                     {"reason": "UnknownVariant"}) == 1


def test_a_seldon_predictor_name_is_no_variant_and_only_the_predictor_is_counted() -> None:
    exporter = PredictionExporter(NAMES)
    body = json.dumps({"predictions": [1, 1]}).encode()
    # Seldon v1 puts the predictor's own name in the endpoint: counted, with no variant (the version selects).
    assert exporter.handle(kserve_headers(endpoint="main"), body, "model_version=6") == "counted"
    # A transformer logs the same request again: counting it would double one user request.
    assert exporter.handle({**kserve_headers(endpoint="default"), "Ce-Component": "transformer"}, body,
                           "model_version=6") == "malformed"
    assert exporter.handle({**kserve_headers(endpoint="default"), "Ce-Component": "predictor"}, body,
                           "model_version=6") == "counted"
    registry = exporter.metrics.registry
    assert registry.get_sample_value("modelrollout_predictions_total", {
        "namespace": "moderation", "inference_service": "nsfw", "variant": "", "model_version": "6",
        "class": "nsfw"}) == 2
    assert registry.get_sample_value("modelrollout_predictions_total", {
        "namespace": "moderation", "inference_service": "nsfw", "variant": "stable", "model_version": "6",
        "class": "nsfw"}) == 2
    assert registry.get_sample_value("modelrollout_exporter_malformed_events_total", {"reason": "NotPredictor"}) == 1


def test_a_logger_url_cannot_count_predictions_for_another_namespace() -> None:
    exporter = PredictionExporter(NAMES)
    body = json.dumps({"predictions": [1, 1, 1]}).encode()
    forged = "namespace=payments&inference_service=nsfw&variant=stable&model_version=6"
    assert exporter.handle(kserve_headers(), body, forged) == "malformed"  # the event comes from moderation
    assert exporter.metrics.registry.get_sample_value("modelrollout_exporter_malformed_events_total",
                                                      {"reason": "NamespaceMismatch"}) == 1
    assert exporter.metrics.registry.get_sample_value("modelrollout_predictions_total", {
        "namespace": "payments", "inference_service": "nsfw", "variant": "stable", "model_version": "6",
        "class": "nsfw"}) is None
    # The same namespace in both places is fine.
    assert exporter.handle(kserve_headers(), body, forged.replace("payments", "moderation")) == "counted"


def test_response_borrows_identity_from_its_request_and_structured_mode_works() -> None:
    exporter = PredictionExporter(NAMES)
    request_headers = kserve_headers("org.kubeflow.serving.inference.request", "r1", endpoint="canary")
    assert exporter.handle(request_headers, b'{"instances": [[1, 2]]}', "") == "request"
    structured = {"specversion": "1.0", "id": "r1", "type": "org.kubeflow.serving.inference.response",
                  "source": "http://localhost:9081/",  # its request's: an event is its source and id
                  "data": {"model_version": "7", "predictions": ["nsfw"]}}
    outcome = exporter.handle({"Content-Type": "application/cloudevents+json"}, json.dumps(structured).encode(), "")
    assert outcome == "counted"
    # The response's own model_version is the server's numbering, not the registry's: not a label.
    assert exporter.metrics.registry.get_sample_value("modelrollout_predictions_total", {
        "namespace": "moderation", "inference_service": "nsfw", "variant": "canary", "model_version": "unknown",
        "class": "nsfw"}) == 1


def test_class_cardinality_is_bounded() -> None:
    exporter = PredictionExporter(DecodeOptions(), max_classes=2)
    body = json.dumps({"predictions": ["a", "b", "c", "d"]}).encode()
    exporter.handle(kserve_headers(), body, "variant=stable&model_version=1")
    other = exporter.metrics.registry.get_sample_value("modelrollout_predictions_total", {
        "namespace": "moderation", "inference_service": "nsfw", "variant": "stable", "model_version": "1",
        "class": OTHER_CLASS})
    assert other == 2


@pytest.mark.parametrize(("body", "reason"), [
    (b"[" * 100_000, "NotJSON"),  # deeper than the parser recurses
    (b'{"predictions": [' + b"9" * 5_000 + b"]}", "NotJSON"),  # an integer past Python's conversion limit
    (b"\xff\xfe", "NotJSON"),
])
def test_bodies_the_parser_cannot_take_are_counted_and_dropped(body: bytes, reason: str) -> None:
    exporter = PredictionExporter(NAMES)
    assert exporter.handle(kserve_headers(), body, "variant=canary") == "malformed"
    assert exporter.metrics.registry.get_sample_value("modelrollout_exporter_malformed_events_total",
                                                      {"reason": reason}) == 1


def test_a_null_id_is_a_missing_id() -> None:
    structured = {"specversion": "1.0", "id": None, "type": "org.kubeflow.serving.inference.response",
                  "source": "x", "data": {"predictions": ["nsfw"]}}
    exporter = PredictionExporter(NAMES)
    assert exporter.handle({"Content-Type": "application/cloudevents+json"}, json.dumps(structured).encode(),
                           "namespace=moderation&inference_service=nsfw&variant=canary") == "malformed"
    assert exporter.metrics.registry.get_sample_value("modelrollout_exporter_malformed_events_total",
                                                      {"reason": "NotCloudEvent"}) == 1


def test_pending_requests_keep_no_payload_and_expire() -> None:
    now = [0.0]
    exporter = PredictionExporter(NAMES, pending_seconds=60, max_pending_requests=3, clock=lambda: now[0])
    request = kserve_headers("org.kubeflow.serving.inference.request", "r1", endpoint="canary")
    request["Content-Type"] = "application/octet-stream"
    assert exporter.handle(request, b"\x89PNG" + b"\0" * 1_000_000, "") == "request"  # a binary body is fine
    assert all(event.data is None for _, event, _ in exporter._requests.values())
    now[0] = 61.0  # r1 is now too old to wait for its response
    exporter.handle(kserve_headers("org.kubeflow.serving.inference.request", "r2"), b"{}", "")
    assert [key[1] for key in exporter._requests] == ["r2"]
    for i in range(3, 8):  # and never more than the cap
        exporter.handle(kserve_headers("org.kubeflow.serving.inference.request", f"r{i}"), b"{}", "")
    assert [key[1] for key in exporter._requests] == ["r5", "r6", "r7"]


def test_model_identities_are_bounded() -> None:
    exporter = PredictionExporter(NAMES, max_models=2)
    body = json.dumps({"predictions": [1]}).encode()
    for version in ("1", "2"):
        assert exporter.handle(kserve_headers(event_id=f"e{version}"), body,
                               f"variant=canary&model_version={version}") == "counted"
    assert exporter.handle(kserve_headers(event_id="e3"), body, "variant=canary&model_version=3") == "malformed"
    assert exporter.handle(kserve_headers(event_id="e4"), body, "variant=canary&model_version=1") == "counted"
    assert exporter.metrics.registry.get_sample_value("modelrollout_exporter_malformed_events_total",
                                                      {"reason": "TooManyModels"}) == 1
    # The bound is per namespace: another team still gets its series.
    other = {**kserve_headers(), "Ce-Namespace": "payments"}
    assert exporter.handle(other, body, "variant=canary&model_version=3") == "counted"


def test_one_namespaces_classes_do_not_crowd_out_another_and_namespaces_are_bounded() -> None:
    exporter = PredictionExporter(DecodeOptions(), max_classes=2, max_namespaces=2)
    flood = json.dumps({"predictions": ["a", "b", "c"]}).encode()
    exporter.handle({**kserve_headers(), "Ce-Namespace": "noisy"}, flood, "model_version=1")
    honest = json.dumps({"predictions": ["safe", "nsfw"]}).encode()
    assert exporter.handle(kserve_headers(), honest, "model_version=6") == "counted"
    registry = exporter.metrics.registry
    for cls in ("safe", "nsfw"):
        assert registry.get_sample_value("modelrollout_predictions_total", {
            "namespace": "moderation", "inference_service": "nsfw", "variant": "", "model_version": "6",
            "class": cls}) == 1
    assert exporter.handle({**kserve_headers(), "Ce-Namespace": "third"}, honest, "model_version=1") == "malformed"
    assert registry.get_sample_value("modelrollout_exporter_malformed_events_total",
                                     {"reason": "TooManyNamespaces"}) == 1


def test_the_total_is_bounded_whatever_namespaces_senders_claim() -> None:
    exporter = PredictionExporter(NAMES, max_models=2, max_total_models=3)
    body = json.dumps({"predictions": [1]}).encode()
    outcomes = [exporter.handle({**kserve_headers(), "Ce-Namespace": f"ns-{i}"}, body, f"model_version={v}")
                for i in range(2) for v in (1, 2)]
    assert outcomes == ["counted", "counted", "counted", "malformed"]


@pytest.mark.parametrize(("body", "expected"), [
    # One column per row ([n, 1]: MLServer's NumpyCodec, Triton dims [1], a sigmoid): the row's one value.
    ({"outputs": [{"name": "cls", "shape": [3, 1], "datatype": "INT64", "data": [1, 1, 0]}]}, ("nsfw", "nsfw", "safe")),
    ({"outputs": [{"name": "p", "shape": [3, 1], "datatype": "FP32", "data": [0.97, 0.91, 0.02]}]},
     ("nsfw", "nsfw", "safe")),
    ({"predictions": [[0.97], [0.5], [0.02]]}, ("nsfw", "nsfw", "safe")),
    ({"predictions": [0.97, 0.02]}, ("nsfw", "safe")),
    ({"predictions": [[1], [0]]}, ("nsfw", "safe")),
])
def test_one_score_or_index_per_row_is_read_as_that_value(body: dict, expected: tuple[str, ...]) -> None:
    assert predicted_classes(body, NAMES) == expected


@pytest.mark.parametrize(("body", "options", "reason"), [
    ({"predictions": [[0.97]]}, DecodeOptions(class_names=("safe", "suggestive", "nsfw")), "AmbiguousScore"),
    ({"predictions": [0.97]}, DecodeOptions(), "NoClassNames"),
    ({"predictions": [[1.7]]}, NAMES, "AmbiguousScore"),  # not a probability
    ({"outputs": [{"shape": [1000, 0], "datatype": "FP32", "data": []}]}, NAMES, "BadTensor"),
])
def test_a_score_that_names_no_class_is_refused(body: dict, options: DecodeOptions, reason: str) -> None:
    with pytest.raises(MalformedEvent) as caught:
        predicted_classes(body, options)
    assert caught.value.reason == reason


THREE = DecodeOptions(class_names=("safe", "suggestive", "nsfw"))


@pytest.mark.parametrize(("body", "options", "reason"), [
    # A binary model's [p_safe, p_nsfw] under three names: its nsfw column is not "suggestive".
    ({"predictions": [[0.1, 0.9], [0.3, 0.7]]}, THREE, "ScoreWidth"),
    ({"outputs": [{"name": "p", "shape": [2, 2], "datatype": "FP32", "data": [0.1, 0.9, 0.3, 0.7]}]}, THREE,
     "ScoreWidth"),
    ({"predictions": [[0.9, 0.0, 0.1]]}, NAMES, "ScoreWidth"),  # wider than the names, argmax in range
    ({"data": {"names": ["safe", "porn"], "ndarray": [[0.1, 0.9]]}}, THREE, "ClassNamesMismatch"),
])
def test_a_score_row_of_another_width_or_other_names_is_refused(body: dict, options: DecodeOptions,
                                                                 reason: str) -> None:
    with pytest.raises(MalformedEvent) as caught:
        predicted_classes(body, options)
    assert caught.value.reason == reason


def test_a_score_row_of_another_width_is_counted_as_malformed_never_as_a_class() -> None:
    exporter = PredictionExporter(THREE)
    for i, body in enumerate([
            {"predictions": [[0.1, 0.9]]},
            {"outputs": [{"name": "p", "shape": [1, 2], "datatype": "FP32", "data": [0.1, 0.9]}]}]):
        assert exporter.handle(kserve_headers(event_id=f"e{i}"), json.dumps(body).encode(), "") == "malformed"
    assert malformed(exporter, "ScoreWidth") == 2
    assert 'reason="ScoreWidth"' in generate_latest(exporter.metrics.registry).decode()
    assert not [s for m in exporter.metrics.registry.collect() for s in m.samples
                if s.name == "modelrollout_predictions_total" and s.value]


@pytest.mark.parametrize(("body", "expected"), [
    ({"data": {"names": ["nsfw", "safe", "suggestive"], "ndarray": [[0.9, 0.05, 0.05], [0.1, 0.8, 0.1]]}},
     ("nsfw", "safe")),
    ({"data": {"names": ["nsfw", "safe", "suggestive"], "tensor": {"shape": [1, 3], "values": [0.9, 0.05, 0.05]}}},
     ("nsfw",)),
    ({"data": {"names": ["nsfw", "safe"], "ndarray": [[0.9, 0.1]]}}, ("nsfw",)),  # some of the names, by name
])
def test_seldon_names_are_read_in_the_responses_order(body: dict, expected: tuple[str, ...]) -> None:
    assert predicted_classes(body, THREE) == expected


@pytest.mark.parametrize(("body", "options", "expected"), [
    # Seldon's placeholders for a model without class_names (e.g. SKLEARN_SERVER's predict_proba): --class-names.
    ({"data": {"names": ["t:0", "t:1", "t:2"], "ndarray": [[0.1, 0.2, 0.7]]}}, THREE, ("nsfw",)),
    ({"data": {"names": ["t:0", "t:1"], "tensor": {"shape": [1, 2], "values": [0.2, 0.8]}}}, NAMES, ("nsfw",)),
    ({"data": {"names": ["t:0"], "ndarray": [[0.93]]}}, NAMES, ("nsfw",)),  # a sigmoid's one column
    ({"data": {"names": ["nsfw"], "ndarray": [[0.93]]}}, NAMES, ("nsfw",)),
])
def test_seldon_columns_that_name_no_class_are_read_with_the_class_names(body: dict, options: DecodeOptions,
                                                                       expected: tuple[str, ...]) -> None:
    assert predicted_classes(body, options) == expected


@pytest.mark.parametrize("name", ["safe", "Safe", "p_safe", "cat"])
def test_one_seldon_score_named_other_than_the_second_class_is_not_counted_inverted(name: str) -> None:
    with pytest.raises(MalformedEvent, match="not the second class name"):
        predicted_classes({"data": {"names": [name], "ndarray": [[0.9]]}}, NAMES)


def test_a_seldon_column_that_is_no_class_is_named_in_the_refusal() -> None:
    with pytest.raises(MalformedEvent, match="names a column 'porn' that is not among the 3 class names"):
        predicted_classes({"data": {"names": ["safe", "porn"], "ndarray": [[0.1, 0.9]]}}, THREE)


def test_a_deeply_nested_tensor_is_read_without_recursion() -> None:
    data: list = [0.1, 0.9]
    for _ in range(5_000):
        data = [data]
    body = {"outputs": [{"name": "p", "shape": [1, 2], "datatype": "FP32", "data": data}]}
    assert predicted_classes(body, NAMES) == ("nsfw",)


@pytest.mark.parametrize(("headers", "body", "unreadable"), [
    (kserve_headers(inferenceservicename="nsfw\udcff"), {"predictions": [1]}, None),  # raw byte in a header
    # A row's class that is no label text is the model's answer: its model version counts it as unreadable (s31).
    (kserve_headers(), {"predictions": ["\ud800"]}, 1.0),  # a lone surrogate from JSON
    (kserve_headers(), {"predictions": ["n" * 254]}, 1.0),
    (kserve_headers(namespace="m" * 254), {"predictions": [1]}, None),
])
def test_a_label_that_is_not_short_valid_text_is_dropped_and_metrics_still_render(
        headers: dict, body: dict, unreadable: float | None) -> None:
    exporter = PredictionExporter(NAMES)
    assert exporter.handle(kserve_headers(), json.dumps({"predictions": [0]}).encode(), "variant=stable") == "counted"
    raw = json.dumps(body, ensure_ascii=False).encode("utf-8", "surrogatepass")
    assert exporter.handle(headers, raw, "variant=canary") == "malformed"
    assert exporter.metrics.registry.get_sample_value("modelrollout_exporter_malformed_events_total",
                                                      {"reason": "BadLabel"}) == 1
    exposition = generate_latest(exporter.metrics.registry).decode()
    assert 'class="safe"' in exposition and "n" * 254 not in exposition and "m" * 254 not in exposition
    assert exporter.metrics.registry.get_sample_value("modelrollout_unreadable_predictions_total", {
        "namespace": "moderation", "inference_service": "nsfw", "variant": "canary",
        "model_version": "unknown"}) == unreadable


def test_a_pending_request_keeps_only_the_attributes_a_response_borrows() -> None:
    exporter = PredictionExporter(NAMES)
    request = kserve_headers("org.kubeflow.serving.inference.request", "r1", endpoint="canary", modelversion="7")
    request["Ce-Pad"] = "A" * 1_000_000
    assert exporter.handle(request, b"{}", "") == "request"
    (_, kept, _), = exporter._requests.values()
    assert set(kept.attributes) == {"namespace", "inferenceservicename", "endpoint", "modelversion"}
    oversized = kserve_headers("org.kubeflow.serving.inference.request", "r2", modelversion="7" * 1_000)
    assert exporter.handle(oversized, b"{}", "") == "malformed"
    assert [key[1] for key in exporter._requests] == ["r1"]
    response = {"Ce-Id": "r1", "Ce-Type": "org.kubeflow.serving.inference.response", "Ce-Specversion": "1.0",
                "Ce-Source": "http://localhost:9081/"}  # (pairs by source and id, as CloudEvents names an event)
    assert exporter.handle(response, json.dumps({"predictions": [1]}).encode(), "") == "counted"
    assert exporter.metrics.registry.get_sample_value("modelrollout_predictions_total", {
        "namespace": "moderation", "inference_service": "nsfw", "variant": "canary", "model_version": "7",
        "class": "nsfw"}) == 1


def malformed(exporter: PredictionExporter, reason: str) -> float | None:
    return exporter.metrics.registry.get_sample_value("modelrollout_exporter_malformed_events_total",
                                                      {"reason": reason})


def test_a_score_past_any_float_is_answered_as_malformed_over_http() -> None:
    exporter = PredictionExporter(NAMES)
    huge = b'{"predictions": [[1, ' + b"9" * 400 + b"]]}"

    async def post() -> tuple[int, dict]:
        async with TestClient(TestServer(exporter.app(), host="127.0.0.1")) as client:
            response = await client.post("/?model_version=1", data=huge, headers=kserve_headers())
            return response.status, await response.json()

    assert asyncio.run(post()) == (400, {"outcome": "malformed"})
    assert malformed(exporter, "BadPredictions") == 1


def test_an_event_past_the_size_limit_is_dropped_unread_as_too_large() -> None:
    """A legal-looking 5 MiB event decodes to ~65 MiB of Python objects; at 16 MiB one event took the exporter over
    its memory limit, and its restart reset every namespace's counters."""
    exporter = PredictionExporter(NAMES)
    rows = b"[0.25, 0.75], " * (5 * 1024 * 1024 // 14)
    big = b'{"predictions": [' + rows + b'[0.25, 0.75]]}'

    async def post() -> tuple[int, dict]:
        async with TestClient(TestServer(exporter.app(), host="127.0.0.1")) as client:
            response = await client.post("/?model_version=1", data=big, headers=kserve_headers())
            return response.status, await response.json()

    tracemalloc.start()
    try:
        answer = asyncio.run(post())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert answer == (413, {"outcome": "malformed"})
    assert malformed(exporter, "TooLarge") == 1
    assert peak < 32 * 1024 * 1024, peak


def test_a_large_request_event_is_drained_unread_and_kept_for_its_attributes() -> None:
    """A request's payload (an image tensor) is never read: past the size limit it is no malformed event."""
    exporter = PredictionExporter(NAMES)
    tensor = b'{"instances": [' + b"0.5, " * (6 * 1024 * 1024 // 5) + b"0.5]}"

    async def post() -> list[tuple[int, dict]]:
        async with TestClient(TestServer(exporter.app(), host="127.0.0.1")) as client:
            answers = []
            for event_type, body in (("org.kubeflow.serving.inference.request", tensor),
                                     ("org.kubeflow.serving.inference.response", b'{"predictions": [1]}')):
                response = await client.post("/?model_version=1", data=body,
                                             headers=kserve_headers(event_type=event_type, event_id="big"))
                answers.append((response.status, await response.json()))
            return answers

    assert asyncio.run(post()) == [(202, {"outcome": "request"}), (202, {"outcome": "counted"})]
    assert not malformed(exporter, "TooLarge")


def test_an_unexpected_failure_costs_one_event_and_logs_no_content(monkeypatch: pytest.MonkeyPatch,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    exporter = PredictionExporter(NAMES)

    def broken(*_: object, **__: object) -> None:
        raise RuntimeError("secret-payload-text")

    monkeypatch.setattr(server, "prediction_from_event", broken)
    with caplog.at_level(logging.DEBUG, logger=server.__name__):
        assert exporter.handle(kserve_headers(), b'{"predictions": [1]}', "model_version=1") == "malformed"
    assert malformed(exporter, "Internal") == 1
    assert exporter.metrics.registry.get_sample_value("modelrollout_exporter_events_total",
                                                      {"outcome": "malformed"}) == 1
    assert "RuntimeError" in caplog.text and "secret-payload-text" not in caplog.text
    monkeypatch.undo()  # the exporter carries on
    assert exporter.handle(kserve_headers(), b'{"predictions": [1]}', "model_version=1") == "counted"


def test_idle_model_identities_give_up_their_place_and_their_series() -> None:
    now = [0.0]
    exporter = PredictionExporter(NAMES, max_models=2, model_idle_seconds=100, clock=lambda: now[0])
    body = json.dumps({"predictions": [1]}).encode()
    sent = iter(range(100))

    def send(version: str) -> str:  # each its own event (one id delivered again is counted once)
        return exporter.handle(kserve_headers(event_id=f"e{next(sent)}"), body, f"model_version={version}")

    def count(version: str, cls: str = "nsfw") -> float | None:
        return exporter.metrics.registry.get_sample_value("modelrollout_predictions_total", {
            "namespace": "moderation", "inference_service": "nsfw", "variant": "", "model_version": version,
            "class": cls})

    assert [send("1"), send("2"), send("2")] == ["counted"] * 3
    now[0] = 50.0
    assert send("1") == "counted"
    assert send("3") == "malformed"  # nothing idle long enough: new identities are still refused
    now[0] = 120.0  # 2 is idle for 120 s, 1 for 70 s
    assert send("3") == "counted"
    assert count("2") is None and count("2", "safe") is None  # its series are gone from /metrics
    assert count("1") == 2 and count("3") == 1
    assert send("4") == "malformed"
    assert malformed(exporter, "TooManyModels") == 2
    now[0] = 300.0
    assert send("2") == "counted"
    assert count("2") == 1  # a series that comes back starts again (a counter reset to increase())


def test_an_idle_namespace_frees_its_place_and_its_class_budget() -> None:
    now = [0.0]
    exporter = PredictionExporter(DecodeOptions(), max_classes=2, max_namespaces=1, model_idle_seconds=100,
                                  clock=lambda: now[0])
    body = json.dumps({"predictions": ["a", "b"]}).encode()
    assert exporter.handle(kserve_headers(), body, "model_version=1") == "counted"
    assert exporter.handle({**kserve_headers(), "Ce-Namespace": "payments"}, body, "model_version=1") == "malformed"
    now[0] = 101.0
    assert exporter.handle({**kserve_headers(), "Ce-Namespace": "payments"}, body, "model_version=1") == "counted"
    exposition = generate_latest(exporter.metrics.registry).decode()
    assert 'namespace="payments"' in exposition and 'namespace="moderation"' not in exposition
    assert set(exporter._known_classes) == {("payments", "nsfw")}


def test_a_large_event_is_counted_once_per_class(monkeypatch: pytest.MonkeyPatch) -> None:
    exporter = PredictionExporter(NAMES)
    checked: list[str] = []
    labelled: list[tuple[str, ...]] = []
    check, labels = events.check_label, exporter.metrics.predictions.labels
    monkeypatch.setattr(events, "check_label", lambda what, value: (checked.append(value), check(what, value))[1])
    monkeypatch.setattr(exporter.metrics.predictions, "labels", lambda *v: (labelled.append(v), labels(*v))[1])
    body = json.dumps({"predictions": [0, 1, 1] * 100_000}).encode()
    assert exporter.handle(kserve_headers(), body, "model_version=1") == "counted"
    assert exporter.metrics.registry.get_sample_value("modelrollout_predictions_total", {
        "namespace": "moderation", "inference_service": "nsfw", "variant": "", "model_version": "1",
        "class": "nsfw"}) == 200_000
    assert len(checked) <= 5 and len(labelled) <= 4  # identity labels, then each class once (and its zero series)


@pytest.mark.parametrize("body", [
    {"predictions": [{"text": "secret-payload-text"}]},
    {"predictions": [["secret-payload-text", "x"]]},
    {"predictions": [None]},
    {"predictions": [1.75]},
])
def test_a_malformed_row_is_named_by_its_shape_never_quoted(body: object) -> None:
    """Rows are user payload: the reason and message (logged at debug) say what was wrong, not what it held."""
    with pytest.raises(MalformedEvent) as caught:
        predicted_classes(body, NAMES)
    assert "secret-payload-text" not in str(caught.value) and "1.75" not in str(caught.value)
    assert caught.value.reason in {"BadPredictions", "AmbiguousScore"}


@pytest.mark.parametrize("body", [
    {"predictions": [1, 0]},
    {"predictions": [[0.1, 0.1, 0.8]]},  # sklearn's predict_proba, MLServer
    {"outputs": [{"name": "p", "shape": [1, 3], "datatype": "FP32", "data": [0.1, 0.1, 0.8]}]},
    {"outputs": [{"name": "cls", "shape": [2], "datatype": "INT64", "data": [2, 0]}]},
    {"data": {"names": ["t:0", "t:1", "t:2"], "ndarray": [[0.1, 0.2, 0.7]]}},  # Seldon's placeholders are indexes
    {"predictions": [0.97]},
])
def test_without_class_names_an_index_or_score_is_no_class(body: dict) -> None:
    with pytest.raises(MalformedEvent, match="--class-names") as caught:
        predicted_classes(body, DecodeOptions())
    assert caught.value.reason == "NoClassNames"


def test_without_class_names_a_candidates_scores_never_pass_as_another_class() -> None:
    """The shipped args (no --class-names): stable answers labels, the candidate scores. Its "2" beside stable's
    "nsfw" hid every nsfw it predicted: a 60%-nsfw candidate read as 0% nsfw."""
    exporter = PredictionExporter(DecodeOptions())
    assert exporter.handle(kserve_headers(event_id="s"), b'{"predictions": ["nsfw", "safe"]}', "model_version=6") \
        == "counted"
    scores = json.dumps({"predictions": [[0.1, 0.1, 0.8], [0.1, 0.1, 0.8], [0.9, 0.05, 0.05]]}).encode()
    assert exporter.handle(kserve_headers(event_id="c"), scores, "model_version=7") == "malformed"
    assert malformed(exporter, "NoClassNames") == 1
    assert not [s for m in exporter.metrics.registry.collect() for s in m.samples
                if s.name == "modelrollout_predictions_total" and s.labels["model_version"] == "7"]
    # Labels are still counted as they are.
    assert exporter.handle(kserve_headers(event_id="l"), b'{"predictions": ["nsfw"]}', "model_version=7") \
        == "counted"


MODEL_CLOUDEVENT = {"specversion": "1.0", "id": "model-answer", "source": "io.kserve.inference.nsfw",
                    "type": "io.kserve.inference.response", "datacontenttype": "application/json",
                    "data": {"predictions": ["nsfw"]}}


def test_a_binary_event_with_a_cloudevents_content_type_is_read_by_its_headers() -> None:
    """KServe's agent sends the response in binary mode with the client's Content-Type: a client that sent a
    structured CloudEvent gets its answer logged as application/cloudevents+json, with the model's own CloudEvent
    (another type, no identity) as the body."""
    exporter = PredictionExporter(NAMES)
    cloudevents = {"Content-Type": "application/cloudevents+json"}
    request = {**kserve_headers("org.kubeflow.serving.inference.request", "r1", endpoint="canary"), **cloudevents}
    assert events.payload_unused(request)  # a request's payload stays unread whatever its Content-Type
    assert exporter.handle(request, json.dumps({**MODEL_CLOUDEVENT, "data": {"instances": [[1]]}}).encode(),
                           "") == "request"
    response = {**kserve_headers(event_id="r1"), **cloudevents}
    assert not events.payload_unused(response)
    assert exporter.handle(response, json.dumps(MODEL_CLOUDEVENT).encode(), "model_version=7") == "counted"
    assert exporter.handle({**kserve_headers(event_id="r2"), **cloudevents},
                           json.dumps({"predictions": [1]}).encode(), "model_version=7") == "counted"
    registry = exporter.metrics.registry
    assert registry.get_sample_value("modelrollout_predictions_total", {
        "namespace": "moderation", "inference_service": "nsfw", "variant": "canary", "model_version": "7",
        "class": "nsfw"}) == 1
    assert registry.get_sample_value("modelrollout_predictions_total", {
        "namespace": "moderation", "inference_service": "nsfw", "variant": "", "model_version": "7",
        "class": "nsfw"}) == 1
    assert not malformed(exporter, "UnknownEventType")


def test_without_a_specversion_header_a_cloudevents_body_is_still_structured() -> None:
    structured = {**MODEL_CLOUDEVENT, "type": "org.kubeflow.serving.inference.response", "id": "s1",
                  "namespace": "moderation", "inferenceservicename": "nsfw"}
    exporter = PredictionExporter(NAMES)
    assert exporter.handle({"Content-Type": "application/cloudevents+json"}, json.dumps(structured).encode(),
                           "model_version=7") == "counted"
    assert events.payload_unused({"Content-Type": "application/cloudevents+json",
                                  "Ce-Type": "org.kubeflow.serving.inference.request"}) is False


def test_without_class_names_the_exporter_warns_at_startup(monkeypatch: pytest.MonkeyPatch,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(server, "run_server", lambda *_, **__: None)
    with caplog.at_level(logging.INFO, logger=server.__name__):
        server.run("127.0.0.1", 0, NAMES)
        assert not caplog.records
        server.run("127.0.0.1", 0, DecodeOptions())
    (record,) = caplog.records
    assert record.levelno == logging.WARNING and "NoClassNames" in record.message and "0,1" in record.message


def test_each_drop_reason_is_logged_once_in_ten_minutes_without_its_payload(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    exporter = PredictionExporter(DecodeOptions(), clock=lambda: now[0])
    index = json.dumps({"predictions": [1]}).encode()
    mismatch = json.dumps({"data": {"names": ["secret-column", "b"], "ndarray": [[0.1, 0.9]]}}).encode()

    def warnings() -> list[str]:
        return [r.message for r in caplog.records if r.levelno == logging.WARNING]

    with caplog.at_level(logging.INFO, logger=server.__name__):
        assert [exporter.handle(kserve_headers(), index, "model_version=1") for _ in range(3)] == ["malformed"] * 3
        now[0] = 599.0
        exporter.handle(kserve_headers(), index, "model_version=1")
        assert len(warnings()) == 1 and "NoClassNames" in warnings()[0] and "--class-names" in warnings()[0]
        now[0] = 600.0
        exporter.handle(kserve_headers(), index, "model_version=1")
        assert len(warnings()) == 2
        options = DecodeOptions(("a", "b"))
        other = PredictionExporter(options, clock=lambda: now[0])
        assert other.handle(kserve_headers(), mismatch, "model_version=1") == "malformed"
    assert "ClassNamesMismatch" in warnings()[2] and "secret-column" not in caplog.text
    assert malformed(exporter, "NoClassNames") == 5
