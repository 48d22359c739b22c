"""/metrics at the exporter's bounds fits its memory limit (256Mi): the prediction series are bounded in all, and
a render holds little more than twice its text."""

from __future__ import annotations

import gc
import json
import tracemalloc

from prometheus_client.parser import text_string_to_metric_families

from controller.exporter.events import MAX_LABEL_LENGTH, DecodeOptions
from controller.exporter.server import MAX_NAMESPACE_SERIES, MAX_TOTAL_SERIES, PREDICTIONS_METRIC, PredictionExporter

RENDER_BUDGET = 64 * 1024 * 1024


def label(prefix: str) -> str:
    """As long as a label may be, in characters of 4 bytes in UTF-8 (and 4 in a Python string): the longest text."""
    return prefix.ljust(MAX_LABEL_LENGTH, "\N{GRINNING FACE}")


def send(exporter: PredictionExporter, namespace: int, version: int, classes: list[str],
         service: str = label("s")) -> str:
    headers = {"Ce-Id": f"{namespace}-{version}", "Ce-Type": "org.kubeflow.serving.inference.response",
               "Ce-Specversion": "1.0", "Ce-Namespace": label(f"ns{namespace}-"), "Ce-Inferenceservicename": service}
    body = json.dumps({"predictions": classes}).encode()
    return exporter.handle(headers, body, "variant=canary&model_version=" + label(f"v{version}-"))


def fill(exporter: PredictionExporter) -> None:
    """Four namespaces, each 64 classes (the per-namespace cap) for 24 model versions: each its share, and
    MAX_TOTAL_SERIES in all."""
    classes = [label(f"c{c}-") for c in range(64)]
    outcomes = [send(exporter, namespace, version, classes) for namespace in range(4) for version in range(24)]
    assert outcomes == ["counted"] * 96
    assert exporter._series(label("ns0-")) == MAX_NAMESPACE_SERIES == 24 * 64
    assert exporter._series() == MAX_TOTAL_SERIES == 4 * 24 * 64


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
    (predictions,) = [f for f in text_string_to_metric_families(text) if f.name == PREDICTIONS_METRIC]
    assert len(predictions.samples) == MAX_TOTAL_SERIES and {s.value for s in predictions.samples} == {1.0}
    assert text.count(f"# TYPE {PREDICTIONS_METRIC}_total ") == 1  # rendered in chunks, introduced once


def test_the_series_bound_refuses_the_next_identity_and_the_next_class() -> None:
    exporter = PredictionExporter(DecodeOptions(), max_total_series=6, max_namespace_series=6)
    assert send(exporter, 0, 1, ["safe", "nsfw"], "svc") == "counted"
    assert send(exporter, 0, 2, ["safe"], "svc") == "counted"  # and nsfw at 0: 4 series
    assert send(exporter, 1, 1, ["safe", "nsfw"], "svc") == "counted"  # 6
    assert send(exporter, 0, 3, ["safe"], "svc") == "malformed"  # a version would bring two
    assert send(exporter, 0, 1, ["safe", "suggestive"], "svc") == "malformed"  # a class, one per version
    assert send(exporter, 0, 1, ["safe", "nsfw"], "svc") == "counted"  # known series: counted
    registry = exporter.metrics.registry
    assert registry.get_sample_value("modelrollout_exporter_malformed_events_total", {"reason": "TooManySeries"}) == 2
    assert exporter._series() == 6
    # The refused event counted nothing, not even its known class.
    assert registry.get_sample_value("modelrollout_predictions_total", {
        "namespace": label("ns0-"), "inference_service": "svc", "variant": "canary",
        "model_version": label("v1-"), "class": "safe"}) == 2


def test_idle_identities_give_their_series_to_a_new_one() -> None:
    now = [0.0]
    exporter = PredictionExporter(DecodeOptions(("safe", "nsfw")), max_total_series=4, max_namespace_series=4,
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
    exporter = PredictionExporter(DecodeOptions(("safe", "nsfw")), max_total_series=8, max_namespace_series=4)
    assert [send(exporter, 0, v, ["nsfw"], "svc") for v in (1, 2, 3)] == ["counted", "counted", "malformed"]
    assert send(exporter, 0, 1, ["suggestive"], "svc") == "malformed"  # a class would add one per version
    assert send(exporter, 1, 1, ["nsfw"], "svc") == "counted"
    assert (exporter._series(label("ns0-")), exporter._series()) == (4, 6)
