"""The API server raises a custom resource's generation when it sets deletionTimestamp (review s30runtime LOW 1):
no human edited the spec, so the deletion records no SpecChanged (an Event on-call would read as an edit)."""

from __future__ import annotations

from test_engine import events, finished
from test_engine_support import World, spec_dict

from controller.api.status import Phase


def test_a_deletion_raising_the_generation_is_not_recorded_as_a_spec_change() -> None:
    world = World(spec=spec_dict(rollback={"revertOnDeletion": True}))
    world.run_until(lambda w: w.status.current_step == 1)
    world.deleting = True
    world.generation += 1
    world.run_until(finished)
    assert world.status.phase is Phase.ROLLED_BACK, world.status.message
    assert "SpecChanged" not in events(world), [h.detail for h in world.status.history if h.event == "SpecChanged"]
    assert world.status.observed_generation == world.generation


def test_a_spec_edit_is_still_recorded() -> None:
    world = World()
    world.run_until(lambda w: w.status.current_step == 1)
    world.generation += 1
    world.reconcile()
    assert "SpecChanged" in events(world)
