"""The action ledger is bounded (ACTION_LOG_LIMIT); the record that a candidate was staged is never evicted,
because a rollback that cannot see the target reads it to tell "nothing to withdraw" from "not confirmed"."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

from test_engine_support import World, spec_dict

from controller.api import CommandAction, Phase
from controller.api.commands import Command
from controller.api.status import ACTION_LOG_LIMIT
from controller.engine import ActionType, decide


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
