"""Review s32seldon findings, through the real runtime's registry read (RolloutRuntime.observe_registry on the in-memory
registry) and the pure engine:

1. With no --storage-uri-template, a version whose source only MLflow resolves (MLflow 3's models:/m-<id>) replacing a
   candidate in flight was resolved in the same pass as the old one's rollback ended, and staged: the refusal was
   skipped while the old rollout was in flight. Now the old version's rollback runs (never waiting on the refusal) and
   the new one then waits in Pending, RegistryAvailable False (RegistryInvalid), nothing staged: KServe and Seldon
   v1 alike (the path is the runtime's and the engine's, not a router's), a version or an alias moved, mid-canary or
   staged but not yet confirmed.
2. A target deleted mid-canary, then abort: RolledBack said canaryWeight 10.
3. The registry's refusal (or error) was said twice in status.message.
"""

from __future__ import annotations

import copy
from datetime import timedelta
from typing import Any

import pytest
from kubernetes import client
from test_engine_support import World, spec_dict

from controller.api.commands import CommandAction
from controller.api.status import Phase
from controller.engine import Observations, StageCandidate
from controller.operator.runtime import OperatorConfig, RolloutRuntime
from controller.registry import InMemoryRegistry

MODEL = "nsfw-classifier"
MLFLOW3_SOURCE = "models:/m-4eaa6c319bd44959a6cb73653cf96ca0"
TARGETS = {"kserve": {"kserve": {"inferenceService": MODEL}},
           "seldon v1": {"seldonDeployment": {"name": MODEL, "stablePredictor": "main", "canaryPredictor": "canary"}}}


class RegistryWorld(World):
    """The engine's world, its registry read by the operator's own observe_registry (template not set)."""

    memory: InMemoryRegistry

    def observe(self, *args: Any, **kwargs: Any) -> Observations:
        observed = super().observe(*args, **kwargs)
        obj = {"apiVersion": "modelrollout.io/v1alpha1", "kind": "ModelRollout",
               "metadata": {"name": "r", "namespace": "ns"}, "spec": copy.deepcopy(self.spec)}
        runtime = RolloutRuntime(obj, self.parsed_spec, client.ApiClient(), OperatorConfig(storage_uri_template=None))
        runtime._registry = self.memory
        registry = runtime.observe_registry(self.status)
        return Observations(**{**observed.__dict__, "registry": registry})


def make_world(target: str, **spec: Any) -> RegistryWorld:
    raw = spec_dict(target=TARGETS[target], model={"name": MODEL, "version": "2", "stableAlias": "production", **spec})
    del raw["bake"]
    raw["model"] = {key: value for key, value in raw["model"].items() if value is not None}
    world = RegistryWorld(spec=raw)
    memory = InMemoryRegistry()
    memory.add_version(MODEL, source="s3://bucket/m/stable")
    memory.add_version(MODEL, source="s3://bucket/m/candidate")
    memory.add_version(MODEL, source=MLFLOW3_SOURCE)
    memory._models[MODEL].aliases["production"] = "1"
    world.memory = memory
    world.registry.versions = {"1": {}, "2": {}, "3": {}}
    world.registry.aliases = {"production": "1"}
    world.target.stable_version = "1"
    return world


def supersede(world: RegistryWorld, how: str) -> None:
    if how == "version":
        world.spec = {**world.spec, "model": {**world.spec["model"], "version": "3"}}
    else:  # the alias the spec follows moved on
        world.memory._models[MODEL].aliases["candidate"] = "3"
    world.generation += 1


def staged(world: World) -> list[str]:
    return [action.candidate.version for action in world.executed if isinstance(action, StageCandidate)]


def assert_refused_in_pending(world: RegistryWorld) -> None:
    status = world.status
    events = [entry.event for entry in status.history]
    assert "RolledBackForNewCandidate" in events, events
    assert events[-1] == "RolledBackForNewCandidate", events  # nothing resolved, staged or gated after it
    assert status.phase is Phase.PENDING and status.candidate is None, (status.phase, status.message)
    assert "3" not in staged(world), world.executed
    assert world.target.canary_version is None and not world.target.canary_weight  # the old one is off
    condition = next(c for c in status.conditions if c.type == "RegistryAvailable")
    assert (condition.status, condition.reason) == ("False", "RegistryInvalid"), condition
    assert condition.message.startswith("candidate version 3's source is a models: URI"), condition.message
    # Said once (finding 3), after what it waits for.
    assert status.message.startswith(f"Waiting for the registry to resolve {MODEL} "), status.message
    assert status.message.count("source is a models: URI") == 1, status.message


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("how", ["version", "alias"])
def test_a_new_unloadable_candidate_mid_canary_waits_in_pending_after_the_old_one_is_rolled_back(
        target: str, how: str) -> None:
    world = make_world(target, **({"version": None, "alias": "candidate"} if how == "alias" else {}))
    if how == "alias":
        world.memory._models[MODEL].aliases["candidate"] = "2"
    world.run_until(lambda w: w.status.phase is Phase.PROGRESSING and bool(w.target.canary_weight))
    assert world.status.candidate is not None and world.status.candidate.version == "2"
    assert staged(world) == ["2"]
    supersede(world, how)
    world.reconcile()
    assert_refused_in_pending(world)
    for _ in range(3):  # and it stays so
        world.advance(timedelta(minutes=1))
        world.reconcile()
    assert_refused_in_pending(world)


@pytest.mark.parametrize("target", TARGETS)
def test_a_candidate_staged_but_not_confirmed_is_rolled_back_without_waiting_on_the_refusal(target: str) -> None:
    """The reviewer's unproven case: the old candidate's staging sent, the rollout still Pending."""
    world = make_world(target)
    world.target.ready_delay = timedelta(hours=1)  # staged, never ready in time to be confirmed
    world.reconcile()
    assert world.status.phase is Phase.PENDING and world.status.candidate is not None
    assert staged(world) == ["2"] and world.target.canary_version == "2"
    supersede(world, "version")
    world.reconcile()  # one reconcile: the rollback is not held by the registry
    assert_refused_in_pending(world)


def test_a_target_deleted_mid_canary_then_aborted_says_weight_zero() -> None:
    world = World()
    world.run_until(lambda w: w.status.phase is Phase.PROGRESSING and bool(w.target.canary_weight))
    assert world.status.canary_weight
    world.target.exists = False
    world.send(CommandAction.ABORT)
    world.run_until(lambda w: w.status.phase in (Phase.ROLLED_BACK, Phase.FAILED))
    assert world.status.phase is Phase.ROLLED_BACK
    assert world.status.canary_weight == 0, world.status.canary_weight


def test_a_first_rollout_refused_or_a_registry_down_says_why_once() -> None:
    world = make_world("kserve", version="3")
    world.reconcile()
    world.advance(timedelta(minutes=5))
    world.reconcile()
    message = world.status.message
    assert world.status.retry is not None and world.status.retry.attempts == 2
    assert message.startswith(f"Waiting for the registry to resolve {MODEL} version 3 (retry 2: registry: "
                              "candidate version 3's source is a models: URI"), message
    assert message.count("source is a models: URI") == 1, message
    down = World()
    down.registry.down = True
    down.reconcile()
    assert down.status.message.count("connection refused") == 1, down.status.message


@pytest.mark.parametrize("target", TARGETS)
def test_a_retry_after_the_stable_alias_moved_to_an_unloadable_version_is_refused(target: str) -> None:
    """Review s32r2b: the candidate already taken on was never checked, so `retry` of it took a stable alias moved
    meanwhile to a models:/m-... version as status.stable, staged, and a later rollback restored that URI. Review
    s32r3: refused, as a retry of a candidate gone is, so that the ended attempt's account is kept."""
    world = make_world(target)
    world.target.ready_delay = timedelta(hours=3)  # never ready: ends at progressDeadline, not tagged rejected
    world.run_until(lambda w: w.status.phase in (Phase.ROLLED_BACK, Phase.FAILED))
    ended = world.status.phase
    world.memory._models[MODEL].aliases["production"] = "3"  # moved to an MLflow 3 version by other means
    world.registry.aliases["production"] = "3"
    world.target.stable_version = "3"
    world.target.ready_delay = timedelta(0)
    world.executed.clear()
    world.advance(timedelta(minutes=5))
    world.send(CommandAction.RETRY)
    for _ in range(3):
        world.advance(timedelta(minutes=1))
        world.reconcile()
    assert world.status.phase is ended, world.status.message
    assert world.status.candidate is not None and world.status.rollback is not None  # the account is kept
    assert staged(world) == [], world.executed
    refused = world.status.history[-1]
    assert refused.event == "CommandIgnored", refused
    assert refused.detail.startswith("retry: the new attempt could not start: stable version 3's source is a "
                                     "models: URI"), refused.detail


def test_a_rollout_in_flight_is_not_held_by_the_refusal_of_its_own_candidate() -> None:
    """What `taken_on` kept out before: the refusal is read only when a candidate is resolved (an operator upgraded
    mid-rollout, with the candidate's source MLflow-only, goes on as it started)."""
    world = make_world("kserve")
    world.run_until(lambda w: w.status.phase is Phase.PROGRESSING and bool(w.target.canary_weight))
    record = world.memory._models[MODEL].versions["2"]
    world.memory._models[MODEL].versions["2"] = type(record)(name=MODEL, version="2", source=MLFLOW3_SOURCE)
    world.run_until(lambda w: w.status.phase is Phase.PAUSED)  # the last step, `pause: {}`
    assert world.status.candidate is not None and world.status.candidate.version == "2"
    assert staged(world) == ["2"] and world.target.canary_weight == 50
