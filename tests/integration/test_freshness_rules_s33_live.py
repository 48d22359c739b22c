"""Review s33judges: the stable arm's freshness check counted the shipped recording rules' series (no
model_version label, still evaluated for minutes after the exporter's series stop), so a stable arm that stopped
reporting was judged on a window cut short, and a canary with twice stable's nsfw rate passed."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from controller.analysis.prometheus import PrometheusProvider
from controller.analysis.runner import AnalysisRequest, run_analysis
from controller.api.spec import MetricSpec, ProportionMetric, ThresholdMetric
from controller.devstack.prometheus_server import PrometheusServer
from controller.devstack.scenario import ALL_PREDICTIONS, NSFW_PREDICTIONS
from controller.verdict import Outcome

pytestmark = pytest.mark.integration
WINDOW_SECONDS = 60
STABLE_STOPS_AFTER = 20


def _series(name: str, labels: dict[str, str], start: float, seconds: int, per_second: float) -> list[str]:
    text = ",".join(f'{key}="{value}"' for key, value in labels.items())  # OpenMetrics: no spaces
    return [f"{name}{{{text}}} {per_second * (step + 1):g} {start + step:.3f}" for step in range(seconds)]


def _history(start: float) -> str:
    """The exporter's counters (canary version 2 at twice stable's nsfw rate; stable version 1 stops reporting after
    STABLE_STOPS_AFTER seconds) and what the shipped rules write from them: a recording rule without model_version,
    and an alert with it, both still evaluated to the end of the window."""
    exporter = {"namespace": "moderation", "inference_service": "nsfw"}
    lines = ["# TYPE modelrollout_predictions_total counter"]
    for variant, version, nsfw, seconds in (("canary", "2", 10.0, WINDOW_SECONDS),
                                            ("stable", "1", 5.0, STABLE_STOPS_AFTER)):
        for cls, per_second in (("nsfw", nsfw), ("safe", 20.0 - nsfw)):
            labels = {**exporter, "variant": variant, "model_version": version, "class": cls}
            lines += _series("modelrollout_predictions_total", labels, start, seconds, per_second)
    lines += _series("inference_service_class:modelrollout_predictions:rate5m", {**exporter, "class": "nsfw"},
                     start, WINDOW_SECONDS, 1.0)
    # A user's recording rule that keeps the version (label_replace), for a service with no exporter series, judged
    # by a threshold (review s33r2).
    lines += _series("inference_service:app_latency_seconds:max",
                     {"namespace": "moderation", "inference_service": "latency-only", "model_version": "2"}, start,
                     WINDOW_SECONDS, 0.0)
    lines += _series("ALERTS", {**exporter, "alertname": "ModelRolloutUnreadableAnswers", "alertstate": "pending",
                                "model_version": "1"}, start, WINDOW_SECONDS, 0.0)
    return "\n".join([*lines, "# EOF", ""])


@contextlib.contextmanager
def judging_history(tmp_path: Path) -> Iterator[tuple[AnalysisRequest, PrometheusProvider]]:
    """Prometheus with _history backfilled, and a canary request over its window (last second included)."""
    start = float(int(time.time()) - 7200)
    server = PrometheusServer(tmp_path)
    server.backfill(_history(start))
    server.start()
    try:
        request = AnalysisRequest(namespace="moderation", target="nsfw", mode="canary",
                                  window_start=datetime.fromtimestamp(start, UTC),
                                  now=datetime.fromtimestamp(start + WINDOW_SECONDS - 1, UTC),
                                  candidate_version="2")
        yield request, PrometheusProvider(server.url, scrape_interval=timedelta(seconds=1))
    finally:
        server.stop()


def test_a_stable_arm_that_stopped_reporting_is_stale_whatever_rules_write(tmp_path: Path) -> None:
    with judging_history(tmp_path) as (request, provider):
        metric = MetricSpec("nsfw", ProportionMetric(events=NSFW_PREDICTIONS, total=ALL_PREDICTIONS, min_samples=30))
        latency = MetricSpec("latency", threshold=ThresholdMetric(
            query="max(max_over_time(inference_service:app_latency_seconds:max{{{selector}}}[{{window}}]))", max=0.5))
        (verdict,) = run_analysis([metric], request, provider)
        assert verdict.outcome is Outcome.INCONCLUSIVE, verdict
        assert verdict.reason.startswith("StaleSeries: the stable arm:"), verdict.reason
        assert verdict.evidence["window"]["freshSeries"] == {"canary": 2.0}, verdict.evidence["window"]
        # A threshold's source may be a rule: its own live series keeps it fresh.
        (judged,) = run_analysis([latency], dataclasses.replace(request, target="latency-only"), provider)
        assert judged.outcome is Outcome.PASS, judged
