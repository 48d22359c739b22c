"""What the rollout reports is what happened: a rollback is confirmed only when the candidate provably left the
traffic, an on-call rollback or abort is carried out (never lost to a new candidate), and every traffic step has a
progress deadline that `retry` renews."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from typing import Any

import pytest
from test_engine_support import T0, World, spec_dict

from controller.api import CommandAction, Phase, RollbackCause
from controller.api.status import ActionState, PauseReason
from controller.engine import REJECTED_TAG, Observations, SetCanaryWeight


def events(world: World, since: int = 0) -> list[str]:
    return [entry.event for entry in world.status.history[since:]]


def _hide_target(world: World, how: str) -> None:
    """The target cannot be read (unreachable) or is not synced (the operator passes no observation)."""
    if how == "unreachable":
        world.target.unreachable = True
        return
    observe = world.observe

    def unsynced(*args: Any, **kwargs: Any) -> Observations:
        return dataclasses.replace(observe(*args, **kwargs), target=None)

    world.observe = unsynced  # type: ignore[method-assign]


def _at_first_analysis_with_the_candidate_staged_beforehand() -> World:
    """The candidate already staged at 0% when the attempt starts (a retry before the last withdrawal finished):
    staging is confirmed from the target alone, no StageCandidate sent."""
    world = World(spec=spec_dict(bake=None))
    world.target.canary_version, world.target.canary_weight, world.target.canary_ready_at = "7", 0, T0
    world.run_until(lambda w: w.status.phase is Phase.PROGRESSING and w.status.current_step == 1)
    assert not any(type(action).__name__ == "StageCandidate" for action in world.executed)
    assert world.target.canary_weight == 1
    return world


@pytest.mark.parametrize("how", ["unreachable", "unsynced"])
def test_an_abort_is_not_recovered_while_an_unread_target_may_still_send_the_candidate_traffic(how: str) -> None:
    world = _at_first_analysis_with_the_candidate_staged_beforehand()
    stage = next(record for record in world.status.actions if record.id == "1:stage:7")
    assert stage.state is ActionState.CONFIRMED  # seen on the target: recorded all the same
    _hide_target(world, how)
    world.advance(timedelta(seconds=5))
    world.send(CommandAction.ABORT, command_id="abort-1")
    before = len(world.status.history)
    world.reconcile()
    assert world.status.phase is Phase.ROLLING_BACK
    assert "TrafficRestored" not in events(world, before) and "Recovered" not in events(world, before)
    assert world.status.rollback is not None and world.status.rollback.traffic_confirmed_at is None
    world.target.unreachable = False
    world.observe = World.observe.__get__(world)  # type: ignore[method-assign]
    world.run_until(lambda w: w.status.phase is Phase.ROLLED_BACK, step=timedelta(seconds=5))
    assert not world.target.canary_weight
    assert any(isinstance(action, SetCanaryWeight) and action.withdraw for action in world.executed)


def test_a_status_without_the_stage_record_still_counts_a_candidate_past_its_gate_as_staged() -> None:
    """A status written before staging seen only on the target was recorded: the gate ran, so it was staged."""
    world = _at_first_analysis_with_the_candidate_staged_beforehand()
    actions = tuple(record for record in world.status.actions if not record.id.startswith("1:stage:"))
    world.status = dataclasses.replace(world.status, actions=actions)
    world.target.unreachable = True
    world.advance(timedelta(seconds=5))
    world.send(CommandAction.ABORT)
    world.reconcile()
    assert world.status.phase is Phase.ROLLING_BACK and "TrafficRestored" not in events(world)


def test_an_abort_before_anything_was_staged_ends_with_the_target_unreadable() -> None:
    world = World(spec=spec_dict(bake=None))
    world.target.ready = False  # resolved (a target that cannot be read leaves it unresolved), not staged
    world.reconcile()
    world.target.unreachable = True
    world.reconcile()
    assert world.status.phase is Phase.PENDING and world.status.candidate is not None
    world.advance(timedelta(seconds=5))
    world.send(CommandAction.ABORT)
    world.reconcile()
    assert world.status.phase is Phase.ROLLED_BACK
    restored = [entry.detail for entry in world.status.history if entry.event == "TrafficRestored"]
    assert restored == ["the candidate was never staged on InferenceService nsfw-classifier"]


def test_a_rollback_sent_with_a_new_version_rolls_back_the_promoted_one_and_then_starts_the_new_one() -> None:
    world = World(spec=spec_dict(bake=None))
    world.run_until(lambda w: w.status.phase is Phase.PAUSED)
    world.send(CommandAction.PROMOTE)
    world.run_until(lambda w: w.status.phase is Phase.SUCCEEDED)
    assert world.registry.aliases["production"] == "7" and world.target.stable_version == "7"
    world.spec = {**world.spec, "model": {**world.spec["model"], "version": "8"}}  # synced with the command
    world.generation += 1
    world.send(CommandAction.ROLLBACK, command_id="c-rollback")
    before = len(world.status.history)
    world.reconcile()
    applied = [entry.event for entry in world.status.history[before:] if entry.command_id == "c-rollback"]
    assert applied == ["CommandApplied"]
    started = [entry.detail for entry in world.status.history[before:] if entry.event == "RollbackStarted"]
    assert started == ["RollbackRequested: rollback requested by alice"]
    assert world.registry.aliases["production"] == "6" and world.target.stable_version == "6"
    assert REJECTED_TAG in world.registry.versions["7"]
    assert "RolledBackForNewCandidate" in events(world, before) and "Aborted" not in events(world, before)
    rollback_at = events(world, before).index("RollbackStarted")
    assert events(world, before).index("RolledBackForNewCandidate") > rollback_at
    assert world.status.candidate is not None and world.status.candidate.version == "8"
    assert world.status.stable is not None and world.status.stable.version == "6"


@pytest.mark.parametrize("fault", ["target-missing", "registry-down"])
def test_a_weight_step_held_before_its_first_send_meets_the_progress_deadline(fault: str) -> None:
    world = World(spec=spec_dict(bake=None))
    world.run_until(lambda w: w.status.phase is Phase.PROGRESSING and w.status.current_step == 1)
    entered = world.now  # the analysis passes at once in the stand-in world: step 3 starts here
    if fault == "target-missing":
        world.target.exists = False
    else:
        world.registry.down = True
    world.run_until(lambda w: w.status.phase is not Phase.PROGRESSING, step=timedelta(minutes=1), limit=60)
    rollback = world.status.rollback
    assert rollback is not None and rollback.cause is RollbackCause.PROGRESS_DEADLINE_EXCEEDED
    assert world.now - entered <= timedelta(minutes=41)  # the analysis step's 10m, then 30m
    assert "did not take weight 10% within progressDeadline 30m" in rollback.reason
    assert "held unsent" in rollback.reason and not rollback.reject_candidate  # nothing was asked of the model


def test_a_promotion_held_before_its_first_send_meets_the_progress_deadline() -> None:
    world = World(spec=spec_dict(bake=None))
    world.run_until(lambda w: w.status.phase is Phase.PAUSED)
    world.target.unreachable = True
    world.send(CommandAction.PROMOTE)
    world.run_until(lambda w: w.status.phase is not Phase.PROMOTING, step=timedelta(minutes=1), limit=40)
    rollback = world.status.rollback
    assert rollback is not None and rollback.cause is RollbackCause.PROGRESS_DEADLINE_EXCEEDED
    assert "could not be read to confirm the promotion of 7 within progressDeadline 30m" in rollback.reason
    assert not rollback.reject_candidate  # nothing was read of the model


def test_retry_gives_a_promotion_whose_candidate_vanished_a_fresh_deadline() -> None:
    world = World(spec=spec_dict(bake=None, rollback={"automatic": False}))
    world.run_until(lambda w: w.status.phase is Phase.PAUSED)
    world.target.canary_version = world.target.canary_weight = None  # a sync reapplied the InferenceService
    world.send(CommandAction.PROMOTE)
    world.reconcile()
    assert world.status.phase is Phase.PROMOTING
    world.advance(timedelta(minutes=31))
    world.reconcile()
    pause = world.status.pause
    assert pause is not None and pause.reason is PauseReason.PROGRESS_DEADLINE_EXCEEDED
    assert "no longer staged" in pause.detail
    assert world.status.message.endswith("; run retry or rollback.")  # promote is refused for this pause
    world.advance(timedelta(seconds=5))
    world.send(CommandAction.RETRY)
    world.reconcile()
    assert world.status.phase is Phase.PROMOTING and world.status.pause is None
    world.advance(timedelta(minutes=29))
    world.reconcile()
    assert world.status.phase is Phase.PROMOTING  # a fresh 30m from the retry
    world.advance(timedelta(minutes=2))
    world.reconcile()
    assert world.status.phase is Phase.PAUSED


def test_an_abort_during_a_rollback_for_a_new_candidate_ends_the_rollout_without_starting_it() -> None:
    world = World(spec=spec_dict(bake=None))
    world.run_until(lambda w: w.status.phase is Phase.PROGRESSING and w.status.current_step == 1)
    world.target.frozen = True  # the target is slow to take the rollback
    world.spec = {**world.spec, "model": {**world.spec["model"], "version": "8"}}
    world.generation += 1
    world.reconcile()
    assert world.status.rollback is not None and world.status.rollback.restart
    world.send(CommandAction.ABORT, command_id="abort-1")
    before = len(world.status.history)
    world.reconcile()
    applied = [entry for entry in world.status.history[before:] if entry.command_id == "abort-1"]
    assert [(entry.event, entry.detail) for entry in applied] == [
        ("CommandApplied", "abort: the rollback goes on and version 8 is not started")]
    world.target.frozen = False
    for _ in range(10):
        world.advance(timedelta(seconds=30))
        world.reconcile()
    assert world.status.phase is Phase.ROLLED_BACK
    assert world.status.candidate is not None and world.status.candidate.version == "7"
    assert world.target.canary_version != "8" and "RolledBackForNewCandidate" not in events(world)
    assert "version 8 is not started (run retry to start it)" in world.status.message
    world.send(CommandAction.RETRY)  # on-call changes their mind: retry starts it
    world.run_until(lambda w: w.status.phase is Phase.PROGRESSING, step=timedelta(seconds=5))
    assert world.status.candidate is not None and world.status.candidate.version == "8"


def test_an_abort_while_the_registry_is_down_holds_back_only_the_version_the_rollback_made_way_for() -> None:
    spec = spec_dict(bake=None, model={"name": "nsfw-classifier", "alias": "challenger", "stableAlias": "production"})
    world = World(spec=spec)
    world.registry.versions["9"] = {}
    world.registry.aliases["challenger"] = "7"
    world.run_until(lambda w: w.status.phase is Phase.PROGRESSING and w.status.current_step == 1)
    world.target.frozen = True
    world.registry.aliases["challenger"] = "8"  # a new candidate: 7 is rolled back first
    world.reconcile()
    assert world.status.rollback is not None and world.status.rollback.restart
    world.registry.down = True  # on-call aborts while the registry cannot say what the alias names
    world.send(CommandAction.ABORT, command_id="abort-1")
    world.reconcile()
    assert world.status.rollback is not None and world.status.rollback.evidence["not_started"] == "8"
    world.registry.down = False
    world.target.frozen = False
    world.run_until(lambda w: w.status.phase is Phase.ROLLED_BACK, step=timedelta(seconds=30))
    assert "version 8 is not started" in world.status.message
    world.registry.aliases["challenger"] = "9"  # another version is not the one held back: it starts
    for _ in range(5):
        world.advance(timedelta(minutes=1))
        world.reconcile()
    assert world.status.candidate is not None and world.status.candidate.version == "9"
