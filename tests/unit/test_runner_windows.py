"""The runner's windows as Prometheus sees them: scraped every so often, counted by increase(), history a day apart."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest

from controller.analysis.prometheus import PrometheusProvider
from controller.analysis.runner import AnalysisRequest, run_analysis
from controller.api.spec import MetricSpec, ProportionMetric, ThresholdMetric
from controller.engine.decide import _outage
from controller.verdict import MEASUREMENT_OUTAGES, Outcome, Verdict
from tests.http_stub import serving
from tests.unit.test_prometheus_provider import BAKE_METRIC, EMPTY_VECTOR, FRESHNESS, NOW, Garbage, matrix, vector

SCRAPE = timedelta(seconds=30)
INTERVAL = timedelta(seconds=30)  # the analysis interval's default
METRIC = MetricSpec("nsfw", ProportionMetric(events='sum(increase(p{ {{selector}}, c="nsfw"}[{{window}}]))',
                                             total="sum(increase(p{ {{selector}} }[{{window}}]))"))


@pytest.fixture()
def prometheus() -> Iterator[Garbage]:
    g = Garbage()
    g.answer(200, vector(400))
    g.routes[("/api/v1/query", FRESHNESS)] = vector(2)
    with serving(g.server):
        yield g


def provider(prometheus: Garbage) -> PrometheusProvider:
    return PrometheusProvider(prometheus.url, retries=0, scrape_interval=SCRAPE)


@pytest.mark.parametrize("late", [timedelta(seconds=1), INTERVAL])
def test_a_day_long_bakes_deciding_run_reads_its_history_a_day_apart(prometheus: Garbage, late: timedelta) -> None:
    """The engine asks for the run that ends the bake only once its time is up: that run's window is a day and a
    moment, and read two days apart its history would reach 14 days back for a 7-day baseline."""
    started = NOW - timedelta(days=1) - late
    request = AnalysisRequest("ns", "svc", "bake", started, NOW, baseline_window=timedelta(days=7),
                              candidate_version="7", baseline_version="6")
    (verdict,) = run_analysis([BAKE_METRIC], request, provider(prometheus))
    assert verdict.evidence["window"]["historyEveryDays"] == 1, verdict.evidence["window"]
    assert verdict.evidence["window"]["historyAt"] == [(NOW - timedelta(days=d)).isoformat() for d in range(1, 8)]


@pytest.mark.parametrize(("window", "share"), [(timedelta(seconds=60), 0.5), (timedelta(minutes=10), 0.95)])
def test_canary_counts_are_what_the_scrapes_saw_not_increases_extrapolation(
        prometheus: Garbage, window: timedelta, share: float) -> None:
    """increase() stretches the change between a window's first and last sample to its edges, half a scrape
    beyond each on average: a 60s window read every 30s doubles the counts the test takes as evidence."""
    request = AnalysisRequest("ns", "svc", "canary", NOW - window, NOW, candidate_version="7")
    (verdict,) = run_analysis([METRIC], request, provider(prometheus))
    assert verdict.evidence["window"]["countsScaledBy"] == pytest.approx(share)
    for arm in ("canary", "stable"):
        assert verdict.evidence[arm]["events"] == pytest.approx(400 * share), verdict.evidence[arm]
        assert verdict.evidence[arm]["total"] == pytest.approx(400 * share), verdict.evidence[arm]


def test_bake_counts_now_and_in_history_are_scaled_alike(prometheus: Garbage) -> None:
    request = AnalysisRequest("ns", "svc", "bake", NOW - timedelta(minutes=10), NOW,
                              baseline_window=timedelta(days=3), candidate_version="7", baseline_version="6")
    (verdict,) = run_analysis([BAKE_METRIC], request, provider(prometheus))
    assert verdict.evidence["window"]["countsScaledBy"] == pytest.approx(0.95)
    assert verdict.evidence["raw"]["current"] == {"events": pytest.approx(380), "total": pytest.approx(380)}
    assert [day["total"] for day in verdict.evidence["history"]] == [pytest.approx(380)] * 3


def test_a_threshold_is_the_users_own_number_not_rescaled(prometheus: Garbage) -> None:
    metric = MetricSpec("errors", threshold=ThresholdMetric("sum(increase(e{ {{selector}} }[{{window}}]))", max=500))
    request = AnalysisRequest("ns", "svc", "canary", NOW - timedelta(seconds=60), NOW, candidate_version="7")
    (verdict,) = run_analysis([metric], request, provider(prometheus))
    assert verdict.outcome is Outcome.PASS and verdict.evidence["value"] == 400, verdict
    assert "countsScaledBy" not in verdict.evidence["window"]


@pytest.mark.parametrize("mode", ["canary", "bake"])
def test_a_window_of_fewer_than_two_scrapes_is_not_enough_evidence_not_no_data(prometheus: Garbage,
                                                                                  mode: str) -> None:
    """A step's first run with the defaults (a 30s interval, a 30s scrape): each series has one sample in the
    window, so increase() answers nothing although the exporter counted hundreds. Not a moment's outage either:
    the engine must not retry it as one at the end of a step."""
    prometheus.answer(200, EMPTY_VECTOR)  # as Prometheus answers: one sample is no increase, nor fresh in the hour
    prometheus.bodies["/api/v1/query_range"] = matrix()
    request = AnalysisRequest("ns", "svc", mode, NOW - INTERVAL, NOW, baseline_window=timedelta(days=3),
                              candidate_version="7", baseline_version="6")
    (verdict,) = run_analysis([METRIC], request, provider(prometheus))
    assert verdict.outcome is Outcome.INCONCLUSIVE, verdict
    assert verdict.reason == ("TooFewScrapes: the window (30s) is shorter than two scrapes (every 30s), too short "
                              "for increase() to count anything reliably; a step's window needs at least twice the "
                              "scrape interval")
    assert verdict.evidence["problem"] not in MEASUREMENT_OUTAGES
    earlier = Verdict("nsfw", Outcome.INCONCLUSIVE, "not enough samples yet", {})  # measured, the run before
    assert _outage((verdict,), (earlier,)) is None


def test_a_window_of_under_two_scrapes_that_prometheus_can_count_is_judged(prometheus: Garbage) -> None:
    """A 45s step scraped every 30s holds two samples half the time: when increase() answers, the counts are judged
    (at the floor's half), never refused for the window's length alone."""
    request = AnalysisRequest("ns", "svc", "canary", NOW - timedelta(seconds=45), NOW, candidate_version="7")
    (verdict,) = run_analysis([METRIC], request, provider(prometheus))
    assert "TooFewScrapes" not in verdict.reason and verdict.outcome is not Outcome.INCONCLUSIVE, verdict
    assert verdict.evidence["window"]["countsScaledBy"] == pytest.approx(0.5)
