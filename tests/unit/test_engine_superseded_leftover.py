"""A rollback that makes way for a new version takes the old candidate off the target before the new attempt starts:
the new attempt forgets it, and one that stages nothing (the version named is already @stable) would otherwise end
Succeeded with the old candidate staged at 0% for good. A re-gate of the same candidate (DatasetChanged) keeps it."""

from __future__ import annotations

from datetime import timedelta

import pytest
from test_engine_support import World, spec_dict, verdict

from controller.api import Phase, RollbackCause
from controller.engine import REJECTED_TAG, ActionType, StageCandidate, UnstageCandidate
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
