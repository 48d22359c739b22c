"""A promotion whose alias move the registry keeps refusing: the candidate serves all traffic unwatched (the
bake starts only once the alias has moved), so the progress deadline applies here too, as to every step."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from test_engine_support import World, spec_dict

from controller.api import Phase, RollbackCause
from controller.engine import ActionFailure, AdapterError, AdapterErrorKind, SetAlias


def test_an_alias_the_registry_will_not_move_is_a_missed_deadline_and_rolled_back() -> None:
    world = World(spec=spec_dict(canary={"steps": [{"setWeight": 10}, {"analysis": {"duration": "2m"}}]}))
    execute = world.execute

    def refusing(action: Any) -> Any:
        if isinstance(action, SetAlias) and action.promotion:
            world.executed.append(action)
            return None, None, ActionFailure(action.id, AdapterError(AdapterErrorKind.FORBIDDEN, "403"))
        return execute(action)

    world.execute = refusing  # type: ignore[method-assign]
    world.run_until(lambda w: w.status.phase is Phase.PROMOTING)
    promoting_at = world.now
    world.run_until(lambda w: w.status.phase is not Phase.PROMOTING, step=timedelta(minutes=1), limit=200)
    assert world.now - promoting_at <= timedelta(minutes=33)
    rollback = world.status.rollback
    assert rollback is not None and rollback.cause is RollbackCause.PROGRESS_DEADLINE_EXCEEDED
    assert "did not move @production to 7 within progressDeadline 30m" in rollback.reason
    world.run_until(lambda w: w.target.stable_version == "6", step=timedelta(seconds=30), limit=200)
    assert world.target.canary_version is None  # all traffic back on the previous version


def test_retry_after_the_registry_was_away_at_promotion_gives_the_alias_a_fresh_deadline() -> None:
    from controller.api import CommandAction, PauseReason
    from controller.engine import PromoteCandidate

    world = World(spec=spec_dict(canary={"steps": [{"setWeight": 10}, {"analysis": {"duration": "2m"}}]},
                                 rollback={"automatic": False}))
    execute = world.execute

    def registry_leaves(action: Any) -> Any:
        out = execute(action)
        if isinstance(action, PromoteCandidate):
            world.registry.down = True  # MLflow goes away as the target takes the promotion
        return out

    world.execute = registry_leaves  # type: ignore[method-assign]
    world.run_until(lambda w: w.status.phase is Phase.PROMOTING)
    world.run_until(lambda w: w.status.phase is not Phase.PROMOTING, step=timedelta(minutes=1), limit=100)
    assert world.status.pause is not None and world.status.pause.reason is PauseReason.PROGRESS_DEADLINE_EXCEEDED
    world.registry.down = False
    world.advance(timedelta(minutes=1))
    world.send(CommandAction.RETRY)
    world.run_until(lambda w: w.status.phase is not Phase.PROMOTING and w.status.phase is not Phase.PAUSED,
                    step=timedelta(seconds=5), limit=50)
    assert world.status.phase is Phase.BAKING
    assert world.registry.aliases["production"] == "7"
