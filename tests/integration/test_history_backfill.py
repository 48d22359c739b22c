"""Backfilled history in a real Prometheus: what the bake's baseline queries read on a fresh local stack."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from controller.analysis.prometheus import Measurement, PrometheusProvider, QueryProblem
from controller.analysis.queries import QueryScope, render
from controller.devstack.history import DAY_SECONDS, prediction_history, same_hour_spans
from controller.devstack.processes import StackError
from controller.devstack.prometheus_server import PrometheusServer
from controller.devstack.scenario import ALL_PREDICTIONS, NSFW_PREDICTIONS

pytestmark = pytest.mark.integration
RATES = {"safe": 0.87, "suggestive": 0.095, "nsfw": 0.035}


def count(prometheus: PrometheusServer, template: str, window: str, at: float) -> Measurement:
    """The query a bake runs at `at` (the bake's own templates and selector, the stable variant)."""
    scope = QueryScope(namespace="moderation", target="nsfw", variant="stable", window=window)
    return PrometheusProvider(prometheus.url).scalar(render(template, scope), datetime.fromtimestamp(at, UTC))


def test_backfilled_days_answer_the_bakes_queries_and_nothing_else(tmp_path: Path) -> None:
    now = time.time()
    labels = {"namespace": "moderation", "inference_service": "nsfw", "variant": "stable", "model_version": "6"}
    server = PrometheusServer(tmp_path)
    server.backfill(prediction_history(labels, RATES, same_hour_spans(now, 3, 600, 1800),
                                       predictions_per_second=150))
    server.start()
    try:
        for day in (1, 2, 3):
            # Early in a bake the window is short; later it is minutes long.
            for window, seconds in (("30s", 30), ("5m", 300)):
                at = now - day * DAY_SECONDS + 300
                nsfw, total = count(server, NSFW_PREDICTIONS, window, at), count(server, ALL_PREDICTIONS, window, at)
                assert nsfw.ok and total.ok, (nsfw, total)
                assert 0.02 < nsfw.value / total.value < 0.05, (day, window, nsfw.value, total.value)
                assert 0.8 * 150 * seconds < total.value < 1.2 * 150 * seconds
        # Outside the backfilled stretches there is no history: not zeros, nothing (between days, before them).
        for at in (now - DAY_SECONDS - 7200, now - 4 * DAY_SECONDS):
            gap = count(server, ALL_PREDICTIONS, "5m", at)
            assert gap.problem is QueryProblem.EMPTY, gap
        # Twenty minutes after a stretch ends, the series are stale: nothing now, but there was within the hour.
        stretch_end = now - DAY_SECONDS + 1800
        stale = count(server, ALL_PREDICTIONS, "5m", stretch_end + 1200)
        assert stale.problem is QueryProblem.STALE, stale
        assert "stopped reporting" in stale.detail and "s earlier" in stale.detail, stale
        # History reads ask for no staleness check: a gap there only means no traffic then.
        scope = QueryScope(namespace="moderation", target="nsfw", variant="stable", window="5m")
        gap = PrometheusProvider(server.url).scalar(render(ALL_PREDICTIONS, scope),
                                                    datetime.fromtimestamp(stretch_end + 1200, UTC), check_stale=False)
        assert gap.problem is QueryProblem.EMPTY, gap
    finally:
        server.stop()


def test_backfill_after_start_is_refused(tmp_path: Path) -> None:
    server = PrometheusServer(tmp_path)
    server.start()
    try:
        with pytest.raises(StackError, match="before starting Prometheus"):
            server.backfill("# EOF\n")
    finally:
        server.stop()


def test_unreadable_history_is_refused_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(StackError, match=r"^promtool backfill failed \(exit \d+\): .+") as caught:
        PrometheusServer(tmp_path).backfill("modelrollout_predictions_total{class=nsfw} not-a-number\n")
    assert "\n" not in str(caught.value)
