"""Review s33seldon: a promotion was confirmed (Promoted, the stable alias moved, the bake started) while the target
said it was not ready: Seldon v2's router reads the serving version from the spec it wrote, so a failed Experiment
still read "candidate 7 serves all traffic"."""

from __future__ import annotations

from datetime import timedelta

from test_engine_support import World, promotion_sent_to_a_frozen_target

from controller.api.status import Phase


def _promoted_onto_a_target_that_is_not_ready() -> World:
    world = promotion_sent_to_a_frozen_target()
    # What the Seldon routers report after the promotion's write when Seldon says it failed.
    world.target.stable_version, world.target.canary_version, world.target.canary_weight = "7", None, None
    world.target.ready = False
    return world


def test_a_promotion_is_not_confirmed_while_the_target_is_not_ready() -> None:
    world = _promoted_onto_a_target_that_is_not_ready()
    before = len(world.status.history)
    for _ in range(3):
        world.advance(timedelta(seconds=5))
        world.reconcile()
    assert [h.event for h in world.status.history[before:]] == []
    assert world.status.phase is Phase.PROMOTING
    assert world.registry.aliases["production"] == "6"
    assert "names it as serving all traffic but is not ready" in world.status.message, world.status.message
    # Ready again: the promotion is confirmed, then the alias moves.
    world.target.ready = True
    world.run_until(lambda w: w.status.phase is not Phase.PROMOTING)
    events = [h.event for h in world.status.history[before:]]
    assert events[:2] == ["Promoted", "AliasMoved"], events
    assert world.registry.aliases["production"] == "7"
