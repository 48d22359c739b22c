"""One ModelRollout per target: which rollout has a target, and what the others' status says while they wait."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from test_engine_support import T0, World

from controller.api import Phase
from controller.engine.claims import TargetClaim, target_claim, target_holder
from controller.engine.decide import TARGET_CONFLICT_RECHECK, wait_for_target


def rollout(name: str, created: str, target: dict[str, Any], namespace: str = "team-a") -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": namespace, "uid": f"uid-{name}-{namespace}",
                         "creationTimestamp": created},
            "spec": {"target": target}}


ISVC = {"kserve": {"inferenceService": "nsfw"}}


def test_the_claim_names_the_field_kind_and_object_of_each_target() -> None:
    assert target_claim(rollout("a", "", ISVC)) == TargetClaim("spec.target.kserve.inferenceService",
                                                               "InferenceService", "nsfw")
    sdep = {"seldonDeployment": {"name": "nsfw", "stablePredictor": "a", "canaryPredictor": "b"}}
    assert target_claim(rollout("a", "", sdep)) == TargetClaim("spec.target.seldonDeployment.name",
                                                               "SeldonDeployment", "nsfw")
    assert str(target_claim(rollout("a", "", {"seldonExperiment": {"name": "x"}}))) == "Experiment 'x'"
    for broken in ({}, {"kserve": "nsfw"}, {"kserve": {"inferenceService": ""}}, {"kserve": {"inferenceService": 7}}):
        assert target_claim(rollout("a", "", broken)) is None
    assert target_claim({"metadata": {}, "spec": {"target": ["kserve"]}}) is None


def test_the_rollout_created_first_has_the_target() -> None:
    first = rollout("zeta", "2026-12-01T09:00:00Z", ISVC)
    second = rollout("alpha", "2026-12-01T09:00:05Z", ISVC)
    third = rollout("beta", "2026-12-02T00:00:00Z", ISVC)
    every = [third, second, first]
    assert target_holder(first, every) is None
    assert target_holder(second, every) == "zeta"
    assert target_holder(third, every) == "zeta"  # the first one, not merely an older one
    assert target_holder(third, [third, second]) == "alpha"  # once the first is deleted


def test_created_in_the_same_second_the_name_decides() -> None:
    a, b = rollout("a", "2026-12-01T09:00:00Z", ISVC), rollout("b", "2026-12-01T09:00:00Z", ISVC)
    assert target_holder(a, [a, b]) is None
    assert target_holder(b, [a, b]) == "a"


def test_other_objects_namespaces_and_unreadable_specs_take_nothing() -> None:
    me = rollout("me", "2026-12-02T00:00:00Z", ISVC)
    others = [
        rollout("other-isvc", "2026-12-01T00:00:00Z", {"kserve": {"inferenceService": "other"}}),
        rollout("other-ns", "2026-12-01T00:00:00Z", ISVC, namespace="team-b"),
        # The same name is another object under another kind.
        rollout("seldon", "2026-12-01T00:00:00Z", {"seldonExperiment": {"name": "nsfw"}}),
        rollout("broken", "2026-12-01T00:00:00Z", {"kserve": {}}),
        me,
    ]
    assert target_holder(me, others) is None


def test_a_waiting_rollout_keeps_its_phase_says_who_has_the_target_and_looks_again() -> None:
    claim = target_claim(rollout("b", "", ISVC))
    assert claim is not None
    decision = wait_for_target(None, claim, "a", generation=1, now=T0)
    assert decision.actions == ()
    assert decision.status.phase is Phase.PENDING  # unlike an invalid spec, it does not fail
    assert decision.status.completed_at is None
    assert decision.requeue_after == TARGET_CONFLICT_RECHECK
    ready = decision.status.condition("Ready")
    assert ready is not None and (str(ready.status), ready.reason) == ("False", "TargetConflict")
    assert ready.message == decision.status.message == (
        "Waiting for the target: spec.target.kserve.inferenceService: InferenceService 'nsfw' is rolled out by "
        "ModelRollout 'a', created first (one per target).")
    assert [e.event for e in decision.events] == ["TargetConflict"]
    again = wait_for_target(decision.status, claim, "a", generation=1, now=T0 + timedelta(seconds=30))
    assert again.events == () and again.status.history == decision.status.history
    assert again.status.condition("Ready") == ready  # the transition time stays


def test_a_rollout_in_flight_is_held_where_it_is_and_starts_again_once_the_target_is_its_own() -> None:
    world = World()
    world.run_until(lambda w: w.status.current_step == 1)
    claim = target_claim({"spec": world.spec})
    assert claim is not None
    held = wait_for_target(world.status, claim, "older", generation=world.generation, now=world.now)
    assert held.actions == () and held.status.phase is world.status.phase
    assert held.status.current_step == world.status.current_step
    assert held.status.message.startswith("Holding Progressing unchanged: waiting for the target: ")
    # The target is its own again: the next decision is the engine's own, and Ready no longer names the conflict.
    world.status = held.status
    world.advance(TARGET_CONFLICT_RECHECK)
    world.reconcile()
    ready = world.status.condition("Ready")
    assert ready is not None and ready.reason != "TargetConflict"
    assert world.status.phase is not Phase.FAILED
