"""How far back a bake's history reaches, and that a window starting after the promotion (the watch of a version
paused on an inconclusive bake, a retried bake) still compares with days the previous version served.

The history is read from a real Prometheus whose past is backfilled with promtool: version 6 served the 4 days
before the promotion, version 7 since, its nsfw rate 2% until TRIGGER and 10% after."""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from controller.analysis.prometheus import PrometheusProvider
from controller.analysis.runner import AnalysisRequest, run_analysis
from controller.api import CommandAction, Phase
from controller.api.spec import MetricSpec, ProportionMetric
from controller.api.status import PauseReason, RollbackCause
from controller.devstack.processes import free_port
from controller.devstack.prometheus_server import PrometheusServer
from controller.devstack.scenario import ALL_PREDICTIONS, NSFW_PREDICTIONS
from controller.engine import RunAnalysis
from controller.engine.actions import HISTORY_SPACING_SLACK, history_days_back
from controller.exporter.server import PREDICTIONS_METRIC
from controller.verdict import Outcome, Verdict
from tests.unit.test_engine_support import World, spec_dict, verdict

DAY, HOUR, MINUTE = timedelta(days=1), timedelta(hours=1), timedelta(minutes=1)
STEP = timedelta(seconds=60)  # the backfill's samples: a scrape a minute
# Late enough in the past that a 3-day bake and a day's watch after it are history too.
PROMOTED_AT = datetime.now(UTC).replace(second=0, microsecond=0) - 3 * DAY - 2 * HOUR
PREVIOUS_SERVED = 4 * DAY
TRIGGER = PROMOTED_AT + 25 * HOUR  # after a day's bake and its inconclusive end
SERVICE = "nsfw-classifier"
NSFW = MetricSpec("nsfw-rate", ProportionMetric(events=NSFW_PREDICTIONS, total=ALL_PREDICTIONS, min_samples=200))


def _counters(version: str, start: datetime, end: datetime, rate: float, trigger: datetime | None,
              rng: np.random.Generator) -> list[str]:
    """One OpenMetrics series per class: 60 predictions a minute from `start` to `end`, `rate` of them nsfw (5x
    from `trigger`)."""
    times = [start + STEP * i for i in range(int((end - start) / STEP))]
    totals = rng.poisson(60, len(times))
    rates = np.array([rate * 5 if trigger is not None and at >= trigger else rate for at in times])
    nsfw = rng.binomial(totals, rates)
    lines = []
    for name, counts in (("nsfw", nsfw), ("safe", totals - nsfw)):
        labels = (f'class="{name}",inference_service="{SERVICE}",model_version="{version}",namespace="ns",'
                  'variant="stable"')
        lines += [f"{PREDICTIONS_METRIC}_total{{{labels}}} {int(value)} {at.timestamp():.0f}"
                  for value, at in zip(np.cumsum(counts), times, strict=True)]
    return lines


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    rng = np.random.default_rng(7)
    lines = [f"# TYPE {PREDICTIONS_METRIC} counter"]
    lines += _counters("6", PROMOTED_AT - PREVIOUS_SERVED, PROMOTED_AT, 0.02, None, rng)
    lines += _counters("7", PROMOTED_AT, PROMOTED_AT + 3 * DAY + HOUR, 0.02, TRIGGER, rng)
    server = PrometheusServer(Path(tmp_path_factory.mktemp("prometheus")))
    server.backfill("\n".join(lines) + "\n# EOF\n")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def provider(url: str) -> PrometheusProvider:
    return PrometheusProvider(url, scrape_interval=STEP)


def measure(action: RunAnalysis, now: datetime, url: str) -> list[Verdict]:
    """What the operator's measure_analysis does: every field the action shares with the request, passed on."""
    shared = {field.name: getattr(action, field.name) for field in dataclasses.fields(AnalysisRequest)
              if hasattr(action, field.name)}
    request = AnalysisRequest(**{**shared, "namespace": "ns", "target": SERVICE, "mode": str(action.mode), "now": now})
    return list(run_analysis([NSFW], request, provider(url)))


# --- which days: pure ------------------------------------------------------------------------------------


WINDOWS = [timedelta(0), MINUTE, HOUR, DAY - MINUTE, DAY, DAY + timedelta(seconds=1), DAY + HOUR,
           DAY + HOUR + timedelta(seconds=1), 2 * DAY, 2 * DAY + HOUR, 3 * DAY, 3 * DAY + 30 * MINUTE, 7 * DAY]


@pytest.mark.parametrize("window", WINDOWS)
def test_a_window_starting_at_the_promotion_reads_the_days_it_always_did(window: timedelta) -> None:
    """A bake's own runs (and a status an older operator wrote, whose runs carry no promotion time) are not moved."""
    every = max(1, math.ceil((window - HISTORY_SPACING_SLACK) / DAY))  # the spacing before the fix
    assert history_days_back(window, 7, window) == tuple(every * day for day in range(1, 8))
    assert history_days_back(window, 7) == history_days_back(window, 7, window)


@pytest.mark.parametrize("window", WINDOWS)
@pytest.mark.parametrize("later", [MINUTE, 30 * MINUTE, HOUR, DAY, DAY + 35 * MINUTE, 3 * DAY + 5 * HOUR])
def test_no_history_window_of_a_later_run_reads_the_bake_and_none_moves_further_than_needed(
        window: timedelta, later: timedelta) -> None:
    """A window starting `later` than the promotion: the nearest history window ends no later than the promotion
    plus the slack's share of it (an hour of a day's), the days stay as far apart, and one day less would not do."""
    since_promotion = later + window
    back = history_days_back(window, 3, since_promotion)
    allowed = HISTORY_SPACING_SLACK * min(1.0, window / DAY)
    assert since_promotion - back[0] * DAY <= allowed, back  # the nearest's end, from the promotion
    plain = history_days_back(window, 3)
    assert [b - a for a, b in itertools.pairwise(back)] == [plain[1] - plain[0]] * 2
    assert back[0] == plain[0] or since_promotion - (back[0] - 1) * DAY > allowed


# --- the engine hands the promotion time out -------------------------------------------------------------


def test_the_watch_after_an_inconclusive_bake_carries_the_promotion_time() -> None:
    world = World(judge=lambda _request: [verdict(Outcome.PASS)])
    world.run_until(lambda w: w.status.phase is Phase.PAUSED)
    world.judge = lambda request: [verdict(Outcome.INCONCLUSIVE if str(request.mode) == "bake" else Outcome.PASS)]
    world.send(CommandAction.PROMOTE)
    world.run_until(lambda w: w.status.phase is Phase.PAUSED)
    pause, promotion = world.status.pause, world.status.promotion
    assert pause is not None and pause.reason is PauseReason.BAKE_INCONCLUSIVE
    assert promotion is not None and promotion.target_confirmed_at is not None
    world.advance(timedelta(hours=2))
    world.reconcile()
    runs = [action for action in world.executed if isinstance(action, RunAnalysis) and str(action.mode) == "bake"]
    watch = [action for action in runs if action.window_start == pause.since]
    assert watch and len(watch) < len(runs)
    assert {action.promoted_at for action in runs} == {promotion.target_confirmed_at}


@pytest.mark.parametrize(("bake", "said"), [
    ({"duration": "1h", "baseline": "7d"}, "history on 7 past days, a day apart, back to 7d before the promotion "
                                          "(version 6 must have served that long and Prometheus keep 7d1h of data "
                                          "at the bake's end), for 1h"),
    ({"duration": "3d", "baseline": "7d"}, "history on 7 past days, 3 days apart, back to 21d before the promotion "
                                          "(version 6 must have served that long and Prometheus keep 24d of data "
                                          "at the bake's end), for 3d"),
    ({"duration": "7d", "baseline": "3d"}, "3 past days, 7 days apart, back to 21d before the promotion (version 6 "
                                          "must have served that long and Prometheus keep 28d of data"),
])
def test_bake_started_names_how_far_back_the_bake_reads(bake: dict[str, str], said: str) -> None:
    """A bake of days reads `baseline` times as many days back: 15 days of Prometheus' default retention, or a
    previous version younger than that, cannot cover a 7-day bake's, and every clean version ends inconclusive."""
    world = World(spec=spec_dict(bake=bake))
    world.run_until(lambda w: w.status.phase is Phase.PAUSED)
    world.send(CommandAction.PROMOTE)
    world.run_until(lambda w: w.status.phase is Phase.BAKING)
    started = next(entry.detail for entry in world.status.history if entry.event == "BakeStarted")
    assert said in started, started
    assert started.startswith("judging version 7 against version 6's history on "), started


# --- a real Prometheus ------------------------------------------------------------------------------------


def test_a_version_paused_on_an_inconclusive_day_long_bake_is_judged_against_days_before_its_promotion(
        prometheus: PrometheusServer) -> None:
    """A day's bake passes; a Prometheus outage over its end lasts past progressDeadline (paused, inconclusive);
    the nsfw rate goes from 2% to 10% half an hour after the pause. With a 3-day baseline the watch's nearest
    history day, a day back, was the bake's own: version 6 served none of it, so every run was inconclusive for
    a day and the trigger was caught only once the watch's window passed 25 hours."""
    raw = spec_dict(bake={"duration": "24h", "baseline": "3d"})
    raw["analysis"].update(interval="30m", metrics=[{"name": "nsfw-rate", "proportion": {
        "events": NSFW_PREDICTIONS, "total": ALL_PREDICTIONS, "minSamples": 200}}])
    world = World(spec=raw, now=PROMOTED_AT - HOUR)
    prometheus_url = {"now": prometheus.url}
    world.judge = lambda action: (measure(action, world.now, prometheus_url["now"]) if str(action.mode) == "bake"
                                  else [verdict(Outcome.PASS)])
    world.run_until(lambda w: w.status.phase is Phase.PAUSED)
    world.advance(PROMOTED_AT - world.now)
    world.send(CommandAction.PROMOTE)
    world.run_until(lambda w: w.status.phase is Phase.BAKING)
    promotion = world.status.promotion
    assert promotion is not None and promotion.target_confirmed_at == PROMOTED_AT
    step = 5 * MINUTE
    while world.now < PROMOTED_AT + 23 * HOUR + 50 * MINUTE:
        world.advance(step)
        world.reconcile()
    assert world.status.phase is Phase.BAKING and world.status.analysis is not None
    assert world.status.analysis.outcome is Outcome.PASS, world.status.analysis.reason
    prometheus_url["now"] = f"http://127.0.0.1:{free_port()}"  # nothing listens: PrometheusUnreachable
    while world.status.phase is Phase.BAKING:
        world.advance(step)
        world.reconcile()
    assert world.status.pause is not None and world.status.pause.reason is PauseReason.BAKE_INCONCLUSIVE
    assert world.now < TRIGGER, world.now - PROMOTED_AT
    prometheus_url["now"] = prometheus.url
    while world.status.phase is Phase.PAUSED and world.now < TRIGGER + 2 * HOUR:
        world.advance(step)
        world.reconcile()
    rollback = world.status.rollback
    watch = world.status.analysis
    assert world.status.phase is Phase.ROLLED_BACK, (world.now - TRIGGER, watch.reason if watch else None)
    assert rollback is not None and rollback.cause is RollbackCause.BAKE_FAILED
    assert world.now - TRIGGER <= HOUR + step
    assert "its 3-day history" in world.status.message, world.status.message


def test_a_bake_short_of_history_days_says_how_far_back_it_read_and_why_days_may_be_missing(
        prometheus: PrometheusServer) -> None:
    """A 3-day bake against a 7-day baseline reads 21 days before the promotion; version 6 served 4 of them."""
    end = PROMOTED_AT + 3 * DAY + MINUTE
    request = AnalysisRequest("ns", SERVICE, "bake", PROMOTED_AT, end, baseline_window=7 * DAY,
                              candidate_version="7", baseline_version="6", promoted_at=PROMOTED_AT)
    (found,) = run_analysis([NSFW], request, provider(prometheus.url))
    assert found.outcome is Outcome.INCONCLUSIVE, found
    assert found.reason.startswith("only 2 day(s) of history with traffic"), found.reason
    earliest = (PROMOTED_AT - 21 * DAY).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert found.reason.endswith(
        f"; its history reached back 21d before the promotion, 24d before this run (to {earliest}): Prometheus may "
        "not keep data that long (its retention, 15d by default), or version 6 had not served that long"), found.reason
    assert found.evidence["window"]["historyFrom"] == (PROMOTED_AT - 21 * DAY).isoformat()
