"""Engine rules no other engine test pins down (each found by a surviving mutant): a failure is never hidden by an
inconclusive check or by nothing judged, and a traffic step or a promotion is confirmed only by the candidate itself
holding the traffic it asked for."""

from __future__ import annotations

import copy
from typing import Any

from test_engine_support import World, spec_dict, verdict

from controller.api import CommandAction, PauseReason, Phase, RollbackCause
from controller.verdict import Outcome


def events(world: World, since: int = 0) -> list[str]:
    return [entry.event for entry in world.status.history[since:]]


def two_metric_spec() -> dict[str, Any]:
    spec = spec_dict()
    analysis = copy.deepcopy(spec["analysis"])
    analysis["metrics"].append({"name": "error-rate", "threshold": {"query": "q{{selector}}", "max": 0.01}})
    return spec_dict(analysis=analysis)


def test_a_failing_metric_rolls_back_even_when_another_is_still_inconclusive() -> None:
    # onInconclusive is "pause": were the inconclusive metric to win, the failure would wait for a human.
    world = World(spec=two_metric_spec(),
                  judge=lambda _request: [verdict(Outcome.FAIL), verdict(Outcome.INCONCLUSIVE, "error-rate")])
    world.run_until(lambda w: w.status.phase in (Phase.ROLLED_BACK, Phase.PAUSED, Phase.SUCCEEDED, Phase.FAILED))
    assert world.status.phase is Phase.ROLLED_BACK
    assert world.status.rollback is not None and world.status.rollback.cause is RollbackCause.ANALYSIS_FAILED


def test_a_gate_that_returns_no_verdicts_is_not_a_pass() -> None:
    world = World(gate_verdicts=[])
    world.reconcile()
    assert world.status.phase is Phase.PAUSED
    assert world.status.pause is not None and world.status.pause.reason is PauseReason.GATE_INCONCLUSIVE
    assert world.target.canary_weight in (None, 0)  # no traffic on the word of an empty gate


def test_a_weight_step_is_not_done_while_another_version_holds_that_weight() -> None:
    world = World()
    world.run_until(lambda w: w.status.current_step == 1 and w.status.phase is Phase.PROGRESSING)
    world.target.frozen = True  # the 10% step is sent but does not take effect
    world.run_until(lambda w: w.status.current_step == 2)
    world.target.canary_version, world.target.canary_weight = "5", 10  # someone else's canary at the step's weight
    before = len(world.status.history)
    world.reconcile()
    assert world.status.current_step == 2 and "WeightChanged" not in events(world, before), events(world, before)


def test_a_promotion_is_not_confirmed_while_a_canary_still_takes_traffic() -> None:
    world = World()
    world.target.ignore_weights = True  # the promotion is accepted but does not take effect
    world.run_until(lambda w: w.status.current_step == 0 and w.status.phase is Phase.PROGRESSING)
    world.send(CommandAction.PROMOTE, full=True)
    world.run_until(lambda w: w.status.phase is Phase.PROMOTING)
    # Half done: the candidate is the main version, but the old one still takes 10% as a canary.
    world.target.stable_version, world.target.canary_version, world.target.canary_weight = "7", "6", 10
    world.reconcile()
    assert world.status.promotion is not None and world.status.promotion.target_confirmed_at is None
    assert "Promoted" not in events(world)
