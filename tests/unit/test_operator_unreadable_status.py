"""A status this operator cannot read (a newer operator's, or edited by hand): said in the Ready condition alone,
nothing acted on, no crash loop, and a delete is not held for ever."""

from __future__ import annotations

import asyncio
import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from controller.api.status import ModelRolloutStatus
from controller.operator.kubeapi import FIELD_MANAGER, FINALIZER, ObjectRef
from controller.operator.metrics import OperatorMetrics
from controller.operator.reconciler import Reconciler
from controller.operator.runtime import WITHDRAWAL_GRACE, OperatorConfig, ReconcileOutcome, RolloutStepper

DELETED = datetime(2026, 1, 5, 9, 1, tzinfo=UTC)
RAW: dict[str, Any] = {
    "model": {"name": "nsfw", "version": "8", "stableAlias": "production"},
    "target": {"kserve": {"inferenceService": "nsfw"}},
    "canary": {"steps": [{"setWeight": 50}]},
    "rollback": {"revertOnDeletion": True},
}
NEWER = {"phase": "RollingBack", "candidate": {"version": "8"}, "stable": {"version": "7"}, "attempt": 1,
         "rollback": {"cause": "SomeNewCause", "reason": "r", "verdictAt": "2026-01-05T09:00:00Z"},
         "history": [{"seq": 1, "time": "2026-01-05T09:00:00Z", "event": "RollbackStarted", "detail": "r"}],
         "eventsPostedThrough": 1,
         "conditions": [{"type": "TargetReady", "status": "True", "reason": "TargetReady", "message": "ok",
                         "lastTransitionTime": "2026-01-05T08:00:00Z"},
                        {"type": "Ready", "status": "Unknown", "reason": "RollingBack", "message": "m",
                         "lastTransitionTime": "2026-01-05T08:00:00Z"}]}
OURS = {"manager": FIELD_MANAGER, "operation": "Apply", "fieldsV1": {"f:metadata": {"f:finalizers": {
    f'v:"{FINALIZER}"': {}}}}}


class Store:
    def __init__(self) -> None:
        self.applied: list[bool] = []

    def apply_finalizer(self, obj: dict[str, Any], hold: bool) -> dict[str, Any]:
        self.applied.append(hold)
        return {"metadata": {**obj["metadata"], "resourceVersion": "2", "finalizers": [FINALIZER] if hold else []}}

    def apply_status(self, obj: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
        raise AssertionError("the stepper writes no status on an unreadable one")


def rollout(status: dict[str, Any], deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"namespace": "team-a", "name": "nsfw", "uid": "u-1", "generation": 3,
                            "resourceVersion": "1", "finalizers": [FINALIZER], "managedFields": [OURS]}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-05T09:01:00Z"
    return {"metadata": meta, "spec": copy.deepcopy(RAW), "status": copy.deepcopy(status)}


def step(obj: dict[str, Any], store: Store, now: datetime = DELETED) -> ReconcileOutcome:
    stepper = RolloutStepper(None, OperatorConfig(), clock=lambda: now, write_ahead=False)  # type: ignore[arg-type]
    stepper.store = store  # type: ignore[assignment]
    return asyncio.run(stepper.step(obj))


def ready(status: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = next(c for c in status["conditions"] if c["type"] == "Ready")
    return found


@pytest.mark.parametrize(("change", "field", "problem"), [
    ({}, "status.rollback", "'SomeNewCause' is not a valid RollbackCause"),
    ({"rollback": None, "history": [{"time": "yesterday", "event": "X", "detail": "d", "seq": 1}]}, "status.history",
     "'yesterday'"),
    ({"rollback": None, "currentStep": "two"}, "status.currentStep", "'two'"),
    ({"rollback": None, "actions": [{"id": "a", "type": "SetAlias", "state": "Done",
                                     "issuedAt": "2026-01-01T00:00:00Z", "updatedAt": "2026-01-01T00:00:00Z"}]},
     "status.actions", "'Done' is not a valid ActionState"),
])
def test_an_unreadable_status_gets_only_a_ready_condition_naming_the_field(change: dict[str, Any], field: str,
                                                                           problem: str) -> None:
    raw = {key: value for key, value in {**NEWER, **change}.items() if value is not None}
    with pytest.raises(ValueError):
        ModelRolloutStatus.from_dict(raw)
    store = Store()
    outcome = step(rollout(raw), store)
    condition = ready(outcome.status)
    assert (condition["status"], condition["reason"]) == ("False", "StatusUnreadable")
    assert field in condition["message"] and problem in condition["message"], condition["message"]
    # Nothing else changed: the rest is for an operator that can read it.
    assert {**outcome.status, "conditions": None} == {**raw, "conditions": None}
    assert [c for c in outcome.status["conditions"] if c["type"] != "Ready"] == NEWER["conditions"][:1]
    assert outcome.actions_taken == [] and outcome.requeue_after is None and store.applied == []
    # The next reconcile finds it said: nothing to write, and no transition time moved.
    later = step(rollout(outcome.status), store, DELETED + timedelta(minutes=5))
    assert later.status == outcome.status


def test_a_deleted_rollout_with_an_unreadable_status_is_let_go_after_the_grace() -> None:
    """It cannot be rolled back here; until the grace is over, an operator that can read it may still do so."""
    store = Store()
    waiting = step(rollout(NEWER, deleting=True), store, DELETED + timedelta(seconds=30))
    assert store.applied == [] and ready(waiting.status)["reason"] == "StatusUnreadable"
    assert waiting.requeue_after == (WITHDRAWAL_GRACE - timedelta(seconds=30)).total_seconds()
    let_go = step(rollout(waiting.status, deleting=True), store, DELETED + WITHDRAWAL_GRACE)
    assert store.applied == [False] and let_go.requeue_after == 0.0


def test_an_unreadable_status_with_unposted_history_is_let_go_once_its_events_are_posted() -> None:
    store = Store()
    unposted = {**NEWER, "eventsPostedThrough": 0}
    waiting = step(rollout(unposted, deleting=True), store, DELETED + WITHDRAWAL_GRACE)
    assert store.applied == [] and waiting.requeue_after is None  # the caller posts them and stores the mark
    step(rollout(NEWER, deleting=True), store, DELETED + WITHDRAWAL_GRACE)
    assert store.applied == [False]


class ApiServer:
    """One rollout; status writes stored; no history to post."""

    def __init__(self, obj: dict[str, Any]) -> None:
        self.obj = obj
        self.writes = 0

    def get(self, _ref: ObjectRef) -> dict[str, Any]:
        return copy.deepcopy(self.obj)

    def apply_status(self, obj: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
        self.writes += 1
        self.obj = {**self.obj, "metadata": {**self.obj["metadata"], "resourceVersion": str(self.writes + 1)},
                    "status": copy.deepcopy(status)}
        return copy.deepcopy(self.obj)


@pytest.mark.parametrize("edit", [
    {"rollback": "edited by hand"},
    {"pause": ["x"], "promotion": 3, "retry": "x", "actions": "x"},
    {"rollback": {"verdictAt": "2026-01-05T09:00:00Z", "cause": "SomeNewCause"}, "gate": "x", "analysis": [1]},
])
def test_a_free_form_field_of_the_wrong_type_is_said_once_not_a_crash_every_reconcile(edit: dict[str, Any]) -> None:
    """The CRD leaves these fields open, so a hand edit reaches the operator: the Ready condition says so, and the
    metrics (which read the same status) take the field as empty instead of failing every reconcile for ever."""
    server = ApiServer(rollout({"phase": "Progressing", **edit}))
    metrics = OperatorMetrics()
    stepper = RolloutStepper(None, OperatorConfig(), clock=lambda: DELETED, write_ahead=False)  # type: ignore[arg-type]
    reconciler = Reconciler(server, stepper.step, metrics, clock=lambda: DELETED)  # type: ignore[arg-type]
    for _ in range(3):
        assert asyncio.run(reconciler.reconcile(ObjectRef("team-a", "nsfw"))) is None
    assert server.writes == 1 and ready(server.obj["status"])["reason"] == "StatusUnreadable"
    assert metrics.registry.get_sample_value("modelrollout_reconcile_errors_total") == 0
    assert metrics.registry.get_sample_value("modelrollout_rollouts", {"phase": "Progressing"}) == 1
    assert metrics.registry.get_sample_value("modelrollout_rollbacks_total",
                                             {"namespace": "team-a", "rollout": "nsfw"}) == 0
