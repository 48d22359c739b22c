"""The promotion reads the target again before it moves the alias, and an unread target tags nothing (s40promote).

F1: once the target had taken the promotion it was never read again, so a target put back on stable meanwhile
(a GitOps sync, a hand edit) while the alias waited ended Succeeded with @production on a version serving nobody.
F2: a target that could not be read until progressDeadline tagged the candidate rejected, though nothing of the
model was seen.
"""

from __future__ import annotations

from datetime import timedelta

from test_engine_support import World, promotion_sent_to_a_frozen_target, spec_dict

from controller.api import CommandAction
from controller.api.status import HoldReason, Phase, RollbackCause
from controller.engine import REJECTED_TAG

ENDED = (Phase.SUCCEEDED, Phase.ROLLED_BACK, Phase.FAILED)


def _confirmed_with_the_alias_waiting() -> World:
    """Paused at the last step, promoted: the target took version 7, the registry has not moved the alias yet."""
    world = World(spec=spec_dict(bake=None))
    world.run_until(lambda w: w.status.phase is Phase.PAUSED)
    world.registry.slow_promotion = True
    world.send(CommandAction.PROMOTE)
    world.advance(timedelta(seconds=30))
    world.reconcile()
    promotion = world.status.promotion
    assert world.status.phase is Phase.PROMOTING and promotion is not None
    assert promotion.target_confirmed_at is not None and promotion.alias_confirmed_at is None
    return world


def _run_to_the_end(world: World, limit: int = 200) -> None:
    for _ in range(limit):
        world.advance(timedelta(seconds=30))
        world.reconcile()
        if world.status.phase in ENDED:
            return
    raise AssertionError(f"still {world.status.phase}: {world.status.message}")


def _run_while(world: World, phase: Phase, limit: int = 80) -> None:
    for _ in range(limit):
        world.advance(timedelta(seconds=30))
        world.reconcile()
        if world.status.phase is not phase:
            return


def _assert_held_untagged(world: World, reason: HoldReason, after: timedelta) -> None:
    world.advance(after)
    world.reconcile()
    promotion = world.status.promotion
    assert world.status.phase is Phase.PROMOTING and promotion is not None and promotion.hold is not None
    assert promotion.hold.reason is reason and not promotion.hold.reject_candidate


def _assert_rolled_back_untagged(world: World, why: str) -> None:
    rollback = world.status.rollback
    assert world.status.phase is Phase.ROLLED_BACK and rollback is not None
    assert rollback.cause is RollbackCause.PROGRESS_DEADLINE_EXCEEDED and not rollback.reject_candidate
    assert why in rollback.reason
    assert world.registry.aliases.get("production") == "6"
    assert world.registry.versions["7"].get(REJECTED_TAG) != "true"


def _weight_sent_to_a_target_that_ignores_it() -> World:
    world = World(spec=spec_dict(canary={"steps": [{"setWeight": 10}, {"pause": {}}]}))
    world.target.ignore_weights = True
    world.run_until(lambda w: any(":step-0:" in r.id and r.sent_at for r in w.status.actions))
    return world


def test_a_target_put_back_on_stable_holds_the_alias_and_rolls_back_untagged_at_the_deadline() -> None:
    world = _confirmed_with_the_alias_waiting()
    world.target.stable_version = "6"  # a sync reapplied the InferenceService
    world.registry.slow_promotion = False
    _assert_held_untagged(world, HoldReason.CANDIDATE_NOT_STAGED, timedelta(minutes=1))
    assert "no longer serves candidate 7 alone (it serves stable 6)" in world.status.message
    assert world.registry.aliases.get("production") == "6"
    _run_to_the_end(world)
    _assert_rolled_back_untagged(world, "no longer serves candidate 7 alone")


def test_a_target_put_back_only_for_a_while_lets_the_promotion_finish() -> None:
    world = _confirmed_with_the_alias_waiting()
    world.target.stable_version = "6"
    world.registry.slow_promotion = False
    world.advance(timedelta(minutes=1))
    world.reconcile()
    assert world.registry.aliases.get("production") == "6"
    world.target.stable_version = "7"  # the promotion put back in Git
    _run_to_the_end(world)
    assert world.status.phase is Phase.SUCCEEDED
    assert world.registry.aliases.get("production") == "7"


def test_an_unread_target_in_the_alias_step_holds_the_alias_until_it_answers() -> None:
    world = _confirmed_with_the_alias_waiting()
    world.target.unreachable = True
    world.registry.slow_promotion = False
    _assert_held_untagged(world, HoldReason.TARGET_UNAVAILABLE, timedelta(minutes=1))
    assert world.registry.aliases.get("production") == "6"
    world.target.unreachable = False
    _run_to_the_end(world)
    assert world.status.phase is Phase.SUCCEEDED and world.registry.aliases.get("production") == "7"


def test_a_promotion_taken_by_a_target_unread_until_the_deadline_is_rolled_back_untagged() -> None:
    world = promotion_sent_to_a_frozen_target()
    world.target.frozen = False  # it took the promotion; reads of it fail (an API server outage, RBAC trouble)
    world.target.stable_version, world.target.canary_version, world.target.canary_weight = "7", None, None
    world.target.unreachable = True
    _assert_held_untagged(world, HoldReason.TARGET_UNAVAILABLE, timedelta(seconds=30))
    _run_while(world, Phase.PROMOTING)
    rollback = world.status.rollback
    assert rollback is not None and rollback.cause is RollbackCause.PROGRESS_DEADLINE_EXCEEDED
    assert not rollback.reject_candidate and "could not be read to confirm the promotion of 7" in rollback.reason
    world.target.unreachable = False
    world.run_until(lambda w: w.status.phase in ENDED, limit=200)
    assert world.registry.versions["7"].get(REJECTED_TAG) != "true"


def test_a_weight_sent_to_a_target_unread_until_the_deadline_is_rolled_back_untagged() -> None:
    world = _weight_sent_to_a_target_that_ignores_it()
    world.target.unreachable = True
    _run_while(world, Phase.PROGRESSING)
    rollback = world.status.rollback
    assert rollback is not None and rollback.cause is RollbackCause.PROGRESS_DEADLINE_EXCEEDED
    assert not rollback.reject_candidate and "(observed unknown)" in rollback.reason


def test_a_weight_a_readable_target_never_took_still_tags_the_candidate() -> None:
    world = _weight_sent_to_a_target_that_ignores_it()
    _run_while(world, Phase.PROGRESSING)
    rollback = world.status.rollback
    assert rollback is not None and rollback.cause is RollbackCause.PROGRESS_DEADLINE_EXCEEDED
    assert rollback.reject_candidate


def test_a_target_that_does_not_say_what_serves_holds_the_alias_quoting_it_and_goes_on_once_it_does() -> None:
    """Seldon v1's router reports no stable version while the promoted Deployments scale up (review s40r2): not a
    target put back, and said in the router's own words."""
    world = _confirmed_with_the_alias_waiting()
    world.target.stable_version, world.target.ready = None, False
    world.target.detail = "the Deployments of version 7 are not available yet"
    world.registry.slow_promotion = False
    _assert_held_untagged(world, HoldReason.TARGET_UNAVAILABLE, timedelta(minutes=1))
    assert "does not say which version serves" in world.status.message
    assert "the Deployments of version 7 are not available yet" in world.status.message
    assert "no longer serves" not in world.status.message
    assert world.registry.aliases.get("production") == "6"
    world.target.stable_version, world.target.ready, world.target.detail = "7", True, ""
    _run_to_the_end(world)
    assert world.status.phase is Phase.SUCCEEDED and world.registry.aliases.get("production") == "7"


def test_an_alias_moved_before_a_kill_and_a_target_put_back_is_said_and_put_back_at_the_deadline() -> None:
    world = World(spec=spec_dict(bake=None))
    world.run_until(lambda w: w.status.phase is Phase.PAUSED)
    world.send(CommandAction.PROMOTE)
    world.advance(timedelta(seconds=30))
    world.crash_after = 4  # killed once the alias moved, before its confirmation is stored
    world.reconcile()
    promotion = world.status.promotion
    assert promotion is not None and promotion.target_confirmed_at is not None
    assert promotion.alias_confirmed_at is None and world.registry.aliases.get("production") == "7"
    world.target.stable_version = "6"
    world.advance(timedelta(seconds=30))
    world.reconcile()
    assert "@production already names 7; it is put back unless the target serves 7 again" in world.status.message
    _run_to_the_end(world)
    assert world.status.phase is Phase.ROLLED_BACK and world.registry.aliases.get("production") == "6"
