"""Exporter scraped by the real Prometheus, read back through the provider; each query problem explained."""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from controller.analysis.prometheus import PrometheusProvider, QueryProblem
from controller.analysis.queries import QueryScope, promql_string, recent_samples_query, render
from controller.analysis.runner import AnalysisRequest, run_analysis
from controller.api.spec import MetricSpec, ProportionMetric
from controller.devstack.dataplane import start_exporter
from controller.devstack.processes import LOOPBACK, free_port
from controller.devstack.prometheus_server import PrometheusServer
from controller.devstack.scenario import ALL_PREDICTIONS, NSFW_PREDICTIONS
from controller.verdict import Outcome


@pytest.fixture
def exporter(tmp_path: Path) -> Iterator[str]:
    process, url = start_exporter(tmp_path / "exporter.log", class_names="safe,nsfw")
    try:
        yield url.removeprefix("http://")
    finally:
        process.stop()


def post_response(address: str, query: str, predictions: list[int], event_id: str, service: str = "nsfw") -> int:
    headers = {"Ce-Id": event_id, "Ce-Type": "org.kubeflow.serving.inference.response", "Ce-Specversion": "1.0",
               "Ce-Source": "test", "Ce-Namespace": "moderation", "Ce-Inferenceservicename": service,
               "Content-Type": "application/json"}
    body = json.dumps({"predictions": predictions}).encode()
    request = urllib.request.Request(f"http://{address}/?{query}", data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 - loopback
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def wait_until_scraped(provider: PrometheusProvider, series: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if provider.scalar(f"count({series})").ok:
            return
        time.sleep(0.2)
    raise AssertionError(f"Prometheus never scraped {series}")


@pytest.mark.integration
def test_counts_scraped_by_prometheus_are_read_per_variant(prometheus: PrometheusServer, exporter: str) -> None:
    prometheus.add_scrape_target("exporter-test", exporter)
    provider = PrometheusProvider(prometheus.url)
    canary = QueryScope("moderation", "nsfw", "canary", "5m")
    # The first scrape must see the series (the exporter creates every named class at zero on first sight),
    # or increase() has no earlier sample to count from.
    assert post_response(exporter, "variant=canary&model_version=7", [0], "warmup") == 202
    assert post_response(exporter, "variant=stable&model_version=6", [0], "warmup2") == 202
    wait_until_scraped(provider, 'modelrollout_predictions_total{namespace="moderation", variant="stable"}')
    for i in range(10):
        post_response(exporter, "variant=canary&model_version=7", [1, 1, 0], f"c{i}")
        post_response(exporter, "variant=stable&model_version=6", [0, 0, 0, 0, 1], f"s{i}")
    assert post_response(exporter, "variant=canary", [1], "bad") == 202  # no version: counted as unknown
    assert post_response(exporter, "variant=purple", [1], "bad2") == 400

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        events = provider.scalar(render(NSFW_PREDICTIONS, canary))
        total = provider.scalar(render(ALL_PREDICTIONS, canary))
        if events.ok and total.ok and total.value and total.value >= 31:
            break
        time.sleep(0.5)
    # increase() extrapolates to the window edges, so the counts are close to, not exactly, the posted ones.
    assert total.value == pytest.approx(32, rel=0.35), total
    assert events.value / total.value == pytest.approx(21 / 32, rel=0.1)
    stable_nsfw = provider.scalar(render(NSFW_PREDICTIONS, QueryScope("moderation", "nsfw", "stable", "5m")))
    stable_total = provider.scalar(render(ALL_PREDICTIONS, QueryScope("moderation", "nsfw", "stable", "5m")))
    assert stable_nsfw.ok and stable_total.ok
    assert stable_nsfw.value / stable_total.value == pytest.approx(0.2, rel=0.15)


@pytest.mark.integration
def test_a_series_no_longer_scraped_mid_window_is_stale_not_a_pass(prometheus: PrometheusServer,
                                                                   tmp_path: Path) -> None:
    """increase() keeps counting the samples from before the exporter died: the verdict must not be a pass."""
    process, url = start_exporter(tmp_path / "exporter.log", class_names="safe,nsfw")
    exporter = url.removeprefix("http://")
    service = "stale-arms"  # its own series: the session's Prometheus also scrapes the other tests' exporters
    # The local stack scrapes every second; 2 s leaves room for a busy machine (a sample over 4 s old is stale).
    provider = PrometheusProvider(prometheus.url, scrape_interval=timedelta(seconds=2))
    metric = MetricSpec("nsfw", ProportionMetric(events=NSFW_PREDICTIONS, total=ALL_PREDICTIONS, min_samples=10))
    canary = QueryScope("moderation", service, "canary", "5m", versions=("7",))
    start = datetime.now(UTC)
    try:
        prometheus.add_scrape_target("exporter-stale", exporter)
        for arm, version in (("canary", "7"), ("stable", "6")):
            assert post_response(exporter, f"variant={arm}&model_version={version}", [0], f"w{arm}", service) == 202
        wait_until_scraped(provider, f'modelrollout_predictions_total{{inference_service="{service}"}}')
        for i in range(10):
            post_response(exporter, "variant=canary&model_version=7", [0, 0, 0, 1], f"c{i}", service)
            post_response(exporter, "variant=stable&model_version=6", [0, 0, 0, 1], f"s{i}", service)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            total = provider.scalar(render(ALL_PREDICTIONS, canary))
            if total.ok and total.value and total.value >= 30:
                break
            time.sleep(0.5)
        fresh = provider.freshness(recent_samples_query(canary, provider.fresh_seconds), datetime.now(UTC))
        assert fresh.ok and fresh.value, fresh  # the counter, while scraped
    finally:
        process.stop()
        # Gone from discovery too, as the pods of a finished canary are (nor is its port scraped once reused).
        (prometheus.targets_dir / "exporter-stale.json").unlink(missing_ok=True)
    # Prometheus marks the series stale (no longer counted as sampled); wait past the 4 s.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and provider.scalar(f"count({{{canary.selector()}}})").ok:
        time.sleep(0.5)
    time.sleep(5)
    now = datetime.now(UTC)
    counted = provider.scalar(render(ALL_PREDICTIONS, canary), now)
    assert counted.ok and counted.value and counted.value > 0, counted  # the count alone still answers
    request = AnalysisRequest("moderation", service, "canary", start, now, candidate_version="7")
    (verdict,) = run_analysis([metric], request, provider)
    assert verdict.outcome is Outcome.INCONCLUSIVE, verdict
    assert verdict.evidence["problem"] == "StaleSeries" and "the canary arm" in verdict.reason, verdict.reason
    assert verdict.evidence["window"]["freshWithin"] == "4s (twice the assumed scrape interval of 2s)"


@pytest.mark.integration
def test_each_query_problem_has_its_own_explanation(prometheus: PrometheusServer) -> None:
    provider = PrometheusProvider(prometheus.url)
    assert provider.scalar("vector(3)").value == 3
    assert provider.scalar("scalar(vector(0.25))").value == 0.25  # a scalar result, not a vector
    empty = provider.scalar('modelrollout_predictions_total{namespace="nowhere"}')
    assert empty.problem is QueryProblem.EMPTY and "no series" in empty.detail
    nan = provider.scalar("vector(0) / vector(0)")
    assert nan.problem is QueryProblem.NOT_A_NUMBER
    rejected = provider.scalar("sum(rate(x[5m]")
    assert rejected.problem is QueryProblem.REJECTED and "parse error" in rejected.detail
    two_series = 'label_replace(vector(1), "a", "1", "", "") or label_replace(vector(2), "a", "2", "", "")'
    several = provider.scalar(two_series)
    assert several.problem is QueryProblem.AMBIGUOUS and "sum()" in several.detail
    unreachable = PrometheusProvider(f"http://{LOOPBACK}:{free_port()}", timeout_seconds=1, retries=0)
    down = unreachable.scalar("vector(1)")
    assert down.problem is QueryProblem.UNREACHABLE and "did not answer" in down.detail


@pytest.mark.integration
@pytest.mark.parametrize("value", ['a"b\\c', "line\nbreak\ttab\r", "nul\x00bell\x07del\x7fnel\x85",
                                   "replacement \ufffd char", "é ü 😀 \u2028", "\\u0041 \\x41 \\101", "'single'"])
def test_prometheus_reads_back_exactly_the_string_a_literal_holds(prometheus: PrometheusServer, value: str) -> None:
    """The escaping is proven by Prometheus' own parser: the label it sets holds the value itself."""
    query = f'label_replace(vector(1), "held", {promql_string(value)}, "", "")'
    url = f"{prometheus.url}/api/v1/query?" + urllib.parse.urlencode({"query": query})
    with urllib.request.urlopen(url, timeout=10) as answer:  # noqa: S310 - the test Prometheus, http on loopback
        body = json.load(answer)
    assert body["status"] == "success", body
    assert [series["metric"]["held"] for series in body["data"]["result"]] == [value]
