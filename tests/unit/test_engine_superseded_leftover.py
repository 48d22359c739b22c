"""A rollback that makes way for a new version takes the old candidate off the target before the new attempt starts:
the new attempt forgets it, and one that stages nothing (the version named is already @stable) would otherwise end
Succeeded with the old candidate staged at 0% for good. A re-gate of the same candidate (DatasetChanged) keeps it."""

from __future__ import annotations

import copy
import dataclasses
from datetime import timedelta
from typing import Any

import pytest
from test_engine_support import World, spec_dict, verdict
from test_kserve_unpin import Kserve
from test_runtime_actions import runtime_with

from controller.api import ConditionStatus, ConditionType, Phase, RollbackCause
from controller.engine import (
    REJECTED_TAG,
    ActionFailure,
    ActionType,
    AdapterError,
    AdapterErrorKind,
    Observations,
    PromoteCandidate,
    RestoreStable,
    SetCanaryWeight,
    StageCandidate,
    UnstageCandidate,
)
from controller.traffic.base import TrafficError
from controller.verdict import Outcome

NEW_SHA = "9a1e" + "0" * 60


def events(world: World) -> list[str]:
    return [entry.event for entry in world.status.history]


def effect_ids(world: World) -> list[str]:
    return [action.id for action in world.executed if action.type not in (ActionType.RUN_ANALYSIS, ActionType.RUN_GATE)]


def unstaged(world: World) -> list[str]:
    return [action.id for action in world.executed if isinstance(action, UnstageCandidate)]


def name_version(world: World, version: str) -> None:
    world.spec = {**world.spec, "model": {**world.spec["model"], "version": version}}
    world.generation += 1


def in_canary(world: World) -> bool:
    return world.status.phase is Phase.PROGRESSING and (world.status.canary_weight or 0) > 0


def run(world: World, reconciles: int, step: timedelta = timedelta(seconds=30)) -> None:
    for _ in range(reconciles):
        world.advance(step)
        world.reconcile()


def test_the_stable_version_named_while_the_candidate_is_staging_takes_the_staged_candidate_off() -> None:
    world = World()
    world.target.ready_delay = timedelta(minutes=5)  # a big model: its pods take minutes
    world.reconcile()
    run(world, 1)
    assert world.status.phase is Phase.PENDING and world.target.canary_version == "7"
    name_version(world, "6")  # back to the version in production
    run(world, 20, timedelta(minutes=1))
    assert world.status.phase is Phase.SUCCEEDED and world.status.candidate is not None
    assert world.status.candidate.version == "6"
    assert world.target.canary_version is None and not world.target.canary_weight
    assert unstaged(world) == ["1:rollback:unstage"]
    assert world.status.rollback is None and world.status.attempt == 2
    assert REJECTED_TAG not in world.registry.versions["7"]  # superseded, never judged
    assert events(world)[-6:] == ["RollbackStarted", "TrafficRestored", "Recovered", "RolledBackForNewCandidate",
                                  "AlreadyStable", "Succeeded"]


def test_the_stable_version_named_mid_canary_takes_the_old_canary_off_before_ending_succeeded() -> None:
    world = World()
    world.run_until(in_canary)
    assert world.target.canary_version == "7" and world.target.canary_weight == 1
    world.executed.clear()
    name_version(world, "6")
    run(world, 10)
    assert world.status.phase is Phase.SUCCEEDED and world.status.message == \
        "Version 6 serves all traffic as @production."
    assert world.target.canary_version is None and not world.target.canary_weight
    # Traffic first (the withdrawal confirms at 0%), then the candidate off, once each.
    assert effect_ids(world) == ["1:rollback:traffic", "1:rollback:unstage"]
    assert {"RolledBackForNewCandidate", "AlreadyStable"} <= set(events(world))


def test_the_stable_version_named_mid_canary_ends_with_conditions_of_the_attempt_that_ended() -> None:
    """Not the restart's "Starting over: superseded by version 6" on a rollout that has ended."""
    world = World()
    world.run_until(in_canary)
    name_version(world, "6")
    run(world, 10)
    assert world.status.phase is Phase.SUCCEEDED
    said = [world.status.condition(name) for name in (ConditionType.GATE_PASSED, ConditionType.ANALYSIS_HEALTHY)]
    assert [(c.status, c.reason, c.message) for c in said if c is not None] == [
        (ConditionStatus.UNKNOWN, "GateNotRun", "The golden gate did not run in this attempt."),
        (ConditionStatus.UNKNOWN, "AnalysisNotRun", "No analysis ran in this attempt.")]


def test_a_new_version_mid_canary_is_staged_only_once_the_old_one_is_off() -> None:
    world = World()
    world.run_until(in_canary)
    world.executed.clear()
    name_version(world, "8")
    world.reconcile()
    assert world.target.canary_version == "8" and world.status.attempt == 2
    assert effect_ids(world)[:3] == ["1:rollback:traffic", "1:rollback:unstage", "2:stage:8"]


def test_a_new_version_before_staging_was_asked_for_starts_over_without_a_rollback() -> None:
    world = World()
    world.target.ready = False  # staging waits for the target: nothing asked of it yet
    world.reconcile()
    assert world.status.phase is Phase.PENDING and world.status.candidate is not None
    name_version(world, "8")
    world.target.ready = True
    run(world, 1)
    assert "RollbackStarted" not in events(world) and unstaged(world) == []
    assert world.status.candidate is not None and world.status.candidate.version == "8"
    assert world.target.canary_version == "8"


def test_a_failed_canary_superseded_by_the_stable_version_while_rolling_back_is_rejected_and_taken_off() -> None:
    world = World(spec=spec_dict(bake=None))
    world.run_until(in_canary)
    world.registry.down = True  # the rollback waits for the registry: still under way when the spec changes
    world.judge = lambda _request: [verdict(Outcome.FAIL)]
    run(world, 3)
    assert world.status.phase is Phase.ROLLING_BACK and world.status.rollback is not None
    assert world.status.rollback.cause is RollbackCause.ANALYSIS_FAILED
    name_version(world, "6")
    run(world, 1)
    assert world.status.rollback is not None and world.status.rollback.restart
    world.registry.down = False
    run(world, 10)
    assert world.status.phase is Phase.SUCCEEDED and world.status.candidate is not None
    assert world.status.candidate.version == "6"
    assert world.registry.versions["7"].get(REJECTED_TAG) == "true"  # judged: still rejected
    assert world.target.canary_version is None
    assert unstaged(world) == ["1:rollback:unstage"]


def test_a_refused_unstage_is_retried_under_the_same_id() -> None:
    world = World()
    world.run_until(in_canary)
    world.conflict_ids = {"1:rollback:unstage"}  # answered 409 once
    world.executed.clear()
    name_version(world, "6")
    run(world, 10)
    assert world.status.phase is Phase.SUCCEEDED and world.target.canary_version is None
    assert unstaged(world) == ["1:rollback:unstage", "1:rollback:unstage"]


@pytest.mark.parametrize("crash_after", [1, 2, 3])
@pytest.mark.parametrize("crash_at", [0, 1, 2])
def test_an_operator_killed_while_taking_the_old_candidate_off_ends_the_same(crash_after: int, crash_at: int) -> None:
    world = World()
    world.run_until(in_canary)
    world.executed.clear()
    name_version(world, "6")
    for count in range(10):
        world.advance(timedelta(seconds=5))
        if count == crash_at:
            world.crash_after = crash_after
        world.reconcile()
    assert world.status.phase is Phase.SUCCEEDED and world.target.canary_version is None
    assert set(unstaged(world)) == {"1:rollback:unstage"}  # one id, whatever was resent after the kill
    assert world.status.attempt == 2


def test_a_dataset_re_pinned_mid_canary_keeps_the_candidate_staged_for_its_new_gate() -> None:
    world = World()
    world.run_until(in_canary)
    world.executed.clear()
    world.spec = {**world.spec, "goldenDataset": {**world.spec["goldenDataset"], "sha256": NEW_SHA}}
    world.generation += 1
    world.reconcile()
    assert world.status.attempt == 2 and world.status.gate is not None
    assert world.status.gate.dataset_sha256 == NEW_SHA
    assert {"RolledBackToGateAgain"} <= set(events(world)) and "RolledBackForNewCandidate" not in events(world)
    # Withdrawn from traffic, but neither unstaged nor staged again: the new attempt found it ready at 0%.
    assert unstaged(world) == []
    assert not any(isinstance(action, StageCandidate) for action in world.executed)
    assert world.target.canary_version == "7"
    assert effect_ids(world)[0] == "1:rollback:traffic"


# --- KServe Knative: the engine over the real router and the in-memory KServe of test_kserve_unpin --------------


class KnativeWorld(World):
    """The target is a KServeRouter in Knative mode, observed and acted on through RolloutRuntime as the operator
    does (observe_target, act); registry and judges stay the World's."""

    def __init__(self, kserve: Kserve | None = None) -> None:
        super().__init__()
        self.kserve = kserve or Kserve()
        self.runtime = runtime_with(self.kserve.router())

    def observe(self, *args: Any, **kwargs: Any) -> Observations:
        target, _ = self.runtime.observe_target()
        return dataclasses.replace(super().observe(*args, **kwargs), target=target)

    def execute(self, action: Any) -> Any:
        if not isinstance(action, (StageCandidate, SetCanaryWeight, PromoteCandidate, RestoreStable,
                                   UnstageCandidate)):
            return super().execute(action)
        self.executed.append(action)
        try:
            self.runtime.act(action, self.status)
        except TrafficError as exc:
            return None, None, ActionFailure(action.id, AdapterError(AdapterErrorKind.ERROR, str(exc)))
        return None, None, None


class LaggingKserve(Kserve):
    """kserve#6081: KServe has processed the staging write (observedGeneration caught up) while Knative has not
    made the candidate's revision yet, so the status still names stable alone for a few reads."""

    def __init__(self) -> None:
        super().__init__()
        self.frozen: dict[str, Any] | None = None
        self.lagging_reads = 0

    def get(self) -> dict[str, Any]:
        if self.lagging_reads > 0 and self.frozen is not None:
            self.lagging_reads -= 1
            generation = self.obj["metadata"]["generation"]
            self.obj["status"] = {**copy.deepcopy(self.frozen), "observedGeneration": generation}
            return copy.deepcopy(self.obj)
        return super().get()

    def apply(self, body: dict[str, Any], force: bool = True) -> Any:
        if self.frozen is None and body["spec"]["predictor"]["model"]["storageUri"] != "s3://m/6":
            self.frozen = copy.deepcopy(super().get()["status"])  # the status before the staging write
            self.lagging_reads = 6
        return super().apply(body, force)


def back_to_stable(world: KnativeWorld) -> None:
    world.spec = {**world.spec, "model": {**world.spec["model"], "version": "6"}}
    world.generation += 1


def assert_nothing_left(world: KnativeWorld) -> None:
    predictor = world.kserve.obj["spec"]["predictor"]
    assert world.status.phase is Phase.SUCCEEDED and "AlreadyStable" in [h.event for h in world.status.history]
    assert predictor["model"]["storageUri"] == "s3://m/6" and "canaryTrafficPercent" not in predictor, predictor
    assert world.runtime.router.observe().pinned is False


def test_knative_the_pin_a_withdrawal_leaves_comes_off_before_the_new_attempt() -> None:
    """Knative's rollback pins canaryTrafficPercent 0 on its copy of stable and removes it only once that copy is
    ready, through the router: the old candidate is off the target only then, or every later change to the
    predictor would be held at 0% for good behind a Succeeded rollout."""
    world = KnativeWorld()
    world.kserve.slow.add("m-predictor-00002")  # the candidate's revision: a big model, pods take minutes
    world.reconcile()
    world.advance(timedelta(seconds=30))
    world.reconcile()
    back_to_stable(world)
    for _ in range(20):
        world.advance(timedelta(seconds=30))
        world.reconcile()
    world.kserve.slow.clear()
    for _ in range(20):
        world.advance(timedelta(seconds=30))
        world.reconcile()
    assert_nothing_left(world)


def test_knative_a_staging_the_status_does_not_show_yet_is_still_taken_off() -> None:
    """In the kserve#6081 window the target shows no canary although the spec names the candidate: the unstage is
    sent once at least, never confirmed on that observation alone."""
    kserve = LaggingKserve()
    kserve.slow.add("m-predictor-00002")
    world = KnativeWorld(kserve)
    world.reconcile()
    assert world.runtime.router.observe().canary_version is None  # the lag: staged, not shown
    back_to_stable(world)
    world.advance(timedelta(seconds=2))
    world.reconcile()
    kserve.lagging_reads = 0
    kserve.slow.clear()
    for _ in range(10):
        world.advance(timedelta(seconds=30))
        world.reconcile()
    assert "1:rollback:unstage" in [action.id for action in world.executed]
    assert_nothing_left(world)


@pytest.mark.parametrize("killed", [False, True])
def test_an_unstage_written_ahead_but_killed_before_it_was_sent_is_sent_after_the_restart(killed: bool) -> None:
    """KServe took the staging of 7 but Knative has not made its revision (the target shows no canary), and the
    operator is killed between the unstage's write-ahead and the router call. The restarted operator must send it:
    the revision lands later, and with the version named already stable nothing else would take it off."""
    world = World()
    world.target.frozen = True  # the staging is taken, but the target does not show it yet
    world.reconcile()
    world.advance(timedelta(seconds=5))
    name_version(world, "6")
    if killed:
        world.crash_after = 1  # the write-ahead is stored, then the operator dies before acting
    world.reconcile()
    if killed:
        record = next(record for record in world.status.actions if record.id == "1:rollback:unstage")
        assert record.sent_at is not None and unstaged(world) == []
    world.target.frozen = False
    world.advance(timedelta(seconds=1))
    world.reconcile()  # the restarted operator's first decision: the revision is still not made
    if not unstaged(world):
        # nothing took 7 out of the spec: its revision now shows, at 0%
        world.target.canary_version, world.target.canary_weight, world.target.canary_ready_at = "7", 0, world.now
    run(world, 20)
    assert unstaged(world) == ["1:rollback:unstage"]
    assert world.status.phase is Phase.SUCCEEDED
    assert world.target.canary_version is None and not world.target.canary_weight
