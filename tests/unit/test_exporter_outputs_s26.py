"""How an output's datatype and shape say what its values are: a label output counts one label per instance, an FP*
value is a score and never a class index, and a label not among --class-names is no class of its own."""

from __future__ import annotations

import json
import struct
from typing import Any

import pytest
from prometheus_client import generate_latest

from controller.exporter.events import DecodeOptions, MalformedEvent, parse_cloudevent, predicted_classes
from controller.exporter.server import PredictionExporter

NAMES = DecodeOptions(class_names=("safe", "nsfw"))
THREE = DecodeOptions(class_names=("safe", "suggestive", "nsfw"))
RESPONSE = "org.kubeflow.serving.inference.response"


def headers(event_id: str = "e1") -> dict[str, str]:
    return {"Ce-Id": event_id, "Ce-Type": RESPONSE, "Ce-Specversion": "1.0", "Ce-Source": "http://localhost:9081/",
            "Content-Type": "application/json", "Ce-Inferenceservicename": "nsfw", "Ce-Namespace": "moderation"}


def reason(body: Any, options: DecodeOptions) -> str:
    with pytest.raises(MalformedEvent) as caught:
        predicted_classes(body, options)
    return caught.value.reason


def v2(datatype: str, shape: list[int], data: list[Any]) -> dict[str, Any]:
    return {"outputs": [{"name": "out", "datatype": datatype, "shape": shape, "data": data}]}


def binary_bytes(shape: list[int], labels: list[str]) -> bytes:
    """A BYTES output in the binary tensor data extension: each label length-prefixed."""
    raw = b"".join(struct.pack("<I", len(label)) + label.encode() for label in labels)
    head = json.dumps({"outputs": [{"name": "out", "datatype": "BYTES", "shape": shape,
                                    "parameters": {"binary_data_size": len(raw)}}]}).encode()
    return head + raw


# 3. A label output is one label per instance: its shape says how many instances there are.

@pytest.mark.parametrize(("shape", "data"), [
    ([2, 2], ["nsfw", "suggestive", "safe", "nsfw"]),  # each instance's top-2 labels: 2 instances, not 4
    ([1], ["nsfw"] * 5),  # a shape that does not match the data
    ([2, 1], ["nsfw"] * 3),
    ([1, 1, 1], ["nsfw"]),
])
def test_a_bytes_output_that_is_not_one_label_per_instance_is_a_bad_tensor(shape: list[int], data: list[str]) -> None:
    assert reason(v2("BYTES", shape, data), THREE) == "BadTensor"
    assert reason(v2("BYTES", shape, data), DecodeOptions()) == "BadTensor"
    event = parse_cloudevent(headers(), binary_bytes(shape, data), max_bytes=1 << 20)
    assert reason(event.data, THREE) == "BadTensor"


@pytest.mark.parametrize(("shape", "data"), [([3], ["nsfw", "safe", "nsfw"]), ([3, 1], ["nsfw", "safe", "nsfw"]),
                                             ([3, 1], [["nsfw"], ["safe"], ["nsfw"]])])
def test_a_bytes_output_of_n_or_n_by_1_counts_one_label_per_instance(shape: list[int], data: list[Any]) -> None:
    assert predicted_classes(v2("BYTES", shape, data), THREE) == ("nsfw", "safe", "nsfw")
    flat = [label[0] if isinstance(label, list) else label for label in data]
    event = parse_cloudevent(headers(), binary_bytes(shape, flat), max_bytes=1 << 20)
    assert predicted_classes(event.data, THREE) == ("nsfw", "safe", "nsfw")


def test_a_top_2_label_output_counts_nothing_in_the_exporter() -> None:
    exporter = PredictionExporter(THREE)
    body = json.dumps(v2("BYTES", [2, 2], ["nsfw", "suggestive", "safe", "nsfw"])).encode()
    assert exporter.handle(headers(), body, "model_version=7") == "malformed"
    registry = exporter.metrics.registry
    assert registry.get_sample_value("modelrollout_exporter_malformed_events_total", {"reason": "BadTensor"}) == 1
    identity = {"namespace": "moderation", "inference_service": "nsfw", "variant": "", "model_version": "7"}
    # No class counted (the series is made at 0): one answer its model version could not be read from (s31).
    assert registry.get_sample_value("modelrollout_predictions_total", {**identity, "class": "nsfw"}) == 0
    assert registry.get_sample_value("modelrollout_unreadable_predictions_total", identity) == 1


# 4. An FP* value is a score: a sigmoid that saturates to exactly 1.0 or 0.0 is no class index.

@pytest.mark.parametrize("datatype", ["FP16", "FP32", "FP64"])
@pytest.mark.parametrize(("shape", "data"), [([2, 1], [1.0, 0.0]), ([2], [1.0, 0.0]), ([2, 1], [[1.0], [0.0]]),
                                             ([2], [1, 0]),  # a JSON encoder that writes 1.0 as 1
                                             ([1], [2.0])])
def test_an_fp_value_under_three_class_names_is_an_ambiguous_score_not_an_index(
        datatype: str, shape: list[int], data: list[Any]) -> None:
    assert reason(v2(datatype, shape, data), THREE) == "AmbiguousScore"
    assert reason(v2(datatype, shape, data), DecodeOptions()) == "NoClassNames"


def test_a_saturated_binary_fp_score_is_read_as_the_sigmoid_it_is() -> None:
    raw = struct.pack("<2e", 1.0, 0.0)  # FP16 saturates at 1.0 for any logit past ~8
    head = json.dumps({"outputs": [{"name": "p", "datatype": "FP16", "shape": [2, 1],
                                    "parameters": {"binary_data_size": len(raw)}}]}).encode()
    event = parse_cloudevent(headers(), head + raw, max_bytes=1 << 20)
    assert reason(event.data, THREE) == "AmbiguousScore"
    assert predicted_classes(event.data, NAMES) == ("nsfw", "safe")  # two names: the second's probability
    assert predicted_classes(v2("FP32", [3, 1], [1.0, 0.0, 0.7]), NAMES) == ("nsfw", "safe", "nsfw")
    assert reason(v2("FP32", [1], [10**400]), NAMES) == "BadPredictions"


def test_integer_datatypes_and_v1_integral_numbers_stay_class_indexes() -> None:
    assert predicted_classes(v2("INT64", [2, 1], [1, 0]), THREE) == ("suggestive", "safe")
    # V1 has no datatype: an integral number is an index (README: "Integer labels are indexes"), as XGBoost's
    # multi:softmax writes them (2.0), and as the golden gate reads them.
    assert predicted_classes({"predictions": [1.0, 2.0, 0]}, THREE) == ("suggestive", "nsfw", "safe")


# 5. With --class-names, a label not among them is dropped, never a class of its own.

@pytest.mark.parametrize("body", [
    {"predictions": ["NSFW", "nsfw"]},
    {"predictions": [{"label": "nsfw"}, {"label": "Safe"}]},
    v2("BYTES", [2], ["nsfw", "porn"]),
    {"data": {"ndarray": ["nsfw", "NSFW"]}},
])
def test_a_label_not_among_the_class_names_is_an_unknown_class(body: Any) -> None:
    assert reason(body, THREE) == "UnknownClass"


def test_without_class_names_labels_are_counted_as_they_come() -> None:
    assert predicted_classes({"predictions": ["NSFW", "nsfw", "Safe"]}, DecodeOptions()) == ("NSFW", "nsfw", "Safe")
    assert predicted_classes({"predictions": ["nsfw", "safe"]}, THREE) == ("nsfw", "safe")


def test_an_unknown_label_hides_nothing_from_the_judges() -> None:
    """A candidate that says "NSFW" beside stable's "nsfw" is never counted as a class of its own: each such row is
    dropped and counted by reason (UnknownClass, which the alert watches), as the golden gate loses that sample; the
    batch's readable rows are counted (review s30inference)."""
    exporter = PredictionExporter(THREE)
    body = json.dumps({"predictions": ["NSFW", "nsfw", "Safe"]}).encode()
    assert exporter.handle(headers(), body, "model_version=9") == "counted"
    registry = exporter.metrics.registry
    assert registry.get_sample_value("modelrollout_exporter_malformed_events_total", {"reason": "UnknownClass"}) == 2
    assert b'class="NSFW"' not in generate_latest(registry)
    assert registry.get_sample_value("modelrollout_predictions_total", {
        "namespace": "moderation", "inference_service": "nsfw", "variant": "", "model_version": "9",
        "class": "nsfw"}) == 1
    for cls in ("NSFW", "Safe"):
        assert registry.get_sample_value("modelrollout_predictions_total", {
            "namespace": "moderation", "inference_service": "nsfw", "variant": "", "model_version": "9",
            "class": cls}) is None
