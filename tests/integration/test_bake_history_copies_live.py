"""A bake's past days divided by their own copies, on a real Prometheus whose past is backfilled with promtool.

The new version (2) doubles the nsfw rate (allowed 1.5x) against 5 past days of version 1. Each case is one
namespace of the same Prometheus: the same seeded counts, read once or by a second scrape job (a `replica` label):
A, history and now read once; C, history read twice (the second job removed before the promotion), now once;
B, history once, now twice (and "same", B with a clean version); U, as A but a second copy of one past day's
series starts halfway through its window."""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from controller.analysis.prometheus import PrometheusProvider
from controller.analysis.runner import AnalysisRequest, run_analysis
from controller.api.spec import MetricSpec, ProportionMetric
from controller.devstack.prometheus_server import PrometheusServer
from controller.verdict import Outcome, Verdict

STEP = 15  # seconds between the backfill's samples: its scrape interval
PER_STEP = 40  # predictions between samples
DAY = 86400
NOW = (int(datetime.now(UTC).timestamp()) // 60) * 60 - 3 * 3600
PROMOTED = NOW - 1800  # a 30-minute bake: its history ends at NOW less 1..5 days
SERVICE = "fraud"
EVENTS = 'sum(increase(modelrollout_predictions_total{class="nsfw", {{selector}}}[{{window}}]))'
TOTAL = 'sum(increase(modelrollout_predictions_total{{{selector}}}[{{window}}]))'
METRIC = MetricSpec("nsfw", proportion=ProportionMetric(EVENTS, TOTAL, min_samples=200, max_relative_increase=0.5,
                                                        confidence=0.99))
UNEVEN_DAY = 3  # case U: this many days back


def _segments(history_copies: int, now_copies: int, uneven: bool, now_rate: float = 0.10) -> list[dict[str, Any]]:
    """Version 1 for 45 minutes up to 5 minutes past each day's window end (5% nsfw), version 2 since just before
    the promotion (10%). With `uneven`, a second copy of day UNEVEN_DAY starts halfway through its window."""
    days = [{"version": "1", "start": NOW - d * DAY - 2700, "end": NOW - d * DAY + 300, "rate": 0.05,
             "copies": [(0, "a"), *((0, r) for r in "bc"[:history_copies - 1])]
             + ([(NOW - d * DAY - 900, "b")] if uneven and d == UNEVEN_DAY else [])} for d in range(5, 0, -1)]
    return [*days, {"version": "2", "start": PROMOTED - 300, "end": NOW + 60, "rate": now_rate,
                    "copies": [(0, "a"), *((0, r) for r in "bc"[:now_copies - 1])]}]


def _openmetrics(cases: dict[str, list[dict[str, Any]]]) -> str:
    """Every case's counters (per class and copy), each copy of a label set holding the same counts: one seeded
    draw per step shared by the cases, so that they differ only in their copies."""
    rng = np.random.default_rng(29)
    draws: dict[tuple[str, float, int], int] = {}
    lines = ["# TYPE modelrollout_predictions counter"]
    for namespace, segments in cases.items():
        for segment in segments:
            totals: dict[tuple[str, str], int] = {}
            for at in range(segment["start"], segment["end"], STEP):
                key = (segment["version"], segment["rate"], at)
                if key not in draws:
                    draws[key] = int(rng.binomial(PER_STEP, segment["rate"]))
                nsfw = draws[key]
                for cls, count in (("nsfw", nsfw), ("ok", PER_STEP - nsfw)):
                    for since, replica in segment["copies"]:
                        total = totals[(cls, replica)] = totals.get((cls, replica), 0) + count
                        if at >= since:
                            labels = (f'class="{cls}",inference_service="{SERVICE}",model_version='
                                      f'"{segment["version"]}",namespace="{namespace}",replica="{replica}",variant=""')
                            lines.append((labels, total, at))
    # OpenMetrics wants each series' samples together and in time order.
    lines[1:] = [f"modelrollout_predictions_total{{{labels}}} {value} {at}"
                 for labels, value, at in sorted(lines[1:], key=lambda row: (row[0], row[2]))]
    return "\n".join(lines) + "\n# EOF\n"


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    server = PrometheusServer(Path(tmp_path_factory.mktemp("prometheus")))
    server.backfill(_openmetrics({"a": _segments(1, 1, False), "c": _segments(2, 1, False),
                                  "b": _segments(1, 2, False), "u": _segments(1, 1, True),
                                  "same": _segments(1, 2, False, now_rate=0.05)}))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _bake(url: str, namespace: str) -> Verdict:
    request = AnalysisRequest(namespace=namespace, target=SERVICE, mode="bake",
                              window_start=datetime.fromtimestamp(PROMOTED, UTC), now=datetime.fromtimestamp(NOW, UTC),
                              baseline_window=timedelta(days=5), candidate_version="2", baseline_version="1",
                              promoted_at=datetime.fromtimestamp(PROMOTED, UTC))
    (verdict,) = run_analysis([METRIC], request, PrometheusProvider(url, scrape_interval=timedelta(seconds=STEP)))
    return verdict


def _totals(verdict: Verdict) -> list[float]:
    return [day["total"] for day in verdict.evidence["history"]]


def test_history_read_twice_is_judged_as_read_once(prometheus: PrometheusServer) -> None:
    once, twice = _bake(prometheus.url, "a"), _bake(prometheus.url, "c")
    assert once.outcome is Outcome.FAIL, once.reason
    assert twice.outcome is Outcome.FAIL, twice.reason
    assert _totals(twice) == pytest.approx(_totals(once), rel=1e-6)
    # Doubled counts would double phi, and the new version's deflated evidence with it.
    assert twice.evidence["dispersion"] == pytest.approx(once.evidence["dispersion"], rel=1e-6)
    assert twice.evidence["statistic"] == pytest.approx(once.evidence["statistic"], rel=1e-6)
    assert once.evidence["statistic"] > once.evidence["threshold"] + math.log(10), once.evidence
    assert [day["countsDividedBy"] for day in twice.evidence["history"]] == [2] * 5
    assert twice.evidence["window"]["historyCountsDividedBy"] == [2] * 5
    assert [day["countsDividedBy"] for day in once.evidence["history"]] == [1] * 5


def test_history_read_once_with_now_read_twice_is_not_halved(prometheus: PrometheusServer) -> None:
    once, now_twice = _bake(prometheus.url, "a"), _bake(prometheus.url, "b")
    assert now_twice.outcome is Outcome.FAIL, now_twice.reason
    assert "on counts divided by 2" in now_twice.reason
    assert now_twice.evidence["window"]["countsDividedBy"] == 2
    assert _totals(now_twice) == pytest.approx(_totals(once), rel=1e-6)
    assert now_twice.evidence["dispersion"] == pytest.approx(once.evidence["dispersion"], rel=1e-6)
    assert now_twice.evidence["statistic"] == pytest.approx(once.evidence["statistic"], rel=1e-6)
    assert [day["countsDividedBy"] for day in now_twice.evidence["history"]] == [1] * 5


def test_day_with_uneven_copies_is_left_out_and_named(prometheus: PrometheusServer) -> None:
    verdict = _bake(prometheus.url, "u")
    assert verdict.outcome is Outcome.FAIL, verdict.reason
    assert "4-day history" in verdict.reason
    days = {round((NOW - datetime.fromisoformat(day["at"]).timestamp()) / DAY): day
            for day in verdict.evidence["history"]}
    uneven = days[UNEVEN_DAY]
    assert uneven["left_out"].startswith("uneven copies"), uneven
    assert uneven["countsDividedBy"] is None and uneven["no_traffic"] is False and uneven["total"] > 0
    assert all(day["countsDividedBy"] == 1 and "left_out" not in day for back, day in days.items()
               if back != UNEVEN_DAY)
    assert verdict.evidence["history_days"]["uneven_copies"] == 1
    assert verdict.evidence["history_days"]["kept"] == 4
    assert verdict.evidence["history_days"]["no_traffic"] == 0


def test_now_read_twice_without_a_failure_keeps_the_days_it_was_judged_on(prometheus: PrometheusServer) -> None:
    """Only a failure on divided counts stands: the DuplicateSeries kept instead still shows the history."""
    verdict = _bake(prometheus.url, "same")
    assert verdict.outcome is Outcome.INCONCLUSIVE and verdict.evidence["problem"] == "DuplicateSeries", verdict.reason
    assert [day["countsDividedBy"] for day in verdict.evidence["history"]] == [1] * 5
    assert verdict.evidence["history_days"]["kept"] == 5
