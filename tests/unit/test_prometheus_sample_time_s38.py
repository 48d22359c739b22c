"""An instant answer stamped with a time other than the evaluation time asked for (review s37judges F2): real
Prometheus stamps it with the `time` it was sent, so one stamped otherwise (a cache or a proxy in between) is a
number for another moment and must not be judged as this window's. Served by a real local HTTP server."""

from __future__ import annotations

from datetime import timedelta

import pytest

from controller.analysis.prometheus import PrometheusProvider, QueryProblem
from controller.analysis.runner import AnalysisRequest, run_analysis
from controller.api.spec import MetricSpec, ProportionMetric
from controller.verdict import Outcome
from tests.unit.test_prometheus_provider import FRESHNESS, NOW, Garbage, garbage, vector

__all__ = ["garbage"]  # a fixture


def stamped_at(seconds: float | str, value: str = "40") -> bytes:
    """A one-number answer stamped with `seconds`, whatever time was asked for."""
    return (b'{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[%s,"%s"]}]}}'
            % (str(seconds).encode(), value.encode()))


def test_an_answer_for_another_moment_is_malformed_naming_both_times(garbage: Garbage) -> None:
    day_before = NOW - timedelta(days=1)
    garbage.answer(200, stamped_at(day_before.timestamp()))
    m = PrometheusProvider(garbage.url, retries=0).scalar("x", NOW, check_stale=False)
    assert m.problem is QueryProblem.MALFORMED and m.value is None, m
    assert garbage.asked[0]["time"] == f"{NOW.timestamp():.3f}", garbage.asked  # the time that was asked for
    assert f"sample time {day_before.timestamp():.3f} ({day_before.isoformat()})" in m.detail, m.detail
    assert f"evaluation time asked for, {NOW.timestamp():.3f} ({NOW.isoformat()})" in m.detail, m.detail


@pytest.mark.parametrize("offset", [0.0, 0.5, -1.0])
def test_an_answer_stamped_within_the_tolerance_is_read(garbage: Garbage, offset: float) -> None:
    garbage.answer(200, stamped_at(NOW.timestamp() + offset))
    m = PrometheusProvider(garbage.url, retries=0).scalar("x", NOW, check_stale=False)
    assert m.ok and m.value == 40, m


@pytest.mark.parametrize(("stamp", "shown"), [("NaN", "nan (not a time)"), ("1" + "0" * 30, "1000000000000")])
def test_an_answer_stamped_with_no_time_at_all_is_malformed(garbage: Garbage, stamp: str, shown: str) -> None:
    garbage.answer(200, stamped_at(stamp))
    m = PrometheusProvider(garbage.url, retries=0).scalar("x", NOW, check_stale=False)
    assert m.problem is QueryProblem.MALFORMED and shown in m.detail and "(not a time)" in m.detail, m


def test_a_query_asked_without_a_time_reads_any_stamp(garbage: Garbage) -> None:
    """No time asked for: Prometheus answers at its own clock, which the provider cannot know."""
    garbage.answer(200, stamped_at((NOW - timedelta(days=1)).timestamp()))
    m = PrometheusProvider(garbage.url, retries=0).scalar("x", check_stale=False)
    assert m.ok and m.value == 40 and "time" not in garbage.asked[0], m


def test_a_canary_whose_counts_are_for_another_moment_is_inconclusive_not_judged(garbage: Garbage) -> None:
    """The counts of a window an hour old would pass a canary that fails now."""
    hour_before = NOW - timedelta(hours=1)
    garbage.answer(200, stamped_at(hour_before.timestamp(), "0"))
    garbage.routes[("/api/v1/query", FRESHNESS)] = vector(2)  # fresh, and stamped as asked
    metric = MetricSpec("nsfw", ProportionMetric(events='sum(increase(p{ {{selector}}, c="nsfw"}[{{window}}]))',
                                                 total="sum(increase(p{ {{selector}} }[{{window}}]))"))
    request = AnalysisRequest("ns", "svc", "canary", NOW - timedelta(minutes=10), NOW, candidate_version="7")
    (verdict,) = run_analysis([metric], request, PrometheusProvider(garbage.url, retries=0))
    assert verdict.outcome is Outcome.INCONCLUSIVE and verdict.evidence["problem"] == "MalformedResponse", verdict
    assert f"sample time {hour_before.timestamp():.3f} ({hour_before.isoformat()})" in verdict.evidence["detail"]
    assert f"asked for, {NOW.timestamp():.3f} ({NOW.isoformat()})" in verdict.evidence["detail"]
