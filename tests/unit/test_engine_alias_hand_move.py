"""A rollback undoes what its rollout did, not a human's move of the stable alias to a third version."""

from __future__ import annotations

from datetime import timedelta

from test_engine import events, fail_from, finished
from test_engine_support import World, spec_dict

from controller.api.commands import CommandAction
from controller.api.status import Phase
from controller.engine import ActionType


def rollback_alias_actions(world: World) -> list[str]:
    return [a.id for a in world.executed if a.type is ActionType.SET_ALIAS and "rollback" in a.id]


def test_an_alias_moved_by_hand_to_a_third_version_is_left_there_by_the_rollback() -> None:
    world = World()
    world.registry.versions["5"] = {}
    fail_from(world, step_index=3)
    world.run_until(lambda w: w.status.current_step == 1)
    world.registry.aliases["production"] = "5"  # on-call moved it during the rollout
    world.run_until(finished)
    rollback = world.status.rollback
    assert world.status.phase is Phase.ROLLED_BACK and rollback is not None
    assert world.registry.aliases["production"] == "5"
    assert rollback_alias_actions(world) == []
    assert rollback.alias_left_on == "5" and rollback.alias_confirmed_at is not None
    assert rollback.recovered_at is not None and world.target.stable_version == "6"  # traffic went back
    assert "AliasLeft" in events(world) and "AliasRestored" not in events(world)


def test_an_alias_the_rollout_moved_is_put_back_by_a_bake_rollback() -> None:
    world = World()
    fail_from(world, step_index=None, after=timedelta(minutes=5), mode="bake")
    world.run_until(lambda w: w.status.phase is Phase.PAUSED)
    world.send(CommandAction.PROMOTE)
    world.run_until(finished)
    rollback = world.status.rollback
    assert rollback is not None and rollback.after_promotion
    assert world.registry.aliases["production"] == "6" and rollback.alias_left_on is None
    assert len(rollback_alias_actions(world)) == 1 and "AliasRestored" in events(world)


def test_a_target_serving_another_stable_than_the_alias_names_is_reported_at_the_start() -> None:
    world = World()
    world.registry.versions["5"] = {}
    world.target.stable_version = "5"  # @production names 6
    world.reconcile()
    mismatch = [h.detail for h in world.status.history if h.event == "StableMismatch"]
    assert mismatch == ["InferenceService nsfw-classifier serves version 5 as stable while @production names 6"]
    clean = World()
    clean.reconcile()
    assert "StableMismatch" not in events(clean)


def test_an_alias_already_on_the_candidate_while_the_target_serves_another_is_no_claim_of_serving() -> None:
    world = World()
    world.registry.aliases["production"] = "7"  # the candidate; the target serves 6
    world.reconcile()
    assert world.status.phase is Phase.FAILED  # nothing was done: never Succeeded and Ready
    assert "StableMismatch" in events(world)
    assert world.status.message == ("Failed: version 7 is already @production, but InferenceService nsfw-classifier "
                                    "serves version 6: nothing was rolled out (to roll it out here, point "
                                    "@production back at version 6 first).")
    agreed = World()
    agreed.registry.aliases["production"] = "7"
    agreed.target.stable_version = "7"
    agreed.reconcile()
    assert agreed.status.message == "Version 7 serves all traffic as @production."
    assert "StableMismatch" not in events(agreed)


def test_a_rollback_after_success_puts_back_the_alias_the_rollout_moved_even_if_it_moved_on() -> None:
    world = World(spec=spec_dict(bake=None))
    world.run_until(lambda w: w.status.phase is Phase.PAUSED)
    world.send(CommandAction.PROMOTE)
    world.run_until(finished)
    assert world.status.phase is Phase.SUCCEEDED and world.registry.aliases["production"] == "7"
    world.registry.aliases["production"] = "8"  # moved on later
    world.advance(timedelta(days=3))
    world.send(CommandAction.ROLLBACK)
    world.run_until(lambda w: w.status.phase is Phase.ROLLED_BACK)
    assert world.registry.aliases["production"] == "6" and world.target.stable_version == "6"
    assert world.status.rollback is not None and world.status.rollback.alias_left_on is None
