"""Promotion against a stable alias someone moved, and a candidate deleted from the registry (review s28registry)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from test_engine import events, finished
from test_engine_support import World, spec_dict

from controller.api.commands import CommandAction
from controller.api.status import Phase
from controller.engine import Action, ActionFailure, ActionType, AdapterError, AdapterErrorKind, JudgeResult
from controller.registry.types import REJECTED_TAG

HELD = ("Holding the promotion: @production names version 5, set outside this rollout (it named version 6 when "
        "the rollout started): point @production back at version 6 to promote candidate 7, or roll back.")


def paused_at_50(world: World) -> None:
    world.run_until(lambda w: w.status.phase is Phase.PAUSED)
    assert world.target.canary_weight == 50 and world.target.stable_version == "6"


def executed(world: World, kind: ActionType) -> list[str]:
    return [action.id for action in world.executed if action.type is kind]


def details(world: World, event: str) -> list[str]:
    return [entry.detail for entry in world.status.history if entry.event == event]


def test_a_stable_alias_moved_by_hand_holds_the_promotion_before_traffic_moves() -> None:
    world = World()
    world.registry.versions["5"] = {}
    paused_at_50(world)
    world.registry.aliases["production"] = "5"  # on-call's decision while the rollout paused
    world.send(CommandAction.PROMOTE)
    for _ in range(4):
        world.advance(timedelta(minutes=1))
        world.reconcile()
    assert world.status.phase is Phase.PROMOTING and world.status.message == HELD
    assert executed(world, ActionType.PROMOTE_CANDIDATE) == [] and world.target.stable_version == "6"
    assert world.registry.aliases["production"] == "5"
    assert len(details(world, "StableMismatch")) == 1  # said once, not at every reconcile
    # Put back: the promotion goes on, and says truly what the alias named.
    world.registry.aliases["production"] = "6"
    world.run_until(finished)
    assert world.status.phase is Phase.SUCCEEDED and world.registry.aliases["production"] == "7"
    assert details(world, "AliasMoved") == ["@production -> version 7 (was 6)"]


def test_held_past_the_deadline_rolls_back_untagged_and_leaves_their_alias() -> None:
    world = World()
    world.registry.versions["5"] = {}
    paused_at_50(world)
    world.registry.aliases["production"] = "5"
    world.send(CommandAction.PROMOTE)
    world.run_until(finished)
    rollback = world.status.rollback
    assert world.status.phase is Phase.ROLLED_BACK and rollback is not None
    assert rollback.reason.startswith("the promotion was held past progressDeadline 30m: @production names "
                                      "version 5, set outside this rollout")
    assert "to promote candidate" not in rollback.reason  # advice for a hold, not for what has ended
    assert world.registry.aliases["production"] == "5" and rollback.alias_left_on == "5"
    assert executed(world, ActionType.PROMOTE_CANDIDATE) == [] and executed(world, ActionType.SET_ALIAS) == []
    assert world.target.stable_version == "6" and not world.target.canary_weight
    assert REJECTED_TAG not in world.registry.versions["7"] and "AliasLeft" in events(world)
    assert "alias left on 5" in details(world, "Recovered")[-1]


def test_an_alias_moved_while_the_promotion_waits_for_the_registry_is_not_overwritten() -> None:
    world = World()
    world.registry.versions["5"] = {}
    paused_at_50(world)
    world.send(CommandAction.PROMOTE)
    world.registry.slow_promotion = True  # the target takes the promotion; the alias move does not show yet
    world.run_until(lambda w: w.status.promotion is not None and w.status.promotion.target_confirmed_at is not None)
    world.registry.aliases["production"] = "5"
    world.registry.slow_promotion = False
    world.advance(timedelta(minutes=1))
    world.reconcile()
    assert world.registry.aliases["production"] == "5" and "AliasMoved" not in events(world)
    assert world.status.message.startswith("Holding the promotion: @production names version 5")
    world.send(CommandAction.ROLLBACK)
    world.run_until(finished)
    # Traffic back on what served; the alias is theirs: left, and said so (not "restored" to 6).
    assert world.target.stable_version == "6" and world.registry.aliases["production"] == "5"
    assert "AliasLeft" in events(world) and "AliasRestored" not in events(world)


def test_a_pinned_candidate_deleted_from_the_registry_is_never_promoted() -> None:
    world = World()
    paused_at_50(world)
    del world.registry.versions["7"]  # MLflow drops its aliases with it
    world.send(CommandAction.PROMOTE)
    started = world.now
    world.run_until(finished)
    rollback = world.status.rollback
    assert world.status.phase is Phase.FAILED and rollback is not None
    assert rollback.reason == "candidate 7 no longer exists in the registry, so it cannot be promoted"
    assert world.now - started < timedelta(minutes=5)  # at once, not at progressDeadline (30m)
    assert executed(world, ActionType.PROMOTE_CANDIDATE) == [] and executed(world, ActionType.SET_ALIAS) == []
    assert world.target.stable_version == "6" and world.target.canary_version is None
    assert executed(world, ActionType.TAG_REJECTED) == []


@dataclass
class MlflowLikeWorld(World):
    """Moving an alias to a version the registry does not have is refused with NotFound, as MLflow does."""

    def execute(self, action: Action) -> tuple[JudgeResult | None, JudgeResult | None, ActionFailure | None]:
        if action.type is ActionType.SET_ALIAS and getattr(action, "version", None) not in self.registry.versions:
            self.executed.append(action)
            return None, None, ActionFailure(action.id, AdapterError(
                AdapterErrorKind.NOT_FOUND, "registered model 'nsfw-classifier' has no version 7"))
        return super().execute(action)


def test_not_found_on_the_promotions_alias_step_rolls_back_at_once() -> None:
    world = MlflowLikeWorld(spec=spec_dict(model={"name": "nsfw-classifier", "alias": "challenger",
                                                  "stableAlias": "production"}))
    world.registry.aliases["challenger"] = "7"
    paused_at_50(world)
    world.send(CommandAction.PROMOTE)
    world.registry.slow_promotion = True
    world.run_until(lambda w: w.status.promotion is not None and w.status.promotion.target_confirmed_at is not None)
    del world.registry.versions["7"], world.registry.aliases["challenger"]
    world.registry.slow_promotion = False
    started = world.now
    world.run_until(finished)
    rollback = world.status.rollback
    assert world.status.phase is Phase.ROLLED_BACK and rollback is not None and rollback.after_promotion
    assert world.now - started < timedelta(minutes=5)  # not progressDeadline (30m) of retries
    assert "no version 7" in rollback.reason and not rollback.reject_candidate
    assert world.target.stable_version == "6" and world.registry.aliases["production"] == "6"
    assert executed(world, ActionType.TAG_REJECTED) == []


def test_a_second_hand_move_after_the_alias_was_put_back_is_said_again() -> None:
    world = World()
    world.registry.versions["5"] = {}
    paused_at_50(world)
    world.registry.aliases["production"] = "5"
    world.send(CommandAction.PROMOTE)
    for _ in range(3):
        world.advance(timedelta(minutes=1))
        world.reconcile()
    world.registry.aliases["production"] = "6"  # put back: the promotion goes on
    world.registry.slow_promotion = True  # its alias move is accepted but does not show yet
    world.advance(timedelta(seconds=1))
    world.reconcile()
    assert not world.status.message.startswith("Holding the promotion")
    world.registry.aliases["production"] = "5"  # and moved again before the alias step
    for _ in range(3):
        world.advance(timedelta(minutes=1))
        world.reconcile()
    assert world.status.message.startswith("Holding the promotion") and world.registry.aliases["production"] == "5"
    assert len(details(world, "StableMismatch")) == 2


def test_a_hold_interrupted_by_registry_misses_is_said_once() -> None:
    """A flaky registry (every other read fails) must not re-post the Warning at each return to the hold (s28r5)."""
    world = World()
    world.registry.versions["5"] = {}
    paused_at_50(world)
    world.registry.aliases["production"] = "5"
    world.send(CommandAction.PROMOTE)
    for i in range(12):
        world.registry.down = i % 2 == 1
        world.advance(timedelta(seconds=30))
        world.reconcile()
    assert world.status.phase is Phase.PROMOTING
    assert len(details(world, "StableMismatch")) == 1


def test_an_alias_named_candidate_deleted_while_paused_is_never_promoted() -> None:
    """Deleted with its alias while paused, then `promote`: as a pinned one, never sent all traffic (review s28r7)."""
    world = MlflowLikeWorld(spec=spec_dict(model={"name": "nsfw-classifier", "alias": "challenger",
                                                  "stableAlias": "production"}))
    world.registry.aliases["challenger"] = "7"
    paused_at_50(world)
    del world.registry.versions["7"], world.registry.aliases["challenger"]
    world.send(CommandAction.PROMOTE)
    world.run_until(finished)
    assert executed(world, ActionType.PROMOTE_CANDIDATE) == [] and executed(world, ActionType.SET_ALIAS) == []
    assert world.status.phase is Phase.FAILED and world.target.stable_version == "6"
    assert executed(world, ActionType.TAG_REJECTED) == []
