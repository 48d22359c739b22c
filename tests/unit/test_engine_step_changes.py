"""Editing spec.canary.steps mid-rollout: the steps start again from the first (Argo's currentStepHash), so a
shorter list never reads as "all steps done" and promotes, and no weight is judged as another step's."""

from __future__ import annotations

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
    assert world.status.phase is Phase.PAUSED and world.status.pause == pause
    assert world.status.current_step == 0
    assert world.status.history[-1].event == "StepsChanged"
