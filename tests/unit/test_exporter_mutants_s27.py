"""Exporter decoding: which V2 output is read, structured events with Content-Type parameters, and label length
without class names. Each case pins behaviour a mutation review (s27mut) found no test held."""

from __future__ import annotations

import json

from test_exporter_events import NAMES, kserve_headers

from controller.exporter.events import DecodeOptions, predicted_classes
from controller.exporter.server import PredictionExporter

COUNTED = {"namespace": "moderation", "inference_service": "nsfw", "variant": "canary", "model_version": "7"}


def test_a_v2_response_with_several_outputs_is_read_from_the_first_without_v2_output() -> None:
    # E33: the first output is the one read (the model's documented order), not the last.
    body = {"outputs": [{"name": "label", "shape": [1], "datatype": "BYTES", "data": ["nsfw"]},
                        {"name": "probabilities", "shape": [1, 2], "datatype": "FP32", "data": [0.9, 0.1]}]}
    assert predicted_classes(body, NAMES) == ("nsfw",)
    assert predicted_classes(body, DecodeOptions(NAMES.class_names, v2_output="probabilities")) == ("safe",)


def test_a_structured_event_whose_content_type_has_a_charset_is_counted() -> None:
    # E70: media type parameters (RFC 9110) follow "application/cloudevents+json"; it is still structured mode.
    exporter = PredictionExporter(NAMES)
    structured = {"specversion": "1.0", "id": "s1", "type": "org.kubeflow.serving.inference.response",
                  "source": "x", "namespace": "moderation", "inferenceservicename": "nsfw",
                  "data": {"predictions": ["nsfw"]}}
    outcome = exporter.handle({"Content-Type": "application/cloudevents+json; charset=UTF-8"},
                              json.dumps(structured).encode(), "variant=canary&model_version=7")
    assert outcome == "counted"
    assert exporter.metrics.registry.get_sample_value("modelrollout_predictions_total",
                                                      {**COUNTED, "class": "nsfw"}) == 1


def test_without_class_names_a_class_label_past_the_length_limit_is_dropped_as_bad_label() -> None:
    # E55: a label is a Prometheus label value; without --class-names its length is the only bound on /metrics.
    exporter = PredictionExporter(DecodeOptions())
    assert exporter.handle(kserve_headers(), json.dumps({"predictions": ["n" * 300]}).encode(),
                           "variant=canary&model_version=7") == "malformed"
    assert exporter.metrics.registry.get_sample_value("modelrollout_exporter_malformed_events_total",
                                                      {"reason": "BadLabel"}) == 1
    assert exporter.handle(kserve_headers(event_id="e2"), json.dumps({"predictions": ["nsfw"]}).encode(),
                           "variant=canary&model_version=7") == "counted"
