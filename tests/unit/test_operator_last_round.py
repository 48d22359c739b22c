"""The answers to a reconcile's last round of actions reach the next reconcile's first decision.

Each round's failures and accepted sends are read by the next round's decision; the last of MAX_ROUNDS has no
next round, so without a carry-over a refusal there went unrecorded (TargetReady stayed True) and an accepted
resend never cleared an earlier refusal. Real stepper and engine; the adapters are stand-ins.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from controller.api.status import ModelRolloutStatus, Phase, VersionRef
from controller.engine import RegistryObservation, ResolvedVersion, SetCanaryWeight, TargetObservation
from controller.operator import reconciler as reconciler_module
from controller.operator import runtime as runtime_module
from controller.operator.event_poster import Posted
from controller.operator.kubeapi import ObjectRef
from controller.operator.reconciler import Reconciler
from controller.operator.runtime import OperatorConfig, RolloutRuntime, RolloutStepper
from controller.traffic import TrafficError

NOW = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


def last_round_refused(monkeypatch: pytest.MonkeyPatch) -> tuple[RolloutStepper, dict[str, Any], int]:
    """A stepper whose first reconcile sends, in its last round, a weight the target refuses."""
    weights = [5 * (i + 1) for i in range(runtime_module.MAX_ROUNDS + 1)]
    refused = weights[runtime_module.MAX_ROUNDS - 1]
    raw = {"model": {"name": "nsfw", "version": "8", "stableAlias": "production"},
           "target": {"kserve": {"inferenceService": "nsfw"}},
           "canary": {"steps": [{"setWeight": w} for w in weights] + [{"pause": {}}]},
           "goldenDataset": {"uri": "configmap://golden/set.jsonl", "sha256": "ab" * 32}}
    start = ModelRolloutStatus(phase=Phase.PROGRESSING, observed_generation=1, attempt=1, candidate=VersionRef("8"),
                               stable=VersionRef("7"), current_step=0, canary_weight=0, started_at=NOW)
    served = {"weight": 0}

    def act(self: RolloutRuntime, action: Any, status: Any) -> None:
        if isinstance(action, SetCanaryWeight):
            if action.weight == refused:
                raise TrafficError(f"admission webhook denied: canaryTrafficPercent {refused}")
            served["weight"] = action.weight

    monkeypatch.setattr(RolloutRuntime, "observe_registry", lambda self, status=None: RegistryObservation(
        candidate=ResolvedVersion("8", source="s3://m/8"), stable_alias_version=ResolvedVersion("7", source="s3://m/7")))
    monkeypatch.setattr(RolloutRuntime, "observe_target", lambda self: (TargetObservation(
        ready=True, stable_version="7", canary_version="8", canary_ready=True, canary_weight=served["weight"]), None))
    monkeypatch.setattr(RolloutRuntime, "act", act)
    monkeypatch.setattr(RolloutRuntime, "finish_withdrawal", lambda self, status, still_current=None: False)
    stepper = RolloutStepper(None, OperatorConfig(), clock=lambda: NOW, write_ahead=False)  # type: ignore[arg-type]
    obj: dict[str, Any] = {"metadata": {"namespace": "a", "name": "n", "uid": "u", "generation": 1,
                                        "resourceVersion": "1"}, "spec": raw, "status": start.to_dict()}
    first = asyncio.run(stepper.step(obj))
    assert f"SetCanaryWeight:1:step-{runtime_module.MAX_ROUNDS - 1}:weight-{refused}" in first.actions_taken
    assert first.requeue_after is not None and first.requeue_after <= 1.0  # answers left unread: look again soon
    obj["status"] = first.status
    return stepper, obj, refused


def assert_refusal_recorded(status: ModelRolloutStatus, refused: int) -> None:
    record = next(r for r in status.actions if r.id.endswith(f"weight-{refused}"))
    assert record.last_error is not None and "admission webhook denied" in record.last_error
    ready = status.condition("TargetReady")
    assert ready is not None and ready.status == "False" and "admission webhook denied" in ready.message


def test_a_refusal_in_the_last_round_is_recorded_by_the_next_reconcile(monkeypatch: pytest.MonkeyPatch) -> None:
    stepper, obj, refused = last_round_refused(monkeypatch)
    assert_refusal_recorded(ModelRolloutStatus.from_dict(asyncio.run(stepper.step(obj)).status), refused)


def test_answers_read_by_a_decision_lost_to_a_conflict_are_read_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """The decision that read them is thrown away when its status write loses a 409 (a command arrived)."""
    stepper, obj, refused = last_round_refused(monkeypatch)
    writes: list[dict[str, Any]] = []

    def apply(store: Any, rollout: Any, status: dict[str, Any], decided_on: Any) -> dict[str, Any]:
        writes.append(status)
        if len(writes) == 1:
            raise ApiException(status=409, reason="Conflict")
        obj["status"] = status
        return {**obj, "status": status}

    class Store:
        def get(self, ref: Any) -> dict[str, Any]:
            return obj

    class Events:
        async def post(self, stored: Any, status: Any) -> Any:
            return Posted(mark=status.get("eventsPostedThrough") or 0, retry_after=None)

    monkeypatch.setattr(reconciler_module, "apply_decided_status", apply)
    reconciler = Reconciler(Store(), stepper.step, events=Events())  # type: ignore[arg-type]
    ref = ObjectRef("a", "n")
    assert asyncio.run(reconciler.reconcile(ref)) == 0.0  # lost: decide again
    asyncio.run(reconciler.reconcile(ref))
    assert len(writes) == 2
    assert_refusal_recorded(ModelRolloutStatus.from_dict(obj["status"]), refused)


def test_answers_for_a_deleted_rollout_never_reach_one_made_again_under_its_name(
        monkeypatch: pytest.MonkeyPatch) -> None:
    stepper, obj, _ = last_round_refused(monkeypatch)
    obj["metadata"]["uid"] = "u2"  # deleted and applied again before the next reconcile
    obj["status"] = {}
    heard: list[Any] = []
    real_decide = runtime_module.decide

    def decide(spec: Any, status: Any, observations: Any, now: Any) -> Any:
        heard.extend(observations.action_failures)
        return real_decide(spec, status, observations, now)

    monkeypatch.setattr(runtime_module, "decide", decide)
    again = ModelRolloutStatus.from_dict(asyncio.run(stepper.step(obj)).status)
    assert heard == [] and all(not r.last_error for r in again.actions)
