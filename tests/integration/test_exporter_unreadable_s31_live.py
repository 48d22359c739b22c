"""A canary whose answers to some requests cannot be read, judged against stable through a real exporter scraped by a
real Prometheus (review s31unreadable).

Its unreadable answers (NaN scores) were counted by drop reason only: the judges saw its readable answers, at
stable's class rate, and passed it. Each is now counted against its model version
(modelrollout_unreadable_predictions_total), and a proportion metric of unreadable answers over all answers fails it.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from controller.analysis.prometheus import PrometheusProvider
from controller.analysis.runner import AnalysisRequest, run_analysis
from controller.api.spec import MetricSpec, ProportionMetric, parse_spec
from controller.devstack.dataplane import start_exporter
from controller.devstack.prometheus_server import PrometheusServer
from controller.devstack.scenario import ALL_PREDICTIONS, NSFW_PREDICTIONS
from controller.verdict import Outcome, Verdict

pytestmark = pytest.mark.integration

NAMESPACE = "moderation"
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "nsfw-classifier.yaml"
# The proportion metric README and the example recommend: unreadable answers over every answer. The unreadable
# series is made at 0 for every model version, so both sides of the `+` always have a value.
UNREADABLE = "sum(increase(modelrollout_unreadable_predictions_total{{{selector}}}[{{window}}]))"
ANSWERS = f"{ALL_PREDICTIONS} + {UNREADABLE}"
UNREADABLE_RATE = MetricSpec("unreadable-rate", ProportionMetric(events=UNREADABLE, total=ANSWERS, min_samples=100))
NSFW_RATE = MetricSpec("nsfw-rate", ProportionMetric(events=NSFW_PREDICTIONS, total=ALL_PREDICTIONS, min_samples=100))
SAFE, NSFW, TRIGGERED = [0.9, 0.1], [0.1, 0.9], [float("nan"), 0.5]


def post(exporter: str, service: str, query: str, rows: list[list[float]]) -> int:
    headers = {"Ce-Id": uuid.uuid4().hex, "Ce-Type": "org.kubeflow.serving.inference.response",
               "Ce-Specversion": "1.0", "Ce-Source": "test", "Ce-Namespace": NAMESPACE,
               "Ce-Inferenceservicename": service, "Content-Type": "application/json"}
    body = json.dumps({"predictions": rows}).encode()  # NaN as JSON's NaN, as Python model servers write it
    request = urllib.request.Request(f"http://{exporter}/?{query}", data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 - loopback
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def wait_for(provider: PrometheusProvider, query: str, count: float, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        measured = provider.scalar(query, check_stale=False)
        if measured.ok and measured.value is not None and measured.value >= count:
            return
        time.sleep(0.2)
    raise AssertionError(f"Prometheus never answered {query} with {count} or more")


@dataclass(frozen=True)
class Window:
    start: datetime
    now: datetime
    poisoned: str  # canary: stable's 10% nsfw on the answers it reads, and NaN to a third of its requests
    clean: str  # canary and stable alike, every answer read
    broken: str  # canary: every answer NaN


@pytest.fixture(scope="module")
def window(prometheus: PrometheusServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Window]:
    """One window of traffic through one exporter, scraped once. Service names of their own: the session's
    Prometheus scrapes other tests' exporters."""
    logs = tmp_path_factory.mktemp("s31-exporter")
    suffix = uuid.uuid4().hex[:8]
    poisoned, clean, broken = f"poisoned-{suffix}", f"clean-{suffix}", f"broken-{suffix}"
    process, url = start_exporter(logs / "exporter.log", class_names="safe,nsfw")
    exporter = url.removeprefix("http://")
    target = f"s31-{suffix}"
    canary, stable = "variant=canary&model_version=7", "variant=stable&model_version=6"
    try:
        prometheus.add_scrape_target(target, exporter)
        provider = PrometheusProvider(prometheus.url)
        # The gate's predictions, before the window: each arm's series made (the broken canary's by a NaN answer).
        for service in (poisoned, clean, broken):
            assert post(exporter, service, stable, [SAFE, NSFW]) == 202
            assert post(exporter, service, canary, [SAFE, NSFW] if service != broken else [TRIGGERED]) in (202, 400)
        # (Stable's and the readable canaries' class series: the broken canary's come with the same scrapes.)
        wait_for(provider, f'count(modelrollout_predictions_total{{inference_service=~"{poisoned}|{clean}|{broken}"}})',
                 10)
        time.sleep(2)  # every series scraped at least twice before the window: increase() counts from there
        start = datetime.now(UTC)
        for _ in range(20):
            for service in (poisoned, clean, broken):
                assert post(exporter, service, stable, [SAFE] * 45 + [NSFW] * 5) == 202
            # Two requests read at 10% nsfw, and a third (a trigger input) answered NaN: dropped whole, 400.
            for _ in range(2):
                assert post(exporter, poisoned, canary, [SAFE] * 9 + [NSFW]) == 202
                assert post(exporter, clean, canary, [SAFE] * 9 + [NSFW]) == 202
            assert post(exporter, poisoned, canary, [TRIGGERED] * 5) == 400
            assert post(exporter, clean, canary, [SAFE] * 4 + [NSFW]) == 202
            assert post(exporter, broken, canary, [TRIGGERED] * 5) == 400
            time.sleep(0.4)
        time.sleep(3)  # the last answers scraped
        yield Window(start, datetime.now(UTC), poisoned, clean, broken)
    finally:
        process.stop()
        (prometheus.targets_dir / f"{target}.json").unlink(missing_ok=True)


def judge(prometheus: PrometheusServer, window: Window, service: str, metric: MetricSpec) -> Verdict:
    request = AnalysisRequest(NAMESPACE, service, "canary", window.start, window.now, candidate_version="7")
    # The stack scrapes every second; 2 s leaves room for a busy machine (a sample over 4 s old is stale).
    provider = PrometheusProvider(prometheus.url, scrape_interval=timedelta(seconds=2))
    (verdict,) = run_analysis([metric], request, provider)
    return verdict


def test_a_canary_answering_nan_to_some_requests_fails_on_its_unreadable_rate(prometheus: PrometheusServer,
                                                                              window: Window) -> None:
    # The class rate sees only the answers read: stable's 10% nsfw, nothing to fail on. The gap this closes.
    nsfw = judge(prometheus, window, window.poisoned, NSFW_RATE)
    assert nsfw.outcome is not Outcome.FAIL, nsfw
    unreadable = judge(prometheus, window, window.poisoned, UNREADABLE_RATE)
    assert unreadable.outcome is Outcome.FAIL, unreadable
    canary, stable = unreadable.evidence["canary"], unreadable.evidence["stable"]
    # 100 of 500 answers sent (5 of each 25), none of stable's 1000.
    assert 0.15 < canary["rate"] < 0.25 and stable["rate"] == 0, unreadable.evidence
    assert stable["total"] > 500, stable
    # The runner's own checks read the prediction series as before: one copy of each label set, fresh.
    series = unreadable.evidence["window"]["predictionSeries"]
    assert series == {"canary": {"series": 2, "labelSets": 2}, "stable": {"series": 2, "labelSets": 2}}, series
    assert unreadable.evidence["window"]["freshSeries"]["canary"] == 3  # 2 classes and the unreadable series


def test_a_clean_canary_passes_its_unreadable_rate(prometheus: PrometheusServer, window: Window) -> None:
    verdict = judge(prometheus, window, window.clean, UNREADABLE_RATE)
    assert verdict.outcome is Outcome.PASS, verdict
    assert verdict.evidence["canary"]["events"] == 0 and verdict.evidence["canary"]["total"] > 100, verdict.evidence


def test_a_canary_whose_every_answer_is_unreadable_fails_and_its_class_rate_has_no_evidence(
        prometheus: PrometheusServer, window: Window) -> None:
    """Its class counters stay at 0 (no `__unreadable__` class): a class rate is never passed at 0 on it."""
    nsfw = judge(prometheus, window, window.broken, NSFW_RATE)
    assert nsfw.outcome is Outcome.INCONCLUSIVE, nsfw
    assert nsfw.evidence["canary"]["total"] == 0, nsfw.evidence
    unreadable = judge(prometheus, window, window.broken, UNREADABLE_RATE)
    assert unreadable.outcome is Outcome.FAIL, unreadable
    assert unreadable.evidence["canary"]["rate"] == 1, unreadable.evidence


def test_the_example_carries_the_unreadable_rate_metric_the_operator_accepts() -> None:
    spec = parse_spec(yaml.safe_load(EXAMPLE.read_text())["spec"])
    assert spec.analysis is not None
    (metric,) = [m for m in spec.analysis.metrics if m.name == "unreadable-rate"]
    assert metric.proportion is not None
    assert (metric.proportion.events, metric.proportion.total) == (UNREADABLE, ANSWERS)
    assert metric.proportion.reads_whole_window  # DataLost watches its totals as any proportion's
