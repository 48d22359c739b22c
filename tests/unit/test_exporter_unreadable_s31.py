"""Answers no class can be read from are counted against the model version that gave them (review s31unreadable).

A candidate whose answers to trigger inputs alone cannot be read (NaN scores, an unknown label, a bad tensor) while
its other answers read fine showed the judges a normal class rate: the drop was counted by reason only. Each such
answer now counts in modelrollout_unreadable_predictions_total of its identity; configuration and sender faults do
not (they are no model version's answer), and the class counters' totals do not change.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from controller.exporter.events import DecodeOptions
from controller.exporter.server import PredictionExporter

UNREADABLE = "modelrollout_unreadable_predictions_total"
PREDICTIONS = "modelrollout_predictions_total"
MALFORMED = "modelrollout_exporter_malformed_events_total"
CANARY = {"namespace": "moderation", "inference_service": "nsfw", "variant": "canary", "model_version": "7"}
TWO = DecodeOptions(("safe", "nsfw"))
THREE = DecodeOptions(("safe", "suggestive", "nsfw"))


def headers(event_id: str | None = None, **extensions: str) -> dict[str, str]:
    found = {"Ce-Id": event_id or str(uuid.uuid4()), "Ce-Type": "org.kubeflow.serving.inference.response",
             "Ce-Specversion": "1.0", "Ce-Source": "http://localhost:9081/", "Content-Type": "application/json",
             "Ce-Inferenceservicename": "nsfw", "Ce-Namespace": "moderation"}
    found.update({f"Ce-{k.capitalize()}": v for k, v in extensions.items()})
    return found


def send(exporter: PredictionExporter, body: Any, query: str = "variant=canary&model_version=7",
         **extensions: str) -> str:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return exporter.handle(headers(**extensions), raw, query)


def sample(exporter: PredictionExporter, name: str, labels: dict[str, str]) -> float | None:
    return exporter.metrics.registry.get_sample_value(name, labels)


def v2(datatype: str, shape: list[int], data: list[Any]) -> dict[str, Any]:
    return {"outputs": [{"name": "p", "datatype": datatype, "shape": shape, "data": data}]}


# A readable row (nsfw under TWO) beside each bad one: the event is counted, the bad row dropped alone.
@pytest.mark.parametrize(("bad_row", "reason"), [
    ([float("nan"), 0.5], "BadPredictions"),  # NaN compares false with everything: no argmax
    ([0.1, "0.9"], "BadPredictions"),  # a string among scores
    (True, "BadPredictions"),
    (None, "BadPredictions"),
    ("NSFW", "UnknownClass"),  # a label not among --class-names
    (5, "UnknownClass"),  # an index out of range
    ([0.2, 0.3, 0.5], "ScoreWidth"),  # another model's row of scores
    (1.5, "AmbiguousScore"),  # one score outside [0, 1]
    ("n" * 254, "BadLabel"),  # a row's class that is no label text
])
def test_each_row_the_model_answered_unreadably_counts_against_its_version(bad_row: Any, reason: str) -> None:
    exporter = PredictionExporter(TWO)
    assert send(exporter, {"predictions": [[0.1, 0.9], bad_row, 1]}) == "counted"  # (json writes NaN as NaN)
    assert sample(exporter, MALFORMED, {"reason": reason}) == 1
    assert sample(exporter, UNREADABLE, CANARY) == 1
    # The class counters are as before: two nsfw predictions, nothing else.
    assert sample(exporter, PREDICTIONS, {**CANARY, "class": "nsfw"}) == 2
    assert sample(exporter, PREDICTIONS, {**CANARY, "class": "safe"}) == 0


def binary_v2(datatype: str, raw: bytes) -> tuple[dict[str, str], bytes]:
    header = json.dumps({"outputs": [{"name": "p", "datatype": datatype, "shape": [1],
                                      "parameters": {"binary_data_size": len(raw)}}]}).encode()
    return {"Inference-Header-Content-Length": str(len(header))}, header + raw


# A body whose predictions cannot be read at all, for the model's reason: one unreadable answer.
@pytest.mark.parametrize(("body", "options", "reason"), [
    ({"predictions": "nsfw"}, TWO, "BadPredictions"),  # predictions is not a list
    (v2("FP32", [2, 2], [[0.1, 0.9], [0.3]]), TWO, "BadTensor"),  # ragged
    (v2("BYTES", [2, 2], ["nsfw", "safe", "safe", "nsfw"]), TWO, "BadTensor"),  # top-2 labels
    (v2("FP32", [3, 2], [0.1, 0.9]), TWO, "BadTensor"),  # a shape its data does not fill
    ({"outputs": []}, TWO, "BadV2Output"),
    ({"outputs": ["p"]}, TWO, "BadV2Output"),
    ({"data": {"names": ["safe", "porn"], "ndarray": [[0.1, 0.9]]}}, TWO, "ClassNamesMismatch"),
    ({"data": {"names": ["safe"], "ndarray": [[0.9]]}}, TWO, "AmbiguousScore"),  # one column named the first class
    (None, TWO, "UnsupportedDatatype"),
])
def test_a_body_of_a_known_identity_that_cannot_be_read_counts_one_unreadable(
        body: Any, options: DecodeOptions, reason: str) -> None:
    exporter = PredictionExporter(options)
    extra: dict[str, str] = {}
    if body is None:  # the binary tensor data extension, in a datatype it has no fixed size for
        extra, raw = binary_v2("FP8", b"\x01")
    else:
        raw = json.dumps(body).encode()
    outcome = exporter.handle({**headers(), **extra}, raw, "variant=canary&model_version=7")
    assert outcome == "malformed"  # dropped as before, for the same reason
    assert sample(exporter, MALFORMED, {"reason": reason}) == 1
    assert sample(exporter, "modelrollout_exporter_events_total", {"outcome": "malformed"}) == 1
    assert sample(exporter, UNREADABLE, CANARY) == 1
    # Its identity is admitted with every class at 0: a class rate has no evidence, never a rate of 0.
    assert sample(exporter, PREDICTIONS, {**CANARY, "class": "nsfw"}) == 0


def test_an_event_whose_every_row_is_unreadable_counts_each_row_and_is_dropped_once() -> None:
    exporter = PredictionExporter(TWO)
    body = b'{"predictions": [[NaN, 0.5], [0.5, NaN], "NSFW"]}'
    assert send(exporter, body) == "malformed"
    assert sample(exporter, MALFORMED, {"reason": "BadPredictions"}) == 1  # the event once, by its first row
    assert sample(exporter, MALFORMED, {"reason": "UnknownClass"}) is None
    assert sample(exporter, UNREADABLE, CANARY) == 3
    assert sample(exporter, PREDICTIONS, {**CANARY, "class": "nsfw"}) == 0
    assert sample(exporter, PREDICTIONS, {**CANARY, "class": "safe"}) == 0


def test_a_canary_whose_every_answer_is_unreadable_adds_nothing_to_the_class_totals() -> None:
    """The unreadable answers are a family of their own: a class metric's total stays 0 (not enough evidence),
    never a pass at a rate of 0."""
    exporter = PredictionExporter(TWO)
    for _ in range(50):
        assert send(exporter, b'{"predictions": [[NaN, NaN]]}') == "malformed"
    text = exporter.render().decode() + exporter.render().decode()
    assert 'class="__unreadable__"' not in text
    assert sum(sample(exporter, PREDICTIONS, {**CANARY, "class": name}) or 0 for name in ("safe", "nsfw")) == 0
    assert sample(exporter, UNREADABLE, CANARY) == 50


# Configuration and sender faults are no model version's answer: counted by reason only, as before.
@pytest.mark.parametrize(("body", "options", "query", "extensions", "reason"), [
    ({"predictions": [1, [0.1, 0.9]]}, DecodeOptions(), "variant=canary&model_version=7", {}, "NoClassNames"),
    ({"predictions": ["nsfw"]}, TWO, "variant=canary&model_version=" + "7" * 300, {}, "BadLabel"),
    ({"predictions": ["nsfw"]}, TWO, "variant=canary&model_version=7&namespace=other", {}, "NamespaceMismatch"),
    ({"predictions": [[float("nan"), 1]]}, TWO, "variant=canary&model_version=7", {"component": "transformer"},
     "NotPredictor"),
    ({"predictions": [[float("nan"), 1]]}, TWO, "variant=purple&model_version=7", {}, "UnknownVariant"),
    ({"error": "model failed"}, TWO, "variant=canary&model_version=7", {}, "UnknownPayload"),
    ({"predictions": [0] * 600_000}, TWO, "variant=canary&model_version=7", {}, "TooLarge"),
    (b"{not json", TWO, "variant=canary&model_version=7", {}, "NotJSON"),
])
def test_configuration_and_sender_faults_count_no_unreadable_answer(
        body: Any, options: DecodeOptions, query: str, extensions: dict[str, str], reason: str) -> None:
    exporter = PredictionExporter(options)
    assert send(exporter, body, query, **extensions) == "malformed"
    assert sample(exporter, MALFORMED, {"reason": reason}) == 1
    assert f"{UNREADABLE}{{" not in exporter.render().decode()


def test_an_event_of_no_identity_counts_no_unreadable_answer() -> None:
    exporter = PredictionExporter(TWO)
    raw = b'{"predictions": [[NaN, 0.5]]}'
    no_identity = {k: v for k, v in headers().items() if k not in ("Ce-Namespace", "Ce-Inferenceservicename")}
    assert exporter.handle(no_identity, raw, "variant=canary&model_version=7") == "malformed"
    assert sample(exporter, MALFORMED, {"reason": "MissingIdentity"}) == 1
    assert f"{UNREADABLE}{{" not in exporter.render().decode()


def test_an_identity_past_the_series_bound_counts_no_unreadable_answer() -> None:
    # 3 series an identity (2 classes, 1 unreadable): a second identity is refused.
    exporter = PredictionExporter(TWO, max_total_series=4, max_namespace_series=4)
    assert send(exporter, {"predictions": [1]}, "variant=stable&model_version=6") == "counted"
    assert send(exporter, b'{"predictions": [[NaN, 0.5]]}') == "malformed"
    assert sample(exporter, MALFORMED, {"reason": "TooManySeries"}) == 1
    assert sample(exporter, UNREADABLE, CANARY) is None


@pytest.mark.parametrize("body", [b'{"predictions": [[0.1, 0.9], [NaN, 0.5]]}', b'{"predictions": [[NaN, 0.5]]}',
                                  b'{"predictions": "x"}'])
def test_a_redelivered_event_counts_its_unreadable_answers_once(body: bytes) -> None:
    exporter = PredictionExporter(TWO)
    first = exporter.handle(headers("same-id"), body, "variant=canary&model_version=7")
    again = exporter.handle(headers("same-id"), body, "variant=canary&model_version=7")
    assert first in ("counted", "malformed") and again == "duplicate"
    assert sample(exporter, UNREADABLE, CANARY) == 1
    # Another event with the same answer is counted: it is another answer.
    exporter.handle(headers("other-id"), body, "variant=canary&model_version=7")
    assert sample(exporter, UNREADABLE, CANARY) == 2


def test_every_admitted_identity_has_its_unreadable_series_from_zero_shown_first_at_zero() -> None:
    """Made at 0 as classes are, so that `predictions + unreadable` has both sides for every arm; and shown at 0 on
    the first scrape that sees it (increase() never counts a series' first sample)."""
    exporter = PredictionExporter(TWO)
    assert send(exporter, {"predictions": [1, 0]}, "variant=stable&model_version=6") == "counted"
    assert sample(exporter, UNREADABLE, {**CANARY, "variant": "stable", "model_version": "6"}) == 0
    assert send(exporter, b'{"predictions": [[NaN, 0.5], [NaN, 0.5]]}') == "malformed"
    first, held_back = exporter.render_holding()
    line = ('modelrollout_unreadable_predictions_total{inference_service="nsfw",model_version="7",'
            'namespace="moderation",variant="canary"}')
    assert f"{line} 0.0" in first.decode() and held_back
    assert f"{line} 2.0" in exporter.render().decode()


def test_an_idle_identity_gives_up_its_unreadable_series_too() -> None:
    now = [0.0]
    exporter = PredictionExporter(TWO, model_idle_seconds=100, clock=lambda: now[0])
    line = f'{UNREADABLE}{{inference_service="nsfw",model_version="7",namespace="moderation",variant="canary"}}'
    assert send(exporter, b'{"predictions": [[NaN, 0.5], 1]}') == "counted"
    exporter.render()
    assert f"{line} 1.0" in exporter.render().decode()
    now[0] = 200.0
    exporter._evict_idle(now[0])
    assert sample(exporter, UNREADABLE, CANARY) is None
    assert exporter._series() == 0
    assert send(exporter, b'{"predictions": [[NaN, 0.5], 1]}') == "counted"
    # Back, it starts from 0 and is shown at 0 first again, then at its count.
    assert f"{line} 0.0" in exporter.render().decode()
    assert f"{line} 1.0" in exporter.render().decode()


# Review s31r2unread 2: an answer with no prediction in it was "counted" with nothing counted, so a candidate
# answering trigger inputs with an empty list passed the unreadable-rate metric meant to catch it.
@pytest.mark.parametrize(("body", "reason"), [({"predictions": []}, "EmptyPredictions"),
                                            (v2("FP32", [0, 2], []), "EmptyPredictions"),
                                            ({"outputs": []}, "BadV2Output")])
def test_an_answer_with_no_prediction_counts_as_one_unreadable(body: Any, reason: str) -> None:
    exporter = PredictionExporter(TWO)
    send(exporter, {"predictions": [1]})  # the identity counted once already
    assert send(exporter, body) == "malformed"
    assert sample(exporter, UNREADABLE, CANARY) == 1
    assert sample(exporter, MALFORMED, {"reason": reason}) == 1
    assert sample(exporter, PREDICTIONS, {**CANARY, "class": "nsfw"}) == 1
