"""A rollback's withdrawal (review s30seldonv2), through the engine:

- the candidate seen staged, then gone from the target some other way (an Argo CD sync put the manifest back) before
  an abort: the withdrawal is sent once all the same, so the router drops its record of the candidate (Seldon v2's
  candidate-model annotation; else a later model of that name reads as this rollout's canary and the next stage
  drops it). Resent after an operator restart, retried after a failure that may pass, not after a refusal;
- a withdrawal is confirmed only once the target reports ready (stable serving), as a restore is: stable's Model
  deleted, then abort, stays RollingBack (ProgressDeadlineExceeded at the deadline), never "Recovered"."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta

from test_engine_support import Target, World, spec_dict, verdict

from controller.api import CommandAction, Phase
from controller.engine import (
    Action,
    ActionFailure,
    AdapterError,
    AdapterErrorKind,
    JudgeResult,
    SetCanaryWeight,
    StageCandidate,
    TargetObservation,
)
from controller.verdict import Outcome


def _paused_at(world: World, weight: int) -> None:
    world.run_until(lambda w: w.status.phase is Phase.PAUSED and w.status.canary_weight == weight)
    assert world.target.canary_version == "7"


def _steps() -> dict:
    return spec_dict(canary={"steps": [{"setWeight": 10}, {"pause": {}}, {"setWeight": 50}]}, bake=None,
                     progressDeadline="10m")


def _synced_away(world: World) -> None:
    """Argo CD self-heal: the Experiment back to {stable: 100}; the router's read shows no candidate at all."""
    world.target.canary_version, world.target.canary_weight = None, None


def withdrawals(world: World, since: int = 0) -> list[SetCanaryWeight]:
    return [a for a in world.executed[since:] if isinstance(a, SetCanaryWeight) and a.withdraw]


def events(world: World, since: int = 0) -> list[str]:
    return [entry.event for entry in world.status.history[since:]]


def test_a_candidate_synced_away_before_the_abort_is_withdrawn_once_all_the_same() -> None:
    world = World(spec=_steps())
    _paused_at(world, 10)
    _synced_away(world)
    world.advance(timedelta(seconds=5))
    world.reconcile()
    sent = len(world.executed)
    world.send(CommandAction.ABORT, command_id="abort-1")
    world.run_until(lambda w: w.status.phase is Phase.ROLLED_BACK, step=timedelta(seconds=5))
    assert len(withdrawals(world, sent)) == 1  # the router's rollback runs: its record of the candidate goes
    assert "TrafficRestored" in events(world) and "Recovered" in events(world)
    for _ in range(5):  # ended: nothing more is sent
        world.advance(timedelta(minutes=2))
        world.reconcile()
    assert len(withdrawals(world, sent)) == 1


def test_the_withdrawal_is_sent_again_after_a_restart_before_it_was_carried_out() -> None:
    world = World(spec=_steps())
    _paused_at(world, 10)
    _synced_away(world)
    sent = len(world.executed)
    world.send(CommandAction.ABORT, command_id="abort-2")
    world.crash_after = 1  # the status naming the withdrawal is written, the operator dies before acting
    world.reconcile()
    assert withdrawals(world, sent) == [] and world.status.phase is Phase.ROLLING_BACK
    world.advance(timedelta(seconds=5))
    world.run_until(lambda w: w.status.phase is Phase.ROLLED_BACK, step=timedelta(seconds=5))
    assert len(withdrawals(world, sent)) == 1


class _FailingWorld(World):
    """The router's rollback answered with `errors` (one per send, in order), then carried out."""

    errors: list[AdapterErrorKind]

    def execute(self, action: Action) -> tuple[JudgeResult | None, JudgeResult | None, ActionFailure | None]:
        if isinstance(action, SetCanaryWeight) and action.withdraw and self.errors:
            self.executed.append(action)
            return None, None, ActionFailure(action.id, AdapterError(self.errors.pop(0), "no"))
        return super().execute(action)


def test_a_withdrawal_that_failed_for_a_passing_reason_is_retried_a_refused_one_is_not() -> None:
    for errors, expected in (([AdapterErrorKind.UNAVAILABLE, AdapterErrorKind.CONFLICT], 3),
                             ([AdapterErrorKind.INVALID], 1)):
        world = _FailingWorld(spec=_steps())
        world.errors = list(errors)
        _paused_at(world, 10)
        _synced_away(world)
        sent = len(world.executed)
        world.send(CommandAction.ABORT, command_id="abort-3")
        world.run_until(lambda w: w.status.phase is Phase.ROLLED_BACK, step=timedelta(seconds=20))
        assert len(withdrawals(world, sent)) == expected, errors


def test_a_withdrawal_sent_while_the_canary_had_weight_is_not_sent_again_once_gone() -> None:
    world = World(spec=_steps())
    _paused_at(world, 10)
    world.target.frozen = True  # the write is accepted, the serving system has not moved yet
    sent = len(world.executed)
    world.send(CommandAction.ABORT, command_id="abort-4")
    world.reconcile()
    assert len(withdrawals(world, sent)) == 1 and world.status.phase is Phase.ROLLING_BACK
    world.target.frozen = False
    _synced_away(world)
    world.advance(timedelta(seconds=5))
    world.run_until(lambda w: w.status.phase is Phase.ROLLED_BACK, step=timedelta(seconds=5))
    assert len(withdrawals(world, sent)) == 1


def test_a_withdrawal_is_not_recovered_while_the_target_says_stable_is_not_ready() -> None:
    world = World(spec=_steps())
    _paused_at(world, 10)
    world.target.ready = False  # stable's Model deleted: the Experiment is not ready, the mesh answers 404
    world.send(CommandAction.ABORT, command_id="abort-5")
    before = len(world.status.history)
    for _ in range(15):
        world.advance(timedelta(minutes=1))
        world.reconcile()
    assert world.target.canary_weight == 0  # the withdrawal went out
    assert world.status.phase is Phase.ROLLING_BACK
    assert "TrafficRestored" not in events(world, before) and "Recovered" not in events(world, before)
    assert "does not report stable version 6 serving and ready yet" in world.status.message
    progressing = world.status.condition("Progressing")
    assert progressing is not None and progressing.reason == "ProgressDeadlineExceeded"
    world.target.ready = True  # stable's Model back
    world.run_until(lambda w: w.status.phase is Phase.ROLLED_BACK, step=timedelta(seconds=5))
    assert "Recovered" in events(world, before)


class _CandidateKeepsItNotReady(World):
    """Seldon's Ready (CandidatesReady over every candidate) False while the candidate's Model is among the
    candidates, even at weight 0; the router's rollback removes it."""

    def execute(self, action: Action) -> tuple[JudgeResult | None, JudgeResult | None, ActionFailure | None]:
        answer = super().execute(action)
        if isinstance(action, StageCandidate):
            self.target.ready = False
        elif isinstance(action, SetCanaryWeight) and action.withdraw:
            self.target.ready, self.target.canary_version, self.target.canary_weight = True, None, None
        return answer


def test_a_gate_failure_with_the_staged_candidate_keeping_the_target_not_ready_withdraws_it() -> None:
    world = _CandidateKeepsItNotReady(spec=_steps(), gate_verdicts=[
        verdict(Outcome.FAIL, "nsfw-recall", "0.91 below minRecall 0.95")])
    world.run_until(lambda w: w.status.phase is Phase.ROLLED_BACK, step=timedelta(seconds=5))
    assert len(withdrawals(world)) == 1 and world.target.ready and world.target.canary_version is None
    assert "Recovered" in events(world)


@dataclasses.dataclass
class _SaysTarget(Target):
    """A target whose router has something to say while ready (Seldon v2: a Model it does not manage weighted)."""

    says: str = ""

    def observe(self, now: datetime) -> TargetObservation:
        seen = super().observe(now)
        return dataclasses.replace(seen, detail=self.says) if seen.error is None and self.says else seen


def test_a_foreign_model_left_weighted_after_the_rollback_is_said_in_target_ready_and_traffic_restored() -> None:
    """The candidate renamed by hand on Seldon v2 (Experiment {v1:90, v2-b:10}): the router cannot tell it is the
    candidate, so the rollback ends, but never in silence."""
    said = "models ModelRollout does not manage carry weight: nsfw-classifier-v7-b"
    world = World(spec=_steps(), target=_SaysTarget())
    _paused_at(world, 10)
    _synced_away(world)
    assert isinstance(world.target, _SaysTarget)
    world.target.says = said
    world.send(CommandAction.ABORT, command_id="abort-6")
    world.run_until(lambda w: w.status.phase is Phase.ROLLED_BACK, step=timedelta(seconds=5))
    ready = world.status.condition("TargetReady")
    assert ready is not None and str(ready.status) == "True" and said in ready.message, ready
    restored = [entry.detail for entry in world.status.history if entry.event == "TrafficRestored"]
    assert len(restored) == 1 and restored[0].endswith(f"; the target says: {said}"), restored
