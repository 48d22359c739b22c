"""Editing spec.canary.steps mid-rollout: the steps start again from the first (Argo's currentStepHash), so a
shorter list never reads as "all steps done" and promotes, and no weight is judged as another step's."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

from test_engine_support import World, spec_dict, verdict

from controller.api import Phase
from controller.engine import ActionType, SetCanaryWeight
from controller.verdict import Outcome


def at_step(index: int) -> World:
    world = World()
    world.run_until(lambda w: w.status.current_step == index and w.status.phase is Phase.PROGRESSING)
    return world


def edit_steps(world: World, steps: list[dict[str, object]]) -> None:
    spec = spec_dict()
    spec["canary"] = {"steps": steps}
    world.spec = spec
    world.generation += 1


def test_a_shorter_step_list_starts_again_instead_of_promoting() -> None:
    world = at_step(3)  # analysis at 10%, step 4/6
    edit_steps(world, [{"setWeight": 1}, {"analysis": {"duration": "10m"}}])
    world.advance(timedelta(seconds=5))
    world.reconcile()
    events = [e.event for e in world.status.history]
    assert "StepsChanged" in events and "Promoted" not in events and "StepsCompleted" not in events
    assert world.status.phase is Phase.PROGRESSING and world.status.current_step in (0, 1)
    assert world.target.canary_weight == 1  # back to the first step's weight, sent again
    assert [a.weight for a in world.executed if isinstance(a, SetCanaryWeight)][-1] == 1
    runs_before = sum(1 for a in world.executed if a.type is ActionType.RUN_ANALYSIS)
    world.run_until(lambda w: w.status.phase is Phase.BAKING or w.status.phase is Phase.SUCCEEDED)
    assert sum(1 for a in world.executed if a.type is ActionType.RUN_ANALYSIS) > runs_before  # judged again


def test_a_spec_change_that_keeps_the_steps_keeps_the_step() -> None:
    world = at_step(3)
    spec = spec_dict()
    spec["canary"] = dict(world.spec["canary"])
    spec["progressDeadline"] = "45m"
    world.spec = spec
    world.generation += 1
    world.advance(timedelta(seconds=5))
    world.reconcile()
    assert world.status.current_step == 3
    assert "StepsChanged" not in [e.event for e in world.status.history]


def test_steps_changed_while_waiting_for_a_human_keep_waiting() -> None:
    world = World(judge=lambda _r: [verdict(Outcome.INCONCLUSIVE)])
    world.run_until(lambda w: w.status.phase is Phase.PAUSED)
    pause = world.status.pause
    edit_steps(world, [{"setWeight": 5}, {"analysis": {"duration": "10m"}}])
    world.advance(timedelta(seconds=5))
    world.reconcile()
    assert world.status.phase is Phase.PAUSED and pause is not None
    assert world.status.pause == dataclasses.replace(pause, steps_changed=True)
    assert world.status.current_step == 0
    assert world.status.history[-1].event == "StepsChanged"


def test_promote_after_a_steps_change_in_a_human_wait_runs_the_new_first_step() -> None:
    from controller.api import CommandAction
    from controller.engine import RunAnalysis

    world = World(judge=lambda r: [verdict(Outcome.INCONCLUSIVE if r.step_index == 3 else Outcome.PASS)])
    world.run_until(lambda w: w.status.phase is Phase.PAUSED)
    assert world.target.canary_weight == 10
    edit_steps(world, [{"setWeight": 2}, {"analysis": {"duration": "10m"}}, {"setWeight": 20}, {"pause": {}}])
    world.advance(timedelta(seconds=5))
    world.reconcile()
    sent = len(world.executed)
    world.send(CommandAction.PROMOTE)
    world.advance(timedelta(seconds=5))
    world.reconcile()
    world.advance(timedelta(seconds=31))
    world.reconcile()
    assert world.target.canary_weight == 2  # the new first step ran; nothing was skipped
    judged = [a for a in world.executed[sent:] if isinstance(a, RunAnalysis)]
    assert judged and all(a.canary_weight == world.target.canary_weight for a in judged)


def test_steps_edited_after_promotion_change_nothing() -> None:
    from controller.api import PauseReason

    spec = spec_dict(rollback={"automatic": False}, canary={"steps": [{"setWeight": 10},
                                                                      {"analysis": {"duration": "2m"}}]})
    world = World(spec=spec, judge=lambda r: [verdict(Outcome.FAIL if r.mode.value == "bake" else Outcome.PASS)])
    world.run_until(lambda w: w.status.phase is Phase.PAUSED and w.status.pause is not None
                    and w.status.pause.reason is PauseReason.BAKE_FAILED)
    step = world.status.current_step
    spec = spec_dict(rollback={"automatic": False}, canary={"steps": [{"setWeight": 5},
                                                                      {"analysis": {"duration": "10m"}}]})
    world.spec = spec
    world.generation += 1
    world.advance(timedelta(seconds=5))
    world.reconcile()
    assert world.status.current_step == step
    assert "StepsChanged" not in [e.event for e in world.status.history]


def test_steps_shortened_once_they_are_over_end_at_the_new_list_s_end() -> None:
    """Never a current step past the list: the steps are over, so they are over at its end."""
    spec = spec_dict(bake=None, canary={"steps": [{"setWeight": 10}, {"analysis": {"duration": "1m"}},
                                                  {"setWeight": 20}]})
    world = World(spec=spec)
    world.run_until(lambda w: w.status.phase is Phase.SUCCEEDED)
    assert world.status.current_step == 3
    edit_steps(world, [{"setWeight": 10}])
    world.advance(timedelta(seconds=5))
    world.reconcile()
    assert world.status.phase is Phase.SUCCEEDED and world.status.current_step == 1
    assert "StepsChanged" not in [e.event for e in world.status.history]


def test_swapping_an_analysis_and_a_pause_of_the_same_length_is_a_change() -> None:
    from controller.api import parse_spec
    from controller.engine.decide import steps_signature

    first = [{"setWeight": 10}, {"analysis": {"duration": "10m"}}, {"setWeight": 50}, {"pause": {"duration": "10m"}}]
    second = [{"setWeight": 10}, {"pause": {"duration": "10m"}}, {"setWeight": 50}, {"analysis": {"duration": "10m"}}]

    def signature(steps: list[dict[str, object]]) -> str:
        return steps_signature(parse_spec(spec_dict(canary={"steps": steps})).canary.steps)

    assert signature(first) != signature(second)
    assert signature(first) == signature([dict(reversed(list(s.items()))) for s in first])  # key order: no change
