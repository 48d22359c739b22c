"""A rollback stuck past progressDeadline on a target that may never heal (stable not ready) looks again less often
and resends at the backoff's pace, not every second and every 10 s for ever, and still ends once the target heals
(review s30r4 2)."""

from __future__ import annotations

from datetime import timedelta

from test_engine_support import Registry, World, spec_dict

from controller.api import CommandAction, Phase
from controller.engine import AdapterError, AdapterErrorKind, SetCanaryWeight


def test_a_stuck_rollback_slows_down_and_still_ends_when_the_target_heals() -> None:
    world = World(spec=spec_dict(canary={"steps": [{"setWeight": 10}, {"pause": {}}]}, bake=None,
                                 progressDeadline="10m"))
    world.run_until(lambda w: w.status.phase is Phase.PAUSED)
    world.target.ready = False
    world.send(CommandAction.ABORT, command_id="a")
    world.reconcile()
    early = world.reconcile().requeue_after
    assert early is not None and early <= timedelta(seconds=1)  # within its deadline: looked at every second
    world.advance(timedelta(hours=2))
    world.reconcile()
    sent, polls = len(world.executed), []
    end = world.now + timedelta(minutes=10)
    while world.now < end:
        decision = world.reconcile()
        polls.append(decision.requeue_after)
        world.advance(decision.requeue_after or timedelta(seconds=60))
    assert world.status.phase is Phase.ROLLING_BACK
    assert min(p for p in polls if p) == timedelta(seconds=30), polls
    withdrawals = [a for a in world.executed[sent:] if isinstance(a, SetCanaryWeight)]
    assert 1 <= len(withdrawals) <= 2, withdrawals  # every 5 minutes, not every 10 s
    world.target.ready = True
    world.run_until(lambda w: w.status.phase is Phase.ROLLED_BACK, step=timedelta(seconds=30), limit=4)


def test_recovered_says_what_the_target_reports_when_stable_is_not_seen_serving() -> None:
    """A withdrawal is confirmed at 0% also when the target does not report stable's version (session 28's rule);
    the Recovered entry then does not claim traffic is back on stable (review s30final: a third model kept by hand
    was said to be stable)."""
    for served, said in ((None, "does not report which version serves"), ("9", "reports version 9 serving")):
        world = World(spec=spec_dict(canary={"steps": [{"setWeight": 10}, {"pause": {}}]}, bake=None))
        world.run_until(lambda w: w.status.phase is Phase.PAUSED)
        world.target.stable_version = served
        world.send(CommandAction.ABORT, command_id="a")
        world.run_until(lambda w: w.status.phase is Phase.ROLLED_BACK, step=timedelta(seconds=5))
        (recovered,) = [h.detail for h in world.status.history if h.event == "Recovered"]
        assert recovered.startswith(f"the candidate off InferenceService nsfw-classifier (it {said}, not stable 6"), \
            recovered
        assert "traffic back on" not in recovered
    world = World(spec=spec_dict(canary={"steps": [{"setWeight": 10}, {"pause": {}}]}, bake=None))
    world.run_until(lambda w: w.status.phase is Phase.PAUSED)
    world.send(CommandAction.ABORT, command_id="a")
    world.run_until(lambda w: w.status.phase is Phase.ROLLED_BACK, step=timedelta(seconds=5))
    (recovered,) = [h.detail for h in world.status.history if h.event == "Recovered"]
    assert recovered.startswith("traffic back on stable 6"), recovered


def test_a_stuck_rollback_acts_at_the_usual_pace_once_the_target_is_ready_again() -> None:
    """Stuck 2 h on a stable that was not ready; the target heals as a sync puts the candidate back at 10%: the
    withdrawal goes out within the usual 10 s, not 5 minutes later (review s30r5 2)."""
    world = World(spec=spec_dict(canary={"steps": [{"setWeight": 10}, {"pause": {}}]}, bake=None,
                                 progressDeadline="10m"))
    world.run_until(lambda w: w.status.phase is Phase.PAUSED)
    world.target.ready = False
    world.send(CommandAction.ABORT, command_id="a")
    world.reconcile()
    world.advance(timedelta(hours=2))
    world.reconcile()
    world.target.ready, world.target.canary_weight = True, 10
    started = world.now
    while world.target.canary_weight:
        decision = world.reconcile()
        if not world.target.canary_weight:
            break
        world.advance(decision.requeue_after or timedelta(seconds=30))
    assert world.now - started <= timedelta(seconds=11), world.now - started


def test_recovered_of_a_first_rollout_or_an_unreadable_target_claims_no_stable() -> None:
    """No earlier version on record, or a target that could not be read: "traffic back on stable" is no fact."""
    world = World(registry=Registry(aliases={}))
    world.target.stable_version = "3"
    world.gate_error = AdapterError(AdapterErrorKind.UNAVAILABLE, "gate down")  # held in Gating, staged at 0%
    world.run_until(lambda w: w.status.phase is Phase.GATING)
    world.send(CommandAction.ABORT, command_id="a")
    world.run_until(lambda w: w.status.phase in (Phase.ROLLED_BACK, Phase.FAILED), step=timedelta(seconds=5))
    recovered = [h.detail for h in world.status.history if h.event == "Recovered"]
    assert recovered and "no earlier version on record" in recovered[0] and "traffic back on" not in recovered[0]
