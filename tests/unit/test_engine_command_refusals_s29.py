"""Commands refused in the promotion-hold states say the hold and its way out (review s29oncall F2, F3)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from test_engine import events, finished
from test_engine_support import World

from controller.api.commands import CommandAction
from controller.api.status import Phase

HOLD = ("the promotion is held: @production names version 5, set outside this rollout (it named version 6 when the "
        "rollout started): point @production back at version 6 to promote candidate 7, or roll back")


def held(world: World) -> None:
    world.registry.versions["5"] = {}
    world.run_until(lambda w: w.status.phase is Phase.PAUSED)
    world.registry.aliases["production"] = "5"  # moved by hand while the rollout paused
    world.send(CommandAction.PROMOTE, command_id="first")
    for _ in range(3):
        world.advance(timedelta(minutes=1))
        world.reconcile()
    assert world.status.phase is Phase.PROMOTING and world.status.message.startswith("Holding the promotion: ")


def refusals(world: World) -> list[str]:
    return [entry.detail for entry in world.status.history if entry.event == "CommandIgnored"]


@pytest.mark.parametrize(("action", "full", "label"), [(CommandAction.PROMOTE, False, "promote"),
                                                         (CommandAction.PROMOTE, True, "promote --full"),
                                                         (CommandAction.RETRY, False, "retry")])
def test_a_command_refused_during_a_hold_names_the_hold_and_its_way_out(action: CommandAction, full: bool,
                                                                         label: str) -> None:
    world = World()
    held(world)
    world.send(action, full=full, command_id="second")
    world.reconcile()
    assert refusals(world) == [f"{label}: {HOLD}"]
    assert world.status.phase is Phase.PROMOTING  # refused: nothing else changed
    # The way out it names works: the alias put back, the promotion goes on.
    world.registry.aliases["production"] = "6"
    world.run_until(finished)
    assert world.status.phase is Phase.SUCCEEDED and world.registry.aliases["production"] == "7"


def test_promote_in_a_promotion_that_is_not_held_is_still_nothing_to_promote() -> None:
    world = World()
    world.run_until(lambda w: w.status.phase is Phase.PAUSED)
    world.send(CommandAction.PROMOTE, command_id="first")
    world.registry.slow_promotion = True  # promoting, not held: the alias move does not show yet
    world.run_until(lambda w: w.status.phase is Phase.PROMOTING)
    world.send(CommandAction.PROMOTE, command_id="second")
    world.reconcile()
    assert refusals(world) == ["promote: nothing to promote in phase Promoting"]


def test_retry_of_a_rollout_whose_pinned_candidate_was_deleted_is_refused_and_keeps_its_account() -> None:
    world = World()
    world.run_until(lambda w: w.status.phase is Phase.PAUSED)
    del world.registry.versions["7"]
    world.send(CommandAction.PROMOTE, command_id="first")
    world.run_until(finished)
    assert world.status.phase is Phase.FAILED
    before = world.status.to_dict()
    world.send(CommandAction.RETRY, command_id="retry")
    world.reconcile()
    assert refusals(world) == ["retry: nsfw-classifier version 7 no longer exists in the registry: point "
                               "spec.model.version at a version that exists"]
    after = world.status.to_dict()
    assert world.status.phase is Phase.FAILED and "starting a new attempt" not in str(after["history"])
    for kept in ("candidate", "stable", "rollback", "attempt"):
        assert after.get(kept) == before.get(kept), kept


def test_retry_of_a_rolled_back_rollout_whose_candidate_exists_still_starts_again() -> None:
    world = World()
    world.run_until(lambda w: w.status.phase is Phase.PAUSED)
    world.send(CommandAction.ABORT, command_id="abort")
    world.run_until(finished)
    assert world.status.phase is Phase.ROLLED_BACK
    world.send(CommandAction.RETRY, command_id="retry")
    world.reconcile()
    assert not refusals(world) and events(world).count("Resolved") == 2
