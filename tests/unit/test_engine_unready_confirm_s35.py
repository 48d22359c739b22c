"""A rollback's unstage (the candidate gone from the registry) is confirmed only once the target reports itself ready,
as its withdrawal already was (review s35r1): Seldon Core v2 refusing the experiment written keeps serving the split it
last started, with the refused spec's weights in the object. A traffic step still is confirmed on a target whose
stable is not ready (review s35r2): its weight took effect, and holding it failed the candidate at the deadline."""

from __future__ import annotations

from test_engine import events, finished
from test_engine_rollback_restore_s29 import _reconcile
from test_engine_support import World, spec_dict

from controller.api import CommandAction, Phase
from controller.engine import UnstageCandidate

REFUSED = "Seldon refuses the experiment as written (nsfw is named twice among its candidates and mirror)"


def test_an_unstage_the_target_reads_but_does_not_report_ready_is_not_confirmed() -> None:
    world = World()
    world.run_until(lambda w: w.status.phase is Phase.PAUSED)
    world.target.frozen = True  # what users get stays as it was
    del world.registry.versions["7"]
    world.send(CommandAction.PROMOTE)  # the candidate is gone: CandidateNotReady, the candidate unstaged
    before, sent_before = len(world.status.history), len(world.executed)
    world.reconcile()
    assert [a for a in world.executed[sent_before:] if isinstance(a, UnstageCandidate)]
    # The unstage was written and Seldon refused it: the spec shows no candidate, the target is not ready.
    world.target.canary_version, world.target.canary_weight, world.target.ready = None, None, False
    world.target.detail = REFUSED
    _reconcile(world, 6)
    assert world.status.phase is Phase.ROLLING_BACK, events(world)[before:]
    assert "TrafficRestored" not in events(world)[before:] and "Recovered" not in events(world)[before:]
    assert "does not report the candidate off and stable serving yet" in world.status.message
    assert REFUSED in world.status.message
    world.target.ready, world.target.detail, world.target.frozen = True, "", False  # the hand edit undone
    world.run_until(finished)
    assert world.status.phase is Phase.FAILED
    assert "TrafficRestored" in events(world)[before:]


def test_a_traffic_step_that_took_effect_is_confirmed_though_stable_is_not_ready() -> None:
    """Review s35r2: `ready` means stable serves. A step held on it failed at progressDeadline against the candidate
    (tagged rejected) though its weight was in effect: only the unstage, whose point is stable serving, waits."""
    world = World(spec=spec_dict(canary={"steps": [{"setWeight": 10}, {"pause": {"duration": "5m"}},
                                                   {"setWeight": 50}, {"pause": {}}]},
                                 bake=None, progressDeadline="10m"))
    world.run_until(lambda w: w.status.canary_weight == 10 and w.status.current_step == 1)
    world.target.ready, world.target.detail = False, "state Creating: stable predictor main is not available"
    before = len(world.status.history)
    world.run_until(lambda w: w.status.phase is Phase.PAUSED and w.status.current_step == 3)
    assert [e.detail for e in world.status.history[before:] if e.event == "WeightChanged"] == [
        "step 3/4: candidate 7 at 50%"]
    assert world.status.rollback is None and not world.registry.versions["7"]
