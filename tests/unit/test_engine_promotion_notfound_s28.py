"""A NotFound on the promotion's alias step while the candidate still exists (a registry briefly up on the wrong
store) is not the end of the rollout, and `retry` starts a paused promotion afresh (review s28r4)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import pytest

from controller.api.commands import CommandAction
from controller.api.status import Phase
from controller.engine import Action, ActionFailure, ActionType, AdapterError, AdapterErrorKind
from tests.unit.test_engine_support import World, spec_dict

NOT_FOUND = AdapterError(AdapterErrorKind.NOT_FOUND,
                         "registered model 'nsfw-classifier' has no version 7 (or the model does not exist)")


@dataclass
class AliasNotFound(World):
    """The promotion's alias move answers NotFound `left` times; the version stays in the registry."""

    left: int = 1

    def execute(self, action: Action):  # type: ignore[no-untyped-def]
        if action.type is ActionType.SET_ALIAS and getattr(action, "promotion", False) and self.left:
            self.left -= 1
            self.executed.append(action)
            return None, None, ActionFailure(action.id, NOT_FOUND)
        return super().execute(action)


def promoted(world: World) -> None:
    world.run_until(lambda w: w.status.phase is Phase.PAUSED)
    world.send(CommandAction.PROMOTE)


@pytest.mark.parametrize("automatic", [True, False])
def test_one_not_found_while_the_candidate_exists_is_retried_not_the_end(automatic: bool) -> None:
    world = AliasNotFound(spec=spec_dict(rollback={"automatic": automatic}))
    promoted(world)
    world.run_until(lambda w: w.status.phase in (Phase.BAKING, Phase.SUCCEEDED, Phase.ROLLED_BACK, Phase.FAILED)
                    or w.status.pause is not None, limit=200)
    assert world.status.phase in (Phase.BAKING, Phase.SUCCEEDED), world.status.message
    assert world.registry.aliases.get("production") == "7"


def test_retry_sends_a_promotion_paused_on_its_deadline_again() -> None:
    world = AliasNotFound(spec=spec_dict(rollback={"automatic": False}), left=10**6)
    promoted(world)
    world.run_until(lambda w: w.status.pause is not None, limit=400)
    assert world.status.phase is Phase.PAUSED and world.registry.aliases.get("production") == "6"
    world.left = 0  # the registry is back on its store
    world.send(CommandAction.RETRY)
    for _ in range(10):
        world.advance(timedelta(seconds=30))
        world.reconcile()
    assert world.status.phase in (Phase.BAKING, Phase.SUCCEEDED), world.status.message
    assert world.registry.aliases.get("production") == "7"


@dataclass
class AliasClearedThenNotFound(AliasNotFound):
    """The pipeline clears @challenger once production traffic is on the candidate (on purpose), and the alias move
    meets one NotFound: the candidate itself still exists."""

    def execute(self, action: Action):  # type: ignore[no-untyped-def]
        if action.type is ActionType.SET_ALIAS and getattr(action, "promotion", False) and self.left:
            self.registry.aliases.pop("challenger", None)
        return super().execute(action)


def test_an_alias_named_candidate_whose_alias_was_cleared_is_not_taken_for_deleted() -> None:
    world = AliasClearedThenNotFound(spec=spec_dict(model={"name": "nsfw-classifier", "alias": "challenger",
                                                           "stableAlias": "production"}))
    world.registry.aliases["challenger"] = "7"
    promoted(world)
    world.run_until(lambda w: w.status.phase in (Phase.BAKING, Phase.SUCCEEDED, Phase.ROLLED_BACK, Phase.FAILED)
                    or w.status.pause is not None, limit=300)
    assert world.status.phase in (Phase.BAKING, Phase.SUCCEEDED), world.status.message
    assert world.registry.aliases.get("production") == "7"
