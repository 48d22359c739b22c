"""The action ledger is bounded (ACTION_LOG_LIMIT); the record that a candidate was staged is never evicted,
because a rollback that cannot see the target reads it to tell "nothing to withdraw" from "not confirmed".

A pending action's last error (status.actions[].lastError) keeps its condition False and shows in the message
until the action is confirmed, and a missed deadline quotes it."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from typing import Any

import pytest
from test_engine_support import World, spec_dict

from controller.api import CommandAction, Phase, RollbackCause
from controller.api.commands import Command
from controller.api.status import ACTION_LOG_LIMIT, ActionRecord, ActionState, ConditionStatus
from controller.engine import (
    REJECTED_TAG,
    ActionFailure,
    ActionType,
    AdapterError,
    AdapterErrorKind,
    SetCanaryWeight,
    TagRejected,
    decide,
)


def test_a_rollback_blind_to_the_target_does_not_confirm_traffic_after_fifty_steps() -> None:
    steps = [{"setWeight": weight} for weight in range(1, 51)]
    world = World(spec=spec_dict(canary={"steps": steps}, bake=None))
    # Steps advance several per reconcile; by step 48 the ledger is full and early records were evicted.
    world.run_until(lambda w: (w.status.current_step or 0) >= 45, step=timedelta(seconds=1))
    assert world.status.phase is Phase.PROGRESSING
    assert len(world.status.actions) == ACTION_LOG_LIMIT
    world.target.frozen = True
    world.advance(timedelta(seconds=1))
    world.reconcile()
    assert any(":stage:" in record.id for record in world.status.actions)
    blind = dataclasses.replace(world.observe(), target=None,
                                commands=(Command(id="c1", action=CommandAction.ABORT, actor="alice"),))
    decision = decide(world.parsed_spec, world.status, blind, world.now + timedelta(seconds=1))
    assert decision.status.phase is Phase.ROLLING_BACK
    rollback = decision.status.rollback
    assert rollback is not None and rollback.traffic_confirmed_at is None
    assert "TrafficRestored" not in [event.event for event in decision.events]
    assert any(action.type is ActionType.SET_CANARY_WEIGHT and getattr(action, "weight", None) == 0
               for action in decision.actions)


_WEBHOOK = 'admission webhook "validator.kserve" denied the request: canaryTrafficPercent is not allowed'


def _refusing_weight(world: World, weight: int, kind: AdapterErrorKind, message: str) -> list[bool]:
    """The target refuses the patch that sets `weight` while the returned switch is on (a webhook, RBAC)."""
    execute = world.execute
    refusing = [True]

    def refuse(action: Any) -> Any:
        if refusing[0] and isinstance(action, SetCanaryWeight) and action.weight == weight:
            world.executed.append(action)
            return None, None, ActionFailure(action.id, AdapterError(kind, message))
        return execute(action)

    world.execute = refuse  # type: ignore[method-assign]
    return refusing


def test_a_refused_weight_stays_visible_in_the_conditions_and_message_until_it_is_confirmed() -> None:
    world = World(spec=spec_dict(canary={"steps": [{"setWeight": 10}, {"pause": {}}]}, bake=None,
                                 progressDeadline="10m"))
    refusing = _refusing_weight(world, 10, AdapterErrorKind.INVALID, _WEBHOOK)
    world.run_until(lambda w: any(record.last_error for record in w.status.actions), step=timedelta(seconds=1))
    failed_at = world.status.condition("TargetReady")
    assert failed_at is not None and failed_at.reason == "TargetInvalid"
    # The write of the failure wakes the rollout at once: that decision sees no failure and a healthy target.
    for _ in range(2):
        world.advance(timedelta(milliseconds=500))  # within the backoff: nothing is sent again
        decision = world.reconcile()
        assert not decision.actions
        ready = world.status.condition("TargetReady")
        assert ready is not None and (ready.status, ready.reason) == (ConditionStatus.FALSE, "TargetInvalid")
        assert _WEBHOOK in ready.message and ready.last_transition_time == failed_at.last_transition_time
        assert f"(retry 1: 1:step-0:weight-10: {_WEBHOOK})" in world.status.message
    refusing[0] = False  # the webhook is fixed: the next send takes effect and is confirmed
    world.run_until(lambda w: w.status.phase is Phase.PAUSED, step=timedelta(seconds=5), limit=20)
    ready = world.status.condition("TargetReady")
    assert ready is not None and (ready.status, ready.reason) == (ConditionStatus.TRUE, "TargetReady")
    assert "retry" not in world.status.message


def test_a_weight_the_target_refuses_until_the_deadline_is_rolled_back_quoting_it_and_not_tagged_rejected() -> None:
    world = World(spec=spec_dict(canary={"steps": [{"setWeight": 10}, {"pause": {}}]}, bake=None,
                                 progressDeadline="10m"))
    _refusing_weight(world, 10, AdapterErrorKind.FORBIDDEN, "inferenceservices is forbidden: cannot patch")
    world.run_until(lambda w: w.status.phase is Phase.ROLLED_BACK, step=timedelta(seconds=30), limit=100)
    rollback = world.status.rollback
    assert rollback is not None and rollback.cause is RollbackCause.PROGRESS_DEADLINE_EXCEEDED
    assert rollback.reason.endswith("at step 1/2; last error: Forbidden: inferenceservices is forbidden: cannot patch")
    assert not rollback.reject_candidate  # the model was never judged: a cluster problem, not a bad model
    assert not any(isinstance(action, TagRejected) for action in world.executed)
    assert REJECTED_TAG not in world.registry.versions["7"]
    assert world.target.canary_weight == 0  # the traffic rollback itself is unchanged


def test_a_weight_that_never_takes_effect_without_an_error_still_rejects_the_candidate() -> None:
    world = World(spec=spec_dict(canary={"steps": [{"setWeight": 10}, {"pause": {}}]}, bake=None,
                                 progressDeadline="10m"))
    world.target.ignore_weights = True
    world.run_until(lambda w: w.status.phase is Phase.ROLLED_BACK, step=timedelta(seconds=30), limit=100)
    rollback = world.status.rollback
    assert rollback is not None and rollback.reject_candidate and "last error" not in rollback.reason
    assert REJECTED_TAG in world.registry.versions["7"]


def test_staging_the_target_refuses_until_the_deadline_fails_quoting_the_refusal() -> None:
    world = World(spec=spec_dict(progressDeadline="10m"))
    execute = world.execute

    def refuse_staging(action: Any) -> Any:
        if action.type is ActionType.STAGE_CANDIDATE:
            world.executed.append(action)
            return None, None, ActionFailure(action.id, AdapterError(AdapterErrorKind.INVALID, _WEBHOOK))
        return execute(action)

    world.execute = refuse_staging  # type: ignore[method-assign]
    world.run_until(lambda w: w.status.phase is Phase.FAILED, step=timedelta(seconds=30), limit=100)
    rollback = world.status.rollback
    assert rollback is not None and rollback.cause is RollbackCause.CANDIDATE_NOT_READY
    assert rollback.reason.endswith(f"within progressDeadline 10m; last error: Invalid: {_WEBHOOK}")


def test_one_early_refusal_then_accepted_sends_that_never_take_effect_still_rejects_the_candidate() -> None:
    # The refusal stopped happening: the later sends were accepted, so the model failed to take the weight, not the
    # cluster to accept it; the deadline neither blames the refusal nor spares the candidate its rejected tag.
    world = World(spec=spec_dict(canary={"steps": [{"setWeight": 10}, {"pause": {}}]}, bake=None,
                                 progressDeadline="10m"))
    refusing = _refusing_weight(world, 10, AdapterErrorKind.FORBIDDEN, "RBAC not propagated yet")
    world.run_until(lambda w: any(record.last_error for record in w.status.actions), step=timedelta(seconds=1))
    refusing[0] = False
    world.target.ignore_weights = True  # accepted from now on, never taking effect
    for _ in range(6):  # past the 2s backoff: sent again, and accepted
        world.advance(timedelta(seconds=5))
        world.reconcile()
    assert world.status.phase is Phase.PROGRESSING
    ready = world.status.condition("TargetReady")
    assert ready is not None and ready.status is ConditionStatus.TRUE  # the accepted send answered the refusal
    assert "retry" not in world.status.message
    world.run_until(lambda w: w.status.phase is Phase.ROLLED_BACK, step=timedelta(seconds=30), limit=100)
    sends = [action for action in world.executed if isinstance(action, SetCanaryWeight) and action.weight == 10]
    assert len(sends) > 2
    rollback = world.status.rollback
    assert rollback is not None and rollback.cause is RollbackCause.PROGRESS_DEADLINE_EXCEEDED
    assert rollback.reject_candidate and "error" not in rollback.reason
    assert rollback.reason.endswith("(observed 0%), at step 1/2")
    assert REJECTED_TAG in world.registry.versions["7"]


def test_a_refusal_that_goes_on_stays_false_through_each_resend_with_one_transition_time() -> None:
    # A resend's answer comes in the next decision: until then the previous refusal stands (no True in between).
    world = World(spec=spec_dict(canary={"steps": [{"setWeight": 10}, {"pause": {}}]}, bake=None,
                                 progressDeadline="10m"))
    _refusing_weight(world, 10, AdapterErrorKind.INVALID, _WEBHOOK)
    world.run_until(lambda w: any(record.last_error for record in w.status.actions), step=timedelta(seconds=1))
    failed_at = world.status.condition("TargetReady")
    assert failed_at is not None and failed_at.status is ConditionStatus.FALSE
    first = len(world.decisions)
    world.run_until(lambda w: w.status.phase is not Phase.PROGRESSING, step=timedelta(seconds=30), limit=100)
    resends = [decision for decision in world.decisions[first:] if decision.status.phase is Phase.PROGRESSING
               and any(isinstance(action, SetCanaryWeight) for action in decision.actions)]
    assert len(resends) > 2
    for decision in world.decisions[first:]:
        if decision.status.phase is not Phase.PROGRESSING:
            continue
        ready = decision.status.condition("TargetReady")
        assert ready is not None and (ready.status, ready.reason) == (ConditionStatus.FALSE, "TargetInvalid")
        assert ready.last_transition_time == failed_at.last_transition_time
        assert _WEBHOOK in decision.status.message
    rollback = world.status.rollback
    assert rollback is not None and rollback.reason.endswith(f"; last error: Invalid: {_WEBHOOK}")
    assert not rollback.reject_candidate


def test_promote_full_during_a_refused_weight_abandons_it_and_the_rollout_ends_target_ready() -> None:
    world = World(spec=spec_dict(canary={"steps": [{"setWeight": 10}, {"pause": {}}]}, bake=None,
                                 progressDeadline="10m"))
    refusing = _refusing_weight(world, 10, AdapterErrorKind.CONFLICT, "409 conflict: object was modified")
    world.run_until(lambda w: any(record.last_error for record in w.status.actions), step=timedelta(seconds=1))
    assert world.status.phase is Phase.PROGRESSING and world.status.current_step == 0
    refusing[0] = False
    first = len(world.decisions)
    world.send(CommandAction.PROMOTE, full=True)
    world.run_until(lambda w: w.status.phase is Phase.SUCCEEDED, step=timedelta(seconds=5), limit=50)
    for _ in range(2):
        world.advance(timedelta(hours=1))
        world.reconcile()
    record = next(record for record in world.status.actions if record.id == "1:step-0:weight-10")
    assert record.state is ActionState.ABANDONED
    ready = world.status.condition("TargetReady")
    assert ready is not None and (ready.status, ready.reason) == (ConditionStatus.TRUE, "TargetReady")
    assert all("retry" not in decision.status.message for decision in world.decisions[first:])


@pytest.mark.parametrize(("bake", "phase"), [(None, Phase.SUCCEEDED), ({"duration": "1h", "baseline": "7d"},
                                                                          Phase.BAKING)])
def test_a_failed_record_another_phase_left_pending_is_not_read_as_the_targets_state(
        bake: dict[str, str] | None, phase: Phase) -> None:
    # The backstop for a transition that leaves a record pending: only the current phase can confirm its own.
    world = World(spec=spec_dict(canary={"steps": [{"setWeight": 10}, {"pause": {}}]}, bake=bake))
    world.run_until(lambda w: w.status.phase is Phase.PAUSED, step=timedelta(seconds=5))
    world.send(CommandAction.PROMOTE, full=True)
    world.run_until(lambda w: w.status.phase is phase, step=timedelta(seconds=5), limit=50)
    left = ActionRecord(id="1:step-0:weight-10", type="SetCanaryWeight", state=ActionState.PENDING,
                        issued_at=world.now, updated_at=world.now, detail="weight 10%", sent_at=world.now,
                        attempts=2, last_error="Conflict: 409 conflict")
    world.status = dataclasses.replace(world.status, actions=(*world.status.actions, left))
    world.advance(timedelta(seconds=5))
    world.reconcile()
    assert world.status.phase is phase
    ready = world.status.condition("TargetReady")
    assert ready is not None and (ready.status, ready.reason) == (ConditionStatus.TRUE, "TargetReady")
    assert "retry" not in world.status.message


def test_a_refusal_stays_on_record_when_the_operator_dies_before_its_resend_goes_out() -> None:
    """The resend is written ahead, then the operator is killed before sending it, and restarts past the
    deadline: the refusal is still the latest answer, so it is quoted and the model is not tagged rejected."""
    world = World(spec=spec_dict(canary={"steps": [{"setWeight": 10}, {"pause": {}}]}, bake=None,
                                 progressDeadline="10m"))
    _refusing_weight(world, 10, AdapterErrorKind.FORBIDDEN, "RBAC: patch inferenceservices forbidden")
    world.run_until(lambda w: any(r.last_error for r in w.status.actions), step=timedelta(seconds=1))
    for _ in range(20):  # refused for a few minutes
        world.advance(timedelta(seconds=20))
        world.reconcile()
    record = next(r for r in world.status.actions if ":step-0:" in r.id)
    sends = record.attempts
    while next(r for r in world.status.actions if ":step-0:" in r.id).attempts == sends:
        world.advance(timedelta(seconds=5))
        world.crash_after = 1  # the status is written, then the operator dies before acting
        world.reconcile()
        if world.decisions[-1].actions:
            break
    assert [a.id for a in world.decisions[-1].actions] == [record.id]  # the resend was decided, never sent
    assert next(r for r in world.status.actions if r.id == record.id).last_error
    world.advance(timedelta(minutes=10))  # down past the deadline
    world.run_until(lambda w: w.status.phase is Phase.ROLLED_BACK, step=timedelta(seconds=5), limit=200)
    assert world.status.rollback is not None and not world.status.rollback.reject_candidate
    assert "last error: Forbidden" in world.status.rollback.reason
    assert REJECTED_TAG not in world.registry.versions["7"]
