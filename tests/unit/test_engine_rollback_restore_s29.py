"""Review s29seldonv1: a rollback's restore after a hand promotion is confirmed only by the restored stable serving
(Seldon Core v1 reads stable as no version while the restored version's new Deployments start); a candidate still
carrying traffic under another name is not "never staged"; a promotion Seldon is still rolling out is said so."""

from __future__ import annotations

from datetime import timedelta

from test_engine import events, finished
from test_engine_support import World, promotion_sent_to_a_frozen_target, spec_dict

from controller.api import CommandAction, Phase
from controller.engine import ActionType, RestoreStable, UnstageCandidate


def _mid_canary() -> World:
    world = World(spec=spec_dict(bake=None))
    world.run_until(lambda w: w.status.phase is Phase.PROGRESSING and w.status.current_step == 1)
    assert world.target.canary_version == "7" and world.target.canary_weight == 1
    return world


def _reconcile(world: World, times: int) -> None:
    for _ in range(times):
        world.advance(timedelta(seconds=30))
        world.reconcile()


def test_a_restore_after_a_hand_promotion_waits_for_stable_while_it_rolls_out() -> None:
    world = _mid_canary()
    # SeldonDeploymentRouter.observe() once main's graph loads the candidate's modelUri: 7 serves as stable.
    world.target.stable_version, world.target.canary_version, world.target.canary_weight = "7", None, None
    world.target.frozen = True
    world.advance(timedelta(seconds=5))
    world.send(CommandAction.ABORT, command_id="abort-s29")
    before, sent_before = len(world.status.history), len(world.executed)
    _reconcile(world, 2)
    restores = [a for a in world.executed[sent_before:] if isinstance(a, RestoreStable)]
    assert restores and restores[0].stable.version == "6"
    # The restore was written: Seldon makes version 6's Deployments, and until they are available stable reads as no
    # version and the object as not ready (the candidate's pods still answer). No canary either.
    world.target.stable_version, world.target.ready = None, False
    _reconcile(world, 10)
    assert world.status.phase is Phase.ROLLING_BACK, events(world)[before:]
    assert "TrafficRestored" not in events(world)[before:] and "Recovered" not in events(world)[before:]
    assert "restoring version 6" in world.status.message
    assert not [a for a in world.executed[sent_before:] if a.type is ActionType.SET_CANARY_WEIGHT]
    world.target.stable_version, world.target.ready, world.target.frozen = "6", True, False
    world.run_until(finished, step=timedelta(seconds=5))
    assert world.status.phase is Phase.ROLLED_BACK
    restored = [e.detail for e in world.status.history[before:] if e.event == "TrafficRestored"]
    assert restored == [f"version 6 to 100% observed on {world.parsed_spec.target.description}"]


def test_an_unstage_is_not_confirmed_while_the_candidate_keeps_traffic_under_another_name() -> None:
    """The candidate deleted from the registry, then `promote`: CANDIDATE_NOT_READY unstages it. A target that
    reports the candidate's share but no canary version (a renamed canary) is not one it was never staged on."""
    world = World()
    world.run_until(lambda w: w.status.phase is Phase.PAUSED)
    world.target.canary_version = None  # renamed: the share stays, the version is not ascribed
    world.target.frozen = True
    del world.registry.versions["7"]
    world.send(CommandAction.PROMOTE)
    before, sent_before = len(world.status.history), len(world.executed)
    _reconcile(world, 6)
    assert world.status.phase is Phase.ROLLING_BACK, events(world)[before:]
    assert "TrafficRestored" not in events(world)[before:]
    assert [a for a in world.executed[sent_before:] if isinstance(a, UnstageCandidate)]
    world.target.frozen = False
    world.run_until(finished)
    assert world.status.phase is Phase.FAILED and world.target.canary_weight is None
    restored = [e.detail for e in world.status.history[before:] if e.event == "TrafficRestored"]
    assert restored and "never staged" not in restored[0]


def test_a_promotion_still_rolling_out_is_not_called_no_longer_staged() -> None:
    world = promotion_sent_to_a_frozen_target()
    # Seldon took the promotion: the canary predictor is gone, stable's new Deployments are not available yet.
    world.target.stable_version, world.target.canary_version, world.target.canary_weight = None, None, None
    world.target.ready = False
    _reconcile(world, 2)
    message = world.status.message
    assert world.status.phase is Phase.PROMOTING
    # Not a hold (review s29r7: the CLI coloured it like Paused and gave it a deadline as if a human were needed).
    assert message.startswith("Promoting candidate 7:") and "no longer staged" not in message
    assert "still rolling out the promoted version 7" in message
    world.target.stable_version, world.target.ready, world.target.frozen = "7", True, False
    world.run_until(lambda w: w.status.phase is not Phase.PROMOTING)
    assert "Promoted" in events(world)
