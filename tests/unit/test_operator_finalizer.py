"""The revertOnDeletion finalizer in the stepper: held before anything is done, let go only once the ended
status and its Events are stored, each change the whole reconcile (nothing acted past a fresh read)."""

from __future__ import annotations

import asyncio
import copy
import logging
from datetime import UTC, datetime
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from controller.api.status import ModelRolloutStatus, Phase, VersionRef
from controller.engine import RegistryObservation, ResolvedVersion, TargetObservation
from controller.operator.kubeapi import FIELD_MANAGER, FINALIZER, ObjectRef
from controller.operator.runtime import (
    FinalizerRefused,
    OperatorConfig,
    ReconcileOutcome,
    RolloutRuntime,
    RolloutStepper,
)

RAW: dict[str, Any] = {
    "model": {"name": "nsfw", "version": "8", "stableAlias": "production"},
    "target": {"kserve": {"inferenceService": "nsfw"}},
    "canary": {"steps": [{"setWeight": 10}, {"pause": {}}]},
    "rollback": {"revertOnDeletion": True},
    "goldenDataset": {"uri": "configmap://golden/set.jsonl", "sha256": "ab" * 32},
}
SUCCEEDED = ModelRolloutStatus(phase=Phase.SUCCEEDED, candidate=VersionRef("7"), stable=VersionRef("6"),
                               observed_generation=1, attempt=1).to_dict()


REASONS = {403: "Forbidden", 409: "Conflict", 422: "Unprocessable Entity"}
OURS = {"manager": FIELD_MANAGER, "operation": "Apply", "fieldsV1": {"f:metadata": {"f:finalizers": {
    f'v:"{FINALIZER}"': {}}}}}


class Store:
    """Records finalizer applies and status writes; answers as the API server would, or with an error status.
    `shared`: another field manager owns the finalizer too, so a release leaves it on. `fresh`: what a read
    finds (None: gone)."""

    def __init__(self, error: int | None = None, shared: bool = False, fresh: dict[str, Any] | None = None) -> None:
        self.applied: list[bool] = []
        self.statuses: list[dict[str, Any]] = []
        self.error = error
        self.shared = shared
        self.fresh = fresh

    def get(self, ref: ObjectRef) -> dict[str, Any] | None:
        return copy.deepcopy(self.fresh)

    def apply_finalizer(self, obj: dict[str, Any], hold: bool) -> dict[str, Any]:
        self.applied.append(hold)
        if self.error:
            refused = ApiException(status=self.error, reason=REASONS.get(self.error))
            refused.body = '{"message": "denied by policy: annotation token=s3cr3t"}'  # may quote the object
            raise refused
        kept = hold or self.shared
        return {"metadata": {**obj["metadata"], "resourceVersion": "2", "finalizers": [FINALIZER] if kept else []}}

    def list_in(self, namespace: str) -> list[dict[str, Any]]:
        return []  # the only ModelRollout of its namespace

    def apply_status(self, obj: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
        self.statuses.append(status)
        return {"metadata": {**obj["metadata"], "resourceVersion": "3"}, "status": status}


def rollout(status: dict[str, Any] | None, held: bool, deleting: bool = False,
            raw: dict[str, Any] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"namespace": "team-a", "name": "nsfw", "uid": "u-1", "generation": 1,
                            "resourceVersion": "1", "finalizers": [FINALIZER] if held else [],
                            "managedFields": [OURS] if held else []}
    if deleting:
        meta["deletionTimestamp"] = "2026-12-03T03:00:00Z"
    return {"metadata": meta, "spec": copy.deepcopy(raw or RAW), **({"status": status} if status else {})}


def step(obj: dict[str, Any], store: Store, stepper: RolloutStepper | None = None) -> ReconcileOutcome:
    stepper = stepper or RolloutStepper(None, OperatorConfig(), write_ahead=False)  # type: ignore[arg-type]
    stepper.store = store  # type: ignore[assignment]
    return asyncio.run(stepper.step(obj))


def test_a_new_rollout_is_held_before_anything_is_done_and_decided_on_a_fresh_read() -> None:
    store = Store()
    outcome = step(rollout(None, held=False), store)
    assert store.applied == [True]
    assert (outcome.status, outcome.requeue_after, outcome.actions_taken) == ({}, 0.0, [])


def test_an_ended_deleted_rollout_is_let_go_only_once_its_events_are_posted() -> None:
    ended = {**SUCCEEDED, "history": [{"seq": 1, "time": "2026-12-03T02:59:00Z", "event": "Succeeded",
                                       "detail": "promoted"}], "eventsPostedThrough": 0}
    store = Store()
    waiting = step(rollout(ended, held=True, deleting=True), store)
    # The caller posts them on its own retry schedule; storing the mark wakes the rollout again.
    assert store.applied == [] and waiting.requeue_after is None and waiting.status == ended
    let_go = step(rollout({**ended, "eventsPostedThrough": 1}, held=True, deleting=True), store)
    assert store.applied == [False] and let_go.requeue_after == 0.0


@pytest.mark.parametrize("deleting", [False, True])
def test_an_ended_rollout_holds_nothing(deleting: bool) -> None:
    """So an operator uninstalled since never blocks deleting it, or its namespace."""
    store = Store()
    step(rollout(SUCCEEDED, held=True, deleting=deleting), store)
    assert store.applied == [False]


def test_turning_revert_on_deletion_off_lets_go() -> None:
    store = Store()
    in_flight = {**SUCCEEDED, "phase": "Paused"}
    raw = {**RAW, "rollback": {"revertOnDeletion": False}}
    step(rollout(in_flight, held=True, raw=raw), store)
    assert store.applied == [False]


def test_an_ended_rollout_whose_spec_does_not_parse_is_let_go_without_a_status_write() -> None:
    store = Store()
    raw = {**RAW, "canary": {"steps": [{"setWeight": 150}]}}  # refused by the API server too, normally
    outcome = step(rollout(SUCCEEDED, held=True, deleting=True, raw=raw), store)
    assert store.applied == [False] and outcome.status == SUCCEEDED
    in_flight = step(rollout({**SUCCEEDED, "phase": "Paused"}, held=True, deleting=True, raw=raw), store)
    assert store.applied == [False] and in_flight.status["phase"] == "Paused"  # held: it cannot be rolled back
    assert "InvalidSpec" in [c["reason"] for c in in_flight.status["conditions"]]


def observed(monkeypatch: pytest.MonkeyPatch, candidate: str, stable: str) -> list[str]:
    """The adapters' answers, canned: the registry resolves `candidate`, the target serves `stable`."""
    def registry(self: RolloutRuntime, status: ModelRolloutStatus | None = None) -> RegistryObservation:
        return RegistryObservation(candidate=ResolvedVersion(candidate, source=f"s3://m/{candidate}"),
                                   stable_alias_version=ResolvedVersion(stable, source=f"s3://m/{stable}"))

    acted: list[str] = []
    monkeypatch.setattr(RolloutRuntime, "observe_registry", registry)
    monkeypatch.setattr(RolloutRuntime, "observe_target",
                        lambda self: (TargetObservation(ready=True, stable_version=stable), None))
    monkeypatch.setattr(RolloutRuntime, "act", lambda self, action, status: acted.append(action.id))
    return acted


def test_a_finalizer_another_field_manager_also_owns_is_theirs_and_the_rollout_goes_on(
        monkeypatch: pytest.MonkeyPatch) -> None:
    observed(monkeypatch, candidate="7", stable="7")
    store = Store(shared=True)
    step(rollout(SUCCEEDED, held=True), store)
    assert store.applied == [False]  # ours released; theirs stays on the object
    theirs = rollout(SUCCEEDED, held=True)
    theirs["metadata"]["managedFields"] = [{**OURS, "manager": "kubectl-edit", "operation": "Update"}]
    outcome = step(theirs, store)
    assert store.applied == [False] and outcome.status["phase"] == "Succeeded"  # decided on, not applied again


@pytest.mark.parametrize(("completed", "released"), [("2026-12-03T02:59:30Z", False), ("2026-12-03T02:50:00Z", True),
                                                     (None, True)])
def test_a_deleted_rollout_waits_for_the_withdrawal_at_most_the_grace(monkeypatch: pytest.MonkeyPatch,
                                                                      completed: str | None, released: bool) -> None:
    """Without completedAt (a hand-edited status) the grace counts as over: the delete never waits for good."""
    never_finishes = lambda self, status, still_current=None: True  # noqa: E731
    monkeypatch.setattr(RolloutRuntime, "finish_withdrawal", never_finishes)
    rolled_back = {**SUCCEEDED, "phase": "RolledBack", **({"completedAt": completed} if completed else {})}
    store = Store()
    stepper = RolloutStepper(None, OperatorConfig(), write_ahead=False,  # type: ignore[arg-type]
                             clock=lambda: datetime(2026, 12, 3, 3, 0, 0, tzinfo=UTC))
    outcome = step(rollout(rolled_back, held=True, deleting=True), store, stepper)
    assert store.applied == ([False] if released else [])
    assert outcome.requeue_after == (0.0 if released else 1.0)


@pytest.mark.parametrize("error", [409, 422])
@pytest.mark.parametrize("found", ["gone", "created-again", "being-deleted"])
def test_a_finalizer_apply_refused_for_a_gone_or_deleted_object_means_read_again(error: int, found: str) -> None:
    again = rollout(None, held=False)
    again["metadata"]["uid"] = "u-2"
    fresh = {"gone": None, "created-again": again, "being-deleted": rollout(None, held=False, deleting=True)}[found]
    store = Store(error=error, fresh=fresh)
    outcome = step(rollout(None, held=False), store)
    assert store.applied == [True] and outcome.requeue_after == 0.0 and outcome.status == {}


@pytest.mark.parametrize("error", [409, 422])
@pytest.mark.parametrize("deleting", [False, True])
def test_a_finalizer_apply_refused_for_an_object_still_there_is_a_reconcile_error_without_the_body(
        error: int, deleting: bool, caplog: pytest.LogCaptureFixture) -> None:
    """An admission policy on UPDATE, a tightened CRD rule: refused the same way every time, so retried on the
    queue's error backoff (and counted as an error), not looked at again at once for ever: the step hands the
    refusal to the reconciler, which stores the status saying so and raises it (test_operator_finalizer_refused_s39).
    A deletion does not explain a refused release: the API server lets a finalizer go from an object being deleted."""
    status = SUCCEEDED if deleting else None
    obj = rollout(status, held=deleting, deleting=deleting)
    store = Store(error=error, fresh=copy.deepcopy(obj))
    with caplog.at_level(logging.INFO):
        outcome = step(obj, store)
    refused = outcome.refused
    assert isinstance(refused, FinalizerRefused) and refused.hold is not deleting
    assert store.applied == [not deleting] and refused.status == error and refused.body is None
    assert outcome.status == (status or {}) and outcome.actions_taken == []
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"team-a/nsfw: finalizer not {'removed' if deleting else 'added'}: HTTP {error} "
                        f"{REASONS[error]}"]
    assert "s3cr3t" not in caplog.text and "s3cr3t" not in str(refused)


def test_any_other_refusal_is_a_reconcile_error() -> None:
    with pytest.raises(ApiException):
        step(rollout(None, held=False), Store(error=403))


def test_a_new_attempt_after_an_ended_one_is_held_before_it_acts_then_acts_at_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Succeeded with 7, the spec now names 8: the decision stages 8, the finalizer goes on first, the new
    attempt's status is stored, and the next reconcile sends the staging at once (and keeps the finalizer)."""
    acted = observed(monkeypatch, candidate="8", stable="7")
    store = Store()
    stepper = RolloutStepper(None, OperatorConfig(), write_ahead=False)  # type: ignore[arg-type]
    obj = rollout(SUCCEEDED, held=False)
    obj["metadata"]["generation"] = 2
    first = step(obj, store, stepper)
    assert store.applied == [True] and acted == [] and first.actions_taken == []
    assert first.status["phase"] == "Pending" and first.status["candidate"]["version"] == "8"  # to be stored
    assert any(a["state"] == "Pending" for a in first.status["actions"])  # asked for, not sent
    again = rollout(first.status, held=True)
    again["metadata"]["generation"] = 2
    second = step(again, store, stepper)
    assert store.applied == [True]  # kept on: the attempt has not ended
    assert acted and acted[0].endswith(":stage:8"), acted  # sent at once, not after the resend delay
    assert second.status["phase"] != "Succeeded"
