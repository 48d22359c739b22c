"""A rollback that makes way for a new version takes the old candidate off the target first (the old candidate is at
0%: no user is on it). A target that refuses that unstage for good (the router answers Invalid: a graph it can no
longer tell its node in, a serving object edited into a shape it cannot drive) held the rollout in RollingBack for
ever, retrying at the backoff, with no progressDeadline (review s37r2). It now gives up as an untaken rejection tag
does: after progressDeadline of refusals in a row, the new attempt starts and a Warning says what was left staged."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from test_engine_superseded_leftover import in_canary, name_version, run, unstaged
from test_engine_support import World, spec_dict

from controller.api import Phase
from controller.engine import ActionFailure, AdapterError, AdapterErrorKind, TargetObservation, UnstageCandidate
from controller.operator.events import is_warning

_INVALID = "Seldon graph of iris: several model nodes, none recorded; set modelrollout.io/model-node"


def _refusing_unstage(world: World, kind: AdapterErrorKind, message: str, broken: list[bool]) -> None:
    execute = world.execute

    def refusing(action: Any) -> Any:
        if isinstance(action, UnstageCandidate) and broken[0]:
            world.executed.append(action)
            return None, None, ActionFailure(action.id, AdapterError(kind, message))
        return execute(action)

    world.execute = refusing  # type: ignore[method-assign]


def _superseded_mid_canary(kind: AdapterErrorKind, message: str, broken: list[bool], version: str = "8") -> World:
    world = World(spec=spec_dict(progressDeadline="30m"))
    world.run_until(in_canary)
    _refusing_unstage(world, kind, message, broken)
    world.executed.clear()
    name_version(world, version)
    return world


@pytest.mark.parametrize("kind", [AdapterErrorKind.INVALID, AdapterErrorKind.FORBIDDEN, AdapterErrorKind.ERROR])
def test_an_unstage_refused_for_good_gives_up_after_the_deadline_and_the_new_version_starts(
        kind: AdapterErrorKind) -> None:
    world = _superseded_mid_canary(kind, _INVALID, [True])
    started = world.now
    run(world, 50, timedelta(minutes=1))
    assert world.status.attempt == 2, f"still {world.status.phase}: {world.status.message}"
    assert world.status.candidate is not None and world.status.candidate.version == "8"
    given_up = next(entry for entry in world.status.history if entry.event == "CandidateNotUnstaged")
    assert is_warning("CandidateNotUnstaged")
    assert given_up.time - started >= timedelta(minutes=30)  # the deadline first: refusals may pass
    assert given_up.time - started <= timedelta(minutes=36)  # the next refusal seen past it (5-minute backoff)
    assert given_up.detail.startswith("candidate 7 could not be taken off ")
    assert "within progressDeadline 30m" in given_up.detail and "several model nodes" in given_up.detail
    assert "clear it by hand" in given_up.detail
    assert len(set(unstaged(world))) == 1 and len(unstaged(world)) > 1  # one id, tried again until the deadline
    sent = len(unstaged(world))
    run(world, 30, timedelta(minutes=1))
    assert len(unstaged(world)) == sent  # and it stopped


def test_a_superseded_rollout_whose_unstage_is_refused_ends_when_the_stable_version_is_named() -> None:
    world = _superseded_mid_canary(AdapterErrorKind.INVALID, _INVALID, [True], version="6")
    run(world, 50, timedelta(minutes=1))
    assert world.status.phase is Phase.SUCCEEDED, world.status.message
    assert "CandidateNotUnstaged" in [entry.event for entry in world.status.history]


def test_an_unstage_refused_for_a_while_is_still_carried_out_and_nothing_is_given_up() -> None:
    broken = [True]
    world = _superseded_mid_canary(AdapterErrorKind.INVALID, _INVALID, broken)
    run(world, 20, timedelta(minutes=1))  # 20 minutes of refusals: within the 30-minute deadline
    assert world.status.phase is Phase.ROLLING_BACK and world.status.attempt == 1
    broken[0] = False
    run(world, 20, timedelta(minutes=1))
    assert world.status.attempt == 2 and world.target.canary_version == "8"
    assert "CandidateNotUnstaged" not in [entry.event for entry in world.status.history]


def test_an_unreachable_target_is_waited_for_however_long_it_takes() -> None:
    world = _superseded_mid_canary(AdapterErrorKind.UNAVAILABLE, "connection refused", [True])
    run(world, 90, timedelta(minutes=1))
    assert world.status.phase is Phase.ROLLING_BACK and world.status.attempt == 1
    assert "CandidateNotUnstaged" not in [entry.event for entry in world.status.history]


@pytest.mark.parametrize("readable", [True, False])
def test_no_give_up_while_the_target_shows_users_on_a_canary_or_cannot_be_read(readable: bool) -> None:
    """Traffic put back on the old candidate after its withdrawal was confirmed (an Argo CD sync, the hand edit that
    makes the router refuse), or a target the router cannot read: "no user is on it" is not known (review s39engine)."""
    world = _superseded_mid_canary(AdapterErrorKind.INVALID, _INVALID, [True], version="6")
    run(world, 2, timedelta(minutes=1))
    assert world.status.rollback is not None and world.status.rollback.traffic_confirmed_at is not None
    world.target.canary_version, world.target.canary_weight = "7", 20
    if not readable:
        world.target.observe = lambda _now: TargetObservation(  # type: ignore[method-assign]
            error=AdapterError(AdapterErrorKind.INVALID, _INVALID))
    run(world, 60, timedelta(minutes=1))
    assert world.status.phase is Phase.ROLLING_BACK and world.status.attempt == 1
    assert "CandidateNotUnstaged" not in [entry.event for entry in world.status.history]
    assert "taking version 7 off" in world.status.message
