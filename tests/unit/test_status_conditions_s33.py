"""Status conditions as the Kubernetes conventions want them (review s33conv).

- The controller's status apply holds only its own condition types: another field manager's condition (status.conditions
  is a list keyed by type) is left to that manager, never co-owned by a forced apply.
- GatePassed's GateNotRun and AnalysisHealthy's AnalysisNotRun (and a verdict that stands) follow the generation and
  the ended phase; lastTransitionTime stays while the status does not change.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from kubernetes import client
from test_engine_support import World, spec_dict

from controller.api import CommandAction, ConditionStatus, ConditionType, Phase
from controller.api.status import Condition, ModelRolloutStatus, same_owned_status
from controller.operator.kubeapi import RolloutStore

FOREIGN = {"type": "ExternalCheck", "status": "True", "reason": "Fine", "message": "ok",
           "lastTransitionTime": "2026-01-05T08:00:00Z"}


class CapturingApi:
    """The CustomObjectsApi under the real RolloutStore: keeps the status bodies it is sent."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []

    def patch_namespaced_custom_object_status(self, group: str, version: str, namespace: str, plural: str, name: str,
                                              body: dict[str, Any], **_: Any) -> dict[str, Any]:
        self.bodies.append(body)
        return body


def _store() -> tuple[RolloutStore, CapturingApi]:
    store = RolloutStore(client.ApiClient(client.Configuration()))
    api = CapturingApi()
    store.custom = api  # type: ignore[assignment]
    return store, api


def test_the_status_apply_leaves_another_managers_condition_out() -> None:
    world = World()
    world.reconcile()
    stored = world.status.to_dict()
    # What the API server holds: the operator's conditions and another tool's, read back whole.
    read = ModelRolloutStatus.from_dict({**stored, "conditions": [FOREIGN, *stored["conditions"]]})
    assert read.condition("ExternalCheck") is not None  # read and kept: the decided status compares equal to it
    store, api = _store()
    obj = {"metadata": {"name": "r", "namespace": "ns", "resourceVersion": "7"}}
    store.apply_status(obj, read.to_dict())
    (body,) = api.bodies
    sent = [item["type"] for item in body["status"]["conditions"]]
    assert "ExternalCheck" not in sent
    assert sent == [item["type"] for item in stored["conditions"]]
    assert {str(item) for item in ConditionType} >= set(sent)


def test_a_status_without_conditions_is_applied_as_it_is() -> None:
    store, api = _store()
    store.apply_status({"metadata": {"name": "r", "namespace": "ns", "resourceVersion": "7"}},
                       {"phase": "Pending", "observedGeneration": 1})
    assert api.bodies[0]["status"] == {"phase": "Pending", "observedGeneration": 1}


def _held(world: World, condition_type: ConditionType) -> Condition:
    condition = world.status.condition(condition_type)
    assert condition is not None
    return condition


def test_analysis_not_run_follows_the_generation_and_says_so_once_the_rollout_ended() -> None:
    world = World(spec=spec_dict(canary={"steps": [{"setWeight": 10}, {"pause": {}}, {"setWeight": 50}]},
                                 analysis=None, bake=None))
    world.run_until(lambda w: w.status.phase is Phase.PAUSED)
    first = _held(world, ConditionType.ANALYSIS_HEALTHY)
    assert (first.status, first.reason, first.message, first.observed_generation) == (
        ConditionStatus.UNKNOWN, "AnalysisNotRun", "No analysis verdict yet.", 1)
    gate = _held(world, ConditionType.GATE_PASSED)

    world.spec = {**world.spec, "progressDeadline": "45m"}  # a spec edit while paused
    world.generation = 2
    world.advance(timedelta(minutes=1))
    world.reconcile()
    edited = _held(world, ConditionType.ANALYSIS_HEALTHY)
    assert edited.observed_generation == 2
    assert edited.last_transition_time == first.last_transition_time  # Unknown still: no transition
    # A verdict that stands (the gate's, from generation 1) is said again for this generation, unchanged.
    gate_now = _held(world, ConditionType.GATE_PASSED)
    assert (gate_now.status, gate_now.reason, gate_now.message, gate_now.last_transition_time) == (
        gate.status, gate.reason, gate.message, gate.last_transition_time)
    assert gate_now.observed_generation == 2

    world.send(CommandAction.PROMOTE, command_id="promote-1")
    world.run_until(lambda w: w.status.phase is Phase.SUCCEEDED)
    ended = _held(world, ConditionType.ANALYSIS_HEALTHY)
    assert (ended.status, ended.reason, ended.message, ended.observed_generation) == (
        ConditionStatus.UNKNOWN, "AnalysisNotRun", "No analysis ran in this attempt.", 2)
    assert ended.last_transition_time == first.last_transition_time


def test_gate_not_run_follows_the_generation_and_says_so_once_the_rollout_ended() -> None:
    world = World()
    world.registry.down = True  # the candidate cannot be resolved yet: Pending, the gate never runs
    world.reconcile()
    first = _held(world, ConditionType.GATE_PASSED)
    assert (first.status, first.reason, first.message, first.observed_generation) == (
        ConditionStatus.UNKNOWN, "GateNotRun", "The golden gate has not run yet.", 1)

    world.spec = {**world.spec, "progressDeadline": "45m"}
    world.generation = 2
    world.advance(timedelta(seconds=30))
    world.reconcile()
    edited = _held(world, ConditionType.GATE_PASSED)
    assert (edited.reason, edited.observed_generation, edited.last_transition_time) == (
        "GateNotRun", 2, first.last_transition_time)

    world.send(CommandAction.ABORT, command_id="abort-1")
    world.run_until(lambda w: w.status.phase in (Phase.FAILED, Phase.ROLLED_BACK))
    ended = _held(world, ConditionType.GATE_PASSED)
    assert (ended.status, ended.reason, ended.message, ended.observed_generation) == (
        ConditionStatus.UNKNOWN, "GateNotRun", "The golden gate did not run in this attempt.", 2)
    assert ended.last_transition_time == first.last_transition_time


# Review s33r4: the API server keeps another manager's condition where it was; stored first, every decision on an
# unchanged status differed from it in order alone, and the runtime wrote after each real write for nothing.
def test_a_foreign_condition_stored_first_is_no_change_to_write() -> None:
    foreign = {"type": "ExternalCheck", "status": "True", "reason": "Fine", "message": "ok",
               "lastTransitionTime": "2026-01-05T08:00:00Z"}
    world = World()
    world.registry.down = True
    world.reconcile()
    for stored_conditions in ([foreign, *world.status.to_dict()["conditions"]],
                              [*world.status.to_dict()["conditions"], foreign]):
        stored = {**world.status.to_dict(), "conditions": stored_conditions}
        world.status = ModelRolloutStatus.from_dict(stored)
        decided = world.reconcile(rounds=1).status.to_dict()
        assert same_owned_status(decided, stored)
    changed = {**stored, "conditions": [{**stored_conditions[0], "reason": "Other"}, *stored_conditions[1:]]}
    assert not same_owned_status(decided, changed)
