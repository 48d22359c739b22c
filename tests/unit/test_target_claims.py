"""One ModelRollout per target: which rollout has a target, and what the others' status says while they wait."""

from __future__ import annotations

import asyncio
import copy
import time
from datetime import timedelta
from typing import Any

import pytest
from test_engine_support import T0, World, spec_dict

from controller.api import Phase
from controller.api.commands import COMMAND_ANNOTATION, Command, CommandAction
from controller.api.status import ModelRolloutStatus
from controller.engine import RegistryObservation, ResolvedVersion, TargetObservation
from controller.engine.claims import TargetClaim, in_flight, target_claim, target_holder
from controller.engine.decide import TARGET_CONFLICT_RECHECK, wait_for_target
from controller.operator import scheduler
from controller.operator.runtime import (
    OperatorConfig,
    ReconcileOutcome,
    RolloutRuntime,
    RolloutStepper,
    _StartGate,
    _StartLocks,
)


def rollout(name: str, created: str, target: dict[str, Any], namespace: str = "team-a", phase: str | None = None,
            started: str | None = None) -> dict[str, Any]:
    status = {k: v for k, v in (("phase", phase), ("startedAt", started)) if v is not None}
    return {"metadata": {"name": name, "namespace": namespace, "uid": f"uid-{name}-{namespace}",
                         "creationTimestamp": created},
            "spec": {"target": target}, "status": status}


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


def test_in_flight_is_every_phase_but_pending_and_the_ended_ones() -> None:
    for phase in ("Gating", "Progressing", "Paused", "Promoting", "Baking", "RollingBack"):
        assert in_flight(rollout("a", "", ISVC, phase=phase)), phase
    for phase in (None, "", "Pending", "Succeeded", "RolledBack", "Failed"):
        assert not in_flight(rollout("a", "", ISVC, phase=phase)), phase
    # Pending once its attempt has started (the candidate resolved, staging next); an ended one's start is history.
    assert in_flight(rollout("a", "", ISVC, phase="Pending", started="2026-12-01T09:00:00Z"))
    assert not in_flight(rollout("a", "", ISVC, phase="Succeeded", started="2026-12-01T09:00:00Z"))
    assert not in_flight({"status": "Progressing"}) and not in_flight({})


def test_a_rollout_not_in_flight_waits_for_one_in_flight_whatever_their_ages() -> None:
    older_idle = rollout("old", "2026-12-01T09:00:00Z", ISVC, phase="Succeeded")
    running = rollout("new", "2026-12-02T09:00:00Z", ISVC, phase="Progressing", started="2026-12-02T09:01:00Z")
    assert target_holder(older_idle, [older_idle, running]) == "new"  # an ended rollout re-pointed, or a new version
    assert target_holder(running, [older_idle, running]) is None  # an ended one never takes the target back


def test_rollouts_not_in_flight_block_nobody() -> None:
    """One ModelRollout per release, the old ones kept: a new one is never held by an ended or a pending one."""
    ended = [rollout(f"r{i}", f"2026-12-0{i}T09:00:00Z", ISVC, phase=p)
             for i, p in enumerate(("Succeeded", "RolledBack", "Failed", "Pending"), start=1)]
    new = rollout("new", "2026-12-09T09:00:00Z", ISVC)
    assert target_holder(new, [*ended, new]) is None


def test_of_two_in_flight_the_first_to_have_started_has_the_target() -> None:
    """Created in the same second, started apart: the start decides, not the name (nor which was created first)."""
    zeta = rollout("zeta", "2026-12-01T09:00:00Z", ISVC, phase="Gating", started="2026-12-01T09:00:00.250000Z")
    alpha = rollout("alpha", "2026-12-01T09:00:00Z", ISVC, phase="Gating", started="2026-12-01T09:00:00.900000Z")
    assert target_holder(alpha, [zeta, alpha]) == "zeta"
    assert target_holder(zeta, [zeta, alpha]) is None
    # Started in the same instant: creation, then the name.
    a = rollout("a", "2026-12-01T09:00:00Z", ISVC, phase="Gating", started="2026-12-01T09:00:01Z")
    b = rollout("b", "2026-12-01T09:00:00Z", ISVC, phase="Gating", started="2026-12-01T09:00:01Z")
    assert (target_holder(a, [a, b]), target_holder(b, [a, b])) == (None, "a")
    # Several in flight: the one that started first, not merely an earlier one.
    c = rollout("c", "2026-12-01T08:00:00Z", ISVC, phase="Paused", started="2026-12-01T08:00:00Z")
    assert target_holder(b, [a, b, c]) == "c" and target_holder(a, [a, b, c]) == "c"


def test_other_objects_namespaces_and_unreadable_specs_take_nothing() -> None:
    me = rollout("me", "2026-12-02T00:00:00Z", ISVC)
    others = [
        rollout("other-isvc", "2026-12-01T00:00:00Z", {"kserve": {"inferenceService": "other"}}, phase="Paused"),
        rollout("other-ns", "2026-12-01T00:00:00Z", ISVC, namespace="team-b", phase="Paused"),
        # The same name is another object under another kind.
        rollout("seldon", "2026-12-01T00:00:00Z", {"seldonExperiment": {"name": "nsfw"}}, phase="Paused"),
        rollout("broken", "2026-12-01T00:00:00Z", {"kserve": {}}, phase="Paused"),
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
        "Waiting for the target: spec.target.kserve.inferenceService: ModelRollout 'a' is rolling out on "
        "InferenceService 'nsfw' (one rollout at a time per target); this one waits until it ends.")
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


# --- the stepper: waits before it acts, looks again once its start is stored, never holds back a rollback -------

RAW = spec_dict()  # the engine tests' rollout: InferenceService nsfw-classifier, candidate 7 over stable 6
TARGET = RAW["target"]


class Store:
    """The namespace's other ModelRollouts as list_in answers them, one answer per call (the last one repeats),
    and the status writes, answered as the API server does (the whole object)."""

    def __init__(self, *answers: list[dict[str, Any]]) -> None:
        self.answers = list(answers)
        self.lists = 0
        self.statuses: list[dict[str, Any]] = []

    def list_in(self, namespace: str) -> list[dict[str, Any]]:
        self.lists += 1
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]

    def apply_status(self, obj: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
        self.statuses.append(status)
        return {**obj, "metadata": {**obj["metadata"], "resourceVersion": str(len(self.statuses) + 1)},
                "status": status}


def me(status: dict[str, Any] | None = None, command: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"namespace": "team-a", "name": "second", "uid": "u-2", "generation": 1,
                            "resourceVersion": "1", "creationTimestamp": "2026-12-01T09:00:00Z"}
    if command:
        meta["annotations"] = {COMMAND_ANNOTATION: command}
    return {"metadata": meta, "spec": copy.deepcopy(RAW), **({"status": status} if status else {})}


FIRST = rollout("first", "2026-12-01T10:00:00Z", TARGET, phase="Paused", started="2026-12-01T10:00:00Z")


def stepped(monkeypatch: pytest.MonkeyPatch, obj: dict[str, Any], store: Store) -> tuple[ReconcileOutcome, list[str]]:
    acted: list[str] = []

    def registry(self: RolloutRuntime, status: ModelRolloutStatus | None = None) -> RegistryObservation:
        return RegistryObservation(candidate=ResolvedVersion("7", source="s3://m/7"),
                                   stable_alias_version=ResolvedVersion("6", source="s3://m/6"))

    monkeypatch.setattr(RolloutRuntime, "observe_registry", registry)
    monkeypatch.setattr(RolloutRuntime, "observe_target",
                        lambda self: (TargetObservation(ready=True, stable_version="6"), None))
    monkeypatch.setattr(RolloutRuntime, "act", lambda self, action, status: acted.append(action.type))
    stepper = RolloutStepper(None, OperatorConfig(), write_ahead=False)  # type: ignore[arg-type]
    stepper.store = store  # type: ignore[assignment]
    return asyncio.run(stepper.step(obj)), acted


def test_a_new_rollout_waits_while_another_is_in_flight_on_its_target(monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store([FIRST])
    outcome, acted = stepped(monkeypatch, me(), store)
    assert acted == [] and outcome.actions_taken == [] and store.statuses == []
    assert outcome.requeue_after == TARGET_CONFLICT_RECHECK.total_seconds()
    ready = next(c for c in outcome.status["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "TargetConflict" and "'first' is rolling out on" in ready["message"]
    # Once that one has ended, the same rollout goes on.
    outcome, acted = stepped(monkeypatch, me(), Store([{**FIRST, "status": {"phase": "Succeeded"}}]))
    assert acted and outcome.status.get("startedAt")


def test_an_ended_rollout_with_nothing_new_is_left_as_it_is_beside_one_in_flight(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A Succeeded rollout kept beside the next one: reconciled (every operator restart does) while the next is in
    flight, it stays Ready (it turned TargetConflict, Degraded in Argo CD). With a new spec it waits."""
    ready = {"type": "Ready", "status": "True", "reason": "Succeeded", "message": "Promoted version 7",
             "lastTransitionTime": "2026-12-01T09:30:00Z", "observedGeneration": 1}
    ended = {"phase": "Succeeded", "observedGeneration": 1, "startedAt": "2026-12-01T09:00:00Z",
             "completedAt": "2026-12-01T09:30:00Z", "conditions": [ready]}
    outcome, acted = stepped(monkeypatch, me(ended), Store([FIRST]))
    assert acted == [] and outcome.status["phase"] == "Succeeded"
    assert "TargetConflict" not in [c["reason"] for c in outcome.status["conditions"]], outcome.status
    changed = me(ended)
    changed["metadata"]["generation"] = 2
    outcome, acted = stepped(monkeypatch, changed, Store([FIRST]))
    assert acted == [] and "TargetConflict" in [c["reason"] for c in outcome.status["conditions"]]


def test_an_ended_rollout_whose_alias_moved_still_waits_touching_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ended, spec seen, no command: but its candidate is an alias, which now names version 8 (a new attempt). Beside
    one in flight it acts on nothing (it staged 8 over the other's canary), and its status stays as it was."""
    world = World(spec=spec_dict(model={"name": "nsfw-classifier", "alias": "challenger", "stableAlias": "production"}))
    world.registry.aliases["challenger"] = "7"
    world.spec["canary"] = {"steps": [{"setWeight": 10}]}
    world.run_until(lambda w: w.status.phase is Phase.SUCCEEDED, step=timedelta(seconds=30))
    ended = world.status.to_dict()
    obj = me(ended)
    obj["spec"] = copy.deepcopy(world.spec)
    acted: list[str] = []
    monkeypatch.setattr(RolloutRuntime, "observe_registry", lambda self, status=None: RegistryObservation(
        candidate=ResolvedVersion("8", source="s3://m/8"), stable_alias_version=ResolvedVersion("7", source="s3://m/7")))
    monkeypatch.setattr(RolloutRuntime, "observe_target",
                        lambda self: (TargetObservation(ready=True, stable_version="7"), None))
    monkeypatch.setattr(RolloutRuntime, "act", lambda self, action, status: acted.append(action.type))
    stepper = RolloutStepper(None, OperatorConfig(), write_ahead=False)  # type: ignore[arg-type]
    stepper.store = Store([FIRST])  # type: ignore[assignment]
    outcome = asyncio.run(stepper.step(obj))
    assert acted == [] and outcome.status == ended
    assert outcome.requeue_after == TARGET_CONFLICT_RECHECK.total_seconds()


def test_an_abort_of_a_held_rollout_in_flight_is_carried_out(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two in flight on one target (e.g. from before this rule): the later one is held, but taking its
    candidate off never waits."""
    world = World()
    world.run_until(lambda w: w.status.phase is Phase.PAUSED or (w.status.current_step or 0) >= 1)
    status = {**world.status.to_dict(), "startedAt": "2026-12-01T11:00:00Z"}
    command = Command(id="abort-1", action=CommandAction.ABORT, actor="alice").to_annotation()
    held, acted = stepped(monkeypatch, me(status), Store([FIRST]))
    assert acted == [] and "TargetConflict" in [c["reason"] for c in held.status["conditions"]]
    outcome, acted = stepped(monkeypatch, me(status, command=command), Store([FIRST]))
    assert outcome.status["phase"] in ("RollingBack", "RolledBack"), outcome.status["message"]
    assert "TagRejected" in acted  # the abort's own action (the stand-in target shows no canary left to withdraw)


class Namespace:
    """Two rollouts' objects as the API server holds them: list_in sees each one's stored status."""

    def __init__(self, *objs: dict[str, Any]) -> None:
        self.objs = {o["metadata"]["name"]: o for o in objs}

    def list_in(self, namespace: str) -> list[dict[str, Any]]:
        return [copy.deepcopy(o) for o in self.objs.values()]

    def apply_status(self, obj: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
        stored = self.objs[obj["metadata"]["name"]]
        stored["status"] = copy.deepcopy(status)
        return copy.deepcopy(stored)


def test_two_rollouts_starting_at_once_on_one_target_never_both_act(monkeypatch: pytest.MonkeyPatch) -> None:
    """The slower one to observe decided first (its clock is earlier), but stores its start after the other:
    the start gate makes the second look only once the first's start is stored, so only one acts."""
    acted: list[str] = []

    def registry(self: RolloutRuntime, status: ModelRolloutStatus | None = None) -> RegistryObservation:
        if self.name == "slow" and not acted:
            time.sleep(0.3)
        return RegistryObservation(candidate=ResolvedVersion("7", source="s3://m/7"),
                                   stable_alias_version=ResolvedVersion("6", source="s3://m/6"))

    monkeypatch.setattr(RolloutRuntime, "observe_registry", registry)
    monkeypatch.setattr(RolloutRuntime, "observe_target",
                        lambda self: (TargetObservation(ready=True, stable_version="6"), None))
    monkeypatch.setattr(RolloutRuntime, "act", lambda self, action, status: acted.append(self.name))
    slow, fast = me(), me()
    slow["metadata"].update(name="slow", uid="u-slow")
    fast["metadata"].update(name="fast", uid="u-fast")
    namespace = Namespace(slow, fast)
    stepper = RolloutStepper(None, OperatorConfig(), write_ahead=False)  # type: ignore[arg-type]
    stepper.store = namespace  # type: ignore[assignment]

    async def both() -> list[ReconcileOutcome]:
        return list(await asyncio.gather(stepper.step(copy.deepcopy(slow)), stepper.step(copy.deepcopy(fast))))

    outcomes = asyncio.run(both())
    assert len(set(acted)) == 1, acted
    waiting = [o for o in outcomes if "TargetConflict" in [c["reason"] for c in o.status.get("conditions") or ()]]
    assert len(waiting) == 1
    assert len(stepper._start_locks) == 0, "a target's start lock outlives the rollouts that used it"


def test_a_queued_rollout_can_be_aborted(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing resolved yet: the abort ends it, touching nothing, instead of being refused."""
    command = Command(id="abort-queued", action=CommandAction.ABORT, actor="alice").to_annotation()
    outcome, acted = stepped(monkeypatch, me(command=command), Store([FIRST]))
    assert acted == []
    assert "TargetConflict" not in [c["reason"] for c in outcome.status.get("conditions") or ()]
    assert [e["event"] for e in outcome.status["history"] if e.get("commandId") == "abort-queued"] != [
        "CommandIgnored"], outcome.status["history"]


def test_a_start_with_nothing_to_send_yet_is_stored_before_the_gate_opens(monkeypatch: pytest.MonkeyPatch) -> None:
    """The target cannot be read (not synced yet): the start is decided with no action, so nothing was written
    ahead. It is stored by the step itself, before the next rollout of the target may look."""
    def registry(self: RolloutRuntime, status: ModelRolloutStatus | None = None) -> RegistryObservation:
        return RegistryObservation(candidate=ResolvedVersion("7", source="s3://m/7"),
                                   stable_alias_version=ResolvedVersion("6", source="s3://m/6"))

    monkeypatch.setattr(RolloutRuntime, "observe_registry", registry)
    monkeypatch.setattr(RolloutRuntime, "observe_target", lambda self: (None, None))
    monkeypatch.setattr(RolloutRuntime, "act", lambda self, action, status: None)
    b = me()
    namespace = Namespace(b)
    stepper = RolloutStepper(None, OperatorConfig(), write_ahead=False)  # type: ignore[arg-type]
    stepper.store = namespace  # type: ignore[assignment]
    outcome = asyncio.run(stepper.step(copy.deepcopy(b)))
    assert in_flight({"status": outcome.status}), outcome.status
    assert in_flight(namespace.objs["second"]), "the start was left for the caller to write, after the gate opened"


def test_a_start_lock_taken_then_cancelled_while_its_worker_slot_comes_back_is_released() -> None:
    """Cancelled after the lock was acquired, while taking its lent worker slot back: the lock stayed locked and the
    next rollout of the target waited for ever."""
    target = ("team-a", "InferenceService", "nsfw-classifier")

    async def scenario() -> bool:
        locks, workers = _StartLocks(), asyncio.Semaphore(1)
        first = await _StartGate(locks, target).__aenter__()

        async def queued() -> None:  # a reconcile in the queue, holding its worker slot
            await workers.acquire()
            scheduler._current_slot.set(scheduler._Slot(workers))
            async with _StartGate(locks, target):
                pass

        async def hog() -> None:  # another reconcile takes the slot it lent
            await asyncio.sleep(0)
            await workers.acquire()
            await asyncio.sleep(10)

        cancelled, other = asyncio.create_task(queued()), asyncio.create_task(hog())
        await asyncio.sleep(0.01)
        next_one = asyncio.create_task(_StartGate(locks, target).__aenter__())  # waiting behind it
        await asyncio.sleep(0.01)
        first.release()  # `cancelled` gets the lock, then waits for its worker slot: cancelled there
        await asyncio.sleep(0.01)
        cancelled.cancel()
        try:
            await asyncio.wait_for(next_one, 2)
            return True
        except TimeoutError:
            return False
        finally:
            other.cancel()

    assert asyncio.run(scenario()), "the lock stayed taken"
