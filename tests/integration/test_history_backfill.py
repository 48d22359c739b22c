"""Backfilled history in a real Prometheus: what the bake's baseline queries read on a fresh local stack."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from controller.analysis.prometheus import Measurement, PrometheusProvider, QueryProblem
from controller.devstack.history import prediction_history, same_hour_spans
from controller.devstack.processes import StackError
from controller.devstack.prometheus_server import PrometheusServer

pytestmark = pytest.mark.integration
RATES = {"safe": 0.87, "suggestive": 0.095, "nsfw": 0.035}


def count(prometheus: PrometheusServer, promql: str, at: float) -> Measurement:
    return PrometheusProvider(prometheus.url).scalar(promql, datetime.fromtimestamp(at, UTC))


def test_backfilled_days_answer_the_same_hour_queries_and_nothing_else(tmp_path: Path) -> None:
    now = time.time()
    labels = {"namespace": "moderation", "inference_service": "nsfw", "variant": "stable", "model_version": "6"}
    server = PrometheusServer(tmp_path)
    server.backfill(prediction_history(labels, RATES, same_hour_spans(now, 3, 600, 1800),
                                       predictions_per_second=150))
    server.start()
    try:
        selector = 'namespace="moderation", inference_service="nsfw", variant="stable"'
        for day in (1, 2, 3):
            at = now - day * 86_400 + 300
            nsfw = count(server, f'sum(increase(modelrollout_predictions_total{{class="nsfw", {selector}}}[5m]))', at)
            total = count(server, f"sum(increase(modelrollout_predictions_total{{{selector}}}[5m]))", at)
            assert nsfw.ok and total.ok, (nsfw, total)
            assert 0.025 < nsfw.value / total.value < 0.045, (day, nsfw.value, total.value)
            assert 40_000 < total.value < 50_000  # 150 predictions/s for 300 s
        # Outside the backfilled stretches there is no history: not zeros, nothing.
        before = count(server, f"sum(increase(modelrollout_predictions_total{{{selector}}}[5m]))", now - 4 * 86_400)
        assert before.problem is QueryProblem.EMPTY, before
    finally:
        server.stop()


def test_unreadable_history_is_refused_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(StackError, match=r"^promtool backfill failed \(exit \d+\): .+") as caught:
        PrometheusServer(tmp_path).backfill("modelrollout_predictions_total{class=nsfw} not-a-number\n")
    assert "\n" not in str(caught.value)
