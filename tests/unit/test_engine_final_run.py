"""The run that ends an analysis step or the bake: a moment's measurement outage is retried, never the verdict.

Prometheus or the exporter restarting for a few seconds when time is up made the whole step or bake inconclusive
(a pause, or with onInconclusive: rollback a good promoted version rolled back) although every earlier run passed.
Such a final run is now retried like a judge error, until progressDeadline. And a run counts for the time its
queries were evaluated at, not the time its (slow) answer was read: one measured before the end ends nothing.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from test_engine_support import World, spec_dict, verdict

from controller.analysis.prometheus import QueryProblem
from controller.api import CommandAction, PauseReason, Phase
from controller.api.spec import parse_spec
from controller.api.status import AnalysisMode
from controller.devstack.processes import free_port
from controller.engine import Action, ActionFailure, ActionType, JudgeResult, RunAnalysis
from controller.operator.runtime import OperatorConfig, RolloutRuntime
from controller.verdict import MEASUREMENT_OUTAGES, Outcome, Verdict

STEP = timedelta(seconds=30)


def outage(problem: str = "PrometheusUnreachable") -> Verdict:
    """What the runner answers for a metric it could not measure (controller/analysis/runner.py _unmeasured)."""
    return Verdict("nsfw-rate", Outcome.INCONCLUSIVE,
                   f"{problem}: http://prometheus.monitoring:9090 did not answer (ConnectionError)",
                   {"queries": {}, "failedQuery": "e{}", "problem": problem, "detail": "did not answer"})


def judged_by(world: World, bad: Callable[[], list[Verdict]], mode: str,
              metrics: tuple[str, ...] = ("nsfw-rate",)) -> dict[str, bool]:
    """The world's judges pass every metric, except in `mode`'s runs while the switch is on."""
    switch = {"on": False}

    def judge(request: RunAnalysis) -> list[Verdict]:
        if switch["on"] and str(request.mode) == mode:
            return bad()
        return [verdict(Outcome.PASS, name) for name in metrics]
    world.judge = judge
    return switch


def bake_until_its_end(world: World) -> datetime:
    """Promoted and baked with passing runs every 30 s, up to the last run before the bake's end."""
    world.run_until(lambda w: w.status.phase is Phase.PAUSED)
    world.send(CommandAction.PROMOTE)
    world.run_until(lambda w: w.status.phase is Phase.BAKING)
    analysis = world.status.analysis
    assert analysis is not None and analysis.ends_at is not None
    while world.now + STEP < analysis.ends_at:
        world.advance(STEP)
        world.reconcile()
    assert world.status.phase is Phase.BAKING and world.status.analysis is not None
    assert world.status.analysis.outcome is Outcome.PASS and world.status.analysis.runs > 100
    return analysis.ends_at


def rollback_spec() -> dict[str, Any]:
    spec = spec_dict()
    spec["analysis"]["onInconclusive"] = "rollback"  # an inconclusive end would roll the good version back
    return spec


def test_the_bakes_final_run_meeting_a_prometheus_restart_is_retried_and_the_bake_passes() -> None:
    world = World(spec=rollback_spec())
    switch = judged_by(world, lambda: [outage()], "bake")
    ends_at = bake_until_its_end(world)
    switch["on"] = True  # Prometheus restarting just as the bake ends
    world.advance(STEP)
    world.reconcile()
    analysis = world.status.analysis
    assert world.status.phase is Phase.BAKING, world.status.message
    assert analysis is not None and analysis.errors == 1 and analysis.erroring_since == world.now >= ends_at
    assert analysis.request_id is not None and analysis.outcome is Outcome.PASS  # the last measured verdict stands
    switch["on"] = False
    world.advance(STEP)
    world.reconcile()
    assert world.status.phase is Phase.SUCCEEDED, world.status.message
    assert world.target.stable_version == "7" and world.registry.aliases["production"] == "7"
    assert [e.event for e in world.status.history][-2:] == ["BakePassed", "Succeeded"]


# StaleSeries: the exporter restarting. DuplicateSeries: its rolling update, two pods scraped for a moment.
@pytest.mark.parametrize("problem", ["StaleSeries", "DuplicateSeries"])
def test_an_analysis_steps_final_run_meeting_an_outage_is_retried_and_the_step_passes(problem: str) -> None:
    world = World(spec=rollback_spec())
    switch = judged_by(world, lambda: [outage(problem)], "canary")
    world.run_until(lambda w: w.status.analysis is not None and w.status.analysis.step_index == 1
                    and w.status.analysis.runs >= 1)
    analysis = world.status.analysis
    assert analysis is not None and analysis.ends_at is not None
    while world.now + STEP < analysis.ends_at:
        world.advance(STEP)
        world.reconcile()
    switch["on"] = True
    world.advance(STEP)
    world.reconcile()
    assert world.status.phase is Phase.PROGRESSING and world.status.current_step == 1, world.status.message
    assert world.status.analysis is not None and world.status.analysis.errors == 1
    switch["on"] = False
    world.advance(STEP)
    world.reconcile()
    assert world.status.current_step is not None and world.status.current_step >= 2, world.status.message
    assert "AnalysisPassed" in [e.event for e in world.status.history]
    assert world.status.phase is not Phase.ROLLING_BACK


def test_an_outage_at_the_end_that_lasts_past_progress_deadline_ends_the_bake_inconclusive() -> None:
    world = World()
    switch = judged_by(world, lambda: [outage()], "bake")
    ends_at = bake_until_its_end(world)
    switch["on"] = True  # and Prometheus never comes back
    before = sum(1 for action in world.executed if action.type is ActionType.RUN_ANALYSIS)
    world.run_until(lambda w: w.status.phase is not Phase.BAKING, step=timedelta(seconds=5), limit=3000)
    assert world.status.phase is Phase.PAUSED and world.status.pause is not None
    assert world.status.pause.reason is PauseReason.BAKE_INCONCLUSIVE
    assert timedelta(minutes=30) < world.now - ends_at < timedelta(minutes=37)
    retried = sum(1 for action in world.executed if action.type is ActionType.RUN_ANALYSIS) - before
    assert 5 <= retried < 20, retried  # paced by the backoff
    reason = world.status.pause.detail
    assert "the end of the analysis window could not be measured for 30m" in reason, reason
    assert "PrometheusUnreachable" in reason


def test_a_final_run_that_fails_rolls_back_at_once_even_beside_an_outage() -> None:
    spec = spec_dict()
    second = {"name": "violence-rate", "proportion": {"events": "v{{selector}}", "total": "t{{selector}}"}}
    spec["analysis"] = {**spec["analysis"], "metrics": [*spec["analysis"]["metrics"], second]}
    world = World(spec=spec)
    switch = judged_by(world, lambda: [outage(), verdict(Outcome.FAIL, "violence-rate")], "bake",
                       ("nsfw-rate", "violence-rate"))
    bake_until_its_end(world)
    switch["on"] = True
    world.advance(STEP)
    world.reconcile()
    assert world.status.phase in (Phase.ROLLING_BACK, Phase.ROLLED_BACK), world.status.message
    assert world.status.rollback is not None and "violence-rate" in world.status.rollback.reason


def test_a_failure_measured_on_the_retry_after_a_final_outage_rolls_back() -> None:
    world = World()
    answers = iter([[outage("PartialData")], [verdict(Outcome.FAIL)]])
    switch = judged_by(world, lambda: next(answers), "bake")
    bake_until_its_end(world)
    switch["on"] = True
    world.advance(STEP)
    world.reconcile()
    assert world.status.phase is Phase.BAKING
    world.advance(STEP)
    world.reconcile()
    assert world.status.phase in (Phase.ROLLING_BACK, Phase.ROLLED_BACK), world.status.message
    assert [e.event for e in world.status.history].count("BakeFailed") == 1


def test_a_final_run_inconclusive_for_another_reason_still_ends_the_bake_at_once() -> None:
    """A query Prometheus refuses, or too few samples, is not an outage: nothing to wait out."""
    spec = spec_dict()
    second = {"name": "violence-rate", "proportion": {"events": "v{{selector}}", "total": "t{{selector}}"}}
    spec["analysis"] = {**spec["analysis"], "metrics": [*spec["analysis"]["metrics"], second]}
    metrics = ("nsfw-rate", "violence-rate")
    for bad in ([outage("QueryRejected"), verdict(Outcome.PASS, "violence-rate")],
                [outage(), verdict(Outcome.INCONCLUSIVE, "violence-rate")]):
        world = World(spec=spec)
        switch = judged_by(world, lambda bad=bad: bad, "bake", metrics)
        bake_until_its_end(world)
        switch["on"] = True
        world.advance(STEP)
        world.reconcile()
        assert world.status.phase is Phase.PAUSED and world.status.pause is not None
        assert world.status.pause.reason is PauseReason.BAKE_INCONCLUSIVE


def test_an_outage_in_the_middle_of_the_bake_is_an_ordinary_inconclusive_run() -> None:
    world = World()
    switch = judged_by(world, lambda: [outage()], "bake")
    world.run_until(lambda w: w.status.phase is Phase.PAUSED)
    world.send(CommandAction.PROMOTE)
    world.run_until(lambda w: w.status.phase is Phase.BAKING and w.status.analysis is not None
                    and w.status.analysis.runs >= 1)
    switch["on"] = True
    world.advance(STEP)
    world.reconcile()
    analysis = world.status.analysis
    assert analysis is not None and analysis.outcome is Outcome.INCONCLUSIVE and analysis.errors == 0
    assert world.status.phase is Phase.BAKING


class MeasuringWorld(World):
    """Answers each analysis run with the time its queries were evaluated at, as the operator does."""

    def execute(self, action: Action) -> tuple[JudgeResult | None, JudgeResult | None, ActionFailure | None]:
        started = self.now
        gate, analysis, failure = super().execute(action)
        if analysis is not None:
            analysis = dataclasses.replace(analysis, measured_at=started)
        return gate, analysis, failure


def test_a_run_measured_before_the_end_but_read_after_it_does_not_end_the_bake() -> None:
    world = MeasuringWorld()
    measured: list[datetime] = []
    slow = {"on": False}

    def judge(request: RunAnalysis) -> list[Verdict]:
        if request.mode is AnalysisMode.BAKE:
            measured.append(world.now)
            if slow["on"]:
                slow["on"] = False
                world.advance(timedelta(seconds=40))  # a slow Prometheus: read 40 s after it was measured
        return [verdict(Outcome.PASS)]
    world.judge = judge
    world.run_until(lambda w: w.status.phase is Phase.PAUSED)
    world.send(CommandAction.PROMOTE)
    world.run_until(lambda w: w.status.phase is Phase.BAKING)
    assert world.status.analysis is not None and world.status.analysis.ends_at is not None
    ends_at = world.status.analysis.ends_at
    while world.now + 2 * STEP < ends_at:
        world.advance(STEP)
        world.reconcile()
    slow["on"] = True  # the last run due before the end, answered after it
    world.advance(STEP)
    world.reconcile()
    assert measured[-2] < ends_at <= world.now
    assert world.status.phase is Phase.SUCCEEDED, world.status.message
    assert measured[-1] >= ends_at  # the run that ended the bake covered all of it
    assert world.status.analysis is not None and world.status.analysis.measured_at == measured[-1]


def test_a_slow_answer_does_not_make_the_next_run_due_at_once() -> None:
    """The next run is due an interval after the answer was read, not after it was measured: a Prometheus slower
    than the interval is not sent run after run with no pause."""
    world = MeasuringWorld()
    slow = {"on": False}

    def judge(request: RunAnalysis) -> list[Verdict]:
        if request.mode is AnalysisMode.BAKE and slow["on"]:
            slow["on"] = False
            world.advance(timedelta(seconds=50))  # read 50 s after it was measured; the interval is 30 s
        return [verdict(Outcome.PASS)]
    world.judge = judge
    world.run_until(lambda w: w.status.phase is Phase.PAUSED)
    world.send(CommandAction.PROMOTE)
    world.run_until(lambda w: w.status.phase is Phase.BAKING)
    world.advance(STEP)
    slow["on"] = True
    decision = world.reconcile()
    analysis = world.status.analysis
    assert analysis is not None and analysis.measured_at == world.now - timedelta(seconds=50)
    assert analysis.last_run_at == world.now and analysis.request_id is None
    assert decision.requeue_after is not None and decision.requeue_after >= timedelta(seconds=25)


def test_the_operator_answers_with_the_time_it_measured_at_and_an_unreachable_prometheus_is_an_outage() -> None:
    raw = copy.deepcopy(spec_dict())
    raw["analysis"]["prometheus"] = {"address": f"http://127.0.0.1:{free_port()}"}  # nothing listens
    obj = {"metadata": {"namespace": "team-a", "name": "nsfw"}, "spec": raw}
    runtime = RolloutRuntime(obj, parse_spec(raw), None, OperatorConfig())  # type: ignore[arg-type]
    now = datetime(2026, 1, 1, 1, 0, tzinfo=UTC)
    action = RunAnalysis(id="a-1", mode=AnalysisMode.BAKE, candidate_version="7", baseline_version="6",
                         canary_weight=100, window_start=now - timedelta(hours=1), baseline_window=timedelta(days=7))
    result = runtime.measure_analysis(action, now)
    assert result.measured_at == now
    assert [v.evidence.get("problem") for v in result.verdicts] == ["PrometheusUnreachable"]
    assert {str(problem) for problem in QueryProblem} >= MEASUREMENT_OUTAGES


def test_a_metric_never_measured_in_the_window_is_no_blip_and_ends_the_bake_at_once() -> None:
    """Prometheus behind a redirect, a query of the wrong type, a baseline too long for its budget: unmeasured from
    the first run on, so nothing says a moment's outage will pass. The end is not put off for progressDeadline."""
    world = World()
    switch = judged_by(world, lambda: [outage("PrometheusUnreachable")], "bake")
    world.run_until(lambda w: w.status.phase is Phase.PAUSED)
    switch["on"] = True  # every bake run, from the first
    world.send(CommandAction.PROMOTE)
    world.run_until(lambda w: w.status.phase is Phase.BAKING)
    analysis = world.status.analysis
    assert analysis is not None and analysis.ends_at is not None
    ends_at = analysis.ends_at
    world.run_until(lambda w: w.status.phase is not Phase.BAKING, step=STEP)
    assert world.status.phase is Phase.PAUSED and world.status.pause is not None
    assert world.status.pause.reason is PauseReason.BAKE_INCONCLUSIVE
    assert world.now - ends_at <= STEP, world.now - ends_at
