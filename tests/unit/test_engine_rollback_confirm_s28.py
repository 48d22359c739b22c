"""A rollback before promotion is confirmed only when the target shows stable serving: a candidate promoted by hand
mid-canary (KServe: canaryTrafficPercent removed, or the candidate written into the predictor) shows no canary
weight at all, and that is no evidence that traffic went back."""

from __future__ import annotations

from datetime import timedelta

import pytest
from test_engine_support import World, spec_dict

from controller.api import CommandAction, Phase
from controller.engine import RestoreStable


def _mid_canary() -> World:
    world = World(spec=spec_dict(bake=None))
    world.run_until(lambda w: w.status.phase is Phase.PROGRESSING and w.status.current_step == 1)
    assert world.target.canary_version == "7" and world.target.canary_weight == 1
    return world


def _hand_promote(world: World) -> None:
    """What KServeRouter.observe() reports once the candidate was rolled out by hand: it serves as stable."""
    world.target.stable_version, world.target.canary_version, world.target.canary_weight = "7", None, None
    world.target.frozen = True  # the router's rollback has not put stable back yet


def events(world: World, since: int) -> list[str]:
    return [entry.event for entry in world.status.history[since:]]


def test_an_abort_is_not_confirmed_while_the_candidate_serves_as_stable() -> None:
    world = _mid_canary()
    _hand_promote(world)
    world.advance(timedelta(seconds=5))
    world.send(CommandAction.ABORT, command_id="abort-1")
    before, sent_before = len(world.status.history), len(world.executed)
    for _ in range(20):
        world.advance(timedelta(seconds=30))
        world.reconcile()
    assert world.status.phase is Phase.ROLLING_BACK
    assert world.status.rollback is not None and world.status.rollback.traffic_confirmed_at is None
    assert "TrafficRestored" not in events(world, before) and "Recovered" not in events(world, before)
    restores = [a for a in world.executed[sent_before:] if isinstance(a, RestoreStable)]
    assert len(restores) >= 2 and restores[0].stable.version == "6"  # sent, and again (backoff) while 7 serves
    ready = next(c for c in world.status.conditions if c.type == "Ready")
    assert "reports version 7 serving as stable" in ready.message and "restoring version 6" in ready.message
    # The router puts stable back: now, and only now, the rollback is confirmed.
    world.target.stable_version, world.target.frozen = "6", False
    world.run_until(lambda w: w.status.phase is Phase.ROLLED_BACK, step=timedelta(seconds=5))
    assert "TrafficRestored" in events(world, before) and "Recovered" in events(world, before)


@pytest.mark.parametrize("served", [None, "6", "5"])
def test_a_withdrawal_with_stable_serving_is_confirmed_as_before(served: str | None) -> None:
    """Unknown (KServe Standard after a first rollout's withdrawal) or another version that served before the
    rollout (a stable alias that names another version than the target runs): confirmed at 0%, as before."""
    world = _mid_canary()
    world.advance(timedelta(seconds=5))
    world.target.stable_version = served
    world.send(CommandAction.ABORT, command_id="abort-3")
    world.run_until(lambda w: w.status.phase is Phase.ROLLED_BACK, step=timedelta(seconds=5))
    assert world.target.canary_weight == 0


def test_a_bake_rollback_waits_for_the_previous_version_as_before() -> None:
    """After promotion (bake) the restore is confirmed only by stable's version, as it already was."""
    world = World()
    world.run_until(lambda w: w.status.phase is Phase.PAUSED)
    world.send(CommandAction.PROMOTE)
    world.run_until(lambda w: w.status.phase is Phase.BAKING)
    assert world.target.stable_version == "7"
    world.target.frozen = True
    world.send(CommandAction.ABORT, command_id="abort-4")
    before = len(world.status.history)
    for _ in range(10):
        world.advance(timedelta(seconds=30))
        world.reconcile()
    assert world.status.phase is Phase.ROLLING_BACK and "TrafficRestored" not in events(world, before)
    world.target.frozen = False
    world.run_until(lambda w: w.status.phase is Phase.ROLLED_BACK, step=timedelta(seconds=5))
    assert world.target.stable_version == "6"


def test_a_standard_hand_promotion_with_the_canary_left_is_restored_not_withdrawn() -> None:
    """KServe Standard: the candidate written into spec.predictor, the canary entry left at its weight. The router
    reports the candidate as stable beside its canary (review s28r2): the engine restores stable, and confirms only
    once stable serves (a withdrawal would drop the canary and leave the candidate serving all traffic)."""
    world = _mid_canary()
    world.target.stable_version, world.target.frozen = "7", True  # canary_version 7 at weight 1 is left
    world.advance(timedelta(seconds=5))
    world.send(CommandAction.ABORT, command_id="abort-s28b")
    before, sent_before = len(world.status.history), len(world.executed)
    for _ in range(5):
        world.advance(timedelta(seconds=30))
        world.reconcile()
    assert world.status.phase is Phase.ROLLING_BACK and "TrafficRestored" not in events(world, before)
    sent = [a for a in world.executed[sent_before:] if a.id.endswith((":rollback:restore", ":rollback:traffic"))]
    assert sent and all(isinstance(a, RestoreStable) and a.stable.version == "6" for a in sent), sent
    world.target.frozen = False
    world.run_until(lambda w: w.status.phase is Phase.ROLLED_BACK, step=timedelta(seconds=5))
    assert (world.target.stable_version, world.target.canary_weight) == ("6", None)
