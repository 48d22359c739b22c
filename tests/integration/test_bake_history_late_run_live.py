"""The run that ends a day-long bake, late (an operator or Prometheus outage), on a real Prometheus whose past is
backfilled with promtool.

Its window runs from the promotion to the run, so its nearest past day ends LATE after the promotion. Version 1's
series stop at the promotion (its exporter restarted then): counted at that day's end, its copies were unknown, the
day was left out, and a 3-day baseline was left with 2 days (inconclusive; a clean version rolled back with
onInconclusive: rollback). Each case is one namespace of the same Prometheus, with the same seeded counts: "once",
history and now read once with a clean version 2; "twice", version 1's series read by a second scrape job;
"worse", version 2 at twice the rate (allowed 1.5x)."""

from __future__ import annotations

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
PER_STEP = 4  # predictions between samples: about 23 000 a day
DAY = 86400
LATE = 2400  # the final run, 40 minutes after the bake's end: past the 5-minute lookback of version 1's last sample
RUN = (int(datetime.now(UTC).timestamp()) // 60) * 60 - 3 * 3600
PROMOTED = RUN - DAY - LATE  # a 24-hour bake
SERVICE = "fraud"
EVENTS = 'sum(increase(modelrollout_predictions_total{class="nsfw", {{selector}}}[{{window}}]))'
TOTAL = 'sum(increase(modelrollout_predictions_total{{{selector}}}[{{window}}]))'
METRIC = MetricSpec("nsfw", proportion=ProportionMetric(EVENTS, TOTAL, min_samples=200, max_relative_increase=0.5,
                                                        confidence=0.99))


def _segments(history_copies: int, now_rate: float) -> list[dict[str, Any]]:
    """Version 1 (5% nsfw) for the 3 days and 2 hours up to the promotion, its series stopping then; version 2
    since."""
    return [{"version": "1", "start": PROMOTED - 3 * DAY - 7200, "end": PROMOTED, "rate": 0.05,
             "replicas": "ab"[:history_copies]},
            {"version": "2", "start": PROMOTED, "end": RUN + 60, "rate": now_rate, "replicas": "a"}]


def _openmetrics(cases: dict[str, list[dict[str, Any]]]) -> str:
    """Every case's counters (per class and copy), each copy of a label set holding the same counts: one seeded
    draw per step shared by the cases, so that they differ only in their copies and rates."""
    rng = np.random.default_rng(31)
    draws: dict[tuple[str, float, int], int] = {}
    rows = []
    for namespace, segments in cases.items():
        for segment in segments:
            totals = dict.fromkeys(("nsfw", "ok"), 0)
            for at in range(segment["start"], segment["end"], STEP):
                key = (segment["version"], segment["rate"], at)
                if key not in draws:
                    draws[key] = int(rng.binomial(PER_STEP, segment["rate"]))
                for cls, count in (("nsfw", draws[key]), ("ok", PER_STEP - draws[key])):
                    totals[cls] += count
                    for replica in segment["replicas"]:
                        labels = (f'class="{cls}",inference_service="{SERVICE}",model_version="{segment["version"]}"'
                                  f',namespace="{namespace}",replica="{replica}",variant=""')
                        rows.append((labels, totals[cls], at))
    # OpenMetrics wants each series' samples together and in time order.
    lines = [f"modelrollout_predictions_total{{{labels}}} {value} {at}"
             for labels, value, at in sorted(rows, key=lambda row: (row[0], row[2]))]
    return "\n".join(["# TYPE modelrollout_predictions counter", *lines, "# EOF"]) + "\n"


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    server = PrometheusServer(Path(tmp_path_factory.mktemp("prometheus")))
    server.backfill(_openmetrics({"once": _segments(1, 0.05), "twice": _segments(2, 0.05),
                                  "worse": _segments(1, 0.10)}))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _bake(url: str, namespace: str, late: int = LATE) -> Verdict:
    request = AnalysisRequest(namespace=namespace, target=SERVICE, mode="bake",
                              window_start=datetime.fromtimestamp(PROMOTED, UTC),
                              now=datetime.fromtimestamp(PROMOTED + DAY + late, UTC),
                              baseline_window=timedelta(days=3), candidate_version="2", baseline_version="1",
                              promoted_at=datetime.fromtimestamp(PROMOTED, UTC))
    (verdict,) = run_analysis([METRIC], request, PrometheusProvider(url, scrape_interval=timedelta(seconds=STEP)))
    return verdict


def test_a_late_final_run_keeps_the_nearest_day(prometheus: PrometheusServer) -> None:
    verdict = _bake(prometheus.url, "once")
    assert verdict.outcome is Outcome.PASS, verdict.reason
    assert "its 3-day history" in verdict.reason
    nearest = verdict.evidence["history"][0]
    # The day does end after the promotion (the case at issue), and it is counted whole, read once.
    assert datetime.fromisoformat(nearest["at"]).timestamp() == PROMOTED + LATE
    assert "left_out" not in nearest and nearest["countsDividedBy"] == 1, nearest
    assert [day["countsDividedBy"] for day in verdict.evidence["history"]] == [1, 1, 1]
    assert verdict.evidence["history_days"]["kept"] == 3
    # As many predictions as the run on time saw that day: its window, 40 minutes longer, ends 40 minutes past the
    # promotion, when version 1 no longer served.
    on_time = _bake(prometheus.url, "once", late=0)
    assert on_time.outcome is Outcome.PASS, on_time.reason
    assert nearest["total"] == pytest.approx(on_time.evidence["history"][0]["total"], rel=0.01)


def test_a_late_final_run_divides_the_nearest_day_read_twice(prometheus: PrometheusServer) -> None:
    once, twice = _bake(prometheus.url, "once"), _bake(prometheus.url, "twice")
    assert twice.outcome is Outcome.PASS, twice.reason
    assert [day["countsDividedBy"] for day in twice.evidence["history"]] == [2, 2, 2]
    assert [day["total"] for day in twice.evidence["history"]] == pytest.approx(
        [day["total"] for day in once.evidence["history"]], rel=1e-6)


def test_a_late_final_run_still_fails_a_regression(prometheus: PrometheusServer) -> None:
    verdict = _bake(prometheus.url, "worse")
    assert verdict.outcome is Outcome.FAIL, verdict.reason
    assert "its 3-day history" in verdict.reason
    assert "left_out" not in verdict.evidence["history"][0]
