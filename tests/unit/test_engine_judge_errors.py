"""A judge that keeps erroring (the gate or the analysis judges, not a verdict): paced, and bounded in time.

Each error is counted in the judge's own status, because a decision that has no result to look at (the first
of every reconcile) clears the shared retry state. Past progressDeadline, missing evidence ends the gate or
the step as inconclusive, which onInconclusive turns into a pause or a rollback: never a pass, never a loop.
"""

from __future__ import annotations

import dataclasses
from datetime import timedelta

from test_engine_support import World, spec_dict, verdict

from controller.api import PauseReason, Phase
from controller.engine import ActionType, AdapterError, AdapterErrorKind, JudgeResult, decide
from controller.verdict import Outcome


def runs(world: World, kind: ActionType) -> int:
    return sum(1 for action in world.executed if action.type is kind)


def test_a_gate_that_keeps_erroring_backs_off_and_ends_inconclusive_at_the_deadline() -> None:
    world = World(gate_error=AdapterError(AdapterErrorKind.UNAVAILABLE, "golden dataset fetch: 503"))
    world.run_until(lambda w: w.status.phase is not Phase.GATING, step=timedelta(seconds=2), limit=3000)
    gate = world.status.gate
    assert gate is not None and gate.errors >= 5
    # Paced by the growing backoff (2 s, 4 s ... 5 min), not every 2 s: 900 runs in 30 minutes before.
    assert runs(world, ActionType.RUN_GATE) == gate.errors < 20
    assert world.status.phase is Phase.PAUSED
    assert world.status.pause is not None and world.status.pause.reason is PauseReason.GATE_INCONCLUSIVE
    elapsed = world.now - (gate.erroring_since or world.now)
    assert timedelta(minutes=30) < elapsed < timedelta(minutes=36)
    assert "the golden gate could not run for 30m" in gate.reason and "503" in gate.reason
    assert [e.event for e in world.status.history][-2:] == ["GateInconclusive", "AwaitingDecision"]


def test_analysis_judges_that_keep_erroring_back_off_and_end_the_step_inconclusive() -> None:
    spec = spec_dict()
    spec["analysis"]["onInconclusive"] = "rollback"
    world = World(spec=spec)
    world.run_until(lambda w: w.status.analysis is not None and w.status.analysis.runs >= 1)
    before = runs(world, ActionType.RUN_ANALYSIS)
    world.analysis_error = AdapterError(AdapterErrorKind.UNAVAILABLE, "prometheus: connection refused")
    world.run_until(lambda w: w.status.phase is not Phase.PROGRESSING, step=timedelta(seconds=2), limit=3000)
    errored = runs(world, ActionType.RUN_ANALYSIS) - before
    assert 5 <= errored < 20, errored
    assert world.status.phase in (Phase.ROLLING_BACK, Phase.ROLLED_BACK)
    rollback = world.status.rollback
    assert rollback is not None and "the analysis judges could not run for 30m" in rollback.reason
    assert "connection refused" in rollback.reason


def test_a_bake_verdict_read_on_a_clock_behind_the_bake_start_is_decided() -> None:
    world = World(spec=spec_dict(canary={"steps": [{"setWeight": 10},
                                                                       {"analysis": {"duration": "1m"}}]}))
    world.run_until(lambda w: w.status.phase is Phase.BAKING and w.status.analysis is not None
                    and w.status.analysis.mode.value == "bake", step=timedelta(seconds=10))
    world.advance(timedelta(seconds=30))
    world.crash_after = 1  # killed after asking for a bake run, before the judges answered
    world.reconcile()
    analysis = world.status.analysis
    assert analysis is not None and analysis.request_id is not None
    behind = analysis.window_start - timedelta(minutes=2)  # a node whose clock is two minutes behind
    observed = dataclasses.replace(world.observe(analysis=JudgeResult(analysis.request_id,
                                                                      (verdict(Outcome.FAIL),))),
                                   resend_pending=True)
    decision = decide(world.parsed_spec, world.status, observed, behind)
    assert decision.status.phase is Phase.ROLLING_BACK
    assert decision.status.rollback is not None and "0s after promotion" in decision.status.rollback.reason


def test_a_pause_step_judging_a_failing_prometheus_stays_paced_past_the_deadline() -> None:
    world = World()  # the default steps end with an untimed pause at 50%, judged in the background
    world.run_until(lambda w: w.status.phase is Phase.PAUSED and w.status.pause is not None
                    and w.status.pause.reason is PauseReason.PAUSE_STEP and w.status.analysis is not None
                    and w.status.analysis.runs >= 1)
    world.analysis_error = AdapterError(AdapterErrorKind.UNAVAILABLE, "prometheus: connection refused")
    before = runs(world, ActionType.RUN_ANALYSIS)
    for _ in range(1800):  # an hour of reconciles every 2 s
        world.advance(timedelta(seconds=2))
        world.reconcile()
    assert world.status.phase is Phase.PAUSED  # the pause waits for a human, whatever the judges say
    assert runs(world, ActionType.RUN_ANALYSIS) - before < 30  # at most one run per 5 min once backed off


def test_a_gate_verdict_clears_the_error_count() -> None:
    world = World(gate_error=AdapterError(AdapterErrorKind.UNAVAILABLE, "503"))
    world.run_until(lambda w: w.status.gate is not None and w.status.gate.errors >= 3, step=timedelta(seconds=5))
    world.gate_error = None
    world.run_until(lambda w: w.status.phase is Phase.PROGRESSING, step=timedelta(seconds=5))
    gate = world.status.gate
    assert gate is not None and (gate.errors, gate.erroring_since) == (0, None)


def test_a_run_without_a_verdict_for_every_metric_is_no_pass() -> None:
    """The judges answered for one metric of two (the second added while the run was under way): the step must not
    pass on half the evidence."""
    spec = spec_dict()
    second = {"name": "violence-rate", "proportion": {"events": "v{{selector}}", "total": "t{{selector}}"}}
    spec["analysis"] = {**spec["analysis"], "metrics": [*spec["analysis"]["metrics"], second]}
    world = World(spec=spec, judge=lambda _request: [verdict(Outcome.PASS)])  # nsfw-rate only
    world.run_until(lambda w: w.status.phase is Phase.PAUSED, step=timedelta(seconds=30))
    assert world.status.pause is not None and world.status.pause.reason is PauseReason.ANALYSIS_INCONCLUSIVE
    analysis = world.status.analysis
    assert analysis is not None and analysis.outcome is Outcome.INCONCLUSIVE
    missing = next(item for item in analysis.metrics if item.name == "violence-rate")
    assert missing.reason == "no verdict for it in this run"
