"""Found by the engine's property test (session 33): a finished rollout being deleted follows no edit, so a shorter
list of steps edited in meanwhile left its step index past the list's end ("step 3" of a one-step list)."""

from __future__ import annotations

from test_engine import finished
from test_engine_support import World

from controller.api.commands import CommandAction
from controller.api.status import Phase


def test_a_finished_rollout_being_deleted_keeps_its_step_within_an_edited_list() -> None:
    world = World()
    world.run_until(lambda w: w.status.phase is Phase.PAUSED)
    world.send(CommandAction.PROMOTE)
    world.run_until(finished)
    assert world.status.phase is Phase.SUCCEEDED
    steps = world.spec["canary"]["steps"]
    assert world.status.current_step is not None and world.status.current_step > 1
    world.deleting = True
    world.generation += 1
    world.reconcile()
    last_weight = [step for step in steps if "setWeight" in step][-1]
    world.spec["canary"] = {**world.spec["canary"], "steps": [last_weight]}
    world.generation += 1
    world.reconcile()
    assert world.status.phase is Phase.SUCCEEDED
    assert world.status.current_step == 1
