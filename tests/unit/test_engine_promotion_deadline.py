"""A promotion whose alias move the registry keeps refusing: the candidate serves all traffic unwatched (the
bake starts only once the alias has moved), so the progress deadline applies here too, as to every step."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from test_engine_support import World, spec_dict

from controller.api import Phase, RollbackCause
from controller.engine import REJECTED_TAG, ActionFailure, AdapterError, AdapterErrorKind, SetAlias


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


def test_an_alias_move_the_registry_refuses_shows_in_registry_available_and_is_not_blamed_on_the_model() -> None:
    world = World(spec=spec_dict(canary={"steps": [{"setWeight": 10}, {"analysis": {"duration": "2m"}}]}))
    execute = world.execute
    denied = "PERMISSION_DENIED: user operator cannot set alias production"

    def refusing(action: Any) -> Any:
        if isinstance(action, SetAlias) and action.promotion:
            world.executed.append(action)
            return None, None, ActionFailure(action.id, AdapterError(AdapterErrorKind.FORBIDDEN, denied))
        return execute(action)

    world.execute = refusing  # type: ignore[method-assign]
    world.run_until(lambda w: any(record.last_error for record in w.status.actions), step=timedelta(seconds=30))
    assert world.status.phase is Phase.PROMOTING
    world.advance(timedelta(milliseconds=500))  # the write's own watch event: no failure in this decision
    assert not world.reconcile().actions
    registry = world.status.condition("RegistryAvailable")
    assert registry is not None and (str(registry.status), registry.reason) == ("False", "RegistryForbidden")
    assert denied in registry.message and denied in world.status.message
    world.run_until(lambda w: w.status.phase is not Phase.PROMOTING, step=timedelta(minutes=1), limit=200)
    rollback = world.status.rollback
    assert rollback is not None and rollback.cause is RollbackCause.PROGRESS_DEADLINE_EXCEEDED
    assert rollback.reason.endswith(f"within progressDeadline 30m; last error: Forbidden: {denied}")
    assert not rollback.reject_candidate
    world.run_until(lambda w: w.status.phase is Phase.ROLLED_BACK, step=timedelta(seconds=30), limit=200)
    assert world.target.stable_version == "6" and world.registry.aliases["production"] == "6"
    assert REJECTED_TAG not in world.registry.versions["7"]


def test_a_promotion_whose_rejected_flag_overrule_failed_after_the_alias_moved_is_sent_again() -> None:
    """promote() moves the alias, then overrules an earlier attempt's rejected=true: a 503 in between must not
    leave production tagged rejected for good. The alias already naming the candidate is not enough to confirm."""
    world = World(spec=spec_dict(canary={"steps": [{"setWeight": 10}, {"analysis": {"duration": "2m"}}]}, bake=None))
    world.registry.versions["7"][REJECTED_TAG] = "true"  # an earlier attempt's verdict
    execute = world.execute
    promotions: list[SetAlias] = []

    def overrule_fails_once(action: Any) -> Any:
        out = execute(action)  # the alias moves (the stand-in registry never writes the overrule itself)
        if isinstance(action, SetAlias) and action.promotion:
            promotions.append(action)
            if len(promotions) == 1:
                return None, None, ActionFailure(action.id, AdapterError(AdapterErrorKind.UNAVAILABLE, "503"))
            world.registry.versions["7"][REJECTED_TAG] = "false"
        return out

    world.execute = overrule_fails_once  # type: ignore[method-assign]
    world.run_until(lambda w: bool(promotions))
    assert world.registry.aliases["production"] == "7" and world.registry.versions["7"][REJECTED_TAG] == "true"
    assert world.status.phase is Phase.PROMOTING
    assert world.status.promotion is not None and world.status.promotion.alias_confirmed_at is None
    world.run_until(lambda w: w.status.phase is not Phase.PROMOTING, step=timedelta(seconds=5), limit=20)
    assert world.status.phase is Phase.SUCCEEDED
    assert [action.id for action in promotions] == ["1:promote:alias"] * 2
    assert world.registry.versions["7"][REJECTED_TAG] == "false"
    assert "a verdict rejected it" not in world.status.message
