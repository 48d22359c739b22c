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

from controller.api.status import ModelRolloutStatus, Phase, VersionRef
from controller.engine import RegistryObservation, ResolvedVersion, SetCanaryWeight, TargetObservation
from controller.operator import runtime as runtime_module
from controller.operator.runtime import OperatorConfig, RolloutRuntime, RolloutStepper
from controller.traffic import TrafficError

NOW = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


def test_a_refusal_in_the_last_round_is_recorded_by_the_next_reconcile(monkeypatch: pytest.MonkeyPatch) -> None:
    weights = [5 * (i + 1) for i in range(runtime_module.MAX_ROUNDS + 1)]
    refused = weights[runtime_module.MAX_ROUNDS - 1]  # sent in the last round of the first reconcile
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
    monkeypatch.setattr(RolloutRuntime, "finish_withdrawal", lambda self, status: False)
    stepper = RolloutStepper(None, OperatorConfig(), clock=lambda: NOW, write_ahead=False)  # type: ignore[arg-type]
    obj: dict[str, Any] = {"metadata": {"namespace": "a", "name": "n", "uid": "u", "generation": 1,
                                        "resourceVersion": "1"}, "spec": raw, "status": start.to_dict()}
    first = asyncio.run(stepper.step(obj))
    assert f"SetCanaryWeight:1:step-{runtime_module.MAX_ROUNDS - 1}:weight-{refused}" in first.actions_taken
    assert first.requeue_after is not None and first.requeue_after <= 1.0  # answers left unread: look again soon
    obj["status"] = first.status
    second = ModelRolloutStatus.from_dict(asyncio.run(stepper.step(obj)).status)
    record = next(r for r in second.actions if r.id.endswith(f"weight-{refused}"))
    assert record.last_error is not None and "admission webhook denied" in record.last_error
    ready = second.condition("TargetReady")
    assert ready is not None and ready.status == "False" and "admission webhook denied" in ready.message
