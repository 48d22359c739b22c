"""A registry that answers reads but fails writes, or loses the stable version, while a rollout runs.

Found against a real MLflow (review s26registry): a 503 or a redirect (POST turned into a 405) at promotion got a
candidate no check had failed tagged rejected; a tag the registry never takes, or a stable version deleted
mid-rollout (MLflow drops its aliases with it), left the rollback in RollingBack for good.
"""

from __future__ import annotations

import dataclasses
import io
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from test_engine import events, fail_from, finished
from test_engine_support import World, spec_dict

from controller.api import Phase, RollbackCause
from controller.cli.oncall import OnCall
from controller.engine import (
    REJECTED_TAG,
    ActionFailure,
    AdapterError,
    AdapterErrorKind,
    RemoveAlias,
    SetAlias,
    TagRejected,
)
from controller.engine.observations import RegistryObservation
from controller.operator.events import is_warning
from controller.verdict import Outcome

_WRITES = SetAlias | RemoveAlias | TagRejected
_405 = "MLflow at http://mlflow.example answered HTTP 405 Method Not Allowed"


def _failing_writes(world: World, kind: AdapterErrorKind, message: str, when: Any = lambda _action: True) -> None:
    """Registry writes for which `when` holds fail with `kind`; reads keep working (the registry looks up)."""
    execute = world.execute

    def refusing(action: Any) -> Any:
        if isinstance(action, _WRITES) and when(action):
            world.executed.append(action)
            return None, None, ActionFailure(action.id, AdapterError(kind, message))
        return execute(action)

    world.execute = refusing  # type: ignore[method-assign]


def _explained(world: World, kubeconfig: Path) -> str:
    """What `modelrollout explain` tells the on-call engineer of this status."""
    obj = {"metadata": {"name": "nsfw-classifier", "namespace": "moderation", "resourceVersion": "7"},
           "spec": world.spec, "status": world.status.to_dict()}
    return OnCall(str(kubeconfig), None, out=io.StringIO()).explain(obj)


def _entry(world: World, event: str) -> str:
    return next(entry.detail for entry in world.status.history if entry.event == event)


# --- M2: the alias move at promotion fails: a missed deadline, never a judgement -----------------------------


@pytest.mark.parametrize(("kind", "message", "recovers"), [
    (AdapterErrorKind.UNAVAILABLE, "MLflow at http://mlflow.example answered HTTP 503", True),
    (AdapterErrorKind.UNAVAILABLE, "MLflow at http://mlflow.example did not answer in 10s", True),
    (AdapterErrorKind.ERROR, _405, False),  # a redirect in front of MLflow: every write, for good
    (AdapterErrorKind.ERROR, "MLflow at http://mlflow.example answered HTTP 400", False),
])
def test_a_registry_failing_the_promotions_alias_move_rolls_back_without_tagging_the_candidate(
        kind: AdapterErrorKind, message: str, recovers: bool) -> None:
    world = World(spec=spec_dict(canary={"steps": [{"setWeight": 10}, {"analysis": {"duration": "2m"}}]}))
    broken = [True]  # a canary that passes asks nothing of the registry: its first write is the promotion's
    _failing_writes(world, kind, message, lambda _action: broken[0])
    world.run_until(lambda w: w.status.phase is Phase.PROMOTING)
    assert world.status.gate is not None and world.status.gate.outcome is Outcome.PASS
    world.run_until(lambda w: w.status.phase is not Phase.PROMOTING, step=timedelta(minutes=1), limit=60)
    rollback = world.status.rollback
    assert rollback is not None and rollback.cause is RollbackCause.PROGRESS_DEADLINE_EXCEEDED
    assert "the registry did not move @production to 7 within progressDeadline 30m" in rollback.reason
    assert not rollback.reject_candidate  # the registry failed, not the model
    broken[0] = not recovers
    world.run_until(finished, step=timedelta(minutes=1), limit=60)
    assert world.status.phase is Phase.ROLLED_BACK
    assert world.target.stable_version == "6" and world.registry.aliases["production"] == "6"
    assert REJECTED_TAG not in world.registry.versions["7"]
    assert not any(isinstance(action, TagRejected) for action in world.executed)
    assert "CandidateRejected" not in events(world) and "CandidateNotTagged" not in events(world)


# --- a judged rollback whose tag the registry never takes ends, untagged, saying so --------------------------


def test_a_rollback_whose_tag_the_registry_never_takes_ends_untagged_after_the_deadline(
        offline_kubeconfig: Path) -> None:
    world = World(spec=spec_dict(progressDeadline="30m"))
    _failing_writes(world, AdapterErrorKind.ERROR, _405)  # every write, from the start: reads work
    fail_from(world, step_index=3)
    world.run_until(lambda w: w.status.phase is Phase.ROLLING_BACK, step=timedelta(minutes=1))
    verdict_at = world.now
    world.run_until(finished, step=timedelta(minutes=1), limit=60)  # was RollingBack for good
    # At the first refusal seen past the deadline: resends back off to 5 minutes at most.
    assert world.now - verdict_at <= timedelta(minutes=36)
    assert world.status.phase is Phase.ROLLED_BACK
    rollback = world.status.rollback
    assert rollback is not None and rollback.cause is RollbackCause.ANALYSIS_FAILED
    assert rollback.tag_confirmed_at is None and not rollback.reject_candidate
    detail = _entry(world, "CandidateNotTagged")
    assert detail.startswith(f"version 7 is not tagged {REJECTED_TAG}: the registry did not take the tag within "
                             "progressDeadline 30m; last error: Error: ")
    assert "HTTP 405" in detail
    assert events(world)[-2:] == ["CandidateNotTagged", "RolledBack"] and is_warning("CandidateNotTagged")
    assert world.target.stable_version == "6" and not world.target.canary_weight  # users back on stable
    assert REJECTED_TAG not in world.registry.versions["7"]
    tags_sent = [action for action in world.executed if isinstance(action, TagRejected)]
    assert len(tags_sent) > 1  # tried again and again until the deadline
    world.advance(timedelta(hours=1))
    world.reconcile()
    assert not any(isinstance(action, TagRejected) for action in world.decisions[-1].actions)  # and it stopped
    told = _explained(world, offline_kubeconfig)
    assert "Version 7 is NOT tagged rejected: the registry did not take the tag (CandidateNotTagged)" in told
    assert "is tagged rejected" not in told and "not yet tagged" not in told


def test_a_tag_the_registry_refuses_for_a_while_is_still_written_within_the_deadline() -> None:
    world = World(spec=spec_dict(progressDeadline="30m"))
    broken = [True]
    _failing_writes(world, AdapterErrorKind.UNAVAILABLE, "HTTP 503", lambda action: broken[0]
                    and isinstance(action, TagRejected))
    fail_from(world, step_index=3)
    world.run_until(lambda w: w.status.phase is Phase.ROLLING_BACK, step=timedelta(minutes=1))
    for _ in range(25):  # 25 minutes of refusals: traffic and alias back meanwhile
        world.advance(timedelta(minutes=1))
        world.reconcile()
    assert world.status.phase is Phase.ROLLING_BACK
    broken[0] = False
    world.run_until(finished, step=timedelta(minutes=1), limit=30)
    assert world.status.phase is Phase.ROLLED_BACK
    assert world.registry.versions["7"].get(REJECTED_TAG) == "true"
    assert "CandidateRejected" in events(world) and "CandidateNotTagged" not in events(world)
    rollback = world.status.rollback
    assert rollback is not None and rollback.reject_candidate and rollback.tag_confirmed_at is not None


def test_a_tag_the_registry_is_away_for_is_waited_for_past_the_deadline() -> None:
    """A 503 or a timeout is an outage, not a refusal: the tag is what keeps the version from being rolled out
    again, so the rollback waits for the registry as long as it takes."""
    world = World(spec=spec_dict(progressDeadline="30m"))
    broken = [True]
    _failing_writes(world, AdapterErrorKind.UNAVAILABLE, "MLflow at http://mlflow.example answered HTTP 503",
                    lambda action: broken[0] and isinstance(action, TagRejected))
    fail_from(world, step_index=3)
    world.run_until(lambda w: w.status.phase is Phase.ROLLING_BACK, step=timedelta(minutes=1))
    for _ in range(120):  # two hours away, four times progressDeadline
        world.advance(timedelta(minutes=1))
        world.reconcile()
    assert world.status.phase is Phase.ROLLING_BACK and "CandidateNotTagged" not in events(world)
    broken[0] = False
    world.run_until(finished, step=timedelta(minutes=1), limit=30)
    assert world.registry.versions["7"].get(REJECTED_TAG) == "true"


# --- L1: the stable version deleted from the registry mid-rollout ---------------------------------------------


def _delete_version(world: World, version: str) -> None:
    """As MLflow does: the version goes, and so do the aliases that named it; writes naming it are NotFound."""
    del world.registry.versions[version]
    for alias in [alias for alias, named in world.registry.aliases.items() if named == version]:
        del world.registry.aliases[alias]


def _mlflow_not_found(world: World) -> None:
    _failing_writes(world, AdapterErrorKind.NOT_FOUND, "registered model 'nsfw-classifier' has no version 6",
                    lambda action: getattr(action, "version", None) not in world.registry.versions)


def test_a_stable_version_deleted_mid_rollout_ends_the_rollback_with_the_alias_not_restored(
        offline_kubeconfig: Path) -> None:
    world = World(spec=spec_dict(progressDeadline="30m"))
    _mlflow_not_found(world)
    fail_from(world, step_index=3)
    world.run_until(lambda w: w.status.current_step == 1)
    _delete_version(world, "6")  # someone cleans up the registry
    assert "production" not in world.registry.aliases
    world.run_until(finished, step=timedelta(minutes=1), limit=60)  # was RollingBack for good
    assert world.status.phase is Phase.ROLLED_BACK
    assert world.target.stable_version == "6" and not world.target.canary_weight  # traffic is back
    detail = _entry(world, "AliasNotRestored")
    assert detail.startswith("@production cannot be put back on version 6, which no longer exists in the registry")
    assert "has no version 6" in detail and detail.endswith("@production is not set")
    assert "alias not restored" in _entry(world, "Recovered")  # nothing there was verified
    assert "AliasRestored" not in events(world) and is_warning("AliasNotRestored")
    assert world.registry.versions["7"].get(REJECTED_TAG) == "true"  # the tag step is unchanged
    alias_sends = [action for action in world.executed if isinstance(action, SetAlias) and not action.promotion]
    assert 1 <= len(alias_sends) <= 2  # not sent again and again once the registry said the version is gone
    record = next(item for item in world.status.actions if item.id.endswith(":rollback:alias"))
    assert str(record.state) == "Abandoned"  # never confirmed: the alias was not put back
    told = _explained(world, offline_kubeconfig)
    assert "@production could NOT be put back on version 6: it no longer exists in the registry" in told
    assert "is confirmed" not in told


def test_a_stable_alias_write_that_fails_otherwise_is_still_retried() -> None:
    # Only NotFound says the version is gone: a registry that is merely failing keeps being asked.
    world = World(spec=spec_dict(progressDeadline="30m"))
    broken = [True]
    _failing_writes(world, AdapterErrorKind.UNAVAILABLE, "HTTP 503",
                    lambda action: broken[0] and isinstance(action, SetAlias))
    fail_from(world, step_index=3)
    world.run_until(lambda w: w.status.current_step == 1)
    world.registry.aliases["production"] = "7"  # @production not on 6 when the rollback starts: it must be put back
    world.run_until(lambda w: w.status.phase is Phase.ROLLING_BACK, step=timedelta(minutes=1))
    for _ in range(10):
        world.advance(timedelta(minutes=1))
        world.reconcile()
    assert world.status.phase is Phase.ROLLING_BACK and "AliasNotRestored" not in events(world)
    broken[0] = False
    world.run_until(finished, step=timedelta(minutes=1), limit=30)
    assert world.registry.aliases["production"] == "6" and "AliasRestored" in events(world)


# --- s26r2 M1: refusal time counts from the refusals, not from the tag's first send ---------------------------


def _tag_answers(world: World, answers: list[tuple[AdapterErrorKind, str] | None]) -> None:
    """The tag write's answers in turn (None: accepted); past the list, the last answer again and again."""
    execute = world.execute

    def answering(action: Any) -> Any:
        if isinstance(action, TagRejected):
            answer = answers.pop(0) if len(answers) > 1 else answers[0]
            if answer is not None:
                world.executed.append(action)
                return None, None, ActionFailure(action.id, AdapterError(*answer))
        return execute(action)

    world.execute = answering  # type: ignore[method-assign]


_503 = (AdapterErrorKind.UNAVAILABLE, "MLflow at http://mlflow.example answered HTTP 503")
_404 = (AdapterErrorKind.ERROR, "HTTP 404 without an MLflow error (an ingress with no route yet)")


def _reach_tag_step(world: World) -> None:
    fail_from(world, step_index=3)
    world.run_until(lambda w: w.status.phase is Phase.ROLLING_BACK, step=timedelta(minutes=1))


def _minutes(world: World, count: int) -> None:
    for _ in range(count):
        world.advance(timedelta(minutes=1))
        world.reconcile()


def test_one_refusal_after_an_outage_longer_than_the_deadline_does_not_drop_the_tag() -> None:
    # Found by review s26r2: the deadline ran from the tag's first send, so after 45 minutes of 503 (waited for)
    # the first other answer (a proxy's 404 while its route comes back) gave the tag up at once.
    world = World(spec=spec_dict(progressDeadline="30m"))
    answers: list[tuple[AdapterErrorKind, str] | None] = [_503]
    _tag_answers(world, answers)
    _reach_tag_step(world)
    _minutes(world, 45)  # MLflow away for 45 minutes, past progressDeadline 30m
    assert world.status.phase is Phase.ROLLING_BACK
    answers[:] = [_404, None]  # it comes back: one 404, then it takes the tag
    world.run_until(finished, step=timedelta(minutes=1), limit=30)
    assert world.status.phase is Phase.ROLLED_BACK and "CandidateNotTagged" not in events(world)
    assert world.registry.versions["7"].get(REJECTED_TAG) == "true" and "CandidateRejected" in events(world)
    rollback = world.status.rollback
    assert rollback is not None and rollback.reject_candidate and rollback.tag_confirmed_at is not None


def test_refusals_give_the_tag_up_a_deadline_after_they_began_an_outage_between_starting_them_again() -> None:
    world = World(spec=spec_dict(progressDeadline="30m"))
    answers: list[tuple[AdapterErrorKind, str] | None] = [_503]
    _tag_answers(world, answers)
    _reach_tag_step(world)
    _minutes(world, 45)  # away: waited for
    answers[:] = [_404]  # then refused, for good
    refused_from = world.now
    _minutes(world, 20)
    assert world.status.phase is Phase.ROLLING_BACK
    record = next(item for item in world.status.actions if item.id.endswith(":rollback:tag"))
    # The first refusal, at the next send (the failure backoff is at most 5m); kept in status (the World writes
    # it through JSON), so a restart keeps it.
    assert record.refused_since is not None
    assert refused_from <= record.refused_since <= refused_from + timedelta(minutes=5)
    answers[:] = [_503, _404]  # one outage between two runs of refusals: the run starts again after it
    _minutes(world, 20)
    assert world.status.phase is Phase.ROLLING_BACK and "CandidateNotTagged" not in events(world)
    refused_again = next(item for item in world.status.actions if item.id.endswith(":rollback:tag")).refused_since
    assert refused_again is not None and refused_again > refused_from + timedelta(minutes=20)
    world.run_until(finished, step=timedelta(minutes=1), limit=30)
    assert world.status.phase is Phase.ROLLED_BACK and "CandidateNotTagged" in events(world)
    # At the first refusal seen past the deadline (resends back off to 5 minutes at most).
    assert refused_again + timedelta(minutes=30) <= world.now <= refused_again + timedelta(minutes=36)
    assert REJECTED_TAG not in world.registry.versions["7"]


def test_an_outage_seen_by_the_registry_reads_also_starts_the_refusals_again() -> None:
    world = World(spec=spec_dict(progressDeadline="30m"))
    _tag_answers(world, [_404])
    _reach_tag_step(world)
    _minutes(world, 20)  # 20 minutes refused
    world.registry.down = True  # then MLflow is away (reads too): nothing is sent meanwhile
    _minutes(world, 30)
    world.registry.down = False
    _minutes(world, 5)  # refused again: 5 minutes of refusals, not 20 + 30 + 5
    assert world.status.phase is Phase.ROLLING_BACK and "CandidateNotTagged" not in events(world)
    world.run_until(finished, step=timedelta(minutes=1), limit=40)
    assert "CandidateNotTagged" in events(world)


# --- s26r2 M2: a bake rollback whose stable version is gone takes the alias off the rejected version ----------


def _baking_then_stable_deleted() -> World:
    """Promoted to 7 (@production on it), baking, bound to fail; then version 6 is deleted from the registry."""
    world = World(spec=spec_dict(progressDeadline="30m",
                                 canary={"steps": [{"setWeight": 10}, {"analysis": {"duration": "2m"}}]}))
    _mlflow_not_found(world)
    fail_from(world, step_index=None, mode="bake", after=timedelta(minutes=10))
    world.run_until(lambda w: w.status.phase is Phase.BAKING, step=timedelta(minutes=1), limit=300)
    assert world.registry.aliases["production"] == "7"
    _delete_version(world, "6")
    return world


def test_a_bake_rollback_whose_stable_version_was_deleted_takes_the_alias_off_the_rejected_candidate(
        offline_kubeconfig: Path) -> None:
    # Found by review s26r2: it ended RolledBack with @production still on the rejected version 7, which
    # anything resolving models:/...@production (batch jobs, a restarted server, the next rollout) loads.
    world = _baking_then_stable_deleted()  # a retention job deletes old versions after a promotion
    world.run_until(finished, step=timedelta(minutes=1), limit=300)
    assert world.status.phase is Phase.ROLLED_BACK
    assert "production" not in world.registry.aliases  # not on the rejected version
    assert world.registry.versions["7"].get(REJECTED_TAG) == "true"
    detail = _entry(world, "AliasNotRestored")
    assert detail.startswith("@production cannot be put back on version 6, which no longer exists in the registry")
    assert detail.endswith("@production was taken off the rejected version 7")
    removals = [action for action in world.executed if isinstance(action, RemoveAlias)]
    assert len(removals) == 1 and removals[0].version == "7"
    record = next(item for item in world.status.actions if item.id.endswith(":rollback:unalias"))
    assert str(record.state) == "Confirmed"
    assert "alias not restored" in _entry(world, "Recovered")
    told = _explained(world, offline_kubeconfig)
    assert "@production could NOT be put back on version 6: it no longer exists in the registry" in told


def test_taking_the_alias_off_the_rejected_candidate_survives_a_crash_and_a_failed_write() -> None:
    world = _baking_then_stable_deleted()
    failed = [False]

    def first_removal(action: Any) -> bool:  # the first RemoveAlias sent fails (503); the next is accepted
        first = isinstance(action, RemoveAlias) and not failed[0]
        failed[0] = failed[0] or first
        return first
    _failing_writes(world, AdapterErrorKind.UNAVAILABLE, "HTTP 503", first_removal)
    crashed = [False]

    def crash_before_the_removal_goes_out(_status: Any, _observations: Any, decision: Any) -> None:
        if not crashed[0] and any(isinstance(action, RemoveAlias) for action in decision.actions):
            crashed[0] = True
            world.crash_after = 1  # the status naming it is written, then the operator dies before sending it
    world.on_decision = crash_before_the_removal_goes_out
    world.run_until(lambda w: crashed[0], step=timedelta(minutes=1), limit=300)
    record = next(item for item in world.status.actions if item.id.endswith(":rollback:unalias"))
    assert str(record.state) == "Pending" and world.registry.aliases["production"] == "7"
    assert not any(isinstance(action, RemoveAlias) for action in world.executed)
    world.run_until(finished, step=timedelta(minutes=1), limit=300)
    assert failed[0] and world.status.phase is Phase.ROLLED_BACK and "production" not in world.registry.aliases
    assert _entry(world, "AliasNotRestored").endswith("@production was taken off the rejected version 7")
    assert events(world).count("AliasNotRestored") == 1


def test_a_stable_version_deleted_leaves_an_alias_someone_moved_to_a_third_version() -> None:
    world = _baking_then_stable_deleted()
    world.registry.versions["8"] = {}
    world.registry.aliases["production"] = "8"  # on-call moved it meanwhile
    world.run_until(finished, step=timedelta(minutes=1), limit=300)
    assert world.registry.aliases["production"] == "8"
    assert _entry(world, "AliasNotRestored").endswith("@production names version 8")
    assert not any(isinstance(action, RemoveAlias) for action in world.executed)


def test_an_operator_down_past_the_deadline_after_one_refusal_sends_the_tag_again_before_giving_up() -> None:
    """Review s26r3: one refusal, then the operator (not the registry) away for 45 minutes: the refusals seen had
    not lasted progressDeadline, so the tag is sent again (and taken), not given up at the first reconcile back."""
    world = World(spec=spec_dict(progressDeadline="30m"))
    answers = [_404]
    _tag_answers(world, answers)
    _reach_tag_step(world)
    world.advance(timedelta(minutes=1))
    world.reconcile()
    answers[:] = [None]  # the registry takes the tag from now on
    world.advance(timedelta(minutes=45))  # no reconcile meanwhile
    world.run_until(finished, step=timedelta(minutes=1), limit=10)
    assert "CandidateNotTagged" not in events(world)
    assert world.registry.versions["7"].get(REJECTED_TAG) == "true"


def test_a_registry_refusing_its_reads_after_the_tag_still_ends_the_rollback_untagged() -> None:
    """Review s26final: with the reads refused too (credentials revoked: 403 on every call, not an outage) the tag
    is not sent again, so no refusal of it is seen; the refused reads count, and the rollback ends a deadline later."""
    world = World(spec=spec_dict(progressDeadline="30m"))
    _tag_answers(world, [(AdapterErrorKind.FORBIDDEN, "MLflow answered HTTP 403 Forbidden")])
    _reach_tag_step(world)
    observe = world.observe

    def forbidden_reads(*args: Any, **kwargs: Any) -> Any:
        return dataclasses.replace(observe(*args, **kwargs), registry=RegistryObservation(
            error=AdapterError(AdapterErrorKind.FORBIDDEN, "MLflow answered HTTP 403 Forbidden")))

    world.observe = forbidden_reads  # type: ignore[method-assign]
    started = world.now
    world.run_until(finished, step=timedelta(minutes=1), limit=60)
    assert world.now - started <= timedelta(minutes=36) and "CandidateNotTagged" in events(world)
    assert world.status.phase is Phase.ROLLED_BACK
