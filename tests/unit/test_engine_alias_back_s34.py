"""The stable alias pointed back at the old version by hand after the promotion moved it (review s34registry).

- The operator killed right after the alias move, before any reconcile saw it: the promotion sent again must not move
  the alias once more (the candidate's own promoted.time says it was moved): it holds, saying so.
- Seen moved, then pointed back during the bake: the rollout may succeed, but never claims the version serves as the
  stable alias while the alias names another one.
"""

from __future__ import annotations

import contextlib
from datetime import timedelta

from controller.api.commands import CommandAction
from controller.api.status import Phase
from controller.engine import Action, ActionFailure, ActionType, JudgeResult
from tests.unit.test_engine import events, finished
from tests.unit.test_engine_support import Registry, Target, World


class Killed(Exception):
    pass


def promotion_alias_sends(world: World) -> list[str]:
    return [action.id for action in world.executed
            if action.type is ActionType.SET_ALIAS and getattr(action, "promotion", False)]


def killed_after_the_alias_move(world: World | None = None) -> World:
    if world is None:
        world = World()
        world.run_until(lambda w: w.status.phase is Phase.PAUSED)
        world.send(CommandAction.PROMOTE)
    execute = world.execute

    def dying(action: Action) -> tuple[JudgeResult | None, JudgeResult | None, ActionFailure | None]:
        result = execute(action)
        if action.type is ActionType.SET_ALIAS and getattr(action, "promotion", False):
            raise Killed
        return result

    world.execute = dying  # type: ignore[method-assign]
    with contextlib.suppress(Killed):
        world.run_until(finished)
    world.execute = execute  # type: ignore[method-assign]
    assert world.registry.aliases["production"] == "7"
    world.restarted = True
    return world


def test_a_promotion_sent_again_after_the_alias_was_pointed_back_holds_and_does_not_move_it() -> None:
    world = killed_after_the_alias_move()
    world.registry.aliases["production"] = "6"  # on-call's rollback in the registry, while the operator was down
    for _ in range(6):
        world.advance(timedelta(seconds=30))
        world.reconcile()
    assert world.registry.aliases["production"] == "6"
    assert promotion_alias_sends(world) == ["1:promote:alias"]
    assert world.status.phase is Phase.PROMOTING
    assert "@production names version 6 again: this promotion had moved it to version 7" in world.status.message
    assert "point @production at version 7 again to promote candidate 7, or roll back" in world.status.message
    assert "StableMismatch" in events(world)


def test_a_promotion_killed_after_its_alias_move_and_left_alone_completes() -> None:  # control: nothing moved back
    world = killed_after_the_alias_move()
    world.run_until(finished)
    assert world.status.phase is Phase.SUCCEEDED
    assert world.registry.aliases["production"] == "7"
    assert "StableMismatch" not in events(world)


def succeeded_with_the_alias_pointed_back_during_the_bake() -> World:
    world = World()
    world.run_until(lambda w: w.status.phase is Phase.PAUSED)
    world.send(CommandAction.PROMOTE)
    world.run_until(lambda w: w.status.phase is Phase.BAKING)
    world.registry.aliases["production"] = "6"
    world.run_until(finished)
    return world


def test_a_bake_that_ends_with_the_alias_pointed_back_does_not_claim_the_alias() -> None:
    world = succeeded_with_the_alias_pointed_back_during_the_bake()
    assert world.status.phase is Phase.SUCCEEDED
    assert world.status.message == ("Version 7 serves all traffic, but @production names version 6, not the promoted "
                                    "version 7: moved outside this rollout after the promotion.")
    assert events(world)[-2:] == ["StableMismatch", "Succeeded"]


def test_a_bake_that_ends_with_the_alias_in_place_claims_it() -> None:  # control
    world = World()
    world.run_until(lambda w: w.status.phase is Phase.PAUSED)
    world.send(CommandAction.PROMOTE)
    world.run_until(finished)
    assert world.status.message == "Version 7 serves all traffic as @production."
    assert "StableMismatch" not in events(world)


def test_a_first_rollout_whose_alias_was_removed_after_its_promotion_moved_it_holds() -> None:
    # No stable version: putting the alias back is removing it (review s34r2).
    world = killed_after_the_alias_move(World(registry=Registry(aliases={}), target=Target(stable_version=None)))
    del world.registry.aliases["production"]
    for _ in range(6):
        world.advance(timedelta(seconds=30))
        world.reconcile()
    assert "production" not in world.registry.aliases
    assert promotion_alias_sends(world) == ["1:promote:alias"]
    assert world.status.phase is Phase.PROMOTING
    assert "@production names no version again: this promotion had moved it to version 7" in world.status.message
    assert "point @production at version 7 again" in world.status.message


def test_a_registry_away_after_the_bake_does_not_bring_the_alias_claim_back() -> None:
    # Missing evidence is no evidence that the alias came back (review s34r2): the message stays, nothing written.
    world = succeeded_with_the_alias_pointed_back_during_the_bake()
    said = world.status.message
    assert said.startswith("Version 7 serves all traffic, but @production names version 6")
    for down in (True, False, True):
        world.registry.down = down
        world.advance(timedelta(minutes=5))
        world.reconcile()
        assert world.status.message == said, down
    world.registry.down = False
    world.registry.aliases["production"] = "7"  # put back on the promoted version: the claim holds again
    world.advance(timedelta(minutes=5))
    world.reconcile()
    assert world.status.message == "Version 7 serves all traffic as @production."
