"""Engine scenarios from the mutation review of the rollback, bake, promotion and resume paths (review s28engine):
each fails on a surviving mutant of controller/engine/decide.py, or on the defect it found."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from controller.api.commands import CommandAction
from controller.api.status import ModelRolloutStatus, Phase, RollbackCause, RollbackStatus
from controller.engine import ActionType
from controller.engine.observations import ActionFailure, AdapterError, AdapterErrorKind, TargetObservation
from tests.unit.test_engine import _first_rollout_killed_after_its_alias_moved, events, fail_from, finished, reverting
from tests.unit.test_engine_support import Target, World


# R08 / R09: when a deleted rollout's rollback gives up.
def tick(world: World, n: int) -> None:
    for _ in range(n):
        world.advance(timedelta(seconds=30))
        world.reconcile()


def test_a_rollback_started_long_before_the_delete_gets_its_full_deadline_from_the_delete() -> None:
    """R09: the give-up deadline counts from the later of the verdict and the delete, not the earlier."""
    world = reverting(World())
    fail_from(world, step_index=1)
    world.run_until(lambda w: w.status.current_step == 1)
    world.registry.down = True  # the alias cannot be confirmed
    world.run_until(lambda w: w.status.phase is Phase.ROLLING_BACK)
    tick(world, 56)  # 28 minutes into the rollback
    assert world.status.phase is Phase.ROLLING_BACK
    world.deleting = True
    tick(world, 20)  # 10 minutes after the delete: 38 after the verdict
    assert world.status.phase is Phase.ROLLING_BACK


def test_without_revert_on_deletion_a_delete_does_not_end_a_failure_rollback() -> None:
    """R08: only a delete held for revertOnDeletion gives the rollback up."""
    world = World()
    assert not world.parsed_spec.rollback.revert_on_deletion
    fail_from(world, step_index=1)
    world.run_until(lambda w: w.status.current_step == 1)
    world.registry.down = True
    world.run_until(lambda w: w.status.phase is Phase.ROLLING_BACK)
    world.deleting = True  # another finalizer holds the object
    tick(world, 100)  # 50 minutes
    assert world.status.phase is Phase.ROLLING_BACK


# R31: a first rollout deleted after its alias moved is not rejected: @stableAlias keeps naming the version that
# keeps all traffic (no earlier version to put back).
def test_a_deleted_first_rollout_keeps_the_alias_on_the_version_that_serves() -> None:
    world = _first_rollout_killed_after_its_alias_moved()
    world.spec["rollback"] = {"automatic": True, "revertOnDeletion": True}
    world.deleting = True
    world.run_until(finished, step=timedelta(seconds=2))
    assert world.status.rollback is not None and not world.status.rollback.reject_candidate
    assert world.target.stable_version == "7"
    assert world.registry.aliases.get("production") == "7"


# R15: the decision that gives a deleted rollout's rollback up hands out nothing, also when a resend is due.
def test_giving_up_after_an_operator_restart_sends_no_last_traffic_write() -> None:
    world = reverting(World())
    world.run_until(lambda w: w.status.current_step == 3)
    world.target.frozen = True  # the weight never goes back
    world.deleting = True
    world.reconcile()
    assert world.status.phase is Phase.ROLLING_BACK
    world.advance(timedelta(minutes=31))
    world.restarted = True  # the operator restarted: every pending action is due again
    world.reconcile()
    ending = next(d for d in world.decisions if d.status.phase is Phase.FAILED)
    assert ending.actions == ()


# P05 / P04: the promotion is not sent while the registry (or the target) does not answer: all traffic would go
# to the candidate with no way to move the alias or judge the move.
def _at_final_pause() -> World:
    world = World()
    world.run_until(lambda w: w.status.phase is Phase.PAUSED)
    return world


def test_no_promotion_is_sent_while_the_registry_is_away() -> None:
    world = _at_final_pause()
    world.registry.down = True
    world.send(CommandAction.PROMOTE)
    for _ in range(4):
        world.reconcile()
        world.advance(timedelta(seconds=30))
    assert world.status.phase is Phase.PROMOTING
    assert not [a for a in world.executed if a.type is ActionType.PROMOTE_CANDIDATE]
    assert world.target.stable_version == "6"


def test_no_promotion_is_sent_while_the_target_cannot_be_read() -> None:
    world = _at_final_pause()
    world.target.unreachable = True
    world.send(CommandAction.PROMOTE)
    for _ in range(4):
        world.reconcile()
        world.advance(timedelta(seconds=30))
    assert not [a for a in world.executed if a.type is ActionType.PROMOTE_CANDIDATE]


# R30 / HEAD defect: a first rollout rejected (abort after its alias moved) and then superseded during its rollback
# leaves @stableAlias on the rejected version; the next attempt uses it as stable (the way back).
def test_a_rejected_first_rollout_superseded_mid_rollback_does_not_stay_the_stable_alias() -> None:
    world = _first_rollout_killed_after_its_alias_moved()
    world.registry.down = True  # the alias removal and the tag wait
    world.send(CommandAction.ABORT)
    world.reconcile()
    assert world.status.phase is Phase.ROLLING_BACK and world.status.rollback.reject_candidate
    world.spec["model"] = {"name": "nsfw-classifier", "version": "8", "stableAlias": "production"}
    world.generation = 2
    world.advance(timedelta(seconds=2))
    world.reconcile()
    world.registry.down = False
    world.run_until(lambda w: w.status.attempt == 2 and w.status.candidate is not None, step=timedelta(seconds=2))
    assert world.registry.aliases.get("production") != "7"  # a rejected version is never the way back
    assert world.status.stable is None or world.status.stable.version != "7"


# R02: a RollingBack status without a rollback or a candidate (a hand edit) must end, not crash every reconcile.
def test_a_hand_edited_rolling_back_status_without_a_candidate_ends_rolled_back() -> None:
    world = World()
    world.status = ModelRolloutStatus(phase=Phase.ROLLING_BACK)
    world.reconcile()
    world.reconcile()
    assert world.status.phase is Phase.ROLLED_BACK
    assert world.status.rollback is not None and not world.status.rollback.reject_candidate


# R44: the rejection tag is given up only once users are back on stable AND the alias is back; a registry that
# refuses every write for a while and then takes them still gets the rejected version tagged.
def test_a_registry_refusing_alias_and_tag_then_recovering_still_tags_the_candidate() -> None:
    world = World()
    refusing = {"on": False}
    execute = world.execute

    def refusing_execute(action):  # type: ignore[no-untyped-def]
        if refusing["on"] and action.type in (ActionType.SET_ALIAS, ActionType.TAG_REJECTED):
            world.executed.append(action)
            return None, None, ActionFailure(action.id, AdapterError(AdapterErrorKind.FORBIDDEN, "403 forbidden"))
        return execute(action)

    world.execute = refusing_execute  # type: ignore[method-assign]
    fail_from(world, step_index=3)
    world.run_until(lambda w: w.status.current_step == 3)
    world.registry.aliases["production"] = "7"  # the alias must be put back, so the alias step waits too
    refusing["on"] = True
    world.run_until(lambda w: w.status.phase is Phase.ROLLING_BACK)
    for _ in range(70):  # 35 minutes of refusals: past progressDeadline
        world.advance(timedelta(seconds=30))
        world.reconcile()
    refusing["on"] = False
    world.run_until(lambda w: w.status.phase is Phase.ROLLED_BACK, step=timedelta(minutes=1))
    assert world.registry.versions["7"].get("modelrollout.rejected") == "true"


# R18: a target that cannot be read (403: RBAC) is not a target that no longer exists.
@dataclass
class ForbiddenTarget(Target):
    forbidden: bool = False

    def observe(self, now: datetime) -> TargetObservation:
        if self.forbidden:
            return TargetObservation(error=AdapterError(AdapterErrorKind.FORBIDDEN, "inferenceservices is forbidden"))
        return super().observe(now)


def test_a_rollback_does_not_count_traffic_restored_on_a_target_it_may_not_read() -> None:
    world = World(target=ForbiddenTarget())
    fail_from(world, step_index=3)
    world.run_until(lambda w: w.status.current_step == 3)
    world.target.frozen = True
    world.target.forbidden = True  # RBAC edited: the candidate still takes 10%
    world.run_until(lambda w: w.status.phase is Phase.ROLLING_BACK)
    for _ in range(4):
        world.reconcile()
    rollback = world.status.rollback
    assert world.status.phase is Phase.ROLLING_BACK and rollback is not None
    assert rollback.traffic_confirmed_at is None
    assert "TrafficRestored" not in events(world)


# R22 / R23: when a rollback may call traffic restored.
def test_a_bake_rollback_is_not_restored_while_the_rejected_version_keeps_a_share() -> None:
    """R22: stable back as the default, but half the traffic still on the rejected version."""
    world = World()
    fail_from(world, step_index=None, after=timedelta(minutes=5), mode="bake")
    world.run_until(lambda w: w.status.phase is Phase.PAUSED)
    world.send(CommandAction.PROMOTE)
    world.run_until(lambda w: w.status.phase is Phase.BAKING)
    world.target.frozen = True
    world.target.stable_version, world.target.canary_version, world.target.canary_weight = "6", "7", 50
    world.run_until(lambda w: w.status.phase is Phase.ROLLING_BACK)
    for _ in range(4):
        world.reconcile()
    assert world.status.rollback is not None and world.status.rollback.traffic_confirmed_at is None
    assert "TrafficRestored" not in events(world)


def test_a_share_the_target_no_longer_names_is_still_withdrawn_once_the_candidate_was_staged() -> None:
    """R23: the candidate was seen staged; a share without a version name is not someone else's canary."""
    world = World()
    fail_from(world, step_index=3)
    world.run_until(lambda w: w.status.current_step == 3)
    world.target.frozen = True
    world.target.canary_version = None  # e.g. the version label cannot be read; 10% still routed
    world.run_until(lambda w: w.status.phase is Phase.ROLLING_BACK)
    for _ in range(4):
        world.reconcile()
    assert world.status.rollback is not None and world.status.rollback.traffic_confirmed_at is None


def test_a_hand_edited_rolling_back_status_with_a_rollback_but_no_candidate_ends_rolled_back() -> None:
    """A rollback that would reject a candidate the status does not name: nothing to tag, it ends (it asserted on
    every reconcile)."""
    world = World()
    world.status = ModelRolloutStatus(phase=Phase.ROLLING_BACK, rollback=RollbackStatus(
        cause=RollbackCause.ABORTED, reason="aborted by hand", verdict_at=world.now))
    world.reconcile()
    world.reconcile()
    assert world.status.phase is Phase.ROLLED_BACK
    assert world.status.rollback is not None and not world.status.rollback.reject_candidate
